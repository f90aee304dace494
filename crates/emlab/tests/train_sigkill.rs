//! `emlab train` killed for real: SIGKILL the running binary after a checkpoint, `--resume`,
//! and the whole `metrics.jsonl` (losses, gradient norms, learning rates, adapter norms) equals
//! an uninterrupted run's bit for bit. And a checkpoint write that fails half-way (the file-size
//! limit of `ulimit -f` makes `write` fail with EFBIG, as a full disk fails with ENOSPC) leaves
//! the previous checkpoint intact and resumable. Tiny models the test writes itself.
#![cfg(unix)]
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::Arch;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const STEPS: usize = 40;

fn setup(dir: &Path) -> (PathBuf, PathBuf) {
    let model = dir.join("tiny.gguf");
    write_tiny_gguf(&model, &tiny_config(Arch::Llama), 4).unwrap();
    let words = ["red", "green", "blue", "amber", "slate", "olive", "coral", "ivory"];
    let mut rows = String::new();
    for i in 0..16 {
        let q = format!("what colour is item {i}?");
        let a = format!("item {i} is {} and {}", words[i % 8], words[(i * 3 + 1) % 8]);
        rows.push_str(&serde_json::json!({"messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}).to_string());
        rows.push('\n');
    }
    let data = dir.join("d.jsonl");
    std::fs::write(&data, rows).unwrap();
    (model, data)
}

/// `emlab train` on the tiny model: dropout on (the RNG position is part of the state), several
/// epochs (the data order changes), a checkpoint every 4 steps.
fn train_cmd(model: &Path, data: &Path, out: &Path, max_steps: usize, resume: bool) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_emlab"));
    c.args(["train", "--quiet", "--batch-size", "2", "--grad-accum", "2", "--lr", "1e-2", "--warmup-steps", "3"])
        .args(["--rank", "4", "--alpha", "8", "--lora-dropout", "0.1", "--epochs", "100", "--checkpoint-every", "4"])
        .args(["--max-steps", &max_steps.to_string()])
        .arg("--model")
        .arg(model)
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .env("RAYON_NUM_THREADS", "1");
    if resume {
        c.arg("--resume");
    }
    c
}

/// Every metrics line without its wall-clock fields.
fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: serde_json::Value = serde_json::from_str(l).unwrap();
            let o = v.as_object_mut().unwrap();
            o.remove("tokens_per_s");
            o.remove("elapsed_s");
            v
        })
        .collect()
}

/// Complete (newline-terminated) lines of a run's metrics.jsonl (a running or killed writer may
/// have left half a line).
fn complete_lines(out: &Path) -> usize {
    std::fs::read(out.join("metrics.jsonl")).map(|b| b.iter().filter(|&&c| c == b'\n').count()).unwrap_or(0)
}

fn run_ok(mut c: Command) {
    let o = c.output().unwrap();
    assert!(o.status.success(), "emlab train failed: {}", String::from_utf8_lossy(&o.stderr));
}

fn newest_checkpoint(out: &Path) -> Option<usize> {
    let rd = std::fs::read_dir(out.join("checkpoints")).ok()?;
    rd.flatten().filter_map(|e| e.file_name().to_str()?.strip_prefix("step-")?.parse().ok()).max()
}

