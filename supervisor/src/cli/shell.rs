//! `elastos shell`: the person's terminal. The prompts the supervisor pushes are drawn in a
//! fixed layout from the fields the supervisor verified (the capsule's name, its publisher as
//! the node knows it, its package, what it asks and for how long); the manifest's reason sits on
//! a line of its own, labelled as the capsule's words, escaped and cut to 200 characters, so no
//! text a capsule chose can pass for the question or for the supervisor's own words. The live
//! audit tail runs below. Answers go over the control socket, as `elastos allow` and `elastos
//! deny` send them, and keys are ignored for a second after a prompt appears, so a keystroke
//! meant for something else does not answer it.

use std::collections::VecDeque;
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use elastos::control::{PromptDecision, Request, Response};
use elastos::home::Home;
use elastos::text::sanitize_capped;
use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Paragraph, Wrap};
use ratatui::Frame;

/// How long keys are ignored after a prompt appears.
const KEY_GUARD: Duration = Duration::from_secs(1);
/// The manifest's reason is cut to this many characters.
const MAX_REASON: usize = 200;
/// Audit lines kept for the tail.
const TAIL: usize = 200;
/// How often the audit log is looked at for new records.
const AUDIT_EVERY: Duration = Duration::from_millis(500);

/// What the watch on the supervisor brings.
enum Pushed {
    Prompts(Vec<serde_json::Value>),
    /// The supervisor went away, or refused the watch.
    Gone(String),
}

/// The state of the screen.
struct Ui {
    prompts: Vec<serde_json::Value>,
    selected: usize,
    /// The prompt on screen and when it appeared: keys wait [`KEY_GUARD`] after.
    shown: Option<(String, Instant)>,
    /// An `always` answer waits for `y`.
    confirm: Option<String>,
    status: String,
    tail: VecDeque<Line<'static>>,
    did: String,
    gone: Option<String>,
}

pub fn run() -> anyhow::Result<ExitCode> {
    let home = Home::from_env()?;
    if !std::io::stdin().is_terminal() || !std::io::stdout().is_terminal() {
        anyhow::bail!(
            "`elastos shell` needs a terminal; its scriptable twins are `elastos prompts --json`, `elastos allow ID` and `elastos deny ID`"
        );
    }
    let status = super::ops::check(super::daemon::connect(&home)?.request(&Request::Status)?)?;
    let did = status.data["did"].as_str().unwrap_or("?").to_string();
    let mut watch = super::daemon::connect(&home)?;
    watch.send(&Request::WatchPrompts)?;
    let (tx, rx) = mpsc::channel();
    std::thread::Builder::new()
        .name("elastos-shell-watch".into())
        .spawn(move || loop {
            let pushed = match watch.recv::<Response>() {
                Ok(Some(r)) if r.ok => {
                    Pushed::Prompts(r.data.as_array().cloned().unwrap_or_default())
                }
                Ok(Some(r)) => {
                    Pushed::Gone(r.error.unwrap_or_else(|| "the watch was refused".into()))
                }
                Ok(None) => Pushed::Gone("the supervisor stopped".into()),
                Err(e) => Pushed::Gone(e.to_string()),
            };
            let last = matches!(pushed, Pushed::Gone(_));
            if tx.send(pushed).is_err() || last {
                return;
            }
        })
        .context("starting the prompt watch")?;

    let mut ui = Ui {
        prompts: Vec::new(),
        selected: 0,
        shown: None,
        confirm: None,
        status: String::new(),
        tail: VecDeque::new(),
        did,
        gone: None,
    };
    let mut audit = AuditTail::new(&home);
    audit.poll(&home, &mut ui.tail);
    let mut terminal = ratatui::try_init().context("setting up the terminal")?;
    let result = (|| -> anyhow::Result<()> {
        let mut audited = Instant::now();
        loop {
            while let Ok(p) = rx.try_recv() {
                match p {
                    Pushed::Prompts(list) => ui.prompts = list,
                    Pushed::Gone(why) => ui.gone = Some(why),
                }
            }
            ui.settle();
            if audited.elapsed() >= AUDIT_EVERY {
                audit.poll(&home, &mut ui.tail);
                audited = Instant::now();
            }
            terminal.draw(|f| ui.draw(f))?;
            if !event::poll(Duration::from_millis(100))? {
                continue;
            }
            let Event::Key(key) = event::read()? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            let ctrl_c =
                key.code == KeyCode::Char('c') && key.modifiers.contains(KeyModifiers::CONTROL);
            if ctrl_c || (ui.confirm.is_none() && matches!(key.code, KeyCode::Char('q'))) {
                return Ok(());
            }
            ui.key(key.code, &home);
        }
    })();
    ratatui::restore();
    result?;
    Ok(ExitCode::SUCCESS)
}

