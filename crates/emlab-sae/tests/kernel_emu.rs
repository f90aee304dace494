//! The sparse accumulation kernel of a TopK SAE step (`sparse_rows_acc_f32` in
//! `emlab_kernels::SAE`, launched by `emlab_sae::sparse` on CUDA) run on the CPU emulator
//! (`emlab_kernels::emu`) with the launch geometry of `emlab_kernels::launch::sparse_rows_acc`,
//! against the CPU form of `emlab_sae::sparse::sparse_rows_acc` (a plain loop in pair order).
//!
//! The kernel adds with atomics in no fixed order: values agree to f32 rounding of the sums
//! (relative 1e-5 of the sum of the terms' magnitudes).

use candle_core::{Device, Tensor};
use emlab_kernels::emu::{Emulator, Launch};
use emlab_kernels::launch;
use emlab_sae::sparse::sparse_rows_acc;

use emlab_kernels::emu::test_values as rand;

/// `n` rows of `k` pairs into `m` latents of width `d`: ids drawn from a small range (so pairs
/// collide on rows: concurrent atomic adds), a few ids past `m` and a few zero coefficients.
fn case(emu: &Emulator, n: usize, k: usize, d: usize, m: usize, seed: u64) {
    let np = n * k;
    let ids: Vec<u32> = rand(np, seed, 0.0, 1.0)
        .iter()
        .enumerate()
        .map(|(i, r)| if i % 97 == 5 { (m + i) as u32 } else { (r * (m.min(64)) as f32) as u32 * (m / m.min(64)) as u32 })
        .collect();
    let coef: Vec<f32> = rand(np, seed + 1, -1.0, 1.0).iter().enumerate().map(|(i, &c)| if i % 13 == 0 { 0.0 } else { c }).collect();
    let src = rand(n * d, seed + 2, -2.0, 2.0);
    let dev = Device::Cpu;
    let want = sparse_rows_acc(
        &Tensor::from_vec(ids.clone(), (n, k), &dev).unwrap(),
        &Tensor::from_vec(coef.clone(), (n, k), &dev).unwrap(),
        &Tensor::from_vec(src.clone(), (n, d), &dev).unwrap(),
        m,
    )
    .unwrap()
    .flatten_all()
    .unwrap()
    .to_vec1::<f32>()
    .unwrap();
    // The scale of each output: the sum of |coef * src| over the pairs that add into it.
    let mut mag = vec![0f32; m * d];
    for p in 0..np {
        let r = ids[p] as usize;
        if r < m && coef[p] != 0.0 {
            for i in 0..d {
                mag[r * d + i] += (coef[p] * src[(p / k) * d + i]).abs();
            }
        }
    }
    let cfg = launch::sparse_rows_acc(np, d);
    let mut l = Launch::new("sparse_rows_acc_f32", cfg);
    let (ib, cb, sb) = (l.input("ids", &ids), l.input("coef", &coef), l.input("src", &src));
    let ob = l.inout("out", &vec![0f32; m * d]); // zeroed by the caller (alloc_zeros)
    l.arg(ib).arg(cb).arg(sb).arg(ob).arg(np as i32).arg(k as i32).arg(d as i32).arg(m as i32);
    let got = emu.run(&l).unwrap_or_else(|e| panic!("{e}")).get::<f32>(ob);
    for (i, ((g, w), s)) in got.iter().zip(&want).zip(&mag).enumerate() {
        assert!(
            (g - w).abs() <= 1e-5 * s + 1e-7,
            "n={n} k={k} d={d} m={m} ({} blocks of {}): out[{}, {}] = {g}, reference {w}",
            cfg.grid.0,
            cfg.block.0,
            i / d,
            i % d
        );
    }
}

#[test]
fn sparse_rows_acc_matches_the_cpu_loop() {
    let Some(emu) = Emulator::get() else { return };
    // SmolLM2's width (576: 256 threads, three passes) with k = 32 of 2048 latents.
    case(emu, 8, 32, 576, 2048, 1);
    // A width off the warp size (100: 128 threads, the last warp partly idle).
    case(emu, 6, 16, 100, 300, 2);
    // More pairs than the grid's 132 x 64 blocks: each block loops over pairs (grid stride).
    let (n, k) = (280, 32);
    assert!(n * k > launch::sparse_rows_acc(n * k, 40).grid.0 as usize);
    case(emu, n, k, 40, 256, 3);
}
