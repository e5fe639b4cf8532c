//! The `tether` command line: `proxy` runs the proxy, `check` validates a config file, `member`
//! runs one cluster member, `demo` runs the proxy with member child processes.

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
    /// Run one cluster member: the session store (memory, replicated or redis) and the demo app.
    Member {
        #[arg(long, short)]
        config: PathBuf,
        /// Also stop when standard input closes (used by `tether demo` for its children).
        #[arg(long, hide = true)]
        exit_with_parent: bool,
    },
    /// The proxy plus N member child processes, to try failover in one command.
    Demo {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        #[arg(long, default_value_t = 3)]
        members: usize,
        /// memory | replicated | redis://HOST:PORT (or rediss://USER:PASSWORD@HOST:PORT)
        #[arg(long, default_value = "replicated")]
        store: String,
        /// sync | async
        #[arg(long, default_value = "sync")]
        write_mode: String,
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
        Command::Member {
            config,
            exit_with_parent,
        } => match crate::member::MemberConfig::load(&config) {
            Ok(cfg) => crate::member::run(cfg, exit_with_parent),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Demo {
            listen,
            members,
            store,
            write_mode,
        } => crate::demo::run(crate::demo::DemoOptions {
            listen,
            members,
            store,
            write_mode,
        }),
        Command::Proxy { config } => match Config::load(&config) {
            Ok(cfg) => crate::server::run(cfg),
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
    }
}
