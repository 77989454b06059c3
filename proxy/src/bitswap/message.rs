//! Bitswap messages as the router sees them: CIDs parsed, block CIDs derived by hashing,
//! and one encoder per protocol version.

use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use cid::Cid;
use multihash::Multihash;
use multihash_codetable::{Code, MultihashDigest};
use prost::Message as _;

use super::pb;
use super::protocol::Version;

/// boxo's `MaximumAllowedCid`: longer CIDs are refused.
pub const MAX_CID_BYTES: usize = 40 + 128;
/// The multicodec of dag-pb, the only codec a CIDv0 can have.
pub const DAG_PB: u64 = 0x70;
/// sha2-256.
const SHA2_256: u64 = 0x12;

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

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BlockError {
    #[error("malformed CID prefix")]
    BadPrefix,
    #[error("unsupported multihash 0x{0:x}")]
    UnsupportedHash(u64),
    #[error("bad digest length {0}")]
    BadDigestLength(usize),
    #[error("CIDv0 must be sha2-256 dag-pb")]
    BadV0,
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

    /// The protobuf for a peer that speaks `version`. Parts the version cannot carry are
    /// left out: presences and WANT-HAVE before 1.2.0, CIDv1 blocks in 1.0.0.
    pub fn to_pb(&self, version: Version) -> pb::Message {
        let mut out = pb::Message::default();
        if self.full || !self.wants.is_empty() {
            let entries = self
                .wants
                .iter()
                .filter(|w| version.has_presences() || w.kind == WantKind::Block)
                .map(|w| pb::Entry {
                    block: Bytes::from(w.cid.to_bytes()),
                    priority: w.priority,
                    cancel: w.cancel,
                    want_type: match w.kind {
                        WantKind::Block => pb::WantType::Block as i32,
                        WantKind::Have => pb::WantType::Have as i32,
                    },
                    send_dont_have: w.send_dont_have && version.has_presences(),
                })
                .collect();
            out.wantlist = Some(pb::Wantlist {
                entries,
                full: self.full,
            });
        }
        for b in &self.blocks {
            if version.has_payload() {
                out.payload.push(pb::Block {
                    prefix: cid_prefix(&b.cid),
                    data: b.data.clone(),
                });
            } else if b.cid.version() == cid::Version::V0 {
                out.blocks.push(b.data.clone());
            }
        }
        if version.has_presences() {
            out.block_presences = self
                .presences
                .iter()
                .map(|p| pb::BlockPresence {
                    cid: Bytes::from(p.cid.to_bytes()),
                    r#type: match p.kind {
                        PresenceKind::Have => pb::PresenceType::Have as i32,
                        PresenceKind::DontHave => pb::PresenceType::DontHave as i32,
                    },
                })
                .collect();
        }
        out
    }

    /// Encodes for `version`, split into frames of at most `max_frame` bytes where the
    /// content allows (a single block larger than that still goes alone).
    pub fn encode_frames(&self, version: Version, max_frame: usize) -> Vec<Bytes> {
        let whole = self.to_pb(version);
        if whole.encoded_len() <= max_frame {
            return vec![encode_pb(&whole)];
        }
        // Too big for one frame: wants and presences first, then blocks packed greedily.
        let mut frames: Vec<Bytes> = self
            .head_parts(max_frame)
            .iter()
            .map(|part| encode_pb(&part.to_pb(version)))
            .collect();
        let mut batch = Message::default();
        let mut size = 0;
        for b in &self.blocks {
            let cost = b.data.len() + b.cid.encoded_len() + 16;
            if size + cost > max_frame && !batch.blocks.is_empty() {
                frames.push(encode_pb(&std::mem::take(&mut batch).to_pb(version)));
                size = 0;
            }
            batch.blocks.push(b.clone());
            size += cost;
        }
        if !batch.blocks.is_empty() {
            frames.push(encode_pb(&batch.to_pb(version)));
        }
        frames
    }
}

/// One frame as pieces to write in order: the length prefix and protobuf headers are
/// small buffers; block data is the `Bytes` the block arrived in, never copied.
pub type Segments = Vec<Bytes>;

