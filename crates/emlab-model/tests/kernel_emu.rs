//! emlab's CUDA training and decode kernels (`emlab_kernels::TRAIN`, `DECODE`) run on the CPU
//! emulator (`emlab_kernels::emu`) with the launch geometry the CUDA launches use
//! (`emlab_kernels::launch`), against this crate's CPU implementations: the fused CPU ops of
//! `emlab_model::ops` (f32, with their hand-written backward passes), the composed bf16 forms
//! (HF's rounding order) and the decode ops' CPU reference (`emlab_model::decode`).
//!
//! Shapes are SmolLM2-135M's (d 576, 9 query / 3 kv heads of 64) and Qwen2.5-0.5B's (d 896,
//! 14 / 2 heads of 64), with few rows. bf16 kernels compute in f32 and round once: they are
//! compared with the f32 reference on the same bf16-rounded inputs, to one bf16 unit in the last
//! place (2^-7 relative) plus a small absolute term for values near zero.
//!
//! Without a C++ compiler the tests print a notice and pass, unless `CI` is set (then they fail).

use candle_core::{DType, Device, Tensor, Var};
use emlab_kernels::emu::{self, Emulator, Launch};
use emlab_kernels::launch;
use emlab_model::{decode, ops};
use half::bf16;

const EPS: f32 = 1e-5;

/// Block-barrier jitter for the kernels that run two block reductions back to back on one
/// scratch array (RMSNorm backward, cross-entropy): a missing barrier between them shows up as
/// wrong values (see `emu::Launch::jitter_us`).
const JITTER_US: u32 = 5000;

fn emulator() -> Option<&'static Emulator> {
    Emulator::get()
}

use emlab_kernels::emu::test_values as rand;

fn to_bf(v: &[f32]) -> Vec<bf16> {
    v.iter().map(|&x| bf16::from_f32(x)).collect()
}
fn from_bf(v: &[bf16]) -> Vec<f32> {
    v.iter().map(|x| x.to_f32()).collect()
}
/// Values rounded through bf16 (what a bf16 kernel actually reads).
fn round_bf(v: &[f32]) -> Vec<f32> {
    from_bf(&to_bf(v))
}

fn cpu(v: &[f32], shape: &[usize]) -> Tensor {
    Tensor::from_vec(v.to_vec(), shape, &Device::Cpu).unwrap()
}
fn flat(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// `|got - want| <= rtol |want| + atol` everywhere (NaN fails), naming the first miss.
fn assert_close(what: &str, got: &[f32], want: &[f32], rtol: f32, atol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: {} values, want {}", got.len(), want.len());
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= rtol * w.abs() + atol,
            "{what}: element {i}: kernel {g}, reference {w} (|diff| {err}, tolerance {} + {atol})",
            rtol * w.abs()
        );
    }
}

/// f32 kernels against f32 references: the sums run in another order.
fn close_f32(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_close(what, got, want, 2e-5, 2e-6 * scale.max(1e-3));
}

/// bf16 kernels against f32 references on the same inputs: one bf16 ulp.
fn close_bf16(what: &str, got: &[f32], want: &[f32]) {
    let scale = want.iter().fold(0f32, |m, x| m.max(x.abs()));
    assert_close(what, got, want, 1.0 / 128.0, 1e-4 * scale.max(1e-3));
}

fn run(emu: &Emulator, l: &Launch) -> emu::Outputs {
    emu.run(l).unwrap_or_else(|e| panic!("{e}"))
}

/// The two model shapes: (name, hidden size d, query heads, kv heads, head dim).
const MODELS: [(&str, usize, usize, usize, usize); 2] = [("SmolLM2-135M", 576, 9, 3, 64), ("Qwen2.5-0.5B", 896, 14, 2, 64)];

// ---------------------------------------------------------------------------------------------
// RMSNorm

/// f32 reference: the fused CPU op and its hand-written backward (x tracks gradients).
fn rms_reference(x: &[f32], w: &[f32], dy: &[f32], rows: usize, d: usize) -> (Vec<f32>, Vec<f32>) {
    let xv = Var::from_tensor(&cpu(x, &[rows, d])).unwrap();
    let y = ops::rms_norm(xv.as_tensor(), &cpu(w, &[d]), EPS as f64).unwrap();
    let g = (&y * cpu(dy, &[rows, d])).unwrap().sum_all().unwrap().backward().unwrap();
    (flat(&y), flat(g.get(xv.as_tensor()).unwrap()))
}

