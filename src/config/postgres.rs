//! `[ledger] database = "postgres://..."`: the URL of a shared PostgreSQL store, read once at
//! load so a bad URL is a configuration problem like any other, and so the rest of the
//! gateway only ever sees it through [`PgUrl`], whose `Display` and `Debug` are the redacted
//! `postgres://user@host:port/db`.
//!
//! The URL may carry a password (in its user part or as `password=`): it is never printed,
//! logged, put in an error or a metric. Errors about the URL name the problem (an option, a
//! `sslmode` value), never the URL.
//!
//! tokio-postgres reads the URL itself, except for what libpq users expect and it does not
//! know: `sslmode=verify-ca` and `verify-full` (it has only `disable`, `prefer`, `require`)
//! and `sslrootcert`. Those two are taken out here and applied by the ledger's TLS connector
//! (rustls, ring provider).

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::config::{Host, SslMode};

/// How the connection to the server is protected: libpq's `sslmode` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// No TLS: the default without `sslmode` (as the settings documentation says), for a
    /// server on the same machine or a private network.
    Disable,
    /// TLS when the server offers it, plain otherwise; the certificate is not checked
    /// (unless `sslrootcert` is given).
    Prefer,
    /// TLS or no connection; the certificate is not checked unless `sslrootcert` is given
    /// (then as `verify-ca`), as libpq does.
    Require,
    /// TLS, with a certificate chaining to `sslrootcert`, whatever name it is for.
    VerifyCa,
    /// TLS, with a certificate chaining to `sslrootcert` and valid for the host name.
    VerifyFull,
}

/// Where the trusted certificates for `verify-ca`/`verify-full` come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RootCerts {
    /// `sslrootcert=/path/ca.pem`: the CA that signed the server's certificate.
    File(PathBuf),
    /// `sslrootcert=system`: the system's store (`/etc/ssl/certs/ca-certificates.crt`).
    System,
}

/// The system's certificate bundle on Debian and its derivatives.
pub const SYSTEM_ROOTS: &str = "/etc/ssl/certs/ca-certificates.crt";

/// A PostgreSQL URL, validated. Holds the URL itself (a secret: it may carry a password) and
/// shows only its redacted form.
#[derive(Clone, PartialEq, Eq)]
pub struct PgUrl {
    /// What tokio-postgres parses: the URL less `sslmode` and `sslrootcert`.
    rest: String,
    tls: TlsMode,
    roots: Option<RootCerts>,
    redacted: String,
    /// Query options the URL set itself, which the gateway's defaults must not override.
    given: Vec<String>,
}

impl std::fmt::Debug for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgUrl")
            .field("url", &self.redacted)
            .field("tls", &self.tls)
            .field("roots", &self.roots)
            .finish()
    }
}

impl std::fmt::Display for PgUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.redacted)
    }
}

/// Connect timeout when the URL sets none (libpq waits forever).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Unacknowledged data for this long closes the connection: a server gone without a word
/// (a cut cable, a crashed host) is noticed in seconds, not after TCP's 15 minutes.
pub const TCP_USER_TIMEOUT: Duration = Duration::from_secs(15);

