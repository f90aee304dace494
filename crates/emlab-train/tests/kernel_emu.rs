//! The multi-tensor CUDA optimizer kernels (`multi_sumsq_f32`, `multi_adamw_f32` in
//! `emlab_kernels::TRAIN`, launched by `emlab_train::cuda_optim`) run on the CPU emulator
//! (`emlab_kernels::emu`) with the launch geometry of `emlab_kernels::launch::multi_tensor`,
//! against the host AdamW (`emlab_train::optim::AdamW::step`) and f64 sums of squares.
//!
//! The segments are a LoRA's tensors at SmolLM2-135M's shapes (rank 8 on d 576 / 1536), a
//! bias-sized one, a single value, and one longer than 64 blocks x 256 threads x 8 (the grid's
//! cap), so the kernels' grid-stride loops and cross-block f64 atomics both run.

use emlab_kernels::emu::{Buf, Emulator, Launch};
use emlab_kernels::launch;
use emlab_train::optim::AdamW;

use emlab_kernels::emu::test_values as rand;

const SIZES: [usize; 6] = [8 * 576, 576 * 8, 1536 * 8, 576, 1, 140_000];

fn sumsq(v: &[f32]) -> f64 {
    v.iter().map(|&x| x as f64 * x as f64).sum()
}

/// Sums of squares within a block are f32 (then f64 across blocks): relative 1e-5.
fn assert_sums(what: &str, got: &[f64], want: &[f64]) {
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!((g - w).abs() <= 1e-5 * w.abs() + 1e-12, "{what}: segment {i}: kernel {g}, reference {w}");
    }
}

/// A launch over segments: each tensor its own buffer (as candle holds them), a table of their
/// addresses; returns the launch and the buffers.
fn segments(l: &mut Launch, name: &str, ts: &[Vec<f32>], writable: bool) -> (Buf, Vec<Buf>) {
    let bufs: Vec<Buf> = ts
        .iter()
        .enumerate()
        .map(|(i, t)| if writable { l.inout(&format!("{name}[{i}]"), t) } else { l.input(&format!("{name}[{i}]"), t) })
        .collect();
    let table = l.pointer_table(&format!("{name} pointers"), &bufs.iter().map(|&b| (b, 0)).collect::<Vec<_>>());
    (table, bufs)
}

#[test]
fn multi_sumsq_matches_f64_sums() {
    let Some(emu) = Emulator::get() else { return };
    let grads: Vec<Vec<f32>> = SIZES.iter().enumerate().map(|(i, &n)| rand(n, 10 + i as u64, -2.0, 2.0)).collect();
    let len: Vec<i64> = SIZES.iter().map(|&n| n as i64).collect();
    let cfg = launch::multi_tensor(&len);
    assert_eq!(cfg.grid, (64, SIZES.len() as u32, 1), "the longest segment needs the grid's cap");
    let mut l = Launch::new("multi_sumsq_f32", cfg);
    let (table, _) = segments(&mut l, "grad", &grads, false);
    let lb = l.input("len", &len);
    let out = l.inout("out", &vec![0f64; SIZES.len()]); // zeroed by the caller (alloc_zeros)
    l.arg(table).arg(lb).arg(out);
    let got = emu.run(&l).unwrap_or_else(|e| panic!("{e}")).get::<f64>(out);
    assert_sums("multi_sumsq_f32", &got, &grads.iter().map(|g| sumsq(g)).collect::<Vec<_>>());
}

#[test]
fn multi_adamw_matches_the_host_optimizer_over_three_steps() {
    let Some(emu) = Emulator::get() else { return };
    let (b1, b2, eps, wd) = (0.9, 0.999, 1e-8, 0.01);
    let mut host = AdamW::new(&SIZES, b1, b2, eps, wd);
    let mut p_host: Vec<Vec<f32>> = SIZES.iter().enumerate().map(|(i, &n)| rand(n, 20 + i as u64, -0.1, 0.1)).collect();
    let mut p_dev = p_host.clone();
    let total: usize = SIZES.iter().sum();
    let (mut m, mut v) = (vec![0f32; total], vec![0f32; total]);
    let off: Vec<i64> = SIZES
        .iter()
        .scan(0i64, |a, &n| {
            let o = *a;
            *a += n as i64;
            Some(o)
        })
        .collect();
    let len: Vec<i64> = SIZES.iter().map(|&n| n as i64).collect();
    for step in 0..3u64 {
        let grads: Vec<Vec<f32>> = SIZES.iter().enumerate().map(|(i, &n)| rand(n, 100 * step + i as u64, -1.0, 1.0)).collect();
        // Step 1 clips (scale 0.5), as a clipped step scales the gradients before the update.
        let gscale = if step == 1 { 0.5f32 } else { 1.0 };
        let lr = 1e-3 * (step + 1) as f64;
        let scaled: Vec<Vec<f32>> = grads.iter().map(|g| g.iter().map(|x| x * gscale).collect()).collect();
        host.step(&mut p_host, &scaled, lr);
        // The constants as AdamW computes them for update t (f64, rounded to f32).
        let t = host.t as i32;
        let bc1 = 1.0 - b1.powi(t);
        let bc2 = 1.0 - b2.powi(t);
        let (step_size, bc2_sqrt, decay) = ((lr / bc1) as f32, bc2.sqrt() as f32, (1.0 - lr * wd) as f32);

        let mut l = Launch::new("multi_adamw_f32", launch::multi_tensor(&len));
        let (pt, pbufs) = segments(&mut l, "param", &p_dev, true);
        let (gt, _) = segments(&mut l, "grad", &grads, false);
        let (ob, lb) = (l.input("off", &off), l.input("len", &len));
        let (mb, vb) = (l.inout("m", &m), l.inout("v", &v));
        let ps = l.inout("psumsq", &vec![0f64; SIZES.len()]);
        l.arg(pt).arg(gt).arg(ob).arg(lb).arg(mb).arg(vb);
        l.arg(gscale).arg(b1 as f32).arg(b2 as f32).arg(step_size).arg(bc2_sqrt).arg(eps as f32).arg(decay).arg(ps);
        let out = emu.run(&l).unwrap_or_else(|e| panic!("{e}"));
        for (i, b) in pbufs.iter().enumerate() {
            p_dev[i] = out.get::<f32>(*b);
        }
        m = out.get::<f32>(mb);
        v = out.get::<f32>(vb);
        // Same formula, same order, same f32 constants: equal to one unit in the last place
        // (a compiler may contract a multiply-add; the host loop's bits are the target).
        for (i, (a, b)) in p_dev.iter().zip(&p_host).enumerate() {
            for (j, (x, y)) in a.iter().zip(b).enumerate() {
                assert!((x - y).abs() <= 2.0 * f32::EPSILON * y.abs().max(1e-30), "step {step}: param {i}[{j}]: kernel {x}, host {y}");
            }
        }
        let flat_host = |bufs: &[Vec<f32>]| bufs.iter().flatten().copied().collect::<Vec<f32>>();
        for (name, got, want) in [("m", &m, flat_host(&host.m)), ("v", &v, flat_host(&host.v))] {
            for (j, (x, y)) in got.iter().zip(&want).enumerate() {
                assert!((x - y).abs() <= 2.0 * f32::EPSILON * y.abs(), "step {step}: {name}[{j}]: kernel {x}, host {y}");
            }
        }
        assert_sums(
            &format!("multi_adamw_f32 step {step} psumsq"),
            &out.get::<f64>(ps),
            &p_host.iter().map(|p| sumsq(p)).collect::<Vec<_>>(),
        );
    }
}
