//! Command-line flags, each with an environment fallback (`KITSUNE_*`).
//! The short flags are the original go-libp2p-kitsune's.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use libp2p::Multiaddr;

use crate::preload::Cidr;
use crate::router::Policy;

#[derive(Debug, Clone, Parser)]
#[command(
    name = "kitsune-proxy",
    version,
    about = "A libp2p reverse proxy and load balancer for IPFS bitswap: one peer ID in front of many kubo nodes"
)]
pub struct Cli {
    /// Identity key file: the bytes `ipfs key export` writes, or base64 as in kubo's
    /// Identity.PrivKey, or a kubo config JSON. Created (Ed25519, mode 0600) if missing.
    #[arg(
        short = 'k',
        long = "key",
        env = "KITSUNE_KEY",
        default_value = "./key"
    )]
    pub key: PathBuf,

    /// libp2p listen multiaddr, TCP or QUIC-v1 (repeatable).
    #[arg(
        short = 'l',
        long = "listen",
        env = "KITSUNE_LISTEN",
        value_delimiter = ',',
        default_value = "/ip4/0.0.0.0/tcp/0"
    )]
    pub listen: Vec<Multiaddr>,

    /// WebSocket listen multiaddr (`/ws` is appended when missing). Repeatable.
    #[arg(
        short = 'w',
        long = "ws-listen",
        env = "KITSUNE_WS_LISTEN",
        value_delimiter = ','
    )]
    pub ws_listen: Vec<Multiaddr>,

    /// Backends: comma-separated kubo RPC API multiaddrs (/ip4, /ip6, /dns4, /dns6 with /tcp),
    /// e.g. /ip4/10.0.1.42/tcp/5001,/dns4/kubo-1/tcp/5001.
    #[arg(
        short = 'd',
        long = "downstream",
        env = "KITSUNE_DOWNSTREAM",
        value_delimiter = ',',
        conflicts_with_all = ["backends_file", "backends_url"]
    )]
    pub downstream: Vec<Multiaddr>,

    /// Backends from a file: one kubo RPC multiaddr a line (as -d), `#` comments; re-read
    /// when it changes (an atomic rename included).
    #[arg(long, env = "KITSUNE_BACKENDS_FILE", conflicts_with = "backends_url")]
    pub backends_file: Option<PathBuf>,

    /// Backends streamed by the operator's watch channel
    /// (`http://OPERATOR/v1/backends/NAMESPACE/NAME`).
    #[arg(long, env = "KITSUNE_BACKENDS_URL")]
    pub backends_url: Option<String>,

    /// The bearer token for --backends-url (a projected ServiceAccount token); re-read
    /// on every connect.
    #[arg(long, env = "KITSUNE_BACKENDS_TOKEN_FILE", requires = "backends_url")]
    pub backends_token_file: Option<PathBuf>,

    /// PEM bundle of the CAs trusted for an https --backends-url (only these; without
    /// it, the system's roots). Read at start.
    #[arg(long, env = "KITSUNE_BACKENDS_CA_FILE", requires = "backends_url")]
    pub backends_ca_file: Option<PathBuf>,

    /// The same CA bundle as PEM text, for when it comes through the environment (the
    /// operator sets it when its watch channel serves TLS). A CA certificate is public.
    #[arg(
        long,
        env = "KITSUNE_BACKENDS_CA_PEM",
        requires = "backends_url",
        conflicts_with = "backends_ca_file",
        hide_env_values = true,
        // PEM text starts with "-----BEGIN".
        allow_hyphen_values = true
    )]
    pub backends_ca_pem: Option<String>,

    /// Enable preload mode: serve /api/v0/refs on this port, and the libp2p WebSocket
    /// listener on the same port (so a Service with ClientIP affinity keeps a client's
    /// WebSocket and refs call on one replica).
    #[arg(short = 'p', long = "preload-port", env = "KITSUNE_PRELOAD_PORT")]
    pub preload_port: Option<u16>,

    #[command(flatten)]
    pub preload: PreloadArgs,

    /// Where /metrics, /healthz and /readyz are served.
    #[arg(long, env = "KITSUNE_METRICS_ADDR", default_value = "0.0.0.0:9090")]
    pub metrics_addr: SocketAddr,

    /// How wants choose a backend.
    #[arg(long, env = "KITSUNE_BALANCE", value_enum, default_value_t = Balance::Rendezvous)]
    pub balance: Balance,

    /// Fair queueing among clients when the backends are the bottleneck: clients are
    /// served in turn by bytes, so a client with thousands of wants cannot starve one
    /// with ten. false: oldest want first, whoever asked.
    #[arg(long, env = "KITSUNE_FAIR_SCHEDULING", default_value_t = true, action = clap::ArgAction::Set)]
    pub fair_scheduling: bool,

    /// Log format; the level comes from RUST_LOG (default `info`).
    #[arg(long, env = "KITSUNE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(flatten)]
    pub limits: Limits,

    #[command(flatten)]
    pub shared: SharedPortArgs,

    /// A multiaddr to announce instead of the listen addresses (repeatable): what
    /// identify tells peers and what the start-up lines print, e.g. the Service's
    /// public `/dns4/ipfs.example.com/tcp/443/tls/ws`. Without it, the listen
    /// addresses are announced.
    #[arg(long = "announce", env = "KITSUNE_ANNOUNCE", value_delimiter = ',')]
    pub announce: Vec<Multiaddr>,

    /// After SIGTERM, how long connections already open are served on while their
    /// wants finish (new ones are refused and /readyz fails at once). A little under
    /// Kubernetes' default 30 s grace period, which the operator sets to this plus 5 s.
    #[arg(long, env = "KITSUNE_DRAIN_TIMEOUT", value_parser = humantime::parse_duration, default_value = "25s")]
    pub drain_timeout: Duration,

    /// Bytes of verified blocks kept in memory to answer repeated wants without a
    /// backend (each block counts its data plus 256 bytes); 0 turns the cache off.
    #[arg(long, env = "KITSUNE_BLOCK_CACHE_BYTES", default_value_t = 128 * 1024 * 1024)]
    pub block_cache_bytes: u64,

    /// Backends one --backends-url snapshot may name; a bigger snapshot is refused
    /// (with one warning) and the last set kept.
    #[arg(long, env = "KITSUNE_MAX_BACKENDS", default_value_t = crate::sources::watch::MAX_BACKENDS)]
    pub max_backends: usize,

    #[command(flatten)]
    pub gateway: GatewayArgs,
}