impl Message {
    /// Like [`Message::encode_frames`] but each frame is returned as length-prefixed
    /// segments that share block data instead of copying it into one buffer.
    pub fn encode_segmented(&self, version: Version, max_frame: usize) -> Vec<Segments> {
        let mut frames = Vec::new();
        let mut parts = self.head_parts(max_frame);
        // The last part of the head shares its frame with the first blocks.
        let last = parts.pop();
        for part in parts {
            frames.push(Frame::new(encode_pb(&part.to_pb(version))).finish());
        }
        let mut frame = Frame::new(match last {
            Some(part) => encode_pb(&part.to_pb(version)),
            None => Bytes::new(),
        });
        for b in &self.blocks {
            let Some(parts) = block_field(b, version) else {
                continue;
            };
            let cost: usize = parts.iter().map(Bytes::len).sum();
            // A block that does not fit starts a new frame, unless the frame is empty.
            if frame.len + cost > max_frame && frame.len > 0 {
                frames.push(std::mem::replace(&mut frame, Frame::new(Bytes::new())).finish());
            }
            frame.push_block(parts, cost);
        }
        if frame.len > 0 || frames.is_empty() {
            frames.push(frame.finish());
        }
        frames
    }
}

/// The most a want or presence adds to a frame besides its CID: field keys, lengths,
/// priority (a negative int32 is 10 bytes), the flags.
const ENTRY_OVERHEAD: usize = 32;
/// The wantlist's own key, length and `full` flag.
const HEAD_OVERHEAD: usize = 16;

impl Message {
    /// The wants and presences (no blocks) as messages that each encode within
    /// `max_frame`: a message can hold far more of them than one frame (the spec's
    /// 4 MiB) may carry, and a peer drops a frame over that whole. Only the first part
    /// says `full`: a full wantlist in parts is one full part and then additions. No
    /// part when there is nothing to say.
    fn head_parts(&self, max_frame: usize) -> Vec<Message> {
        let mut parts = Vec::new();
        let mut part = Message {
            full: self.full,
            ..Message::default()
        };
        let mut size = HEAD_OVERHEAD;
        let entries = self
            .wants
            .iter()
            .map(|w| (Some(w), None, w.cid.encoded_len()))
            .chain(
                self.presences
                    .iter()
                    .map(|p| (None, Some(p), p.cid.encoded_len())),
            );
        for (want, presence, cid_len) in entries {
            let cost = cid_len + ENTRY_OVERHEAD;
            if size + cost > max_frame && !(part.wants.is_empty() && part.presences.is_empty()) {
                parts.push(std::mem::take(&mut part));
                size = HEAD_OVERHEAD;
            }
            part.wants.extend(want.cloned());
            part.presences.extend(presence.cloned());
            size += cost;
        }
        if !part.is_empty() {
            parts.push(part);
        }
        parts
    }
}

/// A frame being assembled from already-encoded protobuf fields.
struct Frame {
    parts: Vec<Bytes>,
    len: usize,
}

impl Frame {
    fn new(head: Bytes) -> Self {
        let len = head.len();
        Self {
            parts: if head.is_empty() {
                Vec::new()
            } else {
                vec![head]
            },
            len,
        }
    }

    fn push_block(&mut self, parts: [Bytes; 2], cost: usize) {
        self.parts.extend(parts);
        self.len += cost;
    }

    /// Prepends the frame's varint length.
    fn finish(self) -> Segments {
        let mut out = Vec::with_capacity(self.parts.len() + 1);
        let mut tmp = unsigned_varint::encode::usize_buffer();
        out.push(Bytes::copy_from_slice(unsigned_varint::encode::usize(
            self.len, &mut tmp,
        )));
        out.extend(self.parts.into_iter().filter(|p| !p.is_empty()));
        out
    }
}

/// A block as a top-level protobuf field: (field key, lengths and prefix) then the data.
/// `None` when the version cannot carry it (CIDv1 in 1.0.0).
fn block_field(b: &Block, version: Version) -> Option<[Bytes; 2]> {
    let mut head = BytesMut::with_capacity(32);
    let mut tmp = unsigned_varint::encode::u64_buffer();
    let mut varint = |buf: &mut BytesMut, v: u64| {
        buf.put_slice(unsigned_varint::encode::u64(v, &mut tmp));
    };
    let data_len = b.data.len() as u64;
    if version.has_payload() {
        // payload (3): Block { prefix (1), data (2) }
        let prefix = cid_prefix(&b.cid);
        let mut inner = BytesMut::with_capacity(24);
        inner.put_u8(0x0a);
        varint(&mut inner, prefix.len() as u64);
        inner.put_slice(&prefix);
        inner.put_u8(0x12);
        varint(&mut inner, data_len);
        head.put_u8(0x1a);
        varint(&mut head, inner.len() as u64 + data_len);
        head.put_slice(&inner);
    } else if b.cid.version() == cid::Version::V0 {
        // blocks (2): raw data
        head.put_u8(0x12);
        varint(&mut head, data_len);
    } else {
        return None;
    }
    Some([head.freeze(), b.data.clone()])
}