impl PgUrl {
    /// Reads `url` (`postgres://` or `postgresql://`, any case). The error says what is wrong
    /// without repeating any of the URL.
    pub fn parse(url: &str) -> Result<PgUrl, String> {
        let after_scheme = ["postgres://", "postgresql://"]
            .iter()
            .find_map(|scheme| {
                url.get(..scheme.len())
                    .filter(|head| head.eq_ignore_ascii_case(scheme))
                    .map(|_| &url[scheme.len()..])
            })
            .ok_or_else(|| "is not a postgres:// or postgresql:// URL".to_owned())?;
        // As tokio-postgres reads it: the credentials end at the first '@', the query starts
        // at the first '?' after them (so a '?' in a password does not start it).
        let creds = after_scheme.find('@').map_or(0, |at| at + 1);
        let (base, query) = match after_scheme[creds..].find('?') {
            Some(q) => (
                &after_scheme[..creds + q],
                Some(&after_scheme[creds + q + 1..]),
            ),
            None => (after_scheme, None),
        };
        let mut tls = TlsMode::Disable;
        let mut roots = None;
        let mut kept = Vec::new();
        let mut given = Vec::new();
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let key = decode(key).ok_or("an option name is not valid percent-encoded UTF-8")?;
            match key.as_str() {
                "sslmode" => {
                    let value = decode(value).ok_or("sslmode is not valid UTF-8")?;
                    tls = match value.as_str() {
                        "disable" => TlsMode::Disable,
                        "allow" | "prefer" => TlsMode::Prefer,
                        "require" => TlsMode::Require,
                        "verify-ca" => TlsMode::VerifyCa,
                        "verify-full" => TlsMode::VerifyFull,
                        _ => return Err(
                            "sslmode must be disable, prefer, require, verify-ca or verify-full"
                                .into(),
                        ),
                    };
                }
                "sslrootcert" => {
                    let value = decode(value).ok_or("sslrootcert is not valid UTF-8")?;
                    roots = Some(if value == "system" {
                        RootCerts::System
                    } else if Path::new(&value).is_absolute() {
                        RootCerts::File(PathBuf::from(value))
                    } else {
                        return Err("sslrootcert must be an absolute path, or system".into());
                    });
                }
                _ => {
                    given.push(key);
                    kept.push(pair);
                }
            }
        }
        if matches!(tls, TlsMode::VerifyCa | TlsMode::VerifyFull) && roots.is_none() {
            return Err(
                "sslmode=verify-ca and verify-full need sslrootcert: the CA file that signed the server's certificate (absolute path), or sslrootcert=system"
                    .into(),
            );
        }
        let mut rest = format!("postgres://{base}");
        if !kept.is_empty() {
            rest.push('?');
            rest.push_str(&kept.join("&"));
        }
        let config = tokio_postgres::Config::from_str(&rest).map_err(not_accepted)?;
        if config.get_hosts().is_empty() {
            return Err("names no host".into());
        }
        let redacted = redact(&config);
        Ok(PgUrl {
            rest,
            tls,
            roots,
            redacted,
            given,
        })
    }

    /// `postgres://user@host:port/db`: what logs, errors and `check` show.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Whether the URL carries a password (in its user part or as `password=`).
    pub fn has_password(&self) -> bool {
        tokio_postgres::Config::from_str(&self.rest)
            .is_ok_and(|c| c.get_password().is_some_and(|p| !p.is_empty()))
    }

    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    pub fn roots(&self) -> Option<&RootCerts> {
        self.roots.as_ref()
    }

    /// The connection settings: the URL's, with the gateway's defaults for what it leaves
    /// unset (a connect timeout, a TCP user timeout, keepalives that notice a dead peer within
    /// a minute, `application_name = click-gateway` so `pg_stat_activity` says who is there).
    pub fn config(&self) -> Result<tokio_postgres::Config, String> {
        let mut config = tokio_postgres::Config::from_str(&self.rest).map_err(not_accepted)?;
        let unset = |key: &str| !self.given.iter().any(|k| k == key);
        if unset("connect_timeout") {
            config.connect_timeout(CONNECT_TIMEOUT);
        }
        if unset("tcp_user_timeout") {
            config.tcp_user_timeout(TCP_USER_TIMEOUT);
        }
        if unset("keepalives_idle") {
            config.keepalives_idle(Duration::from_secs(30));
        }
        if unset("keepalives_interval") {
            config.keepalives_interval(Duration::from_secs(10));
        }
        if unset("keepalives_retries") {
            config.keepalives_retries(3);
        }
        if unset("application_name") {
            config.application_name("click-gateway");
        }
        config.ssl_mode(match self.tls {
            TlsMode::Disable => SslMode::Disable,
            TlsMode::Prefer => SslMode::Prefer,
            TlsMode::Require | TlsMode::VerifyCa | TlsMode::VerifyFull => SslMode::Require,
        });
        Ok(config)
    }
}

/// tokio-postgres's reason (an option's name, never its value), with its cause.
fn not_accepted(e: tokio_postgres::Error) -> String {
    match std::error::Error::source(&e) {
        Some(cause) => format!("is not a PostgreSQL URL tokio-postgres accepts: {cause}"),
        None => format!("is not a PostgreSQL URL tokio-postgres accepts: {e}"),
    }
}

/// `postgres://user@host:port/db` from what tokio-postgres read, so no part of the URL that
/// it did not take for a user, host, port or database name can show.
fn redact(config: &tokio_postgres::Config) -> String {
    let mut out = String::from("postgres://");
    if let Some(user) = config.get_user() {
        out.push_str(user);
        out.push('@');
    }
    let ports = config.get_ports();
    let hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, h)| {
            let host = match h {
                Host::Tcp(name) if name.contains(':') => format!("[{name}]"),
                Host::Tcp(name) => name.clone(),
                Host::Unix(path) => path.display().to_string(),
            };
            let port = ports
                .get(i)
                .or_else(|| (ports.len() == 1).then(|| &ports[0]))
                .copied()
                .unwrap_or(5432);
            format!("{host}:{port}")
        })
        .collect();
    out.push_str(&hosts.join(","));
    if let Some(db) = config.get_dbname() {
        out.push('/');
        out.push_str(db);
    }
    out
}

