//! The SDK against a scripted supervisor: an in-memory [`Transport`] that decodes what the
//! capsule sends and queues whatever the script answers.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};

use capnp::message::Builder;
use elastos_schema::wire;
use elastos_schema::wire_capnp::{frame, Status};

use super::*;

const T0: i64 = 1_700_000_000;

/// A frame the capsule sent, decoded.
#[derive(Debug, Clone, PartialEq)]
enum Sent {
    Hello {
        version: u16,
        sdk: String,
    },
    Call {
        id: u64,
        target: String,
        action: Action,
        token: Vec<u8>,
        payload: Vec<u8>,
        deadline_ms: u32,
    },
    RequestToken {
        id: u64,
        resource: String,
        actions: Vec<Action>,
        reason: String,
        ttl: u32,
    },
    Serve {
        id: u64,
        pattern: String,
        token: Vec<u8>,
    },
    Reply {
        id: u64,
        status: Status,
        message: String,
        payload: Vec<u8>,
    },
}

fn decode_sent(frame: &[u8]) -> Sent {
    let len = u32::from_le_bytes(frame[..4].try_into().unwrap()) as usize;
    assert_eq!(len, frame.len() - 4, "one frame per send");
    let msg = wire::decode(&frame[4..]).unwrap();
    let root = msg.get_root::<frame::Reader>().unwrap();
    let s = |t: capnp::Result<capnp::text::Reader<'_>>| t.unwrap().to_string().unwrap();
    match root.which().unwrap() {
        frame::Which::Hello(h) => {
            let h = h.unwrap();
            Sent::Hello {
                version: h.get_version(),
                sdk: s(h.get_sdk()),
            }
        }
        frame::Which::Call(c) => {
            let c = c.unwrap();
            Sent::Call {
                id: c.get_id(),
                target: s(c.get_target()),
                action: Action::from(c.get_action().unwrap()),
                token: c.get_token().unwrap().to_vec(),
                payload: c.get_payload().unwrap().to_vec(),
                deadline_ms: c.get_deadline_ms(),
            }
        }
        frame::Which::RequestToken(r) => {
            let r = r.unwrap();
            Sent::RequestToken {
                id: r.get_id(),
                resource: s(r.get_resource()),
                actions: r
                    .get_actions()
                    .unwrap()
                    .iter()
                    .map(|a| Action::from(a.unwrap()))
                    .collect(),
                reason: s(r.get_reason()),
                ttl: r.get_ttl_seconds(),
            }
        }
        frame::Which::Serve(v) => {
            let v = v.unwrap();
            Sent::Serve {
                id: v.get_id(),
                pattern: s(v.get_pattern()),
                token: v.get_token().unwrap().to_vec(),
            }
        }
        frame::Which::Reply(r) => {
            let r = r.unwrap();
            Sent::Reply {
                id: r.get_id(),
                status: r.get_status().unwrap(),
                message: s(r.get_message()),
                payload: r.get_payload().unwrap().to_vec(),
            }
        }
        _ => panic!("a capsule sent a supervisor frame"),
    }
}

/// What the fake supervisor delivers to the capsule.
enum Out {
    Body(Vec<u8>),
    TooLong,
}

type Script = Box<dyn FnMut(&Sent) -> Vec<Out> + Send>;

struct State {
    to_capsule: VecDeque<Out>,
    sent: Vec<Sent>,
    script: Script,
}

#[derive(Clone)]
struct Fake(Arc<Mutex<State>>);

impl Fake {
    fn sent(&self) -> Vec<Sent> {
        self.0.lock().unwrap().sent.clone()
    }
    fn token_requests(&self) -> Vec<Sent> {
        self.sent()
            .into_iter()
            .filter(|s| matches!(s, Sent::RequestToken { .. }))
            .collect()
    }
    fn last_call_token(&self) -> Vec<u8> {
        self.sent()
            .into_iter()
            .rev()
            .find_map(|s| match s {
                Sent::Call { token, .. } => Some(token),
                _ => None,
            })
            .expect("no call sent")
    }
    fn push(&self, out: Out) {
        self.0.lock().unwrap().to_capsule.push_back(out);
    }
}

impl Transport for Fake {
    fn send(&mut self, frame: &[u8]) -> io::Result<()> {
        let sent = decode_sent(frame);
        let mut state = self.0.lock().unwrap();
        let out = (state.script)(&sent);
        state.sent.push(sent);
        state.to_capsule.extend(out);
        Ok(())
    }

    fn recv(&mut self) -> Result<Option<Vec<u8>>, FrameError> {
        match self.0.lock().unwrap().to_capsule.pop_front() {
            None => Ok(None),
            Some(Out::Body(b)) => Ok(Some(b)),
            Some(Out::TooLong) => Err(FrameError::TooLong {
                len: u32::MAX,
                max: wire::MAX_FRAME,
            }),
        }
    }
}

fn body(m: &Builder<capnp::message::HeapAllocator>) -> Out {
    Out::Body(wire::encode(m).unwrap()[4..].to_vec())
}

