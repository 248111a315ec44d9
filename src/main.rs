//! The `distill` command. All logic lives in the `distill` library and the role crates.

fn main() -> std::process::ExitCode {
    distill::cli::main()
}
