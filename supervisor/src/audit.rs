//! The tamper-evident audit log: `$ELASTOS_HOME/audit/NNNNNNNN.log`, JSON Lines.
//!
//! - **Chain.** Every record carries `prev`, the hash of the record before it
//!   (SHA-256 of `elastos/audit-record/v1\0` ‖ that record's line), so editing, removing or
//!   reordering a record breaks every later link.
//! - **Checkpoints.** Once a second while records arrive (and at most every `checkpoint_every`
//!   records), at segment rotation, and at close, a `checkpoint` record signs the head it follows (`seq − 1`, `prev`) with
//!   the node key under `elastos/audit-checkpoint/v1\0`, and the `head` file (replaced
//!   atomically) holds the same signed head. Anyone with the node's DID can verify; truncating the
//!   log below the signed head, or rewriting it, is detected without the key.
//! - **Durability.** `Sync` records are written and fdatasync'd before `append` returns, and all
//!   `Sync` records that arrive together share one fdatasync (group commit). `Group` records are
//!   made durable within `group_commit` (10 ms) of their submission: they are collected in a
//!   buffer without waking the writer thread for each (the first of a batch wakes it), and are
//!   chained, in order, before any later `Sync` record. `strict` turns every record into `Sync`. If a write or sync fails, the bytes stay buffered, the log reports
//!   [`AuditError::Unavailable`] to every caller (who must deny), and each later append retries;
//!   nothing buffered is lost while the process lives.
//! - **Coalescing.** One actor's denials of one action beyond [`DENIALS_PER_WINDOW`] within a
//!   second are counted, not written: when the window ends one `audit.coalesced` record (still chained)
//!   carries the count and the last reason, so a capsule cannot fill the disk with denials.
//! - **Reserve.** The sync thread keeps at least [`RESERVE`] bytes (plus up to [`AHEAD`] more)
//!   allocated past the live segment's end (`fallocate` with `KEEP_SIZE`: the file's length is
//!   still its last record's end), and the writer spends that allowance as it chains records. When
//!   the disk fills, so that no more can be allocated, only the records that must never be lost
//!   for want of space ([`uses_reserve`]: denials, revocations, checkpoints and one
//!   `audit.disk-full` record; and the summaries of calls that already went ahead) are still
//!   admitted, from the reserve; every other record is refused
//!   with [`AuditError::Unavailable`] (so the grant or call it stood for is refused) until space
//!   returns, which the sync thread looks for once a second. A file system that cannot
//!   preallocate has no reserve, and says so in [`AuditLog::space`].
//! - **Recovery.** On open, a torn or unparsable tail of the last segment (never an acknowledged
//!   `Sync` record: those were synced whole) is cut off and a signed `recovered` record names the
//!   bytes dropped. A log shorter than its signed head refuses to open.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Seek, SeekFrom};
use std::os::fd::AsFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use ed25519_dalek::{Signature, VerifyingKey};
use elastos_schema::{domains, versions};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::borrow::Cow;

use crate::fsutil::{sync_dir, write_atomic};
use crate::identity::NodeKey;

/// Prefix of every record hash.
pub const RECORD_DOMAIN: &[u8] = b"elastos/audit-record/v1\0";
/// Denials one actor may write per second before the rest are counted.
pub const DENIALS_PER_WINDOW: u32 = 20;
const WINDOW: Duration = Duration::from_secs(1);
/// How long a record may go without a signed checkpoint after it.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);
const ZERO_HASH: [u8; 32] = [0; 32];

/// Bytes kept allocated past the log's end for [`uses_reserve`] records once the disk is full:
/// about 12,000 denials or revocations.
pub const RESERVE: u64 = 4 << 20;
/// Allocated ahead of the reserve, in steps of about this much, so that `fallocate` runs once
/// per megabyte or so of records, and a burst chained between two writes does not reach into
/// the reserve before the disk is known to be full.
pub const AHEAD: u64 = 2 << 20;
/// How often the sync thread tries again to allocate while the disk is full.
const FULL_RETRY: Duration = Duration::from_secs(1);

/// Actions whose records are written from the reserve when the disk is full, besides every
/// denial: what narrows authority (a stolen token must never stay valid because the disk is
/// full), what keeps the log verifiable (checkpoints, recovery), the disk-full notice itself,
/// and the supervisor's clean stop.
pub const RESERVE_ACTIONS: &[&str] = &[
    "key.retire",
    "key.adopt",
    "token.revoke",
    "token.revoke-all",
    "trust.rm",
    "checkpoint",
    "recovered",
    "audit.disk-full",
    "audit.prune",
    "supervisor.stop",
];

/// Whether `ev` may be written from the reserve once the disk is full.
pub fn uses_reserve(ev: &Event) -> bool {
    ev.decision == Decision::Denied || RESERVE_ACTIONS.contains(&&*ev.action)
}

/// The log's disk space, shared by the writer (which spends the allowance as it chains records)
/// and the sync thread (which allocates it).
#[derive(Default)]
struct Space {
    /// The log's directory, whose file system is asked for its free space.
    dir: PathBuf,
    /// Bytes allocated past the live segment's written end, less the bytes chained but not yet
    /// written. Signed: a burst may overdraw it for the moment before the disk is known full.
    budget: AtomicI64,
    /// The disk is full: the last allocation failed, or less than [`AHEAD`] is free. Only
    /// reserve records are admitted.
    full: AtomicBool,
    /// The file system cannot preallocate (or a test said so): nothing is counted, no reserve.
    unbounded: AtomicBool,
}

/// Whether the file system holding `dir` has less than [`AHEAD`] free for this process: the
/// disk is as good as full, and grants must stop before the log's own allocation fails.
fn low_on_space(dir: &Path) -> bool {
    nix::sys::statvfs::statvfs(dir)
        .is_ok_and(|s| s.blocks_available().saturating_mul(s.fragment_size()) < AHEAD)
}

/// What [`AuditLog::space`] reports, for `status` and `doctor`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SpaceReport {
    /// The disk is full: only denials, revocations and checkpoints are recorded.
    pub disk_full: bool,
    /// Bytes allocated for the log and not yet spent; `None` where the file system cannot
    /// preallocate (then there is no reserve).
    pub reserve_bytes: Option<u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit unavailable: the audit log cannot be made durable ({0}); every call is denied until it can (check free space in $ELASTOS_HOME)")]
    Unavailable(String),
    #[error("audit log {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("audit record #{seq} in {file}: {why}")]
    Bad { seq: u64, file: String, why: String },
    #[error("audit log: {0}")]
    Corrupt(String),
    #[error("the audit log is closed")]
    Closed,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io {
        path: path.to_path_buf(),
        source,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Decision {
    Allowed,
    Denied,
    Info,
}

impl std::fmt::Display for Decision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Decision::Allowed => "allowed",
            Decision::Denied => "denied",
            Decision::Info => "info",
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    Sync,
    Group,
}

/// What to audit. Who acts and what they do are mostly the same few names, shared rather than
/// copied for every call.
#[derive(Debug, Clone)]
pub struct Event {
    pub actor: Arc<str>,
    pub action: Cow<'static, str>,
    pub resource: String,
    pub decision: Decision,
    pub reason: String,
    pub token: Option<String>,
}

/// One line of the log. Field order is the line's key order.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Record {
    pub v: u32,
    pub seq: u64,
    pub time: String,
    pub actor: String,
    pub action: String,
    pub resource: String,
    pub decision: Decision,
    pub reason: String,
    pub token: Option<String>,
    pub prev: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sig: Option<String>,
}

impl Record {
    pub fn time_system(&self) -> Option<SystemTime> {
        humantime::parse_rfc3339_weak(&self.time).ok()
    }
}

/// Where an appended record landed. `seq` 0: a denial counted into a coalesced record.
#[derive(Debug, Clone, Copy)]
pub struct Receipt {
    pub seq: u64,
    pub hash: [u8; 32],
}

#[derive(Debug, Clone)]
pub struct AuditOptions {
    pub strict: bool,
    pub group_commit: Duration,
    pub segment_bytes: u64,
    pub checkpoint_every: u64,
    /// Buffered Group records the writer chains at a time under a steady stream.
    pub chain_every: usize,
    /// Fault injection for tests: while true, every sync fails as if the disk were full.
    pub fail_sync: Option<Arc<AtomicBool>>,
    /// Fault injection for tests: while true, every allocation fails with ENOSPC, as on a full
    /// disk.
    pub fail_alloc: Option<Arc<AtomicBool>>,
    /// One record for every allowed call (`[audit] per_call`), instead of an exact record for a
    /// token's first use and one summary per interval of the calls alike that follow it.
    pub per_call: bool,
    /// The token authority's latest state stamp, which checkpoints and the head record.
    pub state: Option<StateCell>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            strict: false,
            group_commit: Duration::from_millis(10),
            segment_bytes: 64 << 20,
            checkpoint_every: 100_000,
            chain_every: CHAIN_EVERY,
            fail_sync: None,
            fail_alloc: None,
            per_call: false,
            state: None,
        }
    }
}

type Done = Box<dyn FnOnce(Result<Receipt, AuditError>) + Send>;

enum Cmd {
    Append(Event, Durability, Done),
    /// The group buffer went from empty to not (`false`): make it durable within
    /// `group_commit`. Or it holds another [`CHAIN_EVERY`] records (`true`): chain them now.
    Kick(bool),
    Close(mpsc::Sender<Result<(), AuditError>>),
    /// Hands the log over to a new node key (see [`AuditLog::rekey`]).
    Rekey(Arc<NodeKey>, Done),
    /// From the sync thread: the job handed to it is durable, or failed (its bytes come back,
    /// to be written again before anything newer).
    /// `n` jobs, written together.
    Synced(usize, SyncResult),
}

/// A job's outcome; on failure its bytes and head, to be tried again.
type SyncResult = Result<(), (AuditError, Vec<u8>, Option<Vec<u8>>)>;

/// Bytes for the sync thread to append and fdatasync, with whom to tell and, for a checkpoint,
/// the head file to replace once they are durable.
struct Job {
    bytes: Vec<u8>,
    waiting: Vec<(Done, Receipt)>,
    head: Option<Vec<u8>>,
    /// The first job after the writer took back the bytes of a failed one. Until it comes, the
    /// sync thread fails every job (they follow bytes that are not on disk yet).
    resume: bool,
    /// The seq of the last record in `bytes` (0: none).
    last_seq: u64,
}

/// Group records that may wait for the writer thread before the log reports itself unavailable
/// (and calls are denied): a flood of allowed calls costs bounded memory, never an unbounded
/// backlog of unaudited work.
pub const MAX_BUFFERED: usize = 100_000;

/// Under a steady stream the writer chains buffered records this many at a time, not all of a
/// group commit interval's worth at once: on a busy core, chaining a thousand records in one go
/// holds the CPU for a millisecond, which every call in flight would wait out.
const CHAIN_EVERY: usize = 16;

/// What waits in the group buffer.
enum Grouped {
    Record(Event, Done),
    /// An allowed call (with the caller's call id), which may be summed up with others like it.
    Call(Event, u64),
}

/// `Group` records waiting for the writer thread, in submission order.
type GroupBuffer = Arc<Mutex<Vec<Grouped>>>;

/// Who called what with which token: calls alike are summed up in one record per interval.
type SummaryKey = (Arc<str>, Option<String>, Cow<'static, str>, String);

/// Allowed calls alike, within one group-commit interval.
struct Summary {
    reason: String,
    count: u64,
    first: SystemTime,
    last: SystemTime,
    first_id: u64,
    last_id: u64,
}

/// Kinds of calls summed up at once; more and the interval's summaries are written early.
const MAX_SUMMARIES: usize = 10_000;
/// Tokens whose first use was recorded exactly; beyond this the set starts again (a first use
/// is then recorded exactly once more, which costs a record and loses nothing).
const MAX_SEEN_TOKENS: usize = 100_000;

/// The log's writer handle: cheap to share; one writer thread does the I/O.
pub struct AuditLog {
    tx: Mutex<Option<mpsc::Sender<Cmd>>>,
    group: GroupBuffer,
    /// How many records `group` holds, kept under its lock, read without it: the per-call
    /// availability check takes no lock.
    buffered: Arc<AtomicUsize>,
    chain_every: usize,
    available: Arc<AtomicBool>,
    space: Arc<Space>,
    syncs: Arc<AtomicU64>,
    durable: Arc<AtomicU64>,
    thread: Mutex<Option<JoinHandle<()>>>,
}

struct Coalesce {
    start: Instant,
    n: u32,
    suppressed: u64,
    last_action: String,
    last_resource: String,
    last_reason: String,
}

/// The files, owned by the sync thread (`elastos-audit-sync`) once the log is open: it appends
/// and fdatasyncs one job while the writer thread chains the next batch, so a batch's
/// serialisation and its waiters' wake-ups overlap the previous batch's fdatasync (a pipeline
/// of two stages) instead of adding to it.
struct Disk {
    dir: PathBuf,
    segment: u32,
    file: File,
    synced_len: u64,
    segment_bytes: u64,
    syncs: Arc<AtomicU64>,
    fail_sync: Option<Arc<AtomicBool>>,
    /// Set here, before any waiter hears the outcome, so that a denied caller sees the log
    /// unavailable at once.
    available: Arc<AtomicBool>,
    /// Where the current segment's allocated blocks end (at least its length).
    allocated: u64,
    space: Arc<Space>,
    fail_alloc: Option<Arc<AtomicBool>>,
    /// While the disk is full: when to try allocating again.
    retry_alloc: Option<Instant>,
    /// The last allocation the reserve needed failed.
    alloc_failed: bool,
    /// The highest seq written and fdatasync'd.
    durable: Arc<AtomicU64>,
}

struct Writer {
    key: Arc<NodeKey>,
    opts: AuditOptions,
    /// Where jobs go: the sync thread, or (while opening, before it exists) done in place.
    disk: DiskHandle,
    /// Jobs with the sync thread, not reported yet. More may queue behind one in progress; the
    /// sync thread writes all that wait with one fdatasync.
    in_flight: usize,
    /// Bytes (and head) of failed jobs, in order, while later jobs are still out.
    requeue: Vec<u8>,
    requeue_head: Option<Vec<u8>>,
    failing: bool,
    resume_next: bool,
    /// After a failed write or sync: no retry before this (not a tight loop on a full disk).
    backoff_until: Option<Instant>,
    unsynced: Vec<u8>,
    /// Callbacks waiting for the bytes in `unsynced` to be durable.
    waiting: Vec<(Done, Receipt)>,
    /// The signed head to write once the checkpoint record in `unsynced` is durable.
    pending_head: Option<Vec<u8>>,
    seq: u64,
    prev: [u8; 32],
    since_checkpoint: u64,
    last_append: Instant,
    last_checkpoint: Instant,
    /// When the oldest record not yet durable was submitted: the group commit deadline runs
    /// from here.
    oldest_unsynced: Option<Instant>,
    group: GroupBuffer,
    /// How many records `group` holds, kept under its lock, read without it: the per-call
    /// availability check takes no lock.
    buffered: Arc<AtomicUsize>,
    available: Arc<AtomicBool>,
    coalesce: HashMap<String, Coalesce>,
    space: Arc<Space>,
    /// The `audit.disk-full` record of this episode was written.
    told_full: bool,
    summaries: HashMap<SummaryKey, Summary>,
    /// When the first call of the summaries waiting was summed up: they are written within
    /// `group_commit` of it.
    summary_since: Option<Instant>,
    seen_tokens: std::collections::HashSet<String>,
}

enum DiskHandle {
    Inline(Box<Disk>),
    Thread {
        jobs: Option<mpsc::Sender<Job>>,
        thread: Option<JoinHandle<()>>,
    },
}

fn segment_name(n: u32) -> String {
    format!("{n:08}.log")
}

fn segments(dir: &Path) -> Result<Vec<(u32, PathBuf)>, AuditError> {
    let mut out = Vec::new();
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(io_err(dir)(e)),
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(n) = name
            .strip_suffix(".log")
            .and_then(|n| n.parse::<u32>().ok())
        {
            if name.len() == 12 {
                out.push((n, e.path()));
            }
        }
    }
    out.sort();
    Ok(out)
}

pub fn record_hash(line: &[u8]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(RECORD_DOMAIN);
    h.update(line);
    h.finalize().into()
}

fn head_message(seq: u64, hash: &[u8; 32]) -> Vec<u8> {
    let mut m = Vec::with_capacity(40);
    m.extend_from_slice(&seq.to_le_bytes());
    m.extend_from_slice(hash);
    m
}

/// The `head` file: the last signed (seq, hash), and whether the writer stopped cleanly there.
/// Format 1 (no `clean`, signed like a checkpoint) is still read, as an unclean head.
#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Head {
    format: u32,
    seq: u64,
    hash: String,
    sig: String,
    time: String,
    #[serde(default)]
    clean: bool,
    /// The token authority's state as the writer last saw it: `VERSION:DIGEST`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    state: Option<String>,
}

/// The token authority's state, as the head and checkpoints record it: its version and digest
/// (`authority::StateStamp`).
pub type StateStamp = (u64, [u8; 32]);
/// Where the authority publishes its latest stamp for the log.
pub type StateCell = Arc<Mutex<Option<StateStamp>>>;

