//! `click-gateway check`: load and validate exactly as `serve` and a reload do, then list what
//! would run (like `nginx -t`). Answers "is the key for service 82154 loaded?" in one command.
//!
//! A SQLite ledger is inspected without being changed: its schema version is read through a
//! read-only connection (an older one is reported as "serve migrates it"; `check` never
//! migrates a production file behind the operator's back), and writability is tried by
//! opening the file for writing, writing nothing. A PostgreSQL ledger is different: several
//! gateways share it, so `check` connects and creates or migrates the schema, as `serve` would
//! on start, and says so (the operator's `check`, before a rollout, is a better time for that
//! than whichever gateway starts first).
//!
//! It also says where a new service's key goes, with the files this configuration names,
//! since that is the next question after "which services have a key?".

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use super::report::span_text;
use crate::click::keys::KeyPlaces;
use crate::config::{self, Environment, Loaded};
use crate::ledger::{Inspection, Location, Store, SCHEMA_VERSION};

/// Prints the configuration summary to `out`, or every problem to `err`. Returns success.
pub fn run(
    path: &Path,
    env: &Environment,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> io::Result<bool> {
    match config::load(path, env) {
        Ok(loaded) => {
            let ledger = match ledger_line(&loaded, path, env) {
                Ok(l) => l,
                Err(problem) => {
                    writeln!(err, "error: {}: {problem}", path.display())?;
                    writeln!(
                        err,
                        "{}: 1 problem(s); nothing would start or reload",
                        path.display()
                    )?;
                    return Ok(false);
                }
            };
            summary(path, &loaded, &ledger.0, out)?;
            for w in loaded.warnings.iter().chain(&ledger.1) {
                writeln!(err, "warning: {w}")?;
            }
            Ok(true)
        }
        Err(e) => {
            for p in &e.problems {
                writeln!(err, "error: {p}")?;
            }
            writeln!(
                err,
                "{}: {} problem(s); nothing would start or reload",
                path.display(),
                e.problems.len()
            )?;
            Ok(false)
        }
    }
}

/// The ledger's line of the summary and its warnings, or the problem that would keep `serve`
/// from opening it.
fn ledger_line(
    loaded: &Loaded,
    config: &Path,
    env: &Environment,
) -> Result<(String, Vec<String>), String> {
    let settings = &loaded.settings.ledger;
    if settings.database.is_none() {
        return Ok(("(none: callbacks are not recorded)".into(), Vec::new()));
    }
    let location = Location::from_settings(settings).map_err(|e| e.to_string())?;
    // The path, or the URL redacted: it may carry a password.
    let path = location.path();
    let tail = format!(
        "retention {}, queue {}",
        span_text(settings.retention),
        settings.queue
    );
    match Store::inspect(&location) {
        Ok(Inspection::Absent) => Ok((
            format!(
                "{} (not created yet: serve creates it, schema v{SCHEMA_VERSION}); {tail}",
                path.display()
            ),
            Vec::new(),
        )),
        Ok(Inspection::Present {
            version,
            rows,
            writable,
            mode,
        }) => {
            writable.map_err(|e| {
                format!(
                    "ledger.database: {} cannot be opened for writing: {e}",
                    path.display()
                )
            })?;
            let schema = if version < SCHEMA_VERSION {
                format!("schema v{version}, serve migrates it to v{SCHEMA_VERSION} on start")
            } else {
                format!("schema v{version}")
            };
            let mut warnings = Vec::new();
            if mode & 0o077 != 0 {
                warnings.push(format!(
                    "ledger.database: {} has mode {mode:04o}: other users can read signed callbacks (chmod 600)",
                    path.display()
                ));
            }
            Ok((
                format!(
                    "{} ({schema}, {rows} rows, writable); {tail}",
                    path.display()
                ),
                warnings,
            ))
        }
        Ok(Inspection::Shared {
            from,
            version,
            rows,
            server,
        }) => {
            let schema = match from {
                0 => format!("schema v{version}, created now by check"),
                v if v < version => format!("schema v{version}, migrated from v{v} now by check"),
                _ => format!("schema v{version}"),
            };
            Ok((
                format!(
                    "{} (PostgreSQL {server}, shared; {schema}, {rows} rows); {tail}",
                    path.display()
                ),
                password_warning(&location, config, env)
                    .into_iter()
                    .collect(),
            ))
        }
        Err(e) => Err(format!("ledger.database: {e}")),
    }
}

/// A PostgreSQL password written in a `gateway.toml` that every user can read (the packaged
/// one is `0644`): said, with the way out, since `check` is where an operator looks.
fn password_warning(location: &Location, config: &Path, env: &Environment) -> Option<String> {
    let Location::Postgres(url) = location else {
        return None;
    };
    let from_env = env
        .vars()
        .any(|(name, _)| name.eq_ignore_ascii_case("CLICK_GATEWAY_LEDGER__DATABASE"));
    let mode = std::fs::metadata(config).ok()?.permissions().mode();
    (url.has_password() && !from_env && mode & 0o004 != 0).then(|| {
        format!(
            "ledger.database: the PostgreSQL URL carries a password and {} is readable by every user (mode {:04o}): set the URL in CLICK_GATEWAY_LEDGER__DATABASE from a 0600 EnvironmentFile instead",
            config.display(),
            mode & 0o7777
        )
    })
}

fn summary(path: &Path, loaded: &Loaded, ledger: &str, out: &mut dyn Write) -> io::Result<()> {
    let s = &loaded.settings;
    let none = || "(none)".to_owned();
    writeln!(out, "{}: configuration ok", path.display())?;
    if let Some(addr) = s.server.listen {
        writeln!(out, "  listen (http)   {addr}")?;
    }
    if let (Some(addr), Some(tls)) = (s.server.tls_listen, &loaded.tls) {
        writeln!(
            out,
            "  listen (https)  {addr}, certificate {}",
            tls.describe()
        )?;
    }
    if !s.server.trusted_proxies.is_empty() {
        let nets: Vec<String> = s
            .server
            .trusted_proxies
            .iter()
            .map(ToString::to_string)
            .collect();
        writeln!(out, "  trusted proxies {}", nets.join(" "))?;
    }
    writeln!(
        out,
        "  upstream        {} (connect {}, response {}, pool idle {} x{})",
        s.upstream.url,
        s.upstream.connect_timeout,
        s.upstream.response_timeout,
        s.upstream.pool_idle_timeout,
        s.upstream.pool_max_idle
    )?;
    writeln!(out, "  callback paths  {}", s.click.paths.join(" "))?;
    let show =
        |p: &Option<std::path::PathBuf>| p.as_ref().map_or_else(none, |p| p.display().to_string());
    writeln!(out, "  keys_file       {}", show(&s.click.keys_file))?;
    writeln!(out, "  env_file        {}", show(&s.click.env_file))?;
    writeln!(out, "  ledger          {ledger}")?;
    if let (Some(t), Some(trust)) = (&s.trust, &loaded.trust) {
        let fps = trust.fingerprints();
        let (signs, listed) = fps
            .split_first()
            .map_or(("?", &[][..]), |(f, r)| (f.as_str(), r));
        let also = if listed.is_empty() {
            String::new()
        } else {
            format!("; also listed for the backend: fp {}", listed.join(", fp "))
        };
        writeln!(
            out,
            "  trust           {} (signs with fp {signs}{also})",
            t.secret_file.display(),
        )?;
    }
    writeln!(out, "services: {}", loaded.keys.len())?;
    for (id, svc) in loaded.keys.iter() {
        let n = svc.keys.len();
        writeln!(
            out,
            "  service {id}: {n} key{}",
            if n == 1 { "" } else { "s" }
        )?;
        for (slot, k) in svc.keys.iter().enumerate() {
            let sources: Vec<String> = k.sources.iter().map(ToString::to_string).collect();
            writeln!(
                out,
                "    slot {slot}  fp {}  from {}",
                k.fingerprint,
                sources.join(", ")
            )?;
        }
    }
    let places = KeyPlaces {
        service_id: None,
        files: Some(loaded.key_files(path)),
    };
    writeln!(out, "  a new service's key: put it {places}")?;
    Ok(())
}
