//! What the ledger costs one callback, and what the guard's index costs its gateway, on SQLite:
//! the floors of the write-ahead design, measured on it (benches/README.md, "The write-ahead
//! ledger").
//!
//! - `write-ahead, N in flight`: [`Ledger::write_ahead`] of distinct verified callbacks, N
//!   awaited at once (what N callbacks in flight give: the writer commits whatever is queued,
//!   so N is the group commit's batch), each followed by its answer ([`Ledger::answer`]); CPU
//!   per callback, the writer thread's and the whole process's, for `synchronous` normal and
//!   full.
//! - `refused rows`: [`Ledger::record`] of refused callbacks, nobody waiting.
//! - `index`: one [`Index::bind`] (rule 1 and rule 2 of a Complete) with 1M entries held.
//! - `rebuild`: a ledger whose guard window holds 1M forwarded, verified callbacks (half of
//!   them Completes), opened: the time the index takes to rebuild, and the bytes it holds.
//!
//! `cargo bench --bench store` (a temporary directory on the disk `TMPDIR` names; `ROWS`,
//! 50,000 by default; `REBUILD`, 1,000,000; `IN_FLIGHT=1,2` for those write-ahead batches
//! alone). Not a criterion bench: criterion times wall-clock, which here would be the disk's;
//! CPU time comes from `/proc/self/task/*/schedstat`.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use bytes::Bytes;
use click_gateway::click::digest::DigestKey;
use click_gateway::click::keys::Secret;
use click_gateway::click::Verified;
use click_gateway::config::{LedgerSettings, Mode, Synchronous};
use click_gateway::ledger::index::{Claim, Index, Signed};
use click_gateway::ledger::{Answer, Backend, BackendAnswer, Bound, Ledger, Record, Verdict};
use click_gateway::metrics::Metrics;

/// Each live thread's time on a CPU, user and kernel, in nanoseconds, by thread id, and
/// whether it is the ledger's writer.
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

/// CPU per row between two snapshots, over the threads alive at both: the writer's and
/// everyone's.
fn report(name: &str, rows: usize, before: &Threads, after: &Threads) {
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
    println!(
        "{name:<44} {:>6.2} µs/callback on the writer, {:>6.2} in all",
        per(writers),
        per(all)
    );
}

fn body(i: usize, complete: bool) -> String {
    format!(
        "click_trans_id={}&service_id=12345&click_paydoc_id={}&merchant_trans_id=order-{i}\
         {}&amount=1000.00&action={}&error=0&error_note=Success&sign_time=2026-11-28+12%3A00%3A00\
         &sign_string={:032x}",
        2_100_000_000 + i,
        3_300_000_000_u64 + i as u64,
        if complete {
            "&merchant_prepare_id=5001"
        } else {
            ""
        },
        u8::from(complete),
        (i as u128).wrapping_mul(0x9E37_79B9_7F4A_7C15_F39C_C060_5CED_C835),
    )
}

fn record(i: usize, complete: bool) -> Record {
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
        body: Bytes::from(body(i, complete)),
        verdict: Verdict::Verified,
        reason: None,
        hint: None,
        detail: None,
        verified: Some(Verified {
            service_id: 12345,
            slot: 0,
            fingerprint: Secret::new("bench-key").fingerprint(),
        }),
        generation: 1,
        mode: Mode::Enforce,
        gateway: Duration::from_micros(20),
        bound: Some(Bound {
            key: (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as i64,
            digest: i as i64,
            complete_error: complete.then_some(0),
        }),
    }
}

fn answer(id: i64) -> Answer {
    Answer {
        callback: id,
        backend: Backend {
            status: 200,
            answer: Some(BackendAnswer {
                error: Some("0".into()),
                error_note: Some("Success".into()),
                merchant_prepare_id: Some("5001".into()),
                merchant_confirm_id: None,
            }),
        },
        upstream: Some(Duration::from_micros(900)),
        total: Duration::from_micros(950),
    }
}

fn settings(dir: &std::path::Path, name: &str, synchronous: Synchronous) -> LedgerSettings {
    LedgerSettings {
        database: Some(dir.join(name)),
        synchronous,
        ..LedgerSettings::default()
    }
}

const WINDOW: Duration = Duration::from_secs(30 * 86_400);

