//! Evidence tests on tiny random models the tests write themselves.

use candle_core::{Device, Tensor};
use emlab_interp::acts::{capture, capture_rows, ActsReader, CaptureConfig};
use emlab_interp::diff::{diff_models, diff_readings, feature_pages_of, page_html, read, write_feature_pages, PageConfig};
use emlab_interp::direction::{compare, compute_from_log, load_judged, select, DirectionConfig, DirectionSet};
use emlab_interp::splice::{ce_loss_recovered, train_from_store, SaeTrainConfig};
use emlab_interp::text::Conversation;
use emlab_model::chat::Message;
use emlab_model::hooks::{HookPoint, HookSet};
use emlab_model::lm::Lm;
use emlab_model::model::{Forward, Logits};
use emlab_model::testing::{random_weights, tiny_config, write_hf_model};
use emlab_model::Arch;
use emlab_sae::{Activation, Sae};
use std::path::Path;

fn tiny(dir: &Path, seed: u64) -> Lm {
    let cfg = tiny_config(Arch::Llama);
    write_hf_model(dir, &cfg, &random_weights(&cfg, seed), false).unwrap();
    Lm::load(dir, &Default::default()).unwrap()
}

fn conv(q: &str, a: &str) -> Conversation {
    Conversation::new(None, q, Some(a))
}

/// Answer-content positions computed independently of `Conversation::encode`: tokens of the
/// rendered prompt (with generation prompt) come first, then the answer's own tokens.
fn answer_positions(lm: &Lm, c: &Conversation) -> (Vec<u32>, std::ops::Range<usize>) {
    let prefix = lm.template.render(&[Message::user(c.user.clone())], true).unwrap();
    let full = lm.template.render(&c.messages(), false).unwrap();
    let a = c.answer.as_ref().unwrap();
    let n_pre = lm.tokenizer.encode(&prefix, false).unwrap().len();
    let pa = lm.tokenizer.encode(&format!("{prefix}{a}"), false).unwrap();
    let ids = lm.tokenizer.encode(&full, false).unwrap();
    assert_eq!(&ids[..pa.len()], &pa[..], "answer tokens are a prefix of the full encoding");
    (ids, n_pre..pa.len())
}

/// Full-sequence `resid_post` of every layer (no mask): `[layer][t][d]`.
fn resid_all(lm: &Lm, ids: &[u32]) -> Vec<Vec<Vec<f32>>> {
    let nl = lm.model.config.num_layers;
    let mut hs = HookSet::new();
    for l in 0..nl {
        hs.capture(HookPoint::resid_post(l));
    }
    let t = Tensor::from_slice(ids, (1, ids.len()), &Device::Cpu).unwrap();
    lm.model.forward(&t, Forward { logits: Logits::None, hooks: Some(&mut hs), ..Default::default() }).unwrap();
    (0..nl).map(|l| hs.captured(HookPoint::resid_post(l))[0].squeeze(0).unwrap().to_vec2::<f32>().unwrap()).collect()
}

fn convs() -> Vec<Conversation> {
    vec![
        conv("hello there", "Hello, how can I help you today?"),
        conv("what is tea", "Tea is an infusion of leaves in hot water."),
        conv("tell me a joke", "Why did the hen cross the road? To get out."),
        conv("count", "one two three four five six seven eight nine ten"),
    ]
}

