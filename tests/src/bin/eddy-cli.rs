//! The `eddy` command line, built with this package so its tests can run it
//! (`CARGO_BIN_EXE_eddy-cli`) without a separate build of eddy-cli's binary.

fn main() -> std::process::ExitCode {
    eddy_cli::main()
}
