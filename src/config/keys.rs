//! Reads the secret keys from their three sources (`click.keys_file`, `click.env_file`, the
//! process environment), validates each key and merges them into one [`KeySet`].
//!
//! Keys are taken byte for byte and never re-typed: they are read from TOML strings and from
//! dotenv text by this module, not through figment, which would turn `0012345` into a number.
//! Problems name the file, the service and the slot; never the key itself.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::path::Path;

use crate::click::keys::{KeyEntry, KeySet, KeySource, Secret, ServiceKeys};

use super::dotenv;
use super::environment::Environment;
use super::problem::Problem;

/// Name pattern shared by `click.env_file` and the process environment.
const ENV_PREFIX: &str = "CLICK_SERVICE_";
const ENV_SUFFIX: &str = "_SECRET_KEY";

/// The keys one source gives one service.
struct SourceKeys {
    service_id: u64,
    keys: Vec<Secret>,
    source: KeySource,
}

/// Reads every source, validates, merges. Returns what could be read and every problem found.
pub fn load(
    keys_file: Option<&Path>,
    env_file: Option<&Path>,
    env: &Environment,
) -> (KeySet, Vec<Problem>) {
    let mut problems = Vec::new();
    let mut found = Vec::new();
    if let Some(path) = keys_file {
        read_keys_file(path, &mut found, &mut problems);
    }
    if let Some(path) = env_file {
        read_env_file(path, &mut found, &mut problems);
    }
    read_process_env(env, &mut found, &mut problems);
    let keys = merge(found, &mut problems);
    (keys, problems)
}

/// Why a key is refused. One check for every way a key arrives (`keys_file`, `env_file`, the
/// environment, and the commands' `--secret-file`/`--secret-env`), because a key that one
/// accepts and another refuses sends ops chasing the wrong culprit: a key pasted from an email
/// with a trailing space only shows as a different fingerprint and "0 verify", and the natural
/// conclusion is that Click sent the wrong key. Keys are used byte for byte, never trimmed, so
/// the problem is named precisely instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyProblem {
    /// Nothing, or nothing but whitespace.
    Empty,
    /// Whitespace before the key (the first such character).
    Leading(char),
    /// Whitespace after the key (the last such character).
    Trailing(char),
    /// Whitespace on both ends.
    Surrounding,
    /// A line break inside: a mail client or terminal wrapped a long key.
    InnerLineBreak,
    Control,
}

impl KeyProblem {
    /// The problem of `key`, or `None` when it is acceptable.
    pub fn of(key: &str) -> Option<KeyProblem> {
        let (Some(first), Some(last)) = (key.chars().next(), key.chars().next_back()) else {
            return Some(KeyProblem::Empty);
        };
        Some(match (first.is_whitespace(), last.is_whitespace()) {
            _ if key.trim().is_empty() => KeyProblem::Empty,
            (true, true) => KeyProblem::Surrounding,
            (true, false) => KeyProblem::Leading(first),
            (false, true) => KeyProblem::Trailing(last),
            _ if key.contains(['\n', '\r']) => KeyProblem::InnerLineBreak,
            _ if key.chars().any(char::is_control) => KeyProblem::Control,
            _ => return None,
        })
    }

    /// What is wrong, to follow "the key" or "the key in FILE": `ends with a space`.
    pub fn what(self) -> String {
        match self {
            KeyProblem::Empty => "is empty".into(),
            KeyProblem::Leading(c) => format!("starts with {}", whitespace_name(c)),
            KeyProblem::Trailing(c) => format!("ends with {}", whitespace_name(c)),
            KeyProblem::Surrounding => "has surrounding whitespace".into(),
            KeyProblem::InnerLineBreak => "has a line break inside it".into(),
            KeyProblem::Control => "contains a control character".into(),
        }
    }

    /// What to do about it.
    pub fn fix(self) -> &'static str {
        match self {
            KeyProblem::Empty => "put the key there",
            KeyProblem::InnerLineBreak => {
                "a key is one line (a mail client may have wrapped it): join the lines"
            }
            _ => "keys are used byte for byte, so remove it",
        }
    }
}

