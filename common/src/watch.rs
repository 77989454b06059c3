//! The watch-channel contract: what the operator streams to proxy pods.
//!
//! Transport: `GET /v1/backends/{namespace}/{name}` answers `application/x-ndjson`, one
//! [`WatchEvent`] per line. Every snapshot is the **full** backend set with a version that
//! only grows, so a client that reconnects simply replaces what it had (no diffs on the
//! wire, nothing to replay). Heartbeats keep idle streams provably alive.

use serde::{Deserialize, Serialize};

/// The versioned path prefix; the full path appends `{namespace}/{name}`.
pub const WATCH_PATH_PREFIX: &str = "/v1/backends";
/// The content type of the stream.
pub const CONTENT_TYPE: &str = "application/x-ndjson";
/// The audience the proxy's projected ServiceAccount token is minted for.
pub const TOKEN_AUDIENCE: &str = "kitsune-watch";
/// The longest line a client accepts; a larger one is a protocol error.
pub const MAX_LINE_BYTES: usize = 4 * 1024 * 1024;

/// The path a proxy of KitsuneProxy `namespace/name` watches.
pub fn watch_path(namespace: &str, name: &str) -> String {
    format!("{WATCH_PATH_PREFIX}/{namespace}/{name}")
}

/// One line of the stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum WatchEvent {
    /// The complete live backend set.
    Snapshot(Snapshot),
    /// Nothing changed; the version is the last snapshot's.
    Heartbeat { version: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    pub version: u64,
    pub backends: Vec<Backend>,
}

/// One ready kubo backend.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Backend {
    /// An IP address (v4 or v6) or a DNS name.
    pub address: String,
    /// The kubo HTTP RPC port (`/api/v0/id` lives there).
    pub rpc_port: u16,
    /// The kubo libp2p swarm port, if known; otherwise the proxy learns it from `/api/v0/id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub swarm_port: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_have_a_stable_wire_form() {
        let snap = WatchEvent::Snapshot(Snapshot {
            version: 7,
            backends: vec![Backend {
                address: "10.0.0.5".into(),
                rpc_port: 5001,
                swarm_port: Some(4001),
                pod_name: Some("kubo-0".into()),
                zone: None,
            }],
        });
        let line = serde_json::to_string(&snap).unwrap();
        assert_eq!(
            line,
            r#"{"type":"snapshot","version":7,"backends":[{"address":"10.0.0.5","rpc_port":5001,"swarm_port":4001,"pod_name":"kubo-0"}]}"#
        );
        assert_eq!(serde_json::from_str::<WatchEvent>(&line).unwrap(), snap);
        let hb: WatchEvent = serde_json::from_str(r#"{"type":"heartbeat","version":7}"#).unwrap();
        assert_eq!(hb, WatchEvent::Heartbeat { version: 7 });
        assert!(serde_json::from_str::<WatchEvent>(r#"{"type":"bogus"}"#).is_err());
        assert_eq!(watch_path("ns", "kp"), "/v1/backends/ns/kp");
    }
}