#[test]
fn rms_norm_forward_and_backward_match_the_cpu_ops() {
    let Some(emu) = emulator() else { return };
    for (model, d, ..) in MODELS {
        let rows = 3;
        // Rows of different scales (the norm divides it out), weights around 1.
        let mut x = rand(rows * d, 1, -1.0, 1.0);
        x[d..2 * d].iter_mut().for_each(|v| *v *= 30.0);
        let w = rand(d, 2, 0.5, 1.5);
        let dy = rand(rows * d, 3, -1.0, 1.0);
        let cfg = launch::rms_norm(rows, d);

        // f32
        let (y_ref, dx_ref) = rms_reference(&x, &w, &dy, rows, d);
        let mut l = Launch::new("rmsnorm_fwd_f32", cfg);
        let (xb, wb, yb) = (l.input("x", &x), l.input("w", &w), l.output::<f32>("y", rows * d));
        l.arg(xb).arg(wb).arg(yb).arg(d as i32).arg(EPS).jitter_us(JITTER_US);
        close_f32(&format!("{model} rmsnorm_fwd_f32"), &run(emu, &l).get::<f32>(yb), &y_ref);
        let mut l = Launch::new("rmsnorm_bwd_f32", cfg);
        let (xb, wb, gb, db) = (l.input("x", &x), l.input("w", &w), l.input("dy", &dy), l.output::<f32>("dx", rows * d));
        l.arg(xb).arg(wb).arg(gb).arg(db).arg(d as i32).arg(EPS).jitter_us(JITTER_US);
        close_f32(&format!("{model} rmsnorm_bwd_f32"), &run(emu, &l).get::<f32>(db), &dx_ref);

        // bf16: the forward against the composed bf16 op (normalise in f32, round, scale, round:
        // HF's order, which the kernel follows); the backward against f32 on the rounded inputs.
        let (xh, wh, dyh) = (to_bf(&x), to_bf(&w), to_bf(&dy));
        let xt = Tensor::from_vec(xh.clone(), (rows, d), &Device::Cpu).unwrap();
        let wt = Tensor::from_vec(wh.clone(), d, &Device::Cpu).unwrap();
        let y_ref = flat(&ops::rms_norm(&xt, &wt, EPS as f64).unwrap());
        let mut l = Launch::new("rmsnorm_fwd_bf16", cfg);
        let (xb, wb, yb) = (l.input("x", &xh), l.input("w", &wh), l.output::<bf16>("y", rows * d));
        l.arg(xb).arg(wb).arg(yb).arg(d as i32).arg(EPS).jitter_us(JITTER_US);
        close_bf16(&format!("{model} rmsnorm_fwd_bf16"), &from_bf(&run(emu, &l).get::<bf16>(yb)), &y_ref);
        let (_, dx_ref) = rms_reference(&round_bf(&x), &round_bf(&w), &round_bf(&dy), rows, d);
        let mut l = Launch::new("rmsnorm_bwd_bf16", cfg);
        let (xb, wb, gb, db) = (l.input("x", &xh), l.input("w", &wh), l.input("dy", &dyh), l.output::<bf16>("dx", rows * d));
        l.arg(xb).arg(wb).arg(gb).arg(db).arg(d as i32).arg(EPS).jitter_us(JITTER_US);
        close_bf16(&format!("{model} rmsnorm_bwd_bf16"), &from_bf(&run(emu, &l).get::<bf16>(db)), &dx_ref);
    }
}

// ---------------------------------------------------------------------------------------------
// Cross-entropy

/// f32 reference: the fused CPU op (which refuses targets outside the vocabulary: rows with one
/// get target 0 here and are checked separately) and its backward for upstream gradients `g`.
fn ce_reference(x: &[f32], tg: &[u32], g: &[f32], n: usize, v: usize) -> (Vec<f32>, Vec<f32>) {
    let safe: Vec<u32> = tg.iter().map(|&t| if (t as usize) < v { t } else { 0 }).collect();
    let xv = Var::from_tensor(&cpu(x, &[n, v])).unwrap();
    let loss = ops::cross_entropy(xv.as_tensor(), &Tensor::from_vec(safe, n, &Device::Cpu).unwrap()).unwrap();
    let grads = (&loss * cpu(g, &[n])).unwrap().sum_all().unwrap().backward().unwrap();
    (flat(&loss), flat(grads.get(xv.as_tensor()).unwrap()))
}