fn welcome(version: u16, max_frame: u32) -> Out {
    let mut m = Builder::new_default();
    let mut w = m.init_root::<frame::Builder>().init_welcome();
    w.set_version(version);
    w.set_name("tester");
    w.set_cid("bafytest");
    w.set_max_frame(max_frame);
    body(&m)
}

fn answer(id: u64, status: Status, message: &str, payload: &[u8]) -> Out {
    let mut m = Builder::new_default();
    let mut a = m.init_root::<frame::Builder>().init_answer();
    a.set_id(id);
    a.set_status(status);
    a.set_message(message);
    a.set_payload(payload);
    body(&m)
}

fn granted(id: u64, token: &[u8], resource: &str, actions: &[Action], expiry: i64) -> Out {
    let mut m = Builder::new_default();
    let mut r = m.init_root::<frame::Builder>().init_token_reply();
    r.set_id(id);
    r.set_status(Status::Ok);
    r.set_token(token);
    r.set_expiry(expiry);
    r.set_resource(resource);
    let mut l = r.init_actions(actions.len() as u32);
    for (i, a) in actions.iter().enumerate() {
        l.set(i as u32, elastos_schema::token_capnp::Action::from(*a));
    }
    body(&m)
}

fn token_refused(id: u64, status: Status, message: &str) -> Out {
    let mut m = Builder::new_default();
    let mut r = m.init_root::<frame::Builder>().init_token_reply();
    r.set_id(id);
    r.set_status(status);
    r.set_message(message);
    body(&m)
}

fn serve_reply(id: u64, status: Status, message: &str) -> Out {
    let mut m = Builder::new_default();
    let mut r = m.init_root::<frame::Builder>().init_serve_reply();
    r.set_id(id);
    r.set_status(status);
    r.set_message(message);
    body(&m)
}

fn incoming(id: u64, resource: &str, payload: &[u8], stream: u64) -> Out {
    let mut m = Builder::new_default();
    let mut i = m.init_root::<frame::Builder>().init_incoming();
    i.set_id(id);
    {
        let mut c = i.reborrow().init_caller();
        c.set_name("ping");
        c.set_cid("bafyping");
        c.set_publisher("dev");
    }
    i.set_action(elastos_schema::token_capnp::Action::from(Action::Read));
    i.set_resource(resource);
    i.set_payload(payload);
    i.set_deadline_ms(30_000);
    i.set_stream(stream);
    body(&m)
}

/// The common supervisor: welcomes, and grants `localhost://echo/*` for anything below it (the
/// exact resource otherwise) for an hour, numbering tokens `token-1`, `token-2`, ...
fn standard(clock: Arc<AtomicI64>) -> impl FnMut(&Sent) -> Option<Vec<Out>> + Send {
    let mut issued = 0;
    move |sent| match sent {
        Sent::Hello { .. } => Some(vec![welcome(versions::WIRE, wire::MAX_FRAME)]),
        Sent::RequestToken {
            id,
            resource,
            actions,
            ..
        } => {
            issued += 1;
            let wide = if resource.starts_with("localhost://echo/") && actions != &[Action::Admin] {
                "localhost://echo/*"
            } else {
                resource
            };
            let token = format!("token-{issued}");
            let expiry = clock.load(Ordering::SeqCst) + 3600;
            Some(vec![granted(*id, token.as_bytes(), wide, actions, expiry)])
        }
        _ => None,
    }
}

/// A connected capsule whose supervisor runs `standard`, then `rest` for everything else.
fn connect(
    mut rest: impl FnMut(&Sent) -> Vec<Out> + Send + 'static,
) -> (Capsule<Fake>, Fake, Arc<AtomicI64>) {
    let clock = Arc::new(AtomicI64::new(T0));
    let mut std_part = standard(clock.clone());
    let script: Script = Box::new(move |s| std_part(s).unwrap_or_else(|| rest(s)));
    connect_with(script, clock)
}

fn connect_with(script: Script, clock: Arc<AtomicI64>) -> (Capsule<Fake>, Fake, Arc<AtomicI64>) {
    let fake = Fake(Arc::new(Mutex::new(State {
        to_capsule: VecDeque::new(),
        sent: Vec::new(),
        script,
    })));
    let mut capsule = Capsule::with_transport(fake.clone()).expect("connect");
    let c = clock.clone();
    capsule.set_clock(move || c.load(Ordering::SeqCst));
    (capsule, fake, clock)
}

/// Echoes every call at once.
fn echo(sent: &Sent) -> Vec<Out> {
    match sent {
        Sent::Call { id, payload, .. } => vec![answer(*id, Status::Ok, "", payload)],
        _ => vec![],
    }
}

fn handshake_with(first: Vec<Out>) -> Result<Capsule<Fake>, SdkError> {
    let mut first = Some(first);
    let script: Script = Box::new(move |_| first.take().unwrap_or_default());
    let fake = Fake(Arc::new(Mutex::new(State {
        to_capsule: VecDeque::new(),
        sent: Vec::new(),
        script,
    })));
    Capsule::with_transport(fake)
}

