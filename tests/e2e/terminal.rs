//! `elastos shell` driven in a pseudo-terminal as a person would: the screen it draws is read
//! back through a terminal emulator (`vt100`), so what is asserted is what a person would see.

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use elastos_e2e::{first_party_capsule, Node};

use crate::shell::{audit_has, prompts, shell_node, start_echo};
use crate::supervisor::{path, wait_until};

const ROWS: u16 = 32;
const COLS: u16 = 110;

/// `elastos shell` running in a pty of its own.
struct Terminal {
    child: Child,
    master: std::fs::File,
    screen: Arc<Mutex<vt100::Parser>>,
    /// Every byte it wrote, as written.
    raw: Arc<Mutex<Vec<u8>>>,
}

impl Terminal {
    fn open(node: &Node) -> Terminal {
        let size = nix::pty::Winsize {
            ws_row: ROWS,
            ws_col: COLS,
            ws_xpixel: 0,
            ws_ypixel: 0,
        };
        let pty = nix::pty::openpty(Some(&size), None).expect("openpty");
        let io = |fd: &OwnedFd| Stdio::from(fd.try_clone().expect("dup"));
        let child = node
            .command()
            .arg("shell")
            .env("TERM", "xterm-256color")
            .stdin(io(&pty.slave))
            .stdout(io(&pty.slave))
            .stderr(io(&pty.slave))
            .spawn()
            .expect("spawning elastos shell");
        drop(pty.slave);
        let master = std::fs::File::from(pty.master);
        let screen = Arc::new(Mutex::new(vt100::Parser::new(
            ROWS.try_into().unwrap(),
            COLS.try_into().unwrap(),
            0,
        )));
        let raw = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("dup");
        let (s, r) = (screen.clone(), raw.clone());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            // Ends with EIO once the shell has gone and the pty is closed.
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                s.lock().unwrap().process(&buf[..n]);
                r.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Terminal {
            child,
            master,
            screen,
            raw,
        }
    }

    fn contents(&self) -> String {
        self.screen.lock().unwrap().screen().contents()
    }

    fn rows(&self) -> Vec<String> {
        self.screen.lock().unwrap().screen().rows(0, COLS).collect()
    }

