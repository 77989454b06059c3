//! One connection's side of bitswap: streams the peer opens are accepted in any version
//! and passed up; each open request from the behaviour becomes an outbound stream
//! negotiation, answered on the request's reply channel.

use std::collections::VecDeque;
use std::task::{Context, Poll};
use std::time::Duration;

use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionHandler, ConnectionHandlerEvent, StreamUpgradeError, SubstreamProtocol,
};
use libp2p::{Stream, StreamProtocol};

use super::control::{OpenError, Reply};
use super::protocol::Upgrade;
use crate::bitswap::Version;

/// Negotiation of one outbound stream.
const OPEN_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Default)]
pub struct Handler {
    /// Streams the peer opened, negotiated, not yet passed to the behaviour.
    inbound: VecDeque<(Stream, StreamProtocol)>,
    /// Open requests not yet asked of the connection.
    requests: VecDeque<Reply>,
}

impl ConnectionHandler for Handler {
    type FromBehaviour = Reply;
    type ToBehaviour = (Stream, StreamProtocol);
    type InboundProtocol = Upgrade;
    type OutboundProtocol = Upgrade;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = Reply;

    fn listen_protocol(&self) -> SubstreamProtocol<Upgrade, ()> {
        SubstreamProtocol::new(Upgrade, ())
    }

    fn poll(
        &mut self,
        _: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Upgrade, Reply, Self::ToBehaviour>> {
        if let Some(s) = self.inbound.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(s));
        }
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

    fn on_connection_event(&mut self, event: ConnectionEvent<Upgrade, Upgrade, (), Reply>) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol, ..
            }) => self.inbound.push_back(protocol),
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
