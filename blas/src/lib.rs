//! A BLAS loaded at run time, for the CPU teachers' matrix products.
//!
//! candle's CPU matmul (the `gemm` crate) reaches about three quarters of an optimised BLAS on the
//! shapes of a transformer layer. Where an OpenBLAS is installed (Debian: `libopenblas0-pthread`),
//! [`get`] loads its `cblas_sgemm` once; where none is, it returns `None` and callers keep candle's
//! matmul. `DISTILL_BLAS=off` turns it off, `DISTILL_BLAS=/path/to/lib.so` names another library
//! exporting `cblas_sgemm` (LP64: 32-bit integers). Nothing is linked at build time.
//!
//! OpenBLAS is told to use one thread: callers split the rows of a product over their own thread pool
//! (rayon), so OpenBLAS's worker threads never spin beside rayon's on a small machine.
//!
//! It also holds the process's allocator setting ([`alloc`]): mimalloc with purging off, which the
//! `distill` binary installs because the forward's per-layer buffers are reused rather than handed back
//! to the kernel.
//!
//! [`uninit`] writes the linear layers' output buffers once, without zeroing them first.
//!
//! With the `cuda` feature, `cuda` holds the GPU path's one native call: bf16 products with f32
//! outputs through cuBLAS `gemmEx`, as a candle op.
//!
//! This crate is the workspace's only unsafe code: calling the loaded function, with every length
//! checked against the slices first, setting one allocator option, handing out new buffers
//! uninitialised only to take them back written, and (`cuda`) the cuBLAS call on buffers whose sizes
//! the shapes were checked against.

pub mod alloc;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod uninit;

use std::sync::OnceLock;

type CblasSgemm = unsafe extern "C" fn(
    order: i32,
    trans_a: i32,
    trans_b: i32,
    m: i32,
    n: i32,
    k: i32,
    alpha: f32,
    a: *const f32,
    lda: i32,
    b: *const f32,
    ldb: i32,
    beta: f32,
    c: *mut f32,
    ldc: i32,
);
type SetThreads = unsafe extern "C" fn(n: i32);

const ROW_MAJOR: i32 = 101;
const NO_TRANS: i32 = 111;
const TRANS: i32 = 112;

/// Libraries tried in order when `DISTILL_BLAS` does not name one.
const CANDIDATES: &[&str] = &["libopenblas.so.0", "libopenblas.so", "libopenblasp.so.0"];

/// A loaded BLAS.
pub struct Blas {
    sgemm: CblasSgemm,
    /// Which library it is (for logs and benchmark tables).
    pub name: String,
    // Keeps the library mapped for as long as `sgemm` may be called.
    _lib: libloading::Library,
}

impl std::fmt::Debug for Blas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Blas").field("name", &self.name).finish()
    }
}

fn load(path: &str) -> Result<Blas, String> {
    // SAFETY: loading a shared library runs its initialisers; OpenBLAS's only set up its thread pool.
    let lib = unsafe { libloading::Library::new(path) }.map_err(|e| e.to_string())?;
    // SAFETY: `cblas_sgemm` has this C signature in every CBLAS (LP64 integers).
    let sgemm = unsafe { lib.get::<CblasSgemm>(b"cblas_sgemm\0") }
        .map(|s| *s)
        .map_err(|e| format!("{path}: {e}"))?;
    // SAFETY: OpenBLAS's thread-count setter takes one int; other BLAS libraries do not export it.
    if let Ok(set) = unsafe { lib.get::<SetThreads>(b"openblas_set_num_threads\0") } {
        // SAFETY: a plain call with a positive thread count.
        unsafe { set(1) };
    }
    Ok(Blas {
        sgemm,
        name: path.to_owned(),
        _lib: lib,
    })
}

/// The BLAS of this process, loaded on first use; `None` when none is installed or it is turned off.
pub fn get() -> Option<&'static Blas> {
    static BLAS: OnceLock<Option<Blas>> = OnceLock::new();
    BLAS.get_or_init(|| {
        let choice = std::env::var("DISTILL_BLAS").unwrap_or_default();
        if choice == "off" || choice == "0" {
            return None;
        }
        let candidates: Vec<&str> = if choice.is_empty() {
            CANDIDATES.to_vec()
        } else {
            vec![choice.as_str()]
        };
        for c in candidates {
            match load(c) {
                Ok(b) => {
                    tracing::debug!(blas = %b.name, "CPU matrix products through BLAS");
                    return Some(b);
                }
                Err(e) if !choice.is_empty() => {
                    tracing::warn!("DISTILL_BLAS={choice}: {e}; using candle's matmul");
                }
                Err(_) => {}
            }
        }
        None
    })
    .as_ref()
}

