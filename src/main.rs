//! `inarray`: the daemon (`serve`) and the client commands. This file only wires configuration,
//! tracing and the crates together. The per-container shim is its own executable, `inarray-shim`
//! (`src/shim.rs`).

mod cli;
mod config;
mod daemon;
mod logging;
mod notify;
mod reload;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Args::parse();
    match args.command {
        cli::Command::Serve(opts) => {
            let rt = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fatal(&format!("cannot start the async runtime: {e}")),
            };
            match rt.block_on(daemon::run(opts)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => fatal(&format!("{e:#}")),
            }
        }
        command => {
            // Client output piped into `head` and closed early: end quietly, like other Unix
            // tools, instead of a panic in println! on EPIPE.
            // SAFETY: called before any other thread exists; SIG_DFL is a valid disposition.
            let _ = unsafe {
                nix::sys::signal::signal(
                    nix::sys::signal::Signal::SIGPIPE,
                    nix::sys::signal::SigHandler::SigDfl,
                )
            };
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => return fatal(&format!("cannot start the async runtime: {e}")),
            };
            match rt.block_on(cli::run(cli::Args { command, ..args })) {
                Ok(code) => code,
                Err(e) => fatal(&format!("{e:#}")),
            }
        }
    }
}

fn fatal(msg: &str) -> ExitCode {
    eprintln!("inarray: {msg}");
    ExitCode::from(125)
}
