//! Goal 6: idle memory of the proxy and of the operator, and the time from starting the
//! proxy to its listening.
//!
//! The proxy runs in front of one real kubo backend. The operator needs a Kubernetes API
//! server, and there is none here: it runs against a minimal fake one in this module,
//! which answers every list with an empty list and holds every watch open and idle, so
//! the operator lists and watches everything it would in an empty cluster.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::bail;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::process::Command;

use super::{Section, cpu_seconds, mem_mib, ms, percentile};
use crate::{ChildProcess, KuboNode, KuboOptions, Proxy, binary, free_port};

pub struct Config {
    pub quick: bool,
}

const IDLE: Duration = Duration::from_secs(3);

pub async fn run(cfg: &Config) -> anyhow::Result<Section> {
    let starts = if cfg.quick { 2 } else { 5 };
    let mut s = Section::new(
        "6. Idle footprint and start-up",
        format!(
            "{} builds. Proxy: in front of one kubo 0.22 backend; once the backend is \
             connected and after {} s idle, VmRSS (and the peak, VmHWM) from /proc. Start to \
             listening: {starts} fresh starts, spawn until the proxy prints its listen address \
             (polled every 25 ms by the harness, so that is the resolution); start to ready \
             until `/readyz` answers (a backend connected; polled every 50 ms). Operator: \
             `kitsune-operator run --leader-election false` against a minimal fake Kubernetes \
             API server in the bench (every list empty, every watch open and idle: an empty \
             cluster), via a kubeconfig; once `/readyz` answers and all its watches are open, \
             after {} s idle, VmRSS from /proc.",
            super::build_profile(),
            IDLE.as_secs(),
            IDLE.as_secs()
        ),
    );
    proxy(&mut s, starts).await?;
    operator(&mut s).await?;
    Ok(s)
}

async fn proxy(s: &mut Section, starts: usize) -> anyhow::Result<()> {
    let kubo = KuboNode::start(KuboOptions::default()).await?;
    let p = super::proxy_in_front(&kubo).await?;
    let pid = p.proc.pid();
    let cpu = cpu_seconds(pid);
    tokio::time::sleep(IDLE).await;
    let (rss, hwm) = (mem_mib(pid, "VmRSS")?, mem_mib(pid, "VmHWM")?);
    let idle_cpu = cpu_seconds(pid) - cpu;
    drop(p);
    s.line(format!(
        "Proxy idle RSS, one backend connected: **{rss:.1} MiB** (peak {hwm:.1} MiB; {:.2} CPU \
         seconds in {} s idle) (goal <= 20 MiB: {})",
        idle_cpu,
        IDLE.as_secs(),
        verdict(rss <= 20.0)
    ));

    let (mut listening, mut ready) = (Vec::new(), Vec::new());
    for _ in 0..starts {
        let t = Instant::now();
        let p = Proxy::start(super::one_backend(&kubo)).await?;
        listening.push(p.startup);
        p.wait_ready(Duration::from_secs(30)).await?;
        ready.push(t.elapsed());
    }
    listening.sort();
    ready.sort();
    s.line(format!(
        "Proxy start to listening ({starts} starts): **median {:.0} ms**, max {:.0} ms; start \
         to ready (backend connected): median {:.0} ms, max {:.0} ms",
        ms(percentile(&listening, 0.5)),
        ms(*listening.last().expect("at least one start")),
        ms(percentile(&ready, 0.5)),
        ms(*ready.last().expect("at least one start")),
    ));
    Ok(())
}

fn verdict(met: bool) -> &'static str {
    if met { "met" } else { "missed" }
}