impl Blas {
    /// `c = a · b + beta · c` for row-major, contiguous `a` (`m × k`), `b` (`k × n`) and `c`
    /// (`m × n`), with `(m, n, k)` given as `shape`. Panics if a slice is shorter than its shape (a
    /// programming error).
    pub fn sgemm(
        &self,
        shape: (usize, usize, usize),
        a: &[f32],
        b: &[f32],
        beta: f32,
        c: &mut [f32],
    ) {
        let n = shape.1;
        self.gemm(
            Gemm {
                shape,
                b_transposed: false,
                ldc: n,
            },
            a,
            b,
            beta,
            c,
        );
    }

    /// `c = a · op(b) + beta · c` for row-major, contiguous `a` (`m × k`); `b` is `k × n`, or `n × k`
    /// read transposed when `b_transposed` (a weight matrix as checkpoints store it, `[out, in]`);
    /// `c`'s rows are `ldc ≥ n` apart (a block of columns of a wider matrix). Panics if a slice is
    /// shorter than its shape (a programming error).
    pub fn gemm(&self, g: Gemm, a: &[f32], b: &[f32], beta: f32, c: &mut [f32]) {
        let (m, n, k) = g.shape;
        assert!(
            g.ldc >= n
                && a.len() >= m * k
                && b.len() >= k * n
                && (m == 0 || c.len() >= (m - 1) * g.ldc + n),
            "gemm: slices shorter than {m}×{k} · {k}×{n} (ldc {})",
            g.ldc
        );
        let fits = |x: usize| i32::try_from(x).expect("gemm: dimension above 2^31");
        if m == 0 || n == 0 {
            return;
        }
        let (trans_b, ldb) = if g.b_transposed {
            (TRANS, k)
        } else {
            (NO_TRANS, n)
        };
        // SAFETY: the pointers come from slices at least as long as the row-major shapes and leading
        // dimensions require (checked above), `c` is exclusively borrowed, and the dimensions fit in
        // 32-bit integers.
        unsafe {
            (self.sgemm)(
                ROW_MAJOR,
                NO_TRANS,
                trans_b,
                fits(m),
                fits(n),
                fits(k),
                1.0,
                a.as_ptr(),
                fits(k),
                b.as_ptr(),
                fits(ldb.max(1)),
                beta,
                c.as_mut_ptr(),
                fits(g.ldc.max(1)),
            )
        }
    }
}

/// The shape of one [`Blas::gemm`] call.
#[derive(Clone, Copy, Debug)]
pub struct Gemm {
    /// `(m, n, k)`.
    pub shape: (usize, usize, usize),
    /// `b` is `n × k`, read transposed.
    pub b_transposed: bool,
    /// Distance between `c`'s rows.
    pub ldc: usize,
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_loaded_blas_multiplies_like_the_definition() {
        let Some(blas) = super::get() else {
            // The test script installs OpenBLAS; elsewhere a missing one is a skip.
            assert!(
                std::env::var("DISTILL_REQUIRE_ALL").as_deref() != Ok("1"),
                "no BLAS loaded: run scripts/install-blas.sh"
            );
            eprintln!("skipped: no BLAS installed");
            return;
        };
        let (m, n, k) = (5, 7, 3);
        let a: Vec<f32> = (0..m * k).map(|i| i as f32 * 0.5 - 3.0).collect();
        let b: Vec<f32> = (0..k * n).map(|i| 1.0 - i as f32 * 0.25).collect();
        let mut c = vec![1.0f32; m * n];
        blas.sgemm((m, n, k), &a, &b, 1.0, &mut c);
        for i in 0..m {
            for j in 0..n {
                let want: f32 = 1.0 + (0..k).map(|p| a[i * k + p] * b[p * n + j]).sum::<f32>();
                assert!((c[i * n + j] - want).abs() < 1e-4, "{i},{j}");
            }
        }
        // `b` read transposed (`n × k`), into columns 2..2+n of a wider `c`.
        let bt: Vec<f32> = (0..n * k).map(|i| b[(i % k) * n + i / k]).collect();
        let ldc = n + 3;
        let mut wide = vec![0.5f32; m * ldc];
        let g = super::Gemm {
            shape: (m, n, k),
            b_transposed: true,
            ldc,
        };
        blas.gemm(g, &a, &bt, 0.0, &mut wide[2..]);
        for i in 0..m {
            for j in 0..ldc {
                let want = if (2..2 + n).contains(&j) {
                    (0..k).map(|p| a[i * k + p] * b[p * n + j - 2]).sum::<f32>()
                } else {
                    0.5
                };
                assert!((wide[i * ldc + j] - want).abs() < 1e-4, "{i},{j}");
            }
        }
    }
}
