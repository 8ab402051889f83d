//! The import graph of `src/` has no cycle (issue 24, item 8: "a house without circles").
//!
//! A file depends on another when it names it: a `use` declaration (grouped or not, `pub use`
//! included) or a path in code (`crate::click::respond::error_body(..)`, `super::hex::byte(..)`,
//! `form::decode_lossy(..)` through an imported module). Each path is resolved to the file that
//! defines its deepest module (`src/a/b.rs` or `src/a/b/mod.rs`, else `src/a.rs` or
//! `src/a/mod.rs`, ...), so `crate::click::Echo` is an edge to `click/mod.rs` and
//! `crate::click::callback::Echo` one to `click/callback.rs`. `mod` declarations are not edges
//! (a parent declaring its children is how Rust finds files, not a dependency), and neither is
//! anything under `#[cfg(test)]`: a test module may reach anywhere.
//!
//! Why no cycle: two files that name each other can only be read, changed and tested together,
//! and a circle through `mod.rs` re-exports hides the same knot one step away. One-way data
//! flow also keeps each layer's error type its own (house rules).
//!
//! The reading is a small lexer, not a Rust parser (no new dependencies): comments, strings,
//! raw strings and character literals are skipped, then `use` trees and `::` paths are read
//! from the tokens. The tests at the bottom hold it to the shapes the sources use.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::Path;

/// A module path from the crate root: `["click", "respond"]`; the root is empty.
type Module = Vec<String>;

/// `from -> to -> the paths that make the edge`, files named relative to `src/`.
type Graph = BTreeMap<String, BTreeMap<String, BTreeSet<String>>>;

// ---------------------------------------------------------------------------------------------
// Tokens

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    /// `::`
    Sep,
    Punct(char),
}

fn is_ident_char(c: char) -> bool {
    c.is_alphanumeric() || c == '_'
}

/// Index just past the closing `"` of a string whose body starts at `i`.
fn skip_string(s: &[char], mut i: usize) -> usize {
    while i < s.len() {
        match s[i] {
            '\\' => i += 2,
            '"' => return i + 1,
            _ => i += 1,
        }
    }
    s.len()
}

/// Index just past the `"` followed by `hashes` `#` that closes a raw string.
fn skip_raw_string(s: &[char], mut i: usize, hashes: usize) -> usize {
    while i < s.len() {
        if s[i] == '"' && (1..=hashes).all(|k| s.get(i + k) == Some(&'#')) {
            return i + 1 + hashes;
        }
        i += 1;
    }
    s.len()
}

/// At a `'`: index past a character literal (`'x'`, `'\n'`, `'\u{1b}'`) or a lifetime (`'a`).
fn skip_quote(s: &[char], i: usize) -> usize {
    if s.get(i + 1) == Some(&'\\') {
        let mut j = i + 3;
        while j < s.len() && s[j] != '\'' {
            j += 1;
        }
        return j + 1;
    }
    if s.get(i + 2) == Some(&'\'') {
        return i + 3;
    }
    let mut j = i + 1;
    while j < s.len() && is_ident_char(s[j]) {
        j += 1;
    }
    j
}

