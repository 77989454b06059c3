//! Watch-channel message parsing on the proxy side: the operator's NDJSON byte stream,
//! cut into chunks wherever the network cut it, through `line_codec` (the line bound),
//! `parse_line` (the `WatchEvent` contract) and `to_specs` (the backend addresses).
//!
//! The first input byte picks the chunk size, the rest is the stream. Checked besides
//! "no panic": lines are the same however the stream is chunked, hold no newline and
//! respect the bound; a parsed event re-serialises to a line that parses to the same
//! event (round trip); specs from a snapshot are no more than its backends, with no
//! port 0.

#![no_main]

use bytes::BytesMut;
use kitsune_common::watch::{MAX_LINE_BYTES, WatchEvent};
use kitsune_proxy::sources::watch::{line_codec, parse_line, to_specs};
use libfuzzer_sys::fuzz_target;
use tokio_util::codec::Decoder;

/// The complete lines of `stream` fed `chunk` bytes at a time; `None` on a framing
/// error (a line over the bound, or not UTF-8).
fn lines(stream: &[u8], chunk: usize) -> Option<Vec<String>> {
    let mut codec = line_codec();
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for part in stream.chunks(chunk) {
        buf.extend_from_slice(part);
        while let Some(line) = codec.decode(&mut buf).ok()? {
            out.push(line);
        }
    }
    Some(out)
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let Some(chunked) = lines(stream, usize::from(cut).max(1)) else {
        return;
    };
    let whole = lines(stream, stream.len().max(1)).expect("chunked was fine");
    assert_eq!(chunked, whole, "chunking does not change the lines");
    for line in &chunked {
        assert!(line.len() <= MAX_LINE_BYTES && !line.contains('\n'));
        let Ok(event) = parse_line(line.as_bytes()) else {
            continue;
        };
        let text = serde_json::to_string(&event).expect("an event serialises");
        assert_eq!(parse_line(text.as_bytes()).expect("re-parses"), event);
        if let WatchEvent::Snapshot(snap) = &event
            && let Ok(specs) = to_specs(snap)
        {
            assert!(specs.len() <= snap.backends.len());
            assert!(specs.iter().all(|s| s.rpc_port != 0));
        }
    }
});
