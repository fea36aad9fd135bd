//! `devops-bot serve` (the default): reads the configuration, starts the service.
//! `devops-bot init-aws`: creates the DynamoDB table and sealing key the `aws` backend needs.
#![forbid(unsafe_code)]

use clap::{Parser, Subcommand};
use devops_bot::config::Config;
use devops_bot::Application;

// Every request allocates on one worker and frees on another (or on the SQLite thread);
// mimalloc costs a sixth less CPU per stored command than the system allocator. It is built
// not to ask for transparent huge pages (they lifted the idle RSS from 16 to 27 MiB); a host
// that gives them unasked needs `MIMALLOC_ALLOW_THP=0` as well (see README).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "devops-bot",
    version,
    about = "ChatOps front door for the EventBridge DevOps API"
)]
struct Cli {
    #[command(subcommand)]
    command: Option<Mode>,
}

#[derive(Subcommand)]
enum Mode {
    /// Run the service (the default).
    Serve,
    /// Create what DEVOPSBOT_BACKEND=aws needs in the account (the DynamoDB table, the sealing key); what exists is left alone.
    InitAws,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let Cli { command } = Cli::parse();
    match command.unwrap_or(Mode::Serve) {
        Mode::Serve => serve().await,
        Mode::InitAws => init_aws().await,
    }
}

async fn init_aws() -> std::process::ExitCode {
    let settings = match Config::aws_from_env(|name| std::env::var(name).ok()) {
        Ok(settings) => settings,
        Err(error) => {
            eprintln!("devops-bot init-aws: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    match devops_bot::backends::open::init_aws(&settings).await {
        Ok(done) => {
            for line in done {
                println!("{line}");
            }
            std::process::ExitCode::SUCCESS
        }
        Err(error) => {
            eprintln!("devops-bot init-aws: {error}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn serve() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "info,devops_bot=info".into()),
        )
        .init();
    let config = match Config::from_env(|name| std::env::var(name).ok()) {
        Ok(config) => config,
        Err(error) => {
            eprintln!("devops-bot cannot start: {error}");
            return std::process::ExitCode::from(2);
        }
    };
    let app = match Application::build(config).await {
        Ok(app) => app,
        Err(error) => {
            eprintln!("devops-bot cannot start: {error}");
            return std::process::ExitCode::from(1);
        }
    };
    println!("{}", app.summary());
    match app.run_until(shutdown_signal()).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("devops-bot stopped: {error}");
            std::process::ExitCode::from(1)
        }
    }
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = terminate => {},
    }
    tracing::info!("shutting down");
}