/// `the key ends with a space: keys are used byte for byte, so remove it`.
impl fmt::Display for KeyProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "the key {}: {}", self.what(), self.fix())
    }
}

/// A whitespace character as a person would name it. Naming it is safe: a key never starts or
/// ends with one.
fn whitespace_name(c: char) -> String {
    match c {
        ' ' => "a space".into(),
        '\t' => "a tab".into(),
        '\n' | '\r' => "a line break".into(),
        '\u{a0}' => "a non-breaking space (U+00A0)".into(),
        c => format!("whitespace (U+{:04X})", u32::from(c)),
    }
}

/// A service id as written in a source: decimal digits, at most 64 bits.
fn service_id(text: &str) -> Option<u64> {
    crate::click::callback::parse_id(text)
}

/// Reads a whole file and makes sure it did not change while being read: its size and
/// modification time, taken from the open file before and after, must agree, and the size
/// must be what was read. A reload that races an editor or a config manager writing in place
/// must not swap in half a file. (A file replaced by rename while we read is fine: the open
/// handle keeps reading the complete old one.)
pub(crate) fn read_stable(path: &Path, what: &str) -> Result<String, String> {
    use std::io::Read;
    let cannot = |e: std::io::Error| format!("cannot read {what}: {e}");
    let mut file = fs::File::open(path).map_err(cannot)?;
    let stamp = |m: fs::Metadata| (m.len(), m.modified().ok());
    let before = file.metadata().map(stamp).map_err(cannot)?;
    let mut text = String::new();
    file.read_to_string(&mut text).map_err(cannot)?;
    let after = file.metadata().map(stamp).map_err(cannot)?;
    if before == after && after.0 == text.len() as u64 {
        Ok(text)
    } else {
        Err(format!(
            "{what} changed while it was being read (still being written?); nothing was loaded from it"
        ))
    }
}

fn read_keys_file(path: &Path, found: &mut Vec<SourceKeys>, problems: &mut Vec<Problem>) {
    let origin = path.display().to_string();
    let problem = |key: String, message: String| Problem::new(&origin, Some(key), message);
    let text = match read_stable(path, "keys file") {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new(&origin, None, e));
            return;
        }
    };
    let table: toml::Table = match text.parse() {
        Ok(t) => t,
        Err(e) => {
            // toml's Display quotes the offending line, which may hold a key: report only
            // the position and the parser's message.
            let at = e.span().map(|s| line_col(&text, s.start));
            let key = at.map(|(l, c)| format!("line {l}, column {c}"));
            problems.push(Problem::new(
                &origin,
                key,
                e.message().trim().replace('\n', "; "),
            ));
            return;
        }
    };
    if table
        .get("services")
        .and_then(|s| s.as_table())
        .is_none_or(|s| s.is_empty())
    {
        // An empty or truncated file is far likelier than a deliberate "no keys at all".
        problems.push(Problem::new(
            &origin,
            None,
            "defines no [services.<id>] (remove click.keys_file if keys come from elsewhere)"
                .into(),
        ));
    }
    let mut seen_ids: BTreeMap<u64, String> = BTreeMap::new();
    for (name, value) in &table {
        if name != "services" {
            problems.push(Problem::new(
                &origin,
                None,
                format!(
                    "unknown top-level setting {name:?} (the file holds only [services.<id>] tables)"
                ),
            ));
            continue;
        }
        let Some(services) = value.as_table() else {
            problems.push(problem(
                "services".into(),
                "must be a table of [services.<id>]".into(),
            ));
            continue;
        };
        for (id_text, svc) in services {
            let here = format!("services.{id_text}");
            let Some(id) = service_id(id_text) else {
                problems.push(problem(
                    here,
                    "service id must be decimal digits (at most 64 bits)".into(),
                ));
                continue;
            };
            let Some(svc) = svc.as_table() else {
                problems.push(problem(
                    here,
                    "must be a table with secret_keys = [...]".into(),
                ));
                continue;
            };
            for name in svc.keys().filter(|k| *k != "secret_keys") {
                problems.push(problem(
                    here.clone(),
                    format!("unknown setting {name:?} (the only setting is secret_keys)"),
                ));
            }
            let Some(list) = svc.get("secret_keys") else {
                problems.push(problem(here, "has no secret_keys".into()));
                continue;
            };
            let Some(list) = list.as_array() else {
                problems.push(problem(
                    format!("{here}.secret_keys"),
                    "must be a list of strings".into(),
                ));
                continue;
            };
            if list.is_empty() {
                problems.push(problem(
                    format!("{here}.secret_keys"),
                    "the list is empty".into(),
                ));
                continue;
            }
            let mut keys = Vec::with_capacity(list.len());
            for (slot, item) in list.iter().enumerate() {
                let at = format!("{here}.secret_keys[{slot}]");
                let Some(key) = item.as_str() else {
                    problems.push(problem(at, "must be a string (quote it)".into()));
                    continue;
                };
                if let Some(why) = KeyProblem::of(key) {
                    problems.push(problem(at, why.to_string()));
                    continue;
                }
                let secret = Secret::new(key);
                if let Some((prev, _)) = keys.iter().find(|(_, k)| k == &secret) {
                    problems.push(problem(at, format!("repeats slot {prev}")));
                    continue;
                }
                keys.push((slot, secret));
            }
            if let Some(first) = seen_ids.insert(id, id_text.clone()) {
                problems.push(problem(here, format!("same service as services.{first}")));
            } else if keys.len() == list.len() {
                found.push(SourceKeys {
                    service_id: id,
                    keys: keys.into_iter().map(|(_, k)| k).collect(),
                    source: KeySource::KeysFile(path.to_owned()),
                });
            }
        }
    }
}

pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let col = before
        .rfind('\n')
        .map_or(before.len(), |nl| before.len() - nl - 1)
        + 1;
    (line, col)
}

/// The service id of a `CLICK_SERVICE_<id>_SECRET_KEY` name: `None` for other names,
/// `Some(None)` for a name of that shape whose id is not a number.
fn env_service(name: &str) -> Option<Option<u64>> {
    let id = name.strip_prefix(ENV_PREFIX)?.strip_suffix(ENV_SUFFIX)?;
    Some(service_id(id))
}

fn read_env_file(path: &Path, found: &mut Vec<SourceKeys>, problems: &mut Vec<Problem>) {
    let origin = path.display().to_string();
    let text = match read_stable(path, "env file") {
        Ok(t) => t,
        Err(e) => {
            problems.push(Problem::new(&origin, None, e));
            return;
        }
    };
    let (assignments, errors) = dotenv::parse(&text);
    for e in errors {
        // Other lines are the backend's business, unless they swallow the rest of the file.
        let ours = e.name.as_deref().is_some_and(|n| n.starts_with(ENV_PREFIX));
        if ours || e.message == "unterminated quoted value" {
            let key = match &e.name {
                Some(n) => format!("line {} ({n})", e.line),
                None => format!("line {}", e.line),
            };
            problems.push(Problem::new(&origin, Some(key), e.message.into()));
        }
    }
    let mut lines_by_service: BTreeMap<u64, usize> = BTreeMap::new();
    for a in assignments {
        let Some(id) = env_service(&a.name) else {
            continue;
        };
        let at = format!("line {} ({})", a.line, a.name);
        let Some(id) = id else {
            problems.push(Problem::new(
                &origin,
                Some(at),
                "service id must be decimal digits".into(),
            ));
            continue;
        };
        if let Some(first) = lines_by_service.insert(id, a.line) {
            problems.push(Problem::new(
                &origin,
                Some(at),
                format!("service {id} is already set on line {first}"),
            ));
            continue;
        }
        if let Some(why) = KeyProblem::of(&a.value) {
            problems.push(Problem::new(&origin, Some(at), why.to_string()));
            continue;
        }
        found.push(SourceKeys {
            service_id: id,
            keys: vec![Secret::new(a.value)],
            source: KeySource::EnvFile {
                path: path.to_owned(),
                line: a.line,
            },
        });
    }
}

