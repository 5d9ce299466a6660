//! The capsule manifest, `capsule.toml`.
//!
//! Strict on purpose: an unknown field, a wrong type or an invalid value is an error that names
//! the field and its line, never silently ignored, because a misspelt `[limits]` key that were
//! ignored would run a capsule without the limit its author meant. The first key must be
//! `format = 1` so a future layout is refused clearly rather than half understood.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::{versions, Action, ActionSet, Classification, Limits};

/// How a capsule's code runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Substrate {
    Native,
    Wasm,
    Microvm,
    Data,
}

impl Substrate {
    pub const ALL: [Substrate; 4] = [
        Substrate::Native,
        Substrate::Wasm,
        Substrate::Microvm,
        Substrate::Data,
    ];
    pub fn as_str(self) -> &'static str {
        match self {
            Substrate::Native => "native",
            Substrate::Wasm => "wasm",
            Substrate::Microvm => "microvm",
            Substrate::Data => "data",
        }
    }
}

impl fmt::Display for Substrate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Substrate {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Substrate::ALL
            .into_iter()
            .find(|x| x.as_str() == s)
            .ok_or_else(|| format!("`{s}` is not a substrate: use native, wasm, microvm or data"))
    }
}

/// A namespace the capsule serves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Provide {
    pub uri: String,
    pub classification: Classification,
}

/// A resource the capsule wants, with the reason shown to the person deciding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Request {
    pub resource: String,
    #[serde(serialize_with = "actions_as_list")]
    pub actions: ActionSet,
    pub reason: String,
}

fn actions_as_list<S: serde::Serializer>(a: &ActionSet, s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(a.iter().map(Action::as_str))
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Manifest {
    pub format: u32,
    pub name: String,
    pub version: String,
    pub description: String,
    pub substrate: Substrate,
    pub entrypoint: BTreeMap<Substrate, String>,
    pub provides: Vec<Provide>,
    pub requests: Vec<Request>,
    pub limits: Limits,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
}

/// What is wrong with a manifest, and where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError {
    pub line: Option<usize>,
    pub field: Option<String>,
    pub message: String,
}

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("capsule.toml")?;
        if let Some(l) = self.line {
            write!(f, " line {l}")?;
        }
        if let Some(k) = &self.field {
            write!(f, ": field `{k}`")?;
        }
        write!(f, ": {}", self.message)
    }
}

/// Longest accepted text fields, so a manifest cannot carry megabytes into every listing.
const MAX_VERSION: usize = 64;
const MAX_DESCRIPTION: usize = 1024;
const MAX_REASON: usize = 512;
const MAX_LIST: usize = 256;

// The raw shape, read with serde so unknown keys are refused and spans give line numbers.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    format: toml::Spanned<i64>,
    name: toml::Spanned<String>,
    version: toml::Spanned<String>,
    #[serde(default)]
    description: Option<toml::Spanned<String>>,
    substrate: toml::Spanned<String>,
    #[serde(default)]
    entrypoint: BTreeMap<toml::Spanned<String>, toml::Spanned<String>>,
    #[serde(default)]
    provides: Vec<toml::Spanned<RawProvide>>,
    #[serde(default)]
    requests: Vec<toml::Spanned<RawRequest>>,
    #[serde(default)]
    limits: Option<toml::Spanned<Limits>>,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProvide {
    uri: String,
    #[serde(default)]
    classification: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRequest {
    resource: String,
    actions: Vec<String>,
    reason: String,
}

struct Lines<'a>(&'a str);

impl Lines<'_> {
    fn of(&self, offset: usize) -> usize {
        self.0
            .as_bytes()
            .iter()
            .take(offset)
            .filter(|b| **b == b'\n')
            .count()
            + 1
    }
    fn err<T>(
        &self,
        span: std::ops::Range<usize>,
        field: &str,
        msg: impl Into<String>,
    ) -> Result<T, ManifestError> {
        Err(ManifestError {
            line: Some(self.of(span.start)),
            field: Some(field.to_string()),
            message: msg.into(),
        })
    }
}

/// The resource a capsule requests (`read`) to see the host's shared libraries and programs
/// read-only (`/usr`, `/lib*`, `/bin`, `/sbin`, `/etc/ld.so.cache`): what a dynamically linked
/// program or a shell script needs. First-party native capsules are static and do without.
pub const HOST_LIBS: &str = "host://libs";

