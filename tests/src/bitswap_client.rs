//! A native bitswap peer for tests and benchmarks: a real rust-libp2p swarm speaking
//! bitswap 1.2.0 with the project's codec. It fetches blocks, records every message it
//! receives (WANTs included), and can send malformed frames on purpose.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use cid::Cid;
use futures::{AsyncWriteExt, StreamExt};
use kitsune_proxy::bitswap::codec::{read_frame, write_frame};
use kitsune_proxy::bitswap::{MAX_FRAME_BYTES, Message, Version, WantEntry, WantKind};
use kitsune_proxy::net::bitswap;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, Stream, StreamProtocol, SwarmBuilder, identify, noise, tcp, yamux,
};
use tokio::sync::{mpsc, watch};

#[derive(NetworkBehaviour)]
struct Behaviour {
    identify: identify::Behaviour,
    bitswap: bitswap::Behaviour,
    stream: libp2p_stream::Behaviour,
}

pub struct BitswapClient {
    pub peer_id: PeerId,
    pub server: PeerId,
    control: libp2p_stream::Control,
    out: Option<Stream>,
    inbox: mpsc::UnboundedReceiver<Message>,
    connected: watch::Receiver<bool>,
    /// Whether the client reads the server's streams (see [`Self::pause_reading`]).
    reading: watch::Sender<bool>,
    _swarm: tokio::task::JoinHandle<()>,
}

/// What a fetch measured.
#[derive(Debug, Clone)]
pub struct FetchStats {
    pub blocks: usize,
    pub bytes: usize,
    pub elapsed: Duration,
    /// Want-to-block latency of each block.
    pub latencies: Vec<Duration>,
}

impl BitswapClient {
    /// Connects to `addr` (which must end in `/p2p/<id>`).
    pub async fn connect(addr: &Multiaddr) -> anyhow::Result<Self> {
        Self::connect_with(addr, None).await
    }

    /// Connects to `addr` over TCP from the source address `source` (any of
    /// 127.0.0.0/8 on Linux loopback), so the proxy sees a client of another address.
    pub async fn connect_from(addr: &Multiaddr, source: std::net::IpAddr) -> anyhow::Result<Self> {
        Self::connect_with(addr, Some(source)).await
    }

    async fn connect_with(
        addr: &Multiaddr,
        source: Option<std::net::IpAddr>,
    ) -> anyhow::Result<Self> {
        let server = match addr.iter().last() {
            Some(Protocol::P2p(id)) => id,
            _ => bail!("{addr} has no /p2p/ peer ID"),
        };
        let behaviour = |key: &libp2p::identity::Keypair| Behaviour {
            identify: identify::Behaviour::new(identify::Config::new(
                "ipfs/0.1.0".into(),
                key.public(),
            )),
            bitswap: bitswap::Behaviour::default(),
            stream: libp2p_stream::Behaviour::new(),
        };
        let idle =
            |c: libp2p::swarm::Config| c.with_idle_connection_timeout(Duration::from_secs(300));
        let mut swarm = match source {
            None => SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_tcp(
                    tcp::Config::default().nodelay(true),
                    noise::Config::new,
                    yamux::Config::default,
                )?
                .with_quic()
                .with_behaviour(behaviour)?
                .with_swarm_config(idle)
                .build(),
            Some(source) => SwarmBuilder::with_new_identity()
                .with_tokio()
                .with_other_transport(|key| tcp_from_transport(key, source))?
                .with_behaviour(behaviour)?
                .with_swarm_config(idle)
                .build(),
        };
        let peer_id = *swarm.local_peer_id();
        let control = swarm.behaviour().stream.new_control();
        swarm.dial(addr.clone())?;
        let (inbox_tx, inbox) = mpsc::unbounded_channel();
        let (conn_tx, mut connected) = watch::channel(false);
        let (reading, gate) = watch::channel(true);
        let task = tokio::spawn(async move {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { peer_id, .. } if peer_id == server => {
                        let _ = conn_tx.send(true);
                    }
                    SwarmEvent::ConnectionClosed {
                        peer_id,
                        num_established: 0,
                        ..
                    } if peer_id == server => {
                        let _ = conn_tx.send(false);
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        tracing::warn!(%error, "test client dial failed");
                        let _ = conn_tx.send(false);
                    }
                    SwarmEvent::Behaviour(BehaviourEvent::Bitswap(s)) => {
                        tokio::spawn(read_all(s.stream, inbox_tx.clone(), gate.clone()));
                    }
                    _ => {}
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), connected.wait_for(|c| *c))
            .await
            .context("connecting timed out")?
            .context("connection task ended")?;
        Ok(Self {
            peer_id,
            server,
            control,
            out: None,
            inbox,
            connected,
            reading,
            _swarm: task,
        })
    }

