//! A CPU emulator for emlab's CUDA kernels, for tests: the `.cu` sources of this crate compiled
//! with the host's C++ compiler against a small CUDA shim (`emu/cuda_emu.h`), run with a launch
//! configuration from [`crate::launch`], with every buffer guarded (see the crate docs).
//!
//! ```
//! use emlab_kernels::{emu, launch};
//! let Some(emu) = emu::Emulator::get() else { return Ok(()) }; // None: no C++ compiler (skipped)
//! let (rows, d) = (2, 40);
//! let x: Vec<f32> = (0..rows * d).map(|i| (i % 7) as f32 - 3.0).collect();
//! let mut l = emu::Launch::new("rmsnorm_fwd_f32", launch::rms_norm(rows, d));
//! let xb = l.input("x", &x);
//! let wb = l.input("w", &vec![1f32; d]);
//! let yb = l.output::<f32>("y", rows * d); // starts as NaN poison
//! l.arg(xb).arg(wb).arg(yb).arg(d as i32).arg(1e-6f32);
//! let y = emu.run(&l)?.get::<f32>(yb);
//! let ms = x[..d].iter().map(|v| v * v).sum::<f32>() / d as f32;
//! assert!((y[0] - x[0] / ms.sqrt()).abs() < 1e-5);
//! # Ok::<(), emu::Error>(())
//! ```
//!
//! How it runs: on first use the sources are written to a folder under the system's temporary
//! directory named by a hash of the sources and the compiler (so the test binaries of one
//! workspace share one build), the kernels are listed by a preprocessor pass and a runner program
//! is compiled (about 5 s). Each [`Emulator::run`] starts that program, sends it the launch and
//! reads back the buffers the kernel may write. A kernel error, a write out of bounds, a hang or
//! a crash comes back as an [`Error`] naming the kernel.
//!
//! The compiler: `$CXX`, else the first of `g++`, `c++`, `clang++` that runs (C++20). Without
//! one [`Emulator::get`] prints a loud notice and returns `None`, except when the environment
//! variable `CI` is set: then it panics, so CI cannot pass by skipping.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Deterministic test inputs: `n` values in `[lo, hi)` from a xorshift stream seeded by `seed`
/// (no tensor library needed), shared by the kernel tests of every crate.
///
/// ```
/// let v = emlab_kernels::emu::test_values(4, 7, -1.0, 1.0);
/// assert_eq!(v, emlab_kernels::emu::test_values(4, 7, -1.0, 1.0));
/// assert!(v.iter().all(|x| (-1.0..1.0).contains(x)));
/// ```
pub fn test_values(n: usize, seed: u64, lo: f32, hi: f32) -> Vec<f32> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            lo + (hi - lo) * ((x >> 40) as f32 / (1u64 << 24) as f32)
        })
        .collect()
}

/// What went wrong in a launch: the kernel's name and the problem, in one line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Error(pub String);

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

/// Element types of device buffers, with their byte encoding (little-endian, as on the GPU).
pub trait Elem: Copy {
    /// The runner's element code (checked against the kernel parameter's pointee type).
    const CODE: u8;
    const SIZE: usize;
    fn put(&self, out: &mut Vec<u8>);
    fn take(b: &[u8]) -> Self;
}

macro_rules! elem {
    ($t:ty, $code:expr) => {
        impl Elem for $t {
            const CODE: u8 = $code;
            const SIZE: usize = std::mem::size_of::<$t>();
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(&self.to_le_bytes());
            }
            fn take(b: &[u8]) -> Self {
                <$t>::from_le_bytes(b.try_into().expect("element size"))
            }
        }
    };
}
elem!(f32, 0);
elem!(half::bf16, 1);
elem!(u32, 2);
elem!(u64, 3);
elem!(i64, 4);
elem!(f64, 5);
elem!(i32, 6);
elem!(u8, 7);

/// A buffer of a [`Launch`] (its index there).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buf(usize);

