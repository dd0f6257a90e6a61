//! The `vidx` command line: a thin layer that parses flags into validated configs and drives the
//! coordinator and worker libraries. Kept as a library so integration tests can call the same
//! code paths the binary runs.

#![warn(missing_docs)]

pub mod autoscale;
pub mod bench;
pub mod cli;
pub mod commands;
pub mod telemetry;
