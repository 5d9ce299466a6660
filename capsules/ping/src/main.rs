//! `ping`: measures the latency of calls through the supervisor to `echo`. It keeps a fixed
//! number of calls in flight on one connection, checks that every answer is its own payload, and
//! prints latency percentiles and throughput. Latencies are counted in a histogram of fixed size
//! (percentiles exact to within 0.8 %, rounded up), so a run of any length fits its memory limit.
//!
//! Exit status: 0 when every call succeeded, 1 when any failed, 2 for a usage error.

use std::collections::HashMap;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use elastos_sdk::{Action, CallError, CallId, Capsule, ErrorKind, Grant, Transport};

const USAGE: &str = "\
usage: ping [--count N] [--size BYTES] [--concurrency C] [--target URI] [--json]
            [--wait-for-provider SECS] [--token TOKEN] [--tokens]

  --count N                calls to make (default 1000)
  --size BYTES             payload size (default 64)
  --concurrency C          calls kept in flight (default 1)
  --target URI             where to call (default localhost://echo/ping)
  --json                   print one JSON object instead of a line
  --wait-for-provider SECS retry while nobody serves the target yet (default 10)
  --token TOKEN            call with this token (as `elastos token issue` prints it)
                           instead of asking the supervisor; `none`: with no token
  --tokens                 measure token requests for the target instead of calls:
                           each of the count asks the supervisor for a fresh token";

/// Only the first few failures are printed: a dead provider would otherwise flood stderr.
const ERRORS_SHOWN: u64 = 5;
const RETRY_EVERY: Duration = Duration::from_millis(100);

#[derive(Debug, PartialEq)]
struct Options {
    count: u64,
    size: usize,
    concurrency: usize,
    target: String,
    json: bool,
    wait_for_provider: Duration,
    /// The `SignedToken` bytes to call with (empty: none at all), instead of a granted one.
    token: Option<Vec<u8>>,
    /// Measure `requestToken` round trips instead of calls.
    tokens: bool,
}

enum Parsed {
    Run(Options),
    Help,
}

fn parse_args(args: impl IntoIterator<Item = String>) -> Result<Parsed, String> {
    let mut o = Options {
        count: 1000,
        size: 64,
        concurrency: 1,
        target: "localhost://echo/ping".into(),
        json: false,
        wait_for_provider: Duration::from_secs(10),
        token: None,
        tokens: false,
    };
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
            _ => (arg, None),
        };
        let mut value = |name: &str| -> Result<String, String> {
            inline
                .clone()
                .or_else(|| args.next())
                .ok_or_else(|| format!("{name} needs a value"))
        };
        fn number<N: std::str::FromStr>(flag: &str, v: String) -> Result<N, String> {
            v.parse()
                .map_err(|_| format!("{flag}: `{v}` is not a non-negative whole number"))
        }
        match flag.as_str() {
            "--count" => o.count = number(&flag, value(&flag)?)?,
            "--size" => o.size = number(&flag, value(&flag)?)?,
            "--concurrency" => o.concurrency = number(&flag, value(&flag)?)?,
            "--target" => o.target = value(&flag)?,
            "--wait-for-provider" => {
                o.wait_for_provider = Duration::from_secs(number(&flag, value(&flag)?)?)
            }
            "--token" => {
                use base64::Engine;
                let text = value(&flag)?;
                o.token = Some(match text.as_str() {
                    "none" => Vec::new(),
                    t => base64::engine::general_purpose::URL_SAFE_NO_PAD
                        .decode(t.trim())
                        .map_err(|_| "--token takes a token as `elastos token issue` prints it")?,
                });
            }
            "--json" if inline.is_none() => o.json = true,
            "--tokens" if inline.is_none() => o.tokens = true,
            "-h" | "--help" => return Ok(Parsed::Help),
            other => return Err(format!("unknown argument `{other}`")),
        }
    }
    if o.concurrency == 0 {
        return Err("--concurrency must be at least 1".into());
    }
    Ok(Parsed::Run(o))
}