fn lex(src: &str) -> Vec<Tok> {
    let s: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < s.len() {
        let c = s[i];
        let next = s.get(i + 1).copied();
        if c.is_whitespace() {
            i += 1;
        } else if c == '/' && next == Some('/') {
            while i < s.len() && s[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 1;
            i += 2;
            while i < s.len() && depth > 0 {
                match (s[i], s.get(i + 1)) {
                    ('/', Some('*')) => (depth, i) = (depth + 1, i + 2),
                    ('*', Some('/')) => (depth, i) = (depth - 1, i + 2),
                    _ => i += 1,
                }
            }
        } else if c == '"' {
            i = skip_string(&s, i + 1);
        } else if c == '\'' {
            i = skip_quote(&s, i);
        } else if c.is_ascii_digit() {
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
        } else if is_ident_char(c) {
            let start = i;
            while i < s.len() && is_ident_char(s[i]) {
                i += 1;
            }
            let word: String = s[start..i].iter().collect();
            match (word.as_str(), s.get(i)) {
                ("b" | "c", Some('"')) => {
                    i = skip_string(&s, i + 1);
                    continue;
                }
                ("b", Some('\'')) => {
                    i = skip_quote(&s, i);
                    continue;
                }
                ("r" | "br" | "cr", Some('"' | '#')) => {
                    let mut j = i;
                    while s.get(j) == Some(&'#') {
                        j += 1;
                    }
                    if s.get(j) == Some(&'"') {
                        i = skip_raw_string(&s, j + 1, j - i);
                        continue;
                    }
                    if word == "r" && j == i + 1 {
                        // A raw identifier, `r#type`: never a keyword.
                        let start = j;
                        i = j;
                        while i < s.len() && is_ident_char(s[i]) {
                            i += 1;
                        }
                        let name: String = s[start..i].iter().collect();
                        out.push(Tok::Ident(format!("r#{name}")));
                        continue;
                    }
                }
                _ => {}
            }
            out.push(Tok::Ident(word));
        } else if c == ':' && next == Some(':') {
            out.push(Tok::Sep);
            i += 2;
        } else {
            out.push(Tok::Punct(c));
            i += 1;
        }
    }
    out
}

fn is_punct(toks: &[Tok], i: usize, c: char) -> bool {
    toks.get(i) == Some(&Tok::Punct(c))
}

fn ident_at(toks: &[Tok], i: usize) -> Option<&str> {
    match toks.get(i) {
        Some(Tok::Ident(w)) => Some(w),
        _ => None,
    }
}

/// Index past the group whose opener (`(`, `[` or `{`) is at `i`.
fn skip_group(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        match toks[i] {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth = depth.saturating_sub(1);
                if depth == 0 {
                    return i + 1;
                }
            }
            _ => {}
        }
        i += 1;
    }
    toks.len()
}

/// Index past the item starting at `i`: its `;`, or the end of its first `{ }` block.
fn skip_item(toks: &[Tok], mut i: usize) -> usize {
    let mut depth = 0usize;
    while i < toks.len() {
        match toks[i] {
            Tok::Punct('{') if depth == 0 => return skip_group(toks, i),
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                if depth == 0 {
                    return i; // the end of the enclosing block: a malformed item, stop here
                }
                depth -= 1;
            }
            Tok::Punct(';') if depth == 0 => return i + 1,
            _ => {}
        }
        i += 1;
    }
    toks.len()
}

/// `#[cfg(test)]` (or `#![cfg(test)]` when `inner`) at `i`: its length in tokens.
fn cfg_test_at(toks: &[Tok], i: usize, inner: bool) -> Option<usize> {
    let bang = usize::from(inner);
    let ok = is_punct(toks, i, '#')
        && (!inner || is_punct(toks, i + 1, '!'))
        && is_punct(toks, i + 1 + bang, '[')
        && ident_at(toks, i + 2 + bang) == Some("cfg")
        && is_punct(toks, i + 3 + bang, '(')
        && ident_at(toks, i + 4 + bang) == Some("test")
        && is_punct(toks, i + 5 + bang, ')')
        && is_punct(toks, i + 6 + bang, ']');
    ok.then_some(7 + bang)
}

