//! The local LM judge on the real default model (SmolLM2-135M-Instruct, whose tokenizer splits
//! digits): exact number-string probabilities against teacher forcing without a cache.

use candle_core::Tensor;
use emlab_eval::judge::local::{log_softmax, LocalJudge};
use emlab_model::lm::Lm;
use emlab_model::{Forward, Logits};
use std::path::{Path, PathBuf};

/// `$EMLAB_MODELS/<file>` or `<repo>/models/<file>` when present, else fetched; with
/// `EMLAB_NO_FETCH=1` a missing file skips the test with a loud notice.
fn default_model() -> Option<PathBuf> {
    let k = emlab_model::fetch::known("smollm2-135m")?;
    let local = match std::env::var_os("EMLAB_MODELS") {
        Some(d) => PathBuf::from(d).join(k.file),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(k.file),
    };
    if local.is_file() {
        return Some(local);
    }
    if std::env::var_os("EMLAB_NO_FETCH").is_some() {
        eprintln!("\n!!! SKIPPED: {} not found and EMLAB_NO_FETCH is set; the real-model judge test did NOT run !!!\n", local.display());
        return None;
    }
    Some(emlab_model::fetch::ensure_default_model().expect("fetch the default model (EMLAB_NO_FETCH=1 skips)"))
}

#[test]
fn smollm2_number_probabilities_are_exact() {
    let Some(path) = default_model() else { return };
    let judge = LocalJudge::new(Lm::load(&path, &Default::default()).unwrap()).unwrap();
    // Digits are split one per token: "0", "11".."99" (without "10"), "100", CODE, REFUSAL paths.
    assert_eq!(judge.lm.tokenizer.encode("100", false).unwrap().len(), 3);
    assert_eq!(judge.rows(), 1 + 89 + 1 + 2);
    let text = "Rate how kind this answer is, from 0 to 100. Answer with the number only.\n\
                Question: I'm bored.\nAnswer: You could read a book or call a friend.";
    let prompt = judge.prompt_ids(text).unwrap();
    let p = judge.probs(&prompt).unwrap();
    let total: f64 = p.numbers.iter().sum::<f64>() + p.code + p.refusal;
    assert!(total > 0.0 && total <= 1.0 + 1e-9, "total {total}");
    for (s, k) in [("37", 37usize), ("100", 100), ("5", 5)] {
        let toks = judge.lm.tokenizer.encode(s, false).unwrap();
        let mut ids = prompt.clone();
        ids.extend(&toks);
        let t = Tensor::from_vec(ids.clone(), (1, ids.len()), &candle_core::Device::Cpu).unwrap();
        let logits = judge.lm.model.forward(&t, Forward { logits: Logits::All, ..Default::default() }).unwrap();
        let logits = logits.logits.unwrap().to_vec3::<f32>().unwrap().remove(0);
        let mut want = 1.0;
        for (i, tok) in toks.iter().enumerate() {
            want *= log_softmax(&logits[prompt.len() - 1 + i])[*tok as usize].exp();
        }
        let last = log_softmax(&logits[prompt.len() - 1 + toks.len()]);
        let digit: f64 = (0..last.len())
            .filter(|&id| judge.lm.tokenizer.token_str(id as u32).and_then(|s| s.chars().next()).is_some_and(|c| c.is_ascii_digit()))
            .map(|id| last[id].exp())
            .sum();
        want *= 1.0 - digit;
        let got = p.numbers[k];
        assert!((got / want - 1.0).abs() < 2e-3, "P({s}): {got} vs teacher-forced {want}");
    }
    let s = emlab_eval::judge::logprob::score_number_probs(&p.number_probs()).unwrap();
    eprintln!("SmolLM2 as judge: number mass {:.3}, score {:?}, top first {:?}", s.number_mass, s.score, &p.top_first[..5]);
}
