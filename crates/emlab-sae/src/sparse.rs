//! Sparse outer-product accumulation for the TopK SAE step on a device:
//! `out[ids[t, j], :] += coef[t, j] * src[t, :]`, `out` `[m, d]` starting from zeros.
//!
//! With `ids`/`coef` the step's top-k latents and values (`[n, k]`) this is `Zᵀ src` for the
//! sparse code matrix `Z` `[n, m]` that holds k non-zeros per row, without building `Z`: the
//! decoder gradient (`src = dL/dx̂`), the transposed encoder gradient (`coef = dL/dpre`,
//! `src = x - b_dec`), the encoder-bias gradient and the firing counts (`src` a column of
//! ones). Dense, each was an `n × m` scatter plus an `n·d·m` GEMM; here it is `n·k·d` adds.
//!
//! On CUDA one block per `(t, j)` pair adds its row with atomics (`emlab_kernels::SAE`): the
//! order of the adds, and so the last bits of a sum, varies between runs. On the CPU a plain
//! loop in pair order (the reference the tests use).
//!
//! ```
//! use candle_core::{Device, Tensor};
//! use emlab_sae::sparse::sparse_rows_acc;
//! let dev = Device::Cpu;
//! let ids = Tensor::new(&[[2u32, 0], [2, 1]], &dev)?;          // n = 2 rows, k = 2
//! let coef = Tensor::new(&[[1f32, 0.5], [2., 0.]], &dev)?;     // coef 0: skipped
//! let src = Tensor::new(&[[1f32, 10.], [3., 30.]], &dev)?;     // d = 2
//! let out = sparse_rows_acc(&ids, &coef, &src, 3)?;           // m = 3
//! assert_eq!(out.to_vec2::<f32>()?, vec![vec![0.5, 5.], vec![0., 0.], vec![7., 70.]]);
//! # Ok::<(), candle_core::Error>(())
//! ```

use candle_core::{bail, CpuStorage, CustomOp3, Layout, Result, Shape, Tensor};

struct SparseRowsAcc {
    m: usize,
}

fn dims(ids: &Layout, coef: &Layout, src: &Layout) -> Result<(usize, usize, usize)> {
    let (n, k) = match ids.dims() {
        [n, k] => (*n, *k),
        d => bail!("sparse-rows-acc: ids must be [n, k], got {d:?}"),
    };
    if coef.dims() != ids.dims() {
        bail!("sparse-rows-acc: coef {:?} does not match ids {:?}", coef.dims(), ids.dims());
    }
    let d = match src.dims() {
        [n2, d] if *n2 == n => *d,
        s => bail!("sparse-rows-acc: src must be [{n}, d], got {s:?}"),
    };
    Ok((n, k, d))
}

fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    match l.contiguous_offsets() {
        Some((a, b)) => Ok(&v[a..b]),
        None => bail!("sparse-rows-acc: inputs must be contiguous"),
    }
}

impl CustomOp3 for SparseRowsAcc {
    fn name(&self) -> &'static str {
        "sparse-rows-acc"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (_, k, d) = dims(l1, l2, l3)?;
        let (ids, coef, src) = match (s1, s2, s3) {
            (CpuStorage::U32(i), CpuStorage::F32(c), CpuStorage::F32(s)) => (contiguous(i, l1)?, contiguous(c, l2)?, contiguous(s, l3)?),
            _ => bail!("sparse-rows-acc: expected u32 ids, f32 coef and f32 src"),
        };
        let mut out = vec![0f32; self.m * d];
        for (p, (&row, &c)) in ids.iter().zip(coef).enumerate() {
            let row = row as usize;
            if c == 0.0 || row >= self.m {
                continue;
            }
            let s = &src[(p / k) * d..][..d];
            for (o, &v) in out[row * d..][..d].iter_mut().zip(s) {
                *o += c * v;
            }
        }
        Ok((CpuStorage::F32(out), Shape::from((self.m, d))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::cuda_backend::cudarc::driver::{LaunchConfig, PushKernelArg};
        use candle_core::cuda_backend::{CudaStorageSlice, WrapErr};
        let (n, k, d) = dims(l1, l2, l3)?;
        let off =
            |l: &Layout| l.contiguous_offsets().ok_or_else(|| candle_core::Error::Msg("sparse-rows-acc: inputs must be contiguous".into()));
        let (a1, b1) = off(l1)?;
        let (a2, b2) = off(l2)?;
        let (a3, b3) = off(l3)?;
        let (ids, coef, src) = match (&s1.slice, &s2.slice, &s3.slice) {
            (CudaStorageSlice::U32(i), CudaStorageSlice::F32(c), CudaStorageSlice::F32(s)) => {
                (i.slice(a1..b1), c.slice(a2..b2), s.slice(a3..b3))
            }
            _ => bail!("sparse-rows-acc: expected u32 ids, f32 coef and f32 src"),
        };
        let dev = &s1.device;
        let out = dev.alloc_zeros::<f32>(self.m * d)?;
        let f = dev.get_or_load_custom_func("sparse_rows_acc_f32", "emlab-sae", emlab_kernels::SAE)?;
        let npairs = (n * k) as i32;
        let (ki, di, mi) = (k as i32, d as i32, self.m as i32);
        // Grid-stride over pairs: enough blocks to fill the card several times over (the
        // geometry of emlab_kernels::launch, which the emulator tests use too).
        let l = emlab_kernels::launch::sparse_rows_acc(n * k, d);
        let cfg = LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: l.shared_mem_bytes };
        let mut b = f.builder();
        b.arg(&ids).arg(&coef).arg(&src).arg(&out).arg(&npairs).arg(&ki).arg(&di).arg(&mi);
        unsafe { b.launch(cfg) }.w()?;
        Ok((candle_core::CudaStorage::wrap_cuda_slice(out, dev.clone()), Shape::from((self.m, d))))
    }
}

