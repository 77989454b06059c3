//! Opening bitswap streams from any task: a [`Control`] sends a request to the
//! behaviour, which hands it to one connection's handler, which answers it.

use libp2p::{PeerId, Stream};
use tokio::sync::{mpsc, oneshot};

use crate::bitswap::Version;

#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("not connected")]
    NotConnected,
    #[error("the peer speaks no bitswap version")]
    Unsupported,
    #[error("stream negotiation timed out")]
    Timeout,
    #[error("stream negotiation failed: {0}")]
    Io(std::io::Error),
    #[error("the connection closed while the stream was opening")]
    Closed,
}

/// Where the stream (or why there is none) goes, once negotiated.
pub(super) type Reply = oneshot::Sender<Result<(Stream, Version), OpenError>>;

pub(super) struct Request {
    pub peer: PeerId,
    pub reply: Reply,
}

/// Opens streams through the behaviour; cheap to clone.
#[derive(Clone)]
pub struct Control {
    pub(super) tx: mpsc::Sender<Request>,
}

impl Control {
    /// A bitswap stream to `peer` on one of its open connections.
    pub async fn open(&self, peer: PeerId) -> Result<(Stream, Version), OpenError> {
        let (reply, rx) = oneshot::channel();
        self.tx
            .send(Request { peer, reply })
            .await
            .map_err(|_| OpenError::Closed)?;
        rx.await.unwrap_or(Err(OpenError::Closed))
    }
}
