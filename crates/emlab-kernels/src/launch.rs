//! Launch geometry of every kernel: grid, block and dynamic shared memory, as plain functions
//! compiled with or without the `cuda` feature. The CUDA launches (`emlab_model::cuda_ops`,
//! `emlab_train::cuda_optim`, `emlab_sae::sparse`) and the emulator tests ([`crate::emu`]) call
//! the same functions, so the tests run each kernel with the configuration the GPU gets.
//!
//! ```
//! use emlab_kernels::launch;
//! // RMSNorm over 6 rows of 576: one block per row, 256 threads (a multiple of 32).
//! let l = launch::rms_norm(6, 576);
//! assert_eq!((l.grid, l.block, l.shared_mem_bytes), ((6, 1, 1), (256, 1, 1), 0));
//! // Decode attention, 2 rows x 9 heads of 64: the rotated query and 4 warps' partial sums.
//! assert_eq!(launch::decode_attn(2, 9, 64).shared_mem_bytes, (64 + 2 * 4 + 4 * 64) * 4);
//! ```

/// A kernel launch's shape, as cudarc's `LaunchConfig` holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dims {
    pub grid: (u32, u32, u32),
    pub block: (u32, u32, u32),
    pub shared_mem_bytes: u32,
}

/// One block of `threads` per row.
pub fn rows(rows: usize, threads: u32) -> Dims {
    Dims { grid: (rows as u32, 1, 1), block: (threads, 1, 1), shared_mem_bytes: 0 }
}

/// Grid-stride element loops: enough 256-thread blocks to fill the card (132 SMs x 16), no more.
pub fn elems(n: usize) -> Dims {
    let blocks = n.div_ceil(256).clamp(1, 132 * 16) as u32;
    Dims { grid: (blocks, 1, 1), block: (256, 1, 1), shared_mem_bytes: 0 }
}

/// Threads per row-block: a multiple of 32 (the kernels' reductions need it), up to 256, or
/// 1024 for rows longer than 4096.
pub fn threads_for(cols: usize) -> u32 {
    (cols.div_ceil(32) * 32).clamp(32, if cols > 4096 { 1024 } else { 256 }) as u32
}

/// `rmsnorm_fwd_*` / `rmsnorm_bwd_*` over `rows` rows of `d`.
pub fn rms_norm(rows: usize, d: usize) -> Dims {
    self::rows(rows, threads_for(d))
}

/// `causal_softmax_fwd_*` / `softmax_bwd_*` over `rows` rows of `n` scores (at most 128
/// threads: rows are short and many).
pub fn softmax(rows: usize, n: usize) -> Dims {
    self::rows(rows, threads_for(n).min(128))
}

/// `rope_*` over an input of `elems` values (one thread per rotated pair).
pub fn rope(elems: usize) -> Dims {
    self::elems(elems / 2)
}

/// The rows of the RoPE tables (`tb`: 1, shared by every row, or `b`) for an input
/// `[b, t, h, d]` and tables of `cos_elems` / `sin_elems` values, or why the kernel cannot take
/// them (an odd head dimension: it would leave the last value of each head unwritten).
pub fn rope_table_rows(b: usize, t: usize, d: usize, cos_elems: usize, sin_elems: usize) -> Result<usize, String> {
    if !d.is_multiple_of(2) {
        return Err(format!("rope: head dimension {d} is odd"));
    }
    let half = d / 2;
    let tb = cos_elems / (t * half).max(1);
    if cos_elems != tb * t * half || !(tb == 1 || tb == b) || sin_elems != cos_elems {
        return Err(format!(
            "rope: tables of {cos_elems} / {sin_elems} values do not match an input [{b}, {t}, _, {d}] (want [1 or {b}, {t}, {half}])"
        ));
    }
    Ok(tb)
}

/// `silu_mul_fwd_*` / `silu_mul_bwd_*` over `n` values.
pub fn silu_mul(n: usize) -> Dims {
    elems(n)
}

/// `ce_fwd_*` / `ce_bwd_*` over `n` rows of `v` logits.
pub fn cross_entropy(n: usize, v: usize) -> Dims {
    rows(n, threads_for(v))
}

/// `kv_write_*`: one block per (row, kv head), up to 256 threads over the head dimension `d`.
pub fn kv_write(b: usize, g: usize, d: usize) -> Dims {
    rows(b * g, (d.div_ceil(32) * 32).clamp(32, 256) as u32)
}

/// Warps per `decode_attn_*` block: each walks every 4th key.
pub const ATTN_WARPS: usize = 4;

/// `decode_attn_*`: one block of [`ATTN_WARPS`] warps per (row, query head); shared memory
/// holds the rotated query, then each warp's max, sum and `d` partial sums.
pub fn decode_attn(b: usize, h: usize, d: usize) -> Dims {
    let shared = ((d + 2 * ATTN_WARPS + ATTN_WARPS * d) * 4) as u32;
    Dims { grid: ((b * h) as u32, 1, 1), block: ((32 * ATTN_WARPS) as u32, 1, 1), shared_mem_bytes: shared }
}

/// `multi_sumsq_f32` / `multi_adamw_f32` over segments of `len` values: grid (blocks per
/// segment, segments), 256 threads; a segment gets one block per 2048 values, up to 64.
pub fn multi_tensor(len: &[i64]) -> Dims {
    let longest = len.iter().copied().max().unwrap_or(0).max(1) as usize;
    let bx = longest.div_ceil(256 * 8).clamp(1, 64) as u32;
    Dims { grid: (bx, len.len() as u32, 1), block: (256, 1, 1), shared_mem_bytes: 0 }
}

/// `sparse_rows_acc_f32` over `npairs` (row, latent) pairs of rows of `d`: one block per pair
/// (grid-stride past 132 x 64 blocks), up to 256 threads over `d`.
pub fn sparse_rows_acc(npairs: usize, d: usize) -> Dims {
    let threads = (d.div_ceil(32) * 32).clamp(32, 256) as u32;
    let blocks = npairs.clamp(1, 132 * 64) as u32;
    Dims { grid: (blocks, 1, 1), block: (threads, 1, 1), shared_mem_bytes: 0 }
}