/// The tokens without anything under `#[cfg(test)]`; none for a `#![cfg(test)]` file.
fn without_tests(toks: Vec<Tok>) -> Vec<Tok> {
    if (0..toks.len()).any(|i| cfg_test_at(&toks, i, true).is_some()) {
        return Vec::new();
    }
    let mut out = Vec::with_capacity(toks.len());
    let mut i = 0;
    while i < toks.len() {
        if let Some(len) = cfg_test_at(&toks, i, false) {
            i += len;
            while is_punct(&toks, i, '#') && is_punct(&toks, i + 1, '[') {
                i = skip_group(&toks, i + 1);
            }
            i = skip_item(&toks, i);
        } else {
            out.push(toks[i].clone());
            i += 1;
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Paths

/// The module a file defines: `None` for `main.rs`, the root of the binary crate (which names
/// the library as `click_gateway::`).
fn module_of(rel: &str) -> Option<Module> {
    let stem = rel.strip_suffix(".rs")?;
    let mut parts: Vec<String> = stem.split('/').map(str::to_owned).collect();
    match parts.as_slice() {
        [only] if only == "lib" => return Some(Vec::new()),
        [only] if only == "main" => return None,
        _ => {}
    }
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    Some(parts)
}

/// A `use` tree flattened: each leaf path, with the name it binds (`None` for `*` and `as _`).
fn use_tree(toks: &[Tok], i: &mut usize, prefix: Module, out: &mut Vec<(Module, Option<String>)>) {
    let mut segs = prefix;
    if toks.get(*i) == Some(&Tok::Sep) {
        segs.push("::".to_owned()); // `::std::..`: an external crate
        *i += 1;
    }
    loop {
        match toks.get(*i) {
            Some(Tok::Ident(w)) if w != "as" => {
                segs.push(w.clone());
                *i += 1;
                if toks.get(*i) == Some(&Tok::Sep) {
                    *i += 1;
                    continue;
                }
                break;
            }
            Some(Tok::Punct('{')) => {
                *i += 1;
                while *i < toks.len() && !is_punct(toks, *i, '}') {
                    let before = *i;
                    use_tree(toks, i, segs.clone(), out);
                    if is_punct(toks, *i, ',') {
                        *i += 1;
                    } else if *i == before {
                        *i += 1; // not a tree: step over it rather than loop
                    }
                }
                *i += 1;
                return;
            }
            Some(Tok::Punct('*')) => {
                *i += 1;
                out.push((segs, None));
                return;
            }
            _ => break,
        }
    }
    if segs.last().is_some_and(|s| s == "self") {
        segs.pop();
    }
    let mut binding = segs.last().cloned();
    if ident_at(toks, *i) == Some("as") {
        binding = ident_at(toks, *i + 1)
            .filter(|w| *w != "_")
            .map(str::to_owned);
        *i += 2;
    }
    out.push((segs, binding));
}

/// What one file's paths resolve against.
struct Scope<'a> {
    /// The file's module; `None` in the binary crate's root.
    module: Option<&'a Module>,
    /// Modules declared inline (`mod m { .. }`) around the current token.
    inline: Vec<String>,
    /// Child modules declared with `mod name;`.
    children: BTreeSet<String>,
    /// Names bound by `use` to paths inside the crate.
    aliases: BTreeMap<String, Module>,
}

impl Scope<'_> {
    /// The path from the crate root that `segs` names, when it is inside the crate.
    fn resolve(&self, segs: &[String]) -> Option<Module> {
        let (head, rest) = segs.split_first()?;
        let here = || {
            self.module.map(|m| {
                let mut here = m.clone();
                here.extend(self.inline.iter().cloned());
                here
            })
        };
        let (mut base, mut rest) = match head.as_str() {
            "crate" => (self.module.map(|_| Vec::new())?, rest),
            "click_gateway" if self.module.is_none() => (Vec::new(), rest),
            "self" | "super" => (here()?, segs),
            name => {
                if let Some(path) = self.aliases.get(name) {
                    (path.clone(), rest)
                } else if self.inline.is_empty() && self.children.contains(name) {
                    let mut base = here()?;
                    base.push(name.to_owned());
                    (base, rest)
                } else {
                    return None; // an external crate, a prelude name, a local type
                }
            }
        };
        if head == "self" {
            rest = &rest[1..];
        }
        while let Some((first, tail)) = rest.split_first() {
            if first != "super" || head != "super" {
                break;
            }
            base.pop()?;
            rest = tail;
        }
        base.extend(rest.iter().cloned());
        Some(base)
    }
}

/// Every path of one file into the crate, from the root, with the text that names it.
fn references(module: Option<&Module>, src: &str) -> Vec<(Module, String)> {
    let toks = without_tests(lex(src));
    let mut scope = Scope {
        module,
        inline: Vec::new(),
        children: BTreeSet::new(),
        aliases: BTreeMap::new(),
    };
    let mut depth = 0usize;
    for i in 0..toks.len() {
        match toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => depth = depth.saturating_sub(1),
            Tok::Ident(ref w) if w == "mod" && depth == 0 => {
                if let (Some(name), true) = (ident_at(&toks, i + 1), is_punct(&toks, i + 2, ';')) {
                    scope.children.insert(name.to_owned());
                }
            }
            _ => {}
        }
    }

    let mut out = Vec::new();
    let mut open: Vec<usize> = Vec::new(); // brace depths at which inline modules opened
    let mut depth = 0usize;
    let mut i = 0;
    while i < toks.len() {
        match &toks[i] {
            Tok::Punct('{') => depth += 1,
            Tok::Punct('}') => {
                depth = depth.saturating_sub(1);
                if open.last() == Some(&depth) {
                    open.pop();
                    scope.inline.pop();
                }
            }
            Tok::Ident(w) if w == "mod" => {
                if let Some(name) = ident_at(&toks, i + 1) {
                    if is_punct(&toks, i + 2, '{') {
                        scope.inline.push(name.to_owned());
                        open.push(depth);
                        depth += 1;
                    }
                    i += 3; // `mod name;` declares, `mod name {` opens: neither is an edge
                    continue;
                }
            }
            Tok::Ident(w) if w == "use" => {
                let mut trees = Vec::new();
                let mut j = i + 1;
                use_tree(&toks, &mut j, Vec::new(), &mut trees);
                while j < toks.len() && !is_punct(&toks, j, ';') {
                    j += 1;
                }
                for (segs, binding) in trees {
                    if let Some(path) = scope.resolve(&segs) {
                        out.push((path.clone(), format!("use {}", segs.join("::"))));
                        if let Some(name) = binding {
                            scope.aliases.insert(name, path);
                        }
                    }
                }
                i = j + 1;
                continue;
            }
            Tok::Ident(head)
                if toks.get(i + 1) == Some(&Tok::Sep)
                    && !matches!(
                        i.checked_sub(1).map(|p| &toks[p]),
                        Some(Tok::Sep | Tok::Punct('.'))
                    ) =>
            {
                let mut segs = vec![head.clone()];
                let mut j = i + 1;
                while toks.get(j) == Some(&Tok::Sep) {
                    match ident_at(&toks, j + 1) {
                        Some(next) => segs.push(next.to_owned()),
                        None => break, // `::<T>` or `::{..}`: the path ends
                    }
                    j += 2;
                }
                if let Some(path) = scope.resolve(&segs) {
                    out.push((path, segs.join("::")));
                }
                i = j;
                continue;
            }
            _ => {}
        }
        i += 1;
    }
    out
}

