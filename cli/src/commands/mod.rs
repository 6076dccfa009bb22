//! One module per `wvpc` subcommand: its clap arguments and what it does.

pub mod binding_worker;
pub mod delete;
pub mod deploy;
pub mod deployments;
pub mod dev;
pub mod directory;
pub mod edge;
pub mod iris;
pub mod relay;
pub mod rollback;
pub mod runtime;
pub mod server_args;
pub mod service;
pub mod service_metrics;
pub mod tail;
pub mod teamnet;
pub mod test;
pub mod token;
pub mod tunnel;
pub mod tunnel_remote;
pub mod tunnel_run;
pub mod types;
pub mod up;
