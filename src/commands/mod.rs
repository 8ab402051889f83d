//! The operator's subcommands besides `serve`. Each writes to the writers it is given and
//! returns whether it succeeded, so tests can run them without a process.

pub mod check;
pub mod sign;
pub mod verify;
