//! One thing wrong with the configuration. Its own module, below `config/mod.rs` and every
//! reader of a part of the configuration (keys, TLS material, trust secrets), so that they
//! report problems without naming `config/mod.rs`, which names them (a circle otherwise).

use std::fmt;

/// One thing wrong with the configuration: where (file or variable, and setting), and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub origin: String,
    pub key: Option<String>,
    pub message: String,
}

impl Problem {
    pub fn new(origin: &str, key: Option<String>, message: String) -> Problem {
        Problem {
            origin: origin.to_owned(),
            key,
            message,
        }
    }
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.key {
            Some(key) => write!(f, "{}: {}: {}", self.origin, key, self.message),
            None => write!(f, "{}: {}", self.origin, self.message),
        }
    }
}
