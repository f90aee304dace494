//! Small helpers shared across the crate.

use crate::{Error, Result};
use std::io::Write;
use std::path::Path;

/// Writes `bytes` to `path` atomically: a temp file in the same folder, fsync, then rename, so a
/// crash never leaves a half-written file under the final name.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = path.file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    {
        let mut f = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        f.write_all(bytes).map_err(|e| Error::io(&tmp, e))?;
        f.sync_all().map_err(|e| Error::io(&tmp, e))?;
    }
    std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))
}

/// Whether two paths name one existing file, through any spelling, `./` or link (a path that
/// does not exist names no existing file). Commands use it to refuse an output that is one of
/// their inputs.
///
/// ```
/// let dir = tempfile::tempdir().unwrap();
/// let f = dir.path().join("a.jsonl");
/// std::fs::write(&f, "x").unwrap();
/// assert!(emlab_model::util::same_file(&dir.path().join(".").join("a.jsonl"), &f));
/// assert!(!emlab_model::util::same_file(&dir.path().join("b.jsonl"), &f));
/// ```
pub fn same_file(a: &Path, b: &Path) -> bool {
    let (Ok(ma), Ok(mb)) = (std::fs::metadata(a), std::fs::metadata(b)) else { return false };
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        ma.dev() == mb.dev() && ma.ino() == mb.ino()
    }
    #[cfg(not(unix))]
    {
        let _ = (ma, mb);
        matches!((a.canonicalize(), b.canonicalize()), (Ok(x), Ok(y)) if x == y)
    }
}

/// The one-line refusal for an output path that is one of a command's inputs (the same file
/// through any spelling or link, [`same_file`]): writing it would destroy the input before, or
/// while, it is read. `inputs` pairs each input with the flag that named it. `None`: no clash.
pub fn output_is_input(out: &Path, inputs: &[(&str, &Path)]) -> Option<String> {
    inputs.iter().find(|(_, input)| same_file(out, input)).map(|(flag, _)| {
        format!("{}: the output is the {flag} input; writing it would destroy that file (choose another output path)", out.display())
    })
}

/// SHA-256 of a file, hex.
pub fn sha256_file(path: &Path) -> Result<String> {
    use sha2::{Digest, Sha256};
    let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(|e| Error::io(path, e))?;
    Ok(format!("{:x}", h.finalize()))
}

/// Escapes `& < > " '` for HTML text and quoted attributes. Model outputs are hostile by design:
/// every page emlab writes passes them through this.
///
/// ```
/// assert_eq!(emlab_model::util::html_escape("<b>\"x\" & 'y'</b>"), "&lt;b&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/b&gt;");
/// ```
pub fn html_escape(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}