fn stamp_text(s: &StateStamp) -> String {
    format!("{}:{}", s.0, hex::encode(s.1))
}

fn stamp_parse(s: &str) -> Option<StateStamp> {
    let (v, d) = s.split_once(':')?;
    Some((v.parse().ok()?, parse_hash(d)?))
}

fn stamp_bytes(s: &StateStamp) -> Vec<u8> {
    let mut m = s.0.to_le_bytes().to_vec();
    m.extend_from_slice(&s.1);
    m
}

/// The head format this elastos writes.
const HEAD_FORMAT: u32 = 2;

fn head_v2_message(seq: u64, hash: &[u8; 32], clean: bool) -> Vec<u8> {
    let mut m = head_message(seq, hash);
    m.push(u8::from(clean));
    m
}

impl Head {
    fn new(
        key: &NodeKey,
        seq: u64,
        hash: &[u8; 32],
        clean: bool,
        state: Option<StateStamp>,
    ) -> Head {
        let mut msg = head_v2_message(seq, hash, clean);
        if let Some(st) = &state {
            msg.extend_from_slice(&stamp_bytes(st));
        }
        let sig = key.sign(domains::AUDIT_HEAD, &msg);
        Head {
            format: HEAD_FORMAT,
            seq,
            hash: hex::encode(hash),
            sig: hex::encode(sig.to_bytes()),
            time: now_text(&mut [0u8; 40]).to_string(),
            clean,
            state: state.as_ref().map(stamp_text),
        }
    }

    /// The authority state this head records, once [`Head::check`] passed.
    fn state(&self) -> Option<StateStamp> {
        self.state.as_deref().and_then(stamp_parse)
    }

    /// The signed (hash, clean) if `public` signed this head; a clear error otherwise.
    fn check(&self, public: &VerifyingKey) -> Result<([u8; 32], bool), AuditError> {
        let hash = parse_hash(&self.hash)
            .ok_or_else(|| AuditError::Corrupt("the head file's hash is malformed".into()))?;
        let sig = parse_sig(&self.sig)
            .ok_or_else(|| AuditError::Corrupt("the head file's signature is malformed".into()))?;
        let (domain, msg, clean) = match self.format {
            1 => (domains::AUDIT_CHECKPOINT, head_message(self.seq, &hash), false),
            2 => {
                let mut msg = head_v2_message(self.seq, &hash, self.clean);
                if let Some(st) = &self.state {
                    let st = stamp_parse(st).ok_or_else(|| {
                        AuditError::Corrupt("the head file's state is malformed".into())
                    })?;
                    msg.extend_from_slice(&stamp_bytes(&st));
                }
                (domains::AUDIT_HEAD, msg, self.clean)
            }
            f => {
                return Err(AuditError::Corrupt(format!(
                    "the head file has format {f}, which this elastos does not know; use a newer elastos"
                )))
            }
        };
        if !crate::identity::verify(public, domain, &msg, &sig) {
            return Err(AuditError::Corrupt(
                "the head file's signature does not verify with this key: it was forged or edited, or the log belongs to another identity".into(),
            ));
        }
        Ok((hash, clean))
    }

    fn bytes(&self) -> Result<Vec<u8>, AuditError> {
        serde_json::to_vec_pretty(self).map_err(|e| AuditError::Corrupt(e.to_string()))
    }
}

/// What the authority last published, if it publishes.
fn stamp_now(cell: &Option<StateCell>) -> Option<StateStamp> {
    cell.as_ref()
        .and_then(|c| *c.lock().unwrap_or_else(|e| e.into_inner()))
}

/// The authority state the log's signed head records, once the head verifies with `public`.
/// `None`: no head, or one from before heads recorded it.
/// The newest of the head's and the last segment's signed checkpoints' (an old head file put
/// back with an old state file would otherwise vouch for it, while the log still holds the
/// newer checkpoints).
pub fn recorded_state(dir: &Path, public: &VerifyingKey) -> Result<Option<StateStamp>, AuditError> {
    let mut newest = match read_head(dir)? {
        Some(h) => {
            h.check(public)?;
            h.state()
        }
        None => None,
    };
    if let Some((_, path)) = segments(dir)?.last() {
        let f = File::open(path).map_err(io_err(path))?;
        let mut last: Option<(u64, [u8; 32])> = None;
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(io_err(path))?;
            let Ok(rec) = serde_json::from_slice::<Record>(&line) else {
                break;
            };
            if rec.action == "checkpoint" {
                if let (Some((s, h)), Some(st)) = (
                    &last,
                    rec.resource.strip_prefix("state:").and_then(stamp_parse),
                ) {
                    if signature_holds(public, &rec, *s, h) && newest.is_none_or(|n| st.0 > n.0) {
                        newest = Some(st);
                    }
                }
            }
            last = Some((rec.seq, record_hash(&line)));
        }
    }
    Ok(newest)
}

fn rekey_message(seq: u64, hash: &[u8; 32], action: &str, other: &str) -> Vec<u8> {
    let mut m = head_message(seq, hash);
    m.extend_from_slice(action.as_bytes());
    m.push(0);
    m.extend_from_slice(other.as_bytes());
    m
}

/// The longest resource a record keeps (a denied call's target may be up to a frame long).
pub const MAX_RESOURCE_FIELD: usize = 1024;
/// The longest reason a record keeps.
pub const MAX_REASON_FIELD: usize = 2048;
/// The longest actor, action or token reference a record keeps.
pub const MAX_SHORT_FIELD: usize = 256;

/// `s` whole when it is at most `max` bytes (or `whole`); else its first `max` bytes (at a
/// character boundary) and its full length and hash, so that a flood of huge fields costs a
/// bounded record each and the original can still be matched.
fn capped(s: &str, max: usize, whole: bool) -> Cow<'_, str> {
    if whole || s.len() <= max {
        return Cow::Borrowed(s);
    }
    let mut cut = max;
    while !s.is_char_boundary(cut) {
        cut -= 1;
    }
    let hash = Sha256::digest(s.as_bytes());
    Cow::Owned(format!(
        "{}…[{} bytes, sha256:{}]",
        &s[..cut],
        s.len(),
        hex::encode(&hash[..16])
    ))
}

/// Now, as a record's `time`, written into `buf`.
fn now_text(buf: &mut [u8; 40]) -> &str {
    use std::io::Write;
    let mut w = &mut buf[..];
    let _ = write!(w, "{}", humantime::format_rfc3339_micros(SystemTime::now()));
    let len = 40 - w.len();
    std::str::from_utf8(&buf[..len]).unwrap_or("")
}

/// A line as it is written: [`Record`]'s fields in its order, borrowed from the event, so a
/// record costs no copies on its way to the log. Serialised by hand ([`Line::write_json`]); the
/// derive is the reference the tests hold that to.
#[cfg_attr(test, derive(Serialize))]
struct Line<'a> {
    v: u32,
    seq: u64,
    time: &'a str,
    actor: &'a str,
    action: &'a str,
    resource: &'a str,
    decision: Decision,
    reason: &'a str,
    token: Option<&'a str>,
    prev: &'a str,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    count: Option<u64>,
    #[cfg_attr(test, serde(skip_serializing_if = "Option::is_none"))]
    sig: Option<&'a str>,
}

impl Line<'_> {
    /// Appends the line as JSON, byte for byte what `serde_json::to_writer` writes for it (a
    /// test holds the two together), but with strings that need no escape (nearly all) copied
    /// whole: serde_json looks at every byte of every string on its own, which was the largest
    /// cost of chaining a record.
    fn write_json(&self, out: &mut Vec<u8>) -> Result<(), serde_json::Error> {
        out.extend_from_slice(b"{\"v\":");
        serde_json::to_writer(&mut *out, &self.v)?;
        out.extend_from_slice(b",\"seq\":");
        serde_json::to_writer(&mut *out, &self.seq)?;
        for (key, value) in [
            (&b",\"time\":"[..], self.time),
            (b",\"actor\":", self.actor),
            (b",\"action\":", self.action),
            (b",\"resource\":", self.resource),
        ] {
            out.extend_from_slice(key);
            json_str(out, value)?;
        }
        out.extend_from_slice(b",\"decision\":");
        serde_json::to_writer(&mut *out, &self.decision)?;
        out.extend_from_slice(b",\"reason\":");
        json_str(out, self.reason)?;
        out.extend_from_slice(b",\"token\":");
        match self.token {
            Some(t) => json_str(out, t)?,
            None => out.extend_from_slice(b"null"),
        }
        out.extend_from_slice(b",\"prev\":");
        json_str(out, self.prev)?;
        if let Some(n) = self.count {
            out.extend_from_slice(b",\"count\":");
            serde_json::to_writer(&mut *out, &n)?;
        }
        if let Some(sig) = self.sig {
            out.extend_from_slice(b",\"sig\":");
            json_str(out, sig)?;
        }
        out.push(b'}');
        Ok(())
    }
}