fn main() -> ExitCode {
    let options = match parse_args(std::env::args().skip(1)) {
        Ok(Parsed::Run(o)) => o,
        Ok(Parsed::Help) => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("ping: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let mut capsule = match Capsule::connect() {
        Ok(c) => c,
        Err(e) => {
            eprintln!("ping: {e}");
            return ExitCode::FAILURE;
        }
    };
    // What the supervisor says: the request waits for the person (who answers elsewhere).
    capsule.on_waiting(|| eprintln!("ping: waiting for permission"));
    if let Some(token) = &options.token {
        capsule.add_grant(Grant {
            token: token.clone(),
            resource: options.target.clone(),
            actions: vec![Action::Read],
            expiry: i64::MAX,
        });
    }
    let result = if options.tokens {
        request_tokens(&mut capsule, &options)
    } else {
        run(&mut capsule, &options)
    };
    match result {
        Ok(report) => {
            println!(
                "{}",
                if options.json {
                    report.json()
                } else {
                    report.line()
                }
            );
            if report.errors == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("ping: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The payload of call `seq`: a fixed pattern with the sequence number stamped in front, so an
/// answer that belongs to another call (or was damaged) does not compare equal.
struct Payloads {
    base: Vec<u8>,
    buf: Vec<u8>,
}

impl Payloads {
    fn new(size: usize) -> Self {
        let base: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
        Payloads {
            buf: base.clone(),
            base,
        }
    }

    fn stamp(seq: u64, size: usize) -> ([u8; 8], usize) {
        (seq.to_le_bytes(), size.min(8))
    }

    fn make(&mut self, seq: u64) -> &[u8] {
        let (bytes, n) = Self::stamp(seq, self.buf.len());
        self.buf[..n].copy_from_slice(&bytes[..n]);
        &self.buf
    }

    fn matches(&self, seq: u64, answer: &[u8]) -> bool {
        let (bytes, n) = Self::stamp(seq, self.base.len());
        answer.len() == self.base.len()
            && answer[..n] == bytes[..n]
            && answer[n..] == self.base[n..]
    }
}

/// Latencies in nanoseconds, counted in buckets a 128th of a doubling wide (under 0.8 % of the
/// value), so a run of any length holds ~60 KiB: keeping every call's latency stopped a WASM ping
/// of 100 M calls at its memory limit, and would have a native one.
struct Histogram {
    counts: Vec<u64>,
    n: u64,
    max: u64,
}

/// Values below 2^SUB_BITS have a bucket each; above, each doubling has 2^(SUB_BITS-1) = 128.
const SUB_BITS: u32 = 8;

impl Histogram {
    fn new() -> Histogram {
        Histogram {
            counts: vec![0; Histogram::bucket(u64::MAX) + 1],
            n: 0,
            max: 0,
        }
    }

    fn bucket(v: u64) -> usize {
        let sub = 1u64 << SUB_BITS;
        if v < sub {
            return v as usize;
        }
        let half = sub / 2;
        let shift = (63 - v.leading_zeros()) - (SUB_BITS - 1);
        (sub + u64::from(shift - 1) * half + ((v >> shift) - half)) as usize
    }

    /// The largest value that falls in bucket `b`.
    fn upper(b: usize) -> u64 {
        let sub = 1usize << SUB_BITS;
        if b < sub {
            return b as u64;
        }
        let half = sub / 2;
        let shift = ((b - sub) / half + 1) as u32;
        let top = ((b - sub) % half + half) as u64;
        (top << shift) + ((1u64 << shift) - 1)
    }

    fn record(&mut self, ns: u64) {
        self.counts[Histogram::bucket(ns)] += 1;
        self.n += 1;
        self.max = self.max.max(ns);
    }

    /// The nearest-rank percentile, rounded up to its bucket's top (never above the maximum):
    /// at most 0.8 % above the exact value, never below it.
    fn percentile(&self, p: u64) -> u64 {
        if self.n == 0 {
            return 0;
        }
        let rank = (p * self.n).div_ceil(100).max(1);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Histogram::upper(b).min(self.max);
            }
        }
        self.max
    }
}

struct Report {
    /// `calls`, or `token requests` (`--tokens`).
    what: &'static str,
    count: u64,
    size: usize,
    concurrency: usize,
    /// Of the successful calls.
    latencies: Histogram,
    elapsed: Duration,
    completed: u64,
    errors: u64,
}

impl Report {
    /// Nearest-rank percentile in microseconds.
    fn percentile_us(&self, p: u64) -> u64 {
        self.latencies.percentile(p) / 1000
    }

    fn max_us(&self) -> u64 {
        self.latencies.max / 1000
    }

    fn calls_per_s(&self) -> f64 {
        let s = self.elapsed.as_secs_f64();
        if s > 0.0 {
            self.completed as f64 / s
        } else {
            0.0
        }
    }

    fn line(&self) -> String {
        format!(
            "ping: {} {} of {} bytes at concurrency {}: p50 {} us, p99 {} us, max {} us, {:.0} calls/s, {} errors",
            self.count,
            self.what,
            self.size,
            self.concurrency,
            self.percentile_us(50),
            self.percentile_us(99),
            self.max_us(),
            self.calls_per_s(),
            self.errors
        )
    }

    fn json(&self) -> String {
        format!(
            "{{\"count\":{},\"size\":{},\"concurrency\":{},\"p50_us\":{},\"p99_us\":{},\"max_us\":{},\"p50_ns\":{},\"p99_ns\":{},\"calls_per_s\":{:.1},\"errors\":{}}}",
            self.count,
            self.size,
            self.concurrency,
            self.percentile_us(50),
            self.percentile_us(99),
            self.max_us(),
            self.latencies.percentile(50),
            self.latencies.percentile(99),
            self.calls_per_s(),
            self.errors
        )
    }
}

struct Errors {
    count: u64,
}

impl Errors {
    fn record(&mut self, seq: u64, what: &dyn std::fmt::Display) {
        self.count += 1;
        if self.count <= ERRORS_SHOWN {
            eprintln!("ping: call {seq}: {what}");
        }
        if self.count == ERRORS_SHOWN + 1 {
            eprintln!("ping: further errors are counted, not shown");
        }
    }
}

/// Calls once until the provider answers, so that start-up order does not count as errors and
/// the token request stays out of the measurement.
fn wait_for_provider<T: Transport>(
    capsule: &mut Capsule<T>,
    o: &Options,
    payloads: &mut Payloads,
) -> Result<(), String> {
    let give_up = Instant::now() + o.wait_for_provider;
    loop {
        let payload = payloads.make(u64::MAX).to_vec();
        match capsule.call(&o.target, Action::Read, &payload) {
            Ok(answer) if payloads.matches(u64::MAX, &answer) => return Ok(()),
            Ok(_) => return Err(format!("{}: the answer differs from the payload", o.target)),
            Err(e)
                if matches!(e.kind, ErrorKind::NotFound | ErrorKind::Unavailable)
                    && Instant::now() < give_up =>
            {
                std::thread::sleep(RETRY_EVERY);
            }
            Err(e) => return Err(format!("{}: {e}", o.target)),
        }
    }
}

/// `--tokens`: each of `count` rounds asks the supervisor for a token for the target, one at a
/// time (what a capsule's first call to a namespace costs it, the decision included).
fn request_tokens<T: Transport>(capsule: &mut Capsule<T>, o: &Options) -> Result<Report, String> {
    let mut errors = Errors { count: 0 };
    let mut latencies = Histogram::new();
    let start = Instant::now();
    for seq in 0..o.count {
        let began = Instant::now();
        match capsule.request_token(
            &o.target,
            &[Action::Read],
            "ping --tokens",
            Duration::from_secs(600),
        ) {
            Ok(_) => latencies.record(began.elapsed().as_nanos() as u64),
            Err(e) => {
                errors.record(seq, &e);
                if !capsule.is_connected() {
                    break;
                }
            }
        }
    }
    Ok(Report {
        what: "token requests",
        count: o.count,
        size: 0,
        concurrency: 1,
        latencies,
        elapsed: start.elapsed(),
        completed: o.count,
        errors: errors.count,
    })
}

fn run<T: Transport>(capsule: &mut Capsule<T>, o: &Options) -> Result<Report, String> {
    let mut payloads = Payloads::new(o.size);
    wait_for_provider(capsule, o, &mut payloads)?;

    let mut errors = Errors { count: 0 };
    let mut latencies = Histogram::new();
    let mut in_flight: HashMap<CallId, (u64, Instant)> = HashMap::with_capacity(o.concurrency);
    let mut sent = 0u64;
    let mut completed = 0u64;
    let start = Instant::now();
    while completed < o.count {
        while sent < o.count && in_flight.len() < o.concurrency {
            let seq = sent;
            sent += 1;
            let payload = payloads.make(seq);
            // Before the send: the round trip includes it (and whatever runs while it wakes
            // the supervisor), as a caller waiting on the answer sees it.
            let began = Instant::now();
            match capsule.send_call(&o.target, Action::Read, payload, None) {
                Ok(id) => {
                    in_flight.insert(id, (seq, began));
                }
                Err(e) => {
                    completed += 1;
                    errors.record(seq, &CallError::from(e));
                    if !capsule.is_connected() {
                        return Ok(abandon(o, latencies, start, completed, errors));
                    }
                }
            }
        }
        match capsule.wait_any() {
            Ok(Some((id, result))) => {
                let Some((seq, began)) = in_flight.remove(&id) else {
                    continue;
                };
                completed += 1;
                match result {
                    Ok(answer) if payloads.matches(seq, &answer) => {
                        latencies.record(began.elapsed().as_nanos() as u64);
                    }
                    Ok(answer) => errors.record(
                        seq,
                        &format!(
                            "the answer ({} bytes) differs from the payload ({} bytes)",
                            answer.len(),
                            o.size
                        ),
                    ),
                    Err(e) => errors.record(seq, &e),
                }
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("ping: {e}");
                return Ok(abandon(o, latencies, start, completed, errors));
            }
        }
    }
    Ok(Report {
        what: "calls",
        count: o.count,
        size: o.size,
        concurrency: o.concurrency,
        latencies,
        elapsed: start.elapsed(),
        completed,
        errors: errors.count,
    })
}

/// The connection failed: every call not answered yet counts as an error.
fn abandon(
    o: &Options,
    latencies: Histogram,
    start: Instant,
    completed: u64,
    errors: Errors,
) -> Report {
    Report {
        what: "calls",
        count: o.count,
        size: o.size,
        concurrency: o.concurrency,
        latencies,
        elapsed: start.elapsed(),
        completed,
        errors: errors.count + (o.count - completed),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Parsed, String> {
        parse_args(args.iter().map(|s| s.to_string()))
    }

    #[test]
    fn arguments_have_defaults_and_both_spellings() {
        let Ok(Parsed::Run(o)) = parse(&[]) else {
            panic!()
        };
        assert_eq!(
            o,
            Options {
                count: 1000,
                size: 64,
                concurrency: 1,
                target: "localhost://echo/ping".into(),
                json: false,
                wait_for_provider: Duration::from_secs(10),
                token: None,
                tokens: false,
            }
        );
        let Ok(Parsed::Run(o)) = parse(&[
            "--count",
            "5",
            "--size=0",
            "--concurrency",
            "8",
            "--target=localhost://echo/x",
            "--json",
            "--wait-for-provider",
            "0",
            "--tokens",
        ]) else {
            panic!()
        };
        assert!(o.tokens);
        assert_eq!(
            (o.count, o.size, o.concurrency, o.target.as_str(), o.json),
            (5, 0, 8, "localhost://echo/x", true)
        );
        assert_eq!(o.wait_for_provider, Duration::ZERO);
        let Ok(Parsed::Run(o)) = parse(&["--token", "AAEC"]) else {
            panic!()
        };
        assert_eq!(o.token, Some(vec![0, 1, 2]));
        let Ok(Parsed::Run(o)) = parse(&["--token=none"]) else {
            panic!()
        };
        assert_eq!(o.token, Some(vec![]));
        assert!(matches!(parse(&["--help"]), Ok(Parsed::Help)));
        for bad in [
            &["--count"][..],
            &["--count", "-1"],
            &["--size", "x"],
            &["--concurrency", "0"],
            &["--json=1"],
            &["--what"],
            &["--token", "not base64!"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn payloads_tell_calls_apart() {
        let mut p = Payloads::new(64);
        let a = p.make(1).to_vec();
        let b = p.make(2).to_vec();
        assert_ne!(a, b);
        assert!(p.matches(1, &a) && p.matches(2, &b));
        assert!(!p.matches(1, &b) && !p.matches(1, &a[..63]));
        let mut tiny = Payloads::new(3);
        let t = tiny.make(7).to_vec();
        assert!(tiny.matches(7, &t) && !tiny.matches(8, &t));
        let mut empty = Payloads::new(0);
        assert!(empty.make(9).is_empty() && empty.matches(9, &[]));
    }

    #[test]
    fn the_report_reads_as_specified() {
        let r = Report {
            what: "calls",
            count: 4,
            size: 64,
            concurrency: 2,
            latencies: {
                let mut h = Histogram::new();
                for ns in [10_000, 20_000, 30_000, 400_000] {
                    h.record(ns);
                }
                h
            },
            elapsed: Duration::from_millis(2),
            completed: 4,
            errors: 1,
        };
        assert_eq!(
            r.line(),
            "ping: 4 calls of 64 bytes at concurrency 2: p50 20 us, p99 400 us, max 400 us, 2000 calls/s, 1 errors"
        );
        let (p50, p99) = (r.latencies.percentile(50), r.latencies.percentile(99));
        assert!((20_000..20_200).contains(&p50) && (400_000..403_200).contains(&p99));
        assert_eq!(
            r.json(),
            format!(
                r#"{{"count":4,"size":64,"concurrency":2,"p50_us":20,"p99_us":400,"max_us":400,"p50_ns":{p50},"p99_ns":{p99},"calls_per_s":2000.0,"errors":1}}"#
            )
        );
    }

    #[test]
    fn percentiles_are_the_exact_ones_rounded_up_by_under_a_percent() {
        // Buckets cover every value once, in order, each ending where the next begins.
        for b in 0..Histogram::bucket(u64::MAX) {
            assert_eq!(Histogram::bucket(Histogram::upper(b)), b);
            assert_eq!(Histogram::bucket(Histogram::upper(b) + 1), b + 1);
        }
        assert_eq!(Histogram::upper(Histogram::bucket(u64::MAX)), u64::MAX);
        // Latencies from 1 ns to ~1 s, spread over many doublings (a fixed LCG: reproducible).
        let mut x: u64 = 0x2545_f491_4f6c_dd1d;
        let mut exact = Vec::new();
        let mut h = Histogram::new();
        for _ in 0..100_000 {
            x = x
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            let v = (x >> 34) >> ((x >> 20) % 30);
            exact.push(v);
            h.record(v);
        }
        exact.sort_unstable();
        for p in [1, 25, 50, 90, 99, 100] {
            let want = exact[((p * exact.len() as u64).div_ceil(100) - 1) as usize];
            let got = h.percentile(p);
            assert!(
                got >= want && got - want <= want / 128,
                "p{p}: {got} for {want}"
            );
        }
        assert_eq!(h.percentile(100), *exact.last().unwrap());
        assert_eq!(Histogram::new().percentile(50), 0);
    }

    #[test]
    fn the_manifest_is_valid() {
        let m = elastos_schema::manifest::Manifest::parse(include_str!("../capsule.toml")).unwrap();
        assert_eq!(m.name, "ping");
        assert_eq!(m.requests[0].resource, "localhost://echo/*");
    }
}
