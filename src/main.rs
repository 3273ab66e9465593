//! The `hookrelay` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = hookrelay::cli::Cli::parse();
    match hookrelay::cli::main(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("hookrelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
