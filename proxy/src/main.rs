use clap::Parser;
use kitsune_proxy::config::{Cli, LogFormat};
use tracing_subscriber::EnvFilter;

fn main() {
    // Before the runtime's threads exist.
    kitsune_proxy::allocator::tune();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(run());
}

async fn run() {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Json => logs.json().init(),
        LogFormat::Text => logs.init(),
    }
    if let Err(e) = kitsune_proxy::run(cli).await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
