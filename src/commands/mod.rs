//! The operator's subcommands besides `serve`. Each writes to the writers it is given and
//! returns whether it succeeded, so tests can run them without a process. `payments` and
//! `recheck` read the callback ledger (read-only, while the gateway writes it).

pub mod check;
pub mod payments;
pub mod recheck;
pub mod report;
pub mod sign;
pub mod verify;
