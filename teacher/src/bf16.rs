//! Products of bf16 inputs with f32 outputs, accumulated in f32: what the linear layers of a
//! `--precision bf16` teacher compute. On CUDA it is one cuBLAS `gemmEx` (bf16 A and B, an f32 C,
//! `CUBLAS_COMPUTE_32F`: the tensor cores' bf16 rate); on the CPU, where it runs for the tests, the
//! same numbers from the inputs widened to f32 exactly and an f32 product. candle's own bf16 matmul
//! rounds every output to bf16 — measured on the real SmolLM2, that alone costs 2 points of top-1
//! agreement with the f32 path (97.4% against 99.2% of 1,061 positions).
//!
//! The CUDA call lives in `distill-blas` (`cuda` feature), the workspace's one home of unsafe code.

use candle_core::{DType, Tensor};

/// `x · w` for `x`: `[n, k]` and `w`: `[k, m]`, both bf16 → `[n, m]` f32.
pub fn matmul_f32_out(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    let ((n, k), (k2, m)) = (x.dims2()?, w.dims2()?);
    if k != k2 || x.dtype() != DType::BF16 || w.dtype() != DType::BF16 {
        candle_core::bail!(
            "bf16 product: [{n}, {k}] {:?} · [{k2}, {m}] {:?}",
            x.dtype(),
            w.dtype()
        );
    }
    if x.device().is_cuda() {
        return cuda::matmul(&x.contiguous()?, &w.contiguous()?);
    }
    // Widening bf16 to f32 is exact: the product sees the very inputs the GPU's does.
    x.to_dtype(DType::F32)?.matmul(&w.to_dtype(DType::F32)?)
}

#[cfg(not(feature = "cuda"))]
mod cuda {
    pub fn matmul(
        _: &candle_core::Tensor,
        _: &candle_core::Tensor,
    ) -> candle_core::Result<candle_core::Tensor> {
        candle_core::bail!("this build has no CUDA support")
    }
}

#[cfg(feature = "cuda")]
mod cuda {
    pub use distill_blas::cuda::bf16_matmul_f32_out as matmul;
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn the_product_keeps_f32_outputs_of_bf16_inputs() {
        let dev = Device::Cpu;
        // Inputs that bf16 holds exactly, and an output bf16 cannot: 1 + 2⁻⁸ + 2⁻¹⁶.
        let x = Tensor::new(&[[1f32, 1.0 / 256.0, 1.0 / 65536.0]], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let w = Tensor::new(&[[1f32], [1.0], [1.0]], &dev)
            .unwrap()
            .to_dtype(DType::BF16)
            .unwrap();
        let y = matmul_f32_out(&x, &w).unwrap();
        assert_eq!(y.dtype(), DType::F32);
        let exact = 1.0 + 1.0 / 256.0 + 1.0 / 65536.0;
        assert_eq!(y.to_vec2::<f32>().unwrap()[0][0], exact);
        // candle's bf16 matmul rounds the same product to bf16.
        let rounded = x.matmul(&w).unwrap().to_dtype(DType::F32).unwrap();
        assert_ne!(rounded.to_vec2::<f32>().unwrap()[0][0], exact);
        assert!(matmul_f32_out(&x, &x).is_err(), "shapes are checked");
    }
}