async fn operator(s: &mut Section) -> anyhow::Result<()> {
    let api = FakeApi::start().await?;
    let dir = crate::scratch_dir("operator")?;
    let kubeconfig = dir.path().join("kubeconfig");
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: fake\n  cluster:\n    server: \
             {}\ncontexts:\n- name: fake\n  context:\n    cluster: fake\n    user: fake\n    \
             namespace: default\ncurrent-context: fake\nusers:\n- name: fake\n  user: {{}}\n",
            api.url
        ),
    )?;
    let http = free_port();
    let mut cmd = Command::new(binary("kitsune-operator", super::RELEASE)?);
    cmd.args(["run", "--leader-election", "false", "--identity", "bench"])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--watch-base-url", &format!("http://127.0.0.1:{http}")])
        .env("KUBECONFIG", &kubeconfig)
        .env("RUST_LOG", "info")
        .env("NO_COLOR", "1")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT");
    let started = Instant::now();
    let mut op = ChildProcess::spawn("kitsune-operator", cmd, dir.path())?;
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(2))
        .build()?;
    let base = format!("http://127.0.0.1:{http}");
    // Ready: the HTTP server answers and the backend index has listed every kind.
    loop {
        if let Ok(r) = client.get(format!("{base}/readyz")).send().await
            && r.status().is_success()
        {
            break;
        }
        if let Some(status) = op.try_wait() {
            bail!("kitsune-operator exited ({status})\n{}", op.log_tail(30));
        }
        if started.elapsed() > Duration::from_secs(30) {
            bail!("kitsune-operator not ready in 30 s\n{}", op.log_tail(30));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let to_ready = started.elapsed();
    let health = client.get(format!("{base}/healthz")).send().await?;
    anyhow::ensure!(
        health.status().is_success(),
        "/healthz: {}",
        health.status()
    );
    // Then the controller starts its own watches (KitsuneProxies and the four owned
    // kinds) besides the informers' three: wait for all eight to be open.
    let deadline = Instant::now() + Duration::from_secs(15);
    while api.log.open_watches.load(Ordering::Relaxed) < EXPECTED_WATCHES
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = op.stdout() + &op.stderr();
    anyhow::ensure!(
        log.contains("backend index synced"),
        "the operator's log does not show its informers synced\n{}",
        op.log_tail(30)
    );
    let pid = op.pid();
    let cpu = cpu_seconds(pid);
    tokio::time::sleep(IDLE).await;
    if let Some(status) = op.try_wait() {
        bail!("kitsune-operator exited ({status})\n{}", op.log_tail(30));
    }
    let (rss, hwm) = (mem_mib(pid, "VmRSS")?, mem_mib(pid, "VmHWM")?);
    let idle_cpu = cpu_seconds(pid) - cpu;
    let open = api.log.open_watches.load(Ordering::Relaxed);
    let lists = api.log.lists.load(Ordering::Relaxed);
    let others = api.log.others.lock().expect("not poisoned").clone();
    let warnings = log
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .count();
    anyhow::ensure!(
        open >= EXPECTED_WATCHES,
        "only {open} of {EXPECTED_WATCHES} watches open\n{}",
        op.log_tail(30)
    );
    s.line(format!(
        "Operator idle RSS, empty cluster, {open} watches open: **{rss:.1} MiB** (peak \
         {hwm:.1} MiB; {:.2} CPU seconds in {} s idle) (goal <= 40 MiB: {})",
        idle_cpu,
        IDLE.as_secs(),
        verdict(rss <= 40.0)
    ));
    s.line(format!(
        "Operator start to ready (`/readyz`, every kind listed): {:.0} ms; the fake API server \
         saw {lists} lists, {open} open watches, {} other requests{}; {warnings} warning or \
         error lines in the operator's log",
        ms(to_ready),
        others.len(),
        if others.is_empty() {
            String::new()
        } else {
            format!(" ({})", others.join(", "))
        }
    ));
    drop(op);
    Ok(())
}

/// Watches an idle operator keeps open in an empty cluster: KitsuneProxies (one watch,
/// shared by the index and the controller), EndpointSlices, and the controller's
/// Deployments, Services, ServiceAccounts and PodDisruptionBudgets. Pods are watched
/// only per selector in use, so none here.
const EXPECTED_WATCHES: usize = 6;

/// What the fake API server was asked.
#[derive(Default)]
struct ApiLog {
    lists: AtomicUsize,
    open_watches: AtomicUsize,
    /// Requests that were neither a list nor a watch (answered 404).
    others: Mutex<Vec<String>>,
}

/// Counts an open watch until its response body is dropped.
struct WatchGuard(Arc<ApiLog>);

impl Drop for WatchGuard {
    fn drop(&mut self) {
        self.0.open_watches.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A minimal Kubernetes API server: an empty cluster. Stopped on drop.
struct FakeApi {
    url: String,
    log: Arc<ApiLog>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeApi {
    async fn start() -> anyhow::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let url = format!("http://{}", listener.local_addr()?);
        let log = Arc::new(ApiLog::default());
        let app = axum::Router::new().fallback(answer).with_state(log.clone());
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Self { url, log, task })
    }
}

/// The kind a resource's plural names (the kinds the operator lists and watches, and
/// the few others it may touch).
fn kind_of(plural: &str) -> Option<&'static str> {
    Some(match plural {
        "kitsuneproxies" => "KitsuneProxy",
        "endpointslices" => "EndpointSlice",
        "pods" => "Pod",
        "deployments" => "Deployment",
        "services" => "Service",
        "serviceaccounts" => "ServiceAccount",
        "poddisruptionbudgets" => "PodDisruptionBudget",
        "secrets" => "Secret",
        "leases" => "Lease",
        "events" => "Event",
        _ => return None,
    })
}

async fn answer(State(log): State<Arc<ApiLog>>, req: Request) -> Response {
    let path = req.uri().path().to_owned();
    let query = req.uri().query().unwrap_or("").to_owned();
    let segs: Vec<&str> = path.split('/').filter(|x| !x.is_empty()).collect();
    // /api/v1/... or /apis/<group>/<version>/...
    let (api_version, rest) = match segs.as_slice() {
        ["api", v, rest @ ..] => (v.to_string(), rest),
        ["apis", g, v, rest @ ..] => (format!("{g}/{v}"), rest),
        _ => (String::new(), &[][..]),
    };
    // A collection: <plural> or namespaces/<ns>/<plural>.
    let plural = match rest {
        [p] => Some(*p),
        ["namespaces", _, p] => Some(*p),
        _ => None,
    };
    let kind = plural.and_then(kind_of);
    let watch = query
        .split('&')
        .any(|kv| kv == "watch=true" || kv == "watch=1");
    match (req.method().as_str(), kind) {
        ("GET", Some(_)) if watch => {
            log.open_watches.fetch_add(1, Ordering::Relaxed);
            let guard = WatchGuard(log.clone());
            // Never yields: an open, idle watch (chunked, no events).
            let body = futures::stream::poll_fn(move |_| {
                let _open = &guard;
                std::task::Poll::<Option<Result<bytes::Bytes, std::io::Error>>>::Pending
            });
            (
                [(header::CONTENT_TYPE, "application/json")],
                Body::from_stream(body),
            )
                .into_response()
        }
        ("GET", Some(kind)) => {
            log.lists.fetch_add(1, Ordering::Relaxed);
            axum::Json(serde_json::json!({
                "apiVersion": api_version,
                "kind": format!("{kind}List"),
                "metadata": {"resourceVersion": "1"},
                "items": [],
            }))
            .into_response()
        }
        (method, _) => {
            log.others
                .lock()
                .expect("not poisoned")
                .push(format!("{method} {path}"));
            (
                StatusCode::NOT_FOUND,
                axum::Json(serde_json::json!({
                    "apiVersion": "v1",
                    "kind": "Status",
                    "metadata": {},
                    "status": "Failure",
                    "message": format!("{path} not found"),
                    "reason": "NotFound",
                    "code": 404,
                })),
            )
                .into_response()
        }
    }
}