impl Ui {
    fn current(&self) -> Option<&serde_json::Value> {
        self.prompts.get(self.selected)
    }

    fn current_id(&self) -> Option<String> {
        self.current()
            .and_then(|p| p["id"].as_str())
            .map(str::to_string)
    }

    /// Keeps the selection in range, and restarts the key guard when a different prompt comes
    /// on screen (a new one, or the next after an answer).
    fn settle(&mut self) {
        self.selected = self.selected.min(self.prompts.len().saturating_sub(1));
        let id = self.current_id();
        if self.shown.as_ref().map(|(s, _)| s) != id.as_ref() {
            self.shown = id.map(|id| (id, Instant::now()));
            self.confirm = None;
        }
    }

    fn guarded(&self) -> bool {
        self.shown
            .as_ref()
            .is_some_and(|(_, at)| at.elapsed() < KEY_GUARD)
    }

    fn key(&mut self, code: KeyCode, home: &Home) {
        if let Some(id) = self.confirm.take() {
            if code == KeyCode::Char('y') && self.current_id().as_deref() == Some(&id) {
                self.answer(home, &id, PromptDecision::AllowAlways);
            } else {
                self.status = "not allowed always: the prompt still waits".into();
            }
            return;
        }
        let decision = match code {
            KeyCode::Up | KeyCode::Char('k') => {
                self.selected = self.selected.saturating_sub(1);
                return;
            }
            KeyCode::Down | KeyCode::Char('j') => {
                self.selected += 1;
                return;
            }
            KeyCode::Char('o') => PromptDecision::AllowOnce,
            KeyCode::Char('s') => PromptDecision::AllowSession,
            KeyCode::Char('a') => PromptDecision::AllowAlways,
            KeyCode::Char('d') => PromptDecision::Deny,
            KeyCode::Char('D') => PromptDecision::DenyAlways,
            _ => return,
        };
        let Some(id) = self.current_id() else {
            return;
        };
        if self.guarded() {
            self.status = "key ignored: keys wait a second after a prompt appears".into();
            return;
        }
        if decision == PromptDecision::AllowAlways {
            self.status = "allow always, across restarts? [y] to confirm, any other key: no".into();
            self.confirm = Some(id);
            return;
        }
        self.answer(home, &id, decision);
    }

    fn answer(&mut self, home: &Home, id: &str, decision: PromptDecision) {
        let sent = super::daemon::connect(home).and_then(|mut c| {
            Ok(c.request(&Request::PromptAnswer {
                id: id.to_string(),
                answer: decision,
            })?)
        });
        self.status = match sent {
            Ok(r) if r.ok => {
                let words = r.data["answer"].as_str().unwrap_or("answered");
                match r.data["grant"].as_str() {
                    Some(g) => format!("{words}: {id} (grant {g}; `elastos revoke {g}` ends it)"),
                    None => format!("{words}: {id}"),
                }
            }
            Ok(r) => format!("not answered: {}", r.error.unwrap_or_default()),
            Err(e) => format!("not answered: {e:#}"),
        };
        self.status = sanitize_capped(&self.status, 300);
    }

