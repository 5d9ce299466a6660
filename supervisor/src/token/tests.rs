//! Codec tests: one encoding per token, strict refusal of everything else, no panics.

use super::*;
use capnp::Word;
use elastos_schema::token_capnp::{signed_token, token_body};
use elastos_schema::Action;
use proptest::prelude::*;

fn key() -> NodeKey {
    NodeKey::from_seed(&[3u8; 32])
}

fn sample(key: &NodeKey) -> Token {
    Token {
        version: versions::TOKEN,
        id: TokenId::from_bytes([7u8; 16]),
        issuer: key.did(),
        subject: Subject {
            name: "notes".into(),
            cid: None,
        },
        resource: "localhost://storage/notes/*".into(),
        actions: ActionSet::parse_list("read,write").unwrap_or_default(),
        not_before: 1_700_000_000,
        expiry: 1_700_003_600,
        epoch: 0,
        max_uses: 0,
        classification: Classification::Internal,
        delegatable: false,
        parent: None,
        ancestors: Vec::new(),
    }
}

/// A `TokenBody` built directly with capnp (canonical), so tests can write what the codec never
/// would.
fn raw_body(fill: impl FnOnce(token_body::Builder)) -> Vec<u8> {
    let mut m = capnp::message::Builder::new_default();
    fill(m.init_root::<token_body::Builder>());
    let words = m.into_reader().canonicalize().unwrap();
    frame(Word::words_to_bytes(&words))
}

fn frame(segment: &[u8]) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0];
    out.extend_from_slice(&((segment.len() / 8) as u32).to_le_bytes());
    out.extend_from_slice(segment);
    out
}

fn good_fields(b: &mut token_body::Builder, issuer: &str) {
    b.set_version(versions::TOKEN);
    b.set_id(&[1u8; 16]);
    b.set_issuer(issuer);
    b.reborrow().init_subject().set_name("notes");
    b.set_resource("localhost://storage/notes/*");
    b.reborrow()
        .init_actions(1)
        .set(0, elastos_schema::token_capnp::Action::Read);
    b.set_expiry(10);
}

fn signed_text(key: &NodeKey, body: Vec<u8>) -> String {
    let signature = key.sign(domains::TOKEN, &body).to_bytes();
    SignedParts {
        version: versions::TOKEN,
        body,
        signature,
        signer: key.public_bytes(),
    }
    .encode()
    .unwrap()
}

#[test]
fn a_signed_token_decodes_to_what_was_signed() {
    let k = key();
    let t = sample(&k);
    let (parts, text) = sign(&t, &k).unwrap();
    let d = decode(&text).unwrap();
    assert_eq!(d.token, t);
    assert_eq!(d.parts, parts);
    assert!(d.signature_valid());
    assert_eq!(d.parts.encode().unwrap(), text);
    assert!(d.parts.signed_bytes().starts_with(domains::TOKEN));
}

#[test]
fn inspect_json_has_every_field() {
    let k = key();
    let mut t = sample(&k);
    t.parent = Some(TokenId::from_bytes([9u8; 16]));
    t.ancestors = vec![
        TokenId::from_bytes([9u8; 16]),
        TokenId::from_bytes([8u8; 16]),
    ];
    t.subject.cid = Some("bafkreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku".into());
    let (_, text) = sign(&t, &k).unwrap();
    let v = decode(&text).unwrap().inspect_json();
    for key in [
        "version",
        "id",
        "issuer",
        "subject",
        "resource",
        "actions",
        "not_before",
        "expiry",
        "epoch",
        "max_uses",
        "classification",
        "delegatable",
        "parent",
        "ancestors",
        "signed_bytes_hex",
        "signature_hex",
        "signer_did",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v:#}");
    }
    assert_eq!(v["id"], "07".repeat(16));
    assert_eq!(v["parent"], "09".repeat(16));
    assert_eq!(v["actions"], serde_json::json!(["read", "write"]));
    assert_eq!(v["classification"], "internal");
    assert_eq!(v["signature_valid"], true);
    let text = decode(&text).unwrap().inspect_text();
    assert!(
        text.contains(&k.did()) && text.contains("parent:"),
        "{text}"
    );
}

#[test]
fn token_ids_are_32_hex_and_parse_back() {
    let id = TokenId::from_bytes([0xab; 16]);
    assert_eq!(id.to_string(), "ab".repeat(16));
    assert_eq!(TokenId::parse(&"AB".repeat(16)).unwrap(), id);
    for bad in [
        "",
        "zz",
        &"ab".repeat(15),
        &"ab".repeat(17),
        &"g0".repeat(16),
    ] {
        assert!(TokenId::parse(bad).is_err(), "{bad}");
    }
    assert_ne!(TokenId::random().unwrap(), TokenId::random().unwrap());
}