/// `s` as a JSON string, as serde_json writes it: it escapes exactly the control characters,
/// `"` and `\`, so a string without them is its own contents between quotes.
fn json_str(out: &mut Vec<u8>, s: &str) -> Result<(), serde_json::Error> {
    // No early exit: a plain fold over the bytes is vectorised.
    let escape = s
        .bytes()
        .fold(false, |e, b| e | (b < 0x20) | (b == b'"') | (b == b'\\'));
    if escape {
        return serde_json::to_writer(out, s);
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
    Ok(())
}

/// A signature as the log writes it: 128 hex digits.
fn parse_sig(s: &str) -> Option<Signature> {
    hex::decode(s)
        .ok()
        .and_then(|b| <[u8; 64]>::try_from(b).ok())
        .map(|b| Signature::from_bytes(&b))
}

fn parse_hash(s: &str) -> Option<[u8; 32]> {
    hex::decode(s).ok().and_then(|b| b.try_into().ok())
}

impl AuditLog {
    pub fn open(dir: &Path, key: Arc<NodeKey>, opts: AuditOptions) -> Result<AuditLog, AuditError> {
        fs::create_dir_all(dir).map_err(io_err(dir))?;
        let segs = segments(dir)?;
        let (segment, path) = match segs.last() {
            Some((n, p)) => (*n, p.clone()),
            None => (1, dir.join(segment_name(1))),
        };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&path)
            .map_err(io_err(&path))?;
        // Find the last good record of the last segment; anything after it is a torn tail.
        let head = read_head(dir)?;
        let want = head.as_ref().map(|h| h.seq).filter(|s| *s > 0);
        let public = key.verifying_key();
        let scan = scan_tail(&file, &path, want, Some(&public))?;
        let (good_len, total_len) = (scan.good_len, scan.total_len);
        let (seq, prev) = match scan.last {
            Some((s, h)) => (s, h),
            None => match segs.len() {
                // An empty new segment follows a full one: continue its chain.
                n if n >= 2 => {
                    let (_, p) = &segs[n - 2];
                    let f = File::open(p).map_err(io_err(p))?;
                    scan_tail(&f, p, None, None)?.last.unwrap_or((0, ZERO_HASH))
                }
                _ => (0, ZERO_HASH),
            },
        };
        // What the head signed must be there, unchanged; what follows a clean stop's head was
        // not written by elastos; what follows an unclean one is adopted, in a signed record.
        let mut adopt = None;
        let mut reopen_clean = false;
        match &head {
            None if seq > 0 => {
                return Err(AuditError::Corrupt(format!(
                    "the log holds records up to #{seq} but its signed `head` file is missing: it was deleted, or the log was put here by hand; restore `head` from a backup, or move {} aside (keep it for investigation) to start a new log",
                    dir.display()
                )))
            }
            None => {}
            Some(h) => {
                let (hash, clean) = h.check(&public)?;
                if h.seq > seq {
                    return Err(AuditError::Corrupt(format!(
                        "the log ends at #{seq} but its signed head is #{}: records were removed; run `elastos audit verify` and keep the damaged log for investigation",
                        h.seq
                    )));
                }
                let found = match (h.seq, scan.at_want) {
                    (0, _) => Some(ZERO_HASH),
                    (_, Some(x)) => Some(x),
                    (s, None) => hash_in_segments(&segs, s)?,
                };
                // A head from before a prune may name a record the prune removed: the anchor
                // covers it.
                let pruned = found.is_none()
                    && read_anchor(dir)?.is_some_and(|a| h.seq <= a.seq);
                if found != Some(hash) && !pruned {
                    return Err(AuditError::Corrupt(format!(
                        "record #{} is not the record the signed head names: the log was rewritten; run `elastos audit verify` and keep the log for investigation",
                        h.seq
                    )));
                }
                // A clean stop whose last head could not be written (a full disk) still ends
                // in its signed checkpoint record.
                let signed = h.seq.max(scan.signed_through);
                if seq > signed {
                    if clean {
                        return Err(AuditError::Corrupt(format!(
                            "records #{}..#{seq} follow the last signature (#{signed}) after a clean stop: elastos did not write them; run `elastos audit verify`, and move {} aside (keep it for investigation) to start a new log",
                            signed + 1,
                            dir.display()
                        )));
                    }
                    adopt = Some((signed + 1, seq, signed));
                }
                reopen_clean = clean;
            }
        }
        // Whatever is cut is kept: moved to a quarantine file before the segment is cut.
        // A tail of zeros is empty space (blocks a crash left allocated but unwritten), not a
        // record: it is cut without a word. Anything else is kept.
        let zero_tail = total_len > good_len && zeros(&file, good_len, total_len);
        let quarantined = if total_len > good_len && !zero_tail {
            Some(quarantine(dir, &file, &path, seq, good_len, total_len)?)
        } else {
            None
        };
        if zero_tail {
            file.set_len(good_len).map_err(io_err(&path))?;
        }
        if head.is_none() {
            // A new log gets its head at once: a crash before the first checkpoint must not
            // leave records with no head at all.
            write_atomic(
                &dir.join("head"),
                &Head::new(&key, seq, &prev, false, stamp_now(&opts.state)).bytes()?,
                0o600,
            )
            .map_err(io_err(dir))?;
        } else if reopen_clean && adopt.is_none() && quarantined.is_none() {
            // Open again: until the next clean stop, a crash must read as one. Best effort (a
            // full disk keeps the old head, and what follows it is then signed in the log).
            let _ = write_atomic(
                &dir.join("head"),
                &Head::new(&key, seq, &prev, false, stamp_now(&opts.state)).bytes()?,
                0o600,
            );
        }
        let available = Arc::new(AtomicBool::new(true));
        let space = Arc::new(Space {
            dir: dir.to_path_buf(),
            ..Space::default()
        });
        // Whatever the log held when it opened is on disk.
        let durable = Arc::new(AtomicU64::new(0));
        let syncs = Arc::new(AtomicU64::new(0));
        let group: GroupBuffer = Arc::default();
        let buffered = Arc::new(AtomicUsize::new(0));
        let chain_every = opts.chain_every.max(2);
        let (notifier, notified) = mpsc::channel::<Vec<(Done, Receipt)>>();
        std::thread::Builder::new()
            .name("elastos-audit-ack".into())
            .spawn(move || {
                for batch in notified {
                    for (done, receipt) in batch {
                        done(Ok(receipt));
                    }
                }
            })
            .map_err(io_err(dir))?;
        if quarantined.is_some() {
            file.set_len(good_len).map_err(io_err(&path))?;
        }
        // Blocks an earlier run allocated past the end are still there (a crash leaves them).
        let allocated = file
            .metadata()
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)
            .map_err(io_err(&path))?
            .max(good_len);
        space.budget.store(
            i64::try_from(allocated - good_len).unwrap_or(i64::MAX),
            Ordering::Relaxed,
        );
        let mut disk = Disk {
            dir: dir.to_path_buf(),
            segment,
            file,
            synced_len: good_len,
            segment_bytes: opts.segment_bytes,
            syncs: syncs.clone(),
            fail_sync: opts.fail_sync.clone(),
            available: available.clone(),
            allocated,
            space: space.clone(),
            fail_alloc: opts.fail_alloc.clone(),
            retry_alloc: None,
            alloc_failed: false,
            durable: durable.clone(),
        };
        disk.check_space();
        let mut w = Writer {
            key,
            opts,
            disk: DiskHandle::Inline(Box::new(disk)),
            in_flight: 0,
            requeue: Vec::new(),
            requeue_head: None,
            failing: false,
            resume_next: false,
            backoff_until: None,
            unsynced: Vec::new(),
            waiting: Vec::new(),
            pending_head: None,
            seq,
            prev,
            since_checkpoint: 0,
            last_append: Instant::now(),
            last_checkpoint: Instant::now(),
            oldest_unsynced: None,
            group: group.clone(),
            buffered: buffered.clone(),
            available: available.clone(),
            coalesce: HashMap::new(),
            space: space.clone(),
            told_full: false,
            summaries: HashMap::new(),
            summary_since: None,
            seen_tokens: std::collections::HashSet::new(),
        };
        let mut said = Vec::new();
        if let Some(q) = &quarantined {
            said.push(q.clone());
        }
        if let Some((from, to, head_seq)) = adopt {
            said.push(format!(
                "adopted records #{from}..#{to}, written after the last signed head (#{head_seq}) before an unclean stop"
            ));
        }
        if !said.is_empty() {
            let reason = format!("recovered after an unclean stop: {}", said.join("; "));
            let mut msg = head_message(seq, &prev);
            msg.extend_from_slice(reason.as_bytes());
            let sig = w.key.sign(domains::AUDIT_RECOVERED, &msg);
            w.push_record(
                Event {
                    actor: "supervisor".into(),
                    action: "recovered".into(),
                    resource: String::new(),
                    decision: Decision::Info,
                    reason,
                    token: None,
                },
                None,
                Some(hex::encode(sig.to_bytes())),
                false,
            )
            .map_err(|e| AuditError::Corrupt(e.to_string()))?;
            // In place: the sync thread does not exist yet.
            w.hand_off();
            if !w.unsynced.is_empty() {
                return Err(AuditError::Unavailable(format!(
                    "the recovery record could not be written to {}",
                    path.display()
                )));
            }
        }
        let (tx, rx) = mpsc::channel();
        // From here the files belong to the sync thread.
        let DiskHandle::Inline(disk) = std::mem::replace(
            &mut w.disk,
            DiskHandle::Thread {
                jobs: None,
                thread: None,
            },
        ) else {
            unreachable!("the writer starts with its disk in place")
        };
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
        let back = tx.clone();
        let sync_thread = std::thread::Builder::new()
            .name("elastos-audit-sync".into())
            .spawn(move || disk.serve(jobs_rx, back, notifier))
            .map_err(io_err(dir))?;
        w.disk = DiskHandle::Thread {
            jobs: Some(jobs_tx),
            thread: Some(sync_thread),
        };
        let thread = std::thread::Builder::new()
            .name("elastos-audit".into())
            .spawn(move || w.run(rx))
            .map_err(io_err(dir))?;
        Ok(AuditLog {
            tx: Mutex::new(Some(tx)),
            group,
            buffered,
            chain_every,
            available,
            space,
            syncs,
            durable,
            thread: Mutex::new(Some(thread)),
        })
    }

    /// How many fdatasyncs the log has made (group commit shares one among many records).
    pub fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// The highest seq written by this log and fdatasync'd since it opened (0: none yet).
    pub fn durable_seq(&self) -> u64 {
        self.durable.load(Ordering::Acquire)
    }

    /// Whether the log takes every kind of record: the last write or sync succeeded, the disk
    /// is not full, and the writer keeps up (fewer than [`MAX_BUFFERED`] records wait for it).
    /// Callers deny while it does not.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
            && !self.space.full.load(Ordering::Relaxed)
            && self.buffered.load(Ordering::Relaxed) < MAX_BUFFERED
    }

    /// The log's disk space: whether the disk is full, and how much is allocated and unspent.
    pub fn space(&self) -> SpaceReport {
        let unbounded = self.space.unbounded.load(Ordering::Relaxed);
        SpaceReport {
            disk_full: self.space.full.load(Ordering::Relaxed),
            reserve_bytes: (!unbounded)
                .then(|| u64::try_from(self.space.budget.load(Ordering::Relaxed)).unwrap_or(0)),
        }
    }

    /// Appends without blocking; `done` runs on a thread of the log once the record is durable
    /// (Sync) or chained (Group, within `group_commit`).
    pub fn submit(
        &self,
        ev: Event,
        d: Durability,
        done: impl FnOnce(Result<Receipt, AuditError>) + Send + 'static,
    ) {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if d == Durability::Group {
            // Under the `tx` lock: a record buffered here is seen by the `Close` that `close`
            // sends after taking `tx`.
            let Some(tx) = guard.as_ref() else {
                drop(guard);
                return done(Err(AuditError::Closed));
            };
            self.buffer(tx, Grouped::Record(ev, Box::new(done)));
            return;
        }
        let tx = guard.clone();
        drop(guard);
        match tx {
            Some(tx) => {
                if let Err(mpsc::SendError(Cmd::Append(_, _, done))) =
                    tx.send(Cmd::Append(ev, d, Box::new(done)))
                {
                    done(Err(AuditError::Closed));
                }
            }
            None => done(Err(AuditError::Closed)),
        }
    }

    /// An allowed call's record, as a `Group` record but with no one to tell: unless the log
    /// was opened `per_call`, the first call with a token is recorded exactly and the calls
    /// alike that follow (same caller, token, action and resource) are summed up in one record
    /// per group-commit interval, with their count, first and last time and call ids.
    pub fn submit_call(&self, ev: Event, call_id: u64) {
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(tx) = guard.as_ref() {
            self.buffer(tx, Grouped::Call(ev, call_id));
        }
    }

    /// Adds to the group buffer, under the `tx` lock (so a `Close` sent after sees it), and
    /// wakes the writer only as the buffer starts or fills another batch.
    fn buffer(&self, tx: &mpsc::Sender<Cmd>, item: Grouped) {
        let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
        group.push(item);
        self.buffered.store(group.len(), Ordering::Relaxed);
        let n = group.len();
        drop(group);
        if n == 1 {
            let _ = tx.send(Cmd::Kick(false));
        } else if n.is_multiple_of(self.chain_every) {
            let _ = tx.send(Cmd::Kick(true));
        }
    }

    /// Appends and waits: for durability with `Sync`, for acceptance with `Group`.
    pub fn append(&self, ev: Event, d: Durability) -> Result<Receipt, AuditError> {
        let (tx, rx) = mpsc::channel();
        self.submit(ev, d, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(AuditError::Closed))
    }

    /// Hands the log over to `new` as the node's key: a `key.retire` record signed by the old
    /// key names the new one, a `key.adopt` record signed by the new key names the old one,
    /// and a checkpoint and head signed by the new key follow; returns once all are durable.
    /// From here the log is signed by `new`, and `verify` follows the chain from the first key.
    pub fn rekey(&self, new: Arc<NodeKey>) -> Result<(), AuditError> {
        let (tx, rx) = mpsc::channel();
        let done: Done = Box::new(move |r: Result<Receipt, AuditError>| {
            let _ = tx.send(r.map(|_| ()));
        });
        let guard = self.tx.lock().unwrap_or_else(|e| e.into_inner());
        match guard.as_ref() {
            Some(t) => {
                if let Err(mpsc::SendError(Cmd::Rekey(_, done))) = t.send(Cmd::Rekey(new, done)) {
                    done(Err(AuditError::Closed));
                }
            }
            None => done(Err(AuditError::Closed)),
        }
        drop(guard);
        rx.recv().unwrap_or(Err(AuditError::Closed))
    }

    /// Removes the whole segments of `dir` (this log's directory) whose records all come
    /// before `before`, never the live one: first an `audit.prune` record (from the reserve, so
    /// a full disk can be pruned) says what goes, durably; then a signed `anchor` (by `key`,
    /// the node's) names the last record removed, its hash and the key in force there, so the
    /// rest still verifies; then the files go. An anchor kept for `verify --expect` that points
    /// into what was removed no longer matches anything.
    pub fn prune(
        &self,
        dir: &Path,
        before: u64,
        actor: &str,
        key: &NodeKey,
    ) -> Result<Pruned, AuditError> {
        let segs = segments(dir)?;
        let mut cut = Vec::new();
        let mut first = None;
        let mut last = None;
        let mut bytes = 0;
        for (_, p) in segs.iter().take(segs.len().saturating_sub(1)) {
            let f = File::open(p).map_err(io_err(p))?;
            let scan = scan_tail(&f, p, None, None)?;
            match scan.last {
                Some((s, h)) if s < before => {
                    if first.is_none() {
                        let mut line = Vec::new();
                        BufReader::new(File::open(p).map_err(io_err(p))?)
                            .read_until(b'\n', &mut line)
                            .map_err(io_err(p))?;
                        first = serde_json::from_slice::<Record>(line.trim_ascii_end())
                            .ok()
                            .map(|r| r.seq);
                    }
                    cut.push(p.clone());
                    last = Some((s, h));
                    bytes += scan.total_len;
                }
                _ => break,
            }
        }
        let (Some((seq, hash)), Some(first)) = (last, first) else {
            return Ok(Pruned {
                first: 0,
                last: 0,
                segments: 0,
                bytes: 0,
            });
        };
        // The key in force at `seq`: the anchor's (or the first) key, changed by every key
        // change up to there.
        let anchor = read_anchor(dir)?;
        let mut did = crate::identity::did_from_public(
            first_key(dir, &key.verifying_key(), anchor.as_ref())?.as_bytes(),
        );
        for (at, _, new) in key_changes(dir)? {
            if at <= seq {
                did = new;
            }
        }
        self.append(
            Event {
                actor: actor.into(),
                action: "audit.prune".into(),
                resource: format!("#{first}..#{seq}"),
                decision: Decision::Info,
                reason: format!(
                    "records #{first}..#{seq} ({} segment(s), {bytes} bytes) removed; the log now begins at #{}, anchored by `anchor`",
                    cut.len(),
                    seq + 1
                ),
                token: None,
            },
            Durability::Sync,
        )?;
        let sig = key.sign(domains::AUDIT_ANCHOR, &anchor_message(seq, &hash, &did));
        let anchor = Anchor {
            format: 1,
            seq,
            hash: hex::encode(hash),
            did,
            signer: key.did(),
            sig: hex::encode(sig.to_bytes()),
            time: now_text(&mut [0u8; 40]).to_string(),
        };
        let text =
            serde_json::to_vec_pretty(&anchor).map_err(|e| AuditError::Corrupt(e.to_string()))?;
        write_atomic(&dir.join("anchor"), &text, 0o600).map_err(io_err(dir))?;
        for p in &cut {
            fs::remove_file(p).map_err(io_err(p))?;
        }
        sync_dir(dir).map_err(io_err(dir))?;
        Ok(Pruned {
            first,
            last: seq,
            segments: cut.len(),
            bytes,
        })
    }

    /// Writes a final checkpoint and the head, syncs, and stops the writer.
    pub fn close(&self) -> Result<(), AuditError> {
        let tx = self.tx.lock().unwrap_or_else(|e| e.into_inner()).take();
        let Some(tx) = tx else { return Ok(()) };
        let (rtx, rrx) = mpsc::channel();
        let _ = tx.send(Cmd::Close(rtx));
        let r = rrx.recv().unwrap_or(Err(AuditError::Closed));
        if let Some(t) = self.thread.lock().unwrap_or_else(|e| e.into_inner()).take() {
            let _ = t.join();
        }
        r
    }
}

impl Drop for AuditLog {
    fn drop(&mut self) {
        let _ = self.close();
    }
}

/// What [`scan_tail`] found in a segment.
struct Scan {
    /// The length up to the end of its last good line.
    good_len: u64,
    /// That line's seq and hash.
    last: Option<(u64, [u8; 32])>,
    total_len: u64,
    /// The hash of the record asked for, if it is in this segment's good part.
    at_want: Option<[u8; 32]>,
    /// The last record after `want` that is a checkpoint or recovery record whose signature
    /// verifies with the key given (it covers itself and every record before it).
    signed_through: u64,
}

/// Reads a segment up to its last good record (well formed, of this version, chained to the
/// one before), noting the hash of record `want` on the way, and (with `public`) which signed
/// records follow it.
fn scan_tail(
    file: &File,
    path: &Path,
    want: Option<u64>,
    public: Option<&VerifyingKey>,
) -> Result<Scan, AuditError> {
    let total = file.metadata().map_err(io_err(path))?.len();
    let mut reader = BufReader::new(file.try_clone().map_err(io_err(path))?);
    let mut good = 0u64;
    let mut last: Option<(u64, [u8; 32])> = None;
    let mut at_want = None;
    let mut signed_through = 0;
    let mut line = Vec::new();
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).map_err(io_err(path))?;
        if n == 0 || line.last() != Some(&b'\n') {
            break;
        }
        let body = &line[..line.len() - 1];
        let Ok(rec) = serde_json::from_slice::<Record>(body) else {
            break;
        };
        let chained = match &last {
            Some((s, h)) => rec.seq == s + 1 && parse_hash(&rec.prev) == Some(*h),
            None => true,
        };
        if !chained || rec.v != versions::AUDIT {
            break;
        }
        let hash = record_hash(body);
        if want == Some(rec.seq) {
            at_want = Some(hash);
        }
        if let (Some(pk), Some((s, h))) = (public, &last) {
            if rec.seq > want.unwrap_or(0) && signature_holds(pk, &rec, *s, h) {
                signed_through = rec.seq;
            }
        }
        last = Some((rec.seq, hash));
        good += n as u64;
    }
    Ok(Scan {
        good_len: good,
        last,
        total_len: total,
        at_want,
        signed_through,
    })
}

/// Whether `rec` is a checkpoint or recovery record whose signature over the record before it
/// (`seq`, `hash`) verifies with `public`.
fn signature_holds(public: &VerifyingKey, rec: &Record, seq: u64, hash: &[u8; 32]) -> bool {
    if !matches!(rec.action.as_str(), "checkpoint" | "recovered") {
        return false;
    }
    let (Some(sig), Some((domain, msg))) = (
        rec.sig.as_deref().and_then(parse_sig),
        signed_message(rec, seq, hash),
    ) else {
        return false;
    };
    crate::identity::verify(public, domain, &msg, &sig)
}

/// What a signed record's `sig` covers, given the record before it (`seq`, `hash`): the
/// domain and the message. `None` for an action that is never signed.
fn signed_message(rec: &Record, seq: u64, hash: &[u8; 32]) -> Option<(&'static [u8], Vec<u8>)> {
    let mut msg = head_message(seq, hash);
    let domain = match rec.action.as_str() {
        "checkpoint" => {
            msg.extend_from_slice(rec.resource.as_bytes());
            domains::AUDIT_CHECKPOINT
        }
        "recovered" => {
            msg.extend_from_slice(rec.reason.as_bytes());
            domains::AUDIT_RECOVERED
        }
        "key.retire" | "key.adopt" => {
            msg = rekey_message(seq, hash, &rec.action, &rec.resource);
            domains::AUDIT_REKEY
        }
        _ => return None,
    };
    Some((domain, msg))
}

/// The hash of record `seq`, looked for in the segments before the last (a head that was
/// written just before a rotation points there).
fn hash_in_segments(segs: &[(u32, PathBuf)], seq: u64) -> Result<Option<[u8; 32]>, AuditError> {
    for (_, p) in segs.iter().rev().skip(1) {
        let f = File::open(p).map_err(io_err(p))?;
        let scan = scan_tail(&f, p, Some(seq), None)?;
        if scan.at_want.is_some() {
            return Ok(scan.at_want);
        }
        if scan.last.is_some_and(|(s, _)| s < seq) {
            break;
        }
    }
    Ok(None)
}

/// Whether bytes `from..to` of `file` are all zero (read in pieces; a read error says no).
fn zeros(file: &File, from: u64, to: u64) -> bool {
    let mut buf = vec![0u8; 64 * 1024];
    let mut at = from;
    while at < to {
        let n = usize::try_from((to - at).min(buf.len() as u64)).unwrap_or(buf.len());
        if file.read_exact_at(&mut buf[..n], at).is_err() || buf[..n].iter().any(|b| *b != 0) {
            return false;
        }
        at += n as u64;
    }
    true
}

/// Moves the bytes of `path` from `from` to `to` (a torn or unreadable tail, and whatever
/// follows it) to a new quarantine file beside the log, durably, and says what they were.
fn quarantine(
    dir: &Path,
    file: &File,
    path: &Path,
    after: u64,
    from: u64,
    to: u64,
) -> Result<String, AuditError> {
    let len = usize::try_from(to - from)
        .map_err(|_| AuditError::Corrupt("the damaged tail is too long to keep".into()))?;
    let mut bytes = vec![0u8; len];
    file.read_exact_at(&mut bytes, from).map_err(io_err(path))?;
    let stamp = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let name = format!("quarantine-{after:08}-{stamp}.bin");
    let qpath = dir.join(&name);
    let kept = (|| {
        use std::io::Write;
        let mut q = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(nix::libc::O_NOFOLLOW)
            .open(&qpath)?;
        q.write_all(&bytes)?;
        q.sync_all()?;
        sync_dir(dir)
    })();
    if let Err(e) = kept {
        let _ = fs::remove_file(&qpath);
        return Err(AuditError::Unavailable(format!(
            "the log's damaged tail ({len} bytes after #{after}) could not be kept in {}: {e}; nothing was cut",
            qpath.display()
        )));
    }
    // Say exactly what was cut: its lines, and which of them read as records.
    let lines = bytes
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .count();
    let seqs: Vec<u64> = bytes
        .split(|b| *b == b'\n')
        .filter_map(|l| serde_json::from_slice::<Record>(l).ok())
        .map(|r| r.seq)
        .collect();
    let complete = bytes.ends_with(b"\n");
    let records = match (seqs.first(), seqs.last()) {
        (Some(a), Some(b)) => format!(", {} of them readable records #{a}..#{b}", seqs.len()),
        _ => ", none of them a readable record".into(),
    };
    Ok(format!(
        "moved {len} bytes after #{after} ({lines} line(s){records}{}) to {name}",
        if complete { "" } else { ", the last one torn" }
    ))
}

/// The JSON file `name` of the log's directory, if there is one.
fn read_json<T: serde::de::DeserializeOwned>(
    dir: &Path,
    name: &str,
) -> Result<Option<T>, AuditError> {
    let path = dir.join(name);
    match fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| AuditError::Corrupt(format!("{}: {e}", path.display()))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err(&path)(e)),
    }
}