#[test]
fn hello_then_welcome() {
    let (capsule, fake, _) = connect(echo);
    let Sent::Hello { version, sdk } = &fake.sent()[0] else {
        panic!("the first frame is not a hello");
    };
    assert_eq!(*version, versions::WIRE);
    assert!(
        sdk.starts_with("elastos-sdk ") && sdk.ends_with(" native"),
        "{sdk}"
    );
    assert_eq!(capsule.name(), "tester");
    assert_eq!(capsule.cid(), "bafytest");
    assert_eq!(capsule.max_frame(), wire::MAX_FRAME);
    assert!(capsule.is_connected());
}

#[test]
fn a_welcome_with_another_version_is_refused() {
    let err = handshake_with(vec![welcome(versions::WIRE + 1, wire::MAX_FRAME)])
        .err()
        .unwrap();
    assert!(
        matches!(err, SdkError::Version { ours, theirs } if ours == versions::WIRE && theirs == versions::WIRE + 1),
        "{err}"
    );
}

#[test]
fn a_refused_hello_an_early_close_and_junk_are_errors() {
    let err = handshake_with(vec![answer(
        0,
        Status::BadRequest,
        "version 9 unknown",
        &[],
    )])
    .err()
    .unwrap();
    assert!(
        matches!(&err, SdkError::Refused { kind: ErrorKind::BadRequest, message } if message == "version 9 unknown"),
        "{err}"
    );
    let err = handshake_with(vec![]).err().unwrap();
    assert!(matches!(err, SdkError::Closed), "{err}");
    let err = handshake_with(vec![Out::Body(vec![9; 5])]).err().unwrap();
    assert!(matches!(err, SdkError::Protocol(_)), "{err}");
    let err = handshake_with(vec![answer(1, Status::Ok, "", b"x")])
        .err()
        .unwrap();
    assert!(matches!(err, SdkError::Protocol(_)), "{err}");
    let err = handshake_with(vec![welcome(versions::WIRE, 0)])
        .err()
        .unwrap();
    assert!(matches!(err, SdkError::Protocol(_)), "{err}");
}

#[test]
fn a_call_asks_for_a_token_once_and_reuses_a_wider_grant() {
    let (mut c, fake, _) = connect(echo);
    assert_eq!(
        c.call("localhost://echo/a", Action::Read, b"1").unwrap(),
        b"1"
    );
    assert_eq!(
        fake.token_requests(),
        vec![Sent::RequestToken {
            id: 1,
            resource: "localhost://echo/a".into(),
            actions: vec![Action::Read],
            reason: "call localhost://echo/a".into(),
            ttl: 3600,
        }]
    );
    assert_eq!(fake.last_call_token(), b"token-1");
    // The grant was `localhost://echo/*`: it covers siblings and deeper URIs.
    c.call("localhost://echo/b", Action::Read, b"2").unwrap();
    c.call("localhost://echo/b/c", Action::Read, b"3").unwrap();
    assert_eq!(fake.token_requests().len(), 1);
    assert_eq!(fake.last_call_token(), b"token-1");
    // ... but not the pattern's base itself, nor another action.
    c.call("localhost://echo", Action::Read, b"4").unwrap();
    assert_eq!(fake.token_requests().len(), 2);
    assert_eq!(fake.last_call_token(), b"token-2");
    c.call("localhost://echo/a", Action::Write, b"5").unwrap();
    assert_eq!(fake.token_requests().len(), 3);
    assert_eq!(fake.last_call_token(), b"token-3");
    c.call("localhost://echo/z", Action::Read, b"6").unwrap();
    assert_eq!(fake.last_call_token(), b"token-1");
}

#[test]
fn a_grant_is_renewed_a_minute_before_it_expires() {
    let (mut c, fake, clock) = connect(echo);
    c.call("localhost://echo/a", Action::Read, b"").unwrap();
    let expiry = T0 + 3600;
    clock.store(expiry - 61, Ordering::SeqCst);
    c.call("localhost://echo/a", Action::Read, b"").unwrap();
    assert_eq!(fake.token_requests().len(), 1);
    assert_eq!(fake.last_call_token(), b"token-1");
    clock.store(expiry - 59, Ordering::SeqCst);
    c.call("localhost://echo/a", Action::Read, b"").unwrap();
    assert_eq!(fake.token_requests().len(), 2);
    assert_eq!(fake.last_call_token(), b"token-2");
    // The renewal replaced the old grant and is itself used from now on.
    c.call("localhost://echo/b", Action::Read, b"").unwrap();
    assert_eq!(fake.token_requests().len(), 2);
    assert_eq!(fake.last_call_token(), b"token-2");
}

#[test]
fn a_short_grant_is_renewed_in_the_last_tenth_of_its_life() {
    let clock = Arc::new(AtomicI64::new(T0));
    let now = clock.clone();
    let mut issued = 0;
    let script: Script = Box::new(move |s| match s {
        Sent::Hello { .. } => vec![welcome(versions::WIRE, wire::MAX_FRAME)],
        Sent::RequestToken {
            id,
            resource,
            actions,
            ..
        } => {
            issued += 1;
            let expiry = now.load(Ordering::SeqCst) + 100;
            let token = format!("token-{issued}");
            vec![granted(*id, token.as_bytes(), resource, actions, expiry)]
        }
        other => echo(other),
    });
    let (mut c, fake, clock) = connect_with(script, clock);
    let target = "localhost://echo/a";
    c.call(target, Action::Read, b"").unwrap();
    clock.store(T0 + 89, Ordering::SeqCst);
    c.call(target, Action::Read, b"").unwrap();
    assert_eq!(fake.token_requests().len(), 1);
    clock.store(T0 + 91, Ordering::SeqCst);
    c.call(target, Action::Read, b"").unwrap();
    assert_eq!(fake.token_requests().len(), 2);
}

