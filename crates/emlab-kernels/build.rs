//! With the `cuda` feature: compiles each `src/*.cu` to PTX in OUT_DIR with nvcc (found in
//! `$CUDA_HOME/bin`, else on PATH). PTX, not a cubin: the driver JIT-compiles it for the card
//! it meets, so one build serves any GPU at or above the target (default sm_90, `CUDA_COMPUTE_CAP`).
use std::path::PathBuf;
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=CUDA_COMPUTE_CAP");
    for f in ["train.cu", "sae.cu", "decode.cu", "common.cuh"] {
        println!("cargo:rerun-if-changed=src/{f}");
    }
    if std::env::var_os("CARGO_FEATURE_CUDA").is_none() {
        return;
    }
    let out = PathBuf::from(std::env::var("OUT_DIR").expect("OUT_DIR"));
    let nvcc = match std::env::var("CUDA_HOME") {
        Ok(h) => PathBuf::from(h).join("bin/nvcc"),
        Err(_) => PathBuf::from("nvcc"),
    };
    let cap = std::env::var("CUDA_COMPUTE_CAP").unwrap_or_else(|_| "90".into());
    for name in ["train", "sae", "decode"] {
        let src = format!("src/{name}.cu");
        let dst = out.join(format!("{name}.ptx"));
        let status = Command::new(&nvcc)
            .args(["--ptx", "-O3", "-std=c++17", &format!("-arch=compute_{cap}"), "-o"])
            .arg(&dst)
            .arg(&src)
            .status()
            .unwrap_or_else(|e| panic!("emlab-kernels: cannot run {} ({e}); set CUDA_HOME (scripts/build-cuda.sh does)", nvcc.display()));
        assert!(status.success(), "emlab-kernels: nvcc failed on {src}");
    }
}
