//! The `castra` binary: parse arguments, run the command, map errors to exit codes.

fn main() -> std::process::ExitCode {
    castra::cli::main()
}