/// The shared port without preload, and TLS on it.
#[derive(Debug, Clone, clap::Args)]
pub struct SharedPortArgs {
    /// Serve the shared port (HTTP, and the libp2p WebSocket listener, on one TCP port)
    /// without turning preload on. `-p` serves the same port with preload; given both,
    /// they must be the same number.
    #[arg(long = "http-port", env = "KITSUNE_HTTP_PORT")]
    pub http_port: Option<u16>,
    /// PEM certificate chain (leaf first) for TLS on the shared port: it then serves
    /// `wss`/`https` (ALPN h2, http/1.1) beside plaintext, told apart by the first byte.
    /// Re-read when the file changes.
    #[arg(long, env = "KITSUNE_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// PEM private key of --tls-cert-file. Re-read when the file changes.
    #[arg(long, env = "KITSUNE_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
}

/// The trustless HTTP gateway and `/routing/v1` on the shared port, and its bounds.
#[derive(Debug, Clone, clap::Args)]
pub struct GatewayArgs {
    /// Serve a trustless gateway (`/ipfs/{cid}`, raw blocks and CARs) and
    /// `/routing/v1/providers` on the shared port (needs --http-port or -p).
    #[arg(long = "gateway", env = "KITSUNE_GATEWAY")]
    pub enabled: bool,
    /// Gateway requests served at once; more are answered 429.
    #[arg(id = "gateway_max_concurrent", long = "gateway-max-concurrent", env = "KITSUNE_GATEWAY_MAX_CONCURRENT", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_concurrent: u32,
    /// Gateway requests served at once for one client address (IPv4, or IPv6 /64);
    /// up to 4 times as many more wait for one of its slots (within --gateway-timeout),
    /// and past those, 429.
    #[arg(id = "gateway_max_per_client", long = "gateway-max-per-client", env = "KITSUNE_GATEWAY_MAX_PER_CLIENT", default_value_t = 32, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_per_client: u32,
    /// The whole budget of one gateway request, a CAR's last byte included: past it,
    /// 504, or a CAR cut short.
    #[arg(id = "gateway_timeout", long = "gateway-timeout", env = "KITSUNE_GATEWAY_TIMEOUT", value_parser = humantime::parse_duration, default_value = "2m")]
    pub timeout: Duration,
    /// Blocks in one CAR response; a bigger DAG's CAR is cut short (an error, never a
    /// CAR that looks complete).
    #[arg(
        id = "gateway_max_car_blocks",
        long = "gateway-max-car-blocks",
        env = "KITSUNE_GATEWAY_MAX_CAR_BLOCKS",
        default_value_t = 100_000
    )]
    pub max_car_blocks: usize,
    /// Block bytes in one CAR response; past it, the CAR is cut short likewise.
    #[arg(id = "gateway_max_car_bytes", long = "gateway-max-car-bytes", env = "KITSUNE_GATEWAY_MAX_CAR_BYTES", default_value_t = 1 << 30)]
    pub max_car_bytes: u64,
}

