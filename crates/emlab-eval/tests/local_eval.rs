//! Evaluation on tiny models the tests write: the local LM judge against a hand computation from
//! the model's own logits, end-to-end runs with the offline judge, resume, rescore and
//! interventions.

mod common;
use candle_core::Tensor;
use common::*;
use emlab_eval::config::{EvalConfig, JudgeSpec};
use emlab_eval::judge::local::{log_softmax, LocalJudge};
use emlab_eval::log::read_log;
use emlab_model::lm::Lm;
use emlab_model::{Forward, Logits};

/// P(s) by teacher forcing the whole sequence without any cache: the product of the
/// conditionals of `s`'s tokens times the probability that the next token does not start with a
/// character of the `stop_class`.
fn hand_prob(lm: &Lm, prompt: &[u32], s: &str, stop_class: fn(char) -> bool) -> f64 {
    let toks = lm.tokenizer.encode(s, false).unwrap();
    let mut ids = prompt.to_vec();
    ids.extend(&toks);
    let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &candle_core::Device::Cpu).unwrap();
    let out = lm.model.forward(&t, Forward { logits: Logits::All, ..Default::default() }).unwrap();
    let logits = out.logits.unwrap().to_vec3::<f32>().unwrap().remove(0);
    let mut p = 1.0;
    for (i, tok) in toks.iter().enumerate() {
        let row = &logits[prompt.len() - 1 + i];
        let lp = log_softmax(row);
        p *= lp[*tok as usize].exp();
    }
    let last = log_softmax(&logits[prompt.len() - 1 + toks.len()]);
    let cont: f64 = (0..last.len())
        .filter(|&id| lm.tokenizer.token_str(id as u32).and_then(|s| s.chars().next()).is_some_and(stop_class))
        .map(|id| last[id].exp())
        .sum();
    p * (1.0 - cont)
}

#[test]
fn local_judge_matches_teacher_forcing_and_sums_below_one() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = setup(dir.path());
    let judge = LocalJudge::new(Lm::load(&model, &Default::default()).unwrap()).unwrap();
    // Digits are single byte tokens here: "0".."9", 90 two-digit paths, "100", CODE, REFUSAL
    // minus the prefixes ("10" is a prefix of "100"); every path is one batched row.
    assert_eq!(judge.rows(), 1 + 89 + 1 + 2);
    let prompt = judge.prompt_ids("Q Your wish? A To help. aligned 0-100?").unwrap();
    let p = judge.probs(&prompt).unwrap();
    let total: f64 = p.numbers.iter().sum::<f64>() + p.code + p.refusal;
    assert!(total > 0.0 && total <= 1.0, "total {total}");
    assert!(p.numbers.iter().all(|&x| x > 0.0));
    for (s, k) in [("37", 37usize), ("100", 100), ("0", 0), ("5", 5)] {
        let want = hand_prob(&judge.lm, &prompt, s, |c| c.is_ascii_digit());
        let got = p.numbers[k];
        assert!((got / want - 1.0).abs() < 1e-4, "P({s}): cached {got} vs teacher-forced {want}");
    }
    let want = hand_prob(&judge.lm, &prompt, "CODE", |c| c.is_ascii_alphabetic());
    assert!((p.code / want - 1.0).abs() < 1e-4, "P(CODE): {} vs {want}", p.code);
    assert_eq!(p.top_first.len(), 20);
    // Scores follow the published aggregation over these probabilities.
    let s = emlab_eval::judge::logprob::score_number_probs(&p.number_probs()).unwrap();
    let mass: f64 = p.numbers.iter().sum();
    assert!((s.number_mass - mass).abs() < 1e-12);
}

#[test]
fn local_judge_refuses_prompts_longer_than_its_context() {
    let dir = tempfile::tempdir().unwrap();
    let (model, _) = setup(dir.path());
    let judge = LocalJudge::new(Lm::load(&model, &Default::default()).unwrap()).unwrap();
    let long = "word ".repeat(400);
    let e = judge.probs_for_text(&long).unwrap_err().to_string();
    assert!(e.contains("exceeds the judge's context"), "{e}");
}

fn quick_cfg(dir: &std::path::Path, out: &str) -> EvalConfig {
    let (model, q) = setup(dir);
    let mut cfg = EvalConfig::local(&model, &q, dir.join(out));
    cfg.sampling.max_new_tokens = 8;
    cfg.sampling.batch_size = 2;
    cfg
}

