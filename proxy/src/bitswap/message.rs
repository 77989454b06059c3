//! Bitswap messages as the router sees them: CIDs parsed and block CIDs derived by
//! hashing (`cids`), decoded here from one frame; encoding per version is in `encode`.

use std::fmt;

use bytes::Bytes;
use cid::Cid;
use prost::Message as _;

use super::cids::{BlockError, DAG_PB, SHA2_256, derive_cid, parse_cid, parse_prefix};
use super::pb;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum WantKind {
    Block,
    Have,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WantEntry {
    pub cid: Cid,
    pub priority: i32,
    pub cancel: bool,
    pub kind: WantKind,
    pub send_dont_have: bool,
}

impl WantEntry {
    /// The CANCEL of `cid`'s want (kind and flags do not matter to a cancel).
    pub fn cancel(cid: Cid) -> Self {
        Self {
            cid,
            priority: 0,
            cancel: true,
            kind: WantKind::Block,
            send_dont_have: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PresenceKind {
    Have,
    DontHave,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub cid: Cid,
    pub kind: PresenceKind,
}

/// A block whose CID was derived from its data, so it is what it claims to be.
#[derive(Clone, PartialEq, Eq)]
pub struct Block {
    pub cid: Cid,
    pub data: Bytes,
}

impl fmt::Debug for Block {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Block({}, {} bytes)", self.cid, self.data.len())
    }
}

impl Block {
    /// A block for data under the given CID's version, codec and hash.
    pub fn new(cid_template: &Cid, data: Bytes) -> Result<Self, BlockError> {
        let cid = derive_cid(
            cid_template.version() as u64,
            cid_template.codec(),
            cid_template.hash().code(),
            cid_template.hash().size() as usize,
            &data,
        )?;
        Ok(Self { cid, data })
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Message {
    pub full: bool,
    pub wants: Vec<WantEntry>,
    pub blocks: Vec<Block>,
    pub presences: Vec<Presence>,
}

/// Why a message (or a part of it) was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("not a bitswap protobuf: {0}")]
    Protobuf(String),
}

/// What was dropped while decoding, so callers can count and log it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Rejected {
    pub bad_cids: usize,
    pub bad_blocks: usize,
}

impl Message {
    pub fn is_empty(&self) -> bool {
        !self.full && self.wants.is_empty() && self.blocks.is_empty() && self.presences.is_empty()
    }

    /// Decodes one frame. Entries with bad CIDs and blocks that cannot be verified are
    /// dropped and counted; the rest of the message still counts.
    pub fn decode(frame: Bytes) -> Result<(Self, Rejected), DecodeError> {
        let pb = pb::Message::decode(frame).map_err(|e| DecodeError::Protobuf(e.to_string()))?;
        let mut rejected = Rejected::default();
        let mut msg = Message::default();
        if let Some(wl) = pb.wantlist {
            msg.full = wl.full;
            msg.wants.reserve(wl.entries.len());
            for e in wl.entries {
                let Some(cid) = parse_cid(&e.block) else {
                    rejected.bad_cids += 1;
                    continue;
                };
                msg.wants.push(WantEntry {
                    cid,
                    priority: e.priority,
                    cancel: e.cancel,
                    kind: if e.want_type == pb::WantType::Have as i32 {
                        WantKind::Have
                    } else {
                        WantKind::Block
                    },
                    send_dont_have: e.send_dont_have,
                });
            }
        }
        for data in pb.blocks {
            match derive_cid(0, DAG_PB, SHA2_256, 32, &data) {
                Ok(cid) => msg.blocks.push(Block { cid, data }),
                Err(_) => rejected.bad_blocks += 1,
            }
        }
        for b in pb.payload {
            match parse_prefix(&b.prefix)
                .and_then(|(v, codec, code, len)| derive_cid(v, codec, code, len, &b.data))
            {
                Ok(cid) => msg.blocks.push(Block { cid, data: b.data }),
                Err(_) => rejected.bad_blocks += 1,
            }
        }
        for p in pb.block_presences {
            let Some(cid) = parse_cid(&p.cid) else {
                rejected.bad_cids += 1;
                continue;
            };
            let kind = if p.r#type == pb::PresenceType::DontHave as i32 {
                PresenceKind::DontHave
            } else {
                PresenceKind::Have
            };
            msg.presences.push(Presence { cid, kind });
        }
        Ok((msg, rejected))
    }
}