fn encode_pb(m: &pb::Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(m.encoded_len());
    m.encode(&mut buf).expect("BytesMut grows as needed");
    buf.freeze()
}

/// Parses a binary CID, refusing oversized ones.
pub fn parse_cid(bytes: &[u8]) -> Option<Cid> {
    if bytes.is_empty() || bytes.len() > MAX_CID_BYTES {
        return None;
    }
    Cid::try_from(bytes).ok()
}

/// boxo's CID prefix: version, codec, multihash code and digest length, as varints.
pub fn cid_prefix(cid: &Cid) -> Bytes {
    let mut buf = BytesMut::with_capacity(16);
    let mut tmp = unsigned_varint::encode::u64_buffer();
    for v in [
        cid.version() as u64,
        cid.codec(),
        cid.hash().code(),
        cid.hash().size() as u64,
    ] {
        buf.put_slice(unsigned_varint::encode::u64(v, &mut tmp));
    }
    buf.freeze()
}

fn parse_prefix(prefix: &[u8]) -> Result<(u64, u64, u64, usize), BlockError> {
    let mut rest = prefix;
    let mut next = || -> Result<u64, BlockError> {
        let (v, r) = unsigned_varint::decode::u64(rest).map_err(|_| BlockError::BadPrefix)?;
        rest = r;
        Ok(v)
    };
    let (version, codec, code, len) = (next()?, next()?, next()?, next()?);
    if !rest.is_empty() {
        return Err(BlockError::BadPrefix);
    }
    Ok((version, codec, code, len as usize))
}

