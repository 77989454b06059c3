//! Goal 5: watch-channel propagation, from a change in the operator's backend index to
//! the new set reaching each proxy's engine (which diffs its pool on receipt).
//!
//! The operator's real watch server and index (`crate::operator::WatchServer`) and the
//! proxy's real watch client (`kitsune_proxy::sources::watch`), over loopback HTTP, in
//! this process. Each subscriber's engine end is a task that timestamps every set it is
//! handed; a change counts as propagated to a subscriber when that set arrives. One
//! change at a time (the next waits for every subscriber), so nothing is coalesced.

use std::time::{Duration, Instant};

use anyhow::Context;
use kitsune_proxy::engine::{Command, Handle};
use kitsune_proxy::sources::watch::{self, WatchConfig, WatchStatus};
use tokio::sync::mpsc;

use super::{Section, ms, percentile};
use crate::operator::{SliceBackend, WatchServer};
use crate::scratch_dir;

pub struct Config {
    /// Index changes measured per subscriber count.
    pub changes: usize,
    /// Subscriber counts (proxy replicas watching one KitsuneProxy).
    pub subscribers: Vec<usize>,
}

const T: Duration = Duration::from_secs(30);

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let mut s = Section::new(
        "5. Watch-channel propagation",
        format!(
            "The operator's watch server and backend index and the proxy's watch client \
             (the real code, in one process, over loopback HTTP with NDJSON). {} index \
             changes, one at a time (an EndpointSlice applied or deleted, the set toggling \
             between one and two backends); each is timed from the index write to the new \
             set reaching each subscriber's engine channel. {} build.",
            cfg.changes,
            super::build_profile()
        ),
    );
    for &n in &cfg.subscribers {
        let (each, last) = measure(n, cfg.changes).await?;
        s.line(format!(
            "{n} subscriber(s): p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms; \
             to the last subscriber p50 {:.2} ms, p99 {:.2} ms (goal: p99 < 500 ms)",
            ms(percentile(&each, 0.5)),
            ms(percentile(&each, 0.99)),
            ms(*each.last().expect("samples")),
            ms(percentile(&last, 0.5)),
            ms(percentile(&last, 0.99)),
        ));
    }
    Ok(s)
}

fn backend(i: u16) -> SliceBackend {
    SliceBackend {
        pod: format!("kubo-{i}"),
        rpc_port: 5001 + i,
        swarm_port: 4001 + i,
    }
}

/// Per-subscriber and to-the-last-subscriber latencies, sorted.
async fn measure(n: usize, changes: usize) -> anyhow::Result<(Vec<Duration>, Vec<Duration>)> {
    let dir = scratch_dir("propagation")?;
    let token = WatchServer::write_token(dir.path())?;
    let mut server = WatchServer::start(None, 1, Duration::from_secs(5)).await?;
    let sets = [vec![backend(0)], vec![backend(0), backend(1)]];
    server.set_backends(&sets[0]);

    // Every subscriber's engine end reports (subscriber, arrival, set size).
    let (arrivals_tx, mut arrivals) = mpsc::unbounded_channel::<Arrival>();
    let mut tasks = Vec::new();
    for i in 0..n {
        let (handle, mut commands) = Handle::channel(16);
        let client = WatchConfig::new(server.url(), Some(token.clone()));
        tasks.push(tokio::spawn(watch::run(
            client,
            handle,
            WatchStatus::default(),
        )));
        let tx = arrivals_tx.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(Command::SetBackends(set)) = commands.recv().await {
                let _ = tx.send((i, Instant::now(), set.len()));
            }
        }));
    }
    wait_all(n, 1, &mut arrivals).await?;

    let (mut each, mut last) = (Vec::new(), Vec::new());
    for c in 0..changes {
        let set = &sets[(c + 1) % 2];
        let start = Instant::now();
        server.set_backends(set);
        let times = wait_all(n, set.len(), &mut arrivals).await?;
        let lat: Vec<Duration> = times.iter().map(|t| t.duration_since(start)).collect();
        last.push(*lat.iter().max().expect("subscribers"));
        each.extend(lat);
        // Space the changes so a subscriber is idle when the next one lands.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    for t in tasks {
        t.abort();
    }
    each.sort();
    last.sort();
    Ok((each, last))
}

type Arrival = (usize, Instant, usize);

/// When each of the `n` subscribers got a set of `want` backends (older sets skipped).
async fn wait_all(
    n: usize,
    want: usize,
    arrivals: &mut mpsc::UnboundedReceiver<Arrival>,
) -> anyhow::Result<Vec<Instant>> {
    let mut seen = vec![None; n];
    let mut left = n;
    while left > 0 {
        let (i, at, len) = tokio::time::timeout(T, arrivals.recv())
            .await
            .context("a subscriber did not get the change in 30 s")?
            .context("subscribers ended")?;
        if len == want && seen[i].is_none() {
            seen[i] = Some(at);
            left -= 1;
        }
    }
    Ok(seen.into_iter().flatten().collect())
}