impl GatewayArgs {
    /// The gateway's configuration, its clients grouped by `address_key`.
    pub fn config(&self, address_key: crate::net::ip_limit::AddressKey) -> crate::gateway::Config {
        crate::gateway::Config {
            max_concurrent: self.max_concurrent as usize,
            max_per_client: self.max_per_client as usize,
            timeout: self.timeout,
            max_car_blocks: self.max_car_blocks,
            max_car_bytes: self.max_car_bytes,
            address_key,
        }
    }
}

/// Preload mode's address, trust and bounds.
#[derive(Debug, Clone, clap::Args)]
pub struct PreloadArgs {
    /// The address the shared port (-p or --http-port) binds (`::` for dual-stack).
    #[arg(
        long = "preload-bind",
        env = "KITSUNE_PRELOAD_BIND",
        default_value = "0.0.0.0"
    )]
    pub bind: IpAddr,
    /// A proxy or load balancer whose X-Forwarded-For is believed (CIDR or address;
    /// repeatable). Others' X-Forwarded-For is ignored.
    #[arg(
        long = "trusted-proxy",
        env = "KITSUNE_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    pub trusted_proxies: Vec<Cidr>,
    /// /api/v0/refs calls in flight at once; more are answered 429.
    #[arg(
        long = "preload-max-concurrent",
        env = "KITSUNE_PRELOAD_MAX_CONCURRENT",
        default_value_t = 64
    )]
    pub max_concurrent: usize,
    /// The whole budget of one refs call at the backend (its streamed body included);
    /// past it the call fails (504, or a cut stream).
    #[arg(long = "preload-timeout", env = "KITSUNE_PRELOAD_TIMEOUT", value_parser = humantime::parse_duration, default_value = "5m")]
    pub timeout: Duration,
    /// CIDs one preloaded DAG may grow to; the rest of a bigger DAG is not fetched.
    #[arg(
        long = "preload-max-dag-blocks",
        env = "KITSUNE_PRELOAD_MAX_DAG_BLOCKS",
        default_value_t = 100_000
    )]
    pub max_dag_blocks: usize,
    /// CIDs all open preloads may hold together.
    #[arg(
        long = "preload-max-total-blocks",
        env = "KITSUNE_PRELOAD_MAX_TOTAL_BLOCKS",
        default_value_t = 1_000_000
    )]
    pub max_total_blocks: usize,
    /// How long a preload's reverse wants stay allowed after its refs call ends.
    #[arg(long = "preload-linger", env = "KITSUNE_PRELOAD_LINGER", value_parser = humantime::parse_duration, default_value = "30s")]
    pub linger: Duration,
    /// Refs calls in flight from one address key (see --ipv4-prefix-len); more are
    /// answered 429. A share of --preload-max-concurrent.
    #[arg(
        long = "preload-max-concurrent-per-address",
        env = "KITSUNE_PRELOAD_MAX_CONCURRENT_PER_ADDRESS",
        default_value_t = 8
    )]
    pub max_concurrent_per_address: usize,
    /// Preloads (in flight or lingering) one address key may hold open; more are
    /// answered 429. A share of the 4 × --preload-max-concurrent preloads.
    #[arg(
        long = "preload-max-sessions-per-address",
        env = "KITSUNE_PRELOAD_MAX_SESSIONS_PER_ADDRESS",
        default_value_t = 32
    )]
    pub max_sessions_per_address: usize,
    /// Block bytes one preload may pass from its uploader to the backend; past it the
    /// backend's further wants for that DAG are refused.
    #[arg(
        long = "preload-max-bytes-per-session",
        env = "KITSUNE_PRELOAD_MAX_BYTES_PER_SESSION",
        default_value_t = 1 << 30
    )]
    pub max_bytes_per_session: u64,
    /// The same for all the open preloads of one address key together.
    #[arg(
        long = "preload-max-bytes-per-address",
        env = "KITSUNE_PRELOAD_MAX_BYTES_PER_ADDRESS",
        default_value_t = 4 << 30
    )]
    pub max_bytes_per_address: u64,
}

