//! One integration-test binary against the real RabbitMQ and Redis (see `helpers`).

mod api;
mod broker;
mod cli;
mod dead_letters;
mod delivery;
mod dlq;
mod faults;
mod helpers;
mod isolation;
mod nodes;
mod subscriptions;
