//! Bad steering input found by the CLI audit: each is a one-line error naming the file or
//! tensor, never a panic or a file that loads but steers with NaN.
use candle_core::quantized::{gguf_file, GgmlDType, QTensor};
use candle_core::{Device, Tensor};
use emlab_model::HookPoint;
use emlab_steer::cvec::ControlVector;
use emlab_steer::spec::{write_eval_spec, Intervention, Resolved};

fn write_cv(path: &std::path::Path, md: &[(&str, gguf_file::Value)], values: &[f32]) {
    let t = QTensor::quantize(&Tensor::new(values, &Device::Cpu).unwrap(), GgmlDType::F32).unwrap();
    let md_refs: Vec<(&str, &gguf_file::Value)> = md.iter().map(|(k, v)| (*k, v)).collect();
    let mut buf = std::io::Cursor::new(Vec::new());
    gguf_file::write(&mut buf, &md_refs, &[("direction.1", &t)]).unwrap();
    std::fs::write(path, buf.into_inner()).unwrap();
}

#[test]
fn control_vectors_with_a_crafted_header_or_non_finite_values_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let arch = ("general.architecture", gguf_file::Value::String("controlvector".into()));
    // general.alignment = 0 made candle's parser divide by zero (a panic).
    let p = dir.path().join("align0.gguf");
    write_cv(&p, &[arch.clone(), ("general.alignment", gguf_file::Value::U32(0))], &[1.0; 8]);
    let e = ControlVector::read(&p).unwrap_err().to_string();
    assert!(e.contains("align0.gguf") && e.contains("alignment"), "{e}");
    // A zero-length direction aborted the process (a slice from a null pointer).
    let p = dir.path().join("dims0.gguf");
    write_cv(&p, &[arch.clone()], &[1.0; 8]);
    let mut b = std::fs::read(&p).unwrap();
    let at = b.windows(11).position(|s| s == b"direction.1").unwrap() + 11 + 4;
    b[at..at + 8].copy_from_slice(&0u64.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = ControlVector::read(&p).unwrap_err().to_string();
    assert!(e.contains("dims0.gguf") && e.contains("direction.1") && e.contains("zero dimension"), "{e}");
    // An inf in the vector was imported and steered every answer into garbage.
    let p = dir.path().join("inf.gguf");
    write_cv(&p, &[arch], &[1.0, f32::INFINITY, 0.0, 0.0]);
    let e = ControlVector::read(&p).unwrap_err().to_string();
    assert!(e.contains("inf.gguf") && e.contains("direction.1") && e.contains("non-finite value at element 1"), "{e}");
    // Writing: a NaN vector (e.g. `cvec export --coef nan`) is refused, and no file is left.
    let mut cv = ControlVector::new("tiny");
    cv.insert(2, Tensor::new(&[0.5f32, f32::NAN], &Device::Cpu).unwrap()).unwrap();
    let out = dir.path().join("nan.gguf");
    let e = cv.write(&out).unwrap_err().to_string();
    assert!(e.contains("nan.gguf") && e.contains("direction.2"), "{e}");
    assert!(!out.exists());
}

#[test]
fn a_non_finite_coefficient_is_not_written_as_a_null_alpha() {
    let dir = tempfile::tempdir().unwrap();
    let r = Resolved::Add { point: HookPoint::resid_post(1), vector: Tensor::new(&[1f32, 2.0], &Device::Cpu).unwrap(), coef: f64::NAN, ablate_first: false };
    let e = write_eval_spec(&[r], dir.path()).unwrap_err().to_string();
    assert!(e.contains("blocks.1.hook_resid_post") && e.contains("not finite"), "{e}");
    assert!(!dir.path().join("intervention.json").exists());
}

#[test]
fn toml_spec_errors_say_what_is_wrong_on_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("steer.toml");
    std::fs::write(&p, "[[edits]]\nkind = \"add\"\nlayers = [1]\ncoef = 4.0\ncolour = \"red\"\nvector = { type = \"inline\", values = [1.0] }\n").unwrap();
    let e = Intervention::load(&p).unwrap_err().to_string();
    // toml's Display is several lines; its first line alone ("TOML parse error at line 5,
    // column 1") said where but not what.
    assert!(e.contains("steer.toml") && e.contains("line 5") && e.contains("unknown field `colour`"), "{e}");
    assert!(!e.contains('\n'), "{e}");
}
