//! The bitswap behaviour of a host: streams peers open come out as [`InboundStream`]
//! events, and [`Control`]s open streams to connected peers, newest version first.
//!
//! A custom behaviour rather than libp2p-stream. Its `accept` hands streams over a
//! zero-capacity channel and silently drops one that arrives while the previous one is
//! being handed over; kubo opens a new stream for every reply message, so bursts are
//! the norm. Here every negotiated stream reaches the engine, which applies its own
//! per-peer bound. Its `Control` keeps one channel for every connection it ever saw
//! (only the connection's ID is forgotten on close): a public proxy sees a stream of
//! short connections, and each left about 200 bytes behind. Here the state is the open
//! connections only. Nothing is ever dialed: a client that has gone is unreachable, and
//! backends are dialed by the engine.

use std::collections::{HashMap, VecDeque};
use std::task::{Context, Poll};

use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, NotifyHandler,
    THandler, THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream, StreamProtocol};
use tokio::sync::mpsc;

use super::control::{Control, OpenError, Request};
use super::handler::Handler;

/// Open requests waiting for the swarm; writers wait when it is full.
const REQUEST_QUEUE: usize = 1024;

/// A bitswap stream a peer opened to us.
#[derive(Debug)]
pub struct InboundStream {
    pub peer: PeerId,
    pub stream: Stream,
    pub protocol: StreamProtocol,
}

pub struct Behaviour {
    /// Streams peers opened, not yet taken by the swarm's owner.
    inbound: VecDeque<InboundStream>,
    tx: mpsc::Sender<Request>,
    requests: mpsc::Receiver<Request>,
    /// Each peer's open connections, oldest first.
    connections: HashMap<PeerId, Vec<ConnectionId>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        let (tx, requests) = mpsc::channel(REQUEST_QUEUE);
        Self {
            inbound: VecDeque::new(),
            tx,
            requests,
            connections: HashMap::new(),
        }
    }
}

impl Behaviour {
    pub fn control(&self) -> Control {
        Control {
            tx: self.tx.clone(),
        }
    }

    fn connection(&mut self, peer: PeerId, id: ConnectionId) {
        self.connections.entry(peer).or_default().push(id);
    }
}

impl NetworkBehaviour for Behaviour {
    type ConnectionHandler = Handler;
    type ToSwarm = InboundStream;

    fn handle_established_inbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.connection(peer, id);
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        id: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.connection(peer, id);
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        // This behaviour comes last in the swarm's (net/swarm.rs), so a connection it
        // was handed passed every other behaviour's checks and ends in ConnectionClosed.
        if let FromSwarm::ConnectionClosed(ConnectionClosed {
            peer_id,
            connection_id,
            ..
        }) = event
            && let Some(ids) = self.connections.get_mut(&peer_id)
        {
            ids.retain(|c| *c != connection_id);
            if ids.is_empty() {
                self.connections.remove(&peer_id);
            }
        }
    }

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        _: ConnectionId,
        (stream, protocol): THandlerOutEvent<Self>,
    ) {
        self.inbound.push_back(InboundStream {
            peer,
            stream,
            protocol,
        });
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<InboundStream, THandlerInEvent<Self>>> {
        if let Some(e) = self.inbound.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(e));
        }
        while let Poll::Ready(Some(Request { peer, reply })) = self.requests.poll_recv(cx) {
            // The newest connection: an older one may be on its way out.
            match self.connections.get(&peer).and_then(|ids| ids.last()) {
                Some(&id) => {
                    return Poll::Ready(ToSwarm::NotifyHandler {
                        peer_id: peer,
                        handler: NotifyHandler::One(id),
                        event: reply,
                    });
                }
                None => {
                    let _ = reply.send(Err(OpenError::NotConnected));
                }
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;

    use futures::StreamExt;
    use libp2p::identity::Keypair;
    use libp2p::swarm::{Swarm, SwarmEvent};
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::bitswap::Version;
    use crate::config::Limits;
    use crate::net::swarm::{self, Behaviour as Host};

    async fn host() -> Swarm<Host> {
        let key = Keypair::generate_ed25519();
        swarm::build(key, &Limits::default(), None, &mut Registry::default())
            .await
            .expect("host builds")
    }

    /// Polls `swarm` until `fut` is done.
    async fn drive<T>(swarm: &mut Swarm<Host>, fut: impl Future<Output = T>) -> T {
        tokio::pin!(fut);
        loop {
            tokio::select! {
                r = &mut fut => return r,
                _ = swarm.select_next_some() => {}
            }
        }
    }

    async fn until_connected(swarm: &mut Swarm<Host>, peer: PeerId, open: bool) {
        loop {
            match swarm.select_next_some().await {
                SwarmEvent::ConnectionEstablished { peer_id, .. } if open && peer_id == peer => {
                    return;
                }
                SwarmEvent::ConnectionClosed {
                    peer_id,
                    num_established: 0,
                    ..
                } if !open && peer_id == peer => return,
                _ => {}
            }
        }
    }

    /// The leak this module exists to avoid: many connections come and go, and what
    /// is tracked afterwards is nothing. Streams open only on live connections.
    #[tokio::test]
    async fn opens_on_live_connections_and_forgets_closed_ones() {
        let mut server = host().await;
        server
            .listen_on("/ip4/127.0.0.1/tcp/0".parse().unwrap())
            .unwrap();
        let addr = loop {
            if let SwarmEvent::NewListenAddr { address, .. } = server.select_next_some().await {
                break address;
            }
        };
        let server_id = *server.local_peer_id();
        let serving = tokio::spawn(async move {
            loop {
                server.select_next_some().await;
            }
        });

        let mut client = host().await;
        let control = client.behaviour().bitswap.control();
        let not_connected = drive(&mut client, control.open(server_id)).await;
        assert!(matches!(not_connected, Err(OpenError::NotConnected)));

        for round in 0..5 {
            client.dial(addr.clone()).unwrap();
            until_connected(&mut client, server_id, true).await;
            let (stream, version) = drive(&mut client, control.open(server_id))
                .await
                .unwrap_or_else(|e| panic!("round {round}: {e}"));
            assert_eq!(
                version,
                Version::V1_2_0,
                "the newest version is offered first"
            );
            drop(stream);
            assert_eq!(client.behaviour().bitswap.connections.len(), 1);
            client.disconnect_peer_id(server_id).unwrap();
            until_connected(&mut client, server_id, false).await;
            assert!(
                client.behaviour().bitswap.connections.is_empty(),
                "round {round}: a closed connection is forgotten"
            );
        }
        let gone = drive(&mut client, control.open(server_id)).await;
        assert!(
            matches!(gone, Err(OpenError::NotConnected)),
            "no dial to a peer that has gone"
        );
        serving.abort();
    }
}
