//! Durable audit appends with group commit, against raw fdatasync batches (plain `fn main`).
//!
//! 32 writer threads each append `Durability::Sync` records in a loop: each append returns only
//! once its record is fdatasync'd, and the writer thread makes all records that arrived together
//! durable with one fdatasync (group commit). The baseline, in the same run and the same
//! directory, writes batches of the same mean size of records of the same length with plain
//! `write` + `fdatasync`, in slices interleaved with the group-commit ones. Goal: ≥ 0.8× the raw
//! batches. The baseline runs at the priority the log's sync thread gives itself (nice −10
//! where it may), so neither side is favoured by the scheduler. The directory is under the target
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
        )
        .into(),
        action: "call".into(),
        resource: "localhost://echo/ping".into(),
        decision: Decision::Allowed,
        reason: "read via echo".into(),
        token: Some("0123456789abcdef0123456789abcdef".into()),
    }
}

fn main() {
    let quick = std::env::var_os("ELASTOS_BENCH_QUICK").is_some();
    // Interleaved slices: the disk's speed drifts over seconds (fdatasync has been seen at
    // 0.2 ms and at 2.5 ms minutes apart), so each group-commit slice is followed at once by a
    // raw slice with the batch size that slice reached, and the totals are compared.
    let (rounds, slice) = if quick {
        (2, Duration::from_millis(200))
    } else {
        (10, Duration::from_millis(500))
    };
    let base = std::env::var_os("CARGO_TARGET_DIR")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| std::path::PathBuf::from("target"));
    std::fs::create_dir_all(&base).expect("target dir");
    let tmp = tempfile::tempdir_in(&base).expect("bench dir");

    let key = Arc::new(NodeKey::from_seed(&[3; 32]));
    let dir = tmp.path().join("audit");
    let log = Arc::new(AuditLog::open(&dir, key, AuditOptions::default()).expect("open"));
    // One record line, as written, to size the baseline's records.
    log.append(event(0), Durability::Sync).expect("append");
    let seg = std::fs::read_to_string(dir.join("00000001.log")).expect("segment");
    let line_len = seg.lines().last().map_or(300, |l| l.len() + 1);
    let record = vec![b'x'; line_len];
    let mut raw_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(tmp.path().join("raw.log"))
        .expect("raw");

    let (mut group_n, mut group_t, mut raw_n, mut raw_t) = (0u64, 0f64, 0u64, 0f64);
    let (mut syncs_total, mut batch_sum) = (0u64, 0usize);
    for _ in 0..rounds {
        let (appends, syncs, took) = group_slice(&log, slice);
        group_n += appends;
        group_t += took;
        syncs_total += syncs;
        let batch = ((appends as f64 / syncs.max(1) as f64).round() as usize).clamp(1, WRITERS);
        batch_sum += batch;
        // On a thread at the priority the log's sync thread takes (it raises its own when it
        // may), so both sides' fdatasyncs compete for the CPU alike.
        let (records, took) = std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: setpriority on this thread's own id, integer arguments only.
                unsafe {
                    let tid = nix::libc::syscall(nix::libc::SYS_gettid) as nix::libc::id_t;
                    nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, -10);
                }
                raw_slice(&mut raw_file, &record, batch, slice)
            })
            .join()
            .expect("raw slice")
        });
        raw_n += records;
        raw_t += took;
    }
    log.close().expect("close");
    let group_rate = group_n as f64 / group_t;
    let raw_rate = raw_n as f64 / raw_t;
    println!(
        "audit group-commit {WRITERS} writers: {group_rate:.0} durable appends/s ({syncs_total} fdatasyncs, mean batch ~{}); raw fdatasync batches of the same size x {line_len} B: {raw_rate:.0} records/s; ratio {:.2} (goal >= 0.8); {rounds} interleaved slices of {} ms each",
        batch_sum / rounds,
        group_rate / raw_rate,
        slice.as_millis()
    );
}

/// 32 writers appending `Sync` records for `slice`: appends, fdatasyncs, seconds.
fn group_slice(log: &Arc<AuditLog>, slice: Duration) -> (u64, u64, f64) {
    let stop = Arc::new(AtomicBool::new(false));
    let count = Arc::new(AtomicU64::new(0));
    let syncs_before = log.syncs();
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
    std::thread::sleep(slice);
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().expect("writer");
    }
    let took = start.elapsed().as_secs_f64();
    (
        count.load(Ordering::Relaxed),
        log.syncs() - syncs_before,
        took,
    )
}

/// Plain `write` + `fdatasync` of `batch` records at a time for `slice`: records, seconds.
fn raw_slice(f: &mut std::fs::File, record: &[u8], batch: usize, slice: Duration) -> (u64, f64) {
    let mut buf = Vec::with_capacity(record.len() * batch);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < slice {
        buf.clear();
        for _ in 0..batch {
            buf.extend_from_slice(record);
        }
        f.write_all(&buf).expect("write");
        f.sync_data().expect("fdatasync");
        n += batch as u64;
    }
    (n, start.elapsed().as_secs_f64())
}
