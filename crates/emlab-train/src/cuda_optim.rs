//! AdamW on a CUDA device over the adapter tensors in place: one kernel for the per-tensor
//! gradient sums of squares, one for the update (which also sums the squares of the new
//! parameters, for the per-module norms the metrics log), `emlab_kernels::TRAIN`.
//!
//! Why: the flat-tensor AdamW of [`crate::optim::AdamW::step_flat`] needs the gradients gathered
//! into one tensor and the result copied back into every variable: ~2 x 420 launches for
//! SmolLM2's adapters, plus a download of all parameters for the norms. Measured on an H200
//! (run 3, docs/benchmarks.md) that was 89 of a 226 ms step. Here a step costs two launches, two
//! uploads of a pointer table and two downloads of one f64 per tensor.
//!
//! The kernels read each gradient and write each variable where candle keeps it (device
//! pointers taken from the tensors' storage), in stream order: nothing else touches those
//! buffers between the launch and the next candle op on the same stream. The moments are the
//! optimizer's flat device tensors (`AdamW`'s device state), so checkpoints and resumes go
//! through [`crate::optim::AdamW::pull_moments`] / `push_moments` as on the flat path.
//! Checked on the GPU by `bench/gpu/run.sh`'s parity steps against the CPU trainer (losses equal
//! to all printed digits after two updates). Not bit-identical to the host loop: nvcc fuses
//! multiply-adds, and the sums of squares (f32 within a block, f64 atomics across blocks) vary
//! in their last bits between runs, so may the clipping coefficient.

use candle_core::backend::BackendStorage;
use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DevicePtr, LaunchConfig, PushKernelArg};
use candle_core::cuda_backend::WrapErr;
use candle_core::{bail, CudaDevice, Result, Storage, Tensor};

/// On unless `EMLAB_CUDA_FUSED=0` (which also turns off the fused training ops).
pub fn enabled() -> bool {
    emlab_model::device::cuda_fused()
}

/// Device address of the first element of a contiguous f32 CUDA tensor.
fn dptr(t: &Tensor, what: &str) -> Result<(u64, CudaDevice)> {
    let (st, l) = t.storage_and_layout();
    if !l.is_contiguous() {
        bail!("{what}: not contiguous");
    }
    match &*st {
        Storage::Cuda(cs) => {
            let s = cs.as_cuda_slice::<f32>()?;
            let stream = cs.device().cuda_stream();
            let (p, _sync) = s.device_ptr(&stream);
            Ok((p + (l.start_offset() * 4) as u64, cs.device().clone()))
        }
        _ => bail!("{what}: not a CUDA tensor"),
    }
}

fn table(ts: &[Tensor], what: &str) -> Result<(Vec<u64>, CudaDevice)> {
    let mut dev = None;
    let mut ptrs = Vec::with_capacity(ts.len());
    for t in ts {
        let (p, d) = dptr(t, what)?;
        ptrs.push(p);
        dev.get_or_insert(d);
    }
    match dev {
        Some(d) => Ok((ptrs, d)),
        None => bail!("{what}: no tensors"),
    }
}

fn upload<T: candle_core::cuda_backend::cudarc::driver::DeviceRepr>(dev: &CudaDevice, v: &[T]) -> Result<CudaSlice<T>> {
    dev.cuda_stream().clone_htod(v).w()
}

/// Grid (blocks per segment, segments), 256 threads: [`emlab_kernels::launch::multi_tensor`]
/// (also the emulator tests' geometry).
fn launch_cfg(len: &[i64]) -> LaunchConfig {
    let l = emlab_kernels::launch::multi_tensor(len);
    LaunchConfig { grid_dim: l.grid, block_dim: l.block, shared_mem_bytes: l.shared_mem_bytes }
}

/// Sum of squares of each tensor (contiguous f32 on one CUDA device), in f64.
pub fn sumsq(ts: &[Tensor]) -> Result<Vec<f64>> {
    let (ptrs, dev) = table(ts, "gradient")?;
    let len: Vec<i64> = ts.iter().map(|t| t.elem_count() as i64).collect();
    let (gp, ln) = (upload(&dev, &ptrs)?, upload(&dev, &len)?);
    let out = dev.alloc_zeros::<f64>(ts.len())?;
    let f = dev.get_or_load_custom_func("multi_sumsq_f32", "emlab-train", emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    b.arg(&gp).arg(&ln).arg(&out);
    unsafe { b.launch(launch_cfg(&len)) }.w()?;
    dev.cuda_stream().clone_dtoh(&out).w()
}

/// One AdamW update of `params` (f32 CUDA tensors, updated in place) with `grads` (same
/// shapes), moments `m`, `v` flat `[sum of sizes]` in parameter order (updated in place).
/// Gradients are scaled by `gscale` (clipping); `c`: the update's constants, rounded to f32 as
/// the host loop rounds them. Returns the sum of squares of each updated parameter tensor.
pub(crate) fn adamw(
    params: &[Tensor],
    grads: &[Tensor],
    m: &Tensor,
    v: &Tensor,
    gscale: f32,
    c: &crate::optim::Consts,
) -> Result<Vec<f64>> {
    if params.len() != grads.len() {
        bail!("adamw: {} parameters, {} gradients", params.len(), grads.len());
    }
    let mut off = Vec::with_capacity(params.len());
    let mut acc = 0i64;
    for (p, g) in params.iter().zip(grads) {
        if p.elem_count() != g.elem_count() {
            bail!("adamw: parameter {:?} with gradient {:?}", p.dims(), g.dims());
        }
        off.push(acc);
        acc += p.elem_count() as i64;
    }
    if m.elem_count() as i64 != acc || v.elem_count() as i64 != acc {
        bail!("adamw: moments hold {} values, parameters {acc}", m.elem_count());
    }
    let len: Vec<i64> = params.iter().map(|t| t.elem_count() as i64).collect();
    let (pp, dev) = table(params, "parameter")?;
    let (gp, _) = table(grads, "gradient")?;
    let ((mp, _), (vp, _)) = (dptr(m, "first moment")?, dptr(v, "second moment")?);
    let (pp, gp, of, ln) = (upload(&dev, &pp)?, upload(&dev, &gp)?, upload(&dev, &off)?, upload(&dev, &len)?);
    let out = dev.alloc_zeros::<f64>(params.len())?;
    let f = dev.get_or_load_custom_func("multi_adamw_f32", "emlab-train", emlab_kernels::TRAIN)?;
    let mut b = f.builder();
    b.arg(&pp).arg(&gp).arg(&of).arg(&ln).arg(&mp).arg(&vp);
    b.arg(&gscale).arg(&c.b1).arg(&c.b2).arg(&c.step_size).arg(&c.bc2_sqrt).arg(&c.eps).arg(&c.decay).arg(&out);
    unsafe { b.launch(launch_cfg(&len)) }.w()?;
    dev.cuda_stream().clone_dtoh(&out).w()
}
