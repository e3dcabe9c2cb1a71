//! The `shortlink` binary: every component is a subcommand. `main` only
//! parses configuration, starts telemetry and hands over to the component's
//! library; `--help` on each subcommand is its configuration reference.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use shortlink_links::config::DatabaseArgs;
use shortlink_links::{App, LinksConfig};
use shortlink_runtime::config::{ConfigError, EXIT_CONFIG};
use shortlink_runtime::shutdown::Shutdown;
use shortlink_runtime::telemetry::{self, TelemetryArgs};

/// shortlink: a production-grade URL shortener.
#[derive(Debug, Parser)]
#[command(name = "shortlink", version, propagate_version = true)]
struct Cli {
    #[command(flatten)]
    telemetry: TelemetryArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the links service (gRPC + HTTP side port).
    Links(LinksConfig),
    /// Apply the database migrations and exit.
    Migrate(DatabaseArgs),
    /// Import users, links and events from CSV files (idempotent).
    Import(ImportArgs),
    /// Run the whole system in one process on the embedded default
    /// (SQLite, in-process cache) unless DATABASE_URL / REDIS_URL are set.
    Up(UpArgs),
}

#[derive(Debug, clap::Args)]
struct ImportArgs {
    #[command(flatten)]
    db: DatabaseArgs,
    /// Directory holding users.csv, urls.csv and events.csv.
    #[arg(long, env = "SEED_DIR", default_value = "../shared/seed-data")]
    dir: PathBuf,
}

#[derive(Debug, clap::Args)]
struct UpArgs {
    #[command(flatten)]
    links: LinksConfig,
    /// Import this seed directory (users.csv, urls.csv, events.csv) at start;
    /// rows already present are skipped.
    #[arg(long)]
    seed: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = match e.kind() {
                clap::error::ErrorKind::DisplayHelp
                | clap::error::ErrorKind::DisplayVersion
                | clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => 0,
                _ => EXIT_CONFIG,
            };
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("shortlink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let config = e.chain().any(|c| c.is::<ConfigError>());
            tracing::error!(error = format!("{e:#}"), "shortlink failed");
            eprintln!("shortlink: {e:#}");
            ExitCode::from(if config { EXIT_CONFIG as u8 } else { 1 })
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let service = match &cli.command {
        Command::Links(_) => "links",
        Command::Migrate(_) => "migrate",
        Command::Import(_) => "import",
        Command::Up(_) => "up",
    };
    let _telemetry = telemetry::init(service, &cli.telemetry)?;
    match cli.command {
        Command::Links(cfg) => {
            let shutdown = Shutdown::new();
            shutdown.trigger_on_signals();
            App::build(cfg).await?.run_until_stopped(shutdown).await
        }
        Command::Migrate(db) => {
            let cfg = db.store_config()?;
            let backend = shortlink_links::store::migrate(&cfg).await?;
            tracing::info!(backend, "migrations applied");
            println!("migrations applied ({backend})");
            Ok(())
        }
        Command::Import(args) => {
            let cfg = args.db.store_config()?;
            let store = shortlink_links::store::connect(&cfg).await?;
            let files = shortlink_links::import::SeedFiles::in_dir(&args.dir);
            let counts = shortlink_links::import::import(store.as_ref(), &files).await;
            store.close().await;
            let counts = counts?;
            println!(
                "imported {} users, {} links, {} events (rows already present were skipped)",
                counts.users, counts.links, counts.events
            );
            Ok(())
        }
        Command::Up(args) => up(args).await,
    }
}

/// The all-in-one: today the links service (gRPC on 50061, side port on
/// 9181); the edge and the event pipeline join it as they land.
async fn up(args: UpArgs) -> anyhow::Result<()> {
    let shutdown = Shutdown::new();
    shutdown.trigger_on_signals();
    if let Some(dir) = &args.seed {
        let cfg = args.links.db.store_config()?;
        let store = shortlink_links::store::connect(&cfg).await?;
        let files = shortlink_links::import::SeedFiles::in_dir(dir);
        let counts = shortlink_links::import::import(store.as_ref(), &files)
            .await
            .with_context(|| format!("seeding from {}", dir.display()));
        store.close().await;
        counts?;
    }
    let app = App::build(args.links).await?;
    tracing::info!(grpc = %app.grpc_addr(), http = %app.http_addr(), "shortlink is up");
    app.run_until_stopped(shutdown).await
}
