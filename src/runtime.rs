//! The state a request reads: keys and reloadable settings, as one immutable snapshot.
//!
//! It lives in one [`ArcSwap`]; a request loads it once and uses that snapshot for everything
//! (verification and the log line), so a reload in the middle of a request cannot mix two key
//! sets. A reload builds a whole new `Runtime` off to the side and stores it; nothing is
//! mutated in place.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;

use crate::click::KeySet;
use crate::config::{GuardMode, GuardSettings, LedgerSettings, Loaded, Mode, StoreErrorPolicy};
use crate::metrics::{Metrics, ServiceLabels};
use crate::trust::Trust;

/// One generation of keys and reloadable settings.
#[derive(Debug)]
pub struct Runtime {
    /// 1 for the configuration read at startup, +1 for each successful reload.
    pub generation: u64,
    pub loaded_at: SystemTime,
    pub keys: KeySet,
    /// Callback paths as configured (`click.paths`).
    pub callback_paths: Vec<String>,
    /// What requests are matched against: each configured path with and without its trailing
    /// slash (see [`Runtime::is_callback_path`]).
    matched_paths: Vec<String>,
    /// `click.mode`, and its per-service overrides.
    pub mode: Mode,
    pub service_modes: HashMap<u64, Mode>,
    /// `click.max_sign_age` with `click.sign_age_mode`, when the check is on.
    pub sign_age: Option<(Duration, Mode)>,
    /// `click.sign_time_zone`, seconds east of UTC.
    pub sign_time_offset: i32,
    /// Metric label values of the configured services.
    pub service_labels: ServiceLabels,
    /// The attestation secrets (`[trust]`), when configured.
    pub trust: Option<Trust>,
    /// The replay guard's rules (`[guard]`), when any is on (they need a ledger).
    pub guard: Option<GuardRules>,
}

/// The handle shared by every connection.
pub type SharedRuntime = Arc<ArcSwap<Runtime>>;

impl Runtime {
    pub fn new(loaded: &Loaded, generation: u64, metrics: &Metrics) -> Runtime {
        let click = &loaded.settings.click;
        Runtime {
            generation,
            loaded_at: SystemTime::now(),
            keys: loaded.keys.clone(),
            callback_paths: loaded.settings.click.paths.clone(),
            matched_paths: spellings(&loaded.settings.click.paths),
            mode: click.mode,
            service_modes: click
                .service_modes
                .iter()
                .filter_map(|(id, mode)| Some((crate::click::callback::parse_id(id)?, *mode)))
                .collect(),
            sign_age: click.max_sign_age.map(|age| (age.0, click.sign_age_mode)),
            sign_time_offset: click.sign_time_zone.0,
            service_labels: ServiceLabels::new(&loaded.keys, metrics),
            trust: loaded.trust.clone(),
            guard: GuardRules::new(&loaded.settings.guard, &loaded.settings.ledger),
        }
    }

    /// The mode of checks for a service (the global one when the service is not known).
    pub fn mode_for(&self, service_id: Option<u64>) -> Mode {
        service_id
            .and_then(|id| self.service_modes.get(&id).copied())
            .unwrap_or(self.mode)
    }

    pub fn shared(self) -> SharedRuntime {
        Arc::new(ArcSwap::from_pointee(self))
    }

    /// Whether a request path is a callback path. The path is compared after percent-decoding,
    /// as Django routes on the decoded `PATH_INFO`: `/click/%70repare/` reaches the same view
    /// as `/click/prepare/` and must be verified just the same. A configured path matches with
    /// and without its trailing slash: a URL pattern may accept both spellings (a `re_path`
    /// with `/?$`, `APPEND_SLASH` redirects, other frameworks' strict-slashes-off routers),
    /// and a spelling the gateway did not judge would reach the view unverified.
    pub fn is_callback_path(&self, path: &str) -> bool {
        let decoded = percent_decode_path(path);
        self.matched_paths.iter().any(|p| *p == *decoded)
    }
}

