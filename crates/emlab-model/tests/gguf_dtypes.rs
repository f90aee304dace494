//! Every GGUF tensor type real llama/qwen2 files contain dequantizes to the same values as the
//! `gguf` Python package (llama.cpp's reference code). Fixture made by
//! `examples/make_dtype_fixture.rs` + `tools/reference/dequant_fixture.py`.
use emlab_model::load::{read_gguf, read_gguf_tensor_f32};
use std::path::Path;

#[test]
fn all_supported_types_match_reference_dequantization() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures");
    let path = dir.join("all_dtypes.gguf");
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("all_dtypes_expected.json")).unwrap()).unwrap();
    let (content, mut reader) = read_gguf(&path).unwrap();
    let mut seen = Vec::new();
    for (name, e) in expected.as_object().unwrap() {
        let want: Vec<f32> = e["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
        let got = read_gguf_tensor_f32(&content, &mut reader, &path, name).unwrap();
        let got = got.flatten_all().unwrap().to_vec1::<f32>().unwrap();
        assert_eq!(got.len(), want.len(), "{name}");
        for (i, (g, w)) in got.iter().zip(&want).enumerate() {
            assert!((g - w).abs() <= 1e-6 * w.abs().max(1.0), "{name}[{i}]: {g} vs reference {w}");
        }
        seen.push(e["type"].as_str().unwrap().to_string());
    }
    seen.sort();
    let mut want_types: Vec<String> =
        ["F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K"]
            .iter()
            .map(|s| s.to_string())
            .collect();
    want_types.sort();
    assert_eq!(seen, want_types);
}