fn read_head(dir: &Path) -> Result<Option<Head>, AuditError> {
    read_json(dir, "head")
}

impl Writer {
    fn run(mut self, rx: mpsc::Receiver<Cmd>) {
        // Chaining is throughput work with a 10 ms deadline: as a batch thread, waking it never
        // preempts a call in progress on a busy core; it runs at the next switch instead.
        // SAFETY: sched_setscheduler on the calling thread (0) with a parameter it only reads.
        unsafe {
            let param = nix::libc::sched_param { sched_priority: 0 };
            nix::libc::sched_setscheduler(0, nix::libc::SCHED_BATCH, &param);
        }
        loop {
            let due_at = self.oldest_unsynced.map(|t| t + self.opts.group_commit);
            let summaries_at = self.summary_since.map(|t| t + self.opts.group_commit);
            let due_at = match (due_at, summaries_at) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
            let wait = match due_at {
                Some(at) => at.saturating_duration_since(Instant::now()),
                None if !self.coalesce.is_empty() => self.opts.group_commit,
                None if self.since_checkpoint > 0 => {
                    CHECKPOINT_INTERVAL.saturating_sub(self.last_checkpoint.elapsed())
                }
                None => Duration::from_secs(3600),
            };
            let first = match rx.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(RecvTimeoutError::Timeout) => None,
                Err(RecvTimeoutError::Disconnected) => {
                    let _ = self.finish(&rx);
                    return;
                }
            };
            let mut batch: Vec<Cmd> = first.into_iter().collect();
            while let Ok(c) = rx.try_recv() {
                batch.push(c);
            }
            // A kick only starts the group commit clock: the buffer fills without waking this
            // thread until the deadline, or until a record that cannot wait arrives.
            let mut urgent = false;
            for cmd in &batch {
                match cmd {
                    Cmd::Kick(chain) => {
                        self.oldest_unsynced.get_or_insert_with(Instant::now);
                        urgent |= chain;
                    }
                    Cmd::Append(..) | Cmd::Close(_) | Cmd::Rekey(..) => urgent = true,
                    Cmd::Synced(..) => {}
                }
            }
            let due = self
                .oldest_unsynced
                .is_some_and(|t| t.elapsed() >= self.opts.group_commit);
            // Buffered Group records were submitted before anything in this batch that their
            // submitters sent after them: chain them first.
            let mut sync_now = (urgent || due) && self.drain_group() > 0 && self.opts.strict;
            let mut closing = None;
            for cmd in batch {
                match cmd {
                    Cmd::Append(ev, d, done) => {
                        sync_now |= d == Durability::Sync || self.opts.strict;
                        self.append(ev, d, done);
                    }
                    Cmd::Kick(_) => {}
                    Cmd::Rekey(new, done) => {
                        self.rekey(new, done);
                        sync_now = true;
                    }
                    Cmd::Close(reply) => closing = Some(reply),
                    // The sync thread is free: whoever waits goes next, at once (the pipeline).
                    Cmd::Synced(n, r) => {
                        self.on_synced(n, r);
                        sync_now |= !self.waiting.is_empty();
                    }
                }
            }
            self.end_windows(false);
            if let Some(reply) = closing {
                let _ = reply.send(self.finish(&rx));
                return;
            }
            let due = self
                .oldest_unsynced
                .is_some_and(|t| t.elapsed() >= self.opts.group_commit);
            let backing_off = self.backoff_until.is_some_and(|t| Instant::now() < t);
            let summaries_due = self
                .summary_since
                .is_some_and(|t| t.elapsed() >= self.opts.group_commit);
            if (sync_now || due || summaries_due) && !backing_off {
                self.drain_group();
                self.flush_summaries();
                self.hand_off();
            }
            if self.since_checkpoint >= self.opts.checkpoint_every
                || (self.since_checkpoint > 0
                    && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL)
            {
                let _ = self.checkpoint(false);
            }
            // Records buffered while this thread worked sent no kick (the buffer was not empty):
            // their clock starts now.
            if self.oldest_unsynced.is_none()
                && !self
                    .group
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .is_empty()
            {
                self.oldest_unsynced = Some(Instant::now());
            }
        }
    }

    /// Chains the buffered Group records; returns how many.
    fn drain_group(&mut self) -> usize {
        let records = {
            let mut group = self.group.lock().unwrap_or_else(|e| e.into_inner());
            self.buffered.store(0, Ordering::Relaxed);
            std::mem::take(&mut *group)
        };
        let n = records.len();
        for item in records {
            match item {
                Grouped::Record(ev, done) => self.append(ev, Durability::Group, done),
                Grouped::Call(ev, id) => self.summarize(ev, id),
            }
        }
        n
    }

    /// An allowed call: recorded exactly on its token's first use (or always, `per_call`),
    /// else counted into the summary of the calls alike in this interval.
    fn summarize(&mut self, ev: Event, id: u64) {
        let first_use = match &ev.token {
            Some(t) => !self.seen_tokens.contains(t),
            None => true,
        };
        if self.opts.per_call || first_use {
            if let Some(t) = &ev.token {
                if self.seen_tokens.len() >= MAX_SEEN_TOKENS {
                    self.seen_tokens.clear();
                }
                self.seen_tokens.insert(t.clone());
            }
            return self.append(ev, Durability::Group, Box::new(|_| {}));
        }
        let now = SystemTime::now();
        let key = (ev.actor, ev.token, ev.action, ev.resource);
        match self.summaries.entry(key) {
            std::collections::hash_map::Entry::Occupied(mut e) => {
                let s = e.get_mut();
                s.count += 1;
                s.last = now;
                s.last_id = id;
            }
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(Summary {
                    reason: ev.reason,
                    count: 1,
                    first: now,
                    last: now,
                    first_id: id,
                    last_id: id,
                });
            }
        }
        self.summary_since.get_or_insert_with(Instant::now);
        if self.summaries.len() >= MAX_SUMMARIES {
            self.flush_summaries();
        }
    }

    /// Writes one record for each kind of call summed up in this interval.
    fn flush_summaries(&mut self) {
        self.summary_since = None;
        let summaries: Vec<_> = self.summaries.drain().collect();
        for ((actor, token, action, resource), s) in summaries {
            let reason = format!(
                "{} calls ({}) from {} to {}, call ids {}..{}",
                s.count,
                s.reason,
                humantime::format_rfc3339_micros(s.first),
                humantime::format_rfc3339_micros(s.last),
                s.first_id,
                s.last_id
            );
            let _ = self.push_record(
                Event {
                    actor,
                    action,
                    resource,
                    decision: Decision::Allowed,
                    reason,
                    token,
                },
                Some(s.count),
                None,
                false,
            );
        }
    }

    fn append(&mut self, ev: Event, d: Durability, done: Done) {
        if ev.decision == Decision::Denied {
            let now = Instant::now();
            // Per actor and action: a flood of one kind never hides a different denial.
            let key = format!("{}\0{}", ev.actor, ev.action);
            let c = self.coalesce.entry(key).or_insert(Coalesce {
                start: now,
                n: 0,
                suppressed: 0,
                last_action: String::new(),
                last_resource: String::new(),
                last_reason: String::new(),
            });
            c.n += 1;
            if c.n > DENIALS_PER_WINDOW {
                c.suppressed += 1;
                c.last_action = ev.action.into_owned();
                c.last_resource = ev.resource;
                c.last_reason = ev.reason;
                // Counted into the coalesced record at the end of the window.
                done(Ok(Receipt {
                    seq: 0,
                    hash: ZERO_HASH,
                }));
                return;
            }
        }
        let sync = d == Durability::Sync || self.opts.strict;
        match self.push_record(ev, None, None, sync) {
            Ok(receipt) => {
                if d == Durability::Sync || self.opts.strict {
                    self.waiting.push((done, receipt));
                } else if self.available.load(Ordering::Relaxed) {
                    done(Ok(receipt));
                } else {
                    done(Err(AuditError::Unavailable(
                        "a previous write failed".into(),
                    )));
                }
            }
            Err(e) => done(Err(e)),
        }
    }

    /// Closes the coalescing windows that ended (all of them when `all`).
    fn end_windows(&mut self, all: bool) {
        let now = Instant::now();
        let ended: Vec<String> = self
            .coalesce
            .iter()
            .filter(|(_, c)| all || now.duration_since(c.start) >= WINDOW)
            .map(|(k, _)| k.clone())
            .collect();
        for key in ended {
            if let Some(c) = self.coalesce.remove(&key) {
                let actor = key.split('\0').next().unwrap_or_default().to_string();
                if c.suppressed > 0 {
                    let _ = self.push_record(
                        Event {
                            actor: actor.into(),
                            action: "audit.coalesced".into(),
                            resource: c.last_resource,
                            decision: Decision::Denied,
                            reason: format!(
                                "{} more denials within {}s coalesced (last: {}: {})",
                                c.suppressed,
                                WINDOW.as_secs(),
                                c.last_action,
                                c.last_reason
                            ),
                            token: None,
                        },
                        Some(c.suppressed),
                        None,
                        false,
                    );
                }
            }
        }
    }

    /// Chains a record. `sync`: someone waits for it to be durable (a grant, say), so the
    /// disk's free space is looked at before it is admitted.
    fn push_record(
        &mut self,
        ev: Event,
        count: Option<u64>,
        sig: Option<String>,
        sync: bool,
    ) -> Result<Receipt, AuditError> {
        // A summary accounts for calls that already went ahead, allowed while there was
        // space: it is written from the reserve, or they would go unaccounted.
        let reserve = uses_reserve(&ev) || count.is_some();
        if self.told_full && !reserve && !self.space.full.load(Ordering::Relaxed) {
            self.told_full = false;
            let _ = self.push_record(
                Event {
                    actor: "supervisor".into(),
                    action: "audit.disk-ok".into(),
                    resource: String::new(),
                    decision: Decision::Info,
                    reason:
                        "space for the audit log is available again: every record is written again"
                            .into(),
                    token: None,
                },
                None,
                None,
                false,
            );
        }
        let mut time = [0u8; 40];
        let mut prev = [0u8; 64];
        // Cannot fail: the output is exactly twice the input.
        let _ = hex::encode_to_slice(self.prev, &mut prev);
        // A signed record's fields are what its signature covers, and are short: kept whole.
        let whole = sig.is_some();
        let actor = capped(&ev.actor, MAX_SHORT_FIELD, whole);
        let action = capped(&ev.action, MAX_SHORT_FIELD, whole);
        let resource = capped(&ev.resource, MAX_RESOURCE_FIELD, whole);
        let reason = capped(&ev.reason, MAX_REASON_FIELD, whole);
        let token = ev
            .token
            .as_deref()
            .map(|t| capped(t, MAX_SHORT_FIELD, whole));
        let rec = Line {
            v: versions::AUDIT,
            seq: self.seq + 1,
            time: now_text(&mut time),
            actor: &actor,
            action: &action,
            resource: &resource,
            decision: ev.decision,
            reason: &reason,
            token: token.as_deref(),
            prev: std::str::from_utf8(&prev).unwrap_or(""),
            count,
            sig: sig.as_deref(),
        };
        // Serialised in place at the end of the buffer: no line-sized allocation per record.
        let start = self.unsynced.len();
        if let Err(e) = rec.write_json(&mut self.unsynced) {
            self.unsynced.truncate(start);
            return Err(AuditError::Corrupt(e.to_string()));
        }
        let len = self.unsynced.len() - start + 1;
        if let Err(e) = self.admit(len, reserve, sync) {
            self.unsynced.truncate(start);
            if !reserve && !self.told_full && self.space.full.load(Ordering::Relaxed) {
                // Said once per episode, from the reserve.
                self.told_full = true;
                let _ = self.push_record(
                    Event {
                        actor: "supervisor".into(),
                        action: "audit.disk-full".into(),
                        resource: String::new(),
                        decision: Decision::Info,
                        reason: format!(
                            "the disk holding the audit log is full: until space is freed only denials, revocations and checkpoints are recorded (from a reserve of {} MiB), and everything else, every grant and allowed call included, is refused",
                            RESERVE >> 20
                        ),
                        token: None,
                    },
                    None,
                    None,
                    false,
                );
            }
            return Err(e);
        }
        let hash = record_hash(&self.unsynced[start..]);
        self.unsynced.push(b'\n');
        self.seq = rec.seq;
        self.prev = hash;
        self.since_checkpoint += 1;
        self.last_append = Instant::now();
        self.oldest_unsynced.get_or_insert(self.last_append);
        Ok(Receipt { seq: rec.seq, hash })
    }

    /// A command that arrived while closing: records still go in, the rest is refused.
    fn take_late(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Synced(n, r) => self.on_synced(n, r),
            Cmd::Append(ev, d, done) => self.append(ev, d, done),
            Cmd::Rekey(_, done) => done(Err(AuditError::Closed)),
            Cmd::Close(reply) => {
                let _ = reply.send(Ok(()));
            }
            Cmd::Kick(_) => {}
        }
    }

    /// The two signed records of a key change, then a checkpoint under the new key; `done`
    /// hears once they are durable. Records submitted before are chained (and so signed) under
    /// the old key.
    fn rekey(&mut self, new: Arc<NodeKey>, done: Done) {
        self.drain_group();
        let (old_did, new_did) = (self.key.did(), new.did());
        let retire = Event {
            actor: "supervisor".into(),
            action: "key.retire".into(),
            resource: new_did.clone(),
            decision: Decision::Info,
            reason: format!("node key {old_did} retired; its successor is {new_did}"),
            token: None,
        };
        let sig = self.key.sign(
            domains::AUDIT_REKEY,
            &rekey_message(self.seq, &self.prev, "key.retire", &new_did),
        );
        if let Err(e) = self.push_record(retire, None, Some(hex::encode(sig.to_bytes())), true) {
            return done(Err(e));
        }
        let adopt = Event {
            actor: "supervisor".into(),
            action: "key.adopt".into(),
            resource: old_did.clone(),
            decision: Decision::Info,
            reason: format!("node key {new_did} succeeds {old_did}"),
            token: None,
        };
        let sig = new.sign(
            domains::AUDIT_REKEY,
            &rekey_message(self.seq, &self.prev, "key.adopt", &old_did),
        );
        match self.push_record(adopt, None, Some(hex::encode(sig.to_bytes())), true) {
            Ok(receipt) => {
                // A retire with no adopt after it changes nothing for `verify`.
                self.key = new;
                self.waiting.push((done, receipt));
                let _ = self.checkpoint(false);
            }
            Err(e) => done(Err(e)),
        }
    }

    /// Spends `len` bytes of the allocated space on a record, or refuses it: once the disk is
    /// full, only a reserve record is admitted, and only while the reserve lasts. A record
    /// someone waits for (`sync`) first has the disk's free space looked at, so that a grant
    /// on a disk that just filled is refused at once rather than after the next write.
    fn admit(&self, len: usize, reserve: bool, sync: bool) -> Result<(), AuditError> {
        let space = &self.space;
        if !reserve && sync && low_on_space(&space.dir) {
            // The sync thread clears it once space is back.
            space.full.store(true, Ordering::Relaxed);
        }
        let full = space.full.load(Ordering::Relaxed);
        if full && !reserve {
            return Err(AuditError::Unavailable(
                "the disk holding $ELASTOS_HOME is full; only denials, revocations and checkpoints are recorded until space is freed".into(),
            ));
        }
        if space.unbounded.load(Ordering::Relaxed) {
            return Ok(());
        }
        // Until the disk is full a burst may overdraw (the sync thread allocates for it before
        // writing it); once it is, what is left is all there is.
        let len = i64::try_from(len).unwrap_or(i64::MAX);
        if full && space.budget.load(Ordering::Relaxed) < len {
            return Err(AuditError::Unavailable(
                "the disk is full and the audit reserve is spent: free space in $ELASTOS_HOME"
                    .into(),
            ));
        }
        // Only this thread spends; the sync thread only adds, so the check above stays true.
        space.budget.fetch_sub(len, Ordering::Relaxed);
        Ok(())
    }

    /// Gives everything chained so far to the sync thread; it queues behind a job in progress
    /// and goes out with the next fdatasync. Done in place while opening.
    fn hand_off(&mut self) {
        // After a failure: first every outstanding job comes back, then all is written again.
        if self.failing {
            return;
        }
        if self.unsynced.is_empty() && self.pending_head.is_none() {
            // Nothing is due: no deadline to wake up for (the loop would spin on it).
            self.oldest_unsynced = None;
            return;
        }
        let job = Job {
            bytes: std::mem::take(&mut self.unsynced),
            waiting: std::mem::take(&mut self.waiting),
            head: self.pending_head.take(),
            resume: std::mem::take(&mut self.resume_next),
            last_seq: self.seq,
        };
        self.oldest_unsynced = None;
        self.in_flight += 1;
        match &mut self.disk {
            DiskHandle::Inline(disk) => {
                let r = disk.complete(job, None);
                self.on_synced(1, r);
            }
            DiskHandle::Thread { jobs: Some(tx), .. } => {
                if let Err(mpsc::SendError(job)) = tx.send(job) {
                    let e = AuditError::Unavailable("the audit sync thread is gone".into());
                    for (done, _) in job.waiting {
                        done(Err(AuditError::Unavailable(e.to_string())));
                    }
                    self.on_synced(1, Err((e, job.bytes, job.head)));
                }
            }
            DiskHandle::Thread { jobs: None, .. } => {
                self.on_synced(1, Err((AuditError::Closed, job.bytes, job.head)));
            }
        }
    }

    /// The sync thread's report on `n` jobs (in the order they were handed off).
    fn on_synced(&mut self, n: usize, r: SyncResult) {
        self.in_flight = self.in_flight.saturating_sub(n);
        match r {
            Ok(()) => {
                self.available.store(true, Ordering::Relaxed);
                self.backoff_until = None;
            }
            Err((_, bytes, head)) => {
                self.available.store(false, Ordering::Relaxed);
                self.failing = true;
                self.requeue.extend_from_slice(&bytes);
                if head.is_some() {
                    self.requeue_head = head;
                }
            }
        }
        if self.failing && self.in_flight == 0 {
            // The failed bytes go back in front: nothing buffered is lost, order is kept.
            let mut bytes = std::mem::take(&mut self.requeue);
            bytes.extend_from_slice(&self.unsynced);
            self.unsynced = bytes;
            if self.pending_head.is_none() {
                self.pending_head = self.requeue_head.take();
            }
            self.requeue_head = None;
            self.failing = false;
            self.resume_next = true;
            let now = Instant::now();
            self.oldest_unsynced = Some(now);
            self.backoff_until = Some(now + self.opts.group_commit);
        }
    }

    /// A signed checkpoint of the current head, in the log and (once that record is durable)
    /// in the head file; `clean` for the last one, as the writer stops.
    fn checkpoint(&mut self, clean: bool) -> Result<(), AuditError> {
        // The authority's state as of now, signed with the head it follows.
        let state = stamp_now(&self.opts.state)
            .map(|s| format!("state:{}", stamp_text(&s)))
            .unwrap_or_default();
        let mut msg = head_message(self.seq, &self.prev);
        msg.extend_from_slice(state.as_bytes());
        let sig = self.key.sign(domains::AUDIT_CHECKPOINT, &msg);
        self.push_record(
            Event {
                actor: "supervisor".into(),
                action: "checkpoint".into(),
                resource: state,
                decision: Decision::Info,
                reason: format!("signed head #{}", self.seq),
                token: None,
            },
            None,
            Some(hex::encode(sig.to_bytes())),
            false,
        )?;
        // The head is the checkpoint record itself, with whether the writer stops there.
        self.pending_head = Some(
            Head::new(
                &self.key,
                self.seq,
                &self.prev,
                clean,
                stamp_now(&self.opts.state),
            )
            .bytes()?,
        );
        self.since_checkpoint = 0;
        self.last_checkpoint = Instant::now();
        self.hand_off();
        Ok(())
    }

    /// Makes everything durable, ends with a checkpoint, and stops the sync thread.
    fn finish(&mut self, rx: &mpsc::Receiver<Cmd>) -> Result<(), AuditError> {
        // What was sent before `close` goes in first (a sender may have raced it).
        while let Ok(cmd) = rx.try_recv() {
            self.take_late(cmd);
        }
        self.drain_group();
        self.flush_summaries();
        self.end_windows(true);
        let mut attempts = 0;
        let mut clean_head = false;
        loop {
            if self.in_flight > 0 {
                match rx.recv() {
                    Ok(cmd) => self.take_late(cmd),
                    Err(_) => break,
                }
                continue;
            }
            // Whatever was chained, a record that raced `close` included, ends under a clean
            // checkpoint: nothing may follow a clean stop's last signature.
            if self.since_checkpoint > 0 {
                self.checkpoint(true)?;
                clean_head = true;
                continue;
            }
            if !clean_head {
                // Nothing since the last checkpoint: only the head changes, to say it is clean.
                self.pending_head = Some(
                    Head::new(
                        &self.key,
                        self.seq,
                        &self.prev,
                        true,
                        stamp_now(&self.opts.state),
                    )
                    .bytes()?,
                );
                clean_head = true;
            }
            if self.unsynced.is_empty() && self.pending_head.is_none() {
                break;
            }
            if attempts == 3 {
                return Err(AuditError::Unavailable(
                    "the last records could not be made durable".into(),
                ));
            }
            attempts += 1;
            self.hand_off();
        }
        if let DiskHandle::Thread { jobs, thread } = &mut self.disk {
            jobs.take();
            if let Some(t) = thread.take() {
                let _ = t.join();
            }
        }
        Ok(())
    }
}

