//! One module per subcommand.

pub mod adapter;
pub mod chat;
pub mod common;
pub mod data;
pub mod eval;
pub mod generate;
pub mod interp;
pub mod model;
pub mod realign;
pub mod run;
pub mod serve;
pub mod steer;
pub mod train;