/// `rows` callbacks written ahead, `in_flight` awaited at once, each then answered.
fn write_ahead(dir: &std::path::Path, rows: usize, in_flight: usize, sync: Synchronous) {
    let ledger = Ledger::open(
        &settings(dir, &format!("wa-{in_flight}-{sync:?}.db"), sync),
        WINDOW,
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = cpu();
    rt.block_on(async {
        let mut i = 0;
        while i < rows {
            let n = in_flight.min(rows - i);
            let pending: Vec<_> = (i..i + n)
                .map(|k| ledger.write_ahead(record(k, k % 2 == 1), None))
                .collect();
            for p in pending {
                let id = p.await.unwrap().id.unwrap();
                ledger.answer(answer(id));
            }
            i += n;
        }
        ledger.flush().await.unwrap();
    });
    report(
        &format!("write-ahead, {in_flight} in flight, synchronous {sync:?}"),
        rows,
        &before,
        &cpu(),
    );
    rt.block_on(ledger.close(Duration::from_secs(30)));
}

fn refused(dir: &std::path::Path, rows: usize) {
    let ledger = Ledger::open(
        &settings(dir, "refused.db", Synchronous::Normal),
        WINDOW,
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = cpu();
    rt.block_on(async {
        for k in 0..rows {
            let mut rec = record(k, false);
            rec.verdict = Verdict::Rejected;
            rec.reason = Some("key_mismatch");
            rec.verified = None;
            rec.bound = None;
            rec.detail = Some("the key(s) of service 12345 do not match".into());
            // The queue holds 4096: wait for the writer now and then, as a real flood's
            // budget would never let it get far ahead.
            if ledger.record(rec).is_none() {
                ledger.flush().await.unwrap();
            }
            if k % 2048 == 2047 {
                ledger.flush().await.unwrap();
            }
        }
        ledger.flush().await.unwrap();
    });
    report("refused rows, nobody waiting", rows, &before, &cpu());
    rt.block_on(ledger.close(Duration::from_secs(30)));
}

fn index_bind(entries: usize) {
    let index = Index::new(WINDOW, DigestKey::from_halves(1, 2));
    let claim = |i: usize| Claim {
        key: (i as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15) as i64,
        signed: Signed {
            digest: i as i64,
            row: i as i64,
        },
        complete: (i % 2 == 1).then_some((12345, 2_100_000_000 + i as u64, 0)),
        enforce_signature: true,
    };
    for i in 0..entries {
        index.bind(&claim(i));
    }
    let n = 200_000;
    let started = Instant::now();
    for i in entries..entries + n {
        index.bind(&claim(i));
    }
    let ns = started.elapsed().as_nanos() as f64 / n as f64;
    println!(
        "{:<44} {ns:>6.0} ns/bind with {entries} entries held",
        "index"
    );
}

/// A ledger whose window holds `rows` bound rows, opened: the rebuild's time and bytes.
fn rebuild(dir: &std::path::Path, rows: usize) {
    let path = dir.join("rebuild.db");
    {
        let ledger = Ledger::open(
            &settings(dir, "rebuild.db", Synchronous::Normal),
            WINDOW,
            Arc::new(Metrics::new()),
        )
        .unwrap();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            for k in 0..rows {
                // Rows of callbacks forwarded and bound, written as the data path would.
                while ledger.record(record(k, k % 2 == 1)).is_none() {
                    ledger.flush().await.unwrap();
                }
                if k % 4000 == 3999 {
                    ledger.flush().await.unwrap();
                }
            }
            ledger.flush().await.unwrap();
            ledger.close(Duration::from_secs(60)).await;
        });
    }
    let mib = |bytes: usize| bytes as f64 / (1024.0 * 1024.0);
    let file = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    let started = Instant::now();
    let ledger = Ledger::open(
        &settings(dir, "rebuild.db", Synchronous::Normal),
        WINDOW,
        Arc::new(Metrics::new()),
    )
    .unwrap();
    let took = started.elapsed();
    let index = ledger.index().unwrap();
    let (signatures, transactions) = index.len();
    println!(
        "{:<44} {:>6.2} s to open with {signatures} signatures and {transactions} transactions \
         ({:.0} MiB ledger): the index holds {:.1} MiB",
        "rebuild",
        took.as_secs_f64(),
        mib(file as usize),
        mib(index.bytes())
    );
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken.
    let rows: usize = std::env::var("ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50_000);
    let rebuild_rows: usize = std::env::var("REBUILD")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    // `IN_FLIGHT=2,4` measures those batch sizes alone (with synchronous = normal), nothing
    // else: for a profiler.
    let only: Option<Vec<usize>> = std::env::var("IN_FLIGHT")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    let dir = tempfile::tempdir().unwrap();
    if let Some(batches) = only {
        for in_flight in batches {
            write_ahead(dir.path(), rows, in_flight, Synchronous::Normal);
        }
        return;
    }
    for sync in [Synchronous::Normal, Synchronous::Full] {
        for in_flight in [1, 16, 64] {
            write_ahead(dir.path(), rows, in_flight, sync);
        }
    }
    refused(dir.path(), rows);
    index_bind(1_000_000);
    rebuild(dir.path(), rebuild_rows);
}
