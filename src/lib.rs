//! click-gateway: a reverse proxy that verifies Click (click.uz) payment callbacks before they
//! reach the backend, and forwards everything else unchanged.
//!
//! One callback, top to bottom: [`server`] accepts and speaks HTTP, [`gateway`] runs the
//! request's stages in order with the keys and settings of one [`runtime`] snapshot: the
//! [`lane`] and its budgets, the head made fit for the backend, the [`checkpoint`] judging the
//! body with [`click`], then [`proxy`] forwarding it; [`answer`] writes every answer the gateway
//! gives itself. [`config`] reads everything at startup
//! and on reload; [`commands`] holds the `check`, `sign`, `verify`, `payments` and `recheck`
//! subcommands. [`ledger`] keeps a row per callback in an embedded database, off the request
//! path.

// A panic on the request or reload path would drop a payment callback: outside tests, every
// fallible step is handled, and clippy (`-D warnings` in CI) keeps it that way.
#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

pub mod admin;
pub mod answer;
pub mod body;
pub mod checkpoint;
pub mod click;
pub mod clock;
pub mod commands;
pub mod config;
pub mod gateway;
pub mod guard;
pub mod lane;
pub mod ledger;
pub mod metrics;
pub mod notify;
pub mod proxy;
pub mod refusals;
pub mod reload;
pub mod request_id;
pub mod runtime;
pub mod server;
pub mod signals;
pub mod text;
pub mod trust;

pub use gateway::Gateway;
