//! The engine's commands from the HTTP side: preload sessions and gateway fetches,
//! handed to the core, their answers sent back on the reply channels.

use std::time::Instant;

use tokio::sync::mpsc;

use super::Engine;
use super::parts::Preload;
use crate::backend::BackendSpec;
use crate::gateway::fetch::FetchCmd;
use crate::preload::refs::{Opened, PreloadCmd};

impl Engine {
    pub(super) fn on_preload(&mut self, cmd: PreloadCmd) {
        let now = Instant::now();
        match cmd {
            PreloadCmd::Open {
                roots,
                client,
                max_depth,
                reply,
            } => {
                let backends = &self.backends;
                let result = self.core.preload_open(
                    &roots,
                    client,
                    max_depth,
                    |b| backends.spec_of(b).map(BackendSpec::rpc_url),
                    now,
                );
                let _ = reply.send(result.map(|(id, rpc_url)| Opened { id, rpc_url }));
            }
            PreloadCmd::Close(id) => {
                let fx = self.core.preload_close(id, now);
                self.carry_out(fx);
            }
        }
    }

    pub(super) fn on_fetch(&mut self, cmd: FetchCmd) {
        let now = Instant::now();
        let fx = match cmd {
            FetchCmd::Fetch {
                id,
                cid,
                kind,
                deadline,
                reply,
            } => {
                self.fetch_replies.insert(id, reply);
                self.core.fetch(id, cid, kind, deadline, now)
            }
            FetchCmd::Cancel(id) => {
                self.fetch_replies.remove(&id);
                self.core.fetch_cancel(id, now)
            }
        };
        self.carry_out(fx);
    }
}

pub(super) async fn next_fetch_cmd(
    commands: &mut Option<mpsc::Receiver<FetchCmd>>,
) -> Option<FetchCmd> {
    match commands {
        Some(c) => c.recv().await,
        None => std::future::pending().await,
    }
}

pub(super) async fn next_preload_cmd(preload: &mut Option<Preload>) -> Option<PreloadCmd> {
    match preload {
        Some(p) => p.commands.recv().await,
        None => std::future::pending().await,
    }
}
