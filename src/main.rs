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
    let command = cli.command.unwrap_or(Command::Run(cli::RunArgs::default()));
    if !matches!(command, Command::Run(_)) {
        // `run` sets up logging itself, as its config file says.
        cli::init_logging(datagate::config::LogFormat::Text);
    }
    let config = cli.config.as_deref();
    let result = match command {
        Command::Run(args) => cli::run(config, &args).map(|()| None),
        Command::Check => cli::check(config).map(Some),
        Command::Explain(args) => cli::explain(config, &args).map(|value| Some(value.to_string())),
        Command::Token(args) => cli::token(config, &args).map(Some),
        Command::Test(args) => match cli::policy_test(config, &args) {
            // The report is printed either way; any failing case fails the command.
            Ok((report, true)) => Ok(Some(report.trim_end().to_string())),
            Ok((report, false)) => {
                println!("{}", report.trim_end());
                return ExitCode::FAILURE;
            }
            Err(error) => Err(error),
        },
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
