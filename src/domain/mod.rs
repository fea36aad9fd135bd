//! The domain: commands, requests and their approvals, policy. Nothing here
//! knows about Slack, Teams or AWS.

pub mod command;
pub mod events;
pub mod names;
pub mod policy;
pub mod request;
pub mod secret;