/// A kernel argument: a scalar of the kernel parameter's exact width, or a buffer's device
/// address. `usize` converts to a 64-bit value (a `size_t` parameter), as cudarc passes it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Arg {
    I32(i32),
    F32(f32),
    U64(u64),
    I64(i64),
    F64(f64),
    Buf(Buf),
}

impl From<i32> for Arg {
    fn from(v: i32) -> Self {
        Arg::I32(v)
    }
}
impl From<f32> for Arg {
    fn from(v: f32) -> Self {
        Arg::F32(v)
    }
}
impl From<u64> for Arg {
    fn from(v: u64) -> Self {
        Arg::U64(v)
    }
}
impl From<usize> for Arg {
    fn from(v: usize) -> Self {
        Arg::U64(v as u64)
    }
}
impl From<i64> for Arg {
    fn from(v: i64) -> Self {
        Arg::I64(v)
    }
}
impl From<f64> for Arg {
    fn from(v: f64) -> Self {
        Arg::F64(v)
    }
}
impl From<Buf> for Arg {
    fn from(b: Buf) -> Self {
        Arg::Buf(b)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    In = 0,
    InOut = 1,
    Out = 2,
    Ptrs = 3,
}

#[derive(Debug, Clone)]
struct BufDesc {
    name: String,
    elem: u8,
    mode: Mode,
    len: usize,
    data: Vec<u8>,
    ptrs: Vec<(Buf, u64)>,
}

/// One kernel launch: name, geometry, buffers and arguments in the kernel's parameter order.
#[derive(Debug, Clone)]
pub struct Launch {
    kernel: String,
    dims: crate::launch::Dims,
    bufs: Vec<BufDesc>,
    args: Vec<Arg>,
    hang_s: f64,
    jitter_us: u32,
}

impl Launch {
    pub fn new(kernel: &str, dims: crate::launch::Dims) -> Self {
        Launch { kernel: kernel.to_string(), dims, bufs: Vec::new(), args: Vec::new(), hang_s: 20.0, jitter_us: 0 }
    }

    fn add(&mut self, name: &str, elem: u8, mode: Mode, len: usize, data: Vec<u8>, ptrs: Vec<(Buf, u64)>) -> Buf {
        self.bufs.push(BufDesc { name: name.to_string(), elem, mode, len, data, ptrs });
        Buf(self.bufs.len() - 1)
    }

    fn bytes<T: Elem>(v: &[T]) -> Vec<u8> {
        let mut out = Vec::with_capacity(v.len() * T::SIZE);
        v.iter().for_each(|x| x.put(&mut out));
        out
    }

    /// A read-only buffer: the launch fails if the kernel changes it.
    pub fn input<T: Elem>(&mut self, name: &str, v: &[T]) -> Buf {
        self.add(name, T::CODE, Mode::In, v.len() * T::SIZE, Self::bytes(v), Vec::new())
    }

    /// A buffer the kernel reads and writes (its final contents come back).
    pub fn inout<T: Elem>(&mut self, name: &str, v: &[T]) -> Buf {
        self.add(name, T::CODE, Mode::InOut, v.len() * T::SIZE, Self::bytes(v), Vec::new())
    }

    /// An uninitialised output of `len` elements: it starts as poison (NaN for f32 and bf16),
    /// as `alloc` leaves device memory, so an element the kernel never writes reads back NaN.
    pub fn output<T: Elem>(&mut self, name: &str, len: usize) -> Buf {
        self.add(name, T::CODE, Mode::Out, len * T::SIZE, Vec::new(), Vec::new())
    }

    /// A read-only table of u64 device addresses: entry `i` is the address of byte `off` of
    /// buffer `b` (the multi-tensor kernels' pointer tables).
    pub fn pointer_table(&mut self, name: &str, entries: &[(Buf, u64)]) -> Buf {
        self.add(name, u64::CODE, Mode::Ptrs, entries.len() * 8, Vec::new(), entries.to_vec())
    }