/// The resource a capsule requests (`read`, `write`) for a private directory that outlives its
/// restarts: `/state` inside its root.
pub const STATE: &str = "host://state";

/// The resources a capsule requests (`read`, `write`) for a network: the host's
/// (`host://net`), or a loopback of its own and nothing else (`host://loopback`).
pub const NET_HOST: &str = "host://net";
pub const NET_LOOPBACK: &str = "host://loopback";

impl Manifest {
    /// Whether the manifest asks for [`HOST_LIBS`].
    pub fn requests_host_libs(&self) -> bool {
        self.requests
            .iter()
            .any(|r| r.resource == HOST_LIBS && r.actions.contains(Action::Read))
    }

    /// The network the manifest asks for: `host`, `loopback` (the wider one wins), or none.
    pub fn requested_net(&self) -> Option<&'static str> {
        let asks = |uri: &str| {
            self.requests.iter().any(|r| {
                r.resource == uri
                    && r.actions.contains(Action::Read)
                    && r.actions.contains(Action::Write)
            })
        };
        if asks(NET_HOST) {
            Some("host")
        } else if asks(NET_LOOPBACK) {
            Some("loopback")
        } else {
            None
        }
    }

    /// Whether the manifest asks for a [`STATE`] directory (read and write).
    pub fn requests_state(&self) -> bool {
        self.requests.iter().any(|r| {
            r.resource == STATE
                && r.actions.contains(Action::Read)
                && r.actions.contains(Action::Write)
        })
    }

    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let lines = Lines(text);
        // The format comes first and is checked before anything else is interpreted.
        let first = text
            .lines()
            .map(str::trim)
            .find(|l| !l.is_empty() && !l.starts_with('#'));
        if !first.is_some_and(|l| l.replace(' ', "").starts_with("format=")) {
            return Err(ManifestError {
                line: None,
                field: Some("format".into()),
                message: format!(
                    "the manifest must start with `format = {}`",
                    versions::MANIFEST
                ),
            });
        }
        let raw: Raw = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| lines.of(s.start));
            let message = e.message().replace('\n', " ");
            let field = message
                .split('`')
                .nth(1)
                .filter(|_| {
                    message.starts_with("unknown field") || message.starts_with("missing field")
                })
                .map(str::to_string);
            ManifestError {
                line,
                field,
                message,
            }
        })?;
        let format = *raw.format.get_ref();
        if format != i64::from(versions::MANIFEST) {
            return lines.err(
                raw.format.span(),
                "format",
                format!(
                    "manifest format {format} is unknown to this elastos (it reads format {}); use a newer elastos",
                    versions::MANIFEST
                ),
            );
        }
        if let Err(e) = validate_capsule_name(raw.name.get_ref()) {
            return lines.err(raw.name.span(), "name", e);
        }
        let version = raw.version.get_ref();
        if version.is_empty()
            || version.len() > MAX_VERSION
            || version.chars().any(|c| c.is_control() || c.is_whitespace())
        {
            return lines.err(
                raw.version.span(),
                "version",
                format!("must be 1 to {MAX_VERSION} printable characters without spaces"),
            );
        }
        let description = match &raw.description {
            Some(d)
                if d.get_ref().len() > MAX_DESCRIPTION
                    || d.get_ref().chars().any(char::is_control) =>
            {
                return lines.err(
                    d.span(),
                    "description",
                    format!("at most {MAX_DESCRIPTION} bytes, no control characters"),
                );
            }
            Some(d) => d.get_ref().clone(),
            None => String::new(),
        };
        let substrate: Substrate = match raw.substrate.get_ref().parse() {
            Ok(s) => s,
            Err(e) => return lines.err(raw.substrate.span(), "substrate", e),
        };
        let mut entrypoint = BTreeMap::new();
        for (k, v) in &raw.entrypoint {
            let s: Substrate = match k.get_ref().parse() {
                Ok(s) => s,
                Err(e) => return lines.err(k.span(), &format!("entrypoint.{}", k.get_ref()), e),
            };
            if let Err(e) = validate_path(v.get_ref()) {
                return lines.err(v.span(), &format!("entrypoint.{s}"), e);
            }
            entrypoint.insert(s, v.get_ref().clone());
        }
        if substrate != Substrate::Data && !entrypoint.contains_key(&substrate) {
            return lines.err(
                raw.substrate.span(),
                "entrypoint",
                format!("the default substrate is {substrate}, but [entrypoint] has no `{substrate}` file"),
            );
        }
        if raw.provides.len() > MAX_LIST || raw.requests.len() > MAX_LIST {
            return Err(ManifestError {
                line: None,
                field: None,
                message: format!("at most {MAX_LIST} provides and {MAX_LIST} requests"),
            });
        }
        let mut provides = Vec::new();
        for p in &raw.provides {
            let r = p.get_ref();
            if let Err(e) = validate_uri_pattern(&r.uri) {
                return lines.err(p.span(), "provides.uri", e);
            }
            let classification = match &r.classification {
                Some(c) => match c.parse::<Classification>() {
                    Ok(c) => c,
                    Err(e) => return lines.err(p.span(), "provides.classification", e.to_string()),
                },
                None => Classification::default(),
            };
            if provides.iter().any(|x: &Provide| x.uri == r.uri) {
                return lines.err(
                    p.span(),
                    "provides.uri",
                    format!("`{}` is listed twice", r.uri),
                );
            }
            provides.push(Provide {
                uri: r.uri.clone(),
                classification,
            });
        }
        let mut requests = Vec::new();
        for q in &raw.requests {
            let r = q.get_ref();
            if let Err(e) = validate_uri_pattern(&r.resource) {
                return lines.err(q.span(), "requests.resource", e);
            }
            let mut actions = ActionSet::EMPTY;
            for a in &r.actions {
                match a.parse::<Action>() {
                    Ok(a) => actions.insert(a),
                    Err(e) => return lines.err(q.span(), "requests.actions", e.to_string()),
                }
            }
            if actions.is_empty() {
                return lines.err(q.span(), "requests.actions", "name at least one action");
            }
            if r.reason.trim().is_empty()
                || r.reason.len() > MAX_REASON
                || r.reason.chars().any(char::is_control)
            {
                return lines.err(
                    q.span(),
                    "requests.reason",
                    format!("say why, in 1 to {MAX_REASON} bytes without control characters"),
                );
            }
            requests.push(Request {
                resource: r.resource.clone(),
                actions,
                reason: r.reason.clone(),
            });
        }
        for k in raw.env.keys() {
            if k.is_empty()
                || !k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                || k.starts_with("ELASTOS_")
            {
                return Err(ManifestError {
                    line: None,
                    field: Some(format!("env.{k}")),
                    message: "names are ASCII letters, digits and _, and ELASTOS_ is reserved"
                        .into(),
                });
            }
        }
        if let Some(l) = &raw.limits {
            if let Some(ms) = l.get_ref().call_budget_ms {
                if !(Limits::MIN_CALL_BUDGET_MS..=Limits::MAX_CALL_BUDGET_MS).contains(&ms) {
                    return lines.err(
                        l.span(),
                        "limits.call_budget_ms",
                        format!(
                            "milliseconds a WASM guest may run per frame, from {} to {}",
                            Limits::MIN_CALL_BUDGET_MS,
                            Limits::MAX_CALL_BUDGET_MS
                        ),
                    );
                }
            }
            if let Some(tmp) = l.get_ref().tmp {
                if !(Limits::MIN_TMP..=Limits::MAX_TMP).contains(&tmp) {
                    return lines.err(
                        l.span(),
                        "limits.tmp",
                        format!(
                            "the private /tmp's size in bytes, from {} KiB to {} GiB",
                            Limits::MIN_TMP >> 10,
                            Limits::MAX_TMP >> 30
                        ),
                    );
                }
            }
        }
        Ok(Manifest {
            format: versions::MANIFEST,
            name: raw.name.into_inner(),
            version: raw.version.into_inner(),
            description,
            substrate,
            entrypoint,
            provides,
            requests,
            limits: raw
                .limits
                .map(toml::Spanned::into_inner)
                .unwrap_or_default(),
            args: raw.args,
            env: raw.env,
        })
    }
}

