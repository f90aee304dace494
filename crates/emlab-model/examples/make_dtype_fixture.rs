//! Writes `tests/fixtures/all_dtypes.gguf`: one small tensor per GGUF type emlab supports,
//! quantized by candle. `tools/reference/dequant_fixture.py` then dequantizes the same file with
//! the `gguf` Python package (llama.cpp's own reference code) to make the expected values.
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};

fn main() -> anyhow::Result<()> {
    let out = std::env::args().nth(1).unwrap_or_else(|| "crates/emlab-model/tests/fixtures/all_dtypes.gguf".into());
    let n = 2 * 256;
    let vals: Vec<f32> = (0..n).map(|i| (i as f32 * 0.37).sin() * 2.0 + (i % 13) as f32 * 0.1 - 0.6).collect();
    let t = Tensor::from_vec(vals, (2, 256), &Device::Cpu)?;
    use GgmlDType::*;
    let mut qs = Vec::new();
    for dt in [F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2K, Q3K, Q4K, Q5K, Q6K] {
        qs.push((format!("t.{dt:?}"), QTensor::quantize(&t, dt)?));
    }
    let arch = gguf_file::Value::String("fixture".into());
    let md = vec![("general.architecture", &arch)];
    let refs: Vec<(&str, &QTensor)> = qs.iter().map(|(k, v)| (k.as_str(), v)).collect();
    let mut f = std::fs::File::create(&out)?;
    gguf_file::write(&mut f, &md, &refs)?;
    println!("wrote {out}");
    Ok(())
}
