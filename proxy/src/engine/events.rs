//! The two libp2p hosts' events: connections and streams opening and closing, and
//! the listen addresses to announce.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Instant;

use libp2p::core::ConnectedPoint;
use libp2p::swarm::SwarmEvent;

use super::Engine;
use crate::front::socket_addr_of;
use crate::net::bitswap::InboundStream;
use crate::net::swarm::BehaviourEvent;

impl Engine {
    /// The client's address behind a listener-side connection: for a connection
    /// spliced from the shared port, the client the splice came from.
    fn client_addr(&self, endpoint: &ConnectedPoint) -> Option<SocketAddr> {
        let ConnectedPoint::Listener { send_back_addr, .. } = endpoint else {
            return None;
        };
        let seen = socket_addr_of(send_back_addr)?;
        Some(
            self.front
                .as_ref()
                .and_then(|p| p.splices.client_of(&seen))
                .unwrap_or(seen),
        )
    }

    pub(super) fn on_client_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        libp2p::metrics::Recorder::record(&self.libp2p_metrics, &event);
        if let SwarmEvent::NewListenAddr { listener_id, .. } = &event {
            self.listeners.insert(*listener_id);
        }
        match event {
            SwarmEvent::NewListenAddr {
                address,
                listener_id,
            } if self
                .front
                .as_ref()
                .is_some_and(|p| p.internal_ws == listener_id) =>
            {
                // Internal: reached through the shared port, never announced.
                if let (Some(p), Some(addr)) = (&self.front, socket_addr_of(&address)) {
                    p.internal_ws_addr.send_replace(Some(addr));
                }
            }
            SwarmEvent::NewListenAddr { address, .. } if self.announced => {
                // The start-up lines show the announced addresses instead.
                tracing::info!(%address, "listening (not announced: --announce is set)");
                self.health.listening.store(true, Ordering::Relaxed);
            }
            SwarmEvent::NewListenAddr { address, .. } => {
                let id = *self.clients_side.swarm.local_peer_id();
                crate::announce::line(format_args!("Listening on {address}/p2p/{id}"));
                self.health.listening.store(true, Ordering::Relaxed);
                self.clients_side.swarm.add_external_address(address);
            }
            SwarmEvent::ExpiredListenAddr { address, .. } if !self.announced => {
                self.clients_side.swarm.remove_external_address(&address);
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                connection_id,
                endpoint,
                ..
            } => {
                let ip = self.client_addr(&endpoint).map(|a| a.ip());
                let fx = self.core.client_connected(peer_id, connection_id, ip);
                self.carry_out(fx);
                if num_established.get() == 1 && self.clients.insert(peer_id) {
                    self.metrics.upstream_peers.inc();
                }
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                ..
            } => {
                let last = num_established == 0 && self.clients.remove(&peer_id);
                let fx =
                    self.core
                        .client_disconnected(peer_id, connection_id, last, Instant::now());
                if last {
                    self.metrics.upstream_peers.dec();
                    self.clients_side.writers.remove(&peer_id);
                }
                self.carry_out(fx);
            }
            SwarmEvent::IncomingConnectionError { error, .. } => {
                tracing::debug!(%error, "inbound connection refused or failed");
            }
            SwarmEvent::Behaviour(BehaviourEvent::Bitswap(InboundStream {
                peer, stream, ..
            })) => {
                self.clients_side.readers.spawn(peer, stream);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => {
                libp2p::metrics::Recorder::record(&self.libp2p_metrics, &e);
            }
            SwarmEvent::Behaviour(BehaviourEvent::Ping(e)) => {
                libp2p::metrics::Recorder::record(&self.libp2p_metrics, &e);
            }
            _ => {}
        }
    }

    pub(super) fn on_backend_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        let now = Instant::now();
        let actions = match event {
            SwarmEvent::ConnectionEstablished {
                peer_id,
                num_established,
                ..
            } if num_established.get() == 1 && self.backends.is_backend(&peer_id) => {
                self.backends.connected(peer_id)
            }
            SwarmEvent::ConnectionClosed {
                peer_id,
                num_established: 0,
                ..
            } if self.backends.is_backend(&peer_id) => {
                self.backends.disconnected(peer_id, now, rand::random())
            }
            SwarmEvent::OutgoingConnectionError {
                peer_id: Some(peer),
                error,
                ..
            } if self.backends.is_backend(&peer)
                && !self.connected_backends.contains_key(&peer) =>
            {
                tracing::warn!(%peer, %error, "cannot connect to backend");
                self.backends.disconnected(peer, now, rand::random())
            }
            SwarmEvent::Behaviour(BehaviourEvent::Bitswap(InboundStream {
                peer, stream, ..
            })) => {
                self.backends_side.readers.spawn(peer, stream);
                return;
            }
            _ => return,
        };
        self.perform(actions);
    }
}
