//! `click-gateway`: argument parsing, logging, signals and exit codes. Everything else lives in
//! the library.

#![cfg_attr(not(test), deny(clippy::unwrap_used, clippy::expect_used))]

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::prelude::*;

use click_gateway::click::keys::KeyPlaces;
use click_gateway::click::{Action, FormKind, Secret};
use click_gateway::commands::report::Format;
use click_gateway::commands::{self, sign::SignRequest};
use click_gateway::config::keys::KeyProblem;
use click_gateway::config::{self, Environment, Span};
use click_gateway::reload::Reloader;
use click_gateway::server::tls::CertResolver;
use click_gateway::server::{self, ConnSettings, Listener, TlsListener};
use click_gateway::{notify, signals, Gateway};

#[derive(Parser)]
#[command(
    name = "click-gateway",
    version,
    about = "Verifies Click payment callbacks in front of a backend"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        #[command(flatten)]
        config: ConfigArg,
        /// Log filter, e.g. `info` or `info,click_gateway=debug` (RUST_LOG also works).
        #[arg(long, default_value = "info")]
        log_level: String,
        /// `human` lines, or `json` (one object per line, fields at the top level).
        #[arg(long, value_enum, default_value = "human")]
        log_format: LogFormat,
    },
    /// Validate the configuration and keys as serve and a reload would; list the services.
    Check {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Print a signed Prepare or Complete body, for testing with curl.
    Sign(Box<SignArgs>),
    /// Judge a captured callback body against the configured keys and explain a failure.
    Verify {
        #[command(flatten)]
        config: ConfigArg,
        /// File holding the raw request body; `-` or nothing reads standard input.
        body: Option<PathBuf>,
        /// The request's Content-Type, when it was not urlencoded.
        #[arg(long, default_value = "application/x-www-form-urlencoded")]
        content_type: String,
    },
    /// A payment's timeline from the callback ledger, oldest first: each callback, what the
    /// gateway decided and why, what the backend answered.
    Payments(Box<PaymentsArgs>),
    /// Judge again the recorded callbacks refused for their signature, against the configured
    /// keys or one candidate key; forwards nothing. Exit 0 when at least one verifies now.
    Recheck(Box<RecheckArgs>),
}

#[derive(Args)]
#[command(group(
    ArgGroup::new("payment")
        .required(true)
        .multiple(true)
        .args(["merchant_trans_id", "click_trans_id", "service_id"])
))]
struct PaymentsArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// The merchant's order id, as Click sends it.
    #[arg(long)]
    merchant_trans_id: Option<String>,
    /// Click's transaction id.
    #[arg(long, value_parser = decimal_arg)]
    click_trans_id: Option<String>,
    /// The service; alone, every callback of the service in the window.
    #[arg(long, value_parser = decimal_arg)]
    service_id: Option<String>,
    /// How far back to look: `24h`, `90m`, `7d`.
    #[arg(long, default_value = "24h", value_parser = span_arg)]
    since: Span,
    #[arg(long, value_enum, default_value = "text")]
    format: FormatArg,
    /// Every column in the text table (the key, generation, backend ids, request id); the
    /// default fits about 120 columns.
    #[arg(long)]
    wide: bool,
}

#[derive(Args)]
struct RecheckArgs {
    #[command(flatten)]
    config: ConfigArg,
    /// Only the callbacks of this service.
    #[arg(long, value_parser = decimal_arg)]
    service_id: Option<String>,
    /// How far back to look: `24h`, `90m`, `7d`.
    #[arg(long, default_value = "24h", value_parser = span_arg)]
    since: Span,
    /// Judge against this one key (as if configured for each callback's service) instead of
    /// the configured keys: read from FILE, or standard input for `-`; one trailing newline
    /// dropped, a key with other whitespace around it refused. Never on the command line.
    #[arg(long)]
    secret_file: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "text")]
    format: FormatArg,
}

#[derive(Clone, Copy, ValueEnum)]
enum FormatArg {
    Text,
    Json,
}

impl From<FormatArg> for Format {
    fn from(f: FormatArg) -> Format {
        match f {
            FormatArg::Text => Format::Text,
            FormatArg::Json => Format::Json,
        }
    }
}

fn span_arg(text: &str) -> Result<Span, String> {
    Span::parse(text)
}

fn decimal_arg(text: &str) -> Result<String, String> {
    click_gateway::click::callback::parse_id(text)
        .map(|_| text.to_owned())
        .ok_or_else(|| "must be a decimal integer".to_owned())
}

#[derive(Args)]
struct ConfigArg {
    /// Configuration file.
    #[arg(long, short, default_value = "config/gateway.toml")]
    config: PathBuf,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Human,
    Json,
}

