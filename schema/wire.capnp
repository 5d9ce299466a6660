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
    policyRequest @11 :PolicyRequest;  # supervisor → shell: decide one request
    policyAnswer @12 :PolicyAnswer;    # shell → supervisor: its answer to one policyRequest
    policyLoad @13 :PolicyLoad;        # supervisor → shell: the node's policy, whole
    policyLoaded @14 :PolicyLoaded;    # shell → supervisor: whether it took that policy
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
  pending @8;         # tokenReply only, and never final: the request waits for the person (a
                      # prompt); its answer follows under the same id. Anywhere else, an error.
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

# The decision protocol between the supervisor (mechanism: it mints, checks and audits) and the
# shell capsule (policy: it decides). Only the connection of the capsule the node configures as
# its shell may receive or send these; every field of a request was verified by the supervisor.

enum Standing {
  thisNode @0;                   # signed by this node's key (or one of its former keys)
  firstParty @1;                 # a publisher marked first party (`trust add --first-party`)
  known @2;                      # a known publisher (`trust add --publisher`)
  dev @3;                        # the development key
  unknown @4;
}

struct PolicyRequest {
  version @0 :UInt16;            # the decision protocol's version; a shell refuses one it does not know
  id @1 :Data;                   # 16 random bytes, fresh for each request; the answer echoes it
  name @2 :Text;                 # the requesting capsule
  cid @3 :Text;
  publisher @4 :Text;            # a DID, or "dev"
  standing @5 :Standing;
  resource @6 :Text;             # what it asked for: a resource or a pattern P/*
  actions @7 :List(Token.Action);
  ttlSeconds @8 :UInt32;         # what it asked for; 0 = the longest allowed
  covering @9 :Text;             # the requests entry of its manifest that covers the ask
  coveringActions @10 :List(Token.Action);
  reason @11 :Text;              # that entry's reason, as its manifest says it
  dryRun @12 :Bool;              # `elastos policy explain`: decide and explain, nothing is granted
}

struct PolicyAnswer {
  version @0 :UInt16;
  id @1 :Data;
  union {
    allow @2 :PolicyGrant;
    deny @3 :Text;               # why, for the requester and the audit log
    prompt @4 :Void;             # ask the person: the supervisor draws the prompt from its own record
  }
  explanation @5 :Text;          # which rule decided, and why (shown by `elastos policy explain`)
  rule @6 :Text;                 # the rule that decided, as an id of the shell's (at most 64
                                 # printable ASCII bytes): the supervisor keeps it with the
                                 # tokens an allow mints, and revokes them when a policy the
                                 # shell takes no longer has that rule. Empty: not tracked.
}

struct PolicyGrant {
  resource @0 :Text;             # the asked resource, or a pattern around it no wider than `covering`
  actions @1 :List(Token.Action);
  ttlSeconds @2 :UInt32;         # at most the node's maximum (3600)
}

struct PolicyLoad {
  version @0 :UInt16;
  text @1 :Text;                 # a policy file (schema::policy), whole
}

struct PolicyLoaded {
  version @0 :UInt16;
  ok @1 :Bool;
  line @2 :UInt32;               # where the first mistake is, when not ok
  column @3 :UInt32;
  message @4 :Text;
  rules @5 :List(Text);          # when ok: the id of every rule of the policy taken (at most
                                 # 10000), so tokens minted under a rule gone are revoked
}
