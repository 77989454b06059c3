//! A relay that makes a backend slow: `127.0.0.<host>:<port>` to `127.0.0.1:<port>`,
//! the target's bytes paced with a token bucket. The relay takes the target's bytes
//! through a small socket buffer, so what the target has sent but the relay has not
//! yet passed on stays near one bucket's worth (the kernel would otherwise buffer
//! megabytes, and a paced link would answer in the order of long ago).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use anyhow::Context;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

use crate::ProxyOptions;

/// The relay's receive buffer towards the target.
const RECV_BUFFER: u32 = 64 * 1024;

async fn connect_small(port: u16) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.set_recv_buffer_size(RECV_BUFFER)?;
    s.connect(SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), port))
        .await
}

/// Relays `127.0.0.<host>:<port>` to `127.0.0.1:<port>` for `ports`; bytes from the
/// target are paced at `rate` bytes/s when `paced` says so for that port.
pub async fn paced_relay(
    host: u8,
    ports: &[(u16, bool)],
    rate: f64,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<()>>> {
    let mut tasks = Vec::new();
    for &(port, paced) in ports {
        let at = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 0, host)), port);
        let l = TcpListener::bind(at)
            .await
            .with_context(|| format!("binding {at}"))?;
        tasks.push(tokio::spawn(async move {
            while let Ok((inbound, _)) = l.accept().await {
                tokio::spawn(async move {
                    let Ok(target) = connect_small(port).await else {
                        return;
                    };
                    let _ = inbound.set_nodelay(true);
                    let _ = target.set_nodelay(true);
                    let (mut ir, mut iw) = inbound.into_split();
                    let (mut tr, mut tw) = target.into_split();
                    let up = tokio::spawn(async move {
                        let _ = tokio::io::copy(&mut ir, &mut tw).await;
                        let _ = tw.shutdown().await;
                    });
                    let _ = pace(&mut tr, &mut iw, if paced { rate } else { f64::INFINITY }).await;
                    let _ = iw.shutdown().await;
                    up.abort();
                });
            }
        }));
    }
    Ok(tasks)
}

/// Copies `r` to `w` at no more than `rate` bytes/s: a token bucket of 64 KiB, so an
/// idle link banks at most that much credit.
pub async fn pace(
    r: &mut (impl AsyncReadExt + Unpin),
    w: &mut (impl AsyncWriteExt + Unpin),
    rate: f64,
) -> std::io::Result<()> {
    let mut buf = vec![0u8; 16 * 1024];
    let burst = Duration::from_secs_f64(if rate.is_finite() {
        64.0 * 1024.0 / rate
    } else {
        0.0
    });
    // When every byte passed so far is paid for.
    let mut paid_until = Instant::now();
    loop {
        let n = r.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        w.write_all(&buf[..n]).await?;
        if rate.is_finite() {
            let now = Instant::now();
            paid_until = paid_until.max(now.checked_sub(burst).unwrap_or(now))
                + Duration::from_secs_f64(n as f64 / rate);
            if paid_until > now {
                tokio::time::sleep(paid_until - now).await;
            }
        }
    }
}

/// A proxy for one backend whose RPC port `api_port` is relayed on `127.0.0.<host>`:
/// no block cache (every block comes from the backend), and no want times out or is
/// shed (a paced backend is slow by design). `extra` flags follow.
pub fn proxy_behind_relay(host: u8, api_port: u16, extra: &[&str]) -> ProxyOptions {
    let base = [
        "--block-cache-bytes",
        "0",
        "--want-timeout",
        "60s",
        "--shed-after",
        "0",
    ];
    ProxyOptions {
        backends: vec![format!("/ip4/127.0.0.{host}/tcp/{api_port}")],
        args: base.iter().chain(extra).map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}
