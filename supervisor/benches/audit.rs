//! Durable audit appends with group commit, against raw fdatasync batches (plain `fn main`).
//!
//! 32 writer threads each append `Durability::Sync` records in a loop: each append returns only
//! once its record is fdatasync'd, and the writer thread makes all records that arrived together
//! durable with one fdatasync (group commit). The baseline, in the same run and the same
//! directory, writes batches of the same mean size of records of the same length with plain
//! `write` + `fdatasync`. Goal: ≥ 0.8× the raw batches. The directory is under the target
//! directory (on disk; /tmp may be tmpfs, where fdatasync costs nothing).
//!
//! `ELASTOS_BENCH_QUICK=1` runs briefly.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use elastos::audit::{AuditLog, AuditOptions, Decision, Durability, Event};
use elastos::identity::NodeKey;

const WRITERS: usize = 32;

fn event(i: usize) -> Event {
    Event {
        actor: format!(
            "capsule:bench{i}@bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"
        ),
        action: "call".into(),
        resource: "localhost://echo/ping".into(),
        decision: Decision::Allowed,
        reason: "read via echo".into(),
        token: Some("0123456789abcdef0123456789abcdef".into()),
    }
}

fn main() {
    let quick = std::env::var_os("ELASTOS_BENCH_QUICK").is_some();
    let run_for = if quick {
        Duration::from_millis(400)
    } else {
        Duration::from_secs(5)
    };
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"));
    std::fs::create_dir_all(&base).expect("target dir");
    let tmp = tempfile::tempdir_in(&base).expect("bench dir");

    // Group commit, 32 writers.
    let key = Arc::new(NodeKey::from_seed(&[3; 32]));
    let dir = tmp.path().join("audit");
    let log = Arc::new(AuditLog::open(&dir, key, AuditOptions::default()).expect("open"));
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let threads: Vec<_> = (0..WRITERS)
        .map(|i| {
            let (log, stop, count) = (log.clone(), stop.clone(), count.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    log.append(event(i), Durability::Sync).expect("append");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    std::thread::sleep(run_for);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    let elapsed = start.elapsed().as_secs_f64();
    let appends = count.load(Ordering::Relaxed);
    let syncs = log.syncs().max(1);
    log.close().expect("close");
    let group_rate = appends as f64 / elapsed;
    // One record line, as written, to size the baseline's records.
    let seg = std::fs::read_to_string(dir.join("00000001.log")).expect("segment");
    let line_len = seg.lines().next().map_or(300, |l| l.len() + 1);
    let batch = ((appends as f64 / syncs as f64).round() as usize).clamp(1, WRITERS);

    // Raw batches of the same size, same record length, same directory.
    let raw_path = tmp.path().join("raw.log");
    let mut f = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&raw_path)
        .expect("raw");
    let record = vec![b'x'; line_len];
    let mut buf = Vec::with_capacity(line_len * batch);
    let start = Instant::now();
    let mut raw = 0u64;
    while start.elapsed() < run_for {
        buf.clear();
        for _ in 0..batch {
            buf.extend_from_slice(&record);
        }
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        raw += batch as u64;
    }
    let raw_rate = raw as f64 / start.elapsed().as_secs_f64();
    println!(
        "audit group-commit {WRITERS} writers: {group_rate:.0} durable appends/s (mean batch ~{batch}); raw fdatasync batches of {batch} x {line_len} B: {raw_rate:.0} records/s; ratio {:.2} (goal >= 0.8)",
        group_rate / raw_rate
    );
}