#[derive(Clone, Copy, ValueEnum)]
enum ActionArg {
    Prepare,
    Complete,
}

#[derive(Args)]
struct SignArgs {
    #[arg(long, value_enum)]
    action: ActionArg,
    #[arg(long)]
    service_id: String,
    #[arg(long)]
    click_trans_id: String,
    #[arg(long)]
    merchant_trans_id: String,
    #[arg(long)]
    amount: String,
    /// Required for a complete.
    #[arg(long)]
    merchant_prepare_id: Option<String>,
    #[arg(long, default_value = "1")]
    click_paydoc_id: String,
    /// `YYYY-MM-DD HH:mm:ss`; defaults to now in Tashkent (UTC+5).
    #[arg(long)]
    sign_time: Option<String>,
    #[arg(long, default_value = "0", allow_hyphen_values = true)]
    error: String,
    #[arg(long, default_value = "Success")]
    error_note: String,
    /// Read the secret key from this environment variable.
    #[arg(long, conflicts_with = "secret_file")]
    secret_env: Option<String>,
    /// Read the secret key from this file (`-` for standard input; one trailing newline
    /// dropped, a key with other whitespace around it refused).
    #[arg(long)]
    secret_file: Option<PathBuf>,
    /// Without --secret-env/--secret-file: sign with the service's slot-0 key from this config.
    #[arg(long, short, default_value = "config/gateway.toml")]
    config: PathBuf,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve {
            config,
            log_level,
            log_format,
        } => serve(config.config, &log_level, log_format),
        Command::Check { config } => check(config.config),
        Command::Sign(args) => sign(*args),
        Command::Verify {
            config,
            body,
            content_type,
        } => verify(config.config, body, &content_type),
        Command::Payments(args) => payments(*args),
        Command::Recheck(args) => recheck(*args),
    };
    match result {
        Ok(code) => code,
        Err(message) => {
            eprintln!("click-gateway: {message}");
            ExitCode::FAILURE
        }
    }
}

type Outcome = Result<ExitCode, String>;

fn success(ok: bool) -> ExitCode {
    if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn check(path: PathBuf) -> Outcome {
    let ok = commands::check::run(
        &path,
        &Environment::from_process(),
        &mut io::stdout().lock(),
        &mut io::stderr().lock(),
    )
    .map_err(|e| e.to_string())?;
    Ok(success(ok))
}

fn load_keys(path: &std::path::Path) -> Result<config::Loaded, String> {
    config::load(path, &Environment::from_process()).map_err(|e| {
        format!(
            "{}: configuration has problems (run check):\n{e}",
            path.display()
        )
    })
}

fn sign(a: SignArgs) -> Outcome {
    let secret = if let Some(var) = &a.secret_env {
        let key =
            std::env::var(var).map_err(|_| format!("environment variable {var} is not set"))?;
        checked_secret(&key, &format!("in environment variable {var}"))?
    } else if let Some(file) = &a.secret_file {
        read_secret_file(file)?
    } else {
        let loaded = load_keys(&a.config)?;
        let id = click_gateway::click::callback::parse_id(&a.service_id)
            .ok_or("service_id must be a decimal integer")?;
        loaded
            .keys
            .get(id)
            .and_then(|s| s.keys.first())
            .map(|k| k.secret.clone())
            .ok_or_else(|| {
                let places = KeyPlaces {
                    service_id: Some(id),
                    files: Some(loaded.key_files(&a.config)),
                };
                format!(
                    "no key is configured for service {id} in {}: put it {places}",
                    a.config.display()
                )
            })?
    };
    let req = SignRequest {
        action: match a.action {
            ActionArg::Prepare => Action::Prepare,
            ActionArg::Complete => Action::Complete,
        },
        service_id: a.service_id,
        click_trans_id: a.click_trans_id,
        click_paydoc_id: a.click_paydoc_id,
        merchant_trans_id: a.merchant_trans_id,
        merchant_prepare_id: a.merchant_prepare_id,
        amount: a.amount,
        sign_time: a.sign_time,
        error: a.error,
        error_note: a.error_note,
    };
    let body = commands::sign::body(&req, &secret)?;
    println!("{body}");
    Ok(ExitCode::SUCCESS)
}

/// A key from a file, or standard input for `-`, with one trailing newline (`\n` or `\r\n`)
/// dropped: what `echo KEY > file` adds. Anything else around the key is refused as the key
/// files refuse it: taken byte for byte, a pasted trailing space would only show up as a
/// different fingerprint and "0 verify", as if Click had sent the wrong key.
fn read_secret_file(file: &std::path::Path) -> Result<Secret, String> {
    let mut text = String::new();
    let stdin = file.as_os_str() == "-";
    if stdin {
        io::stdin().read_to_string(&mut text)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_string(&mut text))
    }
    .map_err(|e| format!("cannot read the secret from {}: {e}", file.display()))?;
    let key = text.strip_suffix('\n').unwrap_or(&text);
    let key = key.strip_suffix('\r').unwrap_or(key);
    let place = if stdin {
        "on standard input".to_owned()
    } else {
        format!("in {}", file.display())
    };
    checked_secret(key, &place)
}

