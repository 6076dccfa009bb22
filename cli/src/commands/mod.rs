//! One module per `wvpc` subcommand: its clap arguments and what it does.

pub mod binding_worker;
pub mod deploy;
pub mod dev;
pub mod directory;
pub mod edge;
pub mod iris;
pub mod service;
pub mod token;
pub mod tunnel;
pub mod tunnel_remote;
pub mod tunnel_run;
