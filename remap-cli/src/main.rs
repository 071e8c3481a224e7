//! The `remap` binary. Everything lives in the library (`remap_cli`), so the commands can be
//! tested against simulated devices.
#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    remap_cli::main()
}
