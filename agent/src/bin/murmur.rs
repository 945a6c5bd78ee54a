//! `murmur`: run load tests on this machine, serve the bundled demo targets.

fn main() -> std::process::ExitCode {
    murmuration_agent::cli::main_with(murmuration_agent::registry::Registry::new())
}