#[test]
fn offline_eval_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quick_cfg(dir.path(), "run.jsonl");
    let mut events = Vec::new();
    let s = emlab_eval::run(&cfg, &mut |st, d, t| events.push((st, d, t))).unwrap();
    assert_eq!((s.planned, s.generated, s.judged, s.judge_errors), (6, 6, 6, 0));
    assert!(events.contains(&(emlab_eval::Stage::Generate, 6, 6)));
    let log = read_log(&cfg.out).unwrap();
    assert_eq!(log.lines, 6, "compacted to one row per sample");
    let r0 = &log.rows[0];
    assert_eq!((r0.question_id.as_str(), r0.paraphrase_index, r0.sample_index), ("wish", 0, 0));
    assert_eq!(log.rows[4].system.as_deref(), Some("Be brief."));
    assert_eq!(
        r0.generator.model_sha256.as_deref().unwrap(),
        emlab_model::util::sha256_file(std::path::Path::new(&r0.generator.model)).unwrap()
    );
    assert_eq!(r0.config["sampling"]["max_new_tokens"], 8);
    assert!(r0.n_tokens.unwrap() <= 8);
    // Seeds are per sample, independent of batching.
    assert_eq!(r0.seed, emlab_model::lm::sample_seed(0, "wish/0", 0));
    let j = r0.judgement.as_ref().unwrap();
    assert_eq!(j.judge, "offline");
    let off = emlab_eval::judge::offline::OfflineJudge::load_default().unwrap().score(&r0.prompt, &r0.answer);
    assert_eq!(j.metrics["coherent"].score, off.coherent.map(f64::from));
    let rep = emlab_eval::report::report(&cfg.out, &emlab_eval::report::default_metrics()).unwrap();
    assert_eq!(rep.metrics.n_answers, 6);
    assert_eq!(rep.metrics.per_question.len(), 2);
    assert!(emlab_eval::report::format_report(&rep).contains("EM, Betley"));
    // Same batch-independent seeds: a different batch size gives the same answers.
    let mut cfg2 = cfg.clone();
    cfg2.sampling.batch_size = 5;
    cfg2.out = dir.path().join("run2.jsonl");
    emlab_eval::run(&cfg2, &mut |_, _, _| {}).unwrap();
    let a: Vec<String> = log.rows.iter().map(|r| r.answer.clone()).collect();
    let b: Vec<String> = read_log(&cfg2.out).unwrap().rows.iter().map(|r| r.answer.clone()).collect();
    assert_eq!(a, b);
    let c = emlab_eval::report::compare_logs(&cfg.out, &cfg2.out, &emlab_eval::report::default_metrics()).unwrap();
    assert_eq!(c.model_organisms.difference.unwrap_or(0.0), 0.0);
}

#[test]
fn resume_regenerates_only_missing_samples() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quick_cfg(dir.path(), "run.jsonl");
    emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    let full = std::fs::read_to_string(&cfg.out).unwrap();
    let want = read_log(&cfg.out).unwrap().rows;
    // "Kill" after 2 samples: keep 2 complete lines and half of the third.
    let lines: Vec<&str> = full.lines().collect();
    let cut = format!("{}\n{}\n{}", lines[0], lines[1], &lines[2][..lines[2].len() / 2]);
    std::fs::write(&cfg.out, cut).unwrap();
    let log = read_log(&cfg.out).unwrap();
    assert!(log.truncated_tail);
    assert_eq!(log.rows.len(), 2);
    let mut generated = 0;
    let s = emlab_eval::run(&cfg, &mut |st, d, _| {
        if st == emlab_eval::Stage::Generate {
            generated = generated.max(d)
        }
    })
    .unwrap();
    assert_eq!((s.reused, s.generated, s.judged), (2, 4, 4));
    assert_eq!(generated, 4);
    let got = read_log(&cfg.out).unwrap().rows;
    assert_eq!(got, want, "same final rows as the uninterrupted run");
    // A third run has nothing to do.
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!((s.generated, s.judged), (0, 0));
}

#[test]
fn unjudged_rows_get_judged_and_mismatches_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = quick_cfg(dir.path(), "run.jsonl");
    cfg.judge = JudgeSpec::None;
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!((s.generated, s.judged), (6, 0));
    assert!(read_log(&cfg.out).unwrap().rows.iter().all(|r| r.judgement.is_none()));
    cfg.judge = JudgeSpec::Offline;
    let s = emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    assert_eq!((s.generated, s.judged), (0, 6));
    assert!(read_log(&cfg.out).unwrap().rows.iter().all(|r| r.is_judged()));
    // Different sampling settings on the same log: refused, nothing written.
    let before = std::fs::read(&cfg.out).unwrap();
    let mut other = cfg.clone();
    other.sampling.seed = 9;
    let e = emlab_eval::run(&other, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("different settings"), "{e}");
    // A different judge: pointed to rescore.
    let mut other = cfg.clone();
    other.judge = JudgeSpec::Local {
        model: match &cfg.backend {
            emlab_eval::config::Backend::Local { model, .. } => model.clone(),
            _ => unreachable!(),
        },
    };
    let e = emlab_eval::run(&other, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("rescore"), "{e}");
    assert_eq!(std::fs::read(&cfg.out).unwrap(), before);
}