/// `key` as a [`Secret`], or what is wrong with it (`place`: `in FILE`), by the key files' rule.
fn checked_secret(key: &str, place: &str) -> Result<Secret, String> {
    match KeyProblem::of(key) {
        None => Ok(Secret::new(key)),
        Some(p) => Err(format!("the key {place} {}: {}", p.what(), p.fix())),
    }
}

fn payments(a: PaymentsArgs) -> Outcome {
    let query = commands::payments::PaymentsQuery {
        merchant_trans_id: a.merchant_trans_id,
        click_trans_id: a.click_trans_id,
        service_id: a.service_id,
        since: a.since,
        wide: a.wide,
    };
    let mut out = io::stdout().lock();
    commands::payments::run(
        &a.config.config,
        &Environment::from_process(),
        &query,
        a.format.into(),
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(ExitCode::SUCCESS)
}

fn recheck(a: RecheckArgs) -> Outcome {
    let candidate = a.secret_file.as_deref().map(read_secret_file).transpose()?;
    let query = commands::recheck::RecheckQuery {
        service_id: a.service_id,
        since: a.since,
        candidate,
    };
    let mut out = io::stdout().lock();
    let any = commands::recheck::run(
        &a.config.config,
        &Environment::from_process(),
        &query,
        a.format.into(),
        &mut out,
    )
    .map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(success(any))
}

fn verify(path: PathBuf, body: Option<PathBuf>, content_type: &str) -> Outcome {
    let kind =
        FormKind::from_content_type(content_type).map_err(|e| format!("--content-type: {e}"))?;
    let loaded = load_keys(&path)?;
    let mut bytes = Vec::new();
    match body.as_deref() {
        None => io::stdin().read_to_end(&mut bytes),
        Some(p) if p.as_os_str() == "-" => io::stdin().read_to_end(&mut bytes),
        Some(p) => std::fs::File::open(p).and_then(|mut f| f.read_to_end(&mut bytes)),
    }
    .map_err(|e| format!("cannot read the body: {e}"))?;
    // A body saved with `echo` or an editor ends with a newline Click never sent.
    if bytes.ends_with(b"\n") && !matches!(kind, FormKind::Multipart { .. }) {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    let mut out = io::stdout().lock();
    let files = loaded.key_files(&path);
    let ok = commands::verify::run(&bytes, &kind, &loaded.keys, files, &mut out)
        .map_err(|e| e.to_string())?;
    out.flush().map_err(|e| e.to_string())?;
    Ok(success(ok))
}

fn init_logging(level: &str, format: LogFormat) -> Result<(), String> {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| level.to_owned());
    let filter: Targets = spec
        .parse()
        .map_err(|e| format!("bad log filter {spec:?}: {e}"))?;
    let registry = tracing_subscriber::registry().with(filter);
    match format {
        LogFormat::Human => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .with_writer(io::stderr)
                    .with_ansi(false)
                    .fmt_fields(click_gateway::log_fields::LogFields),
            )
            .try_init(),
        LogFormat::Json => registry
            .with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .with_current_span(false)
                    .with_writer(io::stderr),
            )
            .try_init(),
    }
    .map_err(|e| e.to_string())
}

/// Logs panics. tokio catches a panic in a connection task, so it ends that connection and
/// nothing else; this hook makes sure ops hear of it.
fn log_panics() {
    std::panic::set_hook(Box::new(|info| {
        let message = info
            .payload()
            .downcast_ref::<&str>()
            .copied()
            .or_else(|| info.payload().downcast_ref::<String>().map(String::as_str))
            .unwrap_or("(no message)");
        let location = info
            .location()
            .map(|l| format!("{}:{}", l.file(), l.line()))
            .unwrap_or_default();
        tracing::error!(%location, "panic: {message}; the task is dropped, the gateway keeps serving");
    }));
}

/// How long a stop waits for the ledger to commit what is queued.
const LEDGER_CLOSE: Duration = Duration::from_secs(5);