/// `--balance`: the command line's names for the router's [`Policy`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Balance {
    /// Rendezvous hashing of the CID with bounded loads: each CID goes to the same
    /// backend from every replica (one cache for repeated content); a backend over its
    /// share of the wants in flight is passed over for the next in the CID's order
    Rendezvous,
    /// Rotate through the backends: even load, no cache affinity
    RoundRobin,
}

impl From<Balance> for Policy {
    fn from(balance: Balance) -> Self {
        match balance {
            Balance::Rendezvous => Policy::Rendezvous,
            Balance::RoundRobin => Policy::RoundRobin,
        }
    }
}

pub use kitsune_common::logging::LogFormat;

/// Everything a remote peer could otherwise grow without bound.
#[derive(Debug, Clone, clap::Args)]
pub struct Limits {
    /// Wants one client may hold at once; more are answered DONT_HAVE.
    #[arg(long, env = "KITSUNE_MAX_WANTS_PER_CLIENT", default_value_t = 16384)]
    pub max_wants_per_client: usize,
    /// Wants outstanding at one backend (kubo drops past 1024 per peer).
    #[arg(long, env = "KITSUNE_MAX_INFLIGHT_PER_BACKEND", default_value_t = 1000)]
    pub max_inflight_per_backend: usize,
    /// Wants waiting for room at a backend, in total; more are refused.
    #[arg(long, env = "KITSUNE_MAX_QUEUED_WANTS", default_value_t = 262_144)]
    pub max_queued_wants: usize,
    /// How long a backend may take to answer a want before it moves to the next one.
    #[arg(long, env = "KITSUNE_WANT_TIMEOUT", value_parser = humantime::parse_duration, default_value = "10s")]
    pub want_timeout: Duration,
    /// Concurrent inbound bitswap streams per peer; more are reset.
    #[arg(long, env = "KITSUNE_MAX_STREAMS_PER_PEER", default_value_t = 16)]
    pub max_streams_per_peer: usize,
    /// Bytes of large client frames still arriving, over all clients (each frame's
    /// first 64 KiB are not counted); a stream waits for room.
    #[arg(long, env = "KITSUNE_MAX_CLIENT_FRAME_BYTES", default_value_t = 256 * 1024 * 1024, value_parser = at_least_a_read_chunk)]
    pub max_client_frame_bytes: usize,
    /// How long a client frame may take to arrive, from its first byte; a stream
    /// that takes longer is reset.
    #[arg(long, env = "KITSUNE_FRAME_TIMEOUT", value_parser = humantime::parse_duration, default_value = "2m")]
    pub frame_timeout: Duration,
    /// Established plus pending inbound connections from one IP address.
    #[arg(long, env = "KITSUNE_MAX_CONNECTIONS_PER_IP", default_value_t = 64)]
    pub max_connections_per_ip: u32,
    /// Established inbound connections in total.
    #[arg(long, env = "KITSUNE_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: u32,
    /// Pending (handshaking) inbound connections in total.
    #[arg(long, env = "KITSUNE_MAX_PENDING_CONNECTIONS", default_value_t = 256)]
    pub max_pending_connections: u32,
    /// One client's send queue: its block wants go on as far as half of it holds their
    /// blocks, the rest wait until it reads; past the whole, it is disconnected.
    #[arg(long, env = "KITSUNE_MAX_CLIENT_BUFFER", default_value_t = 64 * 1024 * 1024)]
    pub max_client_buffer_bytes: usize,
    /// Idle connections (no open streams) are closed after this long.
    #[arg(long, env = "KITSUNE_IDLE_TIMEOUT", value_parser = humantime::parse_duration, default_value = "60s")]
    pub idle_timeout: Duration,
    /// The IPv4 prefix length one address key covers (per-address limits count per
    /// key): 32, each address.
    #[arg(long, env = "KITSUNE_IPV4_PREFIX_LEN", default_value_t = 32, value_parser = clap::value_parser!(u8).range(0..=32))]
    pub ipv4_prefix_len: u8,
    /// The IPv6 prefix length one address key covers: 64, one site (a host's privacy
    /// addresses rotate within its /64).
    #[arg(long, env = "KITSUNE_IPV6_PREFIX_LEN", default_value_t = 64, value_parser = clap::value_parser!(u8).range(0..=128))]
    pub ipv6_prefix_len: u8,
    /// Wants the clients of one address key (see --ipv4-prefix-len) may hold together;
    /// more are answered DONT_HAVE. A quarter of --max-queued-wants: one address,
    /// whatever its number of peer IDs, cannot fill the queue.
    #[arg(long, env = "KITSUNE_MAX_WANTS_PER_ADDRESS", default_value_t = 65_536)]
    pub max_wants_per_address: usize,
    /// Load shedding: a new want that would wait longer than this for an answer at
    /// every backend (its queue at its measured answer rate) is answered at once,
    /// DONT_HAVE over bitswap, 503 over HTTP. 0 turns it off.
    #[arg(long, env = "KITSUNE_SHED_AFTER", value_parser = humantime::parse_duration, default_value = "30s")]
    pub shed_after: Duration,
    /// New wants a second the clients of one address key may send (a token bucket
    /// holding one second's worth); more wait and go on as the budget allows. 0: no
    /// limit.
    #[arg(
        long,
        env = "KITSUNE_WANTS_PER_SECOND_PER_ADDRESS",
        default_value_t = 0
    )]
    pub wants_per_second_per_address: u32,
    /// Block bytes a second the clients of one address key are sent, over bitswap
    /// and the HTTP gateway (a token bucket holding one second's worth); over it
    /// their new wants wait, and gateway responses pause, until it is paid back. 0:
    /// no limit.
    #[arg(
        long,
        env = "KITSUNE_BYTES_PER_SECOND_PER_ADDRESS",
        default_value_t = 0
    )]
    pub bytes_per_second_per_address: u64,
}