/// Names no capsule may take: they are the node's own (the supervisor's actor and log file,
/// `logs/supervisor.log`, the program's name), and a capsule named so would pass for it.
pub const RESERVED_NAMES: &[&str] = &["supervisor", "elastos"];

/// A name a capsule may take: a valid name ([`validate_name`]) that is not one of the node's
/// own ([`RESERVED_NAMES`]).
pub fn validate_capsule_name(name: &str) -> Result<(), String> {
    validate_name(name)?;
    if RESERVED_NAMES.contains(&name) {
        return Err(format!(
            "`{name}` is the node's own name (reserved: {}); pick another",
            RESERVED_NAMES.join(", ")
        ));
    }
    Ok(())
}

/// Capsule names: `[a-z0-9][a-z0-9-]{0,62}`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let b = name.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "`{}` is not a capsule name: it must match [a-z0-9][a-z0-9-]{{0,62}}",
            name.escape_debug()
        ))
    }
}

/// A relative path inside a package: `/`-separated, no empty, `.` or `..` segment.
pub fn validate_path(path: &str) -> Result<(), String> {
    if path.is_empty() || path.len() > 255 {
        return Err("a path is 1 to 255 bytes".into());
    }
    if path.starts_with('/') {
        return Err(format!(
            "`{path}` is absolute; use a path relative to the capsule"
        ));
    }
    for seg in path.split('/') {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("`{path}` has an empty, `.` or `..` segment"));
        }
        if seg.chars().any(|c| c.is_control() || c == '\\') {
            return Err(format!(
                "`{}` has a control character or backslash",
                path.escape_debug()
            ));
        }
    }
    Ok(())
}