#[test]
fn request_token_returns_the_grant_and_caches_it() {
    let (mut c, fake, _) = connect(echo);
    let grant = c
        .request_token(
            "localhost://echo/x",
            &[Action::Read],
            "warm up",
            Duration::from_millis(1500),
        )
        .unwrap();
    assert_eq!(grant.resource, "localhost://echo/*");
    assert_eq!(grant.actions, vec![Action::Read]);
    assert_eq!(grant.expiry, T0 + 3600);
    assert_eq!(grant.token, b"token-1");
    assert!(
        !format!("{grant:?}").contains("token-1"),
        "tokens stay out of logs"
    );
    let Sent::RequestToken { reason, ttl, .. } = &fake.token_requests()[0] else {
        unreachable!()
    };
    assert_eq!((reason.as_str(), *ttl), ("warm up", 2));
    c.call("localhost://echo/y", Action::Read, b"").unwrap();
    assert_eq!(fake.token_requests().len(), 1);
}

#[test]
fn a_token_request_told_to_wait_goes_on_waiting_and_the_app_hears_it() {
    let script: Script = Box::new(|s| match s {
        Sent::Hello { .. } => vec![welcome(versions::WIRE, wire::MAX_FRAME)],
        // Told it waits for the person (twice, as a reconnecting shell might), then granted.
        Sent::RequestToken { id, .. } => vec![
            token_refused(*id, Status::Pending, ""),
            token_refused(*id, Status::Pending, ""),
            granted(
                *id,
                b"token-1",
                "localhost://echo/*",
                &[Action::Read],
                T0 + 60,
            ),
        ],
        other => echo(other),
    });
    let (mut c, _, _) = connect_with(script, Arc::new(AtomicI64::new(T0)));
    let told = Arc::new(AtomicI64::new(0));
    let t = told.clone();
    c.on_waiting(move || {
        t.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    });
    let grant = c
        .request_token("localhost://echo/x", &[Action::Read], "", Duration::ZERO)
        .unwrap();
    assert_eq!(grant.token, b"token-1");
    assert_eq!(told.load(std::sync::atomic::Ordering::Relaxed), 2);
}

#[test]
fn pending_is_no_answer_to_a_call_nor_to_a_request_never_made() {
    let (mut c, _, _) = connect(|s| match s {
        Sent::Call { id, .. } => vec![answer(*id, Status::Pending, "", b"")],
        _ => vec![],
    });
    let err = c.call("localhost://echo/s", Action::Read, b"").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Protocol);
    let (mut c, _, _) = connect(|s| match s {
        Sent::Call { id, .. } => vec![
            token_refused(77, Status::Pending, ""),
            answer(*id, Status::Ok, "", b"x"),
        ],
        _ => vec![],
    });
    let err = c.call("localhost://echo/s", Action::Read, b"").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Protocol, "{err:?}");
}

#[test]
fn a_refused_token_fails_the_call_without_sending_it() {
    let clock = Arc::new(AtomicI64::new(T0));
    let script: Script = Box::new(|s| match s {
        Sent::Hello { .. } => vec![welcome(versions::WIRE, wire::MAX_FRAME)],
        Sent::RequestToken { id, .. } => {
            vec![token_refused(
                *id,
                Status::Denied,
                "add a [[requests]] entry",
            )]
        }
        other => echo(other),
    });
    let (mut c, fake, _) = connect_with(script, clock);
    let err = c
        .call("localhost://secret/x", Action::Read, b"")
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::Denied);
    assert_eq!(err.message, "add a [[requests]] entry");
    assert!(!fake.sent().iter().any(|s| matches!(s, Sent::Call { .. })));
}

#[test]
fn pipelined_answers_may_arrive_in_any_order() {
    let mut held: Vec<(u64, Vec<u8>)> = Vec::new();
    let (mut c, fake, _) = connect(move |s| {
        let Sent::Call { id, payload, .. } = s else {
            return vec![];
        };
        held.push((*id, payload.clone()));
        if held.len() < 3 {
            return vec![];
        }
        [2, 0, 1]
            .into_iter()
            .map(|i| answer(held[i].0, Status::Ok, "", &held[i].1))
            .collect()
    });
    let ids: Vec<CallId> = (0..3u8)
        .map(|i| {
            c.send_call("localhost://echo/p", Action::Read, &[i], None)
                .unwrap()
        })
        .collect();
    assert_eq!(ids.iter().map(|i| i.get()).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(c.in_flight(), 3);
    assert_eq!(c.wait(ids[0]).unwrap(), [0]);
    assert_eq!(c.wait(ids[1]).unwrap(), [1]);
    assert_eq!(c.wait(ids[2]).unwrap(), [2]);
    assert_eq!(c.in_flight(), 0);
    assert_eq!(fake.token_requests().len(), 1);
    let err = c.wait(ids[0]).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Protocol);
}

