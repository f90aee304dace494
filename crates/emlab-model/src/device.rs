//! Device and dtype selection: `EMLAB_DEVICE` and `EMLAB_DTYPE`.
//!
//! Every command loads its models through [`crate::Model::load`], which applies these two
//! environment variables when the caller left [`crate::LoadOptions`] at its CPU default, so one
//! setting moves a whole run (`emlab run`, `emlab train`, evaluation, capture) onto a GPU:
//!
//! - `EMLAB_DEVICE=cpu | cuda | cuda:N` (default `cpu`). CUDA needs a binary built with the
//!   `cuda` feature (`scripts/build-cuda.sh`, `docs/gpu.md`).
//! - `EMLAB_DTYPE=f32 | bf16 | f16`: the dtype of the frozen base weights and activations.
//!   Default: f32 on the CPU (the reference, and what the CPU kernels are written for), bf16 on
//!   a GPU. LoRA weights, optimizer state, logits and losses stay f32 whatever this says.
//!
//! ```
//! use emlab_model::device::{parse_device, parse_dtype, DeviceSpec};
//! assert_eq!(parse_device("cuda:1").unwrap(), DeviceSpec::Cuda(1));
//! assert_eq!(parse_device(" CPU ").unwrap(), DeviceSpec::Cpu);
//! assert!(parse_device("gpu").is_err());
//! assert_eq!(parse_dtype("bf16").unwrap(), candle_core::DType::BF16);
//! ```

use crate::{Error, Result};
use candle_core::{DType, Device};

/// Process-wide CPU thread settings; binaries call this first thing in `main`, before any
/// thread starts (it may set an environment variable).
///
/// candle runs large element-wise ops on its own worker pool, whose workers spin 25,000 times
/// after each op before sleeping. emlab's kernels run on rayon's pool, so on a 2-core machine a
/// spinning candle worker takes a core from them: batched decoding ran at 551 tok/s with the
/// default and 608-625 with no spinning (`CANDLE_BARRIER_POOL_SPIN_LIMIT=0`, 2026-11-27); LoRA
/// training did not change (104.0 / 102.7 tok/s without spinning, 105.5 / 96.7 with). A value
/// the user set is kept.
pub fn init_cpu_threads() {
    if std::env::var_os("CANDLE_BARRIER_POOL_SPIN_LIMIT").is_none() {
        // Edition 2021: set_var is safe; called before other threads exist.
        std::env::set_var("CANDLE_BARRIER_POOL_SPIN_LIMIT", "0");
    }
}

/// A parsed device name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    /// CUDA device ordinal.
    Cuda(usize),
}

/// Parses `cpu`, `cuda` or `cuda:N` (case and surrounding spaces ignored).
pub fn parse_device(s: &str) -> Result<DeviceSpec> {
    let t = s.trim().to_ascii_lowercase();
    match t.as_str() {
        "cpu" => Ok(DeviceSpec::Cpu),
        "cuda" => Ok(DeviceSpec::Cuda(0)),
        _ => match t.strip_prefix("cuda:").map(str::parse::<usize>) {
            Some(Ok(n)) => Ok(DeviceSpec::Cuda(n)),
            _ => Err(Error::Invalid(format!("device `{s}`: expected cpu, cuda or cuda:N"))),
        },
    }
}

/// Parses `f32`, `bf16` or `f16`.
pub fn parse_dtype(s: &str) -> Result<DType> {
    match s.trim().to_ascii_lowercase().as_str() {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        _ => Err(Error::Invalid(format!("dtype `{s}`: expected f32, bf16 or f16"))),
    }
}

/// Opens a device. CUDA on a binary built without the `cuda` feature is a one-line error that
/// says how to get one.
pub fn open(spec: DeviceSpec) -> Result<Device> {
    match spec {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(n) => {
            if !cfg!(feature = "cuda") {
                return Err(Error::Invalid(format!(
                    "device cuda:{n}: this emlab was built without the `cuda` feature (build one with scripts/build-cuda.sh)"
                )));
            }
            let d = Device::new_cuda(n)
                .map_err(|e| Error::Invalid(format!("device cuda:{n}: {}", crate::error::first_line(&e.to_string()))))?;
            #[cfg(feature = "cuda")]
            if let Device::Cuda(c) = &d {
                // emlab runs every kernel on the device's one stream, so the per-tensor CUDA
                // events cudarc records (for cross-stream safety) are pure overhead: a record
                // and a wait per kernel argument, on launch-bound decode steps.
                // SAFETY: no tensor is ever used on a second stream.
                unsafe { c.disable_event_tracking() };
                keep_freed_memory(c);
            }
            Ok(d)
        }
    }
}

/// Tells the device's default memory pool (the one candle's stream-ordered allocations use) to
/// keep freed memory instead of returning it to the driver at every synchronisation (its
/// default threshold is 0): every host read (a loss, a gradient, sampled tokens) synchronises, and
/// re-mapping memory after each one costs more than the kernels of a small model's step. This is
/// what PyTorch's caching allocator does. Best effort: a driver that refuses keeps its default.
#[cfg(feature = "cuda")]
fn keep_freed_memory(c: &candle_core::CudaDevice) {
    use candle_core::cuda_backend::cudarc::driver::sys;
    let dev = c.cuda_stream().context().cu_device();
    // SAFETY: plain driver calls on a valid device handle, with out-pointers to locals.
    unsafe {
        let mut pool: sys::CUmemoryPool = std::ptr::null_mut();
        if sys::cuDeviceGetDefaultMemPool(&mut pool, dev) == sys::CUresult::CUDA_SUCCESS && !pool.is_null() {
            let mut threshold: u64 = u64::MAX;
            let _ = sys::cuMemPoolSetAttribute(
                pool,
                sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RELEASE_THRESHOLD,
                &mut threshold as *mut u64 as *mut std::ffi::c_void,
            );
        }
    }
}

