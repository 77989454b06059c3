//! A bare libp2p swarm for the tests' own peers: TCP, noise and yamux on tokio.

use std::time::Duration;

use libp2p::identity::Keypair;
use libp2p::swarm::NetworkBehaviour;
use libp2p::{Swarm, SwarmBuilder, noise, tcp, yamux};

/// A swarm with a fresh identity running `behaviour` over TCP + noise + yamux. Idle
/// connections stay open for 300 s: the test, not the swarm, decides when they end.
pub fn tcp_swarm<B: NetworkBehaviour>(behaviour: impl FnOnce(&Keypair) -> B) -> Swarm<B> {
    SwarmBuilder::with_new_identity()
        .with_tokio()
        .with_tcp(
            tcp::Config::default(),
            noise::Config::new,
            yamux::Config::default,
        )
        .expect("a TCP + noise + yamux transport")
        .with_behaviour(behaviour)
        .expect("the behaviour constructor cannot fail")
        .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
        .build()
}
