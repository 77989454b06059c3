//! Bitswap stream I/O. Inbound: every stream is read frame by frame and each decoded
//! message goes to the engine. Outbound: one writer task per peer owns one long-lived
//! stream and batches whatever is queued (the original opened a stream per message).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::outbound::{Control, OpenError};
use bytes::Bytes;
use futures::AsyncWriteExt;
use futures::io::BufReader;
use libp2p::{PeerId, Stream};
use prometheus_client::metrics::gauge::Gauge;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};

use crate::bitswap::codec::{FrameError, Room, read_body, read_len};
use crate::bitswap::{MAX_FRAME_BYTES, Message, Version};
use crate::metrics::Metrics;

/// A decoded inbound message.
#[derive(Debug)]
pub struct Inbound {
    pub peer: PeerId,
    pub msg: Message,
    /// This message's share of the decoded-message budget, given back when dropped.
    pub _budget: tokio::sync::OwnedSemaphorePermit,
}

/// Decoded messages waiting for the engine, in estimated bytes, over all peers. The
/// channel bounds them by count, but one 4 MiB frame decodes to ~100k wants (~10 MB
/// in memory): a reader waits here, holding its peer back, until the engine catches up.
pub const DECODED_BUDGET_BYTES: usize = 64 * 1024 * 1024;

/// What a decoded message costs in memory, roughly: its block bytes plus a fixed
/// cost per want or presence (a CID and bookkeeping).
pub fn cost(msg: &Message) -> usize {
    msg.blocks.iter().map(|b| b.data.len() + 128).sum::<usize>()
        + 96 * (msg.wants.len() + msg.presences.len())
}

/// Outgoing frames are kept to half the limit so a 2 MiB block always fits alone.
const TARGET_FRAME_BYTES: usize = MAX_FRAME_BYTES / 2;
/// A write that makes no progress for this long fails (kubo uses 10 s to 2 min).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages merged into one write.
const MAX_BATCH: usize = 64;

/// Starts a reader task for each admitted inbound stream, at most `max_per_peer` at
/// once per peer (a peer past that has its new streams reset).
pub struct Readers {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
    budget: Arc<tokio::sync::Semaphore>,
    /// Client side only: backends are ours, and their answers are bounded by the wants
    /// in flight at each.
    frame_bounds: Option<FrameBounds>,
    max_per_peer: usize,
    tx: mpsc::Sender<Inbound>,
    metrics: Metrics,
}

impl Readers {
    pub fn new(
        max_per_peer: usize,
        frame_bounds: Option<FrameBounds>,
        tx: mpsc::Sender<Inbound>,
        metrics: Metrics,
    ) -> Self {
        Self {
            open: Arc::default(),
            budget: Arc::new(tokio::sync::Semaphore::new(DECODED_BUDGET_BYTES)),
            frame_bounds,
            max_per_peer,
            tx,
            metrics,
        }
    }

    pub fn spawn(&self, peer: PeerId, stream: Stream) {
        {
            let mut open = self.open.lock().expect("not poisoned");
            let n = open.entry(peer).or_default();
            if *n >= self.max_per_peer {
                self.metrics.reject("too_many_streams");
                tracing::debug!(%peer, "too many inbound bitswap streams; resetting one");
                return;
            }
            *n += 1;
        }
        let guard = StreamGuard {
            peer,
            open: self.open.clone(),
        };
        tokio::spawn(read_stream(
            peer,
            stream,
            self.tx.clone(),
            self.budget.clone(),
            self.frame_bounds.clone(),
            self.metrics.clone(),
            guard,
        ));
    }
}

struct StreamGuard {
    peer: PeerId,
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
}

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut open = self.open.lock().expect("not poisoned");
        if let Some(n) = open.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// Bounds on client frame bodies still arriving. Without them a peer that sends most
/// of a large frame and stalls holds that memory for as long as its connection lives,
/// and connections x streams x 4 MiB is far more memory than any machine has.
#[derive(Clone, Debug)]
pub struct FrameBounds {
    /// Bytes past each frame's first chunk, over all client streams
    /// (`--max-client-frame-bytes`). A reader waits for room, so flow control holds
    /// its peer back. The first chunk is free so that wants, which fit in it, never wait
    /// behind someone's large frame.
    room: Arc<Semaphore>,
    /// How long a frame body may take from its first byte, waits for room included
    /// (`--frame-timeout`): a stalled frame gives its room back by then.
    timeout: Duration,
    /// Room in use, for `/metrics`.
    in_use: Gauge,
}

