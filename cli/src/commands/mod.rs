//! One module per `wvpc` subcommand: its clap arguments and what it does.

pub mod dev;
pub mod iris;
pub mod service;
pub mod tunnel;
pub mod tunnel_run;
