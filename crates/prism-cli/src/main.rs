//! `prism`: see the library's documentation (src/lib.rs) for the program.

fn main() -> std::process::ExitCode {
    prism_cli::main()
}