impl Disk {
    fn path(&self) -> PathBuf {
        self.dir.join(segment_name(self.segment))
    }

    /// Appends `bytes` after what is durable and fdatasyncs them. On failure nothing counts as
    /// written: the next attempt writes them again at the same offset.
    fn write_sync(&mut self, bytes: &[u8]) -> Result<(), AuditError> {
        if bytes.is_empty() {
            return Ok(());
        }
        let path = self.path();
        self.check_space();
        // A retry writes the failed bytes again, and more, at the same offset: it covers
        // whatever part of them reached the file. (Cutting it first would also free the space
        // allocated past the end, which the reserve counts on.)
        self.file
            .write_all_at(bytes, self.synced_len)
            .map_err(io_err(&path))?;
        if self
            .fail_sync
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(AuditError::Io {
                path,
                source: std::io::Error::from_raw_os_error(nix::libc::ENOSPC),
            });
        }
        self.file.sync_data().map_err(io_err(&path))?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.synced_len += bytes.len() as u64;
        self.allocated = self.allocated.max(self.synced_len);
        if self.synced_len >= self.segment_bytes {
            // The records are durable whatever happens here; a failed rotation is tried again
            // after the next sync, and the segment grows a little meanwhile.
            let _ = self.rotate();
        }
        self.check_space();
        Ok(())
    }

    /// Allocates `len` bytes of `file` from `offset` without changing its length, as the
    /// reserve needs. `Ok(false)`: the file system cannot (then there is no reserve).
    fn allocate(&self, file: &File, offset: u64, len: u64) -> std::io::Result<bool> {
        use nix::fcntl::{fallocate, FallocateFlags};
        if self
            .fail_alloc
            .as_ref()
            .is_some_and(|f| f.load(Ordering::Relaxed))
        {
            return Err(std::io::Error::from_raw_os_error(nix::libc::ENOSPC));
        }
        let (Ok(offset), Ok(len)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(std::io::Error::from_raw_os_error(nix::libc::EFBIG));
        };
        match fallocate(
            file.as_fd(),
            FallocateFlags::FALLOC_FL_KEEP_SIZE,
            offset,
            len,
        ) {
            Ok(()) => Ok(true),
            Err(nix::errno::Errno::EOPNOTSUPP) => Ok(false),
            Err(e) => Err(std::io::Error::from(e)),
        }
    }

    /// Keeps [`RESERVE`] and [`AHEAD`] allocated past the segment's end, and says whether the
    /// disk is full: an allocation that was needed failed, or less than [`AHEAD`] is free.
    fn check_space(&mut self) {
        let space = self.space.clone();
        // The budget counts what the writer has chained but this thread not yet written, so a
        // backlog is allocated for before it is written.
        let budget = space.budget.load(Ordering::Relaxed);
        let needed = budget < (RESERVE + AHEAD / 2) as i64;
        let due = self.retry_alloc.is_none_or(|t| Instant::now() >= t);
        if !space.unbounded.load(Ordering::Relaxed) && (needed || self.alloc_failed) && due {
            let want = u64::try_from((RESERVE + AHEAD) as i64 - budget).unwrap_or(0);
            match self.allocate(&self.file, self.allocated, want.max(1)) {
                Ok(true) => {
                    self.allocated += want;
                    space
                        .budget
                        .fetch_add(i64::try_from(want).unwrap_or(0), Ordering::Relaxed);
                    self.alloc_failed = false;
                    self.retry_alloc = None;
                }
                Ok(false) => {
                    space.unbounded.store(true, Ordering::Relaxed);
                    self.alloc_failed = false;
                }
                Err(e) => {
                    if !self.alloc_failed {
                        tracing::warn!("allocating space for the audit log failed: {e}");
                    }
                    self.alloc_failed = true;
                    self.retry_alloc = Some(Instant::now() + FULL_RETRY);
                }
            }
        }
        let full = self.alloc_failed || low_on_space(&self.dir);
        if space.full.swap(full, Ordering::Relaxed) != full {
            if full {
                tracing::warn!("the audit log's disk is full: recording only denials, revocations and checkpoints, from the reserve");
            } else {
                tracing::info!("the audit log's disk has space again");
            }
        }
    }

    /// Writes a job and tells its waiters (through `acks`, else in place); on failure returns
    /// its bytes and head for another attempt.
    fn complete(
        &mut self,
        job: Job,
        acks: Option<&mpsc::Sender<Vec<(Done, Receipt)>>>,
    ) -> SyncResult {
        match self.write_sync(&job.bytes) {
            Ok(()) => {
                self.available.store(true, Ordering::Relaxed);
                // Before any waiter hears: what it is told is durable, is counted so.
                self.durable.fetch_max(job.last_seq, Ordering::Release);
                if let Some(head) = &job.head {
                    let path = self.dir.join("head");
                    // A head that could not be replaced leaves the previous one, which still
                    // verifies (it is older); the next checkpoint tries again.
                    let _ = write_atomic(&path, head, 0o600);
                }
                let waiting = job.waiting;
                if !waiting.is_empty() {
                    let unsent = match acks {
                        Some(tx) => tx.send(waiting).err().map(|mpsc::SendError(w)| w),
                        None => Some(waiting),
                    };
                    for (done, receipt) in unsent.unwrap_or_default() {
                        done(Ok(receipt));
                    }
                }
                Ok(())
            }
            Err(e) => {
                self.available.store(false, Ordering::Relaxed);
                for (done, _) in job.waiting {
                    done(Err(AuditError::Unavailable(e.to_string())));
                }
                Err((e, job.bytes, job.head))
            }
        }
    }

    /// Moves on to a new segment, but only once the new one holds a reserve of its own: on a
    /// full disk the current segment keeps growing into its reserve instead.
    fn rotate(&mut self) -> Result<(), AuditError> {
        let next = self.dir.join(segment_name(self.segment + 1));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&next)
            .map_err(io_err(&next))?;
        let unbounded = self.space.unbounded.load(Ordering::Relaxed);
        let allocated = if unbounded {
            0
        } else {
            match self.allocate(&file, 0, RESERVE + AHEAD) {
                Ok(true) => RESERVE + AHEAD,
                Ok(false) => 0,
                Err(e) => {
                    // An empty segment after a full one is read as the chain's continuation,
                    // but there is no use in leaving it.
                    let _ = fs::remove_file(&next);
                    return Err(io_err(&next)(e));
                }
            }
        };
        sync_dir(&self.dir).map_err(io_err(&self.dir))?;
        // What the old segment had allocated past its end is given back to the disk.
        let _ = self.file.set_len(self.synced_len);
        let left = self.allocated - self.synced_len;
        self.space.budget.fetch_add(
            i64::try_from(allocated).unwrap_or(0) - i64::try_from(left).unwrap_or(0),
            Ordering::Relaxed,
        );
        self.segment += 1;
        self.file = file;
        self.synced_len = 0;
        self.allocated = allocated;
        Ok(())
    }

    /// The sync thread: every job waiting when it is free goes out with one write and one
    /// fdatasync, so it syncs back to back while the writer chains the next batch. After a
    /// failure it fails each job until the writer, having taken all of them back, resumes.
    fn serve(
        mut self,
        jobs: mpsc::Receiver<Job>,
        back: mpsc::Sender<Cmd>,
        acks: mpsc::Sender<Vec<(Done, Receipt)>>,
    ) {
        // Durability gates every denial and grant: on a busy machine this thread should get the
        // CPU the moment its fdatasync returns. Raising priority needs CAP_SYS_NICE; without it
        // the thread keeps the default, which only costs throughput.
        // SAFETY: setpriority on this thread's own id, integer arguments only.
        unsafe {
            let tid = nix::libc::syscall(nix::libc::SYS_gettid) as nix::libc::id_t;
            nix::libc::setpriority(nix::libc::PRIO_PROCESS, tid, -10);
        }
        let mut failed = false;
        loop {
            // While the disk is full, look once a second for space (nothing else may write).
            let first = if self.space.full.load(Ordering::Relaxed) {
                match jobs.recv_timeout(FULL_RETRY) {
                    Ok(j) => j,
                    Err(RecvTimeoutError::Timeout) => {
                        self.check_space();
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return,
                }
            };
            let mut ready = vec![first];
            while let Ok(j) = jobs.try_recv() {
                ready.push(j);
            }
            let mut merged: Option<Job> = None;
            let mut n = 0;
            for job in ready {
                failed &= !job.resume;
                if failed {
                    let e = AuditError::Unavailable("an earlier audit write failed".into());
                    for (done, _) in job.waiting {
                        done(Err(AuditError::Unavailable(e.to_string())));
                    }
                    if back
                        .send(Cmd::Synced(1, Err((e, job.bytes, job.head))))
                        .is_err()
                    {
                        return;
                    }
                    continue;
                }
                n += 1;
                merged = Some(match merged {
                    None => job,
                    Some(mut m) => {
                        m.bytes.extend_from_slice(&job.bytes);
                        m.waiting.extend(job.waiting);
                        m.last_seq = m.last_seq.max(job.last_seq);
                        if job.head.is_some() {
                            m.head = job.head;
                        }
                        m
                    }
                });
            }
            if let Some(m) = merged {
                let r = self.complete(m, Some(&acks));
                failed = r.is_err();
                if back.send(Cmd::Synced(n, r)).is_err() {
                    return;
                }
            }
        }
    }
}

/// Every record of the log in order. A reader takes no lock: the writer only appends, so a
/// reader sees a prefix; a torn last line is where it stops.
pub fn read_records(
    dir: &Path,
) -> Result<impl Iterator<Item = Result<Record, AuditError>>, AuditError> {
    Ok(read_since(dir, &mut Cursor::default())?.into_iter())
}

/// Where a reader following the log got to: a segment, and the byte after the last whole record
/// read from it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor {
    segment: u32,
    offset: u64,
}

impl Cursor {
    /// The start of the log's newest segment: a follower that shows only the recent past does
    /// not read the whole log first.
    pub fn newest_segment(dir: &Path) -> Cursor {
        Cursor {
            segment: segments(dir)
                .ok()
                .and_then(|s| s.last().map(|(n, _)| *n))
                .unwrap_or(0),
            offset: 0,
        }
    }
}

/// The records appended since `cursor`, which moves past them: how `audit -f` and `elastos
/// shell` follow the log without reading all of it again. A record still being written (no
/// newline yet) is left for the next call; segments pruned meanwhile are passed over.
pub fn read_since(
    dir: &Path,
    cursor: &mut Cursor,
) -> Result<Vec<Result<Record, AuditError>>, AuditError> {
    let mut out = Vec::new();
    for (n, path) in segments(dir)? {
        if n < cursor.segment {
            continue;
        }
        let start = if n == cursor.segment {
            cursor.offset
        } else {
            0
        };
        let mut f = File::open(&path).map_err(io_err(&path))?;
        f.seek(SeekFrom::Start(start)).map_err(io_err(&path))?;
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        let mut at = start;
        loop {
            line.clear();
            let got = reader.read_until(b'\n', &mut line).map_err(io_err(&path))?;
            if got == 0 || line.last() != Some(&b'\n') {
                break;
            }
            at += got as u64;
            out.push(
                serde_json::from_slice::<Record>(&line[..line.len() - 1]).map_err(|e| {
                    AuditError::Bad {
                        seq: 0,
                        file: segment_name(n),
                        why: format!("not a record: {e}"),
                    }
                }),
            );
        }
        *cursor = Cursor {
            segment: n,
            offset: at,
        };
    }
    Ok(out)
}

/// The records written at or after `since`, read from the newest segment that begins before it
/// (the log is in time order): what a look at the recent past needs, without the whole log.
pub fn records_since(dir: &Path, since: SystemTime) -> Result<Vec<Record>, AuditError> {
    let first_time = |path: &Path| -> Option<SystemTime> {
        let mut line = Vec::new();
        BufReader::new(File::open(path).ok()?)
            .read_until(b'\n', &mut line)
            .ok()?;
        serde_json::from_slice::<Record>(line.strip_suffix(b"\n")?)
            .ok()?
            .time_system()
    };
    let segs = segments(dir)?;
    let start = segs
        .iter()
        .rev()
        .find(|(_, p)| first_time(p).is_some_and(|t| t <= since))
        .or(segs.first())
        .map_or(0, |(n, _)| *n);
    let mut cursor = Cursor {
        segment: start,
        offset: 0,
    };
    Ok(read_since(dir, &mut cursor)?
        .into_iter()
        .flatten()
        .filter(|r| r.time_system().is_some_and(|t| t >= since))
        .collect())
}

/// The audit log's size on disk: every segment's length.
pub fn size(dir: &Path) -> u64 {
    segments(dir)
        .unwrap_or_default()
        .iter()
        .filter_map(|(_, p)| fs::metadata(p).ok())
        .map(|m| m.len())
        .sum()
}

