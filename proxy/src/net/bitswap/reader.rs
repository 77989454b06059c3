//! Inbound bitswap streams: which are admitted (a bound per peer), and the task that
//! reads each one frame by frame and hands every decoded message to the engine, within
//! a budget on decoded messages waiting.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures::AsyncRead;
use futures::io::BufReader;
use libp2p::{PeerId, Stream};
use tokio::sync::{Semaphore, mpsc};

use super::frame_bounds::{FrameBounds, ReadError, next_frame};
use super::idle_buf::IdleBuf;
use crate::bitswap::Message;
use crate::bitswap::codec::FrameError;
use crate::bitswap::size::cost;
use crate::metrics::{Metrics, ReasonLabels};

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

/// A client stream's read buffer while it is busy: room for a few messages of wants;
/// larger frames are read past it.
const CLIENT_READ_BUFFER: usize = 8 * 1024;

/// A backend stream's read buffer: its message's head and small messages. Block data
/// is read past it straight into the block's own buffer (a buffer as large as the
/// reads copied most of every block twice, and kubo opens a stream per message, so it
/// was also allocated and zeroed per block).
const BACKEND_READ_BUFFER: usize = 8 * 1024;

/// Starts a reader task for each admitted inbound stream, at most `max_per_peer` at
/// once per peer (a peer past that has its new streams reset).
pub struct Readers {
    open: Arc<Mutex<HashMap<PeerId, usize>>>,
    budget: Arc<Semaphore>,
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
            budget: Arc::new(Semaphore::new(DECODED_BUDGET_BYTES)),
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

async fn read_stream(
    peer: PeerId,
    stream: Stream,
    tx: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    frame_bounds: Option<FrameBounds>,
    metrics: Metrics,
    guard: StreamGuard,
) {
    // Clients' streams are many and mostly idle: their buffer comes and goes. The
    // backends' are few and busy: theirs stays.
    if frame_bounds.is_some() {
        let r = IdleBuf::new(CLIENT_READ_BUFFER, stream);
        read_frames(peer, r, tx, budget, frame_bounds, metrics, guard).await;
    } else {
        let r = BufReader::with_capacity(BACKEND_READ_BUFFER, stream);
        read_frames(peer, r, tx, budget, frame_bounds, metrics, guard).await;
    }
}

async fn read_frames<R: AsyncRead + Unpin>(
    peer: PeerId,
    mut r: R,
    tx: mpsc::Sender<Inbound>,
    budget: Arc<Semaphore>,
    frame_bounds: Option<FrameBounds>,
    metrics: Metrics,
    _guard: StreamGuard,
) {
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
                        .get_or_create(&ReasonLabels { reason: "bad_cid" })
                        .inc_by(rejected.bad_cids as u64);
                }
                if rejected.bad_blocks > 0 {
                    metrics
                        .rejected
                        .get_or_create(&ReasonLabels {
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