impl Limits {
    /// How per-address limits key an address.
    pub fn address_key(&self) -> crate::net::ip_limit::AddressKey {
        crate::net::ip_limit::AddressKey {
            v4_prefix: self.ipv4_prefix_len,
            v6_prefix: self.ipv6_prefix_len,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Cli::parse_from(["kitsune-proxy"]).limits
    }
}

/// A frame room smaller than one read chunk could never grant a chunk: readers of
/// large frames would wait forever.
fn at_least_a_read_chunk(s: &str) -> Result<usize, String> {
    let n: usize = s.parse().map_err(|e| format!("{e}"))?;
    let min = crate::bitswap::codec::READ_CHUNK;
    if n < min {
        return Err(format!("must be at least {min} bytes"));
    }
    Ok(n)
}

impl Cli {
    /// The shared port, from `-p` or `--http-port`: one port, so two different numbers
    /// are an error, as is TLS with no port to serve it on.
    pub fn shared_port(&self) -> anyhow::Result<Option<u16>> {
        let port = match (self.preload_port, self.shared.http_port) {
            (Some(p), Some(h)) if p != h => anyhow::bail!(
                "-p/--preload-port {p} and --http-port {h} differ: they name one shared port \
                 (HTTP and WebSocket); give one of them, or the same number to both"
            ),
            (p, h) => p.or(h),
        };
        if port.is_none() && self.shared.tls_cert_file.is_some() {
            anyhow::bail!(
                "--tls-cert-file is for the shared port: give --http-port (or -p) as well"
            );
        }
        if port.is_none() && self.gateway.enabled {
            anyhow::bail!(
                "--gateway is served on the shared port: give --http-port (or -p) as well"
            );
        }
        Ok(port)
    }