/// Whether a record's actor is the capsule `name` (`capsule:NAME` or `capsule:NAME@CID`).
pub fn actor_is_capsule(actor: &str, name: &str) -> bool {
    actor
        .strip_prefix("capsule:")
        .map(|rest| rest.split('@').next() == Some(name))
        .unwrap_or(false)
}

#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub records: u64,
    /// The last record's seq and hash (the anchor to keep for `--expect`).
    pub head_seq: u64,
    pub head_hash: [u8; 32],
    /// Records covered by a signature (a checkpoint, a recovery record or the head file); the
    /// rest were written after the last one, before an unclean stop, and are not yet signed.
    pub signed: u64,
}

/// The completed key changes the log records (`key.retire` then `key.adopt` at once), in
/// order: (seq of the adopt, old DID, new DID). Only the chain's shape is read here; every
/// signature in it is checked by [`verify`].
fn key_changes(dir: &Path) -> Result<Vec<(u64, String, String)>, AuditError> {
    let mut changes = Vec::new();
    let mut pending: Option<(u64, String)> = None;
    for (_, path) in segments(dir)? {
        let f = File::open(&path).map_err(io_err(&path))?;
        for line in BufReader::new(f).split(b'\n') {
            let line = line.map_err(io_err(&path))?;
            // Cheap: only the few lines that can be key changes are parsed.
            if !line
                .windows(9)
                .any(|w| w == b"\"key.reti" || w == b"\"key.adop")
            {
                continue;
            }
            let Ok(rec) = serde_json::from_slice::<Record>(&line) else {
                continue;
            };
            match (rec.action.as_str(), pending.take()) {
                ("key.retire", _) => pending = Some((rec.seq, rec.resource)),
                ("key.adopt", Some((s, new))) if s + 1 == rec.seq => {
                    changes.push((rec.seq, rec.resource, new))
                }
                _ => {}
            }
        }
    }
    Ok(changes)
}

fn key_of(did: &str) -> Result<VerifyingKey, AuditError> {
    crate::identity::public_from_did(did)
        .ok()
        .and_then(|pk| VerifyingKey::from_bytes(&pk).ok())
        .ok_or_else(|| AuditError::Corrupt(format!("`{did}` in the log is not a valid key")))
}

/// The key the log (what is left of it after a prune: its anchor's key) begins with: `public`,
/// or the first key of the chain of changes that ends at `public`.
fn first_key(
    dir: &Path,
    public: &VerifyingKey,
    anchor: Option<&Anchor>,
) -> Result<VerifyingKey, AuditError> {
    // Changes at or below the anchor are in segments a prune was about to remove.
    let after = anchor.map_or(0, |a| a.seq);
    let changes: Vec<_> = key_changes(dir)?
        .into_iter()
        .filter(|(at, _, _)| *at > after)
        .collect();
    let did = crate::identity::did_from_public(public.as_bytes());
    let mut expect = did.clone();
    for (_, old, new) in changes.iter().rev() {
        if *new != expect {
            return Err(AuditError::Corrupt(format!(
                "the log's chain of node keys does not end at {did}: it hands over to {new} where {expect} was expected; verify with the DID the log was last signed by (`--did`)"
            )));
        }
        expect = old.clone();
    }
    if let Some(a) = anchor {
        if a.did != expect {
            return Err(AuditError::Corrupt(format!(
                "the anchor says the log went on under {} but its chain of keys begins at {expect}",
                a.did
            )));
        }
    }
    key_of(&expect)
}

/// The `anchor` file `audit prune` leaves: where the log now begins, signed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Anchor {
    format: u32,
    /// The last record pruned, and its hash: the first record left links to it.
    seq: u64,
    hash: String,
    /// The node key in force at `seq`.
    did: String,
    /// Who signed this anchor (the node key at the prune), and the signature.
    signer: String,
    sig: String,
    time: String,
}

fn anchor_message(seq: u64, hash: &[u8; 32], did: &str) -> Vec<u8> {
    let mut m = head_message(seq, hash);
    m.extend_from_slice(did.as_bytes());
    m
}

fn read_anchor(dir: &Path) -> Result<Option<Anchor>, AuditError> {
    read_json(dir, "anchor")
}

impl Anchor {
    /// (seq, hash, key in force there), once its signature holds under a key of the chain
    /// (`keys`, from the anchor's own on).
    fn check(&self, keys: &[String]) -> Result<(u64, [u8; 32], VerifyingKey), AuditError> {
        let hash = parse_hash(&self.hash)
            .ok_or_else(|| AuditError::Corrupt("the anchor's hash is malformed".into()))?;
        let sig = parse_sig(&self.sig)
            .ok_or_else(|| AuditError::Corrupt("the anchor's signature is malformed".into()))?;
        if self.format != 1 || !keys.contains(&self.signer) {
            return Err(AuditError::Corrupt(format!(
                "the anchor is signed by {}, which is not one of this log's keys",
                self.signer
            )));
        }
        let msg = anchor_message(self.seq, &hash, &self.did);
        if !crate::identity::verify(&key_of(&self.signer)?, domains::AUDIT_ANCHOR, &msg, &sig) {
            return Err(AuditError::Corrupt(
                "the anchor's signature does not verify: it was forged or edited".into(),
            ));
        }
        Ok((self.seq, hash, key_of(&self.did)?))
    }
}

/// What `audit prune` removed.
#[derive(Debug, Clone, Serialize)]
pub struct Pruned {
    /// Records `first..=last` went, in `segments` files of `bytes` bytes; 0 of them: nothing.
    pub first: u64,
    pub last: u64,
    pub segments: usize,
    pub bytes: u64,
}

