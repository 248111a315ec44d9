//! The `distill` command. All logic lives in the `distill` library and the role crates.

/// mimalloc, keeping freed memory for reuse: see `distill_blas::alloc`.
#[global_allocator]
static GLOBAL: distill_blas::alloc::Allocator = distill_blas::alloc::Allocator;

fn main() -> std::process::ExitCode {
    distill_blas::alloc::keep_freed_memory();
    distill::cli::main()
}
