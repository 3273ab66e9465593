//! The `hookrelay` binary: parses the command line and hands it to the library, which also
//! chooses the exit status by cause (`hookrelay::cli::exit`).

fn main() -> std::process::ExitCode {
    hookrelay::cli::exit::run_main()
}