/// Percent-decodes a URL query component (`+` is left alone, as tokio-postgres does).
fn decode(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            let hex = std::str::from_utf8(hex).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// Whether `p` is written as a PostgreSQL URL (`postgres://`, `postgresql://`, any case).
pub fn is_postgres_url(p: &Path) -> bool {
    let text = p.to_string_lossy();
    ["postgres://", "postgresql://"].iter().any(|scheme| {
        text.get(..scheme.len())
            .is_some_and(|head| head.eq_ignore_ascii_case(scheme))
    })
}

/// The rustls configuration the URL asks for, `None` for a plain connection (what the
/// ledger's PostgreSQL connections are made with). libpq's meaning
/// of each `sslmode`: `require` (and `prefer`) encrypt but, without `sslrootcert`, take any
/// certificate (an active attacker on the path can read the traffic); with `sslrootcert` they
/// check the chain as `verify-ca` does; `verify-full` also checks the certificate is for the
/// host, the one that authenticates the server.
pub fn tls_config(url: &PgUrl) -> Result<Option<rustls::ClientConfig>, String> {
    if url.tls() == TlsMode::Disable {
        return Ok(None);
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let roots = match url.roots() {
        None => None,
        Some(roots) => Some(Arc::new(root_store(roots)?)),
    };
    let verifier: Arc<dyn ServerCertVerifier> = match (url.tls(), roots) {
        (TlsMode::VerifyFull, Some(roots)) => {
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?
        }
        (_, Some(roots)) => Arc::new(ChainOnly(
            WebPkiServerVerifier::builder_with_provider(roots, provider.clone())
                .build()
                .map_err(|e| format!("sslrootcert: {e}"))?,
        )),
        (_, None) => Arc::new(EncryptOnly(provider.clone())),
    };
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(config))
}

fn root_store(roots: &RootCerts) -> Result<RootCertStore, String> {
    let path = match roots {
        RootCerts::File(p) => p.as_path(),
        RootCerts::System => std::path::Path::new(SYSTEM_ROOTS),
    };
    let mut store = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    for cert in certs {
        let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
        store
            .add(cert)
            .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
    }
    if store.is_empty() {
        return Err(format!(
            "sslrootcert {}: no certificate in it",
            path.display()
        ));
    }
    Ok(store)
}

/// `sslmode=require` without `sslrootcert`: any certificate, as libpq; the handshake's own
/// signatures are still checked, so the session is with whoever holds the certificate's key.
#[derive(Debug)]
struct EncryptOnly(Arc<CryptoProvider>);

impl ServerCertVerifier for EncryptOnly {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to `sslrootcert`, for whatever host name.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_password_never_shows_and_the_rest_is_read() {
        for (url, want) in [
            (
                "postgres://gw:s3cr%40t@db.internal:6432/ledger?sslmode=require",
                "postgres://gw@db.internal:6432/ledger",
            ),
            (
                "PostgreSQL://gw:p?ss@127.0.0.1/ledger",
                "postgres://gw@127.0.0.1:5432/ledger",
            ),
            (
                "postgresql:///ledger?host=/run/postgresql&user=gw&password=hunter2",
                "postgres://gw@/run/postgresql:5432/ledger",
            ),
            ("postgres://[::1]:5433/x", "postgres://[::1]:5433/x"),
        ] {
            let u = PgUrl::parse(url).unwrap();
            assert_eq!(u.to_string(), want, "{url}");
            assert_eq!(
                u.has_password(),
                url.contains("gw:") || url.contains("password")
            );
            for shown in [u.to_string(), format!("{u:?}")] {
                for secret in ["s3cr", "p?ss", "hunter2"] {
                    assert!(!shown.contains(secret), "{shown}");
                }
            }
        }
    }

    #[test]
    fn sslmode_and_sslrootcert_are_read_here() {
        let u = PgUrl::parse("postgres://h/db").unwrap();
        assert_eq!(u.tls(), TlsMode::Disable);
        assert_eq!(u.config().unwrap().get_ssl_mode(), SslMode::Disable);
        let u = PgUrl::parse("postgres://h/db?sslmode=require&connect_timeout=2").unwrap();
        assert_eq!(u.tls(), TlsMode::Require);
        let c = u.config().unwrap();
        assert_eq!(c.get_ssl_mode(), SslMode::Require);
        assert_eq!(c.get_connect_timeout(), Some(&Duration::from_secs(2)));
        assert_eq!(c.get_application_name(), Some("click-gateway"));
        let u = PgUrl::parse("postgres://h/db?sslmode=verify-full&sslrootcert=%2Fetc%2Fca.pem")
            .unwrap();
        assert_eq!(u.tls(), TlsMode::VerifyFull);
        assert_eq!(u.roots(), Some(&RootCerts::File("/etc/ca.pem".into())));
        let u = PgUrl::parse("postgres://h/db?sslmode=verify-ca&sslrootcert=system").unwrap();
        assert_eq!(u.roots(), Some(&RootCerts::System));
        for (url, want) in [
            ("postgres://h/db?sslmode=verify-full", "need sslrootcert"),
            ("postgres://h/db?sslmode=bogus", "sslmode must be"),
            ("postgres://h/db?sslrootcert=ca.pem", "absolute path"),
            ("postgres://u:pw@h/db?nosuch=1", "unknown option `nosuch`"),
            ("mysql://h/db", "not a postgres"),
        ] {
            let e = PgUrl::parse(url).unwrap_err();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("pw"), "{e}");
        }
    }

    #[test]
    fn verify_full_needs_a_readable_root_file() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("none.pem");
        let url = PgUrl::parse(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            missing.display()
        ))
        .unwrap();
        let e = tls_config(&url).unwrap_err();
        assert!(e.contains("sslrootcert"), "{e}");
        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "").unwrap();
        let url = PgUrl::parse(&format!(
            "postgres://h/db?sslmode=verify-full&sslrootcert={}",
            empty.display()
        ))
        .unwrap();
        assert!(tls_config(&url).unwrap_err().contains("no certificate"));
    }
}
