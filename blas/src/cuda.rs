//! The GPU path's native call: products of bf16 inputs with f32 outputs through cuBLAS `gemmEx`
//! (bf16 A and B, an f32 C, `CUBLAS_COMPUTE_32F`), as a candle op on candle's device buffers. candle's
//! own bf16 matmul returns bf16; `distill-teacher`'s `bf16` module calls this on CUDA and computes the
//! same numbers on the CPU.

use candle_core::backend::BackendStorage;
use candle_core::cuda::cudarc::cublas::{result::gemm_ex, sys};
use candle_core::cuda::cudarc::driver::{DevicePtr, DevicePtrMut};
use candle_core::{CudaStorage, CustomOp2, Layout, Shape, Tensor};
use half::bf16;

struct Bf16Product;

fn cuda_err(e: impl std::error::Error + Send + Sync + 'static) -> candle_core::Error {
    candle_core::Error::Cuda(Box::new(e))
}

impl CustomOp2 for Bf16Product {
    fn name(&self) -> &'static str {
        "bf16-product-f32-out"
    }

    fn cpu_fwd(
        &self,
        _: &candle_core::CpuStorage,
        _: &Layout,
        _: &candle_core::CpuStorage,
        _: &Layout,
    ) -> candle_core::Result<(candle_core::CpuStorage, Shape)> {
        candle_core::bail!("bf16 product: the CPU widens to f32 instead")
    }

    fn cuda_fwd(
        &self,
        xs: &CudaStorage,
        xl: &Layout,
        ws: &CudaStorage,
        wl: &Layout,
    ) -> candle_core::Result<(CudaStorage, Shape)> {
        let ((n, k), (_, m)) = (xl.shape().dims2()?, wl.shape().dims2()?);
        let (Some((x0, x1)), Some((w0, w1))) = (xl.contiguous_offsets(), wl.contiguous_offsets())
        else {
            candle_core::bail!("bf16 product: inputs must be contiguous");
        };
        let dev = xs.device().clone();
        let x = xs.as_cuda_slice::<bf16>()?.slice(x0..x1);
        let w = ws.as_cuda_slice::<bf16>()?.slice(w0..w1);
        let mut y = dev.alloc_zeros::<f32>(n * m)?;
        let stream = dev.cuda_stream();
        let blas = dev.cublas_handle();
        let (alpha, beta) = (1f32, 0f32);
        let int = |v: usize| i32::try_from(v).map_err(cuda_err);
        let (ni, ki, mi) = (int(n)?, int(k)?, int(m)?);
        {
            let (xp, _gx) = x.device_ptr(&stream);
            let (wp, _gw) = w.device_ptr(&stream);
            let (yp, _gy) = y.device_ptr_mut(&stream);
            // Row-major y[n, m] = x[n, k] · w[k, m] is column-major yᵀ = wᵀ · xᵀ: cuBLAS's A is
            // w (m × k, leading dimension m), its B is x (k × n, leading dimension k).
            // SAFETY: the three pointers are live device buffers of candle's on this stream,
            // sized by the shapes checked above (x: n·k, w: k·m, y: n·m values), y apart from
            // both inputs; alpha and beta are host f32 values, as CUBLAS_COMPUTE_32F reads them.
            unsafe {
                gemm_ex(
                    *blas.handle(),
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    sys::cublasOperation_t::CUBLAS_OP_N,
                    mi,
                    ni,
                    ki,
                    (&alpha) as *const f32 as *const _,
                    wp as *const _,
                    sys::cudaDataType_t::CUDA_R_16BF,
                    mi,
                    xp as *const _,
                    sys::cudaDataType_t::CUDA_R_16BF,
                    ki,
                    (&beta) as *const f32 as *const _,
                    yp as *mut _,
                    sys::cudaDataType_t::CUDA_R_32F,
                    mi,
                    sys::cublasComputeType_t::CUBLAS_COMPUTE_32F,
                    sys::cublasGemmAlgo_t::CUBLAS_GEMM_DEFAULT_TENSOR_OP,
                )
                .map_err(cuda_err)?;
            }
        }
        Ok((CudaStorage::wrap_cuda_slice(y, dev), Shape::from((n, m))))
    }
}

/// `x · w` for contiguous bf16 `x`: `[n, k]` and `w`: `[k, m]` on one CUDA device → `[n, m]` f32.
pub fn bf16_matmul_f32_out(x: &Tensor, w: &Tensor) -> candle_core::Result<Tensor> {
    x.apply_op2_no_bwd(w, &Bf16Product)
}
