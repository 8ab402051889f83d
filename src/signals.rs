//! The one place signals are handled: SIGHUP reloads, SIGTERM/SIGINT stop.
//!
//! Handlers are installed by [`install`] before the gateway reports itself ready: SIGHUP's
//! default action is to terminate, so a `systemctl reload` arriving between startup and
//! installation would kill the process. tokio coalesces signals ("any element pulled off the
//! stream corresponds to at least one signal"), and one that arrives during a reload makes the
//! next `recv` return at once, so a burst of SIGHUPs ends with a reload that read the files as
//! they stand after the last one.

use std::io;
use std::sync::Arc;

use tokio::signal::unix::{signal, Signal, SignalKind};

use crate::config::Environment;
use crate::notify;
use crate::reload::Reloader;

pub struct Signals {
    hup: Signal,
    term: Signal,
    int: Signal,
}

pub fn install() -> io::Result<Signals> {
    Ok(Signals {
        hup: signal(SignalKind::hangup())?,
        term: signal(SignalKind::terminate())?,
        int: signal(SignalKind::interrupt())?,
    })
}

impl Signals {
    /// Reloads on every SIGHUP; returns at the first SIGTERM or SIGINT (use it as the server's
    /// shutdown future).
    pub async fn run(mut self, reloader: Arc<Reloader>) {
        loop {
            tokio::select! {
                _ = self.hup.recv() => reload(&reloader).await,
                _ = self.term.recv() => return stop("SIGTERM"),
                _ = self.int.recv() => return stop("SIGINT"),
            }
        }
    }
}

fn stop(name: &str) {
    tracing::info!("{name} received: draining, then stopping");
    notify::stopping();
}

async fn reload(reloader: &Arc<Reloader>) {
    let r = reloader.clone();
    // File reads and the blocking sd_notify socket: keep them off the reactor threads.
    let outcome = tokio::task::spawn_blocking(move || {
        notify::reloading();
        r.reload(&Environment::from_process())
    })
    .await;
    let status = match outcome {
        Ok(Ok(report)) => {
            tracing::info!(
                generation = report.generation,
                services = report.services,
                changes = ?report.changes,
                "reload ok: generation {} in force",
                report.generation
            );
            for w in &report.warnings {
                tracing::warn!("{w}");
            }
            for section in &report.restart_needed {
                tracing::warn!("[{section}] settings changed: they apply only after a restart");
            }
            format!("serving generation {}", report.generation)
        }
        Ok(Err(e)) => {
            for p in &e.problems {
                tracing::error!("reload: {p}");
            }
            tracing::error!(
                problems = e.problems.len(),
                "reload failed: previous keys and settings stay in force"
            );
            "last reload failed; previous configuration in force".to_owned()
        }
        Err(e) => {
            tracing::error!("reload task failed: {e}; previous configuration in force");
            "last reload failed; previous configuration in force".to_owned()
        }
    };
    let _ = tokio::task::spawn_blocking(move || notify::ready(&status)).await;
}
