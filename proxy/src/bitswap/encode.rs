//! Encoding a message for one protocol version: whole frames (`encode_frames`) or
//! frames as segments that share block data (`encode_segmented`, the writer's path),
//! both split so that no frame passes a size bound the content allows.

use bytes::{BufMut, Bytes, BytesMut};
use prost::Message as _;

use super::cids::cid_prefix;
use super::message::{Block, Message, PresenceKind, WantKind};
use super::pb;
use super::protocol::Version;

impl Message {
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

pub(super) fn encode_pb(m: &pb::Message) -> Bytes {
    let mut buf = BytesMut::with_capacity(m.encoded_len());
    m.encode(&mut buf).expect("BytesMut grows as needed");
    buf.freeze()
}