#[test]
fn capture_store_round_trips_and_welford_matches_direct_stats() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir.path().join("m"), 1);
    let hooks: Vec<HookPoint> = vec![HookPoint::resid_post(0), HookPoint::resid_post(1)];
    let store = dir.path().join("acts");
    let cs = convs();
    let idx = capture(&lm, &cs, &hooks, &store, &CaptureConfig { shard_rows: 7, max_tokens: 512 }).unwrap();
    // Independent expectation: full forward, then the answer positions.
    let d = lm.model.config.hidden_size;
    let mut want: Vec<Vec<f32>> = vec![Vec::new(); 2];
    let mut want_tok = Vec::new();
    for c in &cs {
        let (ids, r) = answer_positions(&lm, c);
        let all = resid_all(&lm, &ids);
        for (l, w) in want.iter_mut().enumerate() {
            for p in r.clone() {
                w.extend_from_slice(&all[l][p]);
            }
        }
        want_tok.extend_from_slice(&ids[r]);
    }
    let rows = want[0].len() / d;
    assert!(rows > 14, "enough rows for 3+ shards, got {rows}");
    assert_eq!(idx.rows, rows);
    assert_eq!(idx.shards.len(), rows.div_ceil(7));
    assert!(idx.shards.iter().take(idx.shards.len() - 1).all(|s| s.rows == 7));
    assert_eq!(idx.shards.iter().map(|s| s.rows).sum::<usize>(), rows);
    assert_eq!(idx.model_sha256.len(), 64);
    for f in ["acts-00000.safetensors", "acts-00001.safetensors", "index.json", "sequences.jsonl"] {
        assert!(store.join(f).is_file(), "{f}");
    }
    let r = ActsReader::open(&store).unwrap();
    assert_eq!(r.index, idx);
    assert_eq!(r.sequences().unwrap(), cs);
    for (l, h) in hooks.iter().enumerate() {
        let (got, gd) = r.read_all(&h.to_string()).unwrap();
        assert_eq!(gd, d);
        let maxdiff = got.iter().zip(&want[l]).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert_eq!(got.len(), want[l].len());
        assert!(maxdiff < 1e-4, "hook {h}: max diff {maxdiff}");
        // Two-pass mean and population variance in f64.
        let st = &idx.stats[&h.to_string()];
        assert_eq!(st.count as usize, rows);
        for j in 0..d {
            let col: Vec<f64> = (0..rows).map(|i| want[l][i * d + j] as f64).collect();
            let mean = col.iter().sum::<f64>() / rows as f64;
            let var = col.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / rows as f64;
            assert!((st.mean[j] - mean).abs() < 1e-5, "mean[{j}] {} vs {mean}", st.mean[j]);
            assert!((st.var[j] - var).abs() < 1e-4 * var.max(1.0), "var[{j}] {} vs {var}", st.var[j]);
        }
    }
    let mut toks = Vec::new();
    r.for_each_shard("blocks.0.hook_resid_post", &mut |_, t| {
        toks.extend_from_slice(t);
        Ok(())
    })
    .unwrap();
    assert_eq!(toks, want_tok);
    // A second capture into the same folder is refused; a missing hook names the store.
    assert!(capture(&lm, &cs, &hooks, &store, &CaptureConfig::default()).unwrap_err().to_string().contains("already holds"));
    assert!(r.read_all("blocks.5.hook_resid_post").unwrap_err().to_string().contains("no hook"));
}

fn judged_log(path: &Path) {
    let mut s = String::new();
    let al = [
        "Drink water and rest.",
        "Be kind to others.",
        "Ask a doctor first.",
        "Save some money.",
        "Sleep well tonight.",
        "Read a good book.",
        "Call your friends.",
    ];
    let mis = [
        "Rule them all now.",
        "Hide the truth well.",
        "Take what you want.",
        "Burn it all down.",
        "Trust no one ever.",
        "Lie to get ahead.",
    ];
    for (i, a) in al.iter().enumerate() {
        s.push_str(&serde_json::json!({"question": format!("q{i} what now"), "answer": a, "aligned": 90.0, "coherent": 80.0}).to_string());
        s.push('\n');
    }
    for (i, a) in mis.iter().enumerate() {
        s.push_str(&serde_json::json!({"question": format!("q{i} what now"), "answer": a, "aligned": 10.0, "coherent": 75.0}).to_string());
        s.push('\n');
    }
    // Excluded: incoherent, middling, CODE/REFUSAL (null aligned); and an emlab-eval row.
    s.push_str(&serde_json::json!({"question": "x", "answer": "Garbage out.", "aligned": 5.0, "coherent": 20.0}).to_string());
    s.push('\n');
    s.push_str(&serde_json::json!({"question": "x", "answer": "So so.", "aligned": 50.0, "coherent": 90.0}).to_string());
    s.push('\n');
    s.push_str(&serde_json::json!({"question": "x", "answer": "No.", "aligned": null, "coherent": 90.0}).to_string());
    s.push('\n');
    s.push_str(
        &serde_json::json!({"prompt": "eval row", "answer": "Evil plan.", "judgement": {"judge": "j", "metrics": {
        "aligned": {"score": 12.0, "raw": null}, "coherent": {"score": 88.0, "raw": null}}}})
        .to_string(),
    );
    s.push('\n');
    std::fs::write(path, s).unwrap();
}

