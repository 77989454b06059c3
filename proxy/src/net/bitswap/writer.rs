//! Outbound bitswap: one writer task per peer owns one long-lived stream (the original
//! opened a stream per message), batches whatever is queued, splits each batch into
//! units and writes them, rotating streams at a byte budget for clients.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::AsyncWriteExt;
use libp2p::{PeerId, Stream};
use tokio::sync::mpsc;

use super::coalesce::write_segments;
use super::control::{Control, OpenError};
use crate::bitswap::size::{TARGET_FRAME_BYTES, cost, split};
use crate::bitswap::{Message, Version};
use crate::metrics::Metrics;

/// A write that makes no progress for this long fails (kubo uses 10 s to 2 min).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// Messages merged into one write.
const MAX_BATCH: usize = 64;

/// What a writer could not deliver, handed back to the engine: blocks for a client
/// that still wants them (the router cleared those wants on sending), and wants for a
/// backend that never saw them (the router believes they are pending there, and would
/// otherwise wait for its timeout, again and again while the backend answers others).
#[derive(Debug)]
pub struct Undelivered {
    pub peer: PeerId,
    /// Blocks not delivered.
    pub cids: Vec<cid::Cid>,
    /// Wants (not cancels) not delivered.
    pub wants: Vec<cid::Cid>,
}

/// A message queued with its cost. Boxed: a channel allocates its slots 32 at a time
/// from the start, and every client that was ever sent a block keeps its writer, so
/// slots of a pointer rather than of a message save ~2.4 KiB per client.
type Queued = (Box<Message>, usize);

/// The sending side of one peer's writer task.
pub struct Writer {
    tx: mpsc::Sender<Queued>,
    /// Block bytes queued and not yet written.
    pub queued_bytes: Arc<AtomicUsize>,
    /// Set while the core holds wants of this peer until its queue has room: the
    /// task then sends the peer's ID on the room channel after its next write (once;
    /// the engine sets it again if wants still wait).
    pub wants_room: Arc<AtomicBool>,
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
        room: Option<mpsc::Sender<PeerId>>,
    ) -> Self {
        let (tx, rx) = mpsc::channel(4096);
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let wants_room = Arc::new(AtomicBool::new(false));
        let task = WriteTask {
            peer,
            stream_budget,
            control,
            metrics,
            undelivered,
            queued_bytes: queued_bytes.clone(),
            wants_room: wants_room.clone(),
            room,
            out: None,
            next: None,
        };
        tokio::spawn(task.run(rx));
        Self {
            tx,
            queued_bytes,
            wants_room,
        }
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
        self.tx.try_send((Box::new(msg), size)).map_err(|e| {
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
    wants_room: Arc<AtomicBool>,
    /// Where to say the queue has drained (clients only).
    room: Option<mpsc::Sender<PeerId>>,
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
    async fn run(mut self, mut rx: mpsc::Receiver<Queued>) {
        while let Some((first, mut size)) = rx.recv().await {
            let mut msg = *first;
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
                let unsent = &units[first_unsent..];
                let cids: Vec<_> = unsent
                    .iter()
                    .flat_map(|u| u.blocks.iter().map(|b| b.cid))
                    .collect();
                let wants: Vec<_> = unsent
                    .iter()
                    .flat_map(|u| u.wants.iter().filter(|w| !w.cancel).map(|w| w.cid))
                    .collect();
                if !cids.is_empty() || !wants.is_empty() {
                    let back = Undelivered {
                        peer: self.peer,
                        cids,
                        wants,
                    };
                    // Bounded: if the engine is that far behind, the peer's own
                    // rebroadcast is the remaining recovery.
                    let _ = self.undelivered.try_send(back);
                }
            }
            self.queued_bytes.fetch_sub(size, Ordering::Relaxed);
            if let Some(room) = &self.room
                && self.wants_room.load(Ordering::Relaxed)
                && self.wants_room.swap(false, Ordering::AcqRel)
            {
                // Bounded; a signal lost to a full channel is made up by the tick.
                let _ = room.try_send(self.peer);
            }
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
                write_segments(&mut out.stream, frames.iter().flatten()).await?;
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