    /// Appends one kernel argument.
    pub fn arg(&mut self, a: impl Into<Arg>) -> &mut Self {
        self.args.push(a.into());
        self
    }

    /// Seconds a block may run before the launch counts as hung (default 20).
    pub fn hang_after(&mut self, seconds: f64) -> &mut Self {
        self.hang_s = seconds;
        self
    }

    /// Microseconds that one thread in 32 leaving a `__syncthreads` sleeps (default 0: off), so
    /// other threads run ahead into the next phase and a missing barrier shows up as wrong
    /// values (5000 exposes a block reduction that reuses its scratch without a barrier; it
    /// costs a few ms per barrier). `EMLAB_EMU_JITTER_US` in the environment overrides it.
    pub fn jitter_us(&mut self, us: u32) -> &mut Self {
        self.jitter_us = us;
        self
    }

    fn encode(&self) -> Vec<u8> {
        fn s(out: &mut Vec<u8>, x: &str) {
            out.extend_from_slice(&(x.len() as u32).to_le_bytes());
            out.extend_from_slice(x.as_bytes());
        }
        let mut o = Vec::new();
        o.extend_from_slice(&0x3155_4d45u32.to_le_bytes());
        s(&mut o, &self.kernel);
        let d = &self.dims;
        for v in [d.grid.0, d.grid.1, d.grid.2, d.block.0, d.block.1, d.block.2, d.shared_mem_bytes] {
            o.extend_from_slice(&v.to_le_bytes());
        }
        o.extend_from_slice(&self.hang_s.to_le_bytes());
        o.extend_from_slice(&(self.bufs.len() as u32).to_le_bytes());
        for b in &self.bufs {
            s(&mut o, &b.name);
            o.push(b.elem);
            o.push(b.mode as u8);
            o.extend_from_slice(&(b.len as u64).to_le_bytes());
            match b.mode {
                Mode::In | Mode::InOut => o.extend_from_slice(&b.data),
                Mode::Ptrs => {
                    for &(to, off) in &b.ptrs {
                        o.extend_from_slice(&(to.0 as u32).to_le_bytes());
                        o.extend_from_slice(&off.to_le_bytes());
                    }
                }
                Mode::Out => {}
            }
        }
        o.extend_from_slice(&(self.args.len() as u32).to_le_bytes());
        for a in &self.args {
            let (tag, bits): (u8, u64) = match *a {
                Arg::I32(v) => (0, v as u32 as u64),
                Arg::F32(v) => (1, v.to_bits() as u64),
                Arg::U64(v) => (2, v),
                Arg::I64(v) => (3, v as u64),
                Arg::F64(v) => (4, v.to_bits()),
                Arg::Buf(b) => (5, b.0 as u64),
            };
            o.push(tag);
            o.extend_from_slice(&bits.to_le_bytes());
        }
        o
    }
}

/// The buffers a launch wrote ([`Launch::inout`] and [`Launch::output`] ones).
#[derive(Debug, Clone)]
pub struct Outputs {
    kernel: String,
    bufs: Vec<Option<(String, u8, Vec<u8>)>>,
}

impl Outputs {
    /// The contents of `b` after the launch. Panics if `b` is a read-only buffer or `T` is not
    /// its element type (a mistake in the test, not in the kernel).
    pub fn get<T: Elem>(&self, b: Buf) -> Vec<T> {
        let (name, elem, data) =
            self.bufs[b.0].as_ref().unwrap_or_else(|| panic!("{}: buffer {} is read-only: no output", self.kernel, b.0));
        assert_eq!(*elem, T::CODE, "{}: buffer '{name}' read back as another element type", self.kernel);
        data.chunks_exact(T::SIZE).map(T::take).collect()
    }
}

/// The compiled emulator (one per process; see the module docs).
#[derive(Debug)]
pub struct Emulator {
    runner: PathBuf,
    kernels: Vec<String>,
}

/// The sources the runner is built from: the shim, the runner and this crate's kernels.
const SHIM: [(&str, &str); 3] = [
    ("cuda_emu.h", include_str!("../emu/cuda_emu.h")),
    ("cuda_bf16.h", include_str!("../emu/cuda_bf16.h")),
    ("runner.cpp", include_str!("../emu/runner.cpp")),
];
const KERNELS: [(&str, &str); 4] = [
    ("common.cuh", include_str!("common.cuh")),
    ("train.cu", include_str!("train.cu")),
    ("decode.cu", include_str!("decode.cu")),
    ("sae.cu", include_str!("sae.cu")),
];
const FLAGS: [&str; 5] = ["-std=c++20", "-O2", "-pthread", "-Wall", "-Wno-unknown-pragmas"];

impl Emulator {
    /// The emulator, compiled on first use; `None` (after a loud notice on stderr) when no C++
    /// compiler is found and `CI` is unset. Panics when the sources do not compile, or when no
    /// compiler is found and `CI` is set.
    pub fn get() -> Option<&'static Emulator> {
        static EMU: OnceLock<Result<Option<Emulator>, String>> = OnceLock::new();
        match EMU.get_or_init(build) {
            Ok(Some(e)) => Some(e),
            Ok(None) => {
                let msg = "no C++20 compiler ($CXX, g++, c++ or clang++): the CUDA kernel emulator tests are SKIPPED";
                if std::env::var_os("CI").is_some() {
                    panic!("{msg}, and CI is set: install g++ (or set CXX) to run them");
                }
                eprintln!("\n!!!!!!!! {msg} !!!!!!!!\n");
                None
            }
            Err(e) => panic!("{e}"),
        }
    }

