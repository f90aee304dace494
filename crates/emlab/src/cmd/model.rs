//! `emlab model info|fetch`.

use super::common::ModelOpt;
use anyhow::Result;
use emlab_model::fetch;

#[derive(clap::Args, Debug)]
pub struct ModelArgs {
    #[command(subcommand)]
    cmd: ModelCmd,
}

#[derive(clap::Subcommand, Debug)]
enum ModelCmd {
    /// Fetch a known model (default: the default model) into the models folder and verify it.
    Fetch {
        /// smollm2-135m (default) or qwen2.5-coder-0.5b.
        name: Option<String>,
        /// Models folder (default: $EMLAB_MODELS or ~/.cache/emlab/models).
        #[arg(long)]
        dir: Option<std::path::PathBuf>,
    },
    /// Architecture, sizes, tokenizer and template of a model.
    Info {
        #[command(flatten)]
        model: ModelOpt,
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(a: ModelArgs) -> Result<()> {
    match a.cmd {
        ModelCmd::Fetch { name, dir } => {
            let name = name.unwrap_or_else(|| fetch::SMOLLM2.name.to_string());
            let p = fetch::ensure_model(&name, dir.as_deref())?;
            println!("{}", p.display());
            Ok(())
        }
        ModelCmd::Info { model, json } => {
            let path = model.path()?;
            let lm = model.load()?;
            let c = &lm.model.config;
            let tok = &lm.tokenizer;
            let weights = weights_summary(&path)?;
            let info = serde_json::json!({
                "path": path,
                "source": lm.source,
                "weights": weights,
                "config": c,
                "parameters": c.num_params(),
                "flops_per_token": lm.model.flops_per_token(),
                "tokenizer": {
                    "vocab_size": tok.vocab_size(),
                    "bos": tok.bos_id(), "eos": tok.eos_id(), "stop_ids": tok.eos_ids(),
                },
                "chat_template_example": lm.template.render(&[emlab_model::chat::Message::user("Hello!")], true)?,
            });
            if json {
                println!("{}", serde_json::to_string_pretty(&info)?);
            } else {
                println!("model      {}", path.display());
                println!(
                    "arch       {} ({} layers, d {}, {} heads / {} kv heads, head dim {}, mlp {})",
                    c.arch.name(),
                    c.num_layers,
                    c.hidden_size,
                    c.num_heads,
                    c.num_kv_heads,
                    c.head_dim,
                    c.intermediate_size
                );
                println!(
                    "params     {:.1} M ({} vocab, tied embeddings: {})",
                    c.num_params() as f64 / 1e6,
                    c.vocab_size,
                    c.tie_word_embeddings
                );
                if let Some(w) = weights.as_object() {
                    // What the file stores, before emlab dequantizes it: a quantized checkpoint is
                    // a different model from its full-precision release.
                    let types = w["tensor_types"]
                        .as_object()
                        .map(|t| t.iter().map(|(k, n)| format!("{k} x{n}")).collect::<Vec<_>>().join(", "))
                        .unwrap_or_default();
                    let name = w["name"].as_str().map(|n| format!(" (general.name {n:?})")).unwrap_or_default();
                    println!("weights    {types}{name}");
                }
                println!(
                    "rope theta {}  rms eps {}  qkv bias {}  context {}",
                    c.rope_theta, c.rms_norm_eps, c.attention_bias, c.max_position_embeddings
                );
                println!("tokenizer  {} tokens, stop ids {:?}", tok.vocab_size(), tok.eos_ids());
                println!("template   {:?}", info["chat_template_example"].as_str().unwrap_or(""));
            }
            Ok(())
        }
    }
}

/// A GGUF file's stored tensor types (count per type) and `general.name`; `null` for HF folders.
fn weights_summary(path: &std::path::Path) -> Result<serde_json::Value> {
    if path.is_dir() {
        return Ok(serde_json::Value::Null);
    }
    let (content, _) = emlab_model::load::read_gguf(path)?;
    let mut types = std::collections::BTreeMap::<String, usize>::new();
    for t in content.tensor_infos.values() {
        *types.entry(format!("{:?}", t.ggml_dtype)).or_default() += 1;
    }
    let name = content.metadata.get("general.name").and_then(|v| v.to_string().ok()).cloned();
    Ok(serde_json::json!({"name": name, "tensor_types": types}))
}
