@0xcd91bccf90532e08;
# Capsule packages: the signed index at the head of a package file; see docs/ARCHITECTURE.md "Packages".
#
# A package file is: the 8 magic bytes "ELCAPSUL", a little-endian u32 length, that many bytes of one
# single-segment `SignedIndex` message, then the contents of every file in index order.

struct FileEntry {
  path @0 :Text;         # normalised relative path: "/"-separated, no "", ".", ".." segment
  executable @1 :Bool;
  size @2 :UInt64;
  sha256 @3 :Data;       # 32 bytes
}

struct PackageIndex {
  version @0 :UInt16;    # package index format version
  publisher @1 :Text;    # did:key of the signer
  files @2 :List(FileEntry);   # sorted by path (bytewise), unique; includes capsule.toml
}

struct SignedIndex {
  version @0 :UInt16;
  body @1 :Data;         # canonical bytes of one single-segment PackageIndex message
  signature @2 :Data;    # over "elastos/package/v1\0" followed by body
  signer @3 :Data;       # 32-byte Ed25519 public key
}
