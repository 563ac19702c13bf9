//! The `eddy` binary: see [`eddy_runtime::cli`].

fn main() -> std::process::ExitCode {
    eddy_runtime::cli::main()
}
