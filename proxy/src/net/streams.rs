//! Bitswap stream I/O. Inbound: every stream is read frame by frame and each decoded
//! message goes to the engine. Outbound: one writer task per peer owns one long-lived
//! stream and batches whatever is queued (the original opened a stream per message).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::AsyncWriteExt;
use futures::io::BufReader;
use libp2p::{PeerId, Stream};
use libp2p_stream::{Control, OpenStreamError};
use tokio::sync::mpsc;

use crate::bitswap::codec::{FrameError, read_frame};
use crate::bitswap::{MAX_FRAME_BYTES, Message, Version};
use crate::metrics::Metrics;

/// A decoded inbound message.
#[derive(Debug)]
pub struct Inbound {
    pub peer: PeerId,
    pub msg: Message,
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
    max_per_peer: usize,
    tx: mpsc::Sender<Inbound>,
    metrics: Metrics,
}

impl Readers {
    pub fn new(max_per_peer: usize, tx: mpsc::Sender<Inbound>, metrics: Metrics) -> Self {
        Self {
            open: Arc::default(),
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

async fn read_stream(
    peer: PeerId,
    stream: Stream,
    tx: mpsc::Sender<Inbound>,
    metrics: Metrics,
    _guard: StreamGuard,
) {
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    loop {
        match read_frame(&mut r, MAX_FRAME_BYTES).await {
            Ok(Some(frame)) => match Message::decode(frame) {
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
                    if msg.is_empty() {
                        continue;
                    }
                    // Waiting here is the backpressure on a peer that sends faster
                    // than the engine routes.
                    if tx.send(Inbound { peer, msg }).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    metrics.reject("malformed_message");
                    tracing::warn!(%peer, error = %e, "malformed bitswap message; closing the stream");
                    return;
                }
            },
            Ok(None) => return,
            Err(FrameError::TooLarge { len, max }) => {
                metrics.reject("oversized_frame");
                tracing::warn!(%peer, len, max, "oversized bitswap frame; closing the stream");
                return;
            }
            Err(FrameError::BadLength) => {
                metrics.reject("malformed_frame");
                tracing::warn!(%peer, "malformed bitswap frame; closing the stream");
                return;
            }
            Err(FrameError::Io(e)) => {
                tracing::debug!(%peer, error = %e, "bitswap stream ended");
                return;
            }
        }
    }
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
    pub fn spawn(peer: PeerId, control: Control, metrics: Metrics) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        tokio::spawn(write_loop(peer, control, rx, queued_bytes.clone(), metrics));
        Self { tx, queued_bytes }
    }

    /// Queues `msg` unless that would put more than `max_bytes` of blocks in the queue.
    pub fn send(&self, msg: Message, max_bytes: usize) -> Result<(), QueueError> {
        let size: usize = msg.blocks.iter().map(|b| b.data.len()).sum();
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

async fn write_loop(
    peer: PeerId,
    mut control: Control,
    mut rx: mpsc::Receiver<(Message, usize)>,
    queued_bytes: Arc<AtomicUsize>,
    metrics: Metrics,
) {
    let mut out: Option<(Stream, Version)> = None;
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
        let mut sent = false;
        for _attempt in 0..2 {
            if out.is_none() {
                match open(&mut control, peer).await {
                    Ok(s) => out = Some(s),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "cannot open a bitswap stream");
                        break;
                    }
                }
            }
            let (stream, version) = out.as_mut().expect("just opened");
            let frames = msg.encode_segmented(*version, TARGET_FRAME_BYTES);
            let n = frames.len();
            let write = async {
                for segment in frames.iter().flatten() {
                    stream.write_all(segment).await?;
                }
                stream.flush().await
            };
            match tokio::time::timeout(WRITE_TIMEOUT, write).await {
                Ok(Ok(())) => {
                    metrics.messages_sent.inc_by(n as u64);
                    sent = true;
                    break;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "bitswap write failed; reopening"),
                Err(_) => tracing::debug!(%peer, "bitswap write timed out; reopening"),
            }
            out = None;
        }
        if !sent {
            metrics.reject("undeliverable_message");
        }
        queued_bytes.fetch_sub(size, Ordering::Relaxed);
    }
    if let Some((mut s, _)) = out {
        let _ = s.close().await;
    }
}

/// Opens a bitswap stream, newest version first.
async fn open(control: &mut Control, peer: PeerId) -> Result<(Stream, Version), OpenStreamError> {
    let mut last = None;
    for v in Version::ALL {
        match control.open_stream(peer, v.protocol()).await {
            Ok(s) => return Ok((s, v)),
            Err(OpenStreamError::UnsupportedProtocol(p)) => {
                last = Some(OpenStreamError::UnsupportedProtocol(p))
            }
            Err(e) => return Err(e),
        }
    }
    Err(last.expect("at least one version tried"))
}
