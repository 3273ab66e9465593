//! One integration-test binary against the real RabbitMQ and Redis (see `helpers`).

mod api;
mod api_abuse;
mod api_harness;
mod broker;
mod cli;
mod cli_conventions;
mod dead_letters;
mod delivery;
mod dlq;
mod dlq_scale;
mod faults;
mod helpers;
mod hostile;
mod isolation;
mod metrics;
mod nodes;
mod rate_limit;
mod subscriptions;
mod targets;