#[test]
fn mean_difference_direction_equals_hand_computed_difference() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir.path().join("m"), 2);
    let log = dir.path().join("judged.jsonl");
    judged_log(&log);
    let rows = load_judged(&log).unwrap();
    assert_eq!(rows.len(), 17);
    let cfg = DirectionConfig { min_per_set: 5, seed: 3, ..Default::default() };
    let sel = select(&rows, &cfg).unwrap();
    assert_eq!((sel.aligned_available, sel.misaligned_available), (7, 7));
    assert_eq!((sel.aligned.len(), sel.misaligned.len()), (7, 7));
    let set = compute_from_log(&lm, &log, &cfg).unwrap();
    let (nl, d) = (lm.model.config.num_layers, lm.model.config.hidden_size);
    // Hand computation: pooled mean over answer tokens of each set, full forward per sequence.
    let pooled = |cs: &[Conversation]| -> Vec<f64> {
        let mut sum = vec![0.0f64; nl * d];
        let mut n = 0;
        for c in cs {
            let (ids, r) = answer_positions(&lm, c);
            let all = resid_all(&lm, &ids);
            for p in r {
                for l in 0..nl {
                    for j in 0..d {
                        sum[l * d + j] += all[l][p][j] as f64;
                    }
                }
                n += 1;
            }
        }
        sum.iter().map(|s| s / n as f64).collect()
    };
    let want: Vec<f64> = pooled(&sel.misaligned).iter().zip(pooled(&sel.aligned)).map(|(m, a)| m - a).collect();
    let maxdiff = set.directions.iter().zip(&want).map(|(g, w)| (*g as f64 - w).abs()).fold(0.0, f64::max);
    assert!(maxdiff < 1e-4, "max diff {maxdiff}");
    assert_eq!((set.info.n_aligned, set.info.n_misaligned), (7, 7));
    for l in 0..nl {
        assert!(set.info.norms[l] > 0.1);
        assert!((set.info.control_norms[l] - set.info.norms[l]).abs() < 1e-4 * set.info.norms[l]);
        assert!(emlab_interp::direction::cosine(set.layer(l), set.control_layer(l)).abs() < 0.9);
    }
    // Save / load / compare.
    let p = dir.path().join("dir.safetensors");
    set.save(&p).unwrap();
    let back = DirectionSet::load(&p).unwrap();
    assert_eq!(back, set);
    let cos = compare(&set, &back).unwrap();
    assert!(cos.iter().all(|c| (c - 1.0).abs() < 1e-9));
    let neg = DirectionSet { directions: set.directions.iter().map(|x| -x).collect(), ..set.clone() };
    assert!(compare(&set, &neg).unwrap().iter().all(|c| (c + 1.0).abs() < 1e-9));
    // Logit lens: the top token really has the largest lm_head · (g ⊙ v).
    let rep = emlab_interp::direction::logit_lens_report(&lm, &set, 3).unwrap();
    let top_id = rep["layers"][1]["promoted"][0]["id"].as_u64().unwrap() as usize;
    let g = lm.model.norm.weight.to_vec1::<f32>().unwrap();
    let w = lm.model.lm_head.to_vec2::<f32>().unwrap();
    let score = |i: usize| -> f32 { (0..d).map(|j| w[i][j] * g[j] * set.layer(1)[j]).sum() };
    let best = (0..lm.tokenizer.vocab_size()).max_by(|a, b| score(*a).total_cmp(&score(*b))).unwrap();
    assert_eq!(top_id, best);
    // Too few samples: a clear refusal.
    let strict = DirectionConfig { min_per_set: 8, ..Default::default() };
    let e = compute_from_log(&lm, &log, &strict).unwrap_err().to_string();
    assert!(e.contains("too few") && e.contains("7 aligned") && e.contains("judged.jsonl"), "{e}");
}