    /// Every kernel the runner knows (each `extern "C" __global__` function of `src/*.cu`).
    pub fn kernels(&self) -> &[String] {
        &self.kernels
    }

    /// Runs one launch; the outputs, or what the kernel did wrong.
    pub fn run(&self, l: &Launch) -> Result<Outputs, Error> {
        for (i, a) in l.args.iter().enumerate() {
            if let Arg::Buf(b) = a {
                if b.0 >= l.bufs.len() {
                    return Err(Error(format!("{}: argument {i} names a buffer of another launch", l.kernel)));
                }
            }
        }
        let input = l.encode();
        let jitter = std::env::var("EMLAB_EMU_JITTER_US").unwrap_or_else(|_| l.jitter_us.to_string());
        let mut child = Command::new(&self.runner)
            .env("EMLAB_EMU_JITTER_US", jitter)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| Error(format!("{}: cannot start the emulator {}: {e}", l.kernel, self.runner.display())))?;
        let mut stdin = child.stdin.take().expect("piped stdin");
        let writer = std::thread::spawn(move || {
            let _ = stdin.write_all(&input); // a runner that dies early closes the pipe
        });
        let mut stdout = child.stdout.take().expect("piped stdout");
        let reader = std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = stdout.read_to_end(&mut v);
            v
        });
        let mut stderr = child.stderr.take().expect("piped stderr");
        let ereader = std::thread::spawn(move || {
            let mut s = String::new();
            let _ = stderr.read_to_string(&mut s);
            s
        });
        // The runner's watchdog catches a hung block; this catches a hung runner.
        let deadline = Instant::now() + Duration::from_secs_f64(l.hang_s * 4.0 + 60.0);
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break s,
                Ok(None) if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(Error(format!("{}: the emulator did not finish in {:.0} s (killed)", l.kernel, l.hang_s * 4.0 + 60.0)));
                }
                Ok(None) => std::thread::sleep(Duration::from_millis(1)),
                Err(e) => return Err(Error(format!("{}: waiting for the emulator: {e}", l.kernel))),
            }
        };
        let _ = writer.join();
        let out = reader.join().unwrap_or_default();
        let err = ereader.join().unwrap_or_default();
        if !status.success() {
            let msg = err.trim();
            let msg = if msg.is_empty() { format!("{}: the emulator failed ({status})", l.kernel) } else { msg.to_string() };
            return Err(Error(msg));
        }
        let mut bufs = Vec::with_capacity(l.bufs.len());
        let mut pos = 0;
        for b in &l.bufs {
            if matches!(b.mode, Mode::InOut | Mode::Out) {
                let end = pos + b.len;
                if end > out.len() {
                    return Err(Error(format!("{}: the emulator returned {} bytes, fewer than the outputs hold", l.kernel, out.len())));
                }
                bufs.push(Some((b.name.clone(), b.elem, out[pos..end].to_vec())));
                pos = end;
            } else {
                bufs.push(None);
            }
        }
        Ok(Outputs { kernel: l.kernel.clone(), bufs })
    }
}

