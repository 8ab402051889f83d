//! What one callback costs the SQLite stores, in CPU time (user and kernel: the fsync waits
//! cost nothing), next to SQLite's own floor for the smallest rows that could do each job. These
//! are the figures behind benches/README.md's "The ledger's and the guard's cost": set against
//! a load run's CPU per request, they say whether a throughput goal for the ledger or the guard
//! can be met at all.
//!
//! - `ledger, as shipped`: [`Ledger::record`] of distinct verified callbacks, the backend's
//!   answer included, 400 rows per commit (the commit window's batch at 40,000 callbacks/s);
//!   the writer thread's CPU, and the whole process's (the queueing as well).
//! - `guard, as shipped`: [`Ledger::bind`] of distinct bindings, 20 awaited per commit (what
//!   64 callbacks in flight gave under load).
//! - `floor, ...`: rusqlite alone, the ledger's pragmas (WAL, `synchronous = FULL`), one
//!   prepared statement per row: the fewest columns that could still be a ledger row or a
//!   binding, appended or at a random key.
//!
//! `cargo bench --bench store` (a temporary directory on the disk `TMPDIR` names; `ROWS`,
//! 100,000 by default). Not a criterion bench: criterion times wall-clock, which here would
//! be the disk's.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use click_gateway::click::keys::Secret;
use click_gateway::click::Verified;
use click_gateway::config::{LedgerSettings, Mode};
use click_gateway::guard;
use click_gateway::ledger::sqlite::SqliteStore;
use click_gateway::ledger::{
    unix_micros, Backend, BackendAnswer, Binding, Ledger, Record, Timings, Verdict,
};
use click_gateway::metrics::Metrics;
use rusqlite::{params, Connection};

/// Each live thread's time on a CPU, user and kernel, in nanoseconds
/// (`/proc/self/task/*/schedstat`, where `stat`'s ticks would be 10 ms coarse), by thread id,
/// and whether it is a store's writer.
type Threads = BTreeMap<u64, (u64, bool)>;

fn cpu() -> Threads {
    let mut threads = Threads::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let read = |name: &str| std::fs::read_to_string(task.path().join(name)).unwrap_or_default();
        let ns = read("schedstat")
            .split_whitespace()
            .next()
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let tid = task.file_name().to_string_lossy().parse().unwrap_or(0);
        threads.insert(tid, (ns, read("comm").trim() == "ledger-writer"));
    }
    threads
}

/// CPU per row between two snapshots, over the threads alive at both (a writer that exited
/// in between is not counted against the next case): the writers' and everyone's.
fn report(name: &str, rows: usize, before: &Threads, after: &Threads, writer: bool) {
    let (mut writers, mut all) = (0, 0);
    for (tid, (ns, is_writer)) in after {
        if let Some((was, _)) = before.get(tid) {
            let spent = ns.saturating_sub(*was);
            all += spent;
            if *is_writer {
                writers += spent;
            }
        }
    }
    let per = |ns: u64| ns as f64 / 1e3 / rows as f64;
    if writer {
        println!(
            "{name:<52} {:>6.2} µs/row on the writer, {:>6.2} in all",
            per(writers),
            per(all)
        );
    } else {
        println!("{name:<52} {:>6.2} µs/row", per(all));
    }
}