/// The device `EMLAB_DEVICE` names, if it is set and not empty.
pub fn device_from_env() -> Result<Option<Device>> {
    match std::env::var("EMLAB_DEVICE") {
        Ok(s) if !s.trim().is_empty() => {
            let spec = parse_device(&s).map_err(|e| Error::Invalid(format!("EMLAB_DEVICE: {e}")))?;
            open(spec).map(Some)
        }
        _ => Ok(None),
    }
}

/// The dtype `EMLAB_DTYPE` names, if it is set and not empty.
pub fn dtype_from_env() -> Result<Option<DType>> {
    match std::env::var("EMLAB_DTYPE") {
        Ok(s) if !s.trim().is_empty() => parse_dtype(&s).map(Some).map_err(|e| Error::Invalid(format!("EMLAB_DTYPE: {e}"))),
        _ => Ok(None),
    }
}

/// An A/B switch from the environment: the value of `name` if it is one of `allowed` (compared
/// case-insensitively, returned as written in `allowed`), `default` when unset or empty, and
/// `default` with a one-line warning on stderr for anything else, so that a typo does not
/// silently measure the wrong side of an A/B.
///
/// ```
/// use emlab_model::device::env_switch;
/// assert_eq!(env_switch("EMLAB_DOCTEST_UNSET_SWITCH", &["f16", "f32"], "f16"), "f16");
/// ```
pub fn env_switch(name: &str, allowed: &[&'static str], default: &'static str) -> &'static str {
    let v = match std::env::var(name) {
        Ok(v) if !v.trim().is_empty() => v,
        _ => return default,
    };
    match allowed.iter().find(|a| a.eq_ignore_ascii_case(v.trim())) {
        Some(a) => a,
        None => {
            eprintln!("emlab: warning: {name}={v:?} is not one of {}; using {default}", allowed.join(", "));
            default
        }
    }
}

/// `EMLAB_CUDA_FUSED` (`1` default, `0`): emlab's fused CUDA training kernels and in-place CUDA
/// optimizer, or candle's composed ops and the flat-tensor optimizer. Read once per process.
pub fn cuda_fused() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| env_switch("EMLAB_CUDA_FUSED", &["1", "0"], "1") == "1")
}

/// The base-weight dtype used on `device` when nothing asks for another: f32 on the CPU, bf16
/// elsewhere (tensor cores; half the memory traffic of f32).
pub fn default_dtype(device: &Device) -> DType {
    if device.is_cpu() {
        DType::F32
    } else {
        DType::BF16
    }
}

/// A short name for reports: `cpu`, `cuda:0`.
pub fn describe(device: &Device) -> String {
    match device.location() {
        candle_core::DeviceLocation::Cpu => "cpu".into(),
        candle_core::DeviceLocation::Cuda { gpu_id } => format!("cuda:{gpu_id}"),
        candle_core::DeviceLocation::Metal { gpu_id } => format!("metal:{gpu_id}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_devices_and_dtypes() {
        assert_eq!(parse_device("cpu").unwrap(), DeviceSpec::Cpu);
        assert_eq!(parse_device("cuda").unwrap(), DeviceSpec::Cuda(0));
        assert_eq!(parse_device("CUDA:3").unwrap(), DeviceSpec::Cuda(3));
        for bad in ["cuda:", "cuda:x", "metal", "", "cuda:-1"] {
            let e = parse_device(bad).unwrap_err().to_string();
            assert!(e.contains("expected cpu, cuda or cuda:N"), "{e}");
        }
        assert_eq!(parse_dtype("F32").unwrap(), DType::F32);
        assert_eq!(parse_dtype("f16").unwrap(), DType::F16);
        assert!(parse_dtype("int8").is_err());
        assert_eq!(default_dtype(&Device::Cpu), DType::F32);
        assert_eq!(describe(&Device::Cpu), "cpu");
    }

    #[test]
    fn env_switches_take_known_values_and_fall_back_on_typos() {
        // Names used by no other test: the environment is shared by the test threads.
        std::env::set_var("EMLAB_TEST_SWITCH_A", "F32");
        assert_eq!(env_switch("EMLAB_TEST_SWITCH_A", &["f16", "f32"], "f16"), "f32");
        std::env::set_var("EMLAB_TEST_SWITCH_B", "fp32"); // a typo: the default, with a warning
        assert_eq!(env_switch("EMLAB_TEST_SWITCH_B", &["f16", "f32"], "f16"), "f16");
        std::env::set_var("EMLAB_TEST_SWITCH_C", " ");
        assert_eq!(env_switch("EMLAB_TEST_SWITCH_C", &["1", "0"], "1"), "1");
        assert_eq!(env_switch("EMLAB_TEST_SWITCH_UNSET", &["1", "0"], "0"), "0");
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cuda_without_the_feature_is_a_clear_error() {
        let e = open(DeviceSpec::Cuda(0)).unwrap_err().to_string();
        assert!(e.contains("without the `cuda` feature") && !e.contains('\n'), "{e}");
    }
}
