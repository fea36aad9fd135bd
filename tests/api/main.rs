#![allow(clippy::unwrap_used)] // tests panic on purpose when an expectation fails
//! One integration-test binary: the real app on a random port, a fake Slack
//! Web API, signed requests.

mod aws;
mod aws_world;
mod commands;
mod contracts;
mod crash;
mod exactly_once;
mod fake_slack;
mod flow;
mod fuzz;
mod helpers;
mod ingress;
mod outage;
mod resilience;
mod security;
