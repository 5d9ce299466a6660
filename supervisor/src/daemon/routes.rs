//! Which capsule serves which namespace.
//!
//! A namespace is a pattern `P/*`; the table is keyed by `P`, and a target is routed by looking up
//! its own prefixes at `/` boundaries, longest first: a handful of hash lookups per call however
//! many capsules serve. Namespaces never overlap (neither may lie within another), so every URI
//! has at most one provider and the answer never depends on which capsule claimed first.

use std::collections::HashMap;
use std::sync::Arc;

/// The namespaces being served, each by the value `T` (a live connection, in the supervisor).
pub struct Routes<T> {
    by_base: HashMap<String, Arc<T>>,
}

impl<T> Default for Routes<T> {
    fn default() -> Self {
        Routes {
            by_base: HashMap::new(),
        }
    }
}

/// `localhost://echo/*` → `localhost://echo`; `None` for anything that is not a namespace.
fn base(pattern: &str) -> Option<&str> {
    pattern.strip_suffix("/*").filter(|b| b.contains("://"))
}

/// Whether `inner` is `outer` or lies below it, at a segment boundary.
fn within(outer: &str, inner: &str) -> bool {
    inner == outer
        || inner
            .strip_prefix(outer)
            .is_some_and(|rest| rest.starts_with('/'))
}

impl<T> Routes<T> {
    /// Claims `pattern` for `value`; refused (with whom it collides) when it equals, contains
    /// or lies within a namespace served already.
    pub fn claim(
        &mut self,
        pattern: &str,
        value: Arc<T>,
        owner: impl Fn(&T) -> String,
    ) -> Result<(), String> {
        let Some(b) = base(pattern) else {
            return Err(format!(
                "`{pattern}` is not a namespace (it must end in `/*`)"
            ));
        };
        if let Some((other, v)) = self
            .by_base
            .iter()
            .find(|(other, _)| within(other, b) || within(b, other))
        {
            return Err(if other == b {
                format!("`{pattern}` is already served by `{}`", owner(v))
            } else {
                format!(
                    "`{pattern}` overlaps `{other}/*`, which is already served by `{}`",
                    owner(v)
                )
            });
        }
        self.by_base.insert(b.to_string(), value);
        Ok(())
    }

    /// The provider of `target`, and the namespace it serves it under.
    pub fn lookup(&self, target: &str) -> Option<(&str, &Arc<T>)> {
        let start = target.find("://")? + 3;
        let mut end = target.len();
        // `P/*` matches at least one segment below `P`, never `P` itself: start one level up.
        loop {
            end = target[start..end].rfind('/').map(|i| start + i)?;
            if let Some((k, v)) = self.by_base.get_key_value(&target[..end]) {
                return Some((k.as_str(), v));
            }
        }
    }

    /// Drops every namespace `keep` says no to (a connection that closed).
    pub fn retain(&mut self, mut keep: impl FnMut(&T) -> bool) {
        self.by_base.retain(|_, v| keep(v));
    }

    pub fn iter(&self) -> impl Iterator<Item = &Arc<T>> {
        self.by_base.values()
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_base.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(patterns: &[(&str, &str)]) -> Routes<String> {
        let mut r = Routes::default();
        for (p, who) in patterns {
            r.claim(p, Arc::new(who.to_string()), |s| s.clone())
                .unwrap();
        }
        r
    }

    #[test]
    fn routes_to_the_namespace_a_target_lies_in() {
        let r = table(&[
            ("localhost://echo/*", "echo"),
            ("localhost://storage/notes/*", "notes"),
        ]);
        let who = |t| r.lookup(t).map(|(_, v)| v.as_str().to_string());
        assert_eq!(who("localhost://echo/ping").as_deref(), Some("echo"));
        assert_eq!(who("localhost://echo/a/b/c").as_deref(), Some("echo"));
        assert_eq!(
            who("localhost://storage/notes/today").as_deref(),
            Some("notes")
        );
        // Never the base itself, never a sibling with a common prefix, never another host.
        assert_eq!(who("localhost://echo"), None);
        assert_eq!(who("localhost://echoes/x"), None);
        assert_eq!(who("localhost://storage/x"), None);
        assert_eq!(who("elastos://echo/x"), None);
        assert_eq!(who("not a uri"), None);
        assert_eq!(
            r.lookup("localhost://echo/x").unwrap().0,
            "localhost://echo"
        );
    }

    #[test]
    fn overlapping_namespaces_are_refused() {
        let mut r = table(&[("localhost://echo/a/*", "a")]);
        let mut claim = |p: &str| r.claim(p, Arc::new("b".to_string()), |s| s.clone());
        assert!(claim("localhost://echo/a/*")
            .unwrap_err()
            .contains("already served by `a`"));
        assert!(claim("localhost://echo/*")
            .unwrap_err()
            .contains("overlaps"));
        assert!(claim("localhost://echo/a/deeper/*")
            .unwrap_err()
            .contains("overlaps"));
        assert!(claim("localhost://echo/b")
            .unwrap_err()
            .contains("not a namespace"));
        claim("localhost://echo/ab/*").unwrap();
        claim("localhost://echo/b/*").unwrap();
    }

    #[test]
    fn a_closed_connection_gives_its_namespaces_back() {
        let mut r = table(&[("localhost://echo/a/*", "a"), ("localhost://echo/b/*", "b")]);
        r.retain(|v| v != "a");
        assert_eq!(r.len(), 1);
        assert!(r.lookup("localhost://echo/a/x").is_none());
        r.claim("localhost://echo/a/*", Arc::new("c".into()), |s| s.clone())
            .unwrap();
    }
}
