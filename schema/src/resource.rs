//! Resource names and patterns: the grammar of the `resource` a token names and a request asks
//! for, and the one matching rule.
//!
//! A resource is `scheme://host[/segment]*`. A token may also name a pattern `P/*`, which matches
//! every resource at least one segment below `P`, and never `P` itself. Comparison is byte-exact:
//! nothing is decoded, folded or normalised, so the grammar refuses every spelling that a
//! provider might interpret differently from this code (`..`, `.`, empty segments, `%`-escapes,
//! queries, fragments, back-slashes, NUL, upper-case scheme or host, non-ASCII). A request that
//! is refused never matches anything: callers get an `Err` with the reason.
//!
//! Pure functions; they trust nothing and must never panic on any input.

/// The longest resource or pattern accepted, in bytes: far above any real name, small enough
/// that matching stays cheap.
pub const MAX_RESOURCE_LEN: usize = 2048;

const SCHEME_SEP: &str = "://";
const WILDCARD_SUFFIX: &str = "/*";

/// Checks that `uri` is a well-formed concrete resource (not a pattern).
pub fn validate_request(uri: &str) -> Result<(), String> {
    if uri.is_empty() {
        return Err("the resource is empty".into());
    }
    if uri.len() > MAX_RESOURCE_LEN {
        return Err(format!(
            "the resource is {} bytes long; at most {MAX_RESOURCE_LEN} are accepted",
            uri.len()
        ));
    }
    // Refuse the characters with a meaning elsewhere first, so the reason names them. One pass
    // tells whether there is any (every call's resource is checked here); only then the
    // ordered search that names it.
    let refused = uri.bytes().fold(false, |r, b| {
        r | matches!(b, b'%' | b'?' | b'#' | b'\\' | 0 | b'*')
    });
    for (c, what) in [
        (
            '%',
            "`%` (escapes are not decoded; name the resource literally)",
        ),
        ('?', "`?` (queries are not part of a resource)"),
        ('#', "`#` (fragments are not part of a resource)"),
        ('\\', "`\\` (back-slashes are not separators)"),
        ('\0', "a NUL byte"),
        ('*', "`*` (only a token's pattern may end in `/*`)"),
    ] {
        if refused && uri.contains(c) {
            return Err(format!("the resource contains {what}"));
        }
    }
    let (scheme, rest) = uri.split_once(SCHEME_SEP).ok_or_else(|| {
        "the resource has no `scheme://` (expected scheme://host/path)".to_string()
    })?;
    validate_scheme(scheme)?;
    let (host, path) = match rest.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (rest, None),
    };
    validate_host(host)?;
    if let Some(path) = path {
        for segment in path.split('/') {
            validate_segment(segment)?;
        }
    }
    Ok(())
}

fn validate_scheme(scheme: &str) -> Result<(), String> {
    let mut chars = scheme.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "+-.".contains(c));
    if first_ok && rest_ok {
        Ok(())
    } else {
        Err("the scheme must be lower-case ASCII letters, digits, `+`, `-` or `.`, starting with a letter".into())
    }
}

fn validate_host(host: &str) -> Result<(), String> {
    if host.is_empty() {
        return Err("the resource has no host (expected scheme://host/path)".into());
    }
    let chars_ok = host
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-._:".contains(c));
    if !chars_ok {
        return Err(
            "the host must be lower-case ASCII letters, digits, `-`, `.`, `_` or `:`".into(),
        );
    }
    // No empty labels: rules out `.`, `..`, a leading or trailing dot, and `a..b`.
    if host.split('.').any(str::is_empty) {
        return Err("the host has an empty label (a leading, trailing or doubled `.`)".into());
    }
    Ok(())
}

fn validate_segment(segment: &str) -> Result<(), String> {
    match segment {
        "" => Err("the path has an empty segment (`//` or a trailing `/`)".into()),
        "." | ".." => Err(format!("the path has a `{segment}` segment")),
        _ if !segment.bytes().all(|b| b.is_ascii_graphic()) => Err(
            "a path segment holds a space, a control or a non-ASCII character; name the resource in printable ASCII"
                .into(),
        ),
        _ => Ok(()),
    }
}

/// A parsed token resource: an exact resource, or the base of a `base/*` pattern.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pattern<'a> {
    Exact(&'a str),
    Below(&'a str),
}

fn parse_pattern(pattern: &str) -> Result<Pattern<'_>, String> {
    match pattern.strip_suffix(WILDCARD_SUFFIX) {
        Some(base) => validate_request(base)
            .map(|()| Pattern::Below(base))
            .map_err(|e| format!("pattern `…/*`: {e}")),
        None => validate_request(pattern).map(|()| Pattern::Exact(pattern)),
    }
}