fn read_process_env(env: &Environment, found: &mut Vec<SourceKeys>, problems: &mut Vec<Problem>) {
    for name in env.not_utf8() {
        if env_service(name).is_some() {
            let origin = format!("environment variable {name}");
            problems.push(Problem::new(
                &origin,
                None,
                "the key is not valid UTF-8".into(),
            ));
        }
    }
    for (name, value) in env.vars() {
        let Some(id) = env_service(name) else {
            continue;
        };
        let origin = format!("environment variable {name}");
        let Some(id) = id else {
            problems.push(Problem::new(
                &origin,
                None,
                "service id must be decimal digits".into(),
            ));
            continue;
        };
        if let Some(why) = KeyProblem::of(value) {
            problems.push(Problem::new(&origin, None, why.to_string()));
            continue;
        }
        found.push(SourceKeys {
            service_id: id,
            keys: vec![Secret::new(value.as_str())],
            source: KeySource::ProcessEnv(name.clone()),
        });
    }
}

/// Sources agree on a service when every key of each one is among the keys of the source
/// with the most keys (a rotation list in `keys_file` may hold the single key of the `.env`).
/// That largest list, in its order, is the service's; each key remembers all its sources.
fn merge(found: Vec<SourceKeys>, problems: &mut Vec<Problem>) -> KeySet {
    let mut by_service: BTreeMap<u64, Vec<SourceKeys>> = BTreeMap::new();
    for s in found {
        by_service.entry(s.service_id).or_default().push(s);
    }
    let mut services = BTreeMap::new();
    for (id, mut sources) in by_service {
        // Stable: on equal length the earlier source (keys_file, env_file, environment) wins.
        sources.sort_by_key(|s| std::cmp::Reverse(s.keys.len()));
        let mut sources = sources.into_iter();
        let Some(base) = sources.next() else { continue };
        let mut entries: Vec<KeyEntry> = base
            .keys
            .into_iter()
            .map(|k| KeyEntry::new(k, base.source.clone()))
            .collect();
        let mut agree = true;
        for other in sources {
            for key in &other.keys {
                match entries.iter_mut().find(|e| &e.secret == key) {
                    Some(e) => e.sources.push(other.source.clone()),
                    None => {
                        agree = false;
                        let theirs: Vec<_> =
                            entries.iter().map(|e| e.fingerprint.to_string()).collect();
                        problems.push(Problem::new(
                            &other.source.to_string(),
                            None,
                            format!(
                                "service {id}: key fp {} disagrees with {} (fp {})",
                                key.fingerprint(),
                                entries[0].sources[0],
                                theirs.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        if agree {
            services.insert(id, ServiceKeys { keys: entries });
        }
    }
    KeySet::new(services)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    struct Dir(std::path::PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("cg-keys-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            fs::create_dir_all(&p).unwrap();
            Dir(p)
        }
        fn file(&self, name: &str, text: &str) -> std::path::PathBuf {
            let p = self.0.join(name);
            fs::File::create(&p)
                .unwrap()
                .write_all(text.as_bytes())
                .unwrap();
            p
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn env(pairs: &[(&str, &str)]) -> Environment {
        Environment::from_pairs(pairs.iter().map(|(a, b)| (a.to_string(), b.to_string())))
    }

    fn messages(problems: &[Problem]) -> String {
        problems
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join("\n")
    }

    #[test]
    fn keys_file_with_rotation_and_leading_zero_secret() {
        let d = Dir::new("rot");
        let f = d.file("k.toml", "[services.12345]\nsecret_keys = [\"0012345\", \"old\"]\n[services.70001]\nsecret_keys = ['x y']\n");
        let (keys, problems) = load(Some(&f), None, &env(&[]));
        assert_eq!(messages(&problems), "");
        let svc = keys.get(12345).unwrap();
        assert_eq!(svc.keys.len(), 2);
        assert_eq!(svc.keys[0].secret.expose(), b"0012345");
        assert_eq!(keys.get(70001).unwrap().keys[0].secret.expose(), b"x y");
    }

    #[test]
    fn every_problem_is_reported_without_the_key() {
        let d = Dir::new("bad");
        let f = d.file(
            "k.toml",
            "secret_keys = [\"sekrit-top\"]\n[services.12345]\nsecret_keys = [\"\", \" sekrit-pad \", 7, \"ok\", \"ok\"]\n[services.abc]\nsecret_keys = [\"sekrit-abc\"]\n[services.9]\nsecret_key = \"sekrit-typo\"\n[services.77]\nsecret_keys=[\"z\"]\n[services.077]\nsecret_keys=[\"z\"]\n",
        );
        let (keys, problems) = load(Some(&f), None, &env(&[]));
        let text = messages(&problems);
        for want in [
            "services.12345.secret_keys[0]: the key is empty",
            "services.12345.secret_keys[1]: the key has surrounding whitespace: keys are used byte for byte, so remove it",
            "services.12345.secret_keys[2]: must be a string",
            "services.12345.secret_keys[4]: repeats slot 3",
            "services.abc: service id must be decimal digits",
            "services.9: unknown setting \"secret_key\" (the only setting is secret_keys)",
            "unknown top-level setting \"secret_keys\" (the file holds only [services.<id>] tables)",
            "services.9: has no secret_keys",
            "services.77: same service as services.077",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(!text.contains("sekrit"), "{text}");
        assert!(
            keys.get(12345).is_none(),
            "a service with a bad key must not load half its keys"
        );
    }

    #[test]
    fn key_problems_name_what_is_wrong_and_never_the_key() {
        for (key, want) in [
            ("", "the key is empty: put the key there"),
            ("  ", "the key is empty: put the key there"),
            ("sekrit ", "the key ends with a space: keys are used byte for byte, so remove it"),
            ("\tsekrit", "the key starts with a tab: keys are used byte for byte, so remove it"),
            ("sekrit\u{a0}", "the key ends with a non-breaking space (U+00A0): keys are used byte for byte, so remove it"),
            ("sekrit\n", "the key ends with a line break: keys are used byte for byte, so remove it"),
            (" sekrit\n", "the key has surrounding whitespace: keys are used byte for byte, so remove it"),
            ("sek\nrit", "the key has a line break inside it: a key is one line (a mail client may have wrapped it): join the lines"),
            ("sek\u{7}rit", "the key contains a control character: keys are used byte for byte, so remove it"),
        ] {
            let problem = KeyProblem::of(key).map(|p| p.to_string());
            assert_eq!(problem.as_deref(), Some(want), "{key:?}");
        }
        for fine in ["0012345", "x y", "fake+key/with=chars&x", "ключ"] {
            assert_eq!(KeyProblem::of(fine), None, "{fine:?}");
        }
    }

    #[test]
    fn toml_syntax_errors_do_not_quote_the_line() {
        let d = Dir::new("syn");
        let f = d.file("k.toml", "[services.1]\nsecret_keys = [\"sekrit-open\n");
        let (_, problems) = load(Some(&f), None, &env(&[]));
        let text = messages(&problems);
        assert!(text.contains("line 2, column"), "{text}");
        assert!(!text.contains("sekrit"), "{text}");
    }

    #[test]
    fn env_file_and_process_env_merge_when_they_agree() {
        let d = Dir::new("env");
        let kf = d.file(
            "k.toml",
            "[services.12345]\nsecret_keys = [\"new\", \"old\"]\n",
        );
        let ef = d.file(
            ".env",
            "DEBUG=1\nCLICK_SERVICE_12345_SECRET_KEY=old\nexport CLICK_SERVICE_70001_SECRET_KEY='0012345'\nCLICK_SERVICE_ID=5\n",
        );
        let (keys, problems) = load(
            Some(&kf),
            Some(&ef),
            &env(&[
                ("CLICK_SERVICE_82154_SECRET_KEY", "k3"),
                ("CLICK_SERVICE_70001_SECRET_KEY", "0012345"),
            ]),
        );
        assert_eq!(messages(&problems), "");
        let s = keys.get(12345).unwrap();
        assert_eq!(s.keys[0].sources, [KeySource::KeysFile(kf.clone())]);
        assert_eq!(
            s.keys[1].sources,
            [
                KeySource::KeysFile(kf),
                KeySource::EnvFile {
                    path: ef.clone(),
                    line: 2
                }
            ]
        );
        assert_eq!(keys.get(70001).unwrap().keys[0].secret.expose(), b"0012345");
        assert_eq!(keys.get(70001).unwrap().keys[0].sources.len(), 2);
        assert_eq!(keys.get(82154).unwrap().keys[0].secret.expose(), b"k3");
    }

    #[test]
    fn disagreeing_sources_are_an_error_naming_both() {
        let d = Dir::new("dis");
        let kf = d.file("k.toml", "[services.12345]\nsecret_keys = [\"sekrit-a\"]\n");
        let (keys, problems) = load(
            Some(&kf),
            None,
            &env(&[("CLICK_SERVICE_12345_SECRET_KEY", "sekrit-b")]),
        );
        let text = messages(&problems);
        assert!(
            text.contains("environment variable CLICK_SERVICE_12345_SECRET_KEY"),
            "{text}"
        );
        assert!(text.contains("service 12345"), "{text}");
        assert!(
            text.contains(&Secret::new("sekrit-b").fingerprint().to_string()),
            "{text}"
        );
        assert!(!text.contains("sekrit"), "{text}");
        assert!(keys.get(12345).is_none());
    }

    #[test]
    fn env_file_problems() {
        let d = Dir::new("envbad");
        let ef = d.file(
            ".env",
            "CLICK_SERVICE_1_SECRET_KEY=sekrit-trail \nCLICK_SERVICE_x_SECRET_KEY=a\nCLICK_SERVICE_2_SECRET_KEY=a\nCLICK_SERVICE_2_SECRET_KEY=b\nCLICK_SERVICE_3_SECRET_KEY=\nOTHER garbage\n",
        );
        let (keys, problems) = load(None, Some(&ef), &env(&[]));
        let text = messages(&problems);
        for want in [
            "line 1 (CLICK_SERVICE_1_SECRET_KEY): the key ends with a space: keys are used byte for byte, so remove it",
            "line 2 (CLICK_SERVICE_x_SECRET_KEY): service id must be decimal digits",
            "line 4 (CLICK_SERVICE_2_SECRET_KEY): service 2 is already set on line 3",
            "line 5 (CLICK_SERVICE_3_SECRET_KEY): the key is empty",
        ] {
            assert!(text.contains(want), "missing {want:?} in\n{text}");
        }
        assert!(
            !text.contains("OTHER"),
            "lines of other variables are not ours: {text}"
        );
        assert!(!text.contains("sekrit"), "{text}");
        assert_eq!(keys.get(2).map(|s| s.keys.len()), Some(1));
    }

    #[test]
    fn an_empty_keys_file_is_a_problem() {
        let d = Dir::new("empty");
        for text in ["", "# only a comment\n", "[services]\n"] {
            let f = d.file("k.toml", text);
            let (_, problems) = load(Some(&f), None, &env(&[]));
            assert!(
                messages(&problems).contains("defines no [services.<id>]"),
                "{text:?}"
            );
        }
    }

    #[test]
    fn a_file_whose_size_does_not_match_what_was_read_is_refused() {
        // /proc files report a size of 0 yet have content: the same mismatch a file being
        // rewritten while it is read shows.
        let e = read_stable(Path::new("/proc/self/status"), "keys file").unwrap_err();
        assert!(e.contains("changed while it was being read"), "{e}");
        let d = Dir::new("stable");
        let f = d.file("k.toml", "[services.1]\nsecret_keys = [\"k\"]\n");
        assert!(read_stable(&f, "keys file").is_ok());
    }

    #[test]
    fn missing_files_are_problems() {
        let (_, problems) = load(
            Some(Path::new("/nonexistent/k.toml")),
            Some(Path::new("/nonexistent/.env")),
            &env(&[]),
        );
        assert_eq!(problems.len(), 2);
        assert!(problems[0]
            .to_string()
            .starts_with("/nonexistent/k.toml: cannot read keys file"));
    }
}