    pub fn is_connected(&self) -> bool {
        *self.connected.borrow()
    }

    /// Stops reading what the server sends (as a slow reader does): its streams'
    /// flow-control windows fill and the server's writes wait.
    pub fn pause_reading(&self) {
        self.reading.send_replace(false);
    }

    pub fn resume_reading(&self) {
        self.reading.send_replace(true);
    }

    async fn stream(&mut self) -> anyhow::Result<&mut Stream> {
        if self.out.is_none() {
            let s = self
                .control
                .open_stream(self.server, Version::V1_2_0.protocol())
                .await
                .context("opening a bitswap stream")?;
            self.out = Some(s);
        }
        Ok(self.out.as_mut().expect("set above"))
    }

    /// Sends a message on the client's long-lived stream.
    pub async fn send(&mut self, msg: &Message) -> anyhow::Result<()> {
        let frames = msg.encode_frames(Version::V1_2_0, MAX_FRAME_BYTES / 2);
        let s = self.stream().await?;
        for f in frames {
            write_frame(s, &f).await?;
        }
        s.flush().await?;
        Ok(())
    }

    /// Opens a fresh stream on `protocol` and writes `bytes` as they are.
    pub async fn send_raw(
        &mut self,
        protocol: &'static str,
        bytes: &[u8],
    ) -> anyhow::Result<Stream> {
        let mut s = self
            .control
            .open_stream(self.server, StreamProtocol::new(protocol))
            .await
            .with_context(|| format!("opening {protocol}"))?;
        s.write_all(bytes).await?;
        s.flush().await?;
        Ok(s)
    }

    /// Tries to open a stream on any protocol; errors if the server refuses it.
    pub async fn open(
        &mut self,
        protocol: &'static str,
    ) -> Result<Stream, libp2p_stream::OpenStreamError> {
        self.control
            .open_stream(self.server, StreamProtocol::new(protocol))
            .await
    }

    /// The next message received, if one comes within `timeout`.
    pub async fn recv(&mut self, timeout: Duration) -> Option<Message> {
        tokio::time::timeout(timeout, self.inbox.recv())
            .await
            .ok()
            .flatten()
    }

    /// Wants `cids` (at most `window` outstanding) until all arrive; verifies each.
    pub async fn fetch(
        &mut self,
        cids: &[Cid],
        window: usize,
        timeout: Duration,
    ) -> anyhow::Result<(Vec<kitsune_proxy::bitswap::Block>, FetchStats)> {
        let start = Instant::now();
        let deadline = start + timeout;
        let mut next = 0;
        let mut sent: HashMap<Cid, Instant> = HashMap::new();
        let mut got: HashMap<Cid, kitsune_proxy::bitswap::Block> = HashMap::new();
        let mut latencies = Vec::with_capacity(cids.len());
        let wanted: HashSet<Cid> = cids.iter().copied().collect();
        while got.len() < wanted.len() {
            let mut batch = Vec::new();
            while next < cids.len() && sent.len() - got.len().min(sent.len()) < window {
                let c = cids[next];
                next += 1;
                if sent.contains_key(&c) {
                    continue;
                }
                sent.insert(c, Instant::now());
                batch.push(want(c));
            }
            if !batch.is_empty() {
                self.send(&Message {
                    wants: batch,
                    ..Default::default()
                })
                .await?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!("timed out with {} of {} blocks", got.len(), wanted.len());
            }
            let mut connected = self.connected.clone();
            let msg = tokio::select! {
                msg = self.recv(left) => msg,
                _ = connected.wait_for(|c| !*c) => {
                    bail!("the server closed the connection with {} of {} blocks", got.len(), wanted.len());
                }
            };
            let Some(msg) = msg else {
                bail!("timed out with {} of {} blocks", got.len(), wanted.len());
            };
            for b in msg.blocks {
                if wanted.contains(&b.cid) && !got.contains_key(&b.cid) {
                    if let Some(t) = sent.get(&b.cid) {
                        latencies.push(t.elapsed());
                    }
                    got.insert(b.cid, b);
                }
            }
            if let Some(p) = msg.presences.iter().find(|p| {
                p.kind == kitsune_proxy::bitswap::PresenceKind::DontHave && wanted.contains(&p.cid)
            }) {
                bail!("DONT_HAVE for {}", p.cid);
            }
        }
        let elapsed = start.elapsed();
        // Tidy up as a well-behaved client does.
        let blocks: Vec<_> = cids.iter().filter_map(|c| got.remove(c)).collect();
        let bytes = blocks.iter().map(|b| b.data.len()).sum();
        Ok((
            blocks,
            FetchStats {
                blocks: cids.len(),
                bytes,
                elapsed,
                latencies,
            },
        ))
    }
}

