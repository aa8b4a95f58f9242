//! The guest agent binary (built static for the guest image); all logic is
//! in `castra::agent`.

fn main() -> std::process::ExitCode {
    castra::agent::main()
}