#[test]
fn sigkilled_training_resumes_to_the_uninterrupted_metrics_bit_for_bit() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = setup(dir.path());
    let full = dir.path().join("full");
    run_ok(train_cmd(&model, &data, &full, STEPS, false));
    let want = metrics(&full);
    assert_eq!(want.len(), STEPS);
    assert!(want[STEPS - 1]["loss"].as_f64().unwrap() < want[0]["loss"].as_f64().unwrap());

    // Start the same run and SIGKILL it once its second checkpoint (step 8) is complete (a
    // `step-*` folder appears only once whole: it is renamed into place) and two more steps
    // are logged, so that logged steps past the checkpoint are lost and must be recomputed.
    let out = dir.path().join("killed");
    let mut child = train_cmd(&model, &data, &out, STEPS, false).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let t0 = Instant::now();
    while newest_checkpoint(&out).is_none_or(|s| s < 8) || complete_lines(&out) < 10 {
        assert!(t0.elapsed() < Duration::from_secs(120), "no checkpoint after 120 s");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("emlab train exited ({st}) before it could be killed");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let st = child.wait().unwrap();
    assert_eq!(st.signal(), Some(9), "the run was not killed by SIGKILL: {st}");
    let killed_at = complete_lines(&out);
    assert!(killed_at < STEPS, "the run finished before the kill landed");
    assert!(!out.join("adapter").exists());
    let resumed_from = newest_checkpoint(&out).unwrap();
    eprintln!("killed after {killed_at} logged steps; resuming from step {resumed_from}");

    run_ok(train_cmd(&model, &data, &out, STEPS, true));
    let got = metrics(&out);
    assert_eq!(got.len(), STEPS);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!(g, w, "step {} differs after a SIGKILL at step ~{killed_at} and resume from step {resumed_from}", w["step"]);
    }
    let adapter = |o: &Path| std::fs::read(o.join("adapter/adapter_model.safetensors")).unwrap();
    assert_eq!(adapter(&out), adapter(&full), "final adapters differ");
}

#[test]
fn a_checkpoint_write_that_fails_half_way_keeps_the_previous_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let (model, data) = setup(dir.path());
    let out = dir.path().join("run");
    // 8 steps: complete checkpoints at steps 4 and 8, and the final adapter.
    run_ok(train_cmd(&model, &data, &out, 8, false));
    let ck8 = out.join("checkpoints/step-000008");
    let files = ["adapter_model.safetensors", "optimizer.safetensors", "state.json", "adapter_config.json"];
    let before: Vec<Vec<u8>> = files.iter().map(|f| std::fs::read(ck8.join(f)).unwrap()).collect();
    let opt_size = before[1].len();
    assert!(opt_size > 16 * 1024, "optimizer file too small for the test: {opt_size}");

    // Continue to step 12 with a file-size limit below the optimizer file's size: the step-12
    // checkpoint fails while optimizer.safetensors is written (EFBIG; SIGXFSZ ignored so the
    // write returns the error, as a full disk returns ENOSPC). Smaller files still fit.
    let limit_blocks = opt_size / 512 - 4;
    let inner = train_cmd(&model, &data, &out, 12, true);
    let prog = inner.get_program().to_owned();
    let args: Vec<_> = inner.get_args().map(|a| a.to_owned()).collect();
    let mut c = Command::new("sh");
    c.arg("-c")
        .arg(format!("trap '' XFSZ; ulimit -f {limit_blocks}; exec \"$0\" \"$@\""))
        .arg(prog)
        .args(args)
        .env("RAYON_NUM_THREADS", "1");
    let o = c.output().unwrap();
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success(), "the limited run should fail");
    assert!(err.contains("optimizer.safetensors") && err.contains("too large"), "stderr: {err}");

    // The failed checkpoint left nothing that looks complete; step 8 is byte-for-byte intact.
    let ck = std::fs::read_dir(out.join("checkpoints")).unwrap();
    let names: Vec<String> = ck.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert!(!names.iter().any(|n| n.contains("000012")), "{names:?}");
    for (f, b) in files.iter().zip(&before) {
        assert_eq!(&std::fs::read(ck8.join(f)).unwrap(), b, "{f} changed");
    }
    // Resuming without the limit continues from step 8 and reproduces a straight 12-step run.
    run_ok(train_cmd(&model, &data, &out, 12, true));
    let straight = dir.path().join("straight");
    run_ok(train_cmd(&model, &data, &straight, 8, false));
    run_ok(train_cmd(&model, &data, &straight, 12, true));
    assert_eq!(metrics(&out), metrics(&straight));
}
