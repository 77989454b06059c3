//! The secure channels as the muxers get them, their writes gathered per burst
//! ([`FlushBuf`]), so a burst of yamux frames leaves in one syscall.
//!
//! Where they sit differs. Under noise, at the socket: noise seals each flush as a frame
//! of its own, and its buffers grow to the largest frame and are never given back, so
//! the frames stay as small as yamux flushes them (16 KiB) and only the sends gather.
//! Put above noise instead, a burst made 64 KiB noise frames and kept three 64 KiB
//! buffers in every client that had fetched a block (the crowd bench: 105 -> 255 KiB
//! per client). Over TLS, above it: rustls makes a record of every write, and yamux
//! writes a frame's header and body apart.

use std::marker::PhantomData;

use futures::TryFutureExt;
use futures::future::MapOk;
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

use super::flush_buf::FlushBuf;

/// Where a security upgrade's writes are gathered: the socket it runs on, or the
/// stream it makes.
pub trait Adapter {
    type Socket<C>;
    fn socket<C>(socket: C) -> Self::Socket<C>;
    type Stream<S>;
    fn stream<S>(stream: S) -> Self::Stream<S>;
}

/// Noise: the sends gathered under it (see the module's doc).
pub enum Noise {}

impl Adapter for Noise {
    type Socket<C> = FlushBuf<C>;
    fn socket<C>(socket: C) -> FlushBuf<C> {
        FlushBuf::new(socket)
    }
    type Stream<S> = S;
    fn stream<S>(stream: S) -> S {
        stream
    }
}

/// TLS: the writes gathered above it, one record for many.
pub enum Tls {}

impl Adapter for Tls {
    type Socket<C> = C;
    fn socket<C>(socket: C) -> C {
        socket
    }
    type Stream<S> = FlushBuf<S>;
    fn stream<S>(stream: S) -> FlushBuf<S> {
        FlushBuf::new(stream)
    }
}

/// A security upgrade with its writes gathered as `A` says.
pub struct Shaped<U, A> {
    upgrade: U,
    adapter: PhantomData<fn() -> A>,
}

impl<U, A> Shaped<U, A> {
    pub fn new(upgrade: U) -> Self {
        Self {
            upgrade,
            adapter: PhantomData,
        }
    }
}

impl<U: Clone, A> Clone for Shaped<U, A> {
    fn clone(&self) -> Self {
        Self::new(self.upgrade.clone())
    }
}

type Adapt<S, T> = fn((PeerId, S)) -> (PeerId, T);

fn adapt<A: Adapter, S>((peer, stream): (PeerId, S)) -> (PeerId, A::Stream<S>) {
    (peer, A::stream(stream))
}

impl<U: UpgradeInfo, A> UpgradeInfo for Shaped<U, A> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.upgrade.protocol_info()
    }
}

impl<C, U, S, A> InboundConnectionUpgrade<C> for Shaped<U, A>
where
    A: Adapter,
    U: InboundConnectionUpgrade<A::Socket<C>, Output = (PeerId, S)>,
{
    type Output = (PeerId, A::Stream<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Adapt<S, A::Stream<S>>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        let f: Adapt<S, A::Stream<S>> = adapt::<A, S>;
        let socket = A::socket(socket);
        self.upgrade.upgrade_inbound(socket, info).map_ok(f)
    }
}

impl<C, U, S, A> OutboundConnectionUpgrade<C> for Shaped<U, A>
where
    A: Adapter,
    U: OutboundConnectionUpgrade<A::Socket<C>, Output = (PeerId, S)>,
{
    type Output = (PeerId, A::Stream<S>);
    type Error = U::Error;
    type Future = MapOk<U::Future, Adapt<S, A::Stream<S>>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        let f: Adapt<S, A::Stream<S>> = adapt::<A, S>;
        let socket = A::socket(socket);
        self.upgrade.upgrade_outbound(socket, info).map_ok(f)
    }
}

#[cfg(test)]
mod tests {
    use futures::future::Either;
    use futures::{AsyncReadExt, AsyncWriteExt};
    use libp2p::identity::Keypair;
    use libp2p::{noise, tls};

    use super::*;
    use crate::fixtures::tcp_pair;

    /// Both shaped channels, on a real socket and runtime: a flush that was put off
    /// completes on its own (the task is woken), every byte arrives in order, and the
    /// peers are who they are.
    #[tokio::test]
    async fn shaped_noise_and_tls_carry_a_burst_and_complete_their_flushes() {
        // A put-off flush nobody came back for (the handshake's or the burst's) would
        // hang: fail instead.
        tokio::time::timeout(std::time::Duration::from_secs(30), carry_a_burst())
            .await
            .expect("every put-off flush completed");
    }

    type Socket = tokio_util::compat::Compat<tokio::net::TcpStream>;

    /// Both ends of one channel shaped by `A`, over a fresh loopback socket; checks that
    /// each end knows the other.
    async fn handshake<U, A, O, I>(
        make: fn(&Keypair) -> U,
        protocol: &'static str,
    ) -> (A::Stream<O>, A::Stream<I>)
    where
        A: Adapter,
        U: UpgradeInfo<Info = &'static str>
            + OutboundConnectionUpgrade<A::Socket<Socket>, Output = (PeerId, O)>
            + InboundConnectionUpgrade<A::Socket<Socket>, Output = (PeerId, I)>,
        <U as OutboundConnectionUpgrade<A::Socket<Socket>>>::Error: std::fmt::Debug,
        <U as InboundConnectionUpgrade<A::Socket<Socket>>>::Error: std::fmt::Debug,
    {
        let (ours, theirs) = (Keypair::generate_ed25519(), Keypair::generate_ed25519());
        let (dialed, accepted) = tcp_pair().await;
        let (c, s) = (
            Shaped::<_, A>::new(make(&ours)),
            Shaped::<_, A>::new(make(&theirs)),
        );
        let (o, i) = tokio::join!(
            c.upgrade_outbound(dialed, protocol),
            s.upgrade_inbound(accepted, protocol),
        );
        let ((sid, o), (cid, i)) = (o.unwrap(), i.unwrap());
        assert_eq!(
            (sid, cid),
            (theirs.public().to_peer_id(), ours.public().to_peer_id())
        );
        (o, i)
    }

    async fn carry_a_burst() {
        let block: Vec<u8> = (0..256 * 1024).map(|i| (i % 251) as u8).collect();
        for tls in [false, true] {
            let (mut out, mut inb) = if tls {
                let (o, i) =
                    handshake::<_, Tls, _, _>(|k| tls::Config::new(k).unwrap(), "/tls/1.0.0").await;
                (Either::Left(o), Either::Left(i))
            } else {
                let (o, i) =
                    handshake::<_, Noise, _, _>(|k| noise::Config::new(k).unwrap(), "/noise").await;
                (Either::Right(o), Either::Right(i))
            };
            let send = async {
                // As yamux writes: a header, then a body of at most 16 KiB, each frame.
                for frame in block.chunks(16 * 1024) {
                    out.write_all(&[0xAB; 12]).await.unwrap();
                    out.write_all(frame).await.unwrap();
                }
                out.flush().await.unwrap();
            };
            let mut got = vec![0u8; block.len() + 16 * 12];
            let recv = inb.read_exact(&mut got);
            let ((), read) = tokio::join!(send, recv);
            read.unwrap();
            let body: Vec<u8> = got
                .chunks(16 * 1024 + 12)
                .flat_map(|f| &f[12..])
                .copied()
                .collect();
            assert_eq!(body, block, "tls {tls}: every byte, in order");
        }
    }
}
