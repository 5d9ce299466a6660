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
        if c.is_control() || invisible(c) {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// Characters that change how the text around them is drawn, or are not drawn at all: the
/// bidirectional overrides and isolates (which can show `exe.txt` as `txt.exe`) and the
/// zero-width ones (which hide a difference between two names).
fn invisible(c: char) -> bool {
    matches!(c,
        '\u{061c}' | '\u{200b}'..='\u{200f}' | '\u{202a}'..='\u{202e}'
        | '\u{2060}'..='\u{2069}' | '\u{feff}')
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
    fn escapes_what_reorders_or_hides_text() {
        assert_eq!(sanitize("a\u{202e}txt.exe"), "a\\u{202e}txt.exe");
        assert_eq!(sanitize("ec\u{200b}ho\u{2066}"), "ec\\u{200b}ho\\u{2066}");
        // Right-to-left text itself is text.
        assert_eq!(sanitize("שלום"), "שלום");
    }

    #[test]
    fn caps_length() {
        let long = "x".repeat(10_000);
        assert_eq!(sanitize(&long).chars().count(), MAX_SHOWN + 1);
    }
}
