//! Command-line interface.

pub mod image;

pub fn main() -> std::process::ExitCode {
    std::process::ExitCode::SUCCESS
}
