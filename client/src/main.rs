//! `sluice`, the command-line client of the sluice broker.
//!
//! Thin on purpose: parse the arguments, run the command on a small
//! runtime, print the failure (one line on stderr) and exit with its code.
//! Everything else is in `cli/`.

mod cli;

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;

use cli::exit::Exit;

fn main() -> ExitCode {
    // Usage errors, --help and --version exit here, with clap's codes.
    let args = cli::Args::parse();
    // One command at a time: a single-threaded runtime is all most need.
    let threads = args.threads();
    let built = if threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(threads)
            .enable_all()
            .build()
    };
    let runtime = match built {
        Ok(runtime) => runtime,
        Err(e) => {
            let _ = writeln!(std::io::stderr(), "error: cannot start the runtime: {e}");
            return Exit::Failure.into();
        }
    };
    match runtime.block_on(cli::run(args)) {
        Ok(()) => Exit::Ok.into(),
        Err(failure) => {
            // `eprintln!` would panic if stderr were closed.
            let _ = writeln!(std::io::stderr(), "{}", failure.line());
            failure.exit().into()
        }
    }
}