/// Rows: ordinary targets (first, last and middle of the vocabulary), one target past the
/// vocabulary (NaN loss, zero gradient), one row with upstream gradient 0 (zero gradient).
fn ce_case(emu: &Emulator, v: usize, seed: u64) {
    let n = 5;
    let mut x = rand(n * v, seed, -4.0, 4.0);
    x[2 * v + 7] = 12.0; // a peaked row
    let tg: Vec<u32> = vec![0, (v - 1) as u32, 7, v as u32 + 3, (v / 2) as u32];
    let g: Vec<f32> = vec![0.7, -1.3, 1.0, 0.5, 0.0];
    let (bad, zero) = (3, 4);
    let cfg = launch::cross_entropy(n, v);
    for bf in [false, true] {
        let xin = if bf { round_bf(&x) } else { x.clone() };
        let (loss_ref, dx_ref) = ce_reference(&xin, &tg, &g, n, v);
        let sfx = if bf { "bf16" } else { "f32" };
        let mut l = Launch::new(&format!("ce_fwd_{sfx}"), cfg);
        let xb = if bf { l.input("logits", &to_bf(&x)) } else { l.input("logits", &x) };
        let (tb, lb) = (l.input("targets", &tg), l.output::<f32>("loss", n));
        l.arg(xb).arg(tb).arg(lb).arg(v as i32).jitter_us(JITTER_US);
        let loss = run(emu, &l).get::<f32>(lb);
        let what = format!("ce_fwd_{sfx} V={v}");
        assert!(loss[bad].is_nan(), "{what}: a target past the vocabulary gives loss {}, want NaN", loss[bad]);
        let keep = |a: &[f32]| a.iter().enumerate().filter(|(i, _)| *i != bad).map(|(_, x)| *x).collect::<Vec<_>>();
        // The loss is f32 whatever the logits: f32 tolerance on the rounded inputs.
        close_f32(&what, &keep(&loss), &keep(&loss_ref));

        let mut l = Launch::new(&format!("ce_bwd_{sfx}"), cfg);
        let xb = if bf { l.input("logits", &to_bf(&x)) } else { l.input("logits", &x) };
        let (tb, gb) = (l.input("targets", &tg), l.input("grad", &g));
        let db = if bf { l.output::<bf16>("dx", n * v) } else { l.output::<f32>("dx", n * v) };
        l.arg(xb).arg(tb).arg(gb).arg(db).arg(v as i32).jitter_us(JITTER_US);
        let out = run(emu, &l);
        let dx = if bf { from_bf(&out.get::<bf16>(db)) } else { out.get::<f32>(db) };
        let what = format!("ce_bwd_{sfx} V={v}");
        for r in [bad, zero] {
            assert!(
                dx[r * v..][..v].iter().all(|&z| z == 0.0),
                "{what}: row {r} (target past the vocabulary / zero gradient) is not all zeros"
            );
        }
        let rows =
            |a: &[f32]| a.chunks(v).enumerate().filter(|(i, _)| *i != bad && *i != zero).flat_map(|(_, r)| r.to_vec()).collect::<Vec<_>>();
        if bf {
            close_bf16(&what, &rows(&dx), &rows(&dx_ref));
        } else {
            close_f32(&what, &rows(&dx), &rows(&dx_ref));
        }
    }
}

#[test]
fn cross_entropy_matches_the_cpu_op_and_handles_bad_targets_and_zero_gradients() {
    let Some(emu) = emulator() else { return };
    // 1000 logits: 256 threads, four passes. 6007 (> 4096): 1024 threads, six passes, the last
    // partial (V not a multiple of the block).
    ce_case(emu, 1000, 11);
    ce_case(emu, 6007, 12);
}

// ---------------------------------------------------------------------------------------------
// Scaled causal softmax

