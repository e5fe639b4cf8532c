//! The `tether` command line: `proxy` runs the proxy, `check` validates a config file.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config::Config;

#[derive(Parser)]
#[command(name = "tether", version, about = "Session-aware reverse proxy")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the proxy.
    Proxy {
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate a config file and exit: 0 when it is valid, 1 with a message naming the key otherwise.
    Check {
        #[arg(long, short)]
        config: PathBuf,
    },
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match Config::load(&config) {
            Ok(cfg) => {
                println!(
                    "{}: ok ({} routes, {} clusters, {} members)",
                    config.display(),
                    cfg.routes.len(),
                    cfg.clusters.len(),
                    cfg.clusters.iter().map(|c| c.members.len()).sum::<usize>()
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Proxy { config } => match Config::load(&config) {
            Ok(cfg) => crate::server::run(cfg),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