impl FrameBounds {
    pub fn new(max_bytes: usize, timeout: Duration, in_use: Gauge) -> Self {
        Self {
            room: Arc::new(Semaphore::new(max_bytes)),
            timeout,
            in_use,
        }
    }

    /// Bytes of room free now.
    pub fn available(&self) -> usize {
        self.room.available_permits()
    }
}

/// One frame's share of the room, given back when dropped.
struct FrameRoom {
    room: Arc<Semaphore>,
    free: usize,
    held: Option<OwnedSemaphorePermit>,
    in_use: Gauge,
}

impl Drop for FrameRoom {
    fn drop(&mut self) {
        if let Some(held) = &self.held {
            self.in_use.dec_by(held.num_permits() as i64);
        }
    }
}

impl Room for FrameRoom {
    async fn reserve(&mut self, n: usize) -> std::io::Result<()> {
        let taken = n.min(self.free);
        self.free -= taken;
        let need = n - taken;
        if need == 0 {
            return Ok(());
        }
        // `need` is at most one read chunk, far below u32::MAX.
        let permit = self
            .room
            .clone()
            .acquire_many_owned(need as u32)
            .await
            .map_err(|_| std::io::Error::other("frame room closed"))?;
        self.in_use.inc_by(need as i64);
        match &mut self.held {
            Some(held) => held.merge(permit),
            None => self.held = Some(permit),
        }
        Ok(())
    }
}

enum ReadError {
    Frame(FrameError),
    /// The body did not arrive within the frame timeout.
    Slow {
        len: usize,
    },
}

/// Reads the next frame; from a client, within `bounds`. The room it returns is held
/// until the frame has been decoded and its cost taken from the decoded budget.
async fn next_frame<R: futures::AsyncRead + Unpin>(
    r: &mut R,
    bounds: Option<&FrameBounds>,
) -> Result<Option<(Bytes, Option<FrameRoom>)>, ReadError> {
    let Some(len) = read_len(r, MAX_FRAME_BYTES)
        .await
        .map_err(ReadError::Frame)?
    else {
        return Ok(None);
    };
    let Some(bounds) = bounds else {
        let body = read_body(r, len, &mut crate::bitswap::codec::Unlimited).await;
        return body.map(|b| Some((b, None))).map_err(ReadError::Frame);
    };
    let mut room = FrameRoom {
        room: bounds.room.clone(),
        free: crate::bitswap::codec::READ_CHUNK,
        held: None,
        in_use: bounds.in_use.clone(),
    };
    match tokio::time::timeout(bounds.timeout, read_body(r, len, &mut room)).await {
        Ok(Ok(body)) => Ok(Some((body, Some(room)))),
        Ok(Err(e)) => Err(ReadError::Frame(e)),
        Err(_) => Err(ReadError::Slow { len }),
    }
}

async fn read_stream(
    peer: PeerId,
    stream: Stream,
    tx: mpsc::Sender<Inbound>,
    budget: Arc<tokio::sync::Semaphore>,
    frame_bounds: Option<FrameBounds>,
    metrics: Metrics,
    _guard: StreamGuard,
) {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    loop {
        let (frame, room) = match next_frame(&mut r, frame_bounds.as_ref()).await {
            Ok(Some(read)) => read,
            Ok(None) => return,
            Err(ReadError::Slow { len }) => {
                metrics.reject("slow_frame");
                tracing::warn!(%peer, len, "bitswap frame not received in time; closing the stream");
                return;
            }
            Err(ReadError::Frame(FrameError::TooLarge { len, max })) => {
                metrics.reject("oversized_frame");
                tracing::warn!(%peer, len, max, "oversized bitswap frame; closing the stream");
                return;
            }
            Err(ReadError::Frame(FrameError::BadLength)) => {
                metrics.reject("malformed_frame");
                tracing::warn!(%peer, "malformed bitswap frame; closing the stream");
                return;
            }
            Err(ReadError::Frame(FrameError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "bitswap stream ended");
                return;
            }
        };
        let msg = match Message::decode(frame) {
            Ok((msg, rejected)) => {
                metrics.messages_recv.inc();
                if rejected.bad_cids > 0 {
                    metrics
                        .rejected
                        .get_or_create(&crate::metrics::ReasonLabels { reason: "bad_cid" })
                        .inc_by(rejected.bad_cids as u64);
                }
                if rejected.bad_blocks > 0 {
                    metrics
                        .rejected
                        .get_or_create(&crate::metrics::ReasonLabels {
                            reason: "bad_block",
                        })
                        .inc_by(rejected.bad_blocks as u64);
                }
                msg
            }
            Err(e) => {
                metrics.reject("malformed_message");
                tracing::warn!(%peer, error = %e, "malformed bitswap message; closing the stream");
                return;
            }
        };
        if msg.is_empty() {
            continue;
        }
        // Waiting here (for budget, then for room in the channel) is the
        // backpressure on a peer that sends faster than the engine routes.
        let n = cost(&msg).min(DECODED_BUDGET_BYTES) as u32;
        let Ok(permit) = budget.clone().acquire_many_owned(n).await else {
            return;
        };
        // The decoded message (which may share the frame's bytes) is now counted
        // in the decoded budget.
        drop(room);
        let inbound = Inbound {
            peer,
            msg,
            _budget: permit,
        };
        if tx.send(inbound).await.is_err() {
            return;
        }
    }
}

