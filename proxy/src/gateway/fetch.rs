//! The gateway's side of the engine: a fetch is a command into the engine's loop,
//! answered through a oneshot; the routing core decides ([`crate::routing::Fetches`]).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Instant;

use cid::Cid;
use tokio::sync::{mpsc, oneshot};

use crate::bitswap::WantKind;
use crate::routing::{FetchId, Fetched};

/// What the gateway asks of the engine.
#[derive(Debug)]
pub enum FetchCmd {
    Fetch {
        id: FetchId,
        cid: Cid,
        kind: WantKind,
        deadline: Instant,
        reply: oneshot::Sender<Fetched>,
    },
    /// The asker is gone (its response was dropped).
    Cancel(FetchId),
}

/// Starts fetches; cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    tx: mpsc::Sender<FetchCmd>,
    next: Arc<AtomicU64>,
}

impl Fetcher {
    /// A fetcher and the command stream the engine reads. `capacity` bounds the
    /// commands waiting for the loop; senders wait for room.
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<FetchCmd>) {
        let (tx, rx) = mpsc::channel(capacity);
        let fetcher = Self {
            tx,
            next: Arc::new(AtomicU64::new(1)),
        };
        (fetcher, rx)
    }

    /// Asks for `cid`; the answer comes by `deadline` (or [`Fetched::Timeout`]).
    pub async fn start(&self, cid: Cid, kind: WantKind, deadline: Instant) -> Pending {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let (reply, rx) = oneshot::channel();
        let cmd = FetchCmd::Fetch {
            id,
            cid,
            kind,
            deadline,
            reply,
        };
        // A stopped engine drops the reply sender: the fetch then reads as NoBackend.
        let _ = self.tx.send(cmd).await;
        Pending {
            id,
            rx,
            tx: self.tx.clone(),
            done: false,
        }
    }

    /// One fetch, awaited.
    pub async fn fetch(&self, cid: Cid, kind: WantKind, deadline: Instant) -> Fetched {
        self.start(cid, kind, deadline).await.await
    }
}

/// A fetch in flight. Dropped unanswered, it is cancelled in the engine (if the
/// command queue is full, the core's deadline clears it instead).
pub struct Pending {
    id: FetchId,
    rx: oneshot::Receiver<Fetched>,
    tx: mpsc::Sender<FetchCmd>,
    done: bool,
}

impl Future for Pending {
    type Output = Fetched;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Fetched> {
        let r = Pin::new(&mut self.rx).poll(cx);
        r.map(|r| {
            self.done = true;
            r.unwrap_or(Fetched::NoBackend)
        })
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        if !self.done {
            let _ = self.tx.try_send(FetchCmd::Cancel(self.id));
        }
    }
}
