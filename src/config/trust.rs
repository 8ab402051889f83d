//! `[trust] secret_file`: the secrets the gateway signs its attestation with (see
//! [`crate::trust`]), one per line, the first one signing. `#` comments and blank lines are
//! skipped; a secret is taken byte for byte otherwise, so the backend can read the same file.

use std::path::Path;

use super::keys::read_stable;
use super::problem::Problem;
use crate::trust::{Trust, TrustSecret};

/// Shorter secrets are refused: the HMAC is only as strong as its key (`openssl rand -hex 32`
/// makes a good one).
pub const MIN_SECRET_LEN: usize = 32;

/// Reads and validates the secret file; problems name the file and the line, never a secret.
pub fn load(path: &Path) -> Result<Trust, Vec<Problem>> {
    let origin = path.display().to_string();
    let text =
        read_stable(path, "trust secret file").map_err(|e| vec![Problem::new(&origin, None, e)])?;
    let mut problems = Vec::new();
    let mut secrets: Vec<(usize, &str)> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line_no = i + 1;
        let secret = line.strip_suffix('\r').unwrap_or(line);
        if secret.trim().is_empty() || secret.trim_start().starts_with('#') {
            continue;
        }
        let at = Some(format!("line {line_no}"));
        let why = if secret.trim() != secret {
            Some("the secret has leading or trailing whitespace; secrets are used byte for byte")
        } else if secret.chars().any(char::is_control) {
            Some("the secret contains a control character")
        } else if secret.len() < MIN_SECRET_LEN {
            Some("the secret is shorter than 32 characters (make one with `openssl rand -hex 32`)")
        } else if let Some((first, _)) = secrets.iter().find(|(_, s)| *s == secret) {
            problems.push(Problem::new(
                &origin,
                at.clone(),
                format!("the same secret as line {first}"),
            ));
            None
        } else {
            secrets.push((line_no, secret));
            None
        };
        if let Some(why) = why {
            problems.push(Problem::new(&origin, at, why.to_owned()));
        }
    }
    if secrets.is_empty() && problems.is_empty() {
        problems.push(Problem::new(
            &origin,
            None,
            "no secret: the first line that is not a comment signs".into(),
        ));
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    Ok(Trust {
        secrets: secrets.iter().map(|(_, s)| TrustSecret::new(s)).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_secret_a_line_first_signs_and_problems_name_lines_not_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("trust.secrets");
        let a = "a".repeat(32);
        let b = "b".repeat(40);
        std::fs::write(&path, format!("# current first\n{a}\n\n{b}\r\n")).unwrap();
        let trust = load(&path).unwrap();
        assert_eq!(trust.secrets.len(), 2);
        assert_eq!(
            trust.secrets[0].fingerprint(),
            TrustSecret::new(&a).fingerprint()
        );

        std::fs::write(&path, format!("short-secret\n {a}\n{b}\n{b}\n")).unwrap();
        let text: Vec<String> = load(&path)
            .unwrap_err()
            .iter()
            .map(ToString::to_string)
            .collect();
        let text = text.join("\n");
        for want in [
            "line 1: the secret is shorter",
            "line 2: the secret has leading",
            "line 4: the same secret as line 3",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        assert!(
            !text.contains("short-secret") && !text.contains(&b),
            "{text}"
        );
        std::fs::write(&path, "# nothing yet\n").unwrap();
        assert!(load(&path).unwrap_err()[0]
            .to_string()
            .contains("no secret"));
    }
}