    fn draw(&self, f: &mut Frame) {
        let [head, prompt, keys, tail, status] = Layout::vertical([
            Constraint::Length(1),
            Constraint::Length(11),
            Constraint::Length(1),
            Constraint::Min(3),
            Constraint::Length(1),
        ])
        .areas(f.area());
        let waiting = match self.prompts.len() {
            0 => "no prompt waits".to_string(),
            1 => "1 prompt waits".to_string(),
            n => format!("{n} prompts wait"),
        };
        f.render_widget(
            Paragraph::new(Line::from(vec![
                Span::styled("elastos shell", Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(format!("  ·  {waiting}  ·  node {}", shown(&self.did, 80))),
            ])),
            head,
        );
        f.render_widget(self.prompt_box(), prompt);
        let help = if self.confirm.is_some() {
            "[y] allow always   any other key: back".to_string()
        } else if self.prompts.is_empty() {
            "[q]uit".to_string()
        } else {
            let mut h = "allow [o]nce  for this [s]ession  [a]lways   [d]eny  [D]eny always   ↑↓ choose   [q]uit".to_string();
            if self.guarded() {
                h.push_str("   (keys wait a second)");
            }
            h
        };
        f.render_widget(Paragraph::new(help), keys);
        let rows = tail.height.saturating_sub(2) as usize;
        let lines: Vec<Line> = self
            .tail
            .iter()
            .skip(self.tail.len().saturating_sub(rows))
            .cloned()
            .collect();
        f.render_widget(
            Paragraph::new(lines).block(Block::bordered().title(" audit ")),
            tail,
        );
        let line = match &self.gone {
            Some(why) => Line::styled(
                format!("the supervisor is gone ({}): [q]uit", shown(why, 200)),
                Style::new().fg(Color::Red),
            ),
            None => Line::raw(self.status.clone()),
        };
        f.render_widget(Paragraph::new(line), status);
    }

    /// The prompt on screen: always the same rows, in the same order, each labelled.
    fn prompt_box(&self) -> Paragraph<'static> {
        let title = format!(" prompt {} of {} ", self.selected + 1, self.prompts.len());
        let Some(p) = self.current() else {
            return Paragraph::new(
                "No prompt waits. When the policy says to ask, the request appears here.",
            )
            .block(Block::bordered().title(" prompts "));
        };
        let field = |k: &str| shown(p[k].as_str().unwrap_or("?"), 120);
        let label = |l: &'static str| Span::styled(l, Style::new().fg(Color::DarkGray));
        let publisher = field("publisher");
        let publisher_style = match publisher.as_str() {
            "this node" => Style::new().fg(Color::Green),
            "dev, unverified" => Style::new().fg(Color::Red).add_modifier(Modifier::BOLD),
            _ => Style::new().fg(Color::Yellow),
        };
        let actions: Vec<String> = p["actions"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str())
                    .map(|x| shown(x, 16))
                    .collect()
            })
            .unwrap_or_default();
        let left = p["expires_at"]
            .as_str()
            .and_then(|t| humantime::parse_rfc3339_weak(t).ok())
            .and_then(|t| t.duration_since(std::time::SystemTime::now()).ok())
            .map_or("now".to_string(), |d| format!("in {} s", d.as_secs()));
        let lines = vec![
            Line::from(vec![
                label("capsule    "),
                Span::styled(field("capsule"), Style::new().add_modifier(Modifier::BOLD)),
            ]),
            Line::from(vec![
                label("publisher  "),
                Span::styled(publisher, publisher_style),
            ]),
            Line::from(vec![
                label("package    "),
                Span::raw(short_cid(&field("cid"))),
            ]),
            Line::from(vec![
                label("wants      "),
                Span::styled(actions.join(","), Style::new().add_modifier(Modifier::BOLD)),
                Span::raw(" on "),
                Span::styled(field("resource"), Style::new().add_modifier(Modifier::BOLD)),
            ]),
            Line::from(vec![label("for        "), Span::raw(field("duration"))]),
            Line::from(vec![label("expires    "), Span::raw(left)]),
            Line::from(label("reason, in the capsule's own words:")),
            Line::from(Span::styled(
                shown(p["reason"].as_str().unwrap_or(""), MAX_REASON),
                Style::new().add_modifier(Modifier::ITALIC),
            )),
        ];
        Paragraph::new(lines)
            .wrap(Wrap { trim: false })
            .block(Block::bordered().title(title))
    }
}

/// Foreign text as it may be drawn: controls, bidirectional and zero-width characters escaped,
/// cut to `max` characters.
fn shown(s: &str, max: usize) -> String {
    sanitize_capped(s, max)
}

/// A CID short enough to read, long enough to tell apart: its start and end.
fn short_cid(cid: &str) -> String {
    let n = cid.chars().count();
    if n <= 20 {
        return cid.to_string();
    }
    let head: String = cid.chars().take(10).collect();
    let tail: String = cid.chars().skip(n - 6).collect();
    format!("{head}…{tail}")
}

/// The audit log's newest records, followed from the start of its newest segment.
struct AuditTail {
    cursor: elastos::audit::Cursor,
}

impl AuditTail {
    fn new(home: &Home) -> AuditTail {
        AuditTail {
            cursor: elastos::audit::Cursor::newest_segment(&home.audit_dir()),
        }
    }

    fn poll(&mut self, home: &Home, tail: &mut VecDeque<Line<'static>>) {
        let Ok(records) = elastos::audit::read_since(&home.audit_dir(), &mut self.cursor) else {
            return;
        };
        for rec in records.into_iter().flatten() {
            let style = match rec.decision {
                elastos::audit::Decision::Denied => Style::new().fg(Color::Red),
                elastos::audit::Decision::Allowed => Style::new().fg(Color::Green),
                elastos::audit::Decision::Info => Style::new(),
            };
            let time = rec.time.get(11..19).unwrap_or(&rec.time).to_string();
            tail.push_back(Line::from(vec![
                Span::raw(format!("{time} #{} ", rec.seq)),
                Span::styled(format!("{:<7}", rec.decision.to_string()), style),
                Span::raw(format!(
                    " {} {} {} {}",
                    shown(&rec.actor, 40),
                    shown(&rec.action, 40),
                    shown(&rec.resource, 80),
                    shown(&rec.reason, 160)
                )),
            ]));
            if tail.len() > TAIL {
                tail.pop_front();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cid_is_shown_by_its_ends() {
        let cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy";
        assert_eq!(short_cid(cid), "bafkreigh2…4s52zy");
        assert_eq!(short_cid("dev"), "dev");
    }
}
