//! Minimal Kubo-RPC client (`POST /api/v0/...`), for the kubo shim and the js-ipfs daemon.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// Client for a Kubo-style RPC API at `base_url` (`http://127.0.0.1:PORT`, without `/api/v0`).
#[derive(Clone, Debug)]
pub struct RpcClient {
    base_url: String,
    http: reqwest::Client,
}

impl RpcClient {
    /// Requests time out after 120 s (kubo shim `refs` waits up to its `--fetch-timeout`).
    pub fn new(base_url: &str) -> Self {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .no_proxy()
            .build()
            .expect("reqwest client");
        Self {
            base_url: base_url.trim_end_matches('/').to_string(),
            http,
        }
    }

    /// `http://127.0.0.1:PORT`
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// `http://127.0.0.1:PORT/api/v0/<cmd>?<args>`
    pub fn url(&self, cmd: &str, args: &[(&str, &str)]) -> reqwest::Url {
        let mut u =
            reqwest::Url::parse(&format!("{}/api/v0/{cmd}", self.base_url)).expect("valid RPC url");
        if !args.is_empty() {
            u.query_pairs_mut().extend_pairs(args);
        }
        u
    }

    /// `POST /api/v0/<cmd>?<args>` with an empty body; error (with the body) unless 2xx.
    pub async fn post(&self, cmd: &str, args: &[(&str, &str)]) -> Result<bytes::Bytes> {
        self.send(self.http.post(self.url(cmd, args)), cmd).await
    }

    /// Like [`post`](Self::post) and parse the body as one JSON value.
    pub async fn post_json(&self, cmd: &str, args: &[(&str, &str)]) -> Result<Value> {
        let body = self.post(cmd, args).await?;
        serde_json::from_slice(&body)
            .with_context(|| format!("{cmd}: bad JSON {:?}", String::from_utf8_lossy(&body)))
    }

    async fn send(&self, req: reqwest::RequestBuilder, cmd: &str) -> Result<bytes::Bytes> {
        let resp = req
            .send()
            .await
            .with_context(|| format!("RPC {cmd} to {}", self.base_url))?;
        let status = resp.status();
        let body = resp
            .bytes()
            .await
            .with_context(|| format!("RPC {cmd}: reading body"))?;
        if !status.is_success() {
            bail!(
                "RPC {cmd} at {}: HTTP {status}: {}",
                self.base_url,
                String::from_utf8_lossy(&body).trim()
            );
        }
        Ok(body)
    }

    /// `id`: `{"ID","PublicKey","Addresses","AgentVersion","ProtocolVersion","Protocols"}`
    pub async fn id(&self) -> Result<Value> {
        self.post_json("id", &[]).await
    }

    /// `add` of `data` as one file (multipart field "file"); returns the root CID (CIDv0).
    pub async fn add_bytes(&self, data: &[u8]) -> Result<String> {
        const BOUNDARY: &str = "kitsune-e2e-2f0c9e1d7a3b4c5d";
        let mut body = Vec::with_capacity(data.len() + 256);
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"data\"\r\n\
                 Content-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        let req = self
            .http
            .post(self.url("add", &[("pin", "true")]))
            .header(
                "Content-Type",
                format!("multipart/form-data; boundary={BOUNDARY}"),
            )
            .body(body);
        let out = self.send(req, "add").await?;
        // kubo: one JSON object; js-ipfs: ndjson, maybe with progress lines first
        let text = String::from_utf8_lossy(&out);
        text.lines()
            .rev()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v.get("Hash").and_then(Value::as_str).map(str::to_string))
            .next()
            .with_context(|| format!("add: no Hash in {text:?}"))
    }

    /// `refs?arg=CID[&recursive=true]`: the listed CIDs, in order (error if any line has Err).
    pub async fn refs(&self, cid: &str, recursive: bool) -> Result<Vec<String>> {
        let mut args = vec![("arg", cid)];
        if recursive {
            args.push(("recursive", "true"));
        }
        let body = self.post("refs", &args).await?;
        let mut out = Vec::new();
        for line in String::from_utf8_lossy(&body)
            .lines()
            .filter(|l| !l.is_empty())
        {
            let v: Value =
                serde_json::from_str(line).with_context(|| format!("refs line {line:?}"))?;
            if let Some(e) = v
                .get("Err")
                .and_then(Value::as_str)
                .filter(|e| !e.is_empty())
            {
                bail!("refs {cid}: {e}");
            }
            out.push(
                v.get("Ref")
                    .and_then(Value::as_str)
                    .with_context(|| format!("refs line without Ref: {line}"))?
                    .to_string(),
            );
        }
        Ok(out)
    }

    /// `block/get?arg=CID`: the raw block.
    pub async fn block_get(&self, cid: &str) -> Result<Vec<u8>> {
        Ok(self.post("block/get", &[("arg", cid)]).await?.to_vec())
    }

    /// `block/stat?arg=CID`: the block size.
    pub async fn block_stat(&self, cid: &str) -> Result<u64> {
        let v = self.post_json("block/stat", &[("arg", cid)]).await?;
        v.get("Size")
            .and_then(Value::as_u64)
            .with_context(|| format!("block/stat: no Size in {v}"))
    }

    /// `cat?arg=CID` (js-ipfs only; the kubo shim has no `cat`).
    pub async fn cat(&self, cid: &str) -> Result<Vec<u8>> {
        Ok(self.post("cat", &[("arg", cid)]).await?.to_vec())
    }

    /// `swarm/connect?arg=MADDR`
    pub async fn swarm_connect(&self, maddr: &str) -> Result<()> {
        self.post("swarm/connect", &[("arg", maddr)])
            .await
            .map(drop)
    }

    /// `swarm/peers`: connected peer IDs.
    pub async fn swarm_peers(&self) -> Result<Vec<String>> {
        let v = self.post_json("swarm/peers", &[]).await?;
        Ok(v.get("Peers")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|p| p.get("Peer").and_then(Value::as_str).map(str::to_string))
                    .collect()
            })
            .unwrap_or_default())
    }
}