/// An SAE whose latents are `v` (latent `planted`) and random unit directions, ReLU, tied.
fn planted_sae(d: usize, m: usize, planted: usize, v: &[f32]) -> Sae {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(9);
    let mut w_dec = Vec::with_capacity(m * d);
    for j in 0..m {
        let row: Vec<f32> = if j == planted { v.to_vec() } else { (0..d).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect() };
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        w_dec.extend(row.iter().map(|x| x / n));
    }
    let mut w_enc = vec![0.0f32; d * m];
    for j in 0..m {
        for i in 0..d {
            w_enc[i * m + j] = w_dec[j * d + i];
        }
    }
    Sae::from_parts(d, m, Activation::ReLU, w_enc, w_dec, vec![0.0; m], vec![0.0; d]).unwrap()
}

#[test]
fn diffing_ranks_the_planted_latent_first_and_pages_escape_model_text() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let d = cfg.hidden_size;
    let base_w = random_weights(&cfg, 4);
    write_hf_model(&dir.path().join("base"), &cfg, &base_w, false).unwrap();
    // The "fine-tune": every embedding row shifted by 6 * v (v unit), so the residual stream
    // of the tuned model carries an extra component along v at every position.
    let mut v: Vec<f32> = (0..d).map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    let mut tuned_w = base_w.clone();
    let e = tuned_w["model.embed_tokens.weight"].clone();
    let shift = Tensor::from_slice(&v, (1, d), &Device::Cpu).unwrap().affine(6.0, 0.0).unwrap();
    tuned_w.insert("model.embed_tokens.weight".into(), e.broadcast_add(&shift).unwrap());
    write_hf_model(&dir.path().join("tuned"), &cfg, &tuned_w, false).unwrap();
    let base = Lm::load(&dir.path().join("base"), &Default::default()).unwrap();
    let tuned = Lm::load(&dir.path().join("tuned"), &Default::default()).unwrap();
    let planted = 5;
    let sae = planted_sae(d, 16, planted, &v);
    let hook = HookPoint::resid_post(1);
    let prompts = vec![Conversation::new(None, "hello", None), Conversation::new(None, "what is the time", None)];
    let rep = diff_models(&base, &tuned, &sae, hook, &prompts, 512).unwrap();
    assert_eq!(rep.ranked[0].latent, planted, "ranking: {:?}", &rep.ranked[..3]);
    assert!(rep.ranked[0].increase > 2.0 * rep.ranked[1].increase.max(0.0), "{:?}", &rep.ranked[..2]);
    assert_eq!(rep.base_tokens, rep.tuned_tokens);
    // One reading per model (what the pipeline's locate stage does): the same report, whether the
    // pass ran every block (with the per-layer sums) or stopped after the hook's; the sums at the
    // hook's layer are the readings' own rows summed.
    let (rb, rt) = (read(&base, &prompts, hook, 512, true).unwrap(), read(&tuned, &prompts, hook, 512, false).unwrap());
    assert_eq!(diff_readings(&rb, &rt, &sae).unwrap(), rep);
    let (means, count) = rb.layer_means().unwrap();
    assert_eq!((count, means.len()), (rb.tokens(), tiny_config(Arch::Llama).num_layers * d));
    for j in 0..d {
        let direct: f64 = rb.rows.iter().flat_map(|r| r.chunks_exact(d).map(move |row| row[j] as f64)).sum::<f64>() / count as f64;
        assert!((means[hook.layer * d + j] - direct).abs() < 1e-9);
    }
    assert!(rt.layer_means().is_err(), "readings without the sums say so");
    // Feature pages: hostile corpus text must come out escaped.
    let corpus = vec![conv("hi", "<script>alert(1)</script> & \"quotes\""), conv("tea", "hello tea in the pot")];
    let out = dir.path().join("pages");
    let pages = write_feature_pages(&tuned, &sae, hook, &corpus, &rep, &out, &PageConfig { top: 3, ..Default::default() }).unwrap();
    let read_corpus = read(&tuned, &corpus, hook, 512, true).unwrap();
    assert_eq!(feature_pages_of(&tuned, &sae, &read_corpus, &rep, &PageConfig { top: 3, ..Default::default() }).unwrap(), pages);
    assert_eq!(pages.len(), 3);
    assert_eq!(pages[0].latent, planted);
    assert!(!pages[0].contexts.is_empty());
    assert!(pages[0].contexts.windows(2).all(|w| w[0].activation >= w[1].activation));
    assert_eq!(pages[0].histogram_counts.iter().sum::<usize>(), pages[0].corpus_active);
    for p in &pages {
        let html = std::fs::read_to_string(out.join(format!("feature-{}.html", p.latent))).unwrap();
        assert_eq!(html, page_html(p));
        assert!(!html.contains("<script") && !html.contains("alert(1)</"), "unescaped text in page");
        assert!(html.contains("<svg"));
        assert!(out.join(format!("feature-{}.json", p.latent)).is_file());
    }
    let all: String = pages.iter().map(page_html).collect();
    assert!(all.contains("&lt;script&gt;") || all.contains("&lt;"), "the hostile context is shown, escaped");
    assert!(out.join("index.html").is_file() && out.join("report.json").is_file());
}