/// FNV-1a: a stable hash for the build folder's name (std's hasher may change between releases).
fn fnv(h: &mut u64, bytes: &[u8]) {
    for &b in bytes {
        *h ^= b as u64;
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

fn find_compiler() -> Option<(String, String)> {
    let mut cands: Vec<String> = Vec::new();
    if let Ok(c) = std::env::var("CXX") {
        if !c.trim().is_empty() {
            cands.push(c.trim().to_string());
        }
    }
    cands.extend(["g++", "c++", "clang++"].map(String::from));
    for c in cands {
        if let Ok(o) = Command::new(&c).arg("--version").output() {
            if o.status.success() {
                return Some((c, String::from_utf8_lossy(&o.stdout).lines().next().unwrap_or("").to_string()));
            }
        }
    }
    None
}

/// `extern __shared__ T name[];` -> `T* const name = ::emu::dynamic_shared<T>();` (the one
/// declaration a C++ shim cannot express; see emu/cuda_emu.h). Any other form is an error.
fn rewrite_dynamic_shared(file: &str, src: &str) -> Result<String, String> {
    const KEY: &str = "extern __shared__";
    let mut out = String::with_capacity(src.len());
    let mut rest = src;
    while let Some(i) = rest.find(KEY) {
        out.push_str(&rest[..i]);
        let after = &rest[i + KEY.len()..];
        let end = after.find(';').ok_or_else(|| format!("{file}: `extern __shared__` without a `;`"))?;
        let decl = after[..end].trim();
        let decl = decl
            .strip_suffix("[]")
            .map(str::trim_end)
            .ok_or_else(|| format!("{file}: `extern __shared__ {decl}` is not of the form `T name[]`"))?;
        let split = decl
            .rfind(|c: char| !(c.is_alphanumeric() || c == '_'))
            .ok_or_else(|| format!("{file}: cannot read `extern __shared__ {decl}[]`"))?;
        let (ty, name) = (decl[..=split].trim(), &decl[split + 1..]);
        let ty = strip_align(ty);
        if ty.is_empty() || name.is_empty() {
            return Err(format!("{file}: cannot read `extern __shared__ {decl}[]`"));
        }
        out.push_str(&format!("{ty}* const {name} = ::emu::dynamic_shared<{ty}>()"));
        rest = &after[end..];
    }
    out.push_str(rest);
    Ok(out)
}

fn strip_align(ty: &str) -> String {
    match ty.find("__align__(") {
        Some(i) => {
            let close = ty[i..].find(')').map(|j| i + j + 1).unwrap_or(ty.len());
            format!("{}{}", &ty[..i], &ty[close..]).split_whitespace().collect::<Vec<_>>().join(" ")
        }
        None => ty.to_string(),
    }
}

fn run_compiler(cxx: &str, args: &[&str], dir: &Path) -> Result<Vec<u8>, String> {
    let o = Command::new(cxx).args(args).current_dir(dir).output().map_err(|e| format!("emlab-kernels emulator: cannot run {cxx}: {e}"))?;
    if !o.status.success() {
        return Err(format!(
            "emlab-kernels emulator: `{cxx} {}` failed in {}:\n{}",
            args.join(" "),
            dir.display(),
            String::from_utf8_lossy(&o.stderr)
        ));
    }
    Ok(o.stdout)
}

fn build() -> Result<Option<Emulator>, String> {
    let Some((cxx, version)) = find_compiler() else { return Ok(None) };
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for (n, s) in SHIM.iter().chain(KERNELS.iter()) {
        fnv(&mut h, n.as_bytes());
        fnv(&mut h, s.as_bytes());
    }
    fnv(&mut h, cxx.as_bytes());
    fnv(&mut h, version.as_bytes());
    fnv(&mut h, FLAGS.join(" ").as_bytes());
    let dir = std::env::temp_dir().join(format!("emlab-emu-{h:016x}"));
    let runner = dir.join("runner");
    let list = dir.join("kernels.txt");
    if runner.is_file() && list.is_file() {
        let kernels = std::fs::read_to_string(&list).map_err(|e| format!("{}: {e}", list.display()))?.lines().map(String::from).collect();
        return Ok(Some(Emulator { runner, kernels }));
    }
    // A private folder per process, renamed into place when complete: concurrent builds by
    // several test binaries never see each other's half-written files.
    let tmp = std::env::temp_dir().join(format!("emlab-emu-{h:016x}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let write = |name: &str, text: &str| std::fs::write(tmp.join(name), text).map_err(|e| format!("{}: {e}", tmp.join(name).display()));
    for (n, s) in SHIM {
        write(n, s)?;
    }
    let mut all = String::new();
    for (n, s) in KERNELS {
        write(n, &rewrite_dynamic_shared(n, s)?)?;
        if n.ends_with(".cu") {
            all.push_str(&format!("#include \"{n}\"\n"));
        }
    }
    write("all.cu", &all)?;
    let pre = run_compiler(&cxx, &["-std=c++20", "-E", "-DEMU_SCAN", "-I.", "-x", "c++", "all.cu"], &tmp)?;
    let pre = String::from_utf8_lossy(&pre);
    let mut kernels = Vec::new();
    for part in pre.split("emu_kernel_marker").skip(1) {
        let name = part.trim_start().strip_prefix("void").map(str::trim_start).and_then(|r| r.split('(').next()).map(str::trim);
        match name {
            Some(n) if !n.is_empty() && n.chars().all(|c| c.is_alphanumeric() || c == '_') => kernels.push(n.to_string()),
            _ => {
                return Err(format!(
                    "emlab-kernels emulator: cannot read a kernel's name after `__global__` in: {}",
                    part.chars().take(120).collect::<String>()
                ))
            }
        }
    }
    let entries: String = kernels.iter().map(|k| format!("X({k}) ")).collect();
    write("emu_kernels.inc", &format!("#include \"all.cu\"\n#define EMU_KERNEL_LIST(X) {entries}\n"))?;
    write("kernels.txt", &kernels.join("\n"))?;
    let mut args: Vec<&str> = FLAGS.to_vec();
    args.extend(["-I.", "runner.cpp", "-o", "runner"]);
    run_compiler(&cxx, &args, &tmp)?;
    match std::fs::rename(&tmp, &dir) {
        Ok(()) => {}
        // Another process finished first: use its build.
        Err(_) if runner.is_file() => {
            let _ = std::fs::remove_dir_all(&tmp);
        }
        Err(e) => return Err(format!("emlab-kernels emulator: cannot move {} to {}: {e}", tmp.display(), dir.display())),
    }
    Ok(Some(Emulator { runner, kernels }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_dynamic_shared_declarations() {
        let src = "a; extern __shared__ float sh[];  b; extern __shared__ __align__(16) unsigned char buf [] ;";
        let out = rewrite_dynamic_shared("x.cu", src).unwrap();
        assert_eq!(
            out,
            "a; float* const sh = ::emu::dynamic_shared<float>();  b; unsigned char* const buf = ::emu::dynamic_shared<unsigned char>();"
        );
        assert!(rewrite_dynamic_shared("x.cu", "extern __shared__ float sh[4];").is_err());
    }
}
