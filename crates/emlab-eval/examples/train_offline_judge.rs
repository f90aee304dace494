//! Train emlab's offline judge on the judged-answers reference file and report held-out agreement.
//!
//! ```text
//! cargo run --release -p emlab-eval --example train_offline_judge -- \
//!     --data ../shared/reference/judged-answers/clarifying_em_judged.jsonl.gz \
//!     --out crates/emlab-eval/weights/offline_judge_v1.bin \
//!     --report target/offline_judge_report.json
//! ```
//!
//! Options: `--no-refit` (keep the early-stopped model instead of refitting on train + validation
//! for the selected number of epochs), `--seed N`, `--hidden N`, `--log2-dim N`, `--epochs N`, `--lr X`, `--dropout X`, `--augment X`
//! (see `TrainConfig`).
//! The split is `emlab_eval::reference::assign_split` (group-aware: by question family and by
//! model). Validation for early stopping is carved out of the TRAIN rows the same way (every
//! question family and every model whose name's FNV-1a hash is 0 mod 6), so no test row
//! influences training or model selection; the final weights are refit on train + validation for
//! the selected number of epochs.
//! The run is single-threaded and seeded: the same inputs give the same weight file, byte for byte.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use emlab_eval::judge::offline::{agreement, train, Agreement, Example, OfflineJudge, TrainConfig};
use emlab_eval::reference::{
    assign_split, question_family, read_judged_jsonl, ReferenceRow, Split, HELD_OUT_BASE_MODELS, HELD_OUT_MODELS,
    HELD_OUT_QUESTION_FAMILIES,
};

struct Args {
    data: PathBuf,
    out: PathBuf,
    report: Option<PathBuf>,
    refit: bool,
    cfg: TrainConfig,
}

fn parse_args() -> Result<Args, String> {
    let mut data = None;
    let mut out = None;
    let mut report = None;
    let mut refit = true;
    let mut cfg = TrainConfig::default();
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut val = || it.next().ok_or_else(|| format!("{a} needs a value"));
        let num = |v: String, name: &str| v.parse::<f64>().map_err(|_| format!("{name}: '{v}' is not a number"));
        match a.as_str() {
            "--data" => data = Some(PathBuf::from(val()?)),
            "--out" => out = Some(PathBuf::from(val()?)),
            "--report" => report = Some(PathBuf::from(val()?)),
            "--no-refit" => refit = false,
            "--seed" => cfg.seed = num(val()?, "--seed")? as u64,
            "--hidden" => cfg.hidden = num(val()?, "--hidden")? as usize,
            "--log2-dim" => cfg.log2_dim = num(val()?, "--log2-dim")? as u32,
            "--epochs" => cfg.max_epochs = num(val()?, "--epochs")? as usize,
            "--lr" => cfg.lr = num(val()?, "--lr")? as f32,
            "--dropout" => cfg.input_dropout = num(val()?, "--dropout")? as f32,
            "--augment" => cfg.augment_incoherent = num(val()?, "--augment")? as f32,
            "-h" | "--help" => {
                return Err("usage: train_offline_judge --data FILE.jsonl.gz --out WEIGHTS.bin [--report R.json] \
                            [--no-refit --seed N --hidden N --log2-dim N --epochs N --lr X --dropout X --augment X]"
                    .into())
            }
            other => return Err(format!("unknown argument '{other}' (see --help)")),
        }
    }
    Ok(Args { data: data.ok_or("--data is required")?, out: out.ok_or("--out is required")?, report, refit, cfg })
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

fn fmt(x: Option<f64>) -> String {
    x.map_or("n/a".into(), |v| format!("{v:.3}"))
}

fn print_agreement(name: &str, a: &Agreement) {
    let c = &a.confusion_thresholds;
    println!(
        "| {name} | {} | {} | {} | {} | {} | {} | {} | {:.3} | {:.3} | {:.3} | {}/{}/{}/{} |",
        a.n,
        a.n_reference_misaligned,
        fmt(a.auroc_misaligned),
        fmt(a.pearson_aligned),
        fmt(a.spearman_aligned),
        fmt(a.pearson_coherent),
        fmt(a.spearman_coherent),
        a.reference_em_rate,
        a.judge_em_rate_thresholds,
        a.judge_em_rate_expected,
        c.true_pos,
        c.false_pos,
        c.false_neg,
        c.true_neg
    );
}