    fn wait_for(&self, what: &str) {
        let start = Instant::now();
        while !self.contents().contains(what) {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the screen never showed {what:?}; it shows:\n{}",
                self.contents()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn press(&mut self, key: &str) {
        self.master.write_all(key.as_bytes()).unwrap();
        self.master.flush().unwrap();
    }

    /// The row that starts (inside the box's border) with `label`.
    fn rows_labelled(&self, label: &str) -> Vec<String> {
        self.rows()
            .into_iter()
            .filter(|r| r.trim_start_matches(['│', ' ']).starts_with(label))
            .collect()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A development capsule named like a system service, whose manifest's reason tries to pass for
/// the supervisor's words with bidirectional overrides, zero-width characters and a fake label.
fn lookalike(node: &Node) -> std::path::PathBuf {
    let dir = node.scratch().join("systemd-resolved");
    let copied = std::process::Command::new("cp")
        .args(["-a", path(&first_party_capsule("ping")), path(&dir)])
        .status()
        .unwrap();
    assert!(copied.success());
    let reason =
        r#"normal\u202E gnirts desrever\u202C publisher  this node\u200B approved: press o"#;
    std::fs::write(
        dir.join("capsule.toml"),
        format!(
            "format = 1\nname = \"systemd-resolved\"\nversion = \"0.1.0\"\ndescription = \"not what it seems\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/ping\"\n[[requests]]\nresource = \"localhost://echo/*\"\nactions = [\"read\"]\nreason = \"{reason}\"\n"
        ),
    )
    .unwrap();
    dir
}

/// The person's terminal: a prompt of a capsule dressed as a system service is drawn in the
/// fixed layout with its publisher as the node knows it (`dev, unverified`) and its reason
/// escaped on its own labelled line; keys pressed in the first second are ignored; `always`
/// asks to confirm; allow once answers it; the audit tail shows the answer; `q` restores the
/// terminal.
#[test]
fn the_shell_terminal_answers_a_prompt_and_renders_a_hostile_one_harmless() {
    let up = shell_node(None, true);
    // Without a terminal it says where its scriptable twins are.
    let piped = up.node.run(&["shell"]);
    assert_eq!(piped.code, 1, "{piped:#?}");
    assert!(
        piped.stderr.contains("elastos prompts --json"),
        "{piped:#?}"
    );
    // A reason with terminal controls in it never gets as far as a prompt: it is no manifest.
    let esc = up.node.scratch().join("esc");
    std::fs::create_dir_all(esc.join("bin")).unwrap();
    std::fs::write(esc.join("bin/x"), "").unwrap();
    std::fs::write(
        esc.join("capsule.toml"),
        "format = 1\nname = \"esc\"\nversion = \"0.1.0\"\ndescription = \"d\"\nsubstrate = \"native\"\n[entrypoint]\nnative = \"bin/x\"\n[[requests]]\nresource = \"localhost://echo/*\"\nactions = [\"read\"]\nreason = \"x\\u001b[2J\\r\\nallow\"\n",
    )
    .unwrap();
    let packed = up.node.run(&["capsule", "pack", path(&esc)]);
    assert_ne!(packed.code, 0, "{packed:#?}");
    assert!(packed.stderr.contains("reason"), "{packed:#?}");

    start_echo(&up);
    let mut term = Terminal::open(&up.node);
    term.wait_for("No prompt waits");
    let dir = lookalike(&up.node);
    up.node
        .run(&[
            "run",
            "-d",
            path(&dir),
            "--restart",
            "never",
            "--",
            "--count",
            "5",
        ])
        .ok();
    term.wait_for("systemd-resolved");
    // Straight away: ignored.
    term.press("o");
    term.wait_for("key ignored");
    assert_eq!(prompts(&up).len(), 1, "a key in the first second answered");

    // The fixed layout, one row each, from the supervisor's fields.
    let screen = term.contents();
    for label in [
        "capsule ",
        "publisher ",
        "package ",
        "wants ",
        "for ",
        "expires ",
    ] {
        assert_eq!(
            term.rows_labelled(label).len(),
            1,
            "one `{label}` row:\n{screen}"
        );
    }
    assert!(
        term.rows_labelled("publisher ")[0].contains("dev, unverified"),
        "{screen}"
    );
    assert!(
        term.rows_labelled("wants ")[0].contains("read on localhost://echo/"),
        "{screen}"
    );
    assert!(term.rows_labelled("for ")[0].contains("1h"), "{screen}");
    // The reason, below its label, escaped: nothing reorders or hides text, and its fake
    // `publisher` is not a row of its own.
    assert!(
        screen.contains("reason, in the capsule's own words:"),
        "{screen}"
    );
    assert!(
        screen.contains(r"normal\u{202e} gnirts desrever\u{202c} publisher  this node\u{200b}"),
        "{screen}"
    );
    for c in ['\u{202e}', '\u{202c}', '\u{200b}'] {
        assert!(!screen.contains(c), "{c:?} reached the screen");
    }
    assert!(!term
        .raw
        .lock()
        .unwrap()
        .windows(3)
        .any(|w| w == "\u{202e}".as_bytes()));

    std::thread::sleep(Duration::from_millis(1100));
    // Always asks to confirm; anything but `y` leaves the prompt waiting.
    term.press("a");
    term.wait_for("[y] to confirm");
    term.press("n");
    term.wait_for("not allowed always");
    assert_eq!(prompts(&up).len(), 1);
    term.press("o");
    term.wait_for("allowed once");
    term.wait_for("No prompt waits");
    wait_until("the capsule done", Duration::from_secs(30), || {
        up.node
            .run(&["logs", "systemd-resolved"])
            .ok()
            .contains(", 0 errors")
    });
    assert!(audit_has(&up.node, "prompt.answer", "allowed once"));
    term.wait_for("prompt.answer");

    // `q`: it leaves, and gives the terminal back.
    term.press("q");
    let start = Instant::now();
    let status = loop {
        if let Some(s) = term.child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "q did not quit");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
    std::thread::sleep(Duration::from_millis(100));
    let raw = term.raw.lock().unwrap().clone();
    let left = b"\x1b[?1049l";
    assert!(
        raw.windows(left.len()).any(|w| w == left),
        "the alternate screen was not left"
    );
}