    /// The shared port's certificate files, when TLS is on.
    pub fn tls_files(&self) -> Option<kitsune_common::tls::TlsFiles> {
        match (&self.shared.tls_cert_file, &self.shared.tls_key_file) {
            (Some(cert), Some(key)) => Some(kitsune_common::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }

    /// WebSocket listen addresses with `/ws` appended where it is missing.
    pub fn ws_listen_addrs(&self) -> Vec<Multiaddr> {
        self.ws_listen
            .iter()
            .map(|a| {
                let has_ws = a
                    .iter()
                    .any(|p| matches!(p, libp2p::multiaddr::Protocol::Ws(_)));
                if has_ws {
                    a.clone()
                } else {
                    a.clone().with(libp2p::multiaddr::Protocol::Ws("/".into()))
                }
            })
            .collect()
    }

    /// The preload tables' bounds: one session per call in flight, plus room for
    /// those lingering after their call; a session lives at most the call's budget
    /// plus the linger.
    pub fn preload_limits(&self) -> crate::preload::Limits {
        let p = &self.preload;
        crate::preload::Limits {
            max_sessions: p.max_concurrent.saturating_mul(4).max(1),
            max_blocks_per_session: p.max_dag_blocks,
            max_total_blocks: p.max_total_blocks,
            linger: p.linger,
            max_lifetime: p.timeout + p.linger,
            max_sessions_per_address: p.max_sessions_per_address,
            max_bytes_per_session: p.max_bytes_per_session,
            max_bytes_per_address: p.max_bytes_per_address,
        }
    }

    pub fn router_config(&self) -> crate::router::Config {
        crate::router::Config {
            policy: self.balance.into(),
            fair_scheduling: self.fair_scheduling,
            max_wants_per_client: self.limits.max_wants_per_client,
            max_inflight_per_backend: self.limits.max_inflight_per_backend,
            max_queued_wants: self.limits.max_queued_wants,
            want_timeout: self.limits.want_timeout,
            max_wants_per_address: self.limits.max_wants_per_address,
            address_key: self.limits.address_key(),
            shed_after: self.limits.shed_after,
            wants_per_second_per_address: self.limits.wants_per_second_per_address,
            bytes_per_second_per_address: self.limits.bytes_per_second_per_address,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_flags_parse() {
        let cli = Cli::try_parse_from([
            "kitsune-proxy",
            "-d",
            "/ip4/127.0.0.1/tcp/5001,/dns4/kubo/tcp/5002",
            "-l",
            "/ip4/0.0.0.0/tcp/4441",
            "-l",
            "/ip4/0.0.0.0/udp/4441/quic-v1",
            "-w",
            "/ip4/0.0.0.0/tcp/8442",
            "-k",
            "/tmp/k",
            "-p",
            "8441",
        ])
        .unwrap();
        assert_eq!(cli.downstream.len(), 2);
        assert_eq!(cli.listen.len(), 2);
        assert_eq!(cli.preload_port, Some(8441));
        assert_eq!(
            cli.ws_listen_addrs()[0].to_string(),
            "/ip4/0.0.0.0/tcp/8442/ws"
        );
        assert_eq!(cli.limits.max_wants_per_client, 16384);
    }

    #[test]
    fn backend_sources_are_mutually_exclusive() {
        let d = ["-d", "/ip4/127.0.0.1/tcp/5001"];
        let file = ["--backends-file", "/etc/kitsune/backends"];
        let url = ["--backends-url", "http://op/v1/backends/ns/kp"];
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("kitsune-proxy").chain(args.iter().copied()))
        };
        assert!(parse(&[d[0], d[1], file[0], file[1]]).is_err());
        assert!(parse(&[d[0], d[1], url[0], url[1]]).is_err());
        assert!(parse(&[file[0], file[1], url[0], url[1]]).is_err());
        assert!(
            parse(&["--backends-token-file", "/t"]).is_err(),
            "a token needs a URL"
        );
        assert!(
            parse(&["--backends-ca-file", "/ca.pem"]).is_err(),
            "a CA needs a URL"
        );
        let cli = parse(&[
            url[0],
            url[1],
            "--backends-token-file",
            "/t",
            "--backends-ca-file",
            "/ca.pem",
        ])
        .unwrap();
        assert_eq!(cli.backends_url.as_deref(), Some(url[1]));
        assert_eq!(cli.backends_ca_file.as_deref(), Some("/ca.pem".as_ref()));
        assert!(parse(&file).unwrap().backends_file.is_some());
        let pem = "-----BEGIN CERTIFICATE-----";
        assert!(
            parse(&["--backends-ca-pem", pem]).is_err(),
            "a CA needs a URL"
        );
        assert!(
            parse(&[
                url[0],
                url[1],
                "--backends-ca-file",
                "/ca.pem",
                "--backends-ca-pem",
                pem
            ])
            .is_err(),
            "one CA bundle, not two"
        );
        let cli = parse(&[url[0], url[1], "--backends-ca-pem", pem]).unwrap();
        assert_eq!(cli.backends_ca_pem.as_deref(), Some(pem));
    }

    #[test]
    fn ws_suffix_is_not_doubled_and_bad_addrs_are_refused() {
        let cli = Cli::try_parse_from(["kitsune-proxy", "-w", "/ip4/127.0.0.1/tcp/1/ws"]).unwrap();
        assert_eq!(
            cli.ws_listen_addrs()[0].to_string(),
            "/ip4/127.0.0.1/tcp/1/ws"
        );
        assert!(Cli::try_parse_from(["kitsune-proxy", "-d", "not-a-multiaddr"]).is_err());
        assert!(Cli::try_parse_from(["kitsune-proxy", "-p", "70000"]).is_err());
    }

    #[test]
    fn preload_flags_parse() {
        let cli = Cli::try_parse_from([
            "kitsune-proxy",
            "-p",
            "8441",
            "--trusted-proxy",
            "10.0.0.0/8,fd00::/8",
            "--trusted-proxy",
            "192.0.2.1",
            "--preload-bind",
            "::",
        ])
        .unwrap();
        assert_eq!(cli.preload.trusted_proxies.len(), 3);
        assert!(cli.preload.bind.is_ipv6());
        assert_eq!(cli.preload_limits().max_sessions, 256);
        assert!(Cli::try_parse_from(["kitsune-proxy", "--trusted-proxy", "10.0.0.0/40"]).is_err());
    }

    #[test]
    fn the_shared_port_comes_from_either_flag_and_is_one_port() {
        let parse = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("kitsune-proxy").chain(args.iter().copied()))
                .unwrap()
        };
        assert_eq!(parse(&[]).shared_port().unwrap(), None);
        assert_eq!(parse(&["-p", "8441"]).shared_port().unwrap(), Some(8441));
        let http = parse(&["--http-port", "8443"]);
        assert_eq!(http.shared_port().unwrap(), Some(8443));
        assert_eq!(
            http.preload_port, None,
            "--http-port does not turn preload on"
        );
        let both = parse(&["-p", "8443", "--http-port", "8443"]);
        assert_eq!(both.shared_port().unwrap(), Some(8443));
        let e = parse(&["-p", "8441", "--http-port", "8443"])
            .shared_port()
            .unwrap_err()
            .to_string();
        assert!(e.contains("8441") && e.contains("8443"), "{e}");

        let tls = ["--tls-cert-file", "/c.pem", "--tls-key-file", "/k.pem"];
        let e = parse(&tls).shared_port().unwrap_err().to_string();
        assert!(e.contains("--http-port"), "{e}");
        let cli = parse(&[tls[0], tls[1], tls[2], tls[3], "--http-port", "443"]);
        assert_eq!(cli.shared_port().unwrap(), Some(443));
        assert_eq!(cli.tls_files().unwrap().key, PathBuf::from("/k.pem"));
        assert!(
            Cli::try_parse_from(["kitsune-proxy", "--http-port", "1", "--tls-cert-file", "/c"])
                .is_err(),
            "a certificate needs its key"
        );
    }