/// The file defining the deepest module of `path` that has one.
fn file_of<'f>(path: &[String], files: &'f BTreeMap<Module, String>) -> Option<&'f String> {
    (0..=path.len()).rev().find_map(|k| files.get(&path[..k]))
}

/// The import graph of a crate given as `path relative to src/ -> source`. Every file is a
/// key, with or without edges.
fn graph(sources: &BTreeMap<String, String>) -> Graph {
    let modules: BTreeMap<String, Option<Module>> = sources
        .keys()
        .map(|rel| (rel.clone(), module_of(rel)))
        .collect();
    let files: BTreeMap<Module, String> = modules
        .iter()
        .filter_map(|(rel, m)| Some((m.clone()?, rel.clone())))
        .collect();
    let mut graph = Graph::new();
    for (rel, src) in sources {
        let edges = graph.entry(rel.clone()).or_default();
        for (path, text) in references(modules[rel].as_ref(), src) {
            if let Some(to) = file_of(&path, &files).filter(|to| *to != rel) {
                edges.entry(to.clone()).or_default().insert(text);
            }
        }
    }
    graph
}

// ---------------------------------------------------------------------------------------------
// Cycles

/// The strongly connected components with more than one file (Tarjan's algorithm).
fn knots(graph: &Graph) -> Vec<BTreeSet<String>> {
    struct Tarjan<'g> {
        graph: &'g Graph,
        index: BTreeMap<&'g str, usize>,
        low: BTreeMap<&'g str, usize>,
        stack: Vec<&'g str>,
        on_stack: BTreeSet<&'g str>,
        out: Vec<BTreeSet<String>>,
    }
    impl<'g> Tarjan<'g> {
        fn visit(&mut self, v: &'g str) {
            let n = self.index.len();
            self.index.insert(v, n);
            self.low.insert(v, n);
            self.stack.push(v);
            self.on_stack.insert(v);
            for w in self.graph.get(v).into_iter().flat_map(|e| e.keys()) {
                let w = w.as_str();
                if !self.index.contains_key(w) {
                    self.visit(w);
                    let low = self.low[v].min(self.low[w]);
                    self.low.insert(v, low);
                } else if self.on_stack.contains(w) {
                    let low = self.low[v].min(self.index[w]);
                    self.low.insert(v, low);
                }
            }
            if self.low[v] == self.index[v] {
                let mut component = BTreeSet::new();
                while let Some(w) = self.stack.pop() {
                    self.on_stack.remove(w);
                    component.insert(w.to_owned());
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    self.out.push(component);
                }
            }
        }
    }
    let mut t = Tarjan {
        graph,
        index: BTreeMap::new(),
        low: BTreeMap::new(),
        stack: Vec::new(),
        on_stack: BTreeSet::new(),
        out: Vec::new(),
    };
    for v in graph.keys() {
        if !t.index.contains_key(v.as_str()) {
            t.visit(v);
        }
    }
    t.out
}