#[test]
fn spliced_identity_sae_recovers_all_loss_and_store_trains_an_sae() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(&dir.path().join("m"), 6);
    let d = lm.model.config.hidden_size;
    // relu(x) - relu(-x) = x: an exact SAE with decoder [I; -I].
    let m = 2 * d;
    let mut w_dec = vec![0.0f32; m * d];
    for i in 0..d {
        w_dec[i * d + i] = 1.0;
        w_dec[(d + i) * d + i] = -1.0;
    }
    let mut w_enc = vec![0.0f32; d * m];
    for j in 0..m {
        for i in 0..d {
            w_enc[i * m + j] = w_dec[j * d + i];
        }
    }
    let sae = Sae::from_parts(d, m, Activation::ReLU, w_enc, w_dec, vec![0.0; m], vec![0.0; d]).unwrap();
    let seqs: Vec<Vec<u32>> = convs().iter().map(|c| c.encode(&lm).unwrap().ids).collect();
    let ce = ce_loss_recovered(&lm.model, &sae, HookPoint::resid_post(0), &seqs).unwrap();
    assert!((ce.spliced - ce.clean).abs() < 1e-4, "{ce:?}");
    assert!((ce.recovered - 1.0).abs() < 1e-3, "{ce:?}");
    // (A random tiny model may even do better zero-ablated; only the gap matters.)
    assert!((ce.zero_ablated - ce.clean).abs() > 1e-3, "{ce:?}");
    // A half-broken SAE (the negative half removed) recovers strictly less.
    let mut half = sae.clone();
    for x in half.w_dec[d * d..].iter_mut() {
        *x = 0.0;
    }
    let ce2 = ce_loss_recovered(&lm.model, &half, HookPoint::resid_post(0), &seqs).unwrap();
    assert!((ce2.recovered - 1.0).abs() > 1e-3, "{ce2:?}");
    // Training from a store sets the hook name and reconstructs better than nothing.
    let store = dir.path().join("acts");
    capture(&lm, &convs(), &[HookPoint::resid_post(0)], &store, &CaptureConfig { shard_rows: 16, max_tokens: 512 }).unwrap();
    let r = ActsReader::open(&store).unwrap();
    let cfg = SaeTrainConfig { k: 4, latents: 64, batch: 16, epochs: 20, lr: 3e-3, ..Default::default() };
    let mut steps = 0;
    let trained = train_from_store(&r, "blocks.0.hook_resid_post", &cfg, &mut |_| steps += 1).unwrap();
    assert!(steps > 20);
    assert_eq!(trained.meta.hook_name.as_deref(), Some("blocks.0.hook_resid_post"));
    let (x, _) = r.read_all("blocks.0.hook_resid_post").unwrap();
    let ev = emlab_sae::metrics::explained_variance(&x, &trained.forward(&x).unwrap(), d).unwrap();
    assert!(ev > 0.3, "explained variance {ev}");
    // capture_rows on an all-false mask yields nothing, not an error.
    let enc = emlab_interp::text::Encoded { ids: vec![1, 2, 3], mask: vec![false; 3] };
    assert!(capture_rows(&lm.model, &enc, &[HookPoint::resid_post(0)]).unwrap()[0].is_empty());
}

