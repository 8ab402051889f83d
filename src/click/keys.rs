//! Secret keys per Click service, and the only ways they may be shown: a short fingerprint.
//!
//! A [`Secret`] has no `Display` and a redacting `Debug`, so a key cannot end up in a log line,
//! an error message or a panic by accident. Ops identify a key by its [`Fingerprint`], the first
//! 8 hex characters of its md5, which they can reproduce with
//! `printf '%s' "$KEY" | md5sum | cut -c1-8` to answer "is this the key I think it is?".
//! The fingerprint tells an attacker nothing a captured signed callback would not: both are md5
//! digests over the key, and the callback's is longer.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use md5::{Digest, Md5};

/// A Click secret key, taken byte for byte from its source.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Box<str>);

impl Secret {
    /// Wraps a key as read from its source: no trimming, no re-typing.
    pub fn new(key: impl Into<Box<str>>) -> Self {
        Secret(key.into())
    }

    /// The key's bytes, for hashing only.
    pub fn expose(&self) -> &[u8] {
        self.0.as_bytes()
    }

    /// The key's short fingerprint (see the module docs).
    pub fn fingerprint(&self) -> Fingerprint {
        let digest = Md5::digest(self.0.as_bytes());
        let mut fp = [0u8; 8];
        super::hex::encode_into(&digest[..4], &mut fp);
        Fingerprint(fp)
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret(fp={})", self.fingerprint())
    }
}

/// First 8 lowercase hex characters of `md5(key)`: names a key without revealing it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Fingerprint([u8; 8]);

impl Fingerprint {
    pub fn as_str(&self) -> &str {
        // Always ASCII hex, built above.
        std::str::from_utf8(&self.0).unwrap_or("????????")
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a key was configured; shown by `check` and in conflict errors.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeySource {
    /// `[services.<id>] secret_keys` in `click.keys_file`.
    KeysFile(PathBuf),
    /// A `CLICK_SERVICE_<id>_SECRET_KEY` line of `click.env_file`.
    EnvFile { path: PathBuf, line: usize },
    /// The process environment variable of that name.
    ProcessEnv(String),
}

impl fmt::Display for KeySource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySource::KeysFile(path) => write!(f, "keys_file {}", path.display()),
            KeySource::EnvFile { path, line } => write!(f, "env_file {}:{line}", path.display()),
            KeySource::ProcessEnv(name) => write!(f, "environment variable {name}"),
        }
    }
}

/// Where the key of a service goes, said wherever a callback is refused for want of one, so
/// the message is the fix and not only the diagnosis: "in click.keys_file ... as
/// [services.82154] secret_keys or in click.env_file ... , then reload", and the `recheck`
/// that tries a key first. Callers put the verb in front ("put it ").
///
/// The request path writes it straight into its log line, so it names the settings and
/// allocates nothing; the commands have the configuration at hand and give [`KeyFiles`], so
/// it names the files too.
#[derive(Debug, Clone, Copy)]
pub struct KeyPlaces<'a> {
    /// The service; `None` says `<id>`.
    pub service_id: Option<u64>,
    pub files: Option<KeyFiles<'a>>,
}

/// What the configuration sets, for [`KeyPlaces`].
#[derive(Debug, Clone, Copy)]
pub struct KeyFiles<'a> {
    /// `gateway.toml`, for `recheck --config`.
    pub config: &'a Path,
    /// `click.keys_file` and `click.env_file` as resolved; `None` when not set.
    pub keys_file: Option<&'a Path>,
    pub env_file: Option<&'a Path>,
    /// Whether a ledger records refused callbacks: without one `recheck` has nothing to judge
    /// again, and is not suggested.
    pub ledger: bool,
}

impl fmt::Display for KeyPlaces<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Id(Option<u64>);
        impl fmt::Display for Id {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                match self.0 {
                    Some(id) => write!(f, "{id}"),
                    None => f.write_str("<id>"),
                }
            }
        }
        let id = Id(self.service_id);
        // Nothing for the request path (no files at hand), the path, or "not set".
        fn file(f: &mut fmt::Formatter<'_>, path: Option<Option<&Path>>) -> fmt::Result {
            match path {
                None => Ok(()),
                Some(Some(path)) => write!(f, " ({})", path.display()),
                Some(None) => f.write_str(" (not set)"),
            }
        }
        let files = self.files.as_ref();
        f.write_str("in click.keys_file")?;
        file(f, files.map(|k| k.keys_file))?;
        write!(f, " as [services.{id}] secret_keys or in click.env_file")?;
        file(f, files.map(|k| k.env_file))?;
        write!(
            f,
            " as CLICK_SERVICE_{id}_SECRET_KEY and reload (SIGHUP), or in the gateway's \
             environment as CLICK_SERVICE_{id}_SECRET_KEY and restart"
        )?;
        if self.files.is_none_or(|k| k.ledger) {
            f.write_str("; to try a key on the refused callbacks first: click-gateway recheck")?;
            if let Some(k) = &self.files {
                write!(f, " --config {}", k.config.display())?;
            }
            write!(f, " --service-id {id} --secret-file <file>")?;
        }
        Ok(())
    }
}

/// One configured key of a service. Its position in [`ServiceKeys::keys`] is its slot.
#[derive(Clone, Debug)]
pub struct KeyEntry {
    pub secret: Secret,
    pub fingerprint: Fingerprint,
    /// Every source that configured this key (several when sources agree).
    pub sources: Vec<KeySource>,
}

impl KeyEntry {
    pub fn new(secret: Secret, source: KeySource) -> Self {
        KeyEntry {
            fingerprint: secret.fingerprint(),
            secret,
            sources: vec![source],
        }
    }
}

/// The keys of one Click service, in order of preference (slot 0 first).
#[derive(Clone, Debug)]
pub struct ServiceKeys {
    pub keys: Vec<KeyEntry>,
}

/// Every configured service and its keys: the verifier's whole view of secrets.
#[derive(Clone, Debug, Default)]
pub struct KeySet {
    services: BTreeMap<u64, ServiceKeys>,
}

impl KeySet {
    pub fn new(services: BTreeMap<u64, ServiceKeys>) -> Self {
        KeySet { services }
    }

    pub fn get(&self, service_id: u64) -> Option<&ServiceKeys> {
        self.services.get(&service_id)
    }

    /// Services in ascending id order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &ServiceKeys)> {
        self.services.iter().map(|(id, keys)| (*id, keys))
    }

    pub fn len(&self) -> usize {
        self.services.len()
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fingerprint_is_md5_prefix() {
        // printf '%s' TEST_SECRET_aB3dE5 | md5sum
        let s = Secret::new("TEST_SECRET_aB3dE5");
        let full = format!("{:x}", Md5::digest(b"TEST_SECRET_aB3dE5"));
        assert_eq!(s.fingerprint().as_str(), &full[..8]);
    }

    #[test]
    fn debug_never_shows_the_key() {
        let s = Secret::new("TEST_SECRET_aB3dE5");
        let shown = format!(
            "{s:?} {:?}",
            KeyEntry::new(s.clone(), KeySource::ProcessEnv("X".into()))
        );
        assert!(!shown.contains("TEST_SECRET"), "{shown}");
        assert!(shown.contains(s.fingerprint().as_str()));
    }
}