fn body(i: usize) -> String {
    format!(
        "click_trans_id={}&service_id=12345&click_paydoc_id={}&merchant_trans_id=order-{i}\
         &amount=1000.00&action=0&error=0&error_note=Success&sign_time=2026-11-28+12%3A00%3A00\
         &sign_string={:032x}",
        2_100_000_000 + i,
        3_300_000_000_u64 + i as u64,
        (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
    )
}

fn record(i: usize) -> Record {
    Record {
        time: SystemTime::now(),
        request_id: format!("0193f3a2-7c1e-7b8a-9d4e-{i:012x}"),
        peer: SocketAddr::new(
            IpAddr::V4(Ipv4Addr::LOCALHOST),
            40_000 + (i % 20_000) as u16,
        ),
        client: IpAddr::V4(Ipv4Addr::LOCALHOST),
        path: "/click/prepare/".into(),
        content_type: Some("application/x-www-form-urlencoded".into()),
        body: Bytes::from(body(i)),
        verdict: Verdict::Verified,
        reason: None,
        hint: None,
        detail: None,
        verified: Some(Verified {
            service_id: 12345,
            slot: 0,
            fingerprint: Secret::new("bench-secret").fingerprint(),
        }),
        generation: 1,
        mode: Mode::Enforce,
        backend: Some(Backend {
            status: 200,
            answer: Some(BackendAnswer {
                error: Some("0".into()),
                error_note: Some("Success".into()),
                merchant_prepare_id: Some(format!("{}", 5000 + i)),
                merchant_confirm_id: None,
            }),
        }),
        timings: Timings {
            gateway: Duration::from_micros(35),
            upstream: Some(Duration::from_micros(120)),
            total: Duration::from_micros(180),
        },
    }
}

fn binding(i: usize) -> Binding {
    let text = body(i);
    let mut pairs: Vec<(&str, &str)> = text
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .collect();
    pairs.sort();
    let fields = guard::canonical(&pairs);
    Binding {
        service_id: "12345".into(),
        sign: pairs
            .iter()
            .find(|(k, _)| *k == "sign_string")
            .map(|(_, v)| v.to_string())
            .unwrap_or_default(),
        digest: guard::digest(&fields),
        fields,
        request_id: format!("0193f3a2-7c1e-7b8a-9d4e-{i:012x}"),
        token: format!("bench-{i}"),
        time_us: unix_micros(SystemTime::now()),
        enforce_signature: true,
        complete: None,
    }
}

fn settings(dir: &Path, name: &str) -> LedgerSettings {
    LedgerSettings {
        database: Some(dir.join(name)),
        // The whole of a round fits: nothing is dropped.
        queue: 100_000,
        ..LedgerSettings::default()
    }
}

async fn shipped_ledger(dir: &Path, rows: usize) {
    let ledger = Ledger::open(&settings(dir, "ledger.sqlite"), Arc::new(Metrics::new()))
        .expect("open the ledger");
    let before = cpu();
    for start in (0..rows).step_by(400) {
        for i in start..(start + 400).min(rows) {
            ledger.record(record(i));
        }
        ledger.flush().await.expect("a round of rows committed");
    }
    report(
        "ledger, as shipped (400 rows a commit)",
        rows,
        &before,
        &cpu(),
        true,
    );
    ledger.close(Duration::from_secs(10)).await;
}

async fn shipped_guard(dir: &Path, rows: usize) {
    let guard = Ledger::open_guard_store(&settings(dir, "g.sqlite"))
        .expect("open the guard's store")
        .expect("a SQLite guard store");
    let before = cpu();
    for start in (0..rows).step_by(20) {
        let pending: Vec<_> = (start..(start + 20).min(rows))
            .map(|i| guard.bind(binding(i)))
            .collect();
        for p in pending {
            p.await.expect("a binding committed");
        }
    }
    report(
        "guard, as shipped (20 bindings a commit)",
        rows,
        &before,
        &cpu(),
        true,
    );
    guard.close(Duration::from_secs(10)).await;
}

/// A connection with the ledger's own pragmas (`sqlite.rs`): WAL, `synchronous = FULL`,
/// statement journals in memory.
fn connect(path: &Path) -> Connection {
    let conn = Connection::open(path).expect("open");
    let _: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .expect("WAL");
    conn.execute_batch("PRAGMA synchronous = FULL; PRAGMA temp_store = MEMORY;")
        .expect("pragmas");
    conn
}

/// One floor: `schema` created in a fresh file, then `insert` run for every row, `batch` rows
/// a transaction.
fn floor(dir: &Path, name: &str, rows: usize, batch: usize, schema: &str, insert: &str) {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let path = dir.join(format!("floor-{n}.sqlite"));
    let conn = connect(&path);
    conn.execute_batch(schema).expect("schema");
    let bodies: Vec<String> = (0..rows).map(body).collect();
    // ?1 the time, ?2 the body, ?3 the key: the ones the statement names, found once.
    let (binds_body, binds_key) = (insert.contains("?2"), insert.contains("?3"));
    let before = cpu();
    for (c, chunk) in bodies.chunks(batch).enumerate() {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        let mut stmt = conn.prepare_cached(insert).expect("prepare");
        for (j, b) in chunk.iter().enumerate() {
            let i = (c * batch + j) as u128;
            let key = i
                .wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835)
                .to_le_bytes();
            stmt.raw_bind_parameter(1, i as i64).expect("bind");
            if binds_body {
                stmt.raw_bind_parameter(2, b.as_bytes()).expect("bind");
            }
            if binds_key {
                stmt.raw_bind_parameter(3, &key[..]).expect("bind");
            }
            stmt.raw_execute().expect("insert");
        }
        drop(stmt);
        conn.execute_batch("COMMIT").expect("commit");
    }
    report(name, rows, &before, &cpu(), false);
}

