//! Loading and checking the TLS certificate chain and key (`server.tls_cert`, `server.tls_key`).
//!
//! Used by `check`, at startup and on every reload, so a renewed certificate is validated
//! before it replaces the one in use: the key must match the leaf certificate, the leaf must be
//! within its validity period, and it should name at least one host. A certificate expiring in
//! under [`EXPIRY_WARNING_DAYS`] days is accepted with a warning. Nothing read from the key file
//! is ever shown.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

use super::problem::Problem;
use crate::clock::{format_unix, unix_now};

/// Warn when the certificate expires sooner than this.
pub const EXPIRY_WARNING_DAYS: i64 = 14;

/// A validated certificate chain with its key, ready for the resolver.
#[derive(Debug, Clone)]
pub struct TlsMaterial {
    pub certified: Arc<CertifiedKey>,
    /// Unix seconds.
    pub not_after: i64,
    /// subjectAltName DNS names and IP addresses of the leaf.
    pub names: Vec<String>,
    /// Certificates in the chain, leaf included.
    pub chain_len: usize,
}

impl TlsMaterial {
    /// One line for `check` and the logs.
    pub fn describe(&self) -> String {
        format!(
            "{} (chain of {}), expires {} UTC",
            if self.names.is_empty() {
                "no names".to_owned()
            } else {
                self.names.join(", ")
            },
            self.chain_len,
            format_unix(self.not_after)
        )
    }
}

/// The crypto provider of the whole process: ring (builds without a C toolchain beyond cc).
pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Reads and validates the pair. Returns the material and warnings, or every problem.
pub fn load(cert_path: &Path, key_path: &Path) -> Result<(TlsMaterial, Vec<String>), Vec<Problem>> {
    let cert_origin = cert_path.display().to_string();
    let key_origin = key_path.display().to_string();
    let mut problems = Vec::new();
    let chain: Vec<CertificateDer<'static>> = match CertificateDer::pem_file_iter(cert_path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
    {
        Ok(chain) if chain.is_empty() => {
            problems.push(Problem::new(
                &cert_origin,
                None,
                "no CERTIFICATE block in the file".into(),
            ));
            Vec::new()
        }
        Ok(chain) => chain,
        Err(e) => {
            problems.push(Problem::new(
                &cert_origin,
                None,
                format!("cannot read the certificate chain: {e}"),
            ));
            Vec::new()
        }
    };
    // The error of pki-types names the problem (missing file, no key block), never key bytes.
    let key = match PrivateKeyDer::from_pem_file(key_path) {
        Ok(k) => Some(k),
        Err(e) => {
            problems.push(Problem::new(
                &key_origin,
                None,
                format!("cannot read the private key: {e}"),
            ));
            None
        }
    };
    let (Some(key), Some(leaf)) = (key, chain.first().cloned()) else {
        return Err(problems);
    };
    let mut warnings = Vec::new();
    let (not_before, not_after, names) = match x509_parser::parse_x509_certificate(&leaf) {
        Ok((_, cert)) => {
            let v = cert.validity();
            let names = match cert.subject_alternative_name() {
                Ok(Some(san)) => san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|n| match n {
                        x509_parser::extensions::GeneralName::DNSName(d) => Some((*d).to_owned()),
                        x509_parser::extensions::GeneralName::IPAddress(ip) => ip_text(ip),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            };
            (v.not_before.timestamp(), v.not_after.timestamp(), names)
        }
        Err(e) => {
            problems.push(Problem::new(
                &cert_origin,
                None,
                format!("the first certificate does not parse: {e}"),
            ));
            return Err(problems);
        }
    };
    let now = unix_now();
    if now > not_after {
        problems.push(Problem::new(
            &cert_origin,
            None,
            format!("the certificate expired on {} UTC", format_unix(not_after)),
        ));
    } else if now < not_before {
        problems.push(Problem::new(
            &cert_origin,
            None,
            format!(
                "the certificate is not valid before {} UTC",
                format_unix(not_before)
            ),
        ));
    } else if not_after - now < EXPIRY_WARNING_DAYS * 86_400 {
        warnings.push(format!(
            "{cert_origin}: the certificate expires in {} day(s), on {} UTC: renew it",
            (not_after - now) / 86_400,
            format_unix(not_after)
        ));
    }
    if names.is_empty() {
        warnings.push(format!(
            "{cert_origin}: the certificate has no subjectAltName: clients will refuse it"
        ));
    }
    let chain_len = chain.len();
    let certified = match CertifiedKey::from_der(chain, key, &provider()) {
        Ok(c) => c,
        Err(e) => {
            let why = match e {
                rustls::Error::InconsistentKeys(_) => {
                    "the private key does not match the certificate".to_owned()
                }
                other => format!("the private key is not usable: {other}"),
            };
            problems.push(Problem::new(&key_origin, None, why));
            return Err(problems);
        }
    };
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok((
        TlsMaterial {
            certified: Arc::new(certified),
            not_after,
            names,
            chain_len,
        },
        warnings,
    ))
}

fn ip_text(bytes: &[u8]) -> Option<String> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv4Addr::from(b).to_string()),
        16 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| std::net::Ipv6Addr::from(b).to_string()),
        _ => None,
    }
}
