//! The canonical Cap'n Proto encoding of tokens (`schema/token.capnp`).
//!
//! Both messages (`SignedToken` and the `TokenBody` inside it) are framed as standard
//! single-segment messages: an 8-byte segment table (count − 1 = 0, then the segment's length in
//! words) followed by the canonical segment. Reading is strict: tight traversal and nesting
//! limits, exactly one segment, no trailing bytes, and the bytes must equal what capnp itself
//! this module produces when it re-encodes what it read (capnp canonicalises it) — so one token
//! has exactly one encoding and `encode(decode(x)) == x`. Optional fields (subject CID, parent) are absent pointers when
//! empty, never empty values, for the same reason.
//!
//! Trusts nothing it reads; must never panic on any input.

use capnp::message::{ReaderOptions, ReaderSegments};
use capnp::Word;
use elastos_schema::token_capnp::{self, signed_token, token_body};
use elastos_schema::{versions, Action, ActionSet, Classification};

use super::{SignedParts, Subject, Token, TokenError, TokenId};

/// Nesting in a token is at most 2 (SignedToken → data; TokenBody → Subject → text).
const NESTING_LIMIT: i32 = 4;
/// Longest issuer DID accepted; an Ed25519 did:key is 56 characters.
const MAX_ISSUER_LEN: usize = 128;
/// Longest subject name or CID accepted.
pub(crate) const MAX_SUBJECT_LEN: usize = 255;

fn malformed(what: &'static str, why: impl Into<String>) -> TokenError {
    TokenError::Malformed {
        what,
        why: why.into(),
    }
}

fn capnp_err(what: &'static str) -> impl Fn(capnp::Error) -> TokenError {
    move |e| malformed(what, e.to_string())
}

/// Reads `bytes` as one canonical single-segment message and hands its reader to `read`.
fn read_canonical<T>(
    bytes: &[u8],
    what: &'static str,
    read: impl FnOnce(
        &capnp::message::Reader<capnp::serialize::BufferSegments<&[u8]>>,
    ) -> Result<T, TokenError>,
) -> Result<T, TokenError> {
    if bytes.is_empty() || !bytes.len().is_multiple_of(8) {
        return Err(malformed(
            what,
            "its length is not a whole number of 8-byte words",
        ));
    }
    // capnp reads only 8-byte-aligned memory; copy into words rather than trust the caller's
    // allocation. Tokens are small, so the copy is cheap.
    let mut words = Word::allocate_zeroed_vec(bytes.len() / 8);
    Word::words_to_bytes_mut(&mut words).copy_from_slice(bytes);
    let aligned = Word::words_to_bytes(&words);
    let mut options = ReaderOptions::new();
    // An honest read touches each word about once; a budget of a few times the size refuses
    // amplification through overlapping pointers.
    options
        .traversal_limit_in_words(Some(words.len().saturating_mul(4).saturating_add(16)))
        .nesting_limit(NESTING_LIMIT);
    let mut rest = aligned;
    let reader = capnp::serialize::read_message_from_flat_slice(&mut rest, options)
        .map_err(capnp_err(what))?;
    if !rest.is_empty() {
        return Err(malformed(
            what,
            format!("{} trailing bytes after the message", rest.len()),
        ));
    }
    if reader.get_segments().len() != 1 {
        return Err(malformed(what, "more than one segment"));
    }
    // Canonical form is tested after reading, by re-encoding (`require_reencoding`), which
    // is stricter than capnp's `is_canonical` and only ever canonicalises our own message.
    read(&reader)
}

/// The contract's canonical test, made exact: re-encode what was read (capnp canonicalises it)
/// and compare bytes. capnp's own canonical form is schema-blind — it keeps unused bits of a
/// data section and pointers this version does not know — so only a comparison with our own
/// encoding guarantees one encoding per token and refuses fields we would silently drop.
fn require_reencoding(bytes: &[u8], again: &[u8], what: &'static str) -> Result<(), TokenError> {
    if bytes == again {
        Ok(())
    } else {
        Err(malformed(
            what,
            "not in canonical form, or it holds fields this version does not know",
        ))
    }
}

/// A builder whose first segment fits the message: the default first segment is 8 KiB of zeroed
/// memory, most of a token's encoding time.
fn builder(words_hint: usize) -> capnp::message::Builder<capnp::message::HeapAllocator> {
    let words = u32::try_from(words_hint.clamp(8, 4096)).unwrap_or(4096);
    capnp::message::Builder::new(capnp::message::HeapAllocator::new().first_segment_words(words))
}