/// Every copy of every block a [`BitswapClient::fetch_counting`] received: CID ->
/// (copies, block length). More than one copy is a routing fault.
pub type Copies = HashMap<Cid, (usize, usize)>;

impl BitswapClient {
    /// Fetches `cids` with at most `window` wants out, counting every copy of every
    /// block, and calls `during` once, after `after` distinct blocks arrived (to inject
    /// a fault or a change mid-transfer). Listens a moment at the end for late copies.
    pub async fn fetch_counting(
        &mut self,
        cids: &[Cid],
        window: usize,
        timeout: Duration,
        after: usize,
        during: impl FnOnce(),
    ) -> anyhow::Result<Copies> {
        let deadline = Instant::now() + timeout;
        let mut copies = Copies::new();
        let mut next = 0;
        let mut during = Some(during);
        while copies.len() < cids.len() {
            let outstanding = next - copies.len().min(next);
            if outstanding < window && next < cids.len() {
                let end = (next + window - outstanding).min(cids.len());
                let wants = cids[next..end].iter().map(|c| want(*c)).collect();
                next = end;
                self.send(&Message {
                    wants,
                    ..Default::default()
                })
                .await?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            let Some(msg) = self.recv(left).await else {
                bail!("timed out with {} of {} blocks", copies.len(), cids.len());
            };
            for b in msg.blocks {
                copies.entry(b.cid).or_insert((0, b.data.len())).0 += 1;
            }
            if copies.len() >= after
                && let Some(f) = during.take()
            {
                f();
            }
        }
        while let Some(msg) = self.recv(Duration::from_millis(500)).await {
            for b in msg.blocks {
                copies.entry(b.cid).or_insert((0, b.data.len())).0 += 1;
            }
        }
        Ok(copies)
    }
}

/// Dropping a client closes its connection: the swarm task is stopped (a dropped
/// `JoinHandle` alone would leave it, and the connection, running).
impl Drop for BitswapClient {
    fn drop(&mut self) {
        self._swarm.abort();
    }
}

/// A WANT-BLOCK that asks for DONT_HAVE.
pub fn want(cid: Cid) -> WantEntry {
    WantEntry {
        cid,
        priority: 1,
        cancel: false,
        kind: WantKind::Block,
        send_dont_have: true,
    }
}

async fn read_all(
    stream: Stream,
    tx: mpsc::UnboundedSender<Message>,
    mut reading: watch::Receiver<bool>,
) {
    let mut r = futures::io::BufReader::with_capacity(64 * 1024, stream);
    loop {
        if reading.wait_for(|on| *on).await.is_err() {
            return;
        }
        let Ok(Some(frame)) = read_frame(&mut r, MAX_FRAME_BYTES).await else {
            return;
        };
        match Message::decode(frame) {
            Ok((m, _)) => {
                if tx.send(m).is_err() {
                    return;
                }
            }
            Err(_) => return,
        }
    }
}

/// A TCP transport that dials from a chosen source address (any of 127.0.0.0/8 works on
/// Linux loopback), so a test can be "another IP" than 127.0.0.1. Dial only.
struct TcpFrom(std::net::IpAddr);

impl libp2p::core::Transport for TcpFrom {
    type Output = tokio_util::compat::Compat<tokio::net::TcpStream>;
    type Error = std::io::Error;
    type ListenerUpgrade = futures::future::Pending<Result<Self::Output, Self::Error>>;
    type Dial = futures::future::BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn listen_on(
        &mut self,
        _: libp2p::core::transport::ListenerId,
        addr: Multiaddr,
    ) -> Result<(), libp2p::core::transport::TransportError<Self::Error>> {
        Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr))
    }

    fn remove_listener(&mut self, _: libp2p::core::transport::ListenerId) -> bool {
        false
    }

    fn dial(
        &mut self,
        addr: Multiaddr,
        _: libp2p::core::transport::DialOpts,
    ) -> Result<Self::Dial, libp2p::core::transport::TransportError<Self::Error>> {
        let mut it = addr.iter();
        let (Some(Protocol::Ip4(ip)), Some(Protocol::Tcp(port))) = (it.next(), it.next()) else {
            return Err(libp2p::core::transport::TransportError::MultiaddrNotSupported(addr));
        };
        let source = self.0;
        Ok(Box::pin(async move {
            use tokio_util::compat::TokioAsyncReadCompatExt;
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(std::net::SocketAddr::new(source, 0))?;
            let stream = socket.connect((ip, port).into()).await?;
            stream.set_nodelay(true)?;
            Ok(stream.compat())
        }))
    }

    fn poll(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<libp2p::core::transport::TransportEvent<Self::ListenerUpgrade, Self::Error>>
    {
        std::task::Poll::Pending
    }
}

