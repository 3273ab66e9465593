//! One integration-test binary against the real RabbitMQ and Redis (see `helpers`), one file per
//! thing a user does.

mod api_abuse;
mod api_attempts;
mod api_discovery;
mod api_harness;
mod api_secrets;
mod api_tokens;
mod api_webhooks;
mod backup;
mod broker;
mod browser;
mod cli;
mod cli_conventions;
mod connections;
mod dead_lettering;
mod delivery;
mod dlq_inspect;
mod dlq_purge;
mod dlq_replay;
mod dlq_scale;
mod envelope_schema;
mod faults;
mod helpers;
mod hostile;
mod hostile_properties;
mod isolation;
mod listen;
mod metrics;
mod nodes;
mod partitions;
mod rate_limit;
mod retries;
mod store;
mod subscriptions;
mod targets;
