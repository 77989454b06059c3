//! boxo's `bitswap/message/pb/message.proto` (proto3), written out by hand so the
//! build needs no `protoc`. Block payloads are `Bytes`, so decoding from a `Bytes`
//! buffer slices instead of copying, and one block fans out to many clients for free.

use bytes::Bytes;

#[derive(Clone, PartialEq, prost::Message)]
pub struct Message {
    #[prost(message, optional, tag = "1")]
    pub wantlist: Option<Wantlist>,
    /// Bitswap 1.0.0 blocks: raw data of CIDv0 (sha2-256, dag-pb) blocks.
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub blocks: Vec<Bytes>,
    /// Bitswap 1.1.0+ blocks: a CID prefix and the data.
    #[prost(message, repeated, tag = "3")]
    pub payload: Vec<Block>,
    /// Bitswap 1.2.0 HAVE / DONT_HAVE.
    #[prost(message, repeated, tag = "4")]
    pub block_presences: Vec<BlockPresence>,
    #[prost(int32, tag = "5")]
    pub pending_bytes: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Wantlist {
    #[prost(message, repeated, tag = "1")]
    pub entries: Vec<Entry>,
    #[prost(bool, tag = "2")]
    pub full: bool,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(bytes = "bytes", tag = "1")]
    pub block: Bytes,
    #[prost(int32, tag = "2")]
    pub priority: i32,
    #[prost(bool, tag = "3")]
    pub cancel: bool,
    #[prost(enumeration = "WantType", tag = "4")]
    pub want_type: i32,
    #[prost(bool, tag = "5")]
    pub send_dont_have: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum WantType {
    Block = 0,
    Have = 1,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct Block {
    #[prost(bytes = "bytes", tag = "1")]
    pub prefix: Bytes,
    #[prost(bytes = "bytes", tag = "2")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct BlockPresence {
    #[prost(bytes = "bytes", tag = "1")]
    pub cid: Bytes,
    #[prost(enumeration = "PresenceType", tag = "2")]
    pub r#type: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum PresenceType {
    Have = 0,
    DontHave = 1,
}
