//! Safe display of text that came from outside the trusted base (a capsule, a package, a token):
//! control characters are escaped and the length is capped, so nothing a capsule writes can move
//! the operator's cursor, rewrite the terminal, or flood it.

/// The longest piece of foreign text shown, in characters.
pub const MAX_SHOWN: usize = 512;

/// Escapes control characters (including ESC, DEL and C1 controls) and caps the length.
pub fn sanitize(s: &str) -> String {
    sanitize_capped(s, MAX_SHOWN)
}

pub fn sanitize_capped(s: &str, max_chars: usize) -> String {
    let mut out = String::with_capacity(s.len().min(max_chars * 4));
    for (count, c) in s.chars().enumerate() {
        if count == max_chars {
            out.push('…');
            break;
        }
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(sanitize("a\x1b[2Jb\n"), "a\\u{1b}[2Jb\\n");
        assert_eq!(sanitize("\u{9b}x"), "\\u{9b}x");
    }

    #[test]
    fn caps_length() {
        let long = "x".repeat(10_000);
        assert_eq!(sanitize(&long).chars().count(), MAX_SHOWN + 1);
    }
}
