//! Steering a running engine from outside its loop (the backend sources).

use tokio::sync::mpsc;

use crate::backend::BackendSpec;

/// Commands from outside the loop.
#[derive(Debug)]
pub enum Command {
    SetBackends(Vec<BackendSpec>),
}

/// A handle to steer a running engine.
#[derive(Clone)]
pub struct Handle {
    tx: mpsc::Sender<Command>,
}

impl Handle {
    /// A handle and the command stream it feeds, for embedding a backend source
    /// without an engine (tests, tools).
    pub fn channel(capacity: usize) -> (Self, mpsc::Receiver<Command>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Self { tx }, rx)
    }

    /// True once the engine has stopped.
    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Replaces the backend set (the diff is applied: unchanged backends are untouched).
    pub async fn set_backends(&self, specs: Vec<BackendSpec>) -> anyhow::Result<()> {
        self.tx
            .send(Command::SetBackends(specs))
            .await
            .map_err(|_| anyhow::anyhow!("the engine has stopped"))
    }
}