/// Blocks a writer could not deliver, handed back so the engine can fetch them again
/// for a client that still wants them (the router cleared those wants on sending).
#[derive(Debug)]
pub struct Undelivered {
    pub peer: PeerId,
    pub cids: Vec<cid::Cid>,
}

/// The sending side of one peer's writer task.
pub struct Writer {
    tx: mpsc::Sender<(Message, usize)>,
    /// Block bytes queued and not yet written.
    pub queued_bytes: Arc<AtomicUsize>,
}

/// Why a message was not queued.
#[derive(Debug, PartialEq, Eq)]
pub enum QueueError {
    /// Over the byte bound: the peer is not keeping up.
    Full,
    /// The writer task has ended (the peer is unreachable).
    Closed,
}

impl Writer {
    /// `stream_budget`: [`STREAM_BUDGET`] for clients, [`ONE_STREAM`] for backends.
    pub fn spawn(
        peer: PeerId,
        stream_budget: usize,
        control: Control,
        metrics: Metrics,
        undelivered: mpsc::Sender<Undelivered>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let task = WriteTask {
            peer,
            stream_budget,
            control,
            metrics,
            undelivered,
            queued_bytes: queued_bytes.clone(),
            out: None,
            next: None,
        };
        tokio::spawn(task.run(rx));
        Self { tx, queued_bytes }
    }

    /// Queues `msg` unless that would put more than `max_bytes` (blocks, and wants and
    /// presences at their estimated cost) in the queue.
    pub fn send(&self, msg: Message, max_bytes: usize) -> Result<(), QueueError> {
        let size = cost(&msg);
        let before = self.queued_bytes.fetch_add(size, Ordering::Relaxed);
        if before > 0 && before + size > max_bytes {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            return Err(QueueError::Full);
        }
        self.tx.try_send((msg, size)).map_err(|e| {
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            match e {
                mpsc::error::TrySendError::Full(_) => QueueError::Full,
                mpsc::error::TrySendError::Closed(_) => QueueError::Closed,
            }
        })
    }
}

/// Bytes written on one outbound stream to a client before the next frame goes on a
/// fresh one. mplex has no flow control: js-libp2p resets a stream whose unread buffer
/// passes 4 MiB, and whatever it held is lost, so a busy js-ipfs reader would lose
/// blocks on one long-lived stream. Below that bound on every stream, nothing is lost
/// whatever the muxer. The next stream is opened ahead, so a rotation costs no round
/// trip.
pub const STREAM_BUDGET: usize = 3 * 1024 * 1024;

/// Backends get one stream for as long as it works. kubo reads each stream in its own
/// goroutine, so across a rotation a CANCEL on the old stream can be applied after a
/// later WANT for the same CID on the new one, and that want is silently dropped. kubo
/// is reached over yamux (flow-controlled), so mplex's reason to rotate does not apply.
pub const ONE_STREAM: usize = usize::MAX;

struct OutStream {
    stream: Stream,
    version: Version,
    written: usize,
}

type Opening = tokio::task::JoinHandle<Result<(Stream, Version), OpenError>>;

struct WriteTask {
    peer: PeerId,
    stream_budget: usize,
    control: Control,
    metrics: Metrics,
    undelivered: mpsc::Sender<Undelivered>,
    queued_bytes: Arc<AtomicUsize>,
    out: Option<OutStream>,
    /// The stream opened ahead for the next rotation.
    next: Option<Opening>,
}

