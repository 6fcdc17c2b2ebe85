//! The `datagate` binary: parse arguments, set up logging, run one command.

use std::process::ExitCode;

use clap::Parser;
use datagate::cli::{self, Cli, Command};

/// glibc's allocator contends across pingora's worker threads under load (its arena locks
/// showed up in profiles); mimalloc keeps per-thread heaps.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("DATAGATE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let config = cli.config.as_deref();
    let result = match cli.command.unwrap_or(Command::Run) {
        Command::Run => cli::run(config).map(|()| None),
        Command::Check => cli::check(config).map(Some),
        Command::Explain(args) => cli::explain(config, &args).map(|value| Some(value.to_string())),
        Command::Token(args) => cli::token(config, &args).map(Some),
        Command::Migrate(cli::MigrateCommand::ExportPermissions { dry_run }) => {
            cli::migrate_export_permissions(config, dry_run).map(Some)
        }
    };
    match result {
        Ok(Some(output)) => {
            println!("{output}");
            ExitCode::SUCCESS
        }
        Ok(None) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error}");
            ExitCode::FAILURE
        }
    }
}