/// Causal softmax over `h` heads of `[n, n]` scores, forward then backward (the backward kernel
/// takes the forward kernel's output, as the attention node does), against the fused CPU
/// softmax of `scale * x + mask` and its autograd.
fn softmax_case(emu: &Emulator, h: usize, n: usize, seed: u64) {
    let scale = 0.125f32;
    let el = h * n * n;
    let x = rand(el, seed, -8.0, 8.0);
    let dy = rand(el, seed + 1, -1.0, 1.0);
    let mask: Vec<f32> = (0..n * n).map(|i| if i % n <= i / n { 0.0 } else { f32::NEG_INFINITY }).collect();
    let cfg = launch::softmax(el / n, n);
    for bf in [false, true] {
        let (xin, dyin) = if bf { (round_bf(&x), round_bf(&dy)) } else { (x.clone(), dy.clone()) };
        let xv = Var::from_tensor(&cpu(&xin, &[h, n, n])).unwrap();
        let y = ops::causal_softmax(xv.as_tensor(), scale as f64, &cpu(&mask, &[n, n])).unwrap();
        let grads = (&y * cpu(&dyin, &[h, n, n])).unwrap().sum_all().unwrap().backward().unwrap();
        let (y_ref, dx_ref) = (flat(&y), flat(grads.get(xv.as_tensor()).unwrap()));
        let sfx = if bf { "bf16" } else { "f32" };

        let mut l = Launch::new(&format!("causal_softmax_fwd_{sfx}"), cfg);
        let xb = if bf { l.input("x", &to_bf(&x)) } else { l.input("x", &x) };
        let yb = if bf { l.output::<bf16>("y", el) } else { l.output::<f32>("y", el) };
        l.arg(xb).arg(yb).arg(n as i32).arg(scale);
        let out = run(emu, &l);
        let (yk_bf, yk) = if bf {
            let v = out.get::<bf16>(yb);
            (v.clone(), from_bf(&v))
        } else {
            (Vec::new(), out.get::<f32>(yb))
        };
        let what = format!("causal_softmax_fwd_{sfx} n={n}");
        // Masked columns are exactly 0 (never NaN poison: the kernel writes every column).
        for (i, &v) in yk.iter().enumerate() {
            if i % n > (i / n) % n {
                assert_eq!(v, 0.0, "{what}: masked element {i} is {v}");
            }
        }
        if bf {
            close_bf16(&what, &yk, &y_ref)
        } else {
            close_f32(&what, &yk, &y_ref)
        }

        // Backward: the CPU gradient is a function of y, so it is recomputed from the kernel's
        // own (rounded) y in bf16: y * (dy - <dy, y>) * scale.
        let dx_want = if bf {
            yk.chunks(n)
                .zip(dyin.chunks(n))
                .flat_map(|(yr, gr)| {
                    let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                    yr.iter().zip(gr).map(move |(y, g)| scale * y * (g - dot)).collect::<Vec<_>>()
                })
                .collect()
        } else {
            dx_ref
        };
        let mut l = Launch::new(&format!("softmax_bwd_{sfx}"), cfg);
        let yb = if bf { l.input("y", &yk_bf) } else { l.input("y", &yk) };
        let gb = if bf { l.input("dy", &to_bf(&dy)) } else { l.input("dy", &dy) };
        let db = if bf { l.output::<bf16>("dx", el) } else { l.output::<f32>("dx", el) };
        l.arg(yb).arg(gb).arg(db).arg(n as i32).arg(scale);
        let out = run(emu, &l);
        let dx = if bf { from_bf(&out.get::<bf16>(db)) } else { out.get::<f32>(db) };
        let what = format!("softmax_bwd_{sfx} n={n}");
        if bf {
            close_bf16(&what, &dx, &dx_want)
        } else {
            close_f32(&what, &dx, &dx_want)
        }
    }
}

#[test]
fn causal_softmax_forward_and_backward_match_the_cpu_ops() {
    let Some(emu) = emulator() else { return };
    softmax_case(emu, 3, 37, 21); // 64 threads, row lengths 1..=37 (most rows shorter than the block)
    softmax_case(emu, 1, 300, 22); // 128 threads (the cap), up to three passes per row
}

// ---------------------------------------------------------------------------------------------
// RoPE