/// Every configured path, with and without its trailing slash.
fn spellings(paths: &[String]) -> Vec<String> {
    let mut all = Vec::with_capacity(paths.len() * 2);
    for p in paths {
        let other = match p.strip_suffix('/') {
            Some(bare) => bare.to_owned(),
            None => format!("{p}/"),
        };
        for spelling in [p.clone(), other] {
            if !spelling.is_empty() && !all.contains(&spelling) {
                all.push(spelling);
            }
        }
    }
    all
}

/// Percent-decodes a URL path (no `+` rule in paths); invalid escapes stay as written, which is
/// what WSGI servers do. Borrows when there is nothing to decode.
fn percent_decode_path(path: &str) -> std::borrow::Cow<'_, str> {
    if !path.contains('%') {
        return path.into();
    }
    let bytes = path.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%' {
            if let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            ) {
                out.push((h * 16 + l) as u8);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned().into()
}

/// The replay guard's rules as configured ([`crate::guard`]), with a ledger to keep their
/// bindings in: resolved with the rest of the runtime, so a reload swaps them with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRules {
    pub signature: GuardMode,
    pub transaction: GuardMode,
    pub on_store_error: StoreErrorPolicy,
    pub timeout: Duration,
    pub window: Duration,
}

impl GuardRules {
    /// The rules `[guard]` sets, given whether a ledger is configured; `None` without one (the
    /// rules off, and no record to write).
    pub fn new(s: &GuardSettings, ledger: &LedgerSettings) -> Option<GuardRules> {
        let default = |mode: Option<GuardMode>, on: GuardMode| mode.unwrap_or(on);
        ledger.database.is_some().then(|| GuardRules {
            signature: default(s.mode, GuardMode::Enforce),
            transaction: default(s.transaction_mode, GuardMode::Shadow),
            on_store_error: s.on_store_error,
            timeout: s.timeout.0,
            window: s.window(ledger.retention),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt() -> Runtime {
        Runtime {
            generation: 1,
            loaded_at: SystemTime::now(),
            keys: KeySet::default(),
            callback_paths: vec!["/click/prepare/".into()],
            matched_paths: spellings(&["/click/prepare/".into(), "/pay".into()]),
            mode: Mode::Enforce,
            service_modes: HashMap::new(),
            sign_age: None,
            sign_time_offset: 0,
            service_labels: ServiceLabels::default(),
            trust: None,
            guard: None,
        }
    }

    #[test]
    fn callback_paths_match_after_decoding() {
        let rt = rt();
        assert!(rt.is_callback_path("/click/prepare/"));
        assert!(rt.is_callback_path("/click/%70repare/"));
        assert!(rt.is_callback_path("/click%2Fprepare/"));
        assert!(rt.is_callback_path("/click/prepare"));
        assert!(rt.is_callback_path("/click/%70repare"));
        assert!(rt.is_callback_path("/pay"));
        assert!(rt.is_callback_path("/pay/"));
        assert!(!rt.is_callback_path("/pa"));
        assert!(!rt.is_callback_path("/click/prepare//"));
        assert!(!rt.is_callback_path("/click/prepare/x"));
        assert!(!rt.is_callback_path("/click/prepare/%"));
        assert!(!rt.is_callback_path("/CLICK/prepare/"));
    }

    #[test]
    fn the_rules_need_a_ledger_and_default_to_enforce_and_shadow() {
        let s = GuardSettings::default();
        assert_eq!(GuardRules::new(&s, &LedgerSettings::default()), None);
        let ledger = LedgerSettings {
            database: Some("l.db".into()),
            ..LedgerSettings::default()
        };
        let r = GuardRules::new(&s, &ledger).unwrap();
        assert_eq!(
            (r.signature, r.transaction),
            (GuardMode::Enforce, GuardMode::Shadow)
        );
        assert_eq!(r.window, Duration::from_secs(30 * 86_400));
        let short = LedgerSettings {
            retention: crate::config::Span::secs(7 * 86_400),
            ..ledger
        };
        assert_eq!(
            GuardRules::new(&s, &short).unwrap().window,
            Duration::from_secs(7 * 86_400),
            "never longer than the retention"
        );
    }
}
