//! `kitsune-operator run` starts the controller; `kitsune-operator crdgen` prints the CRD.

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use kitsune_common::logging::{self, LogFormat};
use kitsune_operator::controller::{self, Context};
use kitsune_operator::crd::{self, KitsuneProxy};
use kitsune_operator::http::{self, HttpState};
use kitsune_operator::index::Index;
use kitsune_operator::informers;
use kitsune_operator::leader::{self, Leadership, LeaseConfig};
use kitsune_operator::metrics::Metrics;
use kitsune_operator::resources::BuildConfig;
use kitsune_operator::watch_server::{self, TokenReviewer, WatchMetrics, WatchState};
use kube::Client;
use kube::api::ListParams;
use prometheus_client::registry::Registry;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "kitsune-operator",
    version,
    about = "Kubernetes operator for Kitsune proxies"
)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "KITSUNE_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller (in a cluster, or outside one with KUBECONFIG).
    Run(Box<RunArgs>),
    /// Print the KitsuneProxy CRD YAML (what crds/kitsuneproxy.yaml holds).
    Crdgen,
}

#[derive(clap::Args)]
struct RunArgs {
    /// Address of the HTTP server (/metrics, /healthz, /readyz, and the watch channel).
    #[arg(long, default_value = "0.0.0.0:8080", env = "KITSUNE_HTTP_ADDR")]
    http_addr: SocketAddr,
    /// Base URL at which proxies reach this operator's watch channel; proxies get
    /// `--backends-url <base>/v1/backends/<namespace>/<name>`.
    #[arg(
        long,
        default_value = "http://kitsune-operator.kitsune-system.svc:8080",
        env = "KITSUNE_WATCH_BASE_URL"
    )]
    watch_base_url: String,
    /// Serve the HTTP server (watch channel, metrics, health) over TLS with this PEM
    /// certificate chain (e.g. `tls.crt` of a kubernetes.io/tls Secret); re-read when
    /// it changes. Needs --watch-tls-key-file.
    #[arg(
        long,
        env = "KITSUNE_WATCH_TLS_CERT_FILE",
        requires = "watch_tls_key_file"
    )]
    watch_tls_cert_file: Option<std::path::PathBuf>,
    /// The PEM private key of --watch-tls-cert-file (e.g. `tls.key`).
    #[arg(
        long,
        env = "KITSUNE_WATCH_TLS_KEY_FILE",
        requires = "watch_tls_cert_file"
    )]
    watch_tls_key_file: Option<std::path::PathBuf>,
    /// PEM bundle of the CA that signed the serving certificate (e.g. `ca.crt`); proxy
    /// pods get it as KITSUNE_BACKENDS_CA_PEM and trust only it. Read at start.
    #[arg(long, env = "KITSUNE_WATCH_TLS_CA_FILE")]
    watch_tls_ca_file: Option<std::path::PathBuf>,
    /// Seconds between heartbeats on an idle watch stream.
    #[arg(long, env = "KITSUNE_WATCH_HEARTBEAT_SECONDS", default_value_t = 10)]
    watch_heartbeat_seconds: u64,
    /// The kitsune-proxy image used when a KitsuneProxy names none.
    #[arg(long, default_value = crd::DEFAULT_PROXY_IMAGE, env = "KITSUNE_PROXY_IMAGE")]
    proxy_image: String,
    /// Elect a writer through a Lease (needed with more than one replica).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, env = "KITSUNE_LEADER_ELECTION")]
    leader_election: bool,
    /// Name of the election Lease.
    #[arg(long, default_value = "kitsune-operator", env = "KITSUNE_LEASE_NAME")]
    lease_name: String,
    /// Namespace of the election Lease (in a cluster: the operator's own namespace).
    #[arg(long, default_value = "kitsune-system", env = "POD_NAMESPACE")]
    lease_namespace: String,
    /// This replica's identity in the Lease and in events (default: the hostname).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Lease duration in seconds; the holder renews at a third of it.
    #[arg(long, default_value_t = 15, env = "KITSUNE_LEASE_SECONDS")]
    lease_seconds: u64,
    /// Watch and manage KitsuneProxies of this one namespace only, so the operator can run
    /// with namespaced Roles (default: every namespace, which needs a ClusterRole).
    #[arg(long, env = "KITSUNE_WATCH_NAMESPACE")]
    watch_namespace: Option<String>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Crdgen => {
            print!("{}", crd::crd_yaml());
            Ok(())
        }
        Command::Run(args) => {
            logging::init(cli.log_format)
                .map_err(|e| anyhow::anyhow!("setting up logging: {e}"))?;
            run(*args).await
        }
    }
}

fn hostname() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| format!("kitsune-operator-{}", std::process::id()))
}