/// RoPE forward (sign 1) and backward (sign -1) of `[b, t, h, d]` with tables `[tb, t, d/2]`,
/// against the fused CPU op and its backward.
fn rope_case(emu: &Emulator, (b, t, h, d): (usize, usize, usize, usize), tb: usize, seed: u64) {
    let half = d / 2;
    let el = b * t * h * d;
    let x = rand(el, seed, -1.0, 1.0);
    let dy = rand(el, seed + 1, -1.0, 1.0);
    // Real angles, so the rotation is orthogonal (positions differ per table row).
    let ang: Vec<f32> = (0..tb * t * half).map(|i| ((i / half) as f32 + 1.0) * (0.3 + (i % half) as f32 * 0.05)).collect();
    let (c, s): (Vec<f32>, Vec<f32>) = (ang.iter().map(|a| a.cos()).collect(), ang.iter().map(|a| a.sin()).collect());
    assert_eq!(launch::rope_table_rows(b, t, d, c.len(), s.len()), Ok(tb));
    let cfg = launch::rope(el);
    for bf in [false, true] {
        let r = |v: &[f32]| if bf { round_bf(v) } else { v.to_vec() };
        let xv = Var::from_tensor(&cpu(&r(&x), &[b, t, h, d])).unwrap();
        let y = ops::rope(xv.as_tensor(), &cpu(&r(&c), &[tb, t, 1, half]), &cpu(&r(&s), &[tb, t, 1, half])).unwrap();
        let grads = (&y * cpu(&r(&dy), &[b, t, h, d])).unwrap().sum_all().unwrap().backward().unwrap();
        let (y_ref, dx_ref) = (flat(&y), flat(grads.get(xv.as_tensor()).unwrap()));
        let sfx = if bf { "bf16" } else { "f32" };
        for (sign, src, want, dir) in [(1f32, &x, &y_ref, "forward"), (-1f32, &dy, &dx_ref, "backward")] {
            let mut l = Launch::new(&format!("rope_{sfx}"), cfg);
            let (xb, cb, sb, yb) = if bf {
                (l.input("x", &to_bf(src)), l.input("cos", &to_bf(&c)), l.input("sin", &to_bf(&s)), l.output::<bf16>("y", el))
            } else {
                (l.input("x", src), l.input("cos", &c), l.input("sin", &s), l.output::<f32>("y", el))
            };
            l.arg(xb).arg(cb).arg(sb).arg(yb);
            for v in [b, t, h, d, tb] {
                l.arg(v as i32);
            }
            l.arg(sign);
            let out = run(emu, &l);
            let got = if bf { from_bf(&out.get::<bf16>(yb)) } else { out.get::<f32>(yb) };
            let what = format!("rope_{sfx} {dir} [{b}, {t}, {h}, {d}] tb={tb}");
            if bf {
                close_bf16(&what, &got, want)
            } else {
                close_f32(&what, &got, want)
            }
        }
    }
}

#[test]
fn rope_forward_and_backward_match_the_cpu_op_with_shared_and_per_row_tables() {
    let Some(emu) = emulator() else { return };
    for (_, _, heads, kv, hd) in MODELS {
        rope_case(emu, (2, 5, heads, hd), 1, 31); // queries, one table for the batch
        rope_case(emu, (2, 5, kv, hd), 2, 32); // keys, a table per row (left-padded batches)
    }
    // Head dims the kernel does not take: odd (the launch refuses it), tables of the wrong size.
    assert!(launch::rope_table_rows(2, 5, 63, 5 * 31, 5 * 31).unwrap_err().contains("odd"));
    assert!(launch::rope_table_rows(2, 5, 64, 3 * 5 * 32, 3 * 5 * 32).is_err());
    assert!(launch::rope_table_rows(2, 5, 64, 5 * 32, 4 * 32).is_err());
}

// ---------------------------------------------------------------------------------------------
// SiLU(gate) * up

