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
    /// shutdown future). A reload runs in its own task, so a slow one (a keys file on a hung
    /// mount) never delays a stop; SIGHUPs that arrive during a reload are coalesced into one
    /// more reload after it. A second SIGTERM or SIGINT during the drain exits at once.
    pub async fn run(self, reloader: Arc<Reloader>) {
        let Signals {
            mut hup,
            mut term,
            mut int,
        } = self;
        let mut running: Option<tokio::task::JoinHandle<()>> = None;
        let mut again = false;
        let name = loop {
            tokio::select! {
                _ = hup.recv() => {
                    if running.is_some() {
                        again = true;
                    } else {
                        running = Some(tokio::spawn(reload(reloader.clone())));
                    }
                }
                _ = async {
                    if let Some(task) = running.as_mut() {
                        let _ = task.await;
                    }
                }, if running.is_some() => {
                    running = None;
                    if std::mem::take(&mut again) {
                        running = Some(tokio::spawn(reload(reloader.clone())));
                    }
                }
                _ = term.recv() => break "SIGTERM",
                _ = int.recv() => break "SIGINT",
            }
        };
        tracing::info!("{name} received: draining, then stopping (send it again to stop at once)");
        notify::stopping();
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            tracing::warn!("second {name}: exiting without waiting for the drain");
            std::process::exit(1);
        });
    }
}

async fn reload(reloader: Arc<Reloader>) {
    let r = reloader;
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
            for changed in &report.restart_needed {
                match changed.split_once('.') {
                    Some(_) => tracing::warn!(
                        "{changed} changed: it applies only after a restart (systemctl restart click-gateway)"
                    ),
                    None => tracing::warn!(
                        "[{changed}] settings changed: they apply only after a restart (systemctl restart click-gateway)"
                    ),
                }
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
