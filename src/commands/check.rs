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
//! Besides what would keep the gateway from starting, it warns about what would not: a file
//! holding secrets (the keys, the trust secrets, the ledger's signed callbacks) that other
//! users can read, with the `chmod` that fixes it. And it says where a new service's key goes,
//! with the files this configuration names, since that is the next question after "which
//! services have a key?".

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
            let secrets = secret_file_warnings(&loaded);
            for w in loaded.warnings.iter().chain(&ledger.1).chain(&secrets) {
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
            mode: _,
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
            let warnings = readable_by_others("ledger.database", path, "signed callbacks")
                .into_iter()
                .collect();
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

/// The group the packaged gateway reads its keys through: `config/deb/postinst` makes
/// keys.toml `root:click-gateway`, mode 0640.
const PACKAGE_GROUP: &str = "click-gateway";

/// The warning for a file that users other than its owner and the gateway can read, with the
/// `chmod` that stops them; `what` says what they could read. A file written under the usual
/// umask is `0644`, and `check` is where an operator looks.
///
/// Other users' read bit always counts. The group's counts unless the group is the gateway's
/// own: the package's [`PACKAGE_GROUP`], or the group `check` runs with (systemd runs the
/// unit's `ExecStartPre` check as its `User=`/`Group=`); for those the advice keeps the
/// group's read bit (`chmod 640`), since following it must not lock the gateway out.
fn readable_by_others(setting: &str, path: &Path, what: &str) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    let mode = meta.permissions().mode() & 0o7777;
    let group = group_name(meta.gid());
    let gateways = group.as_deref() == Some(PACKAGE_GROUP) || effective_gid() == Some(meta.gid());
    let who = if mode & 0o004 != 0 {
        "other users".to_owned()
    } else if mode & 0o040 != 0 && !gateways {
        format!(
            "the members of group {}",
            group.unwrap_or_else(|| meta.gid().to_string())
        )
    } else {
        return None;
    };
    Some(format!(
        "{setting}: {path} has mode {mode:04o}: {who} can read {what} (chmod {} {path})",
        if gateways { "640" } else { "600" },
        path = path.display()
    ))
}

/// The name /etc/group gives `gid`, if it lists it (`name:password:gid:members`).
fn group_name(gid: u32) -> Option<String> {
    let text = std::fs::read_to_string("/etc/group").ok()?;
    text.lines().find_map(|line| {
        let mut fields = line.split(':');
        let name = fields.next()?;
        (fields.nth(1)?.parse() == Ok(gid)).then(|| name.to_owned())
    })
}

/// The effective group id of this process (the second `Gid:` field of /proc/self/status).
fn effective_gid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find_map(|l| l.strip_prefix("Gid:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// [`readable_by_others`] for the files that hold secrets: the Click keys and the trust
/// secrets (`load` has just read each, so a missing one is not this check's to report).
fn secret_file_warnings(loaded: &Loaded) -> Vec<String> {
    let s = &loaded.settings;
    let trust = s.trust.as_ref().map(|t| t.secret_file.as_path());
    [
        (
            "click.keys_file",
            s.click.keys_file.as_deref(),
            "the Click secret keys",
        ),
        (
            "click.env_file",
            s.click.env_file.as_deref(),
            "the Click secret keys",
        ),
        (
            "trust.secret_file",
            trust,
            "the secrets that attest callbacks to the backend",
        ),
    ]
    .into_iter()
    .filter_map(|(setting, path, what)| readable_by_others(setting, path?, what))
    .collect()
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
