//! The bitswap inbound path, as a stream reader sees it: the input is the bytes a peer
//! writes on one stream. Frames are read with the proxy's `read_frame` (the 4 MiB limit)
//! and each is decoded with `Message::decode`, exactly as `net::bitswap`'s reader does.
//!
//! Checked on every input, besides "no panic":
//! - framing: every frame is within the limit, frames never claim more bytes than the
//!   stream held, and writing a frame back with `write_frame` reads back the same bytes;
//! - decoding: nothing decoded outnumbers the bytes it came from; re-encoding a decoded
//!   message for bitswap 1.2.0 (which carries every part) and decoding that gives the
//!   same message, with nothing rejected; the segmented (zero-copy) encoder gives the
//!   same message as the plain one, and both keep frames within the limit;
//! - allocation: the most memory live at once stays within a small multiple of the input,
//!   plus a fixed allowance, plus the largest declared frame length: the reader reserves
//!   a frame's capacity at once (so it never reallocates) but writes only what arrives,
//!   which `codec`'s unit tests check; reserved, untouched capacity is not resident.

#![no_main]

use std::collections::HashSet;

use bytes::Bytes;
use futures::executor::block_on;
use futures::io::Cursor;
use kitsune_proxy::bitswap::codec::{FrameError, read_frame, write_frame};
use kitsune_proxy::bitswap::{MAX_FRAME_BYTES, Message, Version};
use libfuzzer_sys::fuzz_target;

#[global_allocator]
static ALLOC: kitsune_fuzz::Counting = kitsune_fuzz::Counting;

/// The fixed part of the allocation allowance: the reader's first buffer and the
/// encoders' small buffers.
const ALLOWANCE: usize = 256 * 1024;
/// Bytes of decoded structures (entries, CIDs, frame copies) per input byte, at most.
const PER_INPUT_BYTE: usize = 64;

fuzz_target!(|data: &[u8]| {
    let ((), peak) = kitsune_fuzz::peak_allocation(|| run(data));
    let reserved = largest_declared(data);
    assert!(
        peak <= ALLOWANCE + PER_INPUT_BYTE * data.len() + reserved,
        "{peak} bytes allocated at once for {} input bytes (largest frame declared: {reserved})",
        data.len()
    );
});

/// The largest length prefix the reader will act on (frames within the limit, in order,
/// until the input runs out): the capacity it may reserve for one frame.
fn largest_declared(mut data: &[u8]) -> usize {
    let mut largest = 0;
    while let Ok((len, rest)) = unsigned_varint::decode::usize(data) {
        if len > MAX_FRAME_BYTES {
            break;
        }
        largest = largest.max(len);
        if rest.len() < len {
            break;
        }
        data = &rest[len..];
    }
    largest
}

fn run(data: &[u8]) {
    let mut r = Cursor::new(data);
    let mut frames = 0usize;
    loop {
        let before = r.position();
        match block_on(read_frame(&mut r, MAX_FRAME_BYTES)) {
            Ok(Some(frame)) => {
                frames += 1;
                assert!(frame.len() <= MAX_FRAME_BYTES);
                let used = (r.position() - before) as usize;
                assert!(used > frame.len(), "a length prefix is at least one byte");
                check_framing(&frame);
                check_message(frame);
            }
            Ok(None) => {
                assert_eq!(
                    r.position() as usize,
                    data.len(),
                    "a clean end is at the end"
                );
                break;
            }
            Err(FrameError::TooLarge { len, max }) => {
                assert!(len > max as u64);
                break;
            }
            Err(FrameError::BadLength | FrameError::Io(_)) => break,
        }
    }
    assert!(frames <= data.len());
}

fn check_framing(frame: &Bytes) {
    let mut wire = Vec::with_capacity(frame.len() + 10);
    block_on(write_frame(&mut Cursor::new(&mut wire), frame)).expect("writing to memory");
    let back = block_on(read_frame(&mut Cursor::new(&wire), MAX_FRAME_BYTES))
        .expect("a frame we wrote reads back")
        .expect("not the end");
    assert_eq!(&back, frame);
}

fn check_message(frame: Bytes) {
    let len = frame.len();
    let Ok((msg, rejected)) = Message::decode(frame) else {
        return;
    };
    // Every entry, block and presence costs at least two bytes of protobuf.
    let parts = msg.wants.len()
        + msg.blocks.len()
        + msg.presences.len()
        + rejected.bad_cids
        + rejected.bad_blocks;
    assert!(parts * 2 <= len, "{parts} parts from {len} bytes");

    let frames = msg.encode_frames(Version::V1_2_0, MAX_FRAME_BYTES);
    assert!(!frames.is_empty());
    let mut again = Message::default();
    for f in &frames {
        let (m, rej) = Message::decode(f.clone()).expect("our own encoding decodes");
        assert_eq!(
            rej.bad_cids + rej.bad_blocks,
            0,
            "our own encoding is clean"
        );
        again.full |= m.full;
        again.wants.extend(m.wants);
        again.blocks.extend(m.blocks);
        again.presences.extend(m.presences);
    }
    assert_eq!(again, msg, "decode -> encode -> decode");

    // The segmented encoder: the same bytes, in pieces.
    let mut seg_msg = Message::default();
    for seg in msg.encode_segmented(Version::V1_2_0, MAX_FRAME_BYTES) {
        let joined: Vec<u8> = seg.iter().flat_map(|b| b.iter().copied()).collect();
        let body = block_on(read_frame(&mut Cursor::new(&joined), MAX_FRAME_BYTES))
            .expect("a segmented frame is a valid frame")
            .expect("not empty");
        let (m, rej) = Message::decode(body).expect("segmented encoding decodes");
        assert_eq!(rej.bad_cids + rej.bad_blocks, 0);
        seg_msg.full |= m.full;
        seg_msg.wants.extend(m.wants);
        seg_msg.blocks.extend(m.blocks);
        seg_msg.presences.extend(m.presences);
    }
    assert_eq!(seg_msg, msg, "segmented encoding round trip");

    // Older versions drop what they cannot carry, but never invent anything. Looked up
    // in sets: a pairwise search made this target quadratic, and a 15 KB input of
    // hundreds of entries spent milliseconds in the check instead of in the code.
    let wants: HashSet<_> = msg
        .wants
        .iter()
        .map(|o| (o.cid, o.priority, o.cancel, o.kind))
        .collect();
    let blocks: HashSet<_> = msg.blocks.iter().map(|b| (b.cid, &b.data)).collect();
    for v in [Version::V1_1_0, Version::V1_0_0] {
        for f in msg.encode_frames(v, MAX_FRAME_BYTES) {
            let (m, _) = Message::decode(f).expect("our own encoding decodes");
            assert!(m.wants.iter().all(|w| {
                !w.send_dont_have && wants.contains(&(w.cid, w.priority, w.cancel, w.kind))
            }));
            assert!(m.blocks.iter().all(|b| blocks.contains(&(b.cid, &b.data))));
            assert!(m.presences.is_empty());
        }
    }
}