impl Drop for WriteTask {
    fn drop(&mut self) {
        if let Some(next) = self.next.take() {
            next.abort();
        }
    }
}

impl WriteTask {
    async fn run(mut self, mut rx: mpsc::Receiver<(Message, usize)>) {
        while let Some((first, mut size)) = rx.recv().await {
            let mut msg = first;
            let mut merged = 1;
            while merged < MAX_BATCH {
                let Ok((next, n)) = rx.try_recv() else { break };
                msg.wants.extend(next.wants);
                msg.blocks.extend(next.blocks);
                msg.presences.extend(next.presences);
                size += n;
                merged += 1;
            }
            let units = split(msg, TARGET_FRAME_BYTES);
            if let Err(first_unsent) = self.deliver(&units).await {
                self.metrics.reject("undeliverable_message");
                let cids: Vec<_> = units[first_unsent..]
                    .iter()
                    .flat_map(|u| u.blocks.iter().map(|b| b.cid))
                    .collect();
                if !cids.is_empty() {
                    let back = Undelivered {
                        peer: self.peer,
                        cids,
                    };
                    // Bounded: if the engine is that far behind, the peer's own
                    // rebroadcast is the remaining recovery.
                    let _ = self.undelivered.try_send(back);
                }
            }
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
        }
        if let Some(mut o) = self.out.take() {
            let _ = o.stream.close().await;
        }
    }

    /// Writes `units` in order, each as its own frame(s), rotating streams at the
    /// budget. A failed write gets one more try on a new stream; on a second failure
    /// the index of the first unit not written is returned (units already flushed are
    /// not sent twice).
    async fn deliver(&mut self, units: &[Message]) -> Result<(), usize> {
        let mut done = 0;
        let mut failures = 0;
        while done < units.len() {
            if let Err(e) = self.ready().await {
                tracing::debug!(peer = %self.peer, error = %e, "cannot open a bitswap stream");
                return Err(done);
            }
            let out = self.out.as_mut().expect("ready");
            let frames = units[done].encode_segmented(out.version, TARGET_FRAME_BYTES);
            let len: usize = frames.iter().flatten().map(Bytes::len).sum();
            if out.written > 0 && out.written.saturating_add(len) > self.stream_budget {
                self.rotate();
                continue;
            }
            if out.written.saturating_add(len) > self.stream_budget / 2 && self.next.is_none() {
                self.open_ahead();
            }
            let out = self.out.as_mut().expect("ready");
            let write = async {
                for segment in frames.iter().flatten() {
                    out.stream.write_all(segment).await?;
                }
                out.stream.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {
                    out.written += len;
                    self.metrics.messages_sent.inc_by(frames.len() as u64);
                    done += 1;
                    continue;
                }
                Ok(Err(e)) => {
                    tracing::debug!(peer = %self.peer, error = %e, "bitswap write failed; reopening")
                }
                Err(_) => tracing::debug!(peer = %self.peer, "bitswap write timed out; reopening"),
            }
            self.out = None;
            failures += 1;
            if failures >= 2 {
                return Err(done);
            }
        }
        Ok(())
    }

    /// Makes sure there is a current stream: the one opened ahead, or a new one.
    async fn ready(&mut self) -> Result<(), OpenError> {
        if self.out.is_some() {
            return Ok(());
        }
        let opened = match self.next.take() {
            Some(ahead) => match ahead.await {
                Ok(Ok(s)) => Ok(s),
                // It failed while unused: one fresh try before giving up.
                _ => self.control.open(self.peer).await,
            },
            None => self.control.open(self.peer).await,
        };
        let (stream, version) = opened?;
        self.out = Some(OutStream {
            stream,
            version,
            written: 0,
        });
        Ok(())
    }

    fn open_ahead(&mut self) {
        let (control, peer) = (self.control.clone(), self.peer);
        self.next = Some(tokio::spawn(async move { control.open(peer).await }));
    }

    /// Closes the current stream (in the background: the reader may be slow) so the
    /// next write takes the stream opened ahead.
    fn rotate(&mut self) {
        if let Some(mut old) = self.out.take() {
            tokio::spawn(async move {
                let _ = tokio::time::timeout(WRITE_TIMEOUT, old.stream.close()).await;
            });
        }
        if self.next.is_none() {
            self.open_ahead();
        }
    }
}

/// Wants plus presences in one unit.
const HEAD_ENTRIES: usize = 16 * 1024;