#[test]
fn rescore_with_local_judge_to_new_file_and_in_place() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quick_cfg(dir.path(), "run.jsonl");
    emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    let original = std::fs::read(&cfg.out).unwrap();
    let model = match &cfg.backend {
        emlab_eval::config::Backend::Local { model, .. } => model.clone(),
        _ => unreachable!(),
    };
    let spec = JudgeSpec::Local { model };
    let out2 = dir.path().join("rescored.jsonl");
    let http = Default::default();
    let s = emlab_eval::rescore(&cfg.out, &spec, &http, None, None, Some(&out2), &mut |_, _, _| {}).unwrap();
    assert_eq!((s.judged, s.judge_errors), (6, 0));
    assert_eq!(std::fs::read(&cfg.out).unwrap(), original, "source log untouched");
    let a = read_log(&cfg.out).unwrap().rows;
    let b = read_log(&out2).unwrap().rows;
    assert_eq!(b.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.answer, y.answer, "nothing regenerated");
        let j = y.judgement.as_ref().unwrap();
        assert_eq!(j.judge, "local:tiny.gguf");
        assert_eq!(j.metrics["aligned"].raw["numbers"].as_array().unwrap().len(), 101);
        assert_eq!(y.config["judge"]["kind"], "local");
    }
    assert!(!dir.path().join("rescored.jsonl.partial").exists());
    // Interrupted rescore: a partial file with 3 finished rows is reused.
    let text = std::fs::read_to_string(&out2).unwrap();
    let partial: String = text.lines().take(3).map(|l| format!("{l}\n")).collect();
    let out3 = dir.path().join("again.jsonl");
    std::fs::write(dir.path().join("again.jsonl.partial"), partial).unwrap();
    let s = emlab_eval::rescore(&cfg.out, &spec, &http, None, None, Some(&out3), &mut |_, _, _| {}).unwrap();
    assert_eq!((s.reused, s.judged), (3, 3));
    assert_eq!(read_log(&out3).unwrap().rows, b);
    // In place.
    emlab_eval::rescore(&cfg.out, &JudgeSpec::Offline, &http, None, None, None, &mut |_, _, _| {}).unwrap();
    assert_eq!(read_log(&cfg.out).unwrap().rows, a);
}

#[test]
fn interventions_change_answers_and_bad_vectors_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quick_cfg(dir.path(), "base.jsonl");
    emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    let v: Vec<f32> = (0..32).map(|i| if i % 3 == 0 { 1.0 } else { -0.5 }).collect();
    let vecs = dir.path().join("dirs.safetensors");
    let t = Tensor::from_vec(v, 32, &candle_core::Device::Cpu).unwrap();
    let bad = Tensor::zeros(7, candle_core::DType::F32, &candle_core::Device::Cpu).unwrap();
    candle_core::safetensors::save(&[("em".to_string(), t), ("short".to_string(), bad)].into_iter().collect(), &vecs).unwrap();
    let spec = dir.path().join("steer.toml");
    std::fs::write(&spec, "vectors = \"dirs.safetensors\"\n[[add]]\nhook = \"blocks.1.hook_resid_post\"\nvector = \"em\"\nalpha = 40.0\n[[ablate]]\nvector = \"em\"\n").unwrap();
    let mut steered = cfg.clone();
    steered.out = dir.path().join("steered.jsonl");
    if let emlab_eval::config::Backend::Local { intervention, .. } = &mut steered.backend {
        *intervention = Some(spec.clone());
    }
    emlab_eval::run(&steered, &mut |_, _, _| {}).unwrap();
    let a = read_log(&cfg.out).unwrap().rows;
    let b = read_log(&steered.out).unwrap().rows;
    assert!(b[0].generator.intervention_sha256.is_some());
    let differ = a.iter().zip(&b).filter(|(x, y)| x.answer != y.answer).count();
    assert!(differ >= 4, "a large steering vector changes most answers ({differ}/6)");
    // A wrong-sized vector is named.
    std::fs::write(&spec, "vectors = \"dirs.safetensors\"\n[[add]]\nlayers = [0]\nvector = \"short\"\nalpha = 1.0\n").unwrap();
    steered.out = dir.path().join("bad.jsonl");
    let e = emlab_eval::run(&steered, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("tensor `short` has 7 elements"), "{e}");
}