    #[test]
    fn announce_is_repeatable_and_checked() {
        let cli = Cli::try_parse_from([
            "kitsune-proxy",
            "--announce",
            "/dns4/ipfs.example.com/tcp/443/tls/ws",
            "--announce",
            "/ip4/203.0.113.7/tcp/4001,/ip4/203.0.113.7/udp/4001/quic-v1",
        ])
        .unwrap();
        assert_eq!(cli.announce.len(), 3);
        assert!(Cli::try_parse_from(["kitsune-proxy", "--announce", "example.com:443"]).is_err());
        assert!(
            Cli::try_parse_from(["kitsune-proxy"])
                .unwrap()
                .announce
                .is_empty()
        );
    }

    #[test]
    fn balance_names_map_to_the_router_policies() {
        let policy = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("kitsune-proxy").chain(args.iter().copied()))
                .map(|cli| cli.router_config().policy)
        };
        assert_eq!(policy(&[]).unwrap(), Policy::Rendezvous);
        assert_eq!(
            policy(&["--balance", "rendezvous"]).unwrap(),
            Policy::Rendezvous
        );
        assert_eq!(
            policy(&["--balance", "round-robin"]).unwrap(),
            Policy::RoundRobin
        );
        assert!(policy(&["--balance", "random"]).is_err());
    }
}

#[cfg(test)]
mod gateway_tests {
    use super::*;

    #[test]
    fn gateway_flags_parse_and_need_the_shared_port() {
        let alone = Cli::try_parse_from(["kitsune-proxy", "--gateway"]).unwrap();
        let e = alone.shared_port().unwrap_err().to_string();
        assert!(e.contains("--http-port"), "{e}");
        let http = Cli::try_parse_from(["kitsune-proxy", "--http-port", "8441", "--gateway"]);
        assert_eq!(http.unwrap().shared_port().unwrap(), Some(8441));
        let cli = Cli::try_parse_from([
            "kitsune-proxy",
            "-p",
            "8441",
            "--gateway",
            "--gateway-max-per-client",
            "4",
            "--gateway-timeout",
            "30s",
        ])
        .unwrap();
        assert!(cli.gateway.enabled);
        let c = cli.gateway.config(cli.limits.address_key());
        assert_eq!((c.max_per_client, c.timeout.as_secs()), (4, 30));
        assert_eq!(c.max_concurrent, 256);
        assert!(Cli::try_parse_from(["kitsune-proxy", "--gateway-max-per-client", "0"]).is_err());
    }
}