fn silu_case(emu: &Emulator, n: usize, bf: bool, seed: u64) {
    let g = rand(n, seed, -6.0, 6.0);
    let u = rand(n, seed + 1, -2.0, 2.0);
    let dy = rand(n, seed + 2, -1.0, 1.0);
    let r = |v: &[f32]| if bf { round_bf(v) } else { v.to_vec() };
    let (gv, uv) = (Var::from_tensor(&cpu(&r(&g), &[n])).unwrap(), Var::from_tensor(&cpu(&r(&u), &[n])).unwrap());
    let y = ops::silu_mul(gv.as_tensor(), uv.as_tensor()).unwrap();
    let grads = (&y * cpu(&r(&dy), &[n])).unwrap().sum_all().unwrap().backward().unwrap();
    let y_ref = flat(&y);
    let mut both_ref = flat(grads.get(gv.as_tensor()).unwrap());
    both_ref.extend(flat(grads.get(uv.as_tensor()).unwrap()));
    let sfx = if bf { "bf16" } else { "f32" };
    let cfg = launch::silu_mul(n);

    let mut l = Launch::new(&format!("silu_mul_fwd_{sfx}"), cfg);
    let (gb, ub, yb) = if bf {
        (l.input("gate", &to_bf(&g)), l.input("up", &to_bf(&u)), l.output::<bf16>("y", n))
    } else {
        (l.input("gate", &g), l.input("up", &u), l.output::<f32>("y", n))
    };
    l.arg(gb).arg(ub).arg(yb).arg(n);
    let out = run(emu, &l);
    let y = if bf { from_bf(&out.get::<bf16>(yb)) } else { out.get::<f32>(yb) };
    let what = format!("silu_mul_fwd_{sfx} n={n} ({} blocks)", cfg.grid.0);
    if bf {
        close_bf16(&what, &y, &y_ref)
    } else {
        close_f32(&what, &y, &y_ref)
    }

    let mut l = Launch::new(&format!("silu_mul_bwd_{sfx}"), cfg);
    let (gb, ub, db, ob) = if bf {
        (l.input("gate", &to_bf(&g)), l.input("up", &to_bf(&u)), l.input("dy", &to_bf(&dy)), l.output::<bf16>("out", 2 * n))
    } else {
        (l.input("gate", &g), l.input("up", &u), l.input("dy", &dy), l.output::<f32>("out", 2 * n))
    };
    l.arg(gb).arg(ub).arg(db).arg(ob).arg(n);
    let out = run(emu, &l);
    let both = if bf { from_bf(&out.get::<bf16>(ob)) } else { out.get::<f32>(ob) };
    let what = format!("silu_mul_bwd_{sfx} n={n}");
    if bf {
        close_bf16(&what, &both, &both_ref)
    } else {
        close_f32(&what, &both, &both_ref)
    }
}

#[test]
fn silu_mul_forward_and_backward_match_the_cpu_op() {
    let Some(emu) = emulator() else { return };
    // Two tokens of SmolLM2's MLP (1536) and of Qwen's (4864), f32 and bf16.
    for (n, seed) in [(2 * 1536, 41), (2 * 4864, 42)] {
        silu_case(emu, n, false, seed);
        silu_case(emu, n, true, seed + 10);
    }
    // Past 132 x 16 blocks of 256 the launch caps the grid: each thread loops (grid stride).
    let n = 132 * 16 * 256 + 777;
    assert_eq!(launch::silu_mul(n).grid.0, 132 * 16);
    silu_case(emu, n, false, 43);
}

// ---------------------------------------------------------------------------------------------
// Decode step: kv_write + decode_attn against emlab_model::decode's CPU reference

struct DecodeCase {
    b: usize,
    g: usize,
    h: usize,
    cap: usize,
    d: usize,
    p: usize,
    /// meta: each row's first column, then the write column.
    meta: Vec<u32>,
}

/// Runs `kv_write_*` on `kv0` and returns the cache it leaves.
#[allow(clippy::too_many_arguments)]
fn emu_write_kv<T: emu::Elem>(
    emu: &Emulator,
    c: &DecodeCase,
    sfx: &str,
    kv0: &[T],
    k: &[T],
    v: &[T],
    cos: &[T],
    sin: &[T],
) -> Result<Vec<T>, emu::Error> {
    let mut l = Launch::new(&format!("kv_write_{sfx}"), launch::kv_write(c.b, c.g, c.d));
    let (kb, vb, kvb, mb, cb, sb) =
        (l.input("k", k), l.input("v", v), l.inout("kv", kv0), l.input("meta", &c.meta), l.input("cos", cos), l.input("sin", sin));
    l.arg(kb).arg(vb).arg(kvb).arg(mb).arg(cb).arg(sb);
    for x in [c.b, c.g, c.cap, c.d, c.p] {
        l.arg(x as i32);
    }
    Ok(emu.run(&l)?.get::<T>(kvb))
}

