//! The environment the configuration is read from. Its own module, below `config/mod.rs` and
//! the key reader ([`super::keys`]) that both read it, so neither names the other for it.

use std::fmt;

/// A snapshot of environment variables, passed in rather than read inside, so tests stay
/// independent of the process environment and a reload reads what startup read. Its `Debug`
/// shows names only: values include secret keys.
#[derive(Clone, Default)]
pub struct Environment {
    vars: Vec<(String, String)>,
    /// Names whose value is not UTF-8 (reported when they matter, e.g. a key variable).
    not_utf8: Vec<String>,
}

impl fmt::Debug for Environment {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.vars.iter().map(|(k, _)| k))
            .finish()
    }
}

impl Environment {
    /// The process environment (variables whose name is not UTF-8 are skipped).
    pub fn from_process() -> Environment {
        let mut env = Environment::default();
        for (k, v) in std::env::vars_os() {
            let Ok(k) = k.into_string() else { continue };
            match v.into_string() {
                Ok(v) => env.vars.push((k, v)),
                Err(_) => env.not_utf8.push(k),
            }
        }
        env
    }

    pub fn from_pairs(pairs: impl IntoIterator<Item = (String, String)>) -> Environment {
        Environment {
            vars: pairs.into_iter().collect(),
            not_utf8: Vec::new(),
        }
    }

    /// Names of variables whose value is not UTF-8.
    pub fn not_utf8(&self) -> &[String] {
        &self.not_utf8
    }

    pub fn vars(&self) -> impl Iterator<Item = (&String, &String)> {
        self.vars.iter().map(|(k, v)| (k, v))
    }
}
