//! The `eddy` binary: see [`eddy_cli`].

// jemalloc rather than the C library's allocator: the workers allocate
// what the committer thread frees (each checkpoint's records), and the
// C library's per-thread arenas kept about 70 MiB more resident for a
// pipeline over millions of keys (`docs/performance.md`).
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> std::process::ExitCode {
    eddy_cli::main()
}