/// One shortest cycle through every edge of every knot, each starting at its smallest file:
/// every edge that could be cut to break a circle shows in at least one of them.
fn cycles(graph: &Graph) -> Vec<Vec<String>> {
    let mut found = BTreeSet::new();
    for knot in knots(graph) {
        for from in &knot {
            for to in graph[from].keys().filter(|to| knot.contains(*to)) {
                // The shortest way back from `to` to `from`, inside the knot.
                let mut came: BTreeMap<&str, &str> = BTreeMap::new();
                let mut queue = VecDeque::from([to.as_str()]);
                while let Some(v) = queue.pop_front() {
                    if v == from {
                        break;
                    }
                    for w in graph[v].keys().filter(|w| knot.contains(*w)) {
                        if w != to && !came.contains_key(w.as_str()) {
                            came.insert(w, v);
                            queue.push_back(w);
                        }
                    }
                }
                let mut cycle = vec![from.clone()];
                let mut v = from.as_str();
                while v != to {
                    v = came[v];
                    cycle.push(v.to_owned());
                }
                cycle.reverse(); // to, ..., from
                cycle.rotate_right(1); // from, to, ...
                let start = cycle
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, f)| *f)
                    .map_or(0, |(k, _)| k);
                cycle.rotate_left(start);
                found.insert(cycle);
            }
        }
    }
    found.into_iter().collect()
}

/// `a.rs -> b.rs -> a.rs`, then each edge's paths, for the failure message.
fn describe(graph: &Graph, cycles: &[Vec<String>]) -> String {
    let mut text = String::new();
    for cycle in cycles {
        let mut closed = cycle.clone();
        closed.push(cycle[0].clone());
        text.push_str(&format!("  {}\n", closed.join(" -> ")));
        for pair in closed.windows(2) {
            let paths: Vec<&str> = graph[&pair[0]][&pair[1]]
                .iter()
                .map(|p| p.as_str())
                .collect();
            text.push_str(&format!(
                "      {} -> {}: {}\n",
                pair[0],
                pair[1],
                paths.join(", ")
            ));
        }
    }
    text
}

// ---------------------------------------------------------------------------------------------
// The crate

fn read_dir(dir: &Path, root: &Path, out: &mut BTreeMap<String, String>) {
    let mut entries: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            read_dir(&path, root, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            let rel = path
                .strip_prefix(root)
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            out.insert(rel, std::fs::read_to_string(&path).unwrap());
        }
    }
}

fn src() -> BTreeMap<String, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    read_dir(&root, &root, &mut out);
    out
}

fn assert_no_cycles(graph: &Graph, cycles: &[Vec<String>]) {
    assert!(
        cycles.is_empty(),
        "the import graph of src/ has {} cycle(s); cut one edge of each (move the item one \
         side needs to the side that owns it, or give the lower layer its own type):\n{}",
        cycles.len(),
        describe(graph, cycles)
    );
}

#[test]
fn src_has_no_import_cycles() {
    let graph = graph(&src());
    assert_no_cycles(&graph, &cycles(&graph));
}