/// Runs `decode_attn_*` over `kv` and returns `[B, H*D]`.
fn emu_attend<T: emu::Elem>(
    emu: &Emulator,
    c: &DecodeCase,
    sfx: &str,
    q: &[T],
    kv: &[T],
    cos: &[T],
    sin: &[T],
) -> Result<Vec<T>, emu::Error> {
    let mut l = Launch::new(&format!("decode_attn_{sfx}"), launch::decode_attn(c.b, c.h, c.d));
    let (qb, kvb, mb, cb, sb, ob) = (
        l.input("q", q),
        l.input("kv", kv),
        l.input("meta", &c.meta),
        l.input("cos", cos),
        l.input("sin", sin),
        l.output::<T>("out", c.b * c.h * c.d),
    );
    l.arg(qb).arg(kvb).arg(mb).arg(cb).arg(sb).arg(ob);
    for x in [c.b, c.h, c.g, c.cap, c.d, c.p] {
        l.arg(x as i32);
    }
    l.arg(1.0f32 / (c.d as f32).sqrt());
    Ok(emu.run(&l)?.get::<T>(ob))
}

/// Both kernels against `decode::write_kv` / `decode::attend` on the CPU, f32 and bf16. The
/// attention kernel reads the reference's cache, so its check does not inherit the write's.
fn decode_case(emu: &Emulator, c: &DecodeCase, seed: u64) {
    let (b, g, h, cap, d, p) = (c.b, c.g, c.h, c.cap, c.d, c.p);
    let nkv = 2 * b * g * cap * d;
    let kv0 = rand(nkv, seed, -1.0, 1.0);
    let (k, v, q) = (rand(b * g * d, seed + 1, -1.0, 1.0), rand(b * g * d, seed + 2, -1.0, 1.0), rand(b * h * d, seed + 3, -1.0, 1.0));
    let ang: Vec<f32> = (0..p * d / 2).map(|i| (i / (d / 2)) as f32 * (1.0 / (1.0 + (i % (d / 2)) as f32))).collect();
    let (cos, sin): (Vec<f32>, Vec<f32>) = (ang.iter().map(|a| a.cos()).collect(), ang.iter().map(|a| a.sin()).collect());
    let what = format!("decode B={b} G={g} H={h} cap={cap} D={d} meta={:?}", c.meta);
    for bf in [false, true] {
        let dt = if bf { DType::BF16 } else { DType::F32 };
        let t = |x: &[f32], s: &[usize]| cpu(x, s).to_dtype(dt).unwrap();
        let kv_t = t(&kv0, &[2, b, g, cap, d]);
        let meta_t = Tensor::from_vec(c.meta.clone(), b + 1, &Device::Cpu).unwrap();
        let (cos_t, sin_t) = (t(&cos, &[p, d / 2]), t(&sin, &[p, d / 2]));
        decode::write_kv(&kv_t, &t(&k, &[b, g * d]), &t(&v, &[b, g * d]), &meta_t, &cos_t, &sin_t).unwrap();
        let out_ref = flat(&decode::attend(&t(&q, &[b, h * d]), &kv_t, &meta_t, &cos_t, &sin_t, h).unwrap());
        let kv_ref = flat(&kv_t);
        let (kv_got, out_got) = if bf {
            let kv = emu_write_kv(emu, c, "bf16", &to_bf(&kv0), &to_bf(&k), &to_bf(&v), &to_bf(&cos), &to_bf(&sin))
                .unwrap_or_else(|e| panic!("{e}"));
            let kvr: Vec<bf16> = kv_t.flatten_all().unwrap().to_vec1::<bf16>().unwrap();
            let out = emu_attend(emu, c, "bf16", &to_bf(&q), &kvr, &to_bf(&cos), &to_bf(&sin)).unwrap_or_else(|e| panic!("{e}"));
            (from_bf(&kv), from_bf(&out))
        } else {
            let kv = emu_write_kv(emu, c, "f32", &kv0, &k, &v, &cos, &sin).unwrap_or_else(|e| panic!("{e}"));
            let out = emu_attend(emu, c, "f32", &q, &kv_ref, &cos, &sin).unwrap_or_else(|e| panic!("{e}"));
            (kv, out)
        };
        let sfx = if bf { "bf16" } else { "f32" };
        // The cache: everything but the write column is untouched (bit for bit).
        let col = c.meta[b] as usize;
        for (i, (&x, &y)) in kv_got.iter().zip(&kv_ref).enumerate() {
            if (i / d) % cap != col {
                assert_eq!(x.to_bits(), y.to_bits(), "{what} kv_write_{sfx}: element {i} (column {}) changed", (i / d) % cap);
            }
        }
        if bf {
            close_bf16(&format!("{what} kv_write_{sfx}"), &kv_got, &kv_ref)
        } else {
            close_f32(&format!("{what} kv_write_{sfx}"), &kv_got, &kv_ref)
        }
        if bf {
            close_bf16(&format!("{what} decode_attn_{sfx}"), &out_got, &out_ref)
        } else {
            close_f32(&format!("{what} decode_attn_{sfx}"), &out_got, &out_ref)
        }
    }
}