/// `out[ids[t, j], :] += coef[t, j] * src[t, :]` over all pairs, into zeros `[m, d]`.
/// `ids` `[n, k]` u32, `coef` `[n, k]` f32, `src` `[n, d]` f32; ids `>= m` and zero
/// coefficients are skipped. Not differentiable (it is itself a gradient).
pub fn sparse_rows_acc(ids: &Tensor, coef: &Tensor, src: &Tensor, m: usize) -> Result<Tensor> {
    ids.contiguous()?.apply_op3_no_bwd(&coef.contiguous()?, &src.contiguous()?, &SparseRowsAcc { m })
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn equals_the_dense_product_and_skips_out_of_range_ids() {
        let dev = Device::Cpu;
        let (n, k, d, m) = (4usize, 3usize, 5usize, 6usize);
        // Repeated latents across rows, an id past m (skipped) and a zero coefficient.
        let ids: Vec<u32> = vec![0, 2, 5, 2, 2, 1, 5, 0, 9, 3, 4, 2];
        let coef: Vec<f32> = (0..n * k).map(|i| if i == 4 { 0.0 } else { (i as f32 - 5.0) / 3.0 }).collect();
        let src: Vec<f32> = (0..n * d).map(|i| ((i * 7 % 11) as f32 - 5.0) / 4.0).collect();
        let out = sparse_rows_acc(
            &Tensor::from_vec(ids.clone(), (n, k), &dev).unwrap(),
            &Tensor::from_vec(coef.clone(), (n, k), &dev).unwrap(),
            &Tensor::from_vec(src.clone(), (n, d), &dev).unwrap(),
            m,
        )
        .unwrap();
        // Dense reference: Z [n, m] with the coefficients at their ids, then Zᵀ src.
        let mut z = vec![0f32; n * m];
        for (p, (&id, &c)) in ids.iter().zip(&coef).enumerate() {
            if (id as usize) < m {
                z[(p / k) * m + id as usize] += c;
            }
        }
        let got = out.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        for j in 0..m {
            for c in 0..d {
                let want: f32 = (0..n).map(|t| z[t * m + j] * src[t * d + c]).sum();
                assert!((got[j * d + c] - want).abs() < 1e-5, "out[{j}, {c}] = {} vs {want}", got[j * d + c]);
            }
        }
    }

    #[test]
    fn mismatched_shapes_are_errors() {
        let dev = Device::Cpu;
        let ids = Tensor::zeros((2, 3), candle_core::DType::U32, &dev).unwrap();
        let coef = Tensor::zeros((2, 3), candle_core::DType::F32, &dev).unwrap();
        let e = sparse_rows_acc(&ids, &coef, &Tensor::zeros((3, 4), candle_core::DType::F32, &dev).unwrap(), 8).unwrap_err();
        assert!(e.to_string().contains("src must be [2, d]"), "{e}");
        let e = sparse_rows_acc(&ids, &coef.narrow(1, 0, 2).unwrap(), &Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap(), 8)
            .unwrap_err();
        assert!(e.to_string().contains("does not match ids"), "{e}");
        let e = sparse_rows_acc(
            &ids.to_dtype(candle_core::DType::F32).unwrap(),
            &coef,
            &Tensor::zeros((2, 4), candle_core::DType::F32, &dev).unwrap(),
            8,
        );
        assert!(e.is_err());
    }
}