/// Checks the whole log against `public` (the node's key): versions, sequence, chain, every
/// signature, the signed head, and an optional anchor `(seq, hash)` saved earlier.
pub fn verify(
    dir: &Path,
    public: &VerifyingKey,
    expect: Option<(u64, [u8; 32])>,
) -> Result<VerifyReport, AuditError> {
    let mut seq = 0u64;
    let mut prev = ZERO_HASH;
    let mut anchor_seen = false;
    let mut hashes_at_head = None;
    let mut signed = 0u64;
    let head = read_head(dir)?;
    // The key each part of the log is signed with: the chain of key changes must end at
    // `public`, so the first key is known before the first signature is checked.
    let anchor = read_anchor(dir)?;
    let mut current = first_key(dir, public, anchor.as_ref())?;
    let mut retiring: Option<VerifyingKey> = None;
    // After a prune the log begins after its anchor, under the key in force there.
    let mut anchored = None;
    if let Some(a) = &anchor {
        let mut keys = vec![a.did.clone()];
        keys.extend(
            key_changes(dir)?
                .into_iter()
                .filter(|(at, _, _)| *at > a.seq)
                .map(|(_, _, new)| new),
        );
        let (s, h, k) = a.check(&keys)?;
        (seq, prev, current) = (s, h, k);
        signed = s;
        anchored = Some((s, h));
    }
    for (n, path) in segments(dir)? {
        let file = segment_name(n);
        let bad = |seq: u64, why: String| AuditError::Bad {
            seq,
            file: file.clone(),
            why: format!("{why}; the log was altered or damaged after it was written"),
        };
        let f = File::open(&path).map_err(io_err(&path))?;
        let mut reader = BufReader::new(f);
        let mut line = Vec::new();
        loop {
            line.clear();
            let got = reader.read_until(b'\n', &mut line).map_err(io_err(&path))?;
            if got == 0 {
                break;
            }
            if line.last() != Some(&b'\n') {
                return Err(bad(seq + 1, "an incomplete last line".into()));
            }
            let body = &line[..line.len() - 1];
            let rec: Record = serde_json::from_slice(body)
                .map_err(|e| bad(seq + 1, format!("not a record ({e})")))?;
            // A prune stopped before it removed everything it anchored: what is at or below the
            // anchor is gone as far as the log is concerned, but the anchor's record must match.
            if let Some((s, h)) = anchored {
                if rec.seq <= s {
                    if rec.seq == s && record_hash(body) != h {
                        return Err(bad(rec.seq, "it is not the record the anchor names".into()));
                    }
                    continue;
                }
            }
            if rec.v != versions::AUDIT {
                return Err(bad(
                    rec.seq,
                    format!(
                        "record version {} is unknown (this elastos reads {})",
                        rec.v,
                        versions::AUDIT
                    ),
                ));
            }
            if rec.seq != seq + 1 {
                return Err(bad(
                    seq + 1,
                    format!("found #{} where #{} belongs", rec.seq, seq + 1),
                ));
            }
            if parse_hash(&rec.prev) != Some(prev) {
                return Err(bad(
                    seq,
                    format!(
                        "this record was changed: #{} carries another hash for it",
                        rec.seq
                    ),
                ));
            }
            if let Some(sig) = &rec.sig {
                let sig =
                    parse_sig(sig).ok_or_else(|| bad(rec.seq, "a malformed signature".into()))?;
                let (domain, msg) = signed_message(&rec, seq, &prev).ok_or_else(|| {
                    bad(rec.seq, "a signature on a record that is not signed".into())
                })?;
                let mut signer = current;
                if rec.action == "key.adopt" {
                    // Signed by the key the retire before it named.
                    signer = retiring.ok_or_else(|| {
                        bad(rec.seq, "a key.adopt with no key.retire before it".into())
                    })?;
                    if rec.resource != crate::identity::did_from_public(current.as_bytes()) {
                        return Err(bad(
                            rec.seq,
                            "a key.adopt that names another key than the one retired".into(),
                        ));
                    }
                }
                if !crate::identity::verify(&signer, domain, &msg, &sig) {
                    return Err(bad(
                        rec.seq,
                        format!(
                            "its {} signature does not verify with {}",
                            rec.action,
                            crate::identity::did_from_public(signer.as_bytes())
                        ),
                    ));
                }
                match rec.action.as_str() {
                    "key.retire" => {
                        retiring = Some(
                            crate::identity::public_from_did(&rec.resource)
                                .ok()
                                .and_then(|pk| VerifyingKey::from_bytes(&pk).ok())
                                .ok_or_else(|| {
                                    bad(rec.seq, "a key.retire naming no valid key".into())
                                })?,
                        );
                    }
                    "key.adopt" => current = signer,
                    _ => {}
                }
                // It signs the record before it, and it is itself authentic: no other record
                // could carry that signature in that place.
                signed = rec.seq;
            } else if matches!(
                rec.action.as_str(),
                "checkpoint" | "recovered" | "key.retire" | "key.adopt"
            ) {
                return Err(bad(rec.seq, format!("an unsigned {} record", rec.action)));
            }
            if rec.action != "key.retire" {
                // A retire counts only when its adopt follows at once.
                retiring = None;
            }
            let hash = record_hash(body);
            if let Some((s, h)) = expect {
                if s == rec.seq {
                    if h != hash {
                        return Err(bad(
                            rec.seq,
                            format!(
                                "its hash is {} but {} was expected",
                                hex::encode(hash),
                                hex::encode(h)
                            ),
                        ));
                    }
                    anchor_seen = true;
                }
            }
            if let Some(hd) = &head {
                if hd.seq == rec.seq {
                    hashes_at_head = Some(hash);
                }
            }
            seq = rec.seq;
            prev = hash;
        }
    }
    match head {
        None if seq > 0 => {
            return Err(AuditError::Corrupt(format!(
                "the log holds {seq} records but no signed `head` file: it was deleted, or the log was put together by hand"
            )))
        }
        None => {}
        Some(hd) => {
            let (hash, clean) = hd.check(public)?;
            match hashes_at_head {
                _ if hd.seq == 0 && hash == ZERO_HASH => {}
                // A head written before a prune, naming a record it removed: the anchor, signed
                // later, covers it.
                None if anchored.is_some_and(|(a, _)| hd.seq <= a) => {}
                None => {
                    return Err(AuditError::Corrupt(format!(
                        "the log ends at #{seq} but its signed head is #{}: records were removed",
                        hd.seq
                    )))
                }
                Some(h) if h != hash => {
                    return Err(AuditError::Bad {
                        seq: hd.seq,
                        file: "head".into(),
                        why: "the record at the signed head has another hash: the log was rewritten"
                            .into(),
                    })
                }
                Some(_) => {}
            }
            signed = signed.max(hd.seq);
            if clean && seq > signed {
                return Err(AuditError::Corrupt(format!(
                    "records #{}..#{seq} follow the last signature after a clean stop (#{signed}): elastos did not write them",
                    signed + 1,
                )));
            }
        }
    }
    if let Some((s, _)) = expect {
        if !anchor_seen {
            return Err(AuditError::Corrupt(match anchored {
                Some((a, _)) if s <= a => format!(
                    "record #{s} (the expected anchor) was pruned: the log now begins after #{a}"
                ),
                _ => format!("the log has no record #{s} (the expected anchor)"),
            }));
        }
    }
    Ok(VerifyReport {
        records: seq,
        head_seq: seq,
        head_hash: prev,
        signed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        /// The chained bytes are what serde_json would write: `verify` and every other reader
        /// parse them with it, and the hash covers them exactly.
        #[test]
        fn a_line_is_written_exactly_as_serde_json_writes_it(
            seq in proptest::prelude::any::<u64>(),
            texts in proptest::collection::vec(
                proptest::prop_oneof![proptest::prelude::any::<String>(), "[ -~]{0,80}"],
                6,
            ),
            token in proptest::option::of("[0-9a-f\\x00-\\x1f\"\\\\]{0,40}"),
            count in proptest::option::of(proptest::prelude::any::<u64>()),
            sig in proptest::option::of("[0-9a-f]{0,128}"),
            decision in proptest::sample::select(vec![Decision::Allowed, Decision::Denied, Decision::Info]),
        ) {
            let line = Line {
                v: versions::AUDIT,
                seq,
                time: &texts[0],
                actor: &texts[1],
                action: &texts[2],
                resource: &texts[3],
                decision,
                reason: &texts[4],
                token: token.as_deref(),
                prev: &texts[5],
                count,
                sig: sig.as_deref(),
            };
            let mut ours = b"already buffered".to_vec();
            line.write_json(&mut ours).unwrap();
            let mut theirs = b"already buffered".to_vec();
            serde_json::to_writer(&mut theirs, &line).unwrap();
            proptest::prop_assert_eq!(String::from_utf8_lossy(&ours), String::from_utf8_lossy(&theirs));
        }
    }

    fn key() -> Arc<NodeKey> {
        Arc::new(NodeKey::from_seed(&[9; 32]))
    }

    fn ev(actor: &str, decision: Decision) -> Event {
        Event {
            actor: actor.into(),
            action: "call".into(),
            resource: "localhost://echo/x".into(),
            decision,
            reason: "test".into(),
            token: None,
        }
    }

    fn open(dir: &Path, opts: AuditOptions) -> AuditLog {
        AuditLog::open(dir, key(), opts).unwrap()
    }

    fn vk() -> VerifyingKey {
        key().verifying_key()
    }

    #[test]
    fn a_chain_across_segments_verifies() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(
            tmp.path(),
            AuditOptions {
                segment_bytes: 2000,
                checkpoint_every: 7,
                ..Default::default()
            },
        );
        for i in 0..100 {
            let d = if i % 3 == 0 {
                Durability::Sync
            } else {
                Durability::Group
            };
            log.append(ev("capsule:a", Decision::Allowed), d).unwrap();
        }
        log.close().unwrap();
        assert!(segments(tmp.path()).unwrap().len() > 3);
        let r = verify(tmp.path(), &vk(), None).unwrap();
        assert!(r.records > 100, "{}", r.records);
        // Reopen continues the chain.
        let log = open(tmp.path(), AuditOptions::default());
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        let r2 = verify(tmp.path(), &vk(), Some((r.head_seq, r.head_hash))).unwrap();
        assert!(r2.records > r.records);
    }

    fn write_some(dir: &Path) -> VerifyReport {
        let log = open(dir, AuditOptions::default());
        for _ in 0..10 {
            log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
                .unwrap();
        }
        log.close().unwrap();
        verify(dir, &vk(), None).unwrap()
    }

    fn seg1(dir: &Path) -> PathBuf {
        dir.join(segment_name(1))
    }

    #[test]
    fn tampering_is_detected() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path());
        let text = fs::read_to_string(seg1(tmp.path())).unwrap();
        // An edited record.
        fs::write(seg1(tmp.path()), text.replacen("\"test\"", "\"tesT\"", 1)).unwrap();
        let e = verify(tmp.path(), &vk(), None).unwrap_err().to_string();
        assert!(e.contains("#1") && e.contains("changed"), "{e}");
        // A deleted record.
        let lines: Vec<&str> = text.lines().collect();
        let mut without: Vec<&str> = lines.clone();
        without.remove(3);
        fs::write(seg1(tmp.path()), without.join("\n") + "\n").unwrap();
        let e = verify(tmp.path(), &vk(), None).unwrap_err().to_string();
        assert!(e.contains("#4"), "{e}");
        // Truncated below the signed head.
        fs::write(seg1(tmp.path()), lines[..5].join("\n") + "\n").unwrap();
        let e = verify(tmp.path(), &vk(), None).unwrap_err().to_string();
        assert!(e.contains("removed"), "{e}");
        // Another key.
        fs::write(seg1(tmp.path()), &text).unwrap();
        verify(tmp.path(), &vk(), None).unwrap();
        let other = NodeKey::from_seed(&[1; 32]).verifying_key();
        assert!(verify(tmp.path(), &other, None).is_err());
        // An unknown version.
        fs::write(seg1(tmp.path()), text.replacen("{\"v\":1", "{\"v\":2", 1)).unwrap();
        let e = verify(tmp.path(), &vk(), None).unwrap_err().to_string();
        assert!(e.contains("version 2"), "{e}");
    }

    #[test]
    fn swapped_segments_are_detected() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(
            tmp.path(),
            AuditOptions {
                segment_bytes: 1500,
                ..Default::default()
            },
        );
        for _ in 0..40 {
            log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
                .unwrap();
        }
        log.close().unwrap();
        let a = tmp.path().join(segment_name(1));
        let b = tmp.path().join(segment_name(2));
        let (ta, tb) = (fs::read(&a).unwrap(), fs::read(&b).unwrap());
        fs::write(&a, &tb).unwrap();
        fs::write(&b, &ta).unwrap();
        assert!(verify(tmp.path(), &vk(), None).is_err());
    }

    /// Replaces the head file with one signed by the node key at `seq` (the log's record
    /// there), as a running writer's last checkpoint before a crash leaves it.
    fn unclean_head_at(dir: &Path, seq: u64) {
        let line = fs::read_to_string(seg1(dir))
            .unwrap()
            .lines()
            .nth(usize::try_from(seq).unwrap() - 1)
            .unwrap()
            .to_string();
        let head = Head::new(&key(), seq, &record_hash(line.as_bytes()), false, None);
        fs::write(dir.join("head"), head.bytes().unwrap()).unwrap();
    }

    /// A record appended by someone without the key, correctly linked to the last one.
    fn forge_next(dir: &Path) {
        let text = fs::read_to_string(seg1(dir)).unwrap();
        let last = text.lines().last().unwrap();
        let rec: Record = serde_json::from_str(last).unwrap();
        let forged = Record {
            seq: rec.seq + 1,
            action: "token.issue".into(),
            actor: "operator:uid=0".into(),
            reason: "nothing to see".into(),
            prev: hex::encode(record_hash(last.as_bytes())),
            sig: None,
            count: None,
            ..rec
        };
        let mut f = OpenOptions::new().append(true).open(seg1(dir)).unwrap();
        let mut line = serde_json::to_vec(&forged).unwrap();
        line.push(b'\n');
        std::io::Write::write_all(&mut f, &line).unwrap();
    }

    fn recovered_reason(dir: &Path) -> String {
        read_records(dir)
            .unwrap()
            .map(Result::unwrap)
            .filter(|r| r.action == "recovered")
            .last()
            .expect("a recovered record")
            .reason
    }

    #[test]
    fn a_torn_line_and_the_records_after_it_are_moved_to_a_named_quarantine_file() {
        let tmp = tempfile::tempdir().unwrap();
        let before = write_some(tmp.path());
        // A crash with its head file at #6: one record after the last checkpoint, a torn line,
        // then a complete record.
        unclean_head_at(tmp.path(), 6);
        forge_next(tmp.path());
        let text = fs::read_to_string(seg1(tmp.path())).unwrap();
        let third = text.lines().nth(2).unwrap();
        let mut cut = b"{\"v\":1,\"seq\":99,\"ti".to_vec();
        cut.extend_from_slice(b"\n");
        cut.extend_from_slice(third.as_bytes());
        cut.extend_from_slice(b"\n");
        let mut f = OpenOptions::new()
            .append(true)
            .open(seg1(tmp.path()))
            .unwrap();
        std::io::Write::write_all(&mut f, &cut).unwrap();
        drop(f);
        let log = open(tmp.path(), AuditOptions::default());
        log.close().unwrap();
        let r = verify(tmp.path(), &vk(), Some((before.head_seq, before.head_hash))).unwrap();
        assert!(r.records > before.records);
        assert_eq!(r.signed, r.records);
        let reason = recovered_reason(tmp.path());
        let unsigned = before.records + 1;
        assert!(
            reason.contains(&format!("moved {} bytes after #{unsigned}", cut.len())),
            "{reason}"
        );
        assert!(
            reason.contains("2 line(s), 1 of them readable records #3..#3"),
            "{reason}"
        );
        assert!(
            reason.contains(&format!("adopted records #{unsigned}..#{unsigned}")),
            "{reason}"
        );
        let name = reason
            .rsplit(" to ")
            .next()
            .unwrap()
            .split(';')
            .next()
            .unwrap();
        assert_eq!(fs::read(tmp.path().join(name)).unwrap(), cut, "{name}");
    }

    #[test]
    fn a_key_change_is_signed_by_both_keys_and_verify_follows_the_chain() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path());
        let new = Arc::new(NodeKey::from_seed(&[10; 32]));
        let newer = Arc::new(NodeKey::from_seed(&[11; 32]));
        let log = open(tmp.path(), AuditOptions::default());
        log.rekey(new.clone()).unwrap();
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        // Opened again only under the new key; a second change chains on.
        assert!(AuditLog::open(tmp.path(), key(), AuditOptions::default()).is_err());
        let log = AuditLog::open(tmp.path(), new.clone(), AuditOptions::default()).unwrap();
        log.rekey(newer.clone()).unwrap();
        log.close().unwrap();
        let r = verify(tmp.path(), &newer.verifying_key(), None).unwrap();
        assert_eq!(r.signed, r.records);
        for wrong in [vk(), new.verifying_key()] {
            let e = verify(tmp.path(), &wrong, None).unwrap_err();
            assert!(e.to_string().contains("does not end at"), "{e}");
        }
        // A retire pointing elsewhere breaks its signature.
        let seg = seg1(tmp.path());
        let text = fs::read_to_string(&seg).unwrap();
        let other = crate::identity::did_from_public(&[7; 32]);
        let edited = text.replacen(&new.did(), &other, 1);
        assert_ne!(edited, text);
        fs::write(&seg, edited).unwrap();
        assert!(verify(tmp.path(), &newer.verifying_key(), None).is_err());
    }

    #[test]
    fn prune_removes_old_segments_and_the_rest_still_verifies_across_a_key_change() {
        let tmp = tempfile::tempdir().unwrap();
        let small = || AuditOptions {
            segment_bytes: 3000,
            ..Default::default()
        };
        let log = open(tmp.path(), small());
        for _ in 0..40 {
            log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
                .unwrap();
        }
        let new = Arc::new(NodeKey::from_seed(&[12; 32]));
        log.rekey(new.clone()).unwrap();
        for _ in 0..40 {
            log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
                .unwrap();
        }
        let before = verify(tmp.path(), &new.verifying_key(), None).unwrap();
        let old_anchor = (5u64, {
            let line = fs::read_to_string(seg1(tmp.path()))
                .unwrap()
                .lines()
                .nth(4)
                .unwrap()
                .to_string();
            record_hash(line.as_bytes())
        });
        let segs_before = segments(tmp.path()).unwrap().len();
        // Past the key change: the anchor must name the new key.
        let pruned = log.prune(tmp.path(), 60, "operator:test", &new).unwrap();
        log.close().unwrap();
        assert!(
            pruned.segments > 0 && pruned.first == 1 && pruned.last < 60,
            "{pruned:?}"
        );
        assert_eq!(
            segments(tmp.path()).unwrap().len(),
            segs_before - pruned.segments
        );
        let after = verify(tmp.path(), &new.verifying_key(), None).unwrap();
        assert!(after.records > before.records);
        assert_eq!(after.signed, after.records);
        let e = verify(tmp.path(), &new.verifying_key(), Some(old_anchor)).unwrap_err();
        assert!(e.to_string().contains("was pruned"), "{e}");
        let acts: Vec<String> = read_records(tmp.path())
            .unwrap()
            .map(|r| r.unwrap().action)
            .collect();
        assert_eq!(acts.iter().filter(|a| *a == "audit.prune").count(), 1);
        // Opened again and written to: still one chain.
        let log = AuditLog::open(tmp.path(), new.clone(), small()).unwrap();
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        verify(tmp.path(), &new.verifying_key(), None).unwrap();
        // An edited anchor is refused.
        let path = tmp.path().join("anchor");
        let text = fs::read_to_string(&path).unwrap();
        let a: Anchor = serde_json::from_str(&text).unwrap();
        fs::write(
            &path,
            text.replace(
                &format!("\"seq\": {}", a.seq),
                &format!("\"seq\": {}", a.seq + 1),
            ),
        )
        .unwrap();
        assert!(verify(tmp.path(), &new.verifying_key(), None).is_err());
    }

    #[test]
    fn a_follower_reads_each_record_once_across_segments_and_waits_for_a_torn_one() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(
            tmp.path(),
            AuditOptions {
                segment_bytes: 2000,
                ..Default::default()
            },
        );
        let mut cursor = Cursor::default();
        let mut seen: Vec<u64> = Vec::new();
        let follow = |cursor: &mut Cursor| -> Vec<u64> {
            read_since(tmp.path(), cursor)
                .unwrap()
                .into_iter()
                .map(|r| r.unwrap().seq)
                .collect()
        };
        for round in 0..4 {
            for _ in 0..10 * round {
                log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
                    .unwrap();
            }
            seen.extend(follow(&mut cursor));
        }
        assert!(segments(tmp.path()).unwrap().len() > 2);
        // Closing writes its own record.
        log.close().unwrap();
        seen.extend(follow(&mut cursor));
        assert!(follow(&mut cursor).is_empty());
        let all: Vec<u64> = read_records(tmp.path())
            .unwrap()
            .map(|r| r.unwrap().seq)
            .collect();
        assert_eq!(seen, all, "every record once, in order");
        // Half a record (a writer caught mid-line) is left for the next look.
        let (_, last) = segments(tmp.path()).unwrap().pop().unwrap();
        let mut f = OpenOptions::new().append(true).open(&last).unwrap();
        std::io::Write::write_all(&mut f, b"{\"v\":1,").unwrap();
        let before = cursor;
        assert!(follow(&mut cursor).is_empty());
        assert_eq!(cursor, before);
        // From the newest segment: only its records.
        let mut newest = Cursor::newest_segment(tmp.path());
        assert!(follow(&mut newest).len() < all.len());
    }

    #[test]
    fn records_since_a_time_are_every_record_from_then_across_segments() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(
            tmp.path(),
            AuditOptions {
                segment_bytes: 2000,
                ..Default::default()
            },
        );
        for i in 0..60 {
            if i == 30 {
                std::thread::sleep(Duration::from_millis(1100));
            }
            log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
                .unwrap();
        }
        log.close().unwrap();
        assert!(segments(tmp.path()).unwrap().len() > 3);
        let all: Vec<Record> = read_records(tmp.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let seqs = |r: Vec<Record>| r.into_iter().map(|r| r.seq).collect::<Vec<_>>();
        assert_eq!(
            seqs(records_since(tmp.path(), SystemTime::UNIX_EPOCH).unwrap()),
            seqs(all.clone())
        );
        let later = SystemTime::now() + Duration::from_secs(3600);
        assert!(records_since(tmp.path(), later).unwrap().is_empty());
        // From a record in the middle: it and every later one, none before its time.
        let mid = all
            .iter()
            .find(|r| r.action == "call")
            .unwrap()
            .time_system()
            .unwrap()
            + Duration::from_millis(1000);
        let want: Vec<u64> = all
            .iter()
            .filter(|r| r.time_system().unwrap() >= mid)
            .map(|r| r.seq)
            .collect();
        assert!(!want.is_empty() && want.len() < all.len());
        assert_eq!(seqs(records_since(tmp.path(), mid).unwrap()), want);
    }

    #[test]
    fn a_tail_of_zeros_is_read_as_empty() {
        let tmp = tempfile::tempdir().unwrap();
        let before = write_some(tmp.path());
        let f = OpenOptions::new()
            .append(true)
            .open(seg1(tmp.path()))
            .unwrap();
        f.set_len(f.metadata().unwrap().len() + 8192).unwrap();
        drop(f);
        let log = open(tmp.path(), AuditOptions::default());
        log.close().unwrap();
        verify(tmp.path(), &vk(), Some((before.head_seq, before.head_hash))).unwrap();
        let recs: Vec<Record> = read_records(tmp.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(recs.iter().all(|r| r.action != "recovered"));
        assert!(fs::read_dir(tmp.path()).unwrap().all(|e| !e
            .unwrap()
            .file_name()
            .to_string_lossy()
            .starts_with("quarantine")));
    }

    #[test]
    fn records_that_race_close_end_under_the_clean_checkpoint() {
        let tmp = tempfile::tempdir().unwrap();
        for _ in 0..20 {
            let log = Arc::new(open(tmp.path(), AuditOptions::default()));
            let racer = {
                let log = log.clone();
                std::thread::spawn(move || {
                    while log
                        .append(ev("capsule:r", Decision::Allowed), Durability::Sync)
                        .is_ok()
                    {}
                })
            };
            std::thread::yield_now();
            log.close().unwrap();
            racer.join().unwrap();
            // Whatever went in is signed: the next open finds nothing after the clean stop.
            drop(AuditLog::open(tmp.path(), key(), AuditOptions::default()).unwrap());
        }
        verify(tmp.path(), &vk(), None).unwrap();
    }

    #[test]
    fn the_recorded_state_is_the_newest_signed_one_whatever_head_was_put_back() {
        let tmp = tempfile::tempdir().unwrap();
        let cell: StateCell = Arc::new(Mutex::new(Some((1, [1; 32]))));
        let opts = || AuditOptions {
            state: Some(cell.clone()),
            ..Default::default()
        };
        let log = open(tmp.path(), opts());
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        let old_head = fs::read(tmp.path().join("head")).unwrap();
        *cell.lock().unwrap() = Some((2, [2; 32]));
        let log = open(tmp.path(), opts());
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        assert_eq!(
            recorded_state(tmp.path(), &vk()).unwrap(),
            Some((2, [2; 32]))
        );
        // The old head put back vouches for nothing older: the log's checkpoints are newer.
        fs::write(tmp.path().join("head"), old_head).unwrap();
        assert_eq!(
            recorded_state(tmp.path(), &vk()).unwrap(),
            Some((2, [2; 32]))
        );
    }

    #[test]
    fn a_record_appended_after_a_clean_stop_is_refused_by_open_and_verify() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path());
        forge_next(tmp.path());
        let e = verify(tmp.path(), &vk(), None).unwrap_err();
        assert!(e.to_string().contains("clean stop"), "{e}");
        let Err(e) = AuditLog::open(tmp.path(), key(), AuditOptions::default()) else {
            panic!("a log with a forged tail opened")
        };
        assert!(e.to_string().contains("did not write them"), "{e}");
    }

    #[test]
    fn an_unsigned_tail_after_an_unclean_stop_is_reported_then_adopted_in_a_signed_record() {
        let tmp = tempfile::tempdir().unwrap();
        let before = write_some(tmp.path());
        // A crash: the head file at #4, one record after the last checkpoint in the log.
        unclean_head_at(tmp.path(), 4);
        forge_next(tmp.path());
        let r = verify(tmp.path(), &vk(), None).unwrap();
        assert_eq!((r.signed, r.records), (before.records, before.records + 1));
        let log = open(tmp.path(), AuditOptions::default());
        log.close().unwrap();
        let r = verify(tmp.path(), &vk(), None).unwrap();
        assert_eq!(r.signed, r.records);
        let reason = recovered_reason(tmp.path());
        let unsigned = before.records + 1;
        assert!(
            reason.contains(&format!("adopted records #{unsigned}..#{unsigned}")),
            "{reason}"
        );
    }

    #[test]
    fn a_missing_or_edited_head_is_an_error_on_a_log_with_records() {
        let tmp = tempfile::tempdir().unwrap();
        write_some(tmp.path());
        let head = fs::read_to_string(tmp.path().join("head")).unwrap();
        // Flipping the clean flag by hand breaks the head's signature.
        fs::write(
            tmp.path().join("head"),
            head.replace("\"clean\": true", "\"clean\": false"),
        )
        .unwrap();
        assert!(verify(tmp.path(), &vk(), None).is_err());
        assert!(AuditLog::open(tmp.path(), key(), AuditOptions::default()).is_err());
        fs::remove_file(tmp.path().join("head")).unwrap();
        let e = verify(tmp.path(), &vk(), None).unwrap_err();
        assert!(e.to_string().contains("no signed `head`"), "{e}");
        let Err(e) = AuditLog::open(tmp.path(), key(), AuditOptions::default()) else {
            panic!("a log without its head opened")
        };
        assert!(e.to_string().contains("missing"), "{e}");
        // An empty log is fine without one, and gets one at once.
        let empty = tempfile::tempdir().unwrap();
        let log = open(empty.path(), AuditOptions::default());
        assert!(empty.path().join("head").exists());
        log.close().unwrap();
        verify(empty.path(), &vk(), None).unwrap();
    }

    #[test]
    fn sync_records_are_on_disk_when_append_returns_and_group_records_soon_after() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(tmp.path(), AuditOptions::default());
        for _ in 0..50 {
            let syncs = log.syncs();
            let r = log
                .append(ev("capsule:s", Decision::Allowed), Durability::Sync)
                .unwrap();
            // Counted by the sync thread after its fdatasync, not read back from the page cache.
            assert!(log.durable_seq() >= r.seq, "acknowledged before its sync");
            assert!(log.syncs() > syncs);
        }
        let r = log
            .append(ev("capsule:g", Decision::Allowed), Durability::Group)
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(2);
        while log.durable_seq() < r.seq {
            assert!(Instant::now() < deadline, "group record not made durable");
            std::thread::yield_now();
        }
        log.close().unwrap();
    }

    #[test]
    fn group_records_are_durable_in_time_under_a_steady_stream_and_keep_their_order() {
        let tmp = tempfile::tempdir().unwrap();
        let log = Arc::new(open(tmp.path(), AuditOptions::default()));
        log.submit(
            ev("capsule:early", Decision::Allowed),
            Durability::Group,
            |_| {},
        );
        let stop = Arc::new(AtomicBool::new(false));
        let producer = {
            let (log, stop) = (log.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    log.submit(
                        ev("capsule:steady", Decision::Allowed),
                        Durability::Group,
                        |_| {},
                    );
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        // A stream that never pauses must not postpone the group commit: the record is on disk
        // while the stream still runs (the deadline is many group intervals, not a timing).
        let deadline = Instant::now() + Duration::from_secs(10);
        while !fs::read_to_string(seg1(tmp.path()))
            .unwrap()
            .contains("capsule:early")
        {
            assert!(
                Instant::now() < deadline && !producer.is_finished(),
                "not durable while the stream went on"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        producer.join().unwrap();
        // A Group record, then a Sync one from the same thread: chained in that order.
        log.submit(
            ev("capsule:first", Decision::Allowed),
            Durability::Group,
            |_| {},
        );
        log.append(ev("capsule:second", Decision::Allowed), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        let seq_of = |actor: &str| {
            read_records(tmp.path())
                .unwrap()
                .map(Result::unwrap)
                .find(|r| r.actor == actor)
                .unwrap()
                .seq
        };
        assert!(seq_of("capsule:first") < seq_of("capsule:second"));
        verify(tmp.path(), &vk(), None).unwrap();
    }

    #[test]
    fn a_backlog_the_writer_has_not_taken_makes_the_log_unavailable_and_loses_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        // A group commit interval long enough that the writer leaves the buffer alone.
        let log = open(
            tmp.path(),
            AuditOptions {
                group_commit: Duration::from_secs(30),
                chain_every: usize::MAX,
                ..Default::default()
            },
        );
        for _ in 0..MAX_BUFFERED - 1 {
            log.submit(
                ev("capsule:busy", Decision::Allowed),
                Durability::Group,
                |_| {},
            );
        }
        assert!(log.is_available());
        log.submit(
            ev("capsule:busy", Decision::Allowed),
            Durability::Group,
            |_| {},
        );
        assert!(!log.is_available(), "a full backlog must stop new calls");
        log.close().unwrap();
        let r = verify(tmp.path(), &vk(), None).unwrap();
        assert!(r.records >= MAX_BUFFERED as u64, "{r:?}");
    }

    #[test]
    fn a_failing_disk_makes_the_log_unavailable_until_it_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let log = open(
            tmp.path(),
            AuditOptions {
                fail_sync: Some(fail.clone()),
                ..Default::default()
            },
        );
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        fail.store(true, Ordering::Relaxed);
        let e = log
            .append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap_err();
        assert!(matches!(e, AuditError::Unavailable(_)), "{e}");
        assert!(!log.is_available());
        assert!(log
            .append(ev("capsule:a", Decision::Allowed), Durability::Group)
            .is_err());
        fail.store(false, Ordering::Relaxed);
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        assert!(log.is_available());
        log.close().unwrap();
        // Nothing was lost: all four records are there, chained.
        let r = verify(tmp.path(), &vk(), None).unwrap();
        let calls = read_records(tmp.path())
            .unwrap()
            .filter(|r| r.as_ref().unwrap().action == "call")
            .count();
        assert_eq!(calls, 4, "{r:?}");
    }

    /// A record of `action` by `actor` with a reason of `len` bytes.
    fn sized(actor: &str, action: &'static str, decision: Decision, len: usize) -> Event {
        Event {
            action: action.into(),
            reason: "r".repeat(len),
            ..ev(actor, decision)
        }
    }

    #[test]
    fn a_full_disk_admits_only_reserve_records_says_so_once_and_recovers() {
        let tmp = tempfile::tempdir().unwrap();
        let full = Arc::new(AtomicBool::new(false));
        let log = open(
            tmp.path(),
            AuditOptions {
                fail_alloc: Some(full.clone()),
                // Each Group append below waits for its record to be chained.
                group_commit: Duration::from_millis(1),
                ..Default::default()
            },
        );
        let start = log.space();
        assert!(
            start.reserve_bytes.is_some_and(|b| b >= RESERVE + AHEAD),
            "this test needs a file system that can preallocate: {start:?}"
        );
        full.store(true, Ordering::Relaxed);
        // Allowed records go on until an allocation after them fails and what is left is the
        // reserve; then they are refused.
        let mut allowed = 0;
        let refusal = loop {
            match log.append(
                sized("capsule:a", "call", Decision::Allowed, 4000),
                Durability::Group,
            ) {
                Ok(_) => allowed += 1,
                Err(e) => break e,
            }
            assert!(allowed < 10_000, "never refused");
        };
        assert!(matches!(refusal, AuditError::Unavailable(_)), "{refusal}");
        assert!(refusal.to_string().contains("full"), "{refusal}");
        assert!(!log.is_available());
        assert!(log.space().disk_full);
        // At least RESERVE bytes of denials and revocations still go in, durably.
        log.append(
            sized("operator:root", "token.revoke", Decision::Allowed, 10),
            Durability::Sync,
        )
        .unwrap();
        // Records of at most RECORD bytes (checked below): this many fit in the reserve.
        const RECORD: u64 = 4300;
        for i in 0..RESERVE / RECORD {
            // Distinct actors: a flood of one actor's denials would be coalesced.
            let actor = format!("capsule:d{i}");
            log.append(
                sized(&actor, "call", Decision::Denied, 4000),
                Durability::Group,
            )
            .unwrap_or_else(|e| panic!("denial #{i} refused: {e}"));
        }
        log.append(
            sized("capsule:z", "call", Decision::Denied, 10),
            Durability::Sync,
        )
        .unwrap();
        // The reserve is bounded too.
        let mut extra = 0;
        while log
            .append(
                sized(&format!("capsule:e{extra}"), "call", Decision::Denied, 4000),
                Durability::Group,
            )
            .is_ok()
        {
            extra += 1;
            assert!(extra < 10_000, "the reserve never ran out");
        }
        assert!(log
            .append(
                sized("capsule:a", "call", Decision::Allowed, 10),
                Durability::Sync
            )
            .is_err());
        // Space comes back: within a few of the sync thread's once-a-second looks, every
        // record is admitted again.
        full.store(false, Ordering::Relaxed);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !log.is_available() {
            assert!(
                Instant::now() < deadline,
                "space never came back: {:?}",
                log.space()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        log.append(ev("capsule:a", Decision::Allowed), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        verify(tmp.path(), &vk(), None).unwrap();
        let actions: Vec<String> = read_records(tmp.path())
            .unwrap()
            .map(|r| r.unwrap().action)
            .collect();
        let count = |a: &str| actions.iter().filter(|x| *x == a).count();
        assert_eq!(count("audit.disk-full"), 1, "said once per episode");
        assert_eq!(count("audit.disk-ok"), 1);
        assert_eq!(count("token.revoke"), 1);
        let full_at = actions.iter().position(|a| a == "audit.disk-full");
        let ok_at = actions.iter().position(|a| a == "audit.disk-ok");
        assert!(full_at < ok_at);
        // Nothing but reserve records between the two.
        let (f, o) = (full_at.unwrap(), ok_at.unwrap());
        let records: Vec<Record> = read_records(tmp.path())
            .unwrap()
            .map(|r| r.unwrap())
            .collect();
        for r in &records[f + 1..o] {
            assert!(
                r.decision == Decision::Denied || RESERVE_ACTIONS.contains(&r.action.as_str()),
                "{r:?}"
            );
        }
        assert!(allowed > 0);
        let longest = fs::read_to_string(seg1(tmp.path()))
            .unwrap()
            .lines()
            .map(str::len)
            .max()
            .unwrap();
        assert!(longest < RECORD as usize, "{longest}");
    }

    #[test]
    fn a_disk_failing_under_concurrent_writers_loses_nothing_and_keeps_one_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let fail = Arc::new(AtomicBool::new(false));
        let log = Arc::new(open(
            tmp.path(),
            AuditOptions {
                fail_sync: Some(fail.clone()),
                ..Default::default()
            },
        ));
        let stop = Arc::new(AtomicBool::new(false));
        let attempts = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(AtomicU64::new(0));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let (log, stop) = (log.clone(), stop.clone());
                let (attempts, failures) = (attempts.clone(), failures.clone());
                std::thread::spawn(move || {
                    while !stop.load(Ordering::Relaxed) {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        let r = log.append(
                            ev(&format!("capsule:t{t}"), Decision::Allowed),
                            Durability::Sync,
                        );
                        if r.is_err() {
                            failures.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                })
            })
            .collect();
        // Each phase lasts until the writers have been seen in it, not for a time.
        let wait_for = |what: &str, done: &dyn Fn() -> bool| {
            let deadline = Instant::now() + Duration::from_secs(20);
            while !done() {
                assert!(Instant::now() < deadline, "never saw {what}");
                std::thread::yield_now();
            }
        };
        let tried = || attempts.load(Ordering::Relaxed);
        wait_for("appends before the failure", &|| tried() >= 50);
        fail.store(true, Ordering::Relaxed);
        wait_for("a refused append", &|| {
            failures.load(Ordering::Relaxed) >= 8
        });
        fail.store(false, Ordering::Relaxed);
        let resumed = tried();
        wait_for("appends after the failure", &|| tried() >= resumed + 50);
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        log.close().unwrap();
        assert!(
            failures.load(Ordering::Relaxed) > 0,
            "the failure was not seen"
        );
        // Every record, refused while the disk failed or not, is in the log once, chained.
        verify(tmp.path(), &vk(), None).unwrap();
        let calls = read_records(tmp.path())
            .unwrap()
            .filter(|r| r.as_ref().unwrap().action == "call")
            .count() as u64;
        assert_eq!(calls, attempts.load(Ordering::Relaxed));
    }

    fn call_by(token: &str) -> Event {
        Event {
            token: Some(token.into()),
            ..ev("capsule:a", Decision::Allowed)
        }
    }

    /// (records of calls, calls they account for) in the log.
    fn calls_in(dir: &Path) -> (usize, u64) {
        let calls: Vec<Record> = read_records(dir)
            .unwrap()
            .map(Result::unwrap)
            .filter(|r| r.action == "call")
            .collect();
        (
            calls.len(),
            calls.iter().map(|r| r.count.unwrap_or(1)).sum(),
        )
    }

    #[test]
    fn calls_summed_up_when_the_disk_fills_are_still_accounted_for() {
        let tmp = tempfile::tempdir().unwrap();
        let full = Arc::new(AtomicBool::new(false));
        let log = open(
            tmp.path(),
            AuditOptions {
                fail_alloc: Some(full.clone()),
                group_commit: Duration::from_millis(1),
                ..Default::default()
            },
        );
        assert!(
            log.space().reserve_bytes.is_some(),
            "this test needs a file system that can preallocate"
        );
        // The token's first use, recorded exactly while there is space.
        log.submit_call(call_by("t1"), 0);
        // Then the disk fills: ordinary records are refused.
        full.store(true, Ordering::Relaxed);
        let mut n = 0;
        while log
            .append(
                sized("capsule:b", "token.request", Decision::Allowed, 4000),
                Durability::Group,
            )
            .is_ok()
        {
            n += 1;
            assert!(n < 10_000, "never refused");
        }
        // Calls allowed just before are summed up now: their summary is still written.
        for i in 1..=40u64 {
            log.submit_call(call_by("t1"), i);
        }
        log.close().unwrap();
        verify(tmp.path(), &vk(), None).unwrap();
        assert_eq!(calls_in(tmp.path()).1, 41, "every call accounted for");
    }

    #[test]
    fn repeated_calls_alike_are_summed_up_and_every_call_is_accounted_for() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(tmp.path(), AuditOptions::default());
        for i in 0..5000u64 {
            log.submit_call(call_by("t1"), i);
            // A second token: its first use is recorded exactly too.
            if i % 10 == 0 {
                log.submit_call(call_by("t2"), i);
            }
        }
        log.close().unwrap();
        verify(tmp.path(), &vk(), None).unwrap();
        let (records, calls) = calls_in(tmp.path());
        assert_eq!(calls, 5500, "every call accounted for");
        assert!(records < 200, "{records} records for 5500 calls alike");
        let recs: Vec<Record> = read_records(tmp.path())
            .unwrap()
            .map(Result::unwrap)
            .filter(|r| r.action == "call")
            .collect();
        // Each token's first use exactly, then summaries naming their count and call ids.
        for t in ["t1", "t2"] {
            let first = recs.iter().find(|r| r.token.as_deref() == Some(t)).unwrap();
            assert_eq!(first.count, None, "{first:?}");
        }
        let summary = recs.iter().find(|r| r.count.is_some()).unwrap();
        assert!(
            summary.reason.contains(" calls (test) from "),
            "{summary:?}"
        );
        assert!(summary.reason.contains("call ids "), "{summary:?}");

        // per_call keeps one record per call.
        let tmp = tempfile::tempdir().unwrap();
        let log = open(
            tmp.path(),
            AuditOptions {
                per_call: true,
                ..Default::default()
            },
        );
        for i in 0..500u64 {
            log.submit_call(call_by("t1"), i);
        }
        log.close().unwrap();
        assert_eq!(calls_in(tmp.path()), (500, 500));
    }

    #[test]
    fn huge_fields_are_cut_to_a_bounded_record_that_names_their_length_and_hash() {
        let tmp = tempfile::tempdir().unwrap();
        let log = open(tmp.path(), AuditOptions::default());
        let target = format!("localhost://echo/{}", "é".repeat(500_000));
        log.append(
            Event {
                resource: target.clone(),
                reason: "x".repeat(1 << 20),
                actor: "capsule:a".repeat(1000).into(),
                ..ev("capsule:a", Decision::Denied)
            },
            Durability::Sync,
        )
        .unwrap();
        log.close().unwrap();
        verify(tmp.path(), &vk(), None).unwrap();
        let line = fs::read_to_string(seg1(tmp.path()))
            .unwrap()
            .lines()
            .find(|l| l.contains("\"denied\""))
            .unwrap()
            .to_string();
        assert!(line.len() < 8 * 1024, "{} bytes", line.len());
        let rec: Record = serde_json::from_str(&line).unwrap();
        let hash = hex::encode(&Sha256::digest(target.as_bytes())[..16]);
        assert!(
            rec.resource
                .ends_with(&format!("…[{} bytes, sha256:{hash}]", target.len())),
            "{}",
            &rec.resource[rec.resource.len() - 80..]
        );
        assert!(rec.resource.starts_with("localhost://echo/é"));
    }

    #[test]
    fn a_denial_flood_is_coalesced_into_counted_records() {
        let tmp = tempfile::tempdir().unwrap();
        let log = Arc::new(open(tmp.path(), AuditOptions::default()));
        for _ in 0..100_000 {
            log.submit(
                ev("capsule:flood", Decision::Denied),
                Durability::Group,
                |_| {},
            );
        }
        log.append(ev("capsule:calm", Decision::Denied), Durability::Sync)
            .unwrap();
        log.close().unwrap();
        let recs: Vec<Record> = read_records(tmp.path())
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert!(recs.len() < 200, "{} records for a flood", recs.len());
        let counted: u64 = recs.iter().filter_map(|r| r.count).sum();
        let single = recs
            .iter()
            .filter(|r| r.actor == "capsule:flood" && r.count.is_none())
            .count() as u64;
        assert_eq!(counted + single, 100_000);
        assert!(recs.iter().any(|r| r.actor == "capsule:calm"));
        verify(tmp.path(), &vk(), None).unwrap();
    }

    #[test]
    fn concurrent_writers_make_one_gap_free_chain() {
        let tmp = tempfile::tempdir().unwrap();
        let log = Arc::new(open(tmp.path(), AuditOptions::default()));
        let threads: Vec<_> = (0..8)
            .map(|t| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        log.append(
                            ev(&format!("capsule:t{t}"), Decision::Allowed),
                            Durability::Sync,
                        )
                        .unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        log.close().unwrap();
        let r = verify(tmp.path(), &vk(), None).unwrap();
        assert!(r.records >= 1600);
    }

    #[test]
    fn capsule_actors_are_matched_by_name() {
        assert!(actor_is_capsule("capsule:echo@bafk", "echo"));
        assert!(actor_is_capsule("capsule:echo", "echo"));
        assert!(!actor_is_capsule("capsule:echo2", "echo"));
        assert!(!actor_is_capsule("operator:uid=0", "echo"));
    }
}