/// The CID of `data` under a prefix. Hashing is what makes a block trustworthy, and in
/// bitswap 1.1+ it is also the only way to learn which CID a block answers.
fn derive_cid(
    version: u64,
    codec: u64,
    code: u64,
    len: usize,
    data: &[u8],
) -> Result<Cid, BlockError> {
    let hasher = Code::try_from(code).map_err(|_| BlockError::UnsupportedHash(code))?;
    let full = hasher.digest(data);
    if len == 0 || len > full.size() as usize {
        return Err(BlockError::BadDigestLength(len));
    }
    let mh = Multihash::<64>::wrap(code, &full.digest()[..len])
        .map_err(|_| BlockError::BadDigestLength(len))?;
    match version {
        0 if codec == DAG_PB && code == SHA2_256 && len == 32 => {
            Cid::new_v0(mh).map_err(|_| BlockError::BadV0)
        }
        0 => Err(BlockError::BadV0),
        1 => Ok(Cid::new_v1(codec, mh)),
        _ => Err(BlockError::BadPrefix),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn raw_block(data: &[u8]) -> Block {
        let mh = Code::Sha2_256.digest(data);
        Block {
            cid: Cid::new_v1(0x55, mh),
            data: Bytes::copy_from_slice(data),
        }
    }

    pub(crate) fn v0_block(data: &[u8]) -> Block {
        let mh = Code::Sha2_256.digest(data);
        Block {
            cid: Cid::new_v0(mh).unwrap(),
            data: Bytes::copy_from_slice(data),
        }
    }

    fn sample() -> Message {
        let b0 = v0_block(b"hello");
        let b1 = raw_block(b"world");
        Message {
            full: true,
            wants: vec![
                WantEntry {
                    cid: b0.cid,
                    priority: 7,
                    cancel: false,
                    kind: WantKind::Block,
                    send_dont_have: true,
                },
                WantEntry {
                    cid: b1.cid,
                    priority: 1,
                    cancel: false,
                    kind: WantKind::Have,
                    send_dont_have: false,
                },
            ],
            blocks: vec![b0.clone(), b1.clone()],
            presences: vec![Presence {
                cid: b1.cid,
                kind: PresenceKind::DontHave,
            }],
        }
    }

    #[test]
    fn round_trips_in_1_2_0() {
        let m = sample();
        let frames = m.encode_frames(Version::V1_2_0, 1 << 22);
        assert_eq!(frames.len(), 1);
        let (back, rejected) = Message::decode(frames[0].clone()).unwrap();
        assert_eq!(rejected, Rejected::default());
        assert_eq!(back, m);
    }

    #[test]
    fn older_versions_drop_what_they_cannot_carry() {
        let m = sample();
        let (v11, _) =
            Message::decode(m.encode_frames(Version::V1_1_0, 1 << 22)[0].clone()).unwrap();
        assert_eq!(v11.blocks, m.blocks);
        assert!(v11.presences.is_empty());
        assert_eq!(v11.wants.len(), 1, "WANT-HAVE cannot be said in 1.1.0");
        assert!(!v11.wants[0].send_dont_have);

        let (v10, _) =
            Message::decode(m.encode_frames(Version::V1_0_0, 1 << 22)[0].clone()).unwrap();
        assert_eq!(
            v10.blocks,
            vec![m.blocks[0].clone()],
            "1.0.0 carries CIDv0 blocks only"
        );
    }

    #[test]
    fn forged_blocks_are_refused_not_trusted() {
        let b = raw_block(b"real data");
        let forged = pb::Message {
            payload: vec![pb::Block {
                prefix: cid_prefix(&b.cid),
                data: Bytes::from_static(b"other data"),
            }],
            ..Default::default()
        };
        let (m, _) = Message::decode(encode_pb(&forged)).unwrap();
        assert_ne!(
            m.blocks[0].cid, b.cid,
            "the CID is derived from the data, never taken on trust"
        );

        let bad_prefix = pb::Message {
            payload: vec![pb::Block {
                prefix: Bytes::from_static(&[0x01, 0x55, 0x99, 0x99, 0x99, 0x99, 0x99]),
                data: Bytes::from_static(b"x"),
            }],
            ..Default::default()
        };
        let (m, rejected) = Message::decode(encode_pb(&bad_prefix)).unwrap();
        assert!(m.blocks.is_empty());
        assert_eq!(rejected.bad_blocks, 1);
    }

    #[test]
    fn bad_cids_are_dropped_and_counted() {
        let ok = raw_block(b"a").cid;
        let m = pb::Message {
            wantlist: Some(pb::Wantlist {
                entries: vec![
                    pb::Entry {
                        block: Bytes::from_static(b"\x01\x02garbage"),
                        ..Default::default()
                    },
                    pb::Entry {
                        block: Bytes::from(vec![0x01; MAX_CID_BYTES + 1]),
                        ..Default::default()
                    },
                    pb::Entry {
                        block: Bytes::from(ok.to_bytes()),
                        ..Default::default()
                    },
                ],
                full: false,
            }),
            ..Default::default()
        };
        let (m, rejected) = Message::decode(encode_pb(&m)).unwrap();
        assert_eq!(rejected.bad_cids, 2);
        assert_eq!(m.wants.len(), 1);
        assert_eq!(m.wants[0].cid, ok);
        assert!(Message::decode(Bytes::from_static(&[0xff, 0xff, 0xff])).is_err());
    }

    #[test]
    fn segmented_frames_are_the_same_bytes_without_copying_blocks() {
        let m = sample();
        for v in Version::ALL {
            let seg = m.encode_segmented(v, 1 << 22);
            assert_eq!(seg.len(), 1);
            let joined: Vec<u8> = seg[0].iter().flat_map(|b| b.to_vec()).collect();
            let (len, body) = unsigned_varint::decode::usize(&joined).unwrap();
            assert_eq!(len, body.len());
            let (back, rejected) = Message::decode(Bytes::copy_from_slice(body)).unwrap();
            assert_eq!(rejected, Rejected::default());
            let (expected, _) = Message::decode(m.encode_frames(v, 1 << 22)[0].clone()).unwrap();
            assert_eq!(back, expected, "{v:?}");
            // The block data segments are the very buffers the blocks hold.
            for b in &back.blocks {
                let orig = m.blocks.iter().find(|x| x.cid == b.cid).unwrap();
                assert!(seg[0].iter().any(|s| s.as_ptr() == orig.data.as_ptr()));
            }
        }
        let big = Message {
            blocks: (0..10u8).map(|i| raw_block(&vec![i; 300_000])).collect(),
            ..Default::default()
        };
        let frames = big.encode_segmented(Version::V1_2_0, 1 << 20);
        assert!(frames.len() >= 3);
        let mut seen = Vec::new();
        for f in frames {
            let joined: Vec<u8> = f.iter().flat_map(|b| b.to_vec()).collect();
            let (len, body) = unsigned_varint::decode::usize(&joined).unwrap();
            assert!(len <= 1 << 20 && len == body.len());
            seen.extend(
                Message::decode(Bytes::copy_from_slice(body))
                    .unwrap()
                    .0
                    .blocks,
            );
        }
        assert_eq!(seen, big.blocks);
        assert_eq!(
            Message::default()
                .encode_segmented(Version::V1_2_0, 1 << 20)
                .len(),
            1
        );
    }

    #[test]
    fn big_messages_split_into_bounded_frames() {
        let blocks: Vec<Block> = (0..10u8).map(|i| raw_block(&vec![i; 300_000])).collect();
        let m = Message {
            blocks: blocks.clone(),
            ..Default::default()
        };
        let frames = m.encode_frames(Version::V1_2_0, 1 << 20);
        assert!(frames.len() >= 3);
        let mut seen = Vec::new();
        for f in frames {
            assert!(f.len() <= 1 << 20);
            seen.extend(Message::decode(f).unwrap().0.blocks);
        }
        assert_eq!(seen, blocks);
    }

    /// 300,000 refused wants answered at once made DONT_HAVE frames of several MiB,
    /// over the 4 MiB every peer enforces, so they were dropped whole (found by the
    /// abuse tests). Wants and
    /// presences now split across frames like blocks do.
    #[test]
    fn many_wants_and_presences_split_into_bounded_frames() {
        let cids: Vec<Cid> = (0..50_000u32)
            .map(|i| raw_block(&i.to_le_bytes()).cid)
            .collect();
        let m = Message {
            full: true,
            wants: cids
                .iter()
                .map(|c| WantEntry {
                    cid: *c,
                    priority: -1,
                    cancel: false,
                    kind: WantKind::Have,
                    send_dont_have: true,
                })
                .collect(),
            blocks: vec![raw_block(b"after the head"), raw_block(&[7u8; 900_000])],
            presences: cids
                .iter()
                .map(|c| Presence {
                    cid: *c,
                    kind: PresenceKind::DontHave,
                })
                .collect(),
        };
        let max = 1 << 20;
        let frames = m.encode_frames(Version::V1_2_0, max);
        assert!(frames.len() >= 4, "{} frames", frames.len());
        let segmented: Vec<Bytes> = m
            .encode_segmented(Version::V1_2_0, max)
            .into_iter()
            .map(|seg| {
                let joined: Vec<u8> = seg.iter().flat_map(|b| b.to_vec()).collect();
                let (len, body) = unsigned_varint::decode::usize(&joined).unwrap();
                assert_eq!(len, body.len());
                Bytes::copy_from_slice(body)
            })
            .collect();
        for frames in [frames, segmented] {
            let mut back = Message::default();
            for (i, f) in frames.iter().enumerate() {
                assert!(f.len() <= max, "frame {i} is {} bytes", f.len());
                let (part, rejected) = Message::decode(f.clone()).unwrap();
                assert_eq!(rejected, Rejected::default());
                assert_eq!(part.full, i == 0, "only the first part is full");
                back.full |= part.full;
                back.wants.extend(part.wants);
                back.blocks.extend(part.blocks);
                back.presences.extend(part.presences);
            }
            assert_eq!(back, m, "every want, presence and block once, in order");
        }
    }

    /// Frames captured from kubo 0.22 (boxo 0.11): a WANT-HAVE it sent while fetching,
    /// and a DONT_HAVE it answered with.
    #[test]
    fn decodes_and_reencodes_bytes_from_a_real_implementation() {
        let expected: Cid = "bafkreigh2akiscaildcqabsyg3dfr6chu3fgpregiymsck7e7aqa4s52zy"
            .parse()
            .unwrap();
        let frame = Bytes::from_static(include_bytes!("../../testdata/kubo-wantlist.bin"));
        let (m, rejected) = Message::decode(frame.clone()).unwrap();
        assert_eq!(rejected, Rejected::default());
        assert_eq!(
            m.wants,
            vec![WantEntry {
                cid: expected,
                priority: i32::MAX,
                cancel: false,
                kind: WantKind::Have,
                send_dont_have: false,
            }]
        );
        assert_eq!(
            m.encode_frames(Version::V1_2_0, 1 << 22),
            vec![frame],
            "byte-identical"
        );

        let frame = Bytes::from_static(include_bytes!("../../testdata/kubo-dont-have.bin"));
        let (m, _) = Message::decode(frame).unwrap();
        assert!(m.wants.is_empty() && !m.full);
        assert_eq!(
            m.presences,
            vec![Presence {
                cid: expected,
                kind: PresenceKind::DontHave
            }]
        );
    }
}
