//! Reloading keys and reloadable settings without dropping anything in flight.
//!
//! A reload reads every source again through [`config::load`] (the same validation `check`
//! runs), builds a whole new [`Runtime`] off to the side and only then stores it in the
//! `ArcSwap`. Requests that already loaded the old snapshot finish with it; the next request
//! sees the new one. On any problem nothing is stored: the previous keys stay in force.
//! Listeners, connections, the upstream pool, the ledger's writer and the guard's index are
//! not touched; `server`, `upstream`, `admin` and `ledger` settings and `guard.window`
//! therefore need a restart, and a reload that changes them says so.

use std::path::PathBuf;
use std::sync::Arc;

use crate::click::KeySet;
use crate::config::{self, ConfigError, Environment, ServerSettings, Settings};
use crate::metrics::{Metrics, ResultLabels};
use crate::runtime::{Runtime, SharedRuntime};
use crate::server::tls::CertResolver;

/// What a successful reload changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub generation: u64,
    pub services: usize,
    /// One line per change: keys added, removed or replaced (by fingerprint), paths changed.
    pub changes: Vec<String>,
    /// Settings that changed on disk but only apply after a restart: sections, or one
    /// setting (`guard.window`).
    pub restart_needed: Vec<&'static str>,
    pub warnings: Vec<String>,
}

/// Re-reads the configuration and swaps it in. One per process; reloads are serialized by
/// the signal loop that calls [`Reloader::reload`].
#[derive(Debug)]
pub struct Reloader {
    path: PathBuf,
    runtime: SharedRuntime,
    /// The settings the process started with: what `server`/`upstream` really run with.
    started_with: Settings,
    /// The HTTPS listener's certificate, when there is one.
    certificates: Option<Arc<CertResolver>>,
    /// Reload counters, the generation and the time of the last success live here.
    metrics: Arc<Metrics>,
}

impl Reloader {
    pub fn new(
        path: PathBuf,
        runtime: SharedRuntime,
        started_with: Settings,
        certificates: Option<Arc<CertResolver>>,
        metrics: Arc<Metrics>,
    ) -> Reloader {
        Reloader {
            path,
            runtime,
            started_with,
            certificates,
            metrics,
        }
    }

    /// Loads and validates everything, then stores the new runtime. On error the current one
    /// stays and the failure is counted.
    pub fn reload(&self, env: &Environment) -> Result<ReloadReport, ConfigError> {
        let loaded = match config::load(&self.path, env) {
            Ok(l) => l,
            Err(e) => {
                self.metrics
                    .reloads
                    .get_or_create(&ResultLabels { result: "failure" })
                    .inc();
                return Err(e);
            }
        };
        let current = self.runtime.load_full();
        let next = Runtime::new(&loaded, current.generation + 1, &self.metrics);
        let mut changes = key_changes(&current.keys, &next.keys);
        if next.callback_paths != current.callback_paths {
            changes.push(format!(
                "click.paths: {} -> {}",
                current.callback_paths.join(" "),
                next.callback_paths.join(" ")
            ));
        }
        let fps = |t: &Option<crate::trust::Trust>| t.as_ref().map(|t| t.fingerprints().join(","));
        let (was, now) = (fps(&current.trust), fps(&next.trust));
        if was != now {
            let show = |f: Option<String>| f.unwrap_or_else(|| "none".into());
            changes.push(format!("trust: {} -> {}", show(was), show(now)));
        }
        let mut restart_needed = Vec::new();
        // Certificate files are reloadable; everything else in [server] owns a socket.
        let sockets = |s: &Settings| ServerSettings {
            tls_cert: None,
            tls_key: None,
            ..s.server.clone()
        };
        if sockets(&loaded.settings) != sockets(&self.started_with) {
            restart_needed.push("server");
        }
        if loaded.settings.upstream != self.started_with.upstream {
            restart_needed.push("upstream");
        }
        if loaded.settings.admin != self.started_with.admin {
            restart_needed.push("admin");
        }
        // The ledger's writer owns its store, and the guard's index is built at start.
        if loaded.settings.ledger != self.started_with.ledger {
            restart_needed.push("ledger");
        }
        if loaded.settings.guard.window != self.started_with.guard.window {
            restart_needed.push("guard.window");
        }
        // (An HTTPS listener added or removed shows as a changed tls_listen above.)
        if let (Some(resolver), Some(tls)) = (&self.certificates, &loaded.tls) {
            if resolver.current().cert.first() != tls.certified.cert.first() {
                changes.push(format!("certificate: {}", tls.describe()));
            }
        }
        let report = ReloadReport {
            generation: next.generation,
            services: next.keys.len(),
            changes,
            restart_needed,
            warnings: loaded.warnings,
        };
        if let (Some(resolver), Some(tls)) = (&self.certificates, &loaded.tls) {
            resolver.store(tls.certified.clone());
        }
        self.runtime.store(Arc::new(next));
        self.metrics
            .reloads
            .get_or_create(&ResultLabels { result: "success" })
            .inc();
        self.metrics
            .generation
            .set(i64::try_from(report.generation).unwrap_or(i64::MAX));
        self.metrics.last_reload_success.set(unix_now() as f64);
        Ok(report)
    }
}

fn unix_now() -> u64 {
    u64::try_from(crate::clock::unix_now()).unwrap_or(0)
}

/// Describes key changes by fingerprint, so the log line of a reload answers "did my new key
/// load?" without showing a key.
pub fn key_changes(old: &KeySet, new: &KeySet) -> Vec<String> {
    let fps = |keys: &KeySet, id| {
        keys.get(id).map(|s| {
            s.keys
                .iter()
                .map(|k| k.fingerprint.to_string())
                .collect::<Vec<_>>()
                .join(",")
        })
    };
    let mut ids: Vec<u64> = old
        .iter()
        .map(|(id, _)| id)
        .chain(new.iter().map(|(id, _)| id))
        .collect();
    ids.sort_unstable();
    ids.dedup();
    ids.into_iter()
        .filter_map(|id| match (fps(old, id), fps(new, id)) {
            (None, Some(n)) => Some(format!("service {id} added: {n}")),
            (Some(o), None) => Some(format!("service {id} removed (was {o})")),
            (Some(o), Some(n)) if o != n => Some(format!("service {id}: {o} -> {n}")),
            _ => None,
        })
        .collect()
}