#[test]
fn wait_any_hands_out_answers_as_they_come() {
    let mut held: Vec<(u64, Vec<u8>)> = Vec::new();
    let (mut c, _, _) = connect(move |s| {
        let Sent::Call { id, payload, .. } = s else {
            return vec![];
        };
        held.push((*id, payload.clone()));
        if held.len() < 3 {
            return vec![];
        }
        [2, 1, 0]
            .into_iter()
            .map(|i| answer(held[i].0, Status::Ok, "", &held[i].1))
            .collect()
    });
    for i in 0..3u8 {
        c.send_call(
            "localhost://echo/p",
            Action::Read,
            &[i],
            Some(Duration::from_secs(1)),
        )
        .unwrap();
    }
    let (first, r) = c.wait_any().unwrap().unwrap();
    assert_eq!((first.get(), r.unwrap()), (3, vec![2]));
    let mut rest: Vec<u64> = Vec::new();
    while let Some((id, r)) = c.wait_any().unwrap() {
        r.unwrap();
        rest.push(id.get());
    }
    rest.sort();
    assert_eq!(rest, [1, 2]);
}

#[test]
fn deadlines_are_sent_in_milliseconds_and_zero_is_not_the_default() {
    let (mut c, fake, _) = connect(echo);
    for d in [
        None,
        Some(Duration::ZERO),
        Some(Duration::from_millis(1500)),
    ] {
        let id = c
            .send_call("localhost://echo/d", Action::Read, b"", d)
            .unwrap();
        c.wait(id).unwrap();
    }
    let deadlines: Vec<u32> = fake
        .sent()
        .into_iter()
        .filter_map(|s| match s {
            Sent::Call { deadline_ms, .. } => Some(deadline_ms),
            _ => None,
        })
        .collect();
    assert_eq!(deadlines, [0, 1, 1500]);
}

#[test]
fn each_incoming_call_names_its_own_caller_even_when_callers_are_shared() {
    let frame_from = |name: &str, cid: &str, publisher: &str| {
        let mut m = Builder::new_default();
        let mut i = m.init_root::<frame::Builder>().init_incoming();
        i.set_id(1);
        {
            let mut c = i.reborrow().init_caller();
            c.set_name(name);
            c.set_cid(cid);
            c.set_publisher(publisher);
        }
        i.set_resource("localhost://me/a");
        wire::encode(&m).unwrap()[4..].to_vec()
    };
    let mut last = None;
    let mut caller = |body: Vec<u8>| match frames::parse(&body, &mut last).unwrap() {
        frames::Event::Incoming(i) => i.caller,
        other => panic!("not an incoming call: {other:?}"),
    };
    let a = caller(frame_from("ping", "bafyping", "dev"));
    let b = caller(frame_from("ping", "bafyping", "dev"));
    assert!(Arc::ptr_eq(&a, &b), "the same caller is shared");
    // Any field that differs is another caller, never the cached one.
    for (name, cid, publisher) in [
        ("notes", "bafyping", "dev"),
        ("ping", "bafyother", "dev"),
        ("ping", "bafyping", "did:key:z6Mk"),
    ] {
        let c = caller(frame_from(name, cid, publisher));
        assert_eq!(
            (c.name.as_str(), c.cid.as_str(), c.publisher.as_str()),
            (name, cid, publisher)
        );
        let back = caller(frame_from("ping", "bafyping", "dev"));
        assert_eq!(*back, *a);
    }
}

#[test]
fn incoming_calls_interleaved_with_answers_are_queued() {
    let (mut c, fake, _) = connect(|s| match s {
        Sent::Call { id, payload, .. } => vec![
            incoming(7, "localhost://me/a", b"in-7", 0),
            incoming(8, "localhost://me/b", b"in-8", 0),
            answer(*id, Status::Ok, "", payload),
        ],
        _ => vec![],
    });
    assert_eq!(
        c.call("localhost://echo/x", Action::Read, b"out").unwrap(),
        b"out"
    );
    let first = c.next_incoming().unwrap().unwrap();
    assert_eq!(first.id, 7);
    assert_eq!(first.payload, b"in-7");
    assert_eq!(first.resource, "localhost://me/a");
    assert_eq!(first.action, Action::Read);
    assert_eq!(first.deadline, Some(Duration::from_secs(30)));
    assert_eq!(
        *first.caller,
        Caller {
            name: "ping".into(),
            cid: "bafyping".into(),
            publisher: "dev".into()
        }
    );
    c.reply(first.id, Ok(b"done".to_vec())).unwrap();
    let second = c.next_incoming().unwrap().unwrap();
    // The same caller again: shared, not copied.
    assert!(std::sync::Arc::ptr_eq(&first.caller, &second.caller));
    c.reply(second.id, Err("no such note".into())).unwrap();
    let replies: Vec<Sent> = fake
        .sent()
        .into_iter()
        .filter(|s| matches!(s, Sent::Reply { .. }))
        .collect();
    assert_eq!(
        replies,
        vec![
            Sent::Reply {
                id: 7,
                status: Status::Ok,
                message: String::new(),
                payload: b"done".to_vec()
            },
            Sent::Reply {
                id: 8,
                status: Status::ProviderError,
                message: "no such note".into(),
                payload: vec![]
            },
        ]
    );
    // The script closes after that: end of the incoming calls, not an error.
    assert!(c.next_incoming().unwrap().is_none());
    assert!(!c.is_connected());
}

