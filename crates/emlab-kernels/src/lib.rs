//! emlab's own CUDA kernels, as PTX text for candle's `CudaDevice::get_or_load_custom_func`,
//! their launch geometry ([`launch`]) and a CPU emulator that runs them in tests ([`emu`]).
//!
//! ```
//! // The geometry the GPU launch uses, also what the emulator tests run with.
//! let l = emlab_kernels::launch::cross_entropy(8, 49152);
//! assert_eq!((l.grid.0, l.block.0), (8, 1024)); // one block per row; long rows get 1024 threads
//! ```
//!
//! The PTX is built only with the `cuda` feature (nvcc at build time, `scripts/build-cuda.sh`);
//! [`launch`] and [`emu`] are always built. The Rust side that launches them lives next to the code it
//! speeds up: `emlab_model::cuda_ops` (fused training ops with hand-written backward passes),
//! `emlab_train::cuda_optim` (multi-tensor AdamW) and `emlab_sae::sparse` (sparse gradients).
//!
//! - `TRAIN` (`src/train.cu`): RMSNorm forward / backward, scaled causal softmax forward /
//!   backward, half-rotation RoPE (the backward is the opposite rotation), SiLU(gate) * up
//!   forward / backward, cross-entropy forward / backward (f32 and bf16 inputs, f32 arithmetic);
//!   multi-tensor AdamW and sums of squares over tables of device pointers.
//! - `DECODE` (`src/decode.cu`): a decode step's attention over a batched KV cache (RoPE on the
//!   new key and query, the key/value write, online-softmax attention), reading the write column
//!   from device memory so that a captured CUDA graph replays every step.
//! - `SAE` (`src/sae.cu`): `out[ids[i]] += coef[i] * src[i / k]`, the sparse outer-product
//!   accumulation that replaces two dense `[d, m]` GEMMs of a TopK SAE step (atomic adds).
//!
//! ## The emulator
//!
//! No GPU is needed to test the kernels: [`emu`] compiles these `.cu` files with the host's C++
//! compiler against a small CUDA shim (`emu/cuda_emu.h`) and runs a launch on the CPU, each
//! block's threads as real threads, blocks one after another. The tests next to each kernel's
//! CPU reference (`emlab-model/tests/kernel_emu.rs`, `emlab-train/tests/kernel_emu.rs`,
//! `emlab-sae/tests/kernel_emu.rs`) run every kernel with the geometry of [`launch`], which the
//! CUDA launches use too. What it checks:
//!
//! - values against the CPU references, in f32 and bf16, at real model shapes and edge cases;
//! - accesses out of bounds: every buffer ends at an inaccessible page, so a read or write past
//!   its end is reported at once (kernel, block, thread, buffer, byte); before its start lies a
//!   poisoned zone (reads give NaN, writes are found after the launch); outputs start as NaN
//!   poison, so an element a kernel never writes shows up;
//! - writes to buffers a kernel should only read;
//! - dynamic shared memory: exactly the launch's `shared_mem_bytes`, laid out the same way and
//!   poisoned before each block (an undersized `shared_mem_bytes` is reported); launches the
//!   driver would refuse (more than 1024 threads, more than 48 KiB of dynamic shared memory
//!   without the opt-in attribute, an empty grid);
//! - `__syncthreads` or warp shuffles reached at different source lines by one phase's threads,
//!   shuffles over lanes that returned or a partial warp, and hangs (a watchdog);
//! - kernel arguments: the count, each scalar's width and each buffer's element type.
//!
//! What it cannot check: timing and occupancy; register limits (a launch can fail on the GPU for
//! want of registers); memory ordering between blocks (blocks run one at a time, so a kernel
//! that relies on another block's writes without atomics passes here); races inside a block
//! that the host's scheduling happens not to expose; warp-divergent code within a shuffle's
//! source line (lanes are kept in step only at shuffles and barriers); the GPU's fused
//! multiply-adds and approximate `expf` (the last bits differ); static `__shared__` arrays are not
//! poisoned between blocks.

pub mod emu;
pub mod launch;

/// PTX of `src/train.cu`.
#[cfg(feature = "cuda")]
pub const TRAIN: &str = include_str!(concat!(env!("OUT_DIR"), "/train.ptx"));

/// PTX of `src/sae.cu`.
#[cfg(feature = "cuda")]
pub const SAE: &str = include_str!(concat!(env!("OUT_DIR"), "/sae.ptx"));

/// PTX of `src/decode.cu`.
#[cfg(feature = "cuda")]
pub const DECODE: &str = include_str!(concat!(env!("OUT_DIR"), "/decode.ptx"));