/// The floor for the shipped row: the shipped `callbacks` table (created by the gateway's own
/// migrations), every one of its 33 values bound, by rusqlite alone, 400 rows a commit.
fn floor_shipped_row(dir: &Path, rows: usize) {
    let path = dir.join("floor-shipped.sqlite");
    drop(SqliteStore::open_writer(&path).expect("a new ledger"));
    let conn = connect(&path);
    let columns = "time, request_id, peer, client, path, content_type, body, click_trans_id, \
        service_id, click_paydoc_id, merchant_trans_id, merchant_prepare_id, amount, action, \
        error, error_note, sign_time, verdict, reason, hint, detail, slot, fp, generation, mode, \
        backend_status, backend_error, backend_error_note, backend_prepare_id, \
        backend_confirm_id, gateway_us, upstream_us, total_us";
    let marks: Vec<String> = (1..=33).map(|i| format!("?{i}")).collect();
    let insert = format!(
        "INSERT INTO callbacks ({columns}) VALUES ({})",
        marks.join(", ")
    );
    // Every value made before the clock starts: the floor is SQLite's work alone.
    let values: Vec<[String; 5]> = (0..rows)
        .map(|i| {
            [
                body(i),
                format!("0193f3a2-7c1e-7b8a-9d4e-{i:012x}"),
                (2_100_000_000 + i).to_string(),
                (3_300_000_000_u64 + i as u64).to_string(),
                format!("order-{i}"),
            ]
        })
        .collect();
    let time = unix_micros(SystemTime::now());
    let before = cpu();
    for chunk in values.chunks(400) {
        conn.execute_batch("BEGIN IMMEDIATE").expect("begin");
        let mut stmt = conn.prepare_cached(&insert).expect("prepare");
        for [b, request_id, click_trans_id, paydoc_id, merchant_trans_id] in chunk {
            stmt.execute(params![
                time,
                request_id,
                "127.0.0.1:40000",
                "127.0.0.1",
                "/click/prepare/",
                "application/x-www-form-urlencoded",
                b.as_bytes(),
                click_trans_id,
                "12345",
                paydoc_id,
                merchant_trans_id,
                None::<&str>,
                "1000.00",
                "0",
                "0",
                "Success",
                "2026-11-28 12:00:00",
                "verified",
                None::<&str>,
                None::<&str>,
                None::<&str>,
                0,
                "09506fdd",
                1,
                "enforce",
                200,
                "0",
                "Success",
                "5001",
                None::<&str>,
                35,
                120,
                180,
            ])
            .expect("insert");
        }
        drop(stmt);
        conn.execute_batch("COMMIT").expect("commit");
    }
    report(
        "floor, the shipped row, 400 a commit",
        rows,
        &before,
        &cpu(),
        false,
    );
}

fn main() {
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let dir = tempfile::tempdir().expect("a temporary directory");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    println!("{rows} rows each, CPU time per row (user and kernel)");
    rt.block_on(shipped_ledger(dir.path(), rows));
    rt.block_on(shipped_guard(dir.path(), rows));
    floor_shipped_row(dir.path(), rows);
    let body_row = "CREATE TABLE t (id INTEGER PRIMARY KEY, time INTEGER NOT NULL, body BLOB NOT NULL, k BLOB)";
    let append = "INSERT INTO t (time, body) VALUES (?1, ?2)";
    floor(
        dir.path(),
        "floor, ledger row (time, body), 400 a commit",
        rows,
        400,
        body_row,
        append,
    );
    floor(
        dir.path(),
        "floor, ledger row (time, body), 20 a commit",
        rows,
        20,
        body_row,
        append,
    );
    floor(
        dir.path(),
        "floor, appended binding (key, body), 20 a commit",
        rows,
        20,
        body_row,
        "INSERT INTO t (time, body, k) VALUES (?1, ?2, ?3)",
    );
    floor(
        dir.path(),
        "floor, random-key binding (16 bytes), 20 a commit",
        rows,
        20,
        "CREATE TABLE t (k BLOB PRIMARY KEY, time INTEGER NOT NULL) WITHOUT ROWID",
        "INSERT INTO t (time, k) VALUES (?1, ?3)",
    );
}
