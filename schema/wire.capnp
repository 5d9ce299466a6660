@0xf5d8eea31dad79b8;
# The capsule wire protocol: every message on a capsule's Unix socket. See docs/ARCHITECTURE.md
# "The call path".
#
# Framing: a little-endian u32 length, then that many bytes of one single-segment `Frame` message.
# At most 1 MiB per frame by default; a longer length closes the connection. Larger payloads are
# sent as a stream of `Chunk`s.

using Token = import "token.capnp";

struct Frame {
  union {
    hello @0 :Hello;             # capsule → supervisor, first frame
    welcome @1 :Welcome;         # supervisor → capsule, answer to hello
    call @2 :Call;               # capsule → supervisor: call a URI
    answer @3 :Answer;           # supervisor → capsule: the outcome of a call
    requestToken @4 :RequestToken;   # capsule → supervisor: ask for a capability
    tokenReply @5 :TokenReply;       # supervisor → capsule
    serve @6 :Serve;             # provider → supervisor: "I serve this namespace"
    serveReply @7 :ServeReply;
    incoming @8 :Incoming;       # supervisor → provider: a verified call to serve
    reply @9 :Reply;             # provider → supervisor: the provider's answer to an incoming
    chunk @10 :Chunk;            # either way: part of a large payload
  }
}

struct Hello {
  version @0 :UInt16;            # wire protocol version; the supervisor refuses one it does not know
  sdk @1 :Text;                  # free text, for logs ("elastos-sdk 0.1.0 native")
}

struct Welcome {
  version @0 :UInt16;
  name @1 :Text;                 # the capsule's name, as the supervisor knows it
  cid @2 :Text;                  # its package CID
  maxFrame @3 :UInt32;           # the largest frame the supervisor accepts
}

enum Status {
  ok @0;
  denied @1;          # a token check failed; `message` names the check and the reason
  notFound @2;        # no provider serves the URI
  busy @3;            # too many calls in flight; retry later
  timeout @4;         # the provider did not answer before the deadline
  unavailable @5;     # the provider is down or restarting, or the audit log cannot be written
  badRequest @6;      # the frame decoded but makes no sense
  providerError @7;   # the provider answered with an error
}

struct Call {
  id @0 :UInt64;                 # chosen by the caller; echoed in the answer
  target @1 :Text;               # the URI called
  action @2 :Token.Action;
  token @3 :Data;                # the caller's SignedToken message bytes
  payload @4 :Data;
  deadlineMs @5 :UInt32;         # 0 = the supervisor's default (30 s); never longer than it
  stream @6 :UInt64;             # non-zero: the payload continues in chunks of this stream
}

struct Answer {
  id @0 :UInt64;
  status @1 :Status;
  message @2 :Text;              # human reason when status is not ok
  payload @3 :Data;
  stream @4 :UInt64;
}

struct RequestToken {
  id @0 :UInt64;
  resource @1 :Text;
  actions @2 :List(Token.Action);
  reason @3 :Text;               # shown to the person deciding
  ttlSeconds @4 :UInt32;         # wanted lifetime; policy may shorten it
}

struct TokenReply {
  id @0 :UInt64;
  status @1 :Status;
  message @2 :Text;
  token @3 :Data;                # SignedToken bytes when granted
  expiry @4 :Int64;              # unix seconds, so the SDK can renew before it
  resource @5 :Text;             # what the granted token covers (may be wider than asked, never narrower)
  actions @6 :List(Token.Action);
}

struct Serve {
  id @0 :UInt64;
  pattern @1 :Text;              # the namespace, e.g. "localhost://echo/*"
  token @2 :Data;                # the "provide" capability: a token granting `admin` on exactly the pattern
}

struct ServeReply {
  id @0 :UInt64;
  status @1 :Status;
  message @2 :Text;
}

struct Caller {
  name @0 :Text;
  cid @1 :Text;
  publisher @2 :Text;            # DID, or "dev" for development packages
}

struct Incoming {
  id @0 :UInt64;                 # chosen by the supervisor; echoed in the reply
  caller @1 :Caller;             # verified by the supervisor; the caller's token is never forwarded
  action @2 :Token.Action;
  resource @3 :Text;
  payload @4 :Data;
  deadlineMs @5 :UInt32;
  stream @6 :UInt64;
}

struct Reply {
  id @0 :UInt64;
  status @1 :Status;
  message @2 :Text;
  payload @3 :Data;
  stream @4 :UInt64;
}

struct Chunk {
  stream @0 :UInt64;
  seq @1 :UInt32;
  data @2 :Data;
  last @3 :Bool;
}
