//! Accepting client connections and draining them on shutdown.

use std::process::ExitCode;

use crate::config::Config;

pub fn run(_config: Config) -> ExitCode {
    eprintln!("error: the proxy is not written yet");
    ExitCode::FAILURE
}