async fn run(args: RunArgs) -> anyhow::Result<()> {
    // When the workspace builds rustls with both ring and aws-lc-rs, rustls cannot pick a
    // provider by itself; pick one explicitly (an error only means one is already set).
    let _ = rustls::crypto::ring::default_provider().install_default();
    // Bad TLS files are a start-up error, before anything else starts.
    let tls = match (&args.watch_tls_cert_file, &args.watch_tls_key_file) {
        (Some(cert), Some(key)) => Some(
            kitsune_operator::tls::server_config(kitsune_operator::tls::TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            })
            .context("--watch-tls-cert-file / --watch-tls-key-file")?,
        ),
        _ => None,
    };
    let watch_ca_pem = args
        .watch_tls_ca_file
        .as_deref()
        .map(kitsune_operator::tls::read_ca_bundle)
        .transpose()
        .context("--watch-tls-ca-file")?;
    let client = Client::try_default()
        .await
        .context("no Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    // An empty value (e.g. an unset chart value passed through the environment) means all.
    let watch_namespace = args.watch_namespace.clone().filter(|ns| !ns.is_empty());
    if let Err(e) =
        informers::scoped_api::<KitsuneProxy>(client.clone(), watch_namespace.as_deref())
            .list(&ListParams::default().limit(1))
            .await
    {
        error!(error = %e, "cannot list KitsuneProxies; is the CRD installed? \
               kitsune-operator crdgen | kubectl apply -f -");
        anyhow::bail!("KitsuneProxy CRD not queryable: {e}");
    }
    let identity = args.identity.clone().unwrap_or_else(hostname);
    let shutdown = CancellationToken::new();
    kitsune_common::shutdown::cancel_on_signal(shutdown.clone())
        .context("listening for SIGTERM")?;

    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let watch_metrics = WatchMetrics::register(&mut registry);
    let registry = Arc::new(registry);
    let first_version =
        u64::try_from(kitsune_common::clock::unix_now().as_micros()).unwrap_or(u64::MAX);
    let index = Arc::new(RwLock::new(Index::new(first_version)));
    let (synced_tx, synced_rx) = watch::channel(false);
    let (changes_tx, changes_rx) = futures::channel::mpsc::channel(informers::CHANGES_BUFFER);

    let mut tasks = tokio::task::JoinSet::new();
    let leadership = if args.leader_election {
        let (tx, leadership) = Leadership::elected();
        let cfg = LeaseConfig {
            namespace: args.lease_namespace.clone(),
            name: args.lease_name.clone(),
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_seconds.max(3)),
            renew_every: Duration::from_secs((args.lease_seconds / 3).max(1)),
        };
        tasks.spawn(leader::run(client.clone(), cfg, tx, shutdown.clone()));
        let (mut rx, m) = (leadership.subscribe(), metrics.clone());
        tokio::spawn(async move {
            while rx.changed().await.is_ok() {
                let leading = *rx.borrow_and_update();
                m.leader.set(i64::from(leading));
            }
        });
        leadership
    } else {
        metrics.leader.set(1);
        Leadership::always()
    };

    // One KitsuneProxy watch, shared by the informers (which drive it) and the controller.
    let proxies = informers::proxy_store();
    tasks.spawn(informers::run(
        client.clone(),
        watch_namespace.clone(),
        proxies.writer,
        informers::Sinks {
            index: index.clone(),
            changes: changes_tx,
            metrics: metrics.clone(),
            synced: synced_tx,
        },
        shutdown.clone(),
    ));

    let state = HttpState {
        registry,
        ready: synced_rx.clone(),
    };
    // Every replica serves watches from its own index; no leadership needed to read.
    let watches = watch_server::routes(WatchState {
        index: index.clone(),
        synced: synced_rx.clone(),
        auth: Arc::new(TokenReviewer {
            client: client.clone(),
        }),
        heartbeat: Duration::from_secs(args.watch_heartbeat_seconds.max(1)),
        metrics: watch_metrics,
        shutdown: shutdown.clone(),
    });
    let (addr, s) = (args.http_addr, shutdown.clone());
    tasks.spawn(async move {
        let app = http::router(state).merge(watches);
        if let Err(e) = http::serve_with(addr, app, tls, s.clone()).await {
            error!(error = %e, "HTTP server failed");
            s.cancel();
        }
    });

    let ctx = Arc::new(Context::new(
        client,
        Some(identity),
        metrics,
        index,
        leadership,
        synced_rx,
        BuildConfig {
            watch_base_url: args.watch_base_url,
            default_image: args.proxy_image,
            watch_ca_pem,
        },
    ));
    // The controller starts at once, since it drives its share of the KitsuneProxy watch;
    // it writes nothing until the index is synced (see `Context::synced`).
    tasks.spawn(controller::run(
        ctx,
        watch_namespace,
        (proxies.store, proxies.subscriber),
        changes_rx,
        shutdown.clone(),
    ));

    while let Some(r) = tasks.join_next().await {
        if let Err(e) = r {
            error!(error = %e, "task failed");
        }
        // Any task ending means shutdown (or a fatal error): stop the rest.
        shutdown.cancel();
    }
    info!("stopped");
    Ok(())
}