#[test]
fn a_streamed_incoming_is_answered_with_an_error_and_not_queued() {
    let (mut c, fake, _) = connect(|_| vec![]);
    fake.push(incoming(3, "localhost://me/a", b"", 42));
    fake.push(incoming(4, "localhost://me/a", b"ok", 0));
    assert_eq!(c.next_incoming().unwrap().unwrap().id, 4);
    let Some(Sent::Reply {
        id: 3,
        status: Status::ProviderError,
        message,
        ..
    }) = fake.sent().last().cloned()
    else {
        panic!("no error reply: {:?}", fake.sent());
    };
    assert!(message.contains("stream"), "{message}");
}

#[test]
fn every_wire_status_maps_to_its_kind() {
    let statuses = [
        (Status::Denied, ErrorKind::Denied),
        (Status::NotFound, ErrorKind::NotFound),
        (Status::Busy, ErrorKind::Busy),
        (Status::Timeout, ErrorKind::Timeout),
        (Status::Unavailable, ErrorKind::Unavailable),
        (Status::BadRequest, ErrorKind::BadRequest),
        (Status::ProviderError, ErrorKind::ProviderError),
    ];
    let mut next = statuses.into_iter().cycle();
    let (mut c, _, _) = connect(move |s| match s {
        Sent::Call { id, .. } => {
            let (status, _) = next.next().unwrap();
            vec![answer(
                *id,
                status,
                &format!("because {}", status as u16),
                b"",
            )]
        }
        _ => vec![],
    });
    for (status, kind) in statuses {
        let err = c.call("localhost://echo/s", Action::Read, b"").unwrap_err();
        assert_eq!(err.kind, kind);
        assert_eq!(err.message, format!("because {}", status as u16));
        assert_eq!(
            err.is_transient(),
            matches!(
                kind,
                ErrorKind::NotFound | ErrorKind::Unavailable | ErrorKind::Busy
            )
        );
    }
}

#[test]
fn a_denied_call_drops_the_grant_it_used() {
    let mut first = true;
    let (mut c, fake, _) = connect(move |s| match s {
        Sent::Call { id, payload, .. } if std::mem::take(&mut first) => {
            vec![answer(*id, Status::Denied, "revoked", payload)]
        }
        other => echo(other),
    });
    let err = c.call("localhost://echo/a", Action::Read, b"").unwrap_err();
    assert_eq!(err.kind, ErrorKind::Denied);
    c.call("localhost://echo/a", Action::Read, b"").unwrap();
    assert_eq!(fake.token_requests().len(), 2);
    assert_eq!(fake.last_call_token(), b"token-2");
}

#[test]
fn a_malformed_frame_is_an_error_and_the_connection_goes_on() {
    let (mut c, fake, _) = connect(|_| vec![]);
    let id = c
        .send_call("localhost://echo/m", Action::Read, b"m", None)
        .unwrap();
    fake.push(Out::Body(vec![0xff; 24]));
    fake.push(Out::Body(vec![1, 2, 3]));
    fake.push(answer(99, Status::Ok, "", b""));
    fake.push(answer(id.get(), Status::Ok, "", b"m"));
    for _ in 0..3 {
        let err = c.wait(id).unwrap_err();
        assert_eq!(err.kind, ErrorKind::Protocol, "{err}");
    }
    assert!(c.is_connected());
    assert_eq!(c.wait(id).unwrap(), b"m");
}

#[test]
fn frames_only_capsules_send_are_protocol_errors() {
    let (mut c, fake, _) = connect(|_| vec![]);
    let mut m = Builder::new_default();
    let mut call = m.init_root::<frame::Builder>().init_call();
    call.set_id(1);
    call.set_target("localhost://x/y");
    fake.push(body(&m));
    fake.push(welcome(versions::WIRE, 1024));
    fake.push(token_refused(5, Status::Denied, "never asked"));
    fake.push(serve_reply(5, Status::Ok, ""));
    for _ in 0..4 {
        assert!(matches!(c.next_incoming(), Err(SdkError::Protocol(_))));
    }
    assert!(c.next_incoming().unwrap().is_none());
}

#[test]
fn an_answer_to_call_zero_reports_a_refused_frame() {
    let (mut c, fake, _) = connect(|_| vec![]);
    let id = c
        .send_call("localhost://echo/z", Action::Read, b"", None)
        .unwrap();
    fake.push(answer(0, Status::BadRequest, "malformed frame: x", b""));
    let err = c.wait(id).unwrap_err();
    assert_eq!(err.kind, ErrorKind::BadRequest);
    assert_eq!(err.message, "malformed frame: x");
}

