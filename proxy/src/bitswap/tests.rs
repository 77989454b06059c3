//! The wire format end to end: round trips per version, refused forgeries, bounded
//! frames, and bytes captured from kubo.

use bytes::Bytes;
use cid::Cid;
use multihash_codetable::{Code, MultihashDigest};

use super::cids::{MAX_CID_BYTES, cid_prefix};
use super::encode::encode_pb;
use super::message::Rejected;
use super::pb;
use super::{Block, Message, Presence, PresenceKind, Version, WantEntry, WantKind};

fn raw_block(data: &[u8]) -> Block {
    let mh = Code::Sha2_256.digest(data);
    Block {
        cid: Cid::new_v1(0x55, mh),
        data: Bytes::copy_from_slice(data),
    }
}

fn v0_block(data: &[u8]) -> Block {
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
    let (v11, _) = Message::decode(m.encode_frames(Version::V1_1_0, 1 << 22)[0].clone()).unwrap();
    assert_eq!(v11.blocks, m.blocks);
    assert!(v11.presences.is_empty());
    assert_eq!(v11.wants.len(), 1, "WANT-HAVE cannot be said in 1.1.0");
    assert!(!v11.wants[0].send_dont_have);

    let (v10, _) = Message::decode(m.encode_frames(Version::V1_0_0, 1 << 22)[0].clone()).unwrap();
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
