//! Watch-channel message parsing on the proxy side: the operator's NDJSON byte stream,
//! cut into chunks wherever the network cut it, through `LineBuffer` (the line bound),
//! `parse_line` (the `WatchEvent` contract) and `to_specs` (the backend addresses).
//!
//! The first input byte picks the chunk size, the rest is the stream. Checked besides
//! "no panic": lines are the same however the stream is chunked, hold no newline and
//! respect the bound; a parsed event re-serialises to a line that parses to the same
//! event (round trip); specs from a snapshot are no more than its backends, with no
//! port 0.

#![no_main]

use kitsune_common::watch::{MAX_LINE_BYTES, WatchEvent};
use kitsune_proxy::sources::watch::{LineBuffer, parse_line, to_specs};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&cut, stream)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(cut).max(1);
    let mut chunked = LineBuffer::default();
    let mut lines = Vec::new();
    for part in stream.chunks(chunk) {
        match chunked.push(part) {
            Ok(l) => lines.extend(l),
            Err(_) => return,
        }
    }
    let whole = LineBuffer::default()
        .push(stream)
        .expect("chunked was fine");
    assert_eq!(lines, whole, "chunking does not change the lines");
    for line in &lines {
        assert!(line.len() <= MAX_LINE_BYTES && !line.contains(&b'\n'));
        let Ok(event) = parse_line(line) else {
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