#[test]
fn trailing_bytes_are_refused() {
    let k = key();
    let (_, text) = sign(&sample(&k), &k).unwrap();
    let mut bytes = B64.decode(&text).unwrap();
    bytes.extend_from_slice(&[0u8; 8]);
    let err = decode(&B64.encode(&bytes)).unwrap_err();
    assert!(err.to_string().contains("trailing"), "{err}");
    // Not even a partial word.
    bytes.truncate(bytes.len() - 5);
    assert!(decode(&B64.encode(&bytes)).is_err());
}

#[test]
fn a_body_with_trailing_bytes_is_refused() {
    let k = key();
    let mut body = sample(&k).body_bytes().unwrap();
    body.extend_from_slice(&[0u8; 8]);
    assert!(decode_body(&body).is_err());
}

#[test]
fn a_multi_segment_message_is_refused() {
    let k = key();
    let (_, text) = sign(&sample(&k), &k).unwrap();
    let bytes = B64.decode(&text).unwrap();
    // Re-frame as two segments: the real one and an empty second one.
    let seg = &bytes[8..];
    let mut two = Vec::new();
    two.extend_from_slice(&1u32.to_le_bytes());
    two.extend_from_slice(&((seg.len() / 8) as u32).to_le_bytes());
    two.extend_from_slice(&0u32.to_le_bytes());
    two.extend_from_slice(&0u32.to_le_bytes()); // padding to a word
    two.extend_from_slice(seg);
    assert!(decode(&B64.encode(&two)).is_err());
}

#[test]
fn a_non_canonical_body_is_refused() {
    let k = key();
    let canonical = sample(&k).body_bytes().unwrap();
    // A valid message with an unused word at the end of its segment: readable, not canonical.
    let mut seg = canonical[8..].to_vec();
    seg.extend_from_slice(&[0u8; 8]);
    let padded = frame(&seg);
    let err = decode_body(&padded).unwrap_err();
    assert!(err.to_string().contains("canonical"), "{err}");
    // Built without canonicalisation: the subject is placed after the text fields.
    let mut m = capnp::message::Builder::new_default();
    {
        let mut b = m.init_root::<token_body::Builder>();
        good_fields(&mut b, &k.did());
        b.set_resource("localhost://storage/notes/*");
    }
    let raw = capnp::serialize::write_message_to_words(&m);
    assert!(decode_body(&raw).is_err());
    // And through the whole token, validly signed.
    assert!(decode(&signed_text(&k, padded)).is_err());
}

#[test]
fn bits_this_version_does_not_read_are_refused() {
    // capnp calls this canonical (its canonical form is schema-blind), but the byte after
    // `SignedToken.version` belongs to no field: accepting it would give one token two encodings.
    let k = key();
    let (_, text) = sign(&sample(&k), &k).unwrap();
    let mut bytes = B64.decode(&text).unwrap();
    // Header (8), root pointer (8), then the data word: version is bytes 16..18.
    bytes[20] = 1;
    let err = decode(&B64.encode(&bytes)).unwrap_err();
    assert!(err.to_string().contains("does not know"), "{err}");
    // The same inside the body. Its first data word holds version (bytes 0-1),
    // classification (2-3) and delegatable (bit 0 of byte 4); bytes 5-7 belong to no field.
    let mut patched = sample(&k).body_bytes().unwrap();
    patched[16 + 5] = 0x80;
    assert!(decode_body(&patched).is_err());
}

#[test]
fn unknown_versions_are_refused() {
    let k = key();
    let mut t = sample(&k);
    t.version = 3;
    let err = decode_body(&t.body_bytes().unwrap()).unwrap_err();
    assert!(
        matches!(err, TokenError::UnknownVersion { found: 3, .. }),
        "{err}"
    );

    let (mut parts, _) = sign(&sample(&k), &k).unwrap();
    parts.version = 9;
    let err = decode(&parts.encode().unwrap()).unwrap_err();
    assert!(
        matches!(err, TokenError::UnknownVersion { found: 9, .. }),
        "{err}"
    );
}

#[test]
fn action_lists_must_be_strictly_ascending_known_and_non_empty() {
    use elastos_schema::token_capnp::Action as W;
    let did = key().did();
    let with = |actions: &[u16]| {
        raw_body(|mut b| {
            good_fields(&mut b, &did);
            let mut l = b.init_actions(actions.len() as u32);
            for (i, a) in actions.iter().enumerate() {
                // Writing raw ordinals reaches values the enum cannot name.
                let w = W::try_from(*a).unwrap_or(W::Admin);
                l.set(i as u32, w);
            }
        })
    };
    assert!(decode_body(&with(&[0, 1])).is_ok());
    assert!(decode_body(&with(&[1, 0])).is_err(), "descending");
    assert!(decode_body(&with(&[1, 1])).is_err(), "duplicate");
    assert!(decode_body(&with(&[])).is_err(), "empty");
    // An unknown ordinal. In canonical order the actions list is the last object of a body
    // without a parent, so its one element starts the last word.
    let body = with(&[5]);
    let at = body.len() - 8;
    assert_eq!(body[at], 5);
    let mut patched = body.clone();
    patched[at] = 9;
    assert!(decode_body(&patched).is_err(), "unknown action");
}

