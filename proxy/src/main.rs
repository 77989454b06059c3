use clap::Parser;
use kitsune_proxy::config::Cli;

fn main() {
    // Before the runtime's threads exist.
    kitsune_proxy::allocator::tune();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("the tokio runtime starts");
    runtime.block_on(run());
    // Stopped tasks are gone; do not wait long for a blocking call still in flight.
    runtime.shutdown_timeout(std::time::Duration::from_secs(5));
}

async fn run() {
    let cli = Cli::parse();
    if let Err(e) = kitsune_common::logging::init(cli.log_format) {
        eprintln!("Error: setting up logging: {e}");
        std::process::exit(1);
    }
    if let Err(e) = kitsune_proxy::run(cli).await {
        eprintln!("Error: {e:#}");
        std::process::exit(1);
    }
}