/// Splits a batch into units of at most about `max` bytes of blocks: first the wants
/// and presences, then the blocks in order. Each unit is encoded on its own, for the
/// version of the stream it goes on, and a failure is reported by unit.
fn split(msg: Message, max: usize) -> Vec<Message> {
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
    use super::*;
    use crate::bitswap::{Block, WantEntry, WantKind};
    use multihash_codetable::{Code, MultihashDigest};

    use crate::bitswap::codec::{READ_CHUNK, write_frame};
    use futures::io::Cursor;

    fn frame(len: usize) -> Vec<u8> {
        let mut wire = Vec::new();
        futures::executor::block_on(write_frame(&mut Cursor::new(&mut wire), &vec![1; len]))
            .unwrap();
        wire
    }

    async fn read(r: &mut Cursor<Vec<u8>>, bounds: &FrameBounds) -> (Bytes, Option<FrameRoom>) {
        match next_frame(r, Some(bounds)).await {
            Ok(Some(read)) => read,
            _ => panic!("a whole frame"),
        }
    }

    #[tokio::test]
    async fn small_frames_need_no_room_and_large_ones_hold_it_until_dropped() {
        let in_use = Gauge::default();
        let bounds = FrameBounds::new(READ_CHUNK, Duration::from_secs(60), in_use.clone());
        let mut wire = frame(READ_CHUNK);
        wire.extend(frame(2 * READ_CHUNK));
        let mut r = Cursor::new(wire);
        let (small, room) = read(&mut r, &bounds).await;
        assert_eq!(small.len(), READ_CHUNK);
        assert_eq!(bounds.available(), READ_CHUNK, "a first chunk is free");
        drop(room);
        let (big, room) = read(&mut r, &bounds).await;
        assert_eq!(big.len(), 2 * READ_CHUNK);
        assert_eq!(bounds.available(), 0, "held while the frame is decoded");
        assert_eq!(in_use.get(), READ_CHUNK as i64);
        drop(room);
        assert_eq!(bounds.available(), READ_CHUNK);
        assert_eq!(in_use.get(), 0);
        // Backends are not bounded.
        let mut r = Cursor::new(frame(4 * READ_CHUNK));
        let Ok(Some((body, None))) = next_frame(&mut r, None).await else {
            panic!("a whole frame, no room");
        };
        assert_eq!(body.len(), 4 * READ_CHUNK);
    }

    #[tokio::test]
    async fn a_frame_waiting_for_room_is_cut_at_the_timeout() {
        let bounds = FrameBounds::new(READ_CHUNK, Duration::from_millis(200), Gauge::default());
        let (_, holder) = read(&mut Cursor::new(frame(2 * READ_CHUNK)), &bounds).await;
        assert_eq!(bounds.available(), 0);
        let mut r = Cursor::new(frame(3 * READ_CHUNK));
        let got = next_frame(&mut r, Some(&bounds)).await;
        assert!(matches!(got, Err(ReadError::Slow { len }) if len == 3 * READ_CHUNK));
        drop(holder);
        assert_eq!(bounds.available(), READ_CHUNK);
    }

    /// Gives what `wire` holds, then nothing, forever: a peer that stalls.
    struct Stalls {
        wire: Cursor<Vec<u8>>,
    }

    impl futures::AsyncRead for Stalls {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            cx: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<std::io::Result<usize>> {
            match std::pin::Pin::new(&mut self.wire).poll_read(cx, buf) {
                std::task::Poll::Ready(Ok(0)) => std::task::Poll::Pending,
                other => other,
            }
        }
    }

    #[tokio::test]
    async fn a_stalled_frame_is_cut_at_the_timeout_and_gives_its_room_back() {
        let bounds = FrameBounds::new(4 * READ_CHUNK, Duration::from_millis(200), Gauge::default());
        let mut wire = frame(4 * READ_CHUNK);
        wire.truncate(3 * READ_CHUNK);
        let mut r = Stalls {
            wire: Cursor::new(wire),
        };
        let got = next_frame(&mut r, Some(&bounds)).await;
        assert!(matches!(got, Err(ReadError::Slow { .. })));
        assert_eq!(bounds.available(), 4 * READ_CHUNK);
    }

    fn block(len: usize, seed: u8) -> Block {
        let data = bytes::Bytes::from(vec![seed; len]);
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
            .map(|i| crate::bitswap::Presence {
                cid: block(1, (i % 251) as u8).cid,
                kind: crate::bitswap::PresenceKind::DontHave,
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