#[test]
fn field_sizes_are_exact() {
    let did = key().did();
    let id15 = raw_body(|mut b| {
        good_fields(&mut b, &did);
        b.set_id(&[1u8; 15]);
    });
    assert!(decode_body(&id15).is_err());
    let parent3 = raw_body(|mut b| {
        good_fields(&mut b, &did);
        b.set_parent(&[1u8; 3]);
    });
    assert!(decode_body(&parent3).is_err());
    let empty_parent = raw_body(|mut b| {
        good_fields(&mut b, &did);
        b.set_parent(&[]);
    });
    assert!(
        decode_body(&empty_parent).is_err(),
        "present but empty parent"
    );
    let empty_cid = raw_body(|mut b| {
        good_fields(&mut b, &did);
        b.reborrow().get_subject().unwrap().set_cid("");
    });
    assert!(decode_body(&empty_cid).is_err(), "present but empty cid");
    let no_name = raw_body(|mut b| {
        good_fields(&mut b, &did);
        b.reborrow().get_subject().unwrap().set_name("");
    });
    assert!(decode_body(&no_name).is_err());

    for (sig, signer) in [(63usize, 32usize), (64, 31), (65, 32), (64, 33)] {
        let mut m = capnp::message::Builder::new_default();
        {
            let mut s = m.init_root::<signed_token::Builder>();
            s.set_version(versions::TOKEN);
            s.set_body(&sample(&key()).body_bytes().unwrap());
            s.set_signature(&vec![0u8; sig]);
            s.set_signer(&vec![0u8; signer]);
        }
        let words = m.into_reader().canonicalize().unwrap();
        let bytes = frame(Word::words_to_bytes(&words));
        assert!(decode(&B64.encode(bytes)).is_err(), "{sig}/{signer}");
    }
}

#[test]
fn only_canonical_base64url_is_accepted() {
    let k = key();
    let (_, text) = sign(&sample(&k), &k).unwrap();
    assert!(decode(&format!("{text}=")).is_err(), "padding");
    assert!(decode(&format!(" {text}")).is_err(), "space");
    assert!(
        decode(&text.replace('-', "+").replace('_', "/")).is_err() || !text.contains(['-', '_'])
    );
    assert!(decode(&"A".repeat(MAX_TOKEN_TEXT_LEN + 1)).is_err());
    // Non-zero trailing bits would give a second text for the same bytes.
    let last = text.chars().last().unwrap_or('A');
    let bumped: String = text[..text.len() - 1].to_string()
        + &char::from_u32(last as u32 + 1).unwrap_or('B').to_string();
    if let Ok(d) = decode(&bumped) {
        assert_eq!(d.parts.encode().unwrap(), bumped);
    }
}

#[test]
fn times_outside_rfc3339_are_clamped_for_display() {
    assert_eq!(unix_to_system(-5), UNIX_EPOCH);
    let far = humantime::format_rfc3339_seconds(unix_to_system(i64::MAX)).to_string();
    assert_eq!(far, "9999-12-31T23:59:59Z");
}

fn arb_token() -> impl Strategy<Value = Token> {
    (
        any::<[u8; 16]>(),
        "[a-z][a-z0-9-]{0,20}",
        prop::option::of("[a-z2-7]{10,60}"),
        "[a-z]{1,5}://[a-z]{1,8}(/[a-z0-9]{1,5}){0,4}(/\\*)?",
        1u8..64,
        any::<(i64, i64, u64, u64)>(),
        0usize..4,
        any::<bool>(),
        prop::option::of(any::<[u8; 16]>()),
    )
        .prop_map(
            |(
                id,
                name,
                cid,
                resource,
                action_bits,
                (nb, exp, epoch, uses),
                class,
                deleg,
                parent,
            )| {
                let actions = Action::ALL
                    .into_iter()
                    .enumerate()
                    .filter(|(i, _)| action_bits & (1 << i) != 0)
                    .map(|(_, a)| a)
                    .collect();
                Token {
                    version: versions::TOKEN,
                    id: TokenId::from_bytes(id),
                    issuer: key().did(),
                    subject: Subject { name, cid },
                    resource,
                    actions,
                    not_before: nb,
                    expiry: exp,
                    epoch,
                    max_uses: uses,
                    classification: Classification::ALL[class.min(3)],
                    delegatable: deleg,
                    parent: parent.map(TokenId::from_bytes),
                    // A parent begins the chain; the grandparents follow.
                    ancestors: parent
                        .map(|p| {
                            std::iter::once(TokenId::from_bytes(p))
                                .chain((1..=(p[0] % 4)).map(|i| TokenId::from_bytes([i; 16])))
                                .collect()
                        })
                        .unwrap_or_default(),
                }
            },
        )
}

