//! Crafted model headers: every field that sizes an allocation, divides or multiplies is an
//! error naming the file (and tensor), never a panic, an abort or a terabyte allocation.
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use emlab_model::testing::{tiny_config, write_tiny_gguf};
use emlab_model::{Arch, Model, ModelConfig};
use std::path::Path;

fn err_of(path: &Path) -> String {
    match Model::load(path, &Default::default()) {
        Ok(_) => panic!("{} loaded but should not", path.display()),
        Err(e) => e.to_string(),
    }
}

/// The byte offset just after the first occurrence of `needle` in `b`.
fn after(b: &[u8], needle: &[u8]) -> usize {
    b.windows(needle.len()).position(|s| s == needle).unwrap_or_else(|| panic!("{needle:?} not found")) + needle.len()
}

#[test]
fn tensor_shapes_that_overflow_or_are_empty_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    write_tiny_gguf(&good, &tiny_config(Arch::Llama), 1).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // After a tensor's name: n_dims (u32), then the dims (u64 each).
    let dim0 = after(&bytes, b"blk.0.attn_norm.weight") + 4;
    for (tag, dim, want) in [("overflow", 1u64 << 62, "too large"), ("zero", 0, "zero dimension"), ("huge", 1 << 40, "bytes")] {
        let mut b = bytes.clone();
        b[dim0..dim0 + 8].copy_from_slice(&dim.to_le_bytes());
        let p = dir.path().join(format!("{tag}.gguf"));
        std::fs::write(&p, &b).unwrap();
        let e = err_of(&p);
        assert!(e.contains(&format!("{tag}.gguf")) && e.contains("blk.0.attn_norm.weight") && e.contains(want), "{e}");
        // The header alone (what `model info`, the tokenizer and the chat template read) too.
        assert!(emlab_model::load::read_gguf(&p).is_err());
    }
}

#[test]
fn zero_alignment_is_an_error_not_a_division_by_zero() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("align0.gguf");
    let t = QTensor::quantize(&Tensor::ones(32, candle_core::DType::F32, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    let md = [("general.architecture", gguf_file::Value::String("llama".into())), ("general.alignment", gguf_file::Value::U32(0))];
    let mut buf = std::io::Cursor::new(Vec::new());
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut buf, &md_refs, &[("output_norm.weight", &t)]).unwrap();
    std::fs::write(&p, buf.into_inner()).unwrap();
    let e = emlab_model::load::read_gguf(&p).expect_err("alignment 0 refused").to_string();
    assert!(e.contains("align0.gguf") && e.contains("general.alignment is 0"), "{e}");
    // A non-zero alignment in the same place still reads.
    let ok = dir.path().join("align32.gguf");
    let md = [("general.architecture", gguf_file::Value::String("llama".into())), ("general.alignment", gguf_file::Value::U32(32))];
    let mut buf = std::io::Cursor::new(Vec::new());
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    gguf_file::write(&mut buf, &md_refs, &[("output_norm.weight", &t)]).unwrap();
    std::fs::write(&ok, buf.into_inner()).unwrap();
    assert!(emlab_model::load::read_gguf(&ok).is_ok());
}

#[test]
fn absurd_or_non_finite_hyper_parameters_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good.gguf");
    write_tiny_gguf(&good, &tiny_config(Arch::Llama), 1).unwrap();
    let bytes = std::fs::read(&good).unwrap();
    // After a metadata key: its type (u32), then the value.
    let patch = |key: &[u8], value: &[u8], name: &str| {
        let mut b = bytes.clone();
        let at = after(&b, key) + 4;
        b[at..at + value.len()].copy_from_slice(value);
        let p = dir.path().join(name);
        std::fs::write(&p, &b).unwrap();
        err_of(&p)
    };
    // 2^31 layers once asked the allocator for 910 GB (an abort, not an error).
    let e = patch(b"llama.block_count", &(1u32 << 31).to_le_bytes(), "layers.gguf");
    assert!(e.contains("layers.gguf") && e.contains("2147483648 layers"), "{e}");
    let e = patch(b"llama.attention.layer_norm_rms_epsilon", &f32::NAN.to_le_bytes(), "eps.gguf");
    assert!(e.contains("eps.gguf") && e.contains("rms norm eps NaN"), "{e}");
    let e = patch(b"llama.rope.freq_base", &(-1f32).to_le_bytes(), "theta.gguf");
    assert!(e.contains("rope theta -1"), "{e}");
    let e = patch(b"llama.context_length", &0u32.to_le_bytes(), "ctx.gguf");
    assert!(e.contains("context length"), "{e}");
    // An HF config.json whose head dim overflowed `heads * head_dim` (a panic before).
    let mut v = tiny_config(Arch::Qwen2).to_hf_json();
    v["head_dim"] = serde_json::json!(1u64 << 62);
    let e = ModelConfig::from_hf_json(&v.to_string(), Path::new("cfg/config.json")).unwrap_err().to_string();
    assert!(e.contains("cfg/config.json") && e.contains("head dim"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