#[test]
fn an_oversized_frame_ends_the_connection() {
    let (mut c, fake, _) = connect(|_| vec![]);
    let id = c
        .send_call("localhost://echo/o", Action::Read, b"", None)
        .unwrap();
    fake.push(Out::TooLong);
    fake.push(answer(id.get(), Status::Ok, "", b""));
    assert_eq!(c.wait(id).unwrap_err().kind, ErrorKind::Protocol);
    assert!(!c.is_connected());
    // The stream is out of step: nothing more is read or sent.
    assert_eq!(c.wait(id).unwrap_err().kind, ErrorKind::Protocol);
    assert!(matches!(
        c.send_call("localhost://echo/o", Action::Read, b"", None),
        Err(SdkError::Protocol(_))
    ));
}

#[test]
fn the_end_of_the_stream_fails_waits_and_ends_incoming() {
    let (mut c, _, _) = connect(|_| vec![]);
    let id = c
        .send_call("localhost://echo/e", Action::Read, b"", None)
        .unwrap();
    let err = c.wait(id).unwrap_err();
    assert_eq!(err.kind, ErrorKind::Transport);
    assert!(c.next_incoming().unwrap().is_none());
    assert!(matches!(c.wait_any(), Err(SdkError::Closed)));
    assert!(matches!(
        c.send_call("localhost://echo/e", Action::Read, b"", None),
        Err(SdkError::Closed)
    ));
}

#[test]
fn payloads_beyond_the_frame_limit_are_refused_before_sending() {
    let clock = Arc::new(AtomicI64::new(T0));
    let mut std_part = standard(clock.clone());
    let script: Script = Box::new(move |s| match s {
        Sent::Hello { .. } => vec![welcome(versions::WIRE, 1024)],
        other => std_part(other).unwrap_or_else(|| echo(other)),
    });
    let (mut c, fake, _) = connect_with(script, clock);
    let err = c
        .call("localhost://echo/big", Action::Read, &[0; 2000])
        .unwrap_err();
    assert_eq!(err.kind, ErrorKind::TooLarge, "{err}");
    assert_eq!(fake.sent().len(), 1, "nothing but the hello was sent");
    // Fits alone, but not with the frame around it.
    let err = c
        .send_call("localhost://echo/big", Action::Read, &[0; 1020], None)
        .unwrap_err();
    assert!(
        matches!(
            err,
            SdkError::TooLarge {
                size: 1020,
                max: 1024
            }
        ),
        "{err}"
    );
    assert!(!fake.sent().iter().any(|s| matches!(s, Sent::Call { .. })));
    c.call("localhost://echo/big", Action::Read, &[0; 500])
        .unwrap();

    let err = c.reply(5, Ok(vec![0; 4000])).unwrap_err();
    assert!(matches!(err, SdkError::TooLarge { .. }));
    let Some(Sent::Reply {
        id: 5,
        status: Status::ProviderError,
        message,
        ..
    }) = fake.sent().last().cloned()
    else {
        panic!("the caller was not told");
    };
    assert!(message.contains("frame limit"), "{message}");
}

#[test]
fn serve_asks_for_the_provide_capability_then_registers() {
    let (mut c, fake, _) = connect(|s| match s {
        Sent::Serve { id, pattern, .. } if pattern == "localhost://echo/*" => {
            vec![serve_reply(*id, Status::Ok, "")]
        }
        Sent::Serve { id, .. } => vec![serve_reply(*id, Status::Denied, "not in provides")],
        _ => vec![],
    });
    c.serve("localhost://echo/*").unwrap();
    let sent = fake.sent();
    assert_eq!(
        sent[1],
        Sent::RequestToken {
            id: 1,
            resource: "localhost://echo/*".into(),
            actions: vec![Action::Admin],
            reason: "provide localhost://echo/*".into(),
            ttl: 3600,
        }
    );
    assert_eq!(
        sent[2],
        Sent::Serve {
            id: 2,
            pattern: "localhost://echo/*".into(),
            token: b"token-1".to_vec(),
        }
    );
    let err = c.serve("localhost://other/*").unwrap_err();
    assert!(
        matches!(&err, SdkError::Refused { kind: ErrorKind::Denied, message } if message == "not in provides"),
        "{err}"
    );
}

#[test]
fn serve_forever_answers_until_the_connection_closes() {
    let (mut c, fake, _) = connect(|s| match s {
        Sent::Serve { id, .. } => vec![
            serve_reply(*id, Status::Ok, ""),
            incoming(1, "localhost://echo/a", b"one", 0),
            incoming(2, "localhost://echo/b", b"two", 0),
        ],
        _ => vec![],
    });
    let mut seen = Vec::new();
    c.serve_forever("localhost://echo/*", |i| {
        seen.push(i.resource.clone());
        Ok(i.payload.clone())
    })
    .unwrap();
    assert_eq!(seen, ["localhost://echo/a", "localhost://echo/b"]);
    let replies: Vec<(u64, Vec<u8>)> = fake
        .sent()
        .into_iter()
        .filter_map(|s| match s {
            Sent::Reply { id, payload, .. } => Some((id, payload)),
            _ => None,
        })
        .collect();
    assert_eq!(replies, [(1, b"one".to_vec()), (2, b"two".to_vec())]);
}