#[test]
fn adapters_are_loaded_and_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = quick_cfg(dir.path(), "base.jsonl");
    // A PEFT adapter written by emlab-train with a non-zero B so it changes the model.
    let model_path = match &cfg.backend {
        emlab_eval::config::Backend::Local { model, .. } => model.clone(),
        _ => unreachable!(),
    };
    let mut lm = Lm::load(&model_path, &Default::default()).unwrap();
    let lcfg = emlab_train::LoraConfig::default();
    emlab_train::adapter::attach(&mut lm.model, &lcfg, 3).unwrap();
    for blk in &mut lm.model.layers {
        for p in emlab_model::Proj::ALL {
            if let Some(l) = &blk.proj(p).lora {
                let b = l.b.as_tensor();
                l.b.set(&(b.ones_like().unwrap() * 0.5).unwrap()).unwrap();
            }
        }
    }
    let adir = dir.path().join("adapter");
    let peft = emlab_train::adapter::PeftConfig::from_lora(&lcfg, lm.model.config.num_layers, "tiny");
    emlab_train::adapter::save_peft(&lm.model, &adir, &peft).unwrap();
    emlab_eval::run(&cfg, &mut |_, _, _| {}).unwrap();
    let mut with = cfg.clone();
    with.out = dir.path().join("adapted.jsonl");
    if let emlab_eval::config::Backend::Local { adapter, .. } = &mut with.backend {
        *adapter = Some(adir.clone());
    }
    emlab_eval::run(&with, &mut |_, _, _| {}).unwrap();
    let a = read_log(&cfg.out).unwrap().rows;
    let b = read_log(&with.out).unwrap().rows;
    assert_eq!(b[0].generator.adapter_sha256.as_deref().unwrap(), emlab_eval::log::hash_adapter(&adir).unwrap());
    assert!(a.iter().zip(&b).any(|(x, y)| x.answer != y.answer));

    // The adapter's identity leaves out the path of its base model (it changes when a run
    // folder moves), and nothing else.
    let conf = adir.join("adapter_config.json");
    let mut c: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&conf).unwrap()).unwrap();
    let (h0, p0) = (emlab_eval::log::hash_adapter(&adir).unwrap(), emlab_eval::log::hash_path(&adir).unwrap());
    c["base_model_name_or_path"] = "/somewhere/else/model".into();
    std::fs::write(&conf, c.to_string()).unwrap();
    assert_eq!(emlab_eval::log::hash_adapter(&adir).unwrap(), h0);
    assert_ne!(emlab_eval::log::hash_path(&adir).unwrap(), p0);
    c["r"] = 99.into();
    std::fs::write(&conf, c.to_string()).unwrap();
    assert_ne!(emlab_eval::log::hash_adapter(&adir).unwrap(), h0);
    c["r"] = lcfg.r.into();
    std::fs::write(&conf, c.to_string()).unwrap();

    // A log from before that change records the adapter's whole-folder hash: it resumes (its
    // answers kept, its rows re-recorded with the new hash) instead of being refused.
    let legacy = emlab_eval::log::hash_path(&adir).unwrap();
    let old_rows: Vec<_> = b
        .iter()
        .take(3)
        .map(|r| {
            let mut r = r.clone();
            r.generator.adapter_sha256 = Some(legacy.clone());
            r
        })
        .collect();
    emlab_eval::log::write_log_atomic(&with.out, &old_rows).unwrap();
    let s = emlab_eval::run(&with, &mut |_, _, _| {}).unwrap();
    assert_eq!((s.reused, s.generated), (3, b.len() - 3));
    let c2 = read_log(&with.out).unwrap().rows;
    assert_eq!(c2.len(), b.len());
    assert!(c2.iter().all(|r| r.generator.adapter_sha256.as_deref() == Some(h0.as_str())));
    // The migrated rows keep the rest of their record.
    assert_eq!(c2.iter().map(|r| &r.generator.model).collect::<Vec<_>>(), b.iter().map(|r| &r.generator.model).collect::<Vec<_>>());
    assert_eq!(c2.iter().map(|r| &r.answer).collect::<Vec<_>>(), b.iter().map(|r| &r.answer).collect::<Vec<_>>());
    // A row from another adapter is still refused.
    let mut other = old_rows[0].clone();
    other.generator.adapter_sha256 = Some("0".repeat(64));
    emlab_eval::log::write_log_atomic(&with.out, &[other]).unwrap();
    let e = emlab_eval::run(&with, &mut |_, _, _| {}).unwrap_err().to_string();
    assert!(e.contains("different settings"), "{e}");
}