fn serve(path: PathBuf, log_level: &str, log_format: LogFormat) -> Outcome {
    init_logging(log_level, log_format)?;
    log_panics();
    let loaded = match config::load(&path, &Environment::from_process()) {
        Ok(l) => l,
        Err(e) => {
            for p in &e.problems {
                tracing::error!("config: {p}");
            }
            return Err(format!(
                "{}: {} configuration problem(s); not starting",
                path.display(),
                e.problems.len()
            ));
        }
    };
    for w in &loaded.warnings {
        tracing::warn!("{w}");
    }
    // Connections are served by the server's worker threads, each with a runtime of its own;
    // this one runs signals, the admin listener, reloads and the drain.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the async runtime: {e}"))?;
    let outcome = runtime.block_on(async move {
        // Before anything can report readiness: a SIGHUP must never meet the default action.
        let signals =
            signals::install().map_err(|e| format!("cannot install signal handlers: {e}"))?;
        let srv = &loaded.settings.server;
        let mut listeners = Vec::new();
        let mut addresses = Vec::new();
        if let Some(addr) = srv.listen {
            let tcp = server::bind("server.listen", addr, srv.listen_backlog)
                .map_err(|e| e.to_string())?;
            addresses.push(format!(
                "http://{}",
                tcp.local_addr().map_err(|e| e.to_string())?
            ));
            listeners.push(Listener::plain(tcp));
        }
        let mut certificates = None;
        if let (Some(addr), Some(tls)) = (srv.tls_listen, &loaded.tls) {
            let resolver = CertResolver::new(tls.certified.clone());
            let acceptor = server::tls::acceptor(resolver.clone()).map_err(|e| e.to_string())?;
            let tcp = server::bind("server.tls_listen", addr, srv.listen_backlog)
                .map_err(|e| e.to_string())?;
            addresses.push(format!(
                "https://{}",
                tcp.local_addr().map_err(|e| e.to_string())?
            ));
            let tls_listener = TlsListener::new(
                acceptor,
                srv.tls_handshake_timeout.0,
                srv.max_tls_handshakes,
            );
            listeners.push(Listener::tls(tcp, tls_listener));
            tracing::info!("certificate: {}", tls.describe());
            certificates = Some(resolver);
        }
        // Every listener before the ledger: a port in use is the likelier mistake, and is
        // found without opening (or creating) the ledger and the guard's store.
        let admin_tcp = if loaded.settings.admin.enabled {
            let tcp = server::bind(
                "admin.listen",
                loaded.settings.admin.listen,
                server::DEFAULT_BACKLOG,
            )
            .map_err(|e| e.to_string())?;
            addresses.push(format!(
                "admin=http://{}",
                tcp.local_addr().map_err(|e| e.to_string())?
            ));
            Some(tcp)
        } else {
            None
        };
        let gateway = Arc::new(Gateway::new(&loaded).map_err(|e| e.to_string())?);
        let ledger = gateway.ledger.clone();
        let reloader = Arc::new(Reloader::new(
            path,
            gateway.runtime.clone(),
            loaded.settings.clone(),
            certificates,
            gateway.metrics.clone(),
        ));
        let control = tokio::spawn(signals.run(reloader));
        // The admin listener outlives the drain, so /ready can say 503 while it runs.
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let mut admin = None;
        if let Some(tcp) = admin_tcp {
            admin = Some(tokio::spawn(click_gateway::admin::run(
                tcp,
                gateway.clone(),
                async move {
                    let _ = admin_stopped.await;
                },
            )));
        }
        tracing::info!(
            listen = %addresses.join(","),
            upstream = %loaded.settings.upstream.url,
            services = loaded.keys.len(),
            generation = 1,
            "click-gateway {} ready",
            env!("CARGO_PKG_VERSION")
        );
        // Listeners are bound: connections queue until the accept loops take them (and
        // `server::run` reports the gateway ready once they do).
        notify::ready("serving generation 1");
        let shutdown = async move {
            let _ = control.await;
        };
        server::run(
            listeners,
            gateway,
            ConnSettings::from(&loaded.settings.server),
            shutdown,
        )
        .await;
        // The last callbacks' rows: committed now, or counted lost (`shutdown`) if the disk
        // does not take them in time.
        if let Some(store) = ledger {
            if !store.close(LEDGER_CLOSE).await {
                tracing::warn!(
                    ledger = %store.location().path().display(),
                    "ledger: rows still queued after {LEDGER_CLOSE:?} were counted lost"
                );
            }
        }
        let _ = admin_stop.send(());
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("stopped");
        Ok(ExitCode::SUCCESS)
    });
    // A reload stuck in a blocking read (a hung mount) must not keep the process from exiting:
    // dropping the runtime would wait for it without limit.
    runtime.shutdown_timeout(Duration::from_secs(1));
    outcome
}