#[test]
fn resource_matching_follows_the_supervisor() {
    let p = "localhost://storage/notes/*";
    assert!(resource_covers(p, "localhost://storage/notes/a"));
    assert!(resource_covers(p, "localhost://storage/notes/a/b"));
    assert!(!resource_covers(p, "localhost://storage/notes"));
    assert!(!resource_covers(p, "localhost://storage/notes/"));
    assert!(!resource_covers(p, "localhost://storage/notesx/a"));
    assert!(resource_covers("localhost://a/b", "localhost://a/b"));
    assert!(!resource_covers("localhost://a/b", "localhost://a/b/c"));
}

proptest::proptest! {
    #[test]
    fn arbitrary_frames_from_the_supervisor_never_panic(
        frames in proptest::collection::vec(
            proptest::collection::vec(proptest::num::u8::ANY, 0..96), 1..6),
    ) {
        let (mut c, fake, _) = connect(|_| vec![]);
        let id = c.send_call("localhost://echo/f", Action::Read, b"", None).unwrap();
        for f in frames {
            fake.push(Out::Body(f));
        }
        for _ in 0..8 {
            let _ = c.wait(id);
            let _ = c.next_incoming();
        }
    }

    #[test]
    fn arbitrary_valid_prefixes_with_corrupt_words_never_panic(
        flips in proptest::collection::vec((0usize..512, proptest::num::u8::ANY), 1..8),
    ) {
        let (mut c, fake, _) = connect(|_| vec![]);
        let id = c.send_call("localhost://echo/f", Action::Read, b"", None).unwrap();
        let makers: [fn() -> Out; 3] = [
            || answer(1, Status::Ok, "m", b"payload"),
            || incoming(2, "localhost://echo/x", b"p", 0),
            || granted(3, b"t", "localhost://echo/*", &[Action::Read], 5),
        ];
        for make in makers {
            let Out::Body(mut b) = make() else { unreachable!() };
            for (at, byte) in &flips {
                let n = b.len();
                b[at % n] ^= byte;
            }
            fake.push(Out::Body(b));
        }
        for _ in 0..8 {
            let _ = c.wait(id);
            let _ = c.next_incoming();
        }
    }
}

#[cfg(unix)]
mod unix {
    use std::io::Write as _;
    use std::os::fd::{AsRawFd, IntoRawFd};
    use std::os::unix::net::UnixStream;

    use super::*;

    /// A minimal supervisor on the other end of a real socket: welcome, grant, echo.
    fn supervise(mut sock: UnixStream) {
        let mut reader = sock.try_clone().unwrap();
        let mut script = standard(Arc::new(AtomicI64::new(unix_now())));
        while let Some(frame) = wire::read_frame(&mut reader, wire::MAX_FRAME).unwrap() {
            let mut framed = (frame.len() as u32).to_le_bytes().to_vec();
            framed.extend_from_slice(&frame);
            let sent = decode_sent(&framed);
            for out in script(&sent).unwrap_or_else(|| echo(&sent)) {
                let Out::Body(b) = out else { unreachable!() };
                let mut f = (b.len() as u32).to_le_bytes().to_vec();
                f.extend_from_slice(&b);
                sock.write_all(&f).unwrap();
            }
        }
    }

    #[test]
    fn over_a_real_socket_and_from_the_environment() {
        // Values that are not a usable descriptor are refused before anything is taken.
        for bad in ["", "abc", "1", "-4"] {
            std::env::set_var(SOCKET_FD_ENV, bad);
            assert!(matches!(UnixTransport::from_env(), Err(SdkError::Env(_))));
        }
        let file = std::fs::File::open("/dev/null").unwrap();
        std::env::set_var(SOCKET_FD_ENV, file.as_raw_fd().to_string());
        let err = UnixTransport::from_env().err().unwrap();
        assert!(err.to_string().contains("not an open socket"), "{err}");
        drop(file);

        let (ours, theirs) = UnixStream::pair().unwrap();
        let supervisor = std::thread::spawn(move || supervise(theirs));
        std::env::set_var(SOCKET_FD_ENV, ours.into_raw_fd().to_string());
        let mut c = Capsule::connect().unwrap();
        assert!(matches!(
            UnixTransport::from_env(),
            Err(SdkError::Env(m)) if m.contains("already taken")
        ));
        assert_eq!(c.name(), "tester");
        let big = vec![0x5a; 300_000];
        assert_eq!(
            c.call("localhost://echo/r", Action::Read, &big).unwrap(),
            big
        );
        let ids: Vec<CallId> = (0..50u8)
            .map(|i| {
                c.send_call("localhost://echo/r", Action::Read, &[i; 100], None)
                    .unwrap()
            })
            .collect();
        for (i, id) in ids.into_iter().enumerate().rev() {
            assert_eq!(c.wait(id).unwrap(), [i as u8; 100]);
        }
        drop(c);
        supervisor.join().unwrap();
    }
}
