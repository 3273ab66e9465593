//! The `hookrelay` binary: parses the command line and hands it to the library.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = hookrelay::cli::Cli::parse();
    match hookrelay::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // One line: the error and its causes.
            eprintln!("hookrelay: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