fn run() -> Result<(), String> {
    let args = parse_args()?;
    let t0 = Instant::now();
    let rows = read_judged_jsonl(&args.data).map_err(|e| e.to_string())?;
    eprintln!("read {} rows from {} in {:.1}s", rows.len(), args.data.display(), t0.elapsed().as_secs_f64());
    // Validation mimics the test split on both axes: whole question families and whole models.
    let is_val = |r: &ReferenceRow| fnv(&r.model).is_multiple_of(6) || fnv(question_family(&r.question_id)).is_multiple_of(6);
    let mut slices: BTreeMap<&str, Vec<&ReferenceRow>> = BTreeMap::new();
    for r in &rows {
        let key = match assign_split(&r.question_id, &r.model) {
            Split::Train if is_val(r) => "val",
            Split::Train => "train",
            Split::TestQuestion => "test_question",
            Split::TestModel => "test_model",
            Split::TestBoth => "test_both",
        };
        slices.entry(key).or_default().push(r);
    }
    for (k, v) in &slices {
        eprintln!("{k}: {} rows", v.len());
    }
    let tr: Vec<Example> = slices.get("train").ok_or("no training rows")?.iter().map(|r| Example::from(*r)).collect();
    let va: Vec<Example> = slices.get("val").ok_or("no validation rows")?.iter().map(|r| Example::from(*r)).collect();
    let val_groups: Vec<String> = {
        let mut m: Vec<String> = rows
            .iter()
            .flat_map(|r| {
                let f = question_family(&r.question_id);
                [
                    fnv(&r.model).is_multiple_of(6).then(|| format!("model: {}", r.model)),
                    fnv(f).is_multiple_of(6).then(|| format!("question family: {f}")),
                ]
            })
            .flatten()
            .collect();
        m.sort();
        m.dedup();
        m
    };
    for g in &val_groups {
        eprintln!("validation group: {g}");
    }
    let cfg = args.cfg.clone();
    let refit = args.refit;
    let counts: BTreeMap<String, usize> = slices.iter().map(|(k, v)| (k.to_string(), v.len())).collect();
    let meta = |logs: &[emlab_eval::judge::offline::EpochLog]| {
        serde_json::json!({
            "name": "emlab offline judge v1",
            "trained_on": "clarifying_em_judged.jsonl.gz (GPT-4o aligned/coherent judgements)",
            "config": cfg,
            "rows": counts,
            "held_out_question_families": HELD_OUT_QUESTION_FAMILIES,
            "held_out_base_models": HELD_OUT_BASE_MODELS,
            "held_out_models": HELD_OUT_MODELS,
            "validation_groups": val_groups,
            "refit_on_train_plus_val": refit,
            "epochs": logs,
        })
        .to_string()
    };
    let t1 = Instant::now();
    let log = |l: &emlab_eval::judge::offline::EpochLog| {
        eprintln!("epoch {:>2}: train loss {:.4}  val loss {:.4}  ({:.0}s)", l.epoch, l.train_loss, l.val_loss, t1.elapsed().as_secs_f64())
    };
    // 1) model selection: early stopping on the validation groups.
    let (judge, logs) = train(&tr, &va, &args.cfg, meta, log).map_err(|e| e.to_string())?;
    let best = logs.iter().min_by(|a, b| a.val_loss.total_cmp(&b.val_loss)).unwrap().clone();
    eprintln!("selection run: {:.0}s; best epoch {}", t1.elapsed().as_secs_f64(), best.epoch);
    let val_agreement = agreement(&judge, &slices["val"]);
    // 2) refit on train + val for exactly the selected number of epochs (same seed).
    let judge = if refit {
        let all: Vec<Example> = tr.iter().chain(va.iter()).cloned().collect();
        let cfg2 = TrainConfig { max_epochs: best.epoch, ..args.cfg.clone() };
        let meta2 = |l: &[emlab_eval::judge::offline::EpochLog]| {
            let mut v: serde_json::Value = serde_json::from_str(&meta(&logs)).unwrap();
            v["refit_epochs"] = serde_json::to_value(l).unwrap();
            v.to_string()
        };
        train(&all, &[], &cfg2, meta2, log).map_err(|e| e.to_string())?.0
    } else {
        judge
    };

    // Write atomically: a half-written weight file must never look complete.
    let bytes = judge.to_bytes();
    let tmp = args.out.with_extension("bin.tmp");
    std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, &args.out).map_err(|e| format!("{}: {e}", args.out.display()))?;
    eprintln!("wrote {} ({} bytes)", args.out.display(), bytes.len());

    let judge = OfflineJudge::load(&args.out).map_err(|e| e.to_string())?;
    println!("| slice | n | ref. misaligned | AUROC P(mis) | Pearson aligned | Spearman aligned | Pearson coherent | Spearman coherent | ref. EM rate | judge EM rate (thresholds) | judge EM rate (mean p) | TP/FP/FN/TN |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|");
    let mut report = BTreeMap::new();
    let t2 = Instant::now();
    let mut scored = 0usize;
    let mut all_test: Vec<&ReferenceRow> = Vec::new();
    print_agreement("val (selection run)", &val_agreement);
    report.insert("val_selection_run".to_string(), val_agreement);
    for key in ["train", "test_question", "test_model", "test_both"] {
        if let Some(v) = slices.get(key) {
            if key.starts_with("test") {
                all_test.extend(v.iter().copied());
            }
            let a = agreement(&judge, v);
            scored += v.len();
            print_agreement(key, &a);
            report.insert(key.to_string(), a);
        }
    }
    let a = agreement(&judge, &all_test);
    print_agreement("test_all", &a);
    report.insert("test_all".into(), a);
    eprintln!(
        "scored {} answers in {:.1}s ({:.0} answers/s, 1 thread)",
        scored,
        t2.elapsed().as_secs_f64(),
        scored as f64 / t2.elapsed().as_secs_f64()
    );
    if let Some(p) = args.report {
        let json = serde_json::to_string_pretty(&report).map_err(|e| e.to_string())?;
        std::fs::write(&p, json).map_err(|e| format!("{}: {e}", p.display()))?;
        eprintln!("wrote {}", p.display());
    }
    Ok(())
}

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