/// What became of a [`Peer`]'s connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PeerState {
    Dialing,
    Connected,
    /// The dial failed (refused at the TCP, security or muxer stage).
    Failed(String),
    /// It was established, then closed.
    Closed,
}

/// A bare libp2p peer (identify only, no bitswap) with its own identity, dialing over TCP
/// from `source`: one unit of a connection flood. Its task ends when it is dropped.
pub struct Peer {
    pub peer_id: PeerId,
    state: watch::Receiver<PeerState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Peer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[derive(NetworkBehaviour)]
struct PeerBehaviour {
    identify: identify::Behaviour,
}

impl Peer {
    /// Starts dialing `addr` from `source`; see [`Peer::settled`] for the outcome.
    pub fn dial_from(addr: &Multiaddr, source: std::net::IpAddr) -> anyhow::Result<Self> {
        let mut swarm = SwarmBuilder::with_new_identity()
            .with_tokio()
            .with_other_transport(|key| tcp_from_transport(key, source))?
            .with_behaviour(|key| PeerBehaviour {
                identify: identify::Behaviour::new(identify::Config::new(
                    "ipfs/0.1.0".into(),
                    key.public(),
                )),
            })?
            .with_swarm_config(|c| c.with_idle_connection_timeout(Duration::from_secs(300)))
            .build();
        let peer_id = *swarm.local_peer_id();
        swarm.dial(addr.clone())?;
        let (tx, state) = watch::channel(PeerState::Dialing);
        let task = tokio::spawn(async move {
            loop {
                match swarm.select_next_some().await {
                    SwarmEvent::ConnectionEstablished { .. } => {
                        let _ = tx.send(PeerState::Connected);
                    }
                    SwarmEvent::ConnectionClosed {
                        num_established: 0, ..
                    } => {
                        let _ = tx.send(PeerState::Closed);
                    }
                    SwarmEvent::OutgoingConnectionError { error, .. } => {
                        let _ = tx.send(PeerState::Failed(error.to_string()));
                    }
                    _ => {}
                }
            }
        });
        Ok(Self {
            peer_id,
            state,
            task,
        })
    }

    /// The state now.
    pub fn state(&self) -> PeerState {
        self.state.borrow().clone()
    }

    /// Waits (at most `timeout`) until the dial has an outcome, and returns the state.
    pub async fn settled(&mut self, timeout: Duration) -> PeerState {
        let _ =
            tokio::time::timeout(timeout, self.state.wait_for(|s| *s != PeerState::Dialing)).await;
        self.state()
    }
}

impl BitswapClient {
    /// Opens a bitswap 1.2.0 stream of its own (not the long-lived one [`Self::send`]
    /// uses), for tests that abuse streams.
    pub async fn open_bitswap(&mut self) -> anyhow::Result<Stream> {
        self.control
            .open_stream(self.server, Version::V1_2_0.protocol())
            .await
            .context("opening a bitswap stream")
    }

    /// Writes `frame` (any bytes, framed) on the long-lived stream, as one frame.
    pub async fn send_frame(&mut self, frame: &[u8]) -> anyhow::Result<()> {
        let s = self.stream().await?;
        write_frame(s, frame).await?;
        s.flush().await?;
        Ok(())
    }
}

/// Whether the peer ended `stream` (EOF or reset), waiting at most `timeout` for it.
/// Anything it sends before that is read and discarded.
pub async fn ended_by_peer(stream: &mut Stream, timeout: Duration) -> bool {
    use futures::AsyncReadExt;
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + timeout;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

/// TCP from `source` (another loopback address: a client of another address key),
/// noise and yamux.
fn tcp_from_transport(
    key: &libp2p::identity::Keypair,
    source: std::net::IpAddr,
) -> Result<
    libp2p::core::transport::Boxed<(PeerId, libp2p::core::muxing::StreamMuxerBox)>,
    Box<dyn std::error::Error + Send + Sync>,
> {
    use libp2p::core::Transport as _;
    let noise = noise::Config::new(key)?;
    Ok(TcpFrom(source)
        .upgrade(libp2p::core::upgrade::Version::V1)
        .authenticate(noise)
        .multiplex(yamux::Config::default())
        .timeout(Duration::from_secs(20))
        .map(|(peer, muxer), _| (peer, libp2p::core::muxing::StreamMuxerBox::new(muxer)))
        .boxed())
}