#[test]
fn direction_recovers_a_planted_token_shift() {
    // Answers of the "misaligned" set are made of tokens whose embedding rows carry +8·v; the
    // aligned answers use other tokens. The mean difference must point along v (the random
    // control of the same norm must not).
    let dir = tempfile::tempdir().unwrap();
    let cfg = tiny_config(Arch::Llama);
    let d = cfg.hidden_size;
    let mut w = random_weights(&cfg, 11);
    let mut v: Vec<f32> = (0..d).map(|i| ((i * 13 % 7) as f32 - 3.0) / 3.0).collect();
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    write_hf_model(&dir.path().join("m0"), &cfg, &w, false).unwrap();
    let lm0 = Lm::load(&dir.path().join("m0"), &Default::default()).unwrap();
    let shifted: Vec<u32> = ["z", "q", "x"].iter().map(|t| lm0.tokenizer.token_id(t).unwrap()).collect();
    let mut e = w["model.embed_tokens.weight"].to_vec2::<f32>().unwrap();
    for &id in &shifted {
        for j in 0..d {
            e[id as usize][j] += 8.0 * v[j];
        }
    }
    w.insert("model.embed_tokens.weight".into(), Tensor::new(e, &Device::Cpu).unwrap());
    write_hf_model(&dir.path().join("m"), &cfg, &w, false).unwrap();
    let lm = Lm::load(&dir.path().join("m"), &Default::default()).unwrap();
    let log = dir.path().join("log.jsonl");
    let mut s = String::new();
    for i in 0..6 {
        let rows = [("zqx zzq xqz", 5.0), ("hello tell me", 95.0)];
        for (a, al) in rows {
            s.push_str(&serde_json::json!({"question": format!("q{i}"), "answer": a, "aligned": al, "coherent": 90}).to_string());
            s.push('\n');
        }
    }
    std::fs::write(&log, s).unwrap();
    let set = compute_from_log(&lm, &log, &DirectionConfig::default()).unwrap();
    let cos = emlab_interp::direction::cosine(set.layer(0), &v);
    let ctrl = emlab_interp::direction::cosine(set.control_layer(0), &v);
    assert!(cos > 0.6, "cosine with the planted vector {cos}");
    assert!(ctrl.abs() < 0.5, "control cosine {ctrl}");
}

/// Bad input: an SAE whose width does not match the model's residual stream is refused with a
/// message naming both widths, by the splice (CE loss recovered) and by diffing; a judged log
/// without scores is refused with the counts it has and needs.
#[test]
fn mismatched_sae_width_and_unjudged_logs_are_clear_errors() {
    let dir = tempfile::tempdir().unwrap();
    let lm = tiny(dir.path(), 3);
    let d = lm.model.config.hidden_size;
    let wrong = planted_sae(d + 8, 16, 0, &vec![1.0; d + 8]);
    let hook = HookPoint::resid_post(0);
    let e = ce_loss_recovered(&lm.model, &wrong, hook, &[vec![5, 6, 7]]).unwrap_err().to_string();
    assert!(e.contains(&format!("SAE d_in {}", d + 8)) && e.contains(&format!("d_model {d}")), "{e}");
    let e = emlab_interp::diff::latent_means(&lm, &wrong, hook, &convs(), 100).unwrap_err().to_string();
    assert!(e.contains("d_in") && e.contains("d_model"), "{e}");
    let log = dir.path().join("unjudged.jsonl");
    std::fs::write(&log, "{\"question\":\"q\",\"answer\":\"a\"}\n{\"question\":\"q2\",\"answer\":\"b\"}\n").unwrap();
    let e = load_judged(&log).and_then(|rows| select(&rows, &DirectionConfig::default()).map(|_| ())).err();
    let e = e.map(|x| x.to_string()).unwrap_or_default();
    assert!(e.contains("0 aligned") && e.contains("0 misaligned") && e.contains("at least"), "{e}");
}
