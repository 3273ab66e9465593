//! One integration-test binary against the real RabbitMQ and Redis (see `helpers`).

mod broker;
mod cli;
mod dead_letters;
mod delivery;
mod helpers;
mod subscriptions;