#[test]
fn decode_step_matches_the_cpu_reference_at_model_shapes() {
    let Some(emu) = emulator() else { return };
    for (i, (_, _, h, g, d)) in MODELS.into_iter().enumerate() {
        // Row 0 unpadded, row 1 left-padded (first column 7), row 2 whose first column is past
        // the write column (a row that joined late: it sees only its own new key).
        let c = DecodeCase { b: 3, g, h, cap: 40, d, p: 64, meta: vec![0, 7, 25, 20] };
        decode_case(emu, &c, 50 + i as u64);
    }
}

#[test]
fn decode_step_handles_head_dims_off_the_warp_size_and_single_keys() {
    let Some(emu) = emulator() else { return };
    // D = 48 and 80: lanes past D idle in the last pass; D = 256: the largest (8 dims per lane).
    for (d, seed) in [(48, 61), (80, 62), (256, 63)] {
        decode_case(emu, &DecodeCase { b: 2, g: 1, h: 2, cap: 12, d, p: 16, meta: vec![3, 0, 9] }, seed);
    }
    // The first step of a cache: column 0, one key per row (three of the four warps see none).
    decode_case(emu, &DecodeCase { b: 2, g: 2, h: 4, cap: 8, d: 64, p: 8, meta: vec![0, 0, 0] }, 64);
}

#[test]
fn decode_kernels_never_write_out_of_bounds_for_bad_columns() {
    let Some(emu) = emulator() else { return };
    let (b, g, h, cap, d, p) = (2, 1, 2, 6, 32, 8);
    let kv0 = rand(2 * b * g * cap * d, 71, -1.0, 1.0);
    let (k, q) = (rand(b * g * d, 72, -1.0, 1.0), rand(b * h * d, 73, -1.0, 1.0));
    let (cos, sin) = (vec![1f32; p * d / 2], vec![0f32; p * d / 2]);
    // col >= cap: no write at all (the cache comes back bit for bit), every output NaN.
    for col in [cap as u32, cap as u32 + 1000] {
        let c = DecodeCase { b, g, h, cap, d, p, meta: vec![0, 0, col] };
        let kv = emu_write_kv(emu, &c, "f32", &kv0, &k, &k, &cos, &sin).unwrap_or_else(|e| panic!("{e}"));
        assert!(kv.iter().zip(&kv0).all(|(a, b)| a.to_bits() == b.to_bits()), "kv_write_f32 wrote at column {col} of a {cap}-column cache");
        let out = emu_attend(emu, &c, "f32", &q, &kv0, &cos, &sin).unwrap_or_else(|e| panic!("{e}"));
        assert!(out.iter().all(|x| x.is_nan()), "decode_attn_f32 at column {col}: {out:?}");
    }
    // A row whose position is past the RoPE tables (col - first >= P): that row is skipped (no
    // write, NaN out), the other row is computed as usual.
    let c = DecodeCase { b, g, h, cap, d, p: 4, meta: vec![0, 3, 5] }; // row 0 at position 5, row 1 at 2
    let kv = emu_write_kv(emu, &c, "f32", &kv0, &k, &k, &cos[..4 * d / 2], &sin[..4 * d / 2]).unwrap_or_else(|e| panic!("{e}"));
    let at = |pl: usize, bi: usize, col: usize| ((pl * b + bi) * g * cap + col) * d;
    assert_eq!(&kv[at(0, 0, 5)..][..d], &kv0[at(0, 0, 5)..][..d], "row 0 (position past the tables) was written");
    assert_eq!(&kv[at(1, 1, 5)..][..d], &k[d..2 * d], "row 1's value was not written");
    let out = emu_attend(emu, &c, "f32", &q, &kv, &cos[..4 * d / 2], &sin[..4 * d / 2]).unwrap_or_else(|e| panic!("{e}"));
    assert!(out[..h * d].iter().all(|x| x.is_nan()), "row 0: want NaN");
    assert!(out[h * d..].iter().all(|x| x.is_finite()), "row 1: want values");
}
