//! Opening bitswap streams to connected peers, newest version offered first.
//!
//! In place of libp2p-stream's `Control`, whose shared state keeps one channel for
//! every connection it ever saw (only the connection's ID is forgotten on close): a
//! public proxy sees a stream of short connections, and each left about 200 bytes
//! behind. Here the state is the open connections only. Nothing is ever dialed: a
//! client that has gone is unreachable, and backends are dialed by the engine.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::core::upgrade::DeniedUpgrade;
use libp2p::core::{Endpoint, transport::PortUse};
use libp2p::swarm::handler::{ConnectionEvent, DialUpgradeError, FullyNegotiatedOutbound};
use libp2p::swarm::{
    ConnectionClosed, ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId,
    FromSwarm, NetworkBehaviour, NotifyHandler, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, Stream};
use tokio::sync::{mpsc, oneshot};

use super::inbound::Upgrade;
use crate::bitswap::Version;

/// Open requests waiting for the swarm; writers wait when it is full.
const REQUEST_QUEUE: usize = 1024;
/// Negotiation of one stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

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

type Reply = oneshot::Sender<Result<(Stream, Version), OpenError>>;

struct Request {
    peer: PeerId,
    reply: Reply,
}

/// Opens streams through the behaviour; cheap to clone.
#[derive(Clone)]
pub struct Control {
    tx: mpsc::Sender<Request>,
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

pub struct Behaviour {
    tx: mpsc::Sender<Request>,
    requests: mpsc::Receiver<Request>,
    connections: HashMap<PeerId, Vec<ConnectionId>>,
}

impl Default for Behaviour {
    fn default() -> Self {
        let (tx, requests) = mpsc::channel(REQUEST_QUEUE);
        Self {
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
    type ToSwarm = Infallible;

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
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        match event {}
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Infallible, THandlerInEvent<Self>>> {
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

/// One connection's side: each request becomes an outbound stream negotiation.
#[derive(Default)]
pub struct Handler {
    requests: VecDeque<Reply>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Reply;
    type ToBehaviour = Infallible;
    type InboundProtocol = DeniedUpgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Reply;

    fn listen_protocol(&self) -> SubstreamProtocol<DeniedUpgrade, ()> {
        SubstreamProtocol::new(DeniedUpgrade, ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Reply, Infallible>> {
        match self.requests.pop_front() {
            Some(reply) => Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                protocol: SubstreamProtocol::new(Upgrade, reply).with_timeout(OPEN_TIMEOUT),
            }),
            None => Poll::Pending,
        }
    }

    fn on_behaviour_event(&mut self, reply: Reply) {
        self.requests.push_back(reply);
    }

    fn on_connection_event(&mut self, event: ConnectionEvent<DeniedUpgrade, Upgrade, (), Reply>) {
        match event {
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: (stream, protocol),
                info: reply,
            }) => {
                let version =
                    Version::from_protocol(&protocol).expect("negotiated from Version::ALL");
                let _ = reply.send(Ok((stream, version)));
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { info: reply, error }) => {
                let _ = reply.send(Err(match error {
                    StreamUpgradeError::NegotiationFailed => OpenError::Unsupported,
                    StreamUpgradeError::Timeout => OpenError::Timeout,
                    StreamUpgradeError::Io(e) => OpenError::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                }));
            }
            _ => {}
        }
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
        let control = client.behaviour().outbound.control();
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
            assert_eq!(client.behaviour().outbound.connections.len(), 1);
            client.disconnect_peer_id(server_id).unwrap();
            until_connected(&mut client, server_id, false).await;
            assert!(
                client.behaviour().outbound.connections.is_empty(),
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