/// A URI or a `P/*` pattern as manifests and tokens name them: `scheme://host/path`, scheme and
/// host lower-case, no `.`, `..` or empty segment, none of `%?#\` or NUL. The same rules as the
/// token checks, so whatever a manifest names a token can name.
pub fn validate_uri_pattern(uri: &str) -> Result<(), String> {
    let base = uri.strip_suffix("/*").unwrap_or(uri);
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(format!("`{uri}` is not a URI (scheme://host/path)"));
    };
    if scheme.is_empty()
        || !scheme
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'+' || b == b'-')
    {
        return Err(format!("`{uri}`: the scheme must be lower-case"));
    }
    if uri.len() > 2048 {
        return Err("a URI is at most 2048 bytes".into());
    }
    if uri
        .chars()
        .any(|c| matches!(c, '%' | '?' | '#' | '\\' | '\0') || c.is_control() || c.is_whitespace())
    {
        return Err(format!(
            "`{}` has one of % ? # \\ NUL or a space",
            uri.escape_debug()
        ));
    }
    let mut segs = rest.split('/');
    let host = segs.next().unwrap_or_default();
    if host.is_empty() || host.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(format!("`{uri}`: the host must be present and lower-case"));
    }
    for seg in segs {
        if seg.is_empty() || seg == "." || seg == ".." {
            return Err(format!("`{uri}` has an empty, `.` or `..` segment"));
        }
        if seg.contains('*') {
            return Err(format!("`{uri}`: `*` is allowed only as a final `/*`"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"format = 1
name = "notes"
version = "1.2.0"
description = "Keeps notes"
substrate = "native"
args = ["--quiet"]

[entrypoint]
native = "bin/notes"
wasm = "notes.wasm"

[[provides]]
uri = "localhost://notes/*"
classification = "confidential"

[[requests]]
resource = "localhost://storage/notes/*"
actions = ["read", "write"]
reason = "to keep your notes"

[limits]
memory = 67108864
processes = 16
"#;

    #[test]
    fn a_full_manifest_parses() {
        let m = Manifest::parse(GOOD).unwrap();
        assert_eq!(m.name, "notes");
        assert_eq!(m.substrate, Substrate::Native);
        assert_eq!(m.entrypoint[&Substrate::Wasm], "notes.wasm");
        assert_eq!(m.provides[0].classification, Classification::Confidential);
        assert_eq!(m.requests[0].actions.to_string(), "read,write");
        assert_eq!(m.limits.memory, Some(64 << 20));
        assert_eq!(m.limits.processes, Some(16));
        assert_eq!(m.args, vec!["--quiet"]);
    }

    fn err(text: &str) -> ManifestError {
        Manifest::parse(text).unwrap_err()
    }

    #[test]
    fn unknown_fields_are_named_with_their_line() {
        let e = err(&GOOD.replace("processes = 16", "processes = 16\ncolour = \"red\""));
        assert_eq!(e.line, Some(24), "{e}");
        assert!(e.to_string().contains("colour"), "{e}");
        let e = err(&GOOD.replace(
            "substrate = \"native\"",
            "substrate = \"native\"\nflavour = 1",
        ));
        assert_eq!(e.line, Some(6), "{e}");
        assert!(e.to_string().contains("flavour"), "{e}");
    }

    #[test]
    fn invalid_values_name_field_and_line() {
        let e = err(&GOOD.replace("name = \"notes\"", "name = \"Bad_Name\""));
        assert_eq!((e.line, e.field.as_deref()), (Some(2), Some("name")), "{e}");
        for reserved in RESERVED_NAMES {
            let e = err(&GOOD.replace("name = \"notes\"", &format!("name = \"{reserved}\"")));
            assert_eq!(e.field.as_deref(), Some("name"), "{e}");
            assert!(e.to_string().contains("reserved"), "{e}");
        }
        let e = err(&GOOD.replace("substrate = \"native\"", "substrate = \"jvm\""));
        assert_eq!(
            (e.line, e.field.as_deref()),
            (Some(5), Some("substrate")),
            "{e}"
        );
        let e = err(&GOOD.replace("\"read\", \"write\"", "\"read\", \"fly\""));
        assert_eq!(e.field.as_deref(), Some("requests.actions"), "{e}");
        let e = err(&GOOD.replace("localhost://notes/*", "localhost://notes/../x"));
        assert_eq!(e.field.as_deref(), Some("provides.uri"), "{e}");
        let e = err(&GOOD.replace("bin/notes", "../bin/notes"));
        assert_eq!(e.field.as_deref(), Some("entrypoint.native"), "{e}");
        for ms in ["0", "9", "600001", "18446744073709551615"] {
            let e = err(&GOOD.replace(
                "processes = 16",
                &format!("processes = 16\ncall_budget_ms = {ms}"),
            ));
            assert_eq!(
                e.field.as_deref(),
                Some("limits.call_budget_ms"),
                "{ms}: {e}"
            );
        }
        // A tmpfs of size 0 has no limit at all: refused, as is one larger than a disk.
        for tmp in ["0", "1024", "17179869185"] {
            let e = err(&GOOD.replace("processes = 16", &format!("processes = 16\ntmp = {tmp}")));
            assert_eq!(e.field.as_deref(), Some("limits.tmp"), "{tmp}: {e}");
        }
        let m = Manifest::parse(&GOOD.replace("processes = 16", "processes = 16\ntmp = 1048576"))
            .unwrap();
        assert_eq!(m.limits.tmp_size(), 1 << 20);
        assert_eq!(
            Manifest::parse(GOOD).unwrap().limits.tmp_size(),
            Limits::DEFAULT_TMP
        );
        let e = err(&GOOD.replace("memory = 67108864", "memory = \"lots\""));
        assert!(e.line.is_some(), "{e}");
    }

    #[test]
    fn the_format_comes_first_and_must_be_known() {
        let e = err(&GOOD.replace("format = 1", "format = 2"));
        assert!(e.to_string().contains("format 2 is unknown"), "{e}");
        let e = err(&GOOD
            .replace("format = 1\n", "")
            .replace("[entrypoint]", "format = 1\n[entrypoint]"));
        assert_eq!(e.field.as_deref(), Some("format"), "{e}");
    }

    #[test]
    fn the_default_substrate_needs_an_entrypoint() {
        let e = err(&GOOD.replace("substrate = \"native\"", "substrate = \"microvm\""));
        assert_eq!(e.field.as_deref(), Some("entrypoint"), "{e}");
    }

    #[test]
    fn names_follow_the_contract() {
        for ok in ["a", "echo", "0x", "a-b-c", &"a".repeat(63)] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "A", "a_b", "a.b", "é", &"a".repeat(64)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    proptest::proptest! {
        #[test]
        fn parse_never_panics(text in "\\PC{0,400}") {
            let _ = Manifest::parse(&text);
        }

        #[test]
        fn parse_never_panics_on_near_manifests(cut in 0usize..600, junk in "[ -~\\n]{0,20}") {
            let mut t = GOOD.to_string();
            let at = cut.min(t.len());
            t.insert_str(at, &junk);
            let _ = Manifest::parse(&t);
        }
    }
}