#[test]
fn src_is_read_whole() {
    let sources = src();
    let graph = graph(&sources);
    assert_eq!(
        graph.keys().collect::<Vec<_>>(),
        sources.keys().collect::<Vec<_>>()
    );
    // Edges the sources are known to have, one of each kind of path.
    for (from, to) in [
        ("trust.rs", "click/hex.rs"),        // use crate::click::hex
        ("click/sign.rs", "click/keys.rs"),  // use super::keys::Secret
        ("main.rs", "config/mod.rs"),        // use click_gateway::config::{self, ..}
        ("click/mod.rs", "click/verify.rs"), // pub use verify::Verified
    ] {
        assert!(
            graph[from].contains_key(to),
            "{from} -> {to} not found; {from} has {:?}",
            graph[from]
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The reader itself

fn crate_of(files: &[(&str, &str)]) -> BTreeMap<String, String> {
    files
        .iter()
        .map(|(rel, src)| (rel.to_string(), src.to_string()))
        .collect()
}

fn edges(graph: &Graph) -> Vec<(String, String)> {
    graph
        .iter()
        .flat_map(|(from, to)| to.keys().map(move |to| (from.clone(), to.clone())))
        .collect()
}

fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut v: Vec<_> = list
        .iter()
        .map(|(a, b)| (a.to_string(), b.to_string()))
        .collect();
    v.sort();
    v
}

#[test]
fn reads_every_shape_of_path() {
    let graph = graph(&crate_of(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d; pub mod e; pub mod f;"),
        // A child named bare, in a `pub use` and in code.
        ("a/mod.rs", "pub mod x; pub mod y; pub use x::X; fn f() { y::g(); }"),
        // `super::` with `{self, ..}`, then the imported module used in code.
        ("a/x.rs", "use super::y::{self, Y}; pub struct X; fn f() { y::g(); }"),
        ("a/y.rs", "pub fn g() {} pub struct Y;"),
        // A grouped, nested `use`; what comments and strings say is not read.
        (
            "b.rs",
            "pub(crate) use crate::{a::X, c::{self, C}}; // use crate::d::D;\n\
             /* crate::e::E /* nested */ crate::e::E */\n\
             const S: &str = \"crate::e::E\"; const R: &str = r#\"crate::e::\"E\"#;\n\
             const Q: char = '\"'; fn l<'a>(x: &'a str) -> &'a str { x }",
        ),
        // A full path in an expression, with a turbofish; one through `super::super`.
        ("c.rs", "pub struct C; fn f() -> u8 { crate::d::f::<u8>() }"),
        ("d.rs", "pub fn f() -> u8 { 1 } #[cfg(test)]\n#[allow(unused)]\nmod tests { use crate::e::E; fn t() { crate::f::g(); } }\n#[cfg(test)] use crate::f::G;"),
        // `self::` and an inline module's `super::`; a method call's `::<>` is no path.
        ("e.rs", "pub struct E; pub use self::inner::*; mod inner { use super::super::f::G; } fn h(v: Vec<u8>) { v.iter().collect::<Vec<_>>(); }"),
        ("f.rs", "pub struct G; pub fn g() {}"),
        // The binary names the library by its crate name.
        ("main.rs", "use click_gateway::a::y; fn main() { y::g(); click_gateway::c::C; }"),
    ]));
    assert_eq!(
        edges(&graph),
        pairs(&[
            ("a/mod.rs", "a/x.rs"),
            ("a/mod.rs", "a/y.rs"),
            ("a/x.rs", "a/y.rs"),
            ("b.rs", "a/mod.rs"),
            ("b.rs", "c.rs"),
            ("c.rs", "d.rs"),
            ("e.rs", "f.rs"),
            ("main.rs", "a/y.rs"),
            ("main.rs", "c.rs"),
        ])
    );
    assert_eq!(
        graph["c.rs"]["d.rs"].iter().collect::<Vec<_>>(),
        ["crate::d::f"]
    );
}

#[test]
fn finds_and_names_every_cycle() {
    let graph = graph(&crate_of(&[
        ("lib.rs", "pub mod a; pub mod b; pub mod c; pub mod d;"),
        ("a.rs", "use crate::b::B; pub struct A;"),
        ("b.rs", "pub struct B; fn f() { super::a::A; crate::c::C; }"),
        ("c.rs", "pub struct C; use crate::{a::A, d::D};"),
        ("d.rs", "pub struct D;"),
    ]));
    let cycles = cycles(&graph);
    let text = describe(&graph, &cycles);
    assert!(text.contains("  a.rs -> b.rs -> a.rs\n"), "{text}");
    assert!(text.contains("  a.rs -> b.rs -> c.rs -> a.rs\n"), "{text}");
    assert!(text.contains("      b.rs -> a.rs: super::a::A\n"), "{text}");
    assert!(
        text.contains("      c.rs -> a.rs: use crate::a::A\n"),
        "{text}"
    );
    assert_eq!(cycles.len(), 2, "{text}");
    assert!(!text.contains("d.rs"), "{text}");
}