/// Checks that `pattern` is a resource a token may name: an exact resource or `P/*`.
pub fn validate_pattern(pattern: &str) -> Result<(), String> {
    parse_pattern(pattern).map(|_| ())
}

/// Whether `request` (a concrete resource) is `pattern`, or lies at least one segment below the
/// base of a `P/*` pattern. `Err` when either is malformed; callers treat that as "no".
pub fn resource_matches(pattern: &str, request: &str) -> Result<bool, String> {
    let pattern = parse_pattern(pattern)?;
    validate_request(request).map_err(|e| format!("request refused: {e}"))?;
    Ok(matches_parsed(pattern, request))
}

/// `request` is already known to be valid. Because it is, everything after `base/` is one or
/// more well-formed segments, so a plain prefix test is exact.
fn matches_parsed(pattern: Pattern<'_>, request: &str) -> bool {
    match pattern {
        Pattern::Exact(p) => p == request,
        Pattern::Below(base) => request
            .strip_prefix(base)
            .and_then(|rest| rest.strip_prefix('/'))
            .is_some_and(|rest| !rest.is_empty()),
    }
}

/// Whether `child` (an exact resource or a pattern) names only resources that `parent` names:
/// the rule for delegation. Equal is within; an exact parent has nothing narrower than itself.
pub fn resource_within(parent: &str, child: &str) -> Result<bool, String> {
    let parent_p = parse_pattern(parent).map_err(|e| format!("the parent's resource: {e}"))?;
    let child_p = parse_pattern(child).map_err(|e| format!("the child's resource: {e}"))?;
    Ok(match (parent_p, child_p) {
        _ if parent == child => true,
        (Pattern::Exact(_), _) => false,
        (Pattern::Below(_), Pattern::Exact(c)) => matches_parsed(parent_p, c),
        // `Q/*` is inside `P/*` when Q is P (already handled as equal) or Q is below P.
        (Pattern::Below(_), Pattern::Below(q)) => matches_parsed(parent_p, q),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const NOTES: &str = "localhost://storage/notes/*";

    #[test]
    fn pattern_matches_what_is_below_it_never_itself() {
        assert_eq!(
            resource_matches(NOTES, "localhost://storage/notes/a"),
            Ok(true)
        );
        assert_eq!(
            resource_matches(NOTES, "localhost://storage/notes/a/b"),
            Ok(true)
        );
        assert_eq!(
            resource_matches(NOTES, "localhost://storage/notes"),
            Ok(false)
        );
        assert_eq!(
            resource_matches(NOTES, "localhost://storage/notesx/a"),
            Ok(false)
        );
        assert_eq!(resource_matches(NOTES, "localhost://storage"), Ok(false));
    }

    #[test]
    fn exact_resource_matches_only_itself() {
        let r = "localhost://storage/notes/today";
        assert_eq!(resource_matches(r, r), Ok(true));
        assert_eq!(
            resource_matches(r, "localhost://storage/notes/today/x"),
            Ok(false)
        );
        assert_eq!(resource_matches(r, "localhost://storage/notes"), Ok(false));
    }

    #[test]
    fn host_level_patterns_work() {
        assert_eq!(
            resource_matches("localhost://storage/*", "localhost://storage/a"),
            Ok(true)
        );
        assert_eq!(
            resource_matches("localhost://storage/*", "localhost://storage"),
            Ok(false)
        );
    }

    #[test]
    fn suspicious_requests_are_refused_with_a_reason() {
        for bad in [
            "localhost://storage/notes/../mail",
            "localhost://storage/notes/./a",
            "localhost://storage/notes//a",
            "localhost://storage/notes/a/",
            "localhost://storage/notes/a%2f",
            "localhost://storage/notes/a?x=1",
            "localhost://storage/notes/a#f",
            "localhost://storage/notes\\a",
            "localhost://storage/notes/a\0",
            "localhost://storage/notes/*",
            "localhost://storage/notes/a b",
            "localhost://storage/notes/caf\u{e9}",
            "LOCALHOST://storage/notes/a",
            "localhost://STORAGE/notes/a",
            "localhost://storage..x/notes/a",
            "localhost:///notes/a",
            "storage/notes/a",
            "",
        ] {
            let got = resource_matches(NOTES, bad);
            assert!(got.is_err(), "{bad:?} gave {got:?}");
        }
        let long = format!("localhost://storage/{}", "a".repeat(MAX_RESOURCE_LEN));
        assert!(validate_request(&long).is_err());
    }

    #[test]
    fn malformed_patterns_are_refused() {
        for bad in [
            "*",
            "/*",
            "localhost://*",
            "localhost://a/*/b",
            "localhost://a/**",
            "x/*",
        ] {
            assert!(validate_pattern(bad).is_err(), "{bad}");
        }
        assert!(validate_pattern(NOTES).is_ok());
        assert!(validate_pattern("localhost://storage/notes/today").is_ok());
    }

    #[test]
    fn within_allows_equal_or_narrower_only() {
        assert_eq!(resource_within(NOTES, NOTES), Ok(true));
        assert_eq!(
            resource_within(NOTES, "localhost://storage/notes/shared/*"),
            Ok(true)
        );
        assert_eq!(
            resource_within(NOTES, "localhost://storage/notes/a"),
            Ok(true)
        );
        assert_eq!(resource_within(NOTES, "localhost://storage/*"), Ok(false));
        assert_eq!(
            resource_within(NOTES, "localhost://storage/notes"),
            Ok(false)
        );
        assert_eq!(
            resource_within(NOTES, "localhost://storage/mail/*"),
            Ok(false)
        );
        let exact = "localhost://storage/notes/a";
        assert_eq!(resource_within(exact, exact), Ok(true));
        assert_eq!(
            resource_within(exact, "localhost://storage/notes/a/*"),
            Ok(false)
        );
        assert!(resource_within(NOTES, "localhost://storage/notes/../*").is_err());
    }

    fn segment() -> impl Strategy<Value = String> {
        "[a-z0-9_.-]{1,6}".prop_filter("not a dot segment", |s| s != "." && s != "..")
    }

    fn uri() -> impl Strategy<Value = String> {
        (
            "[a-z]{1,5}",
            "[a-z0-9]{1,6}",
            prop::collection::vec(segment(), 0..5),
        )
            .prop_map(|(scheme, host, segs)| {
                let mut s = format!("{scheme}://{host}");
                for seg in segs {
                    s.push('/');
                    s.push_str(&seg);
                }
                s
            })
    }

    proptest! {
        #[test]
        fn never_panics_on_arbitrary_text(p in any::<String>(), r in any::<String>()) {
            let _ = resource_matches(&p, &r);
            let _ = resource_within(&p, &r);
        }

        #[test]
        fn a_pattern_never_matches_its_own_base(base in uri()) {
            let pattern = format!("{base}/*");
            prop_assert_eq!(resource_matches(&pattern, &base), Ok(false));
        }

        #[test]
        fn exact_match_is_reflexive_for_valid_resources(u in uri()) {
            prop_assert_eq!(resource_matches(&u, &u), Ok(true));
        }

        #[test]
        fn requests_with_forbidden_pieces_never_match(
            base in uri(),
            bad in prop::sample::select(vec!["..", ".", "", "%2e", "a?b", "a#b", "a\\b", "a\0b", "*"]),
            tail in prop::collection::vec(segment(), 0..3),
        ) {
            let mut request = format!("{base}/{bad}");
            for t in tail {
                request.push('/');
                request.push_str(&t);
            }
            let pattern = format!("{base}/*");
            prop_assert!(!matches!(resource_matches(&pattern, &request), Ok(true)));
            prop_assert!(!matches!(resource_matches(&request, &request), Ok(true)));
        }

        #[test]
        fn matching_a_child_pattern_implies_matching_the_parent(
            base in uri(),
            mid in prop::collection::vec(segment(), 0..3),
            tail in prop::collection::vec(segment(), 1..3),
        ) {
            let parent = format!("{base}/*");
            let mut child_base = base.clone();
            for m in &mid {
                child_base.push('/');
                child_base.push_str(m);
            }
            let child = format!("{child_base}/*");
            let mut request = child_base.clone();
            for t in &tail {
                request.push('/');
                request.push_str(t);
            }
            prop_assert_eq!(resource_within(&parent, &child), Ok(true));
            prop_assert_eq!(resource_matches(&child, &request), Ok(true));
            prop_assert_eq!(resource_matches(&parent, &request), Ok(true));
        }

        #[test]
        fn within_is_sound_for_arbitrary_pairs(a in uri(), b in uri(), r in uri(), pa: bool, pb: bool) {
            let parent = if pa { format!("{a}/*") } else { a.clone() };
            let child = if pb { format!("{b}/*") } else { b.clone() };
            if resource_within(&parent, &child) == Ok(true) && resource_matches(&child, &r) == Ok(true) {
                prop_assert_eq!(resource_matches(&parent, &r), Ok(true));
            }
        }
    }
}
