//! Sizes of messages in memory and on the wire, and splitting a batch into units a
//! writer sends (and reports failures by) one at a time.

use super::{MAX_FRAME_BYTES, Message};

/// Outgoing frames are kept to half the limit so a 2 MiB block always fits alone.
pub const TARGET_FRAME_BYTES: usize = MAX_FRAME_BYTES / 2;

/// What a decoded message costs in memory, roughly: its block bytes plus a fixed
/// cost per want or presence (a CID and bookkeeping).
pub fn cost(msg: &Message) -> usize {
    msg.blocks.iter().map(|b| b.data.len() + 128).sum::<usize>()
        + 96 * (msg.wants.len() + msg.presences.len())
}

/// Wants plus presences in one unit.
const HEAD_ENTRIES: usize = 16 * 1024;

/// Splits a batch into units of at most about `max` bytes of blocks: first the wants
/// and presences, then the blocks in order. Each unit is encoded on its own, for the
/// version of the stream it goes on, and a failure is reported by unit.
pub fn split(msg: Message, max: usize) -> Vec<Message> {
    let mut units = Vec::new();
    // Wants and presences in units of at most HEAD_ENTRIES (~50 bytes each on the
    // wire), so no unit comes near a stream's budget; only the first carries `full`.
    let (mut wants, mut presences) = (msg.wants.into_iter(), msg.presences.into_iter());
    let mut unit = Message {
        full: msg.full,
        ..Message::default()
    };
    loop {
        unit.wants.extend(wants.by_ref().take(HEAD_ENTRIES));
        let room = HEAD_ENTRIES - unit.wants.len();
        unit.presences.extend(presences.by_ref().take(room));
        if unit.wants.len() + unit.presences.len() < HEAD_ENTRIES {
            break;
        }
        units.push(std::mem::take(&mut unit));
    }
    let mut size = 0;
    for b in msg.blocks {
        let cost = b.data.len() + 64;
        if size + cost > max && !unit.blocks.is_empty() {
            units.push(std::mem::take(&mut unit));
            size = 0;
        }
        size += cost;
        unit.blocks.push(b);
    }
    if !unit.is_empty() || unit.full || units.is_empty() {
        units.push(unit);
    }
    units
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use multihash_codetable::{Code, MultihashDigest};

    use super::*;
    use crate::bitswap::{Block, Presence, PresenceKind, Version, WantEntry, WantKind};
    // The writer's stream budget: what a unit must fit.
    use crate::net::bitswap::STREAM_BUDGET;

    fn block(len: usize, seed: u8) -> Block {
        let data = Bytes::from(vec![seed; len]);
        Block {
            cid: cid::Cid::new_v1(0x55, Code::Sha2_256.digest(&data)),
            data,
        }
    }

    #[test]
    fn split_keeps_order_and_bounds_units() {
        let want = WantEntry {
            cid: block(1, 0).cid,
            priority: 1,
            cancel: false,
            kind: WantKind::Block,
            send_dont_have: true,
        };
        let blocks: Vec<Block> = (0..10).map(|i| block(400 * 1024, i)).collect();
        let msg = Message {
            full: false,
            wants: vec![want.clone()],
            blocks: blocks.clone(),
            presences: Vec::new(),
        };
        let units = split(msg, 1024 * 1024);
        // Two 400 KiB blocks fit under 1 MiB, a third does not.
        assert_eq!(units.len(), 5);
        assert_eq!(units[0].wants, vec![want], "wants travel in the first unit");
        assert!(units[1..].iter().all(|u| u.wants.is_empty()));
        let flat: Vec<_> = units
            .iter()
            .flat_map(|u| u.blocks.iter().cloned())
            .collect();
        assert_eq!(flat, blocks, "every block once, in order");
        for u in &units {
            let frames = u.encode_segmented(Version::V1_2_0, TARGET_FRAME_BYTES);
            let len: usize = frames.iter().flatten().map(Bytes::len).sum();
            assert!(len < STREAM_BUDGET, "a unit always fits a fresh stream");
        }
    }

    #[test]
    fn split_bounds_wants_and_presences_per_unit() {
        let presences: Vec<_> = (0..40_000u32)
            .map(|i| Presence {
                cid: block(1, (i % 251) as u8).cid,
                kind: PresenceKind::DontHave,
            })
            .collect();
        let msg = Message {
            full: true,
            presences: presences.clone(),
            ..Message::default()
        };
        let units = split(msg, TARGET_FRAME_BYTES);
        assert_eq!(units.len(), 3);
        assert!(units[0].full && !units[1].full && !units[2].full);
        let flat: Vec<_> = units.iter().flat_map(|u| u.presences.clone()).collect();
        assert_eq!(flat, presences);
        for u in &units {
            let frames = u.encode_segmented(Version::V1_2_0, TARGET_FRAME_BYTES);
            let len: usize = frames.iter().flatten().map(Bytes::len).sum();
            assert!(len < STREAM_BUDGET / 2, "{len} bytes in one unit");
        }
    }

    #[test]
    fn split_keeps_an_empty_full_wantlist_and_an_oversized_block() {
        let units = split(
            Message {
                full: true,
                ..Message::default()
            },
            1024,
        );
        assert_eq!(units.len(), 1);
        assert!(units[0].full);
        let big = block(4096, 7);
        let units = split(
            Message {
                blocks: vec![big.clone()],
                ..Message::default()
            },
            1024,
        );
        assert_eq!(
            units.len(),
            1,
            "a block over the unit size still goes, alone"
        );
        assert_eq!(units[0].blocks, vec![big]);
    }
}