proptest! {
    #[test]
    fn arbitrary_text_never_panics(s in any::<String>()) {
        let _ = decode(&s);
    }

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(&B64.encode(&bytes));
        let _ = decode_body(&bytes);
    }

    #[test]
    fn mutated_tokens_never_panic_and_re_encode_exactly(
        pos in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let k = key();
        let (_, text) = sign(&sample(&k), &k).unwrap();
        let mut bytes = B64.decode(&text).unwrap();
        let i = pos.index(bytes.len());
        bytes[i] = byte;
        let t = B64.encode(&bytes);
        if let Ok(d) = decode(&t) {
            prop_assert_eq!(d.parts.encode().unwrap(), t);
            prop_assert_eq!(d.token.body_bytes().unwrap(), d.parts.body);
        }
    }

    #[test]
    fn encode_then_decode_round_trips(t in arb_token()) {
        let k = key();
        let body = t.body_bytes().unwrap();
        prop_assert_eq!(&decode_body(&body).unwrap(), &t);
        let (_, text) = sign(&t, &k).unwrap();
        let d = decode(&text).unwrap();
        prop_assert_eq!(&d.token, &t);
        prop_assert_eq!(d.parts.encode().unwrap(), text);
    }
}

#[test]
fn the_audit_reference_is_the_id_when_it_decodes_else_a_hash_of_the_bytes() {
    let k = key();
    let t = sample(&k);
    let (_, text) = sign(&t, &k).unwrap();
    let bytes = text_to_bytes(&text).unwrap();
    assert_eq!(audit_ref(&bytes), Some(t.id.to_string()));
    // Signed by a key nobody trusts: it still decodes, and the record names the token it
    // claims to be.
    let (_, forged) = sign(&t, &NodeKey::from_seed(&[9u8; 32])).unwrap();
    assert_eq!(
        audit_ref(&text_to_bytes(&forged).unwrap()),
        Some(t.id.to_string())
    );
    // Garbage is named by its hash, stably, and two different garbages differently.
    let a = audit_ref(b"not a token at all").unwrap();
    assert!(a.starts_with("sha256:") && a.len() == 7 + 32, "{a}");
    assert_eq!(audit_ref(b"not a token at all").unwrap(), a);
    assert_ne!(audit_ref(b"not a token at all!").unwrap(), a);
    assert_eq!(audit_ref(b""), None);
}

#[test]
fn ancestors_begin_with_the_parent_are_bounded_and_absent_from_version_1() {
    let k = key();
    let mut t = sample(&k);
    let id = |b: u8| TokenId::from_bytes([b; 16]);
    t.parent = Some(id(1));
    t.ancestors = vec![id(1), id(2), id(3)];
    let bytes = t.body_bytes().unwrap();
    assert_eq!(decode_body(&bytes).unwrap().ancestors, t.ancestors);
    // Not beginning with the parent, or naming some for a root: refused.
    for (parent, ancestors) in [
        (Some(id(9)), vec![id(1), id(2)]),
        (None, vec![id(1)]),
        (Some(id(1)), vec![]),
    ] {
        let mut bad = t.clone();
        bad.parent = parent;
        bad.ancestors = ancestors;
        assert!(decode_body(&bad.body_bytes().unwrap()).is_err(), "{bad:?}");
    }
    // More than MAX_ANCESTORS: refused.
    let mut deep = t.clone();
    deep.ancestors = (0..=MAX_ANCESTORS as u8).map(|i| id(i + 1)).collect();
    assert!(decode_body(&deep.body_bytes().unwrap()).is_err());
    // Version 1 names the parent only; a version 1 body that carries ancestors is refused.
    let mut v1 = t.clone();
    v1.version = 1;
    v1.ancestors.clear();
    assert_eq!(decode_body(&v1.body_bytes().unwrap()).unwrap(), v1);
    let mut forged = t.clone();
    forged.version = 2;
    let mut bytes = forged.body_bytes().unwrap();
    // Rewrite the version field (the data section's first two bytes, after the 8-byte segment
    // table and the root pointer) to 1, keeping the ancestors.
    assert_eq!(&bytes[16..18], &[2, 0]);
    bytes[16] = 1;
    let e = decode_body(&bytes).unwrap_err();
    assert!(e.to_string().contains("canonical"), "{e}");
}