/// Frames a builder's message canonically: segment table, then the canonical segment.
fn write_canonical<A: capnp::message::Allocator>(
    message: capnp::message::Builder<A>,
    what: &'static str,
) -> Result<Vec<u8>, TokenError> {
    let canonical = message
        .into_reader()
        .canonicalize()
        .map_err(capnp_err(what))?;
    let n = u32::try_from(canonical.len()).map_err(|_| malformed(what, "too large"))?;
    let mut out = Vec::with_capacity(8 + canonical.len() * 8);
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&n.to_le_bytes());
    out.extend_from_slice(Word::words_to_bytes(&canonical));
    Ok(out)
}

fn text<'a>(
    t: capnp::Result<capnp::text::Reader<'a>>,
    field: &'static str,
    max: usize,
) -> Result<&'a str, TokenError> {
    let s = t
        .map_err(capnp_err(field))?
        .to_str()
        .map_err(|_| malformed(field, "not UTF-8"))?;
    if s.len() > max {
        return Err(malformed(field, format!("longer than {max} bytes")));
    }
    Ok(s)
}

fn class_from_wire(c: token_capnp::Classification) -> Classification {
    match c {
        token_capnp::Classification::Public => Classification::Public,
        token_capnp::Classification::Internal => Classification::Internal,
        token_capnp::Classification::Confidential => Classification::Confidential,
        token_capnp::Classification::Secret => Classification::Secret,
    }
}

fn class_to_wire(c: Classification) -> token_capnp::Classification {
    match c {
        Classification::Public => token_capnp::Classification::Public,
        Classification::Internal => token_capnp::Classification::Internal,
        Classification::Confidential => token_capnp::Classification::Confidential,
        Classification::Secret => token_capnp::Classification::Secret,
    }
}

/// Parses the canonical bytes of a `TokenBody`.
pub(crate) fn decode_body(bytes: &[u8]) -> Result<Token, TokenError> {
    let token = read_canonical(bytes, "token body", |reader| {
        let b: token_body::Reader = reader.get_root().map_err(capnp_err("token body"))?;
        let version = b.get_version();
        if !(versions::TOKEN_OLDEST..=versions::TOKEN).contains(&version) {
            return Err(TokenError::UnknownVersion {
                found: version,
                known: versions::TOKEN,
            });
        }
        let id = TokenId::from_slice(b.get_id().map_err(capnp_err("id"))?)
            .ok_or_else(|| malformed("id", "not 16 bytes"))?;
        let issuer = text(b.get_issuer(), "issuer", MAX_ISSUER_LEN)?;
        if issuer.is_empty() {
            return Err(malformed("issuer", "empty"));
        }
        let subject = b.get_subject().map_err(capnp_err("subject"))?;
        let name = text(subject.get_name(), "subject name", MAX_SUBJECT_LEN)?;
        if name.is_empty() {
            return Err(malformed("subject name", "empty"));
        }
        let cid = if subject.has_cid() {
            let cid = text(subject.get_cid(), "subject cid", MAX_SUBJECT_LEN)?;
            if cid.is_empty() {
                return Err(malformed("subject cid", "present but empty"));
            }
            Some(cid.to_string())
        } else {
            None
        };
        let resource = text(b.get_resource(), "resource", super::MAX_RESOURCE_LEN)?;
        let mut actions = ActionSet::EMPTY;
        let mut last: Option<Action> = None;
        for a in b.get_actions().map_err(capnp_err("actions"))?.iter() {
            let a = Action::from(a.map_err(|_| malformed("actions", "an unknown action"))?);
            if last.is_some_and(|l| l >= a) {
                return Err(malformed("actions", "not strictly ascending"));
            }
            last = Some(a);
            actions.insert(a);
        }
        if actions.is_empty() {
            return Err(malformed("actions", "empty"));
        }
        let classification = class_from_wire(
            b.get_classification()
                .map_err(|_| malformed("classification", "an unknown level"))?,
        );
        let parent = if b.has_parent() {
            Some(
                TokenId::from_slice(b.get_parent().map_err(capnp_err("parent"))?)
                    .ok_or_else(|| malformed("parent", "not 16 bytes"))?,
            )
        } else {
            None
        };
        // Version 1 has no such field: one there is refused by the re-encoding below.
        let mut ancestors = Vec::new();
        if version >= 2 && b.has_ancestors() {
            let list = b.get_ancestors().map_err(capnp_err("ancestors"))?;
            if list.len() as usize > super::MAX_ANCESTORS {
                return Err(malformed(
                    "ancestors",
                    format!("more than {}", super::MAX_ANCESTORS),
                ));
            }
            for a in list.iter() {
                let a = a.map_err(capnp_err("ancestors"))?;
                ancestors.push(
                    TokenId::from_slice(a).ok_or_else(|| malformed("ancestors", "not 16 bytes"))?,
                );
            }
        }
        if version >= 2 && ancestors.first() != parent.as_ref() {
            return Err(malformed(
                "ancestors",
                "they must begin with the parent, and a root has none",
            ));
        }
        Ok(Token {
            version,
            id,
            issuer: issuer.to_string(),
            subject: Subject {
                name: name.to_string(),
                cid,
            },
            resource: resource.to_string(),
            actions,
            not_before: b.get_not_before(),
            expiry: b.get_expiry(),
            epoch: b.get_epoch(),
            max_uses: b.get_max_uses(),
            classification,
            delegatable: b.get_delegatable(),
            parent,
            ancestors,
        })
    })?;
    require_reencoding(bytes, &encode_body(&token)?, "token body")?;
    Ok(token)
}

