@0x8f513ae3669b7a41;
# Capability tokens. The one definition every side uses; see docs/ARCHITECTURE.md "Tokens".
#
# On the wire and on the command line a token is the unpadded base64url of one single-segment
# `SignedToken` message. `body` holds the canonical bytes of one single-segment `TokenBody`
# message; the signature covers the domain prefix "elastos/token/v1\0" followed by `body`.

enum Action {
  read @0;
  write @1;
  execute @2;
  message @3;
  delete @4;
  admin @5;
}

enum Classification {
  # Ordered: public < internal < confidential < secret.
  public @0;
  internal @1;
  confidential @2;
  secret @3;
}

struct Subject {
  name @0 :Text;   # capsule name
  cid @1 :Text;    # the capsule package's CID; empty when the token is not bound to one
}

struct TokenBody {
  version @0 :UInt16;          # token format version; readers refuse one they do not know
  id @1 :Data;                 # 16 random bytes
  issuer @2 :Text;             # did:key of the signer
  subject @3 :Subject;
  resource @4 :Text;           # an exact URI, or a pattern ending in "/*"
  actions @5 :List(Action);    # strictly ascending, no duplicates, not empty
  notBefore @6 :Int64;         # unix seconds
  expiry @7 :Int64;            # unix seconds, exclusive
  epoch @8 :UInt64;            # the authority's epoch at issue time
  maxUses @9 :UInt64;          # 0 = unlimited
  classification @10 :Classification;  # ceiling: the highest level this token may reach
  delegatable @11 :Bool;
  parent @12 :Data;            # id of the parent token; empty for a root token
  ancestors @13 :List(Data);   # version 2: the id of every ancestor, parent first, root last
                               # (at most 16); absent for a root token and in version 1
}

struct SignedToken {
  version @0 :UInt16;
  body @1 :Data;
  signature @2 :Data;          # 64-byte Ed25519 signature
  signer @3 :Data;             # 32-byte Ed25519 public key that made `signature`; the `issuer`
                               # check requires body.issuer to be this key's did:key
}
