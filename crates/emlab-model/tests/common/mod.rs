//! Helpers shared by the integration tests that need the real models.

use serde_json::Value;
use std::path::{Path, PathBuf};

/// The GGUF a fixture was made from: `$EMLAB_MODELS/<file>` or `<repo>/models/<file>` when present,
/// else fetched (and SHA-256-checked) by `emlab_model::fetch::ensure_model`. With
/// `EMLAB_NO_FETCH=1` a missing file skips the test with a loud notice instead.
pub fn model_file(fx: &Value) -> Option<PathBuf> {
    let name = fx["model_file"].as_str().unwrap();
    let local = match std::env::var_os("EMLAB_MODELS") {
        Some(d) => PathBuf::from(d).join(name),
        None => Path::new(env!("CARGO_MANIFEST_DIR")).join("../../models").join(name),
    };
    if local.is_file() {
        return Some(local);
    }
    if std::env::var_os("EMLAB_NO_FETCH").is_some() {
        eprintln!("\n!!! SKIPPED: {} not found and EMLAB_NO_FETCH is set; tests on it did NOT run !!!\n", local.display());
        return None;
    }
    let known =
        emlab_model::fetch::KNOWN.iter().find(|k| k.file == name).unwrap_or_else(|| panic!("{name} is not a model emlab can fetch"));
    match emlab_model::fetch::ensure_model(known.name, None) {
        Ok(p) => Some(p),
        Err(e) => panic!("cannot fetch {name}: {e} (EMLAB_NO_FETCH=1 skips offline)"),
    }
}