/// The canonical bytes of a `TokenBody`.
pub(crate) fn encode_body(t: &Token) -> Result<Vec<u8>, TokenError> {
    // Fixed part (root pointer, 5 data words, 6 pointers, subject, id, parent, actions) plus text.
    let text = t.issuer.len()
        + t.subject.name.len()
        + t.resource.len()
        + t.subject.cid.as_ref().map_or(0, String::len);
    let mut message = builder(24 + text / 8 + 4);
    {
        let mut b = message.init_root::<token_body::Builder>();
        b.set_version(t.version);
        b.set_id(t.id.as_bytes());
        b.set_issuer(t.issuer.as_str());
        {
            let mut s = b.reborrow().init_subject();
            s.set_name(t.subject.name.as_str());
            // Absent, not empty: keeps one encoding per token.
            if let Some(cid) = t.subject.cid.as_deref().filter(|c| !c.is_empty()) {
                s.set_cid(cid);
            }
        }
        b.set_resource(t.resource.as_str());
        let count = t.actions.iter().count() as u32;
        {
            let mut list = b.reborrow().init_actions(count);
            for (i, a) in t.actions.iter().enumerate() {
                list.set(i as u32, token_capnp::Action::from(a));
            }
        }
        b.set_not_before(t.not_before);
        b.set_expiry(t.expiry);
        b.set_epoch(t.epoch);
        b.set_max_uses(t.max_uses);
        b.set_classification(class_to_wire(t.classification));
        b.set_delegatable(t.delegatable);
        if let Some(p) = &t.parent {
            b.set_parent(p.as_bytes());
        }
        // Absent when empty, and never in version 1.
        if t.version >= 2 && !t.ancestors.is_empty() {
            let n =
                u32::try_from(t.ancestors.len()).map_err(|_| malformed("ancestors", "too many"))?;
            let mut list = b.reborrow().init_ancestors(n);
            for (i, a) in t.ancestors.iter().enumerate() {
                list.set(i as u32, a.as_bytes());
            }
        }
    }
    write_canonical(message, "token body")
}

/// Parses the outer `SignedToken`. The body is left as bytes: its signature is verified before
/// anything reads it.
pub(crate) fn decode_signed(bytes: &[u8]) -> Result<SignedParts, TokenError> {
    let parts = read_canonical(bytes, "token", |reader| {
        let s: signed_token::Reader = reader.get_root().map_err(capnp_err("token"))?;
        let version = s.get_version();
        if !(versions::TOKEN_OLDEST..=versions::TOKEN).contains(&version) {
            return Err(TokenError::UnknownVersion {
                found: version,
                known: versions::TOKEN,
            });
        }
        let body = s.get_body().map_err(capnp_err("body"))?;
        if body.is_empty() {
            return Err(malformed("body", "empty"));
        }
        let signature: [u8; 64] = s
            .get_signature()
            .map_err(capnp_err("signature"))?
            .try_into()
            .map_err(|_| malformed("signature", "not 64 bytes"))?;
        let signer: [u8; 32] = s
            .get_signer()
            .map_err(capnp_err("signer"))?
            .try_into()
            .map_err(|_| malformed("signer", "not 32 bytes"))?;
        Ok(SignedParts {
            version,
            body: body.to_vec(),
            signature,
            signer,
        })
    })?;
    require_reencoding(bytes, &encode_signed(&parts)?, "token")?;
    Ok(parts)
}

/// The canonical bytes of a `SignedToken`.
pub(crate) fn encode_signed(p: &SignedParts) -> Result<Vec<u8>, TokenError> {
    let mut message = builder(16 + p.body.len() / 8);
    {
        let mut s = message.init_root::<signed_token::Builder>();
        s.set_version(p.version);
        s.set_body(&p.body);
        s.set_signature(&p.signature);
        s.set_signer(&p.signer);
    }
    write_canonical(message, "token")
}
