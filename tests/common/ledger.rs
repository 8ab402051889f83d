//! Ledger test helpers: a configuration directory whose gateway.toml names a ledger, records
//! as the data path would build them, and reading metrics back.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use click_gateway::click::{Fingerprint, Secret, Verified};
use click_gateway::config::{LedgerSettings, Mode, Span};
use click_gateway::ledger::{Answer, Backend, BackendAnswer, Ledger, Record, Verdict};
use click_gateway::metrics::Metrics;

use super::{ConfigDir, KEYS_TOML};

/// A config directory (gateway.toml, keys.toml) with `[ledger] database = "ledger.db"`.
pub struct LedgerDir {
    pub config: ConfigDir,
}

impl LedgerDir {
    pub fn new() -> LedgerDir {
        Self::with_keys(KEYS_TOML, "")
    }

    /// `ledger_extra`: more settings of the `[ledger]` section.
    pub fn with_keys(keys_toml: &str, ledger_extra: &str) -> LedgerDir {
        let config = ConfigDir::with_click(
            "127.0.0.1:1".parse().unwrap(),
            keys_toml,
            "",
            "",
            &format!("[ledger]\ndatabase = \"ledger.db\"\n{ledger_extra}\n"),
        );
        LedgerDir { config }
    }

    pub fn db(&self) -> PathBuf {
        self.config.dir.path().join("ledger.db")
    }

    pub fn settings(&self) -> LedgerSettings {
        LedgerSettings {
            database: Some(self.db()),
            ..LedgerSettings::default()
        }
    }

    pub fn open(&self) -> (Ledger, Arc<Metrics>) {
        self.open_with(self.settings())
    }

    pub fn open_with(&self, settings: LedgerSettings) -> (Ledger, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let ledger = Ledger::open(&settings, GUARD_WINDOW, metrics.clone()).unwrap();
        (ledger, metrics)
    }

    pub fn settings_with_queue(&self, queue: usize) -> LedgerSettings {
        LedgerSettings {
            queue,
            ..self.settings()
        }
    }

    pub fn settings_with_retention(&self, retention: Span) -> LedgerSettings {
        LedgerSettings {
            retention,
            ..self.settings()
        }
    }
}

/// `guard.window`'s default.
pub const GUARD_WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// A row to keep, and for a forwarded callback its answer: `(backend, upstream, total)`.
pub struct Entry {
    pub record: Record,
    pub answer: Option<(Backend, Option<Duration>, Duration)>,
}

impl From<Record> for Entry {
    fn from(record: Record) -> Entry {
        Entry {
            record,
            answer: None,
        }
    }
}

impl std::ops::Deref for Entry {
    type Target = Record;
    fn deref(&self) -> &Record {
        &self.record
    }
}

impl std::ops::DerefMut for Entry {
    fn deref_mut(&mut self) -> &mut Record {
        &mut self.record
    }
}

/// Keeps rows as the data path would: the row, then (for a forwarded callback) its answer.
pub trait Keep {
    fn keep(&self, entry: impl Into<Entry>);
}

impl Keep for Ledger {
    fn keep(&self, entry: impl Into<Entry>) {
        let Entry { record, answer } = entry.into();
        let id = self.record(record);
        if let (Some(id), Some((backend, upstream, total))) = (id, answer) {
            self.answer(Answer {
                callback: id,
                backend,
                upstream,
                total,
            });
        }
    }
}

/// Unix seconds as a `SystemTime`.
pub fn at(unix_secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(unix_secs)
}

/// Now, to the second, minus `ago` seconds (rows the commands' `--since` windows include).
pub fn ago(secs: u64) -> SystemTime {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    at(now - secs)
}

/// A record of a urlencoded callback `body`, as the data path would build it.
pub fn record(body: &str, time: SystemTime, request_id: &str) -> Record {
    Record {
        time,
        request_id: request_id.to_owned(),
        peer: SocketAddr::from(([10, 0, 0, 7], 51804)),
        client: IpAddr::from([203, 0, 113, 9]),
        path: "/click/prepare/".into(),
        content_type: Some("application/x-www-form-urlencoded".into()),
        body: Bytes::from(body.to_owned()),
        verdict: Verdict::Verified,
        reason: None,
        hint: None,
        detail: None,
        verified: None,
        generation: 1,
        mode: Mode::Enforce,
        gateway: Duration::from_micros(120),
        bound: None,
    }
}

/// `rec`, verified by `key` (slot `slot`) and answered by the backend.
pub fn verified(
    mut rec: Record,
    service_id: u64,
    key: &str,
    slot: usize,
    status: u16,
    answer: Option<BackendAnswer>,
) -> Entry {
    rec.verdict = Verdict::Verified;
    rec.verified = Some(Verified {
        service_id,
        slot,
        fingerprint: fp(key),
    });
    Entry {
        record: rec,
        answer: Some((
            Backend { status, answer },
            Some(Duration::from_micros(3000)),
            Duration::from_micros(3120),
        )),
    }
}

/// `rec`, refused by the gateway in enforce mode for `reason`.
pub fn rejected(mut rec: Record, reason: &'static str, why: &str) -> Record {
    rec.verdict = Verdict::Rejected;
    rec.reason = Some(reason);
    rec.detail = Some(why.to_owned());
    rec
}

pub fn fp(key: &str) -> Fingerprint {
    Secret::new(key).fingerprint()
}

/// A backend's Click answer.
pub fn answer(
    error: &str,
    note: &str,
    prepare: Option<&str>,
    confirm: Option<&str>,
) -> BackendAnswer {
    BackendAnswer {
        error: Some(error.into()),
        error_note: Some(note.into()),
        merchant_prepare_id: prepare.map(Into::into),
        merchant_confirm_id: confirm.map(Into::into),
    }
}

/// The value of one series of the metrics exposition (`name{labels}`), 0 when absent.
pub fn metric(metrics: &Metrics, series: &str) -> f64 {
    metrics
        .encode()
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            (name == series).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// Rows lost, every reason.
pub fn dropped(metrics: &Metrics) -> f64 {
    ["queue_full", "write_failed", "shutdown"]
        .iter()
        .map(|r| {
            metric(
                metrics,
                &format!("click_gateway_ledger_dropped_total{{reason=\"{r}\"}}"),
            )
        })
        .sum()
}

pub fn written(metrics: &Metrics) -> f64 {
    metric(metrics, "click_gateway_ledger_rows_written_total")
}
