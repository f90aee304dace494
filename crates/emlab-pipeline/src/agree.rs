//! The `directions` stage: do the fine-tunes move the residual stream the same way?
//!
//! For the induce fine-tune, every control fine-tune and every seed replicate (`more_seeds`):
//! the *model-diff* direction at every layer, `mean resid_post(fine-tuned) - mean
//! resid_post(original)` over the same texts (the induced model's answers, answer tokens only, at
//! most [`max_tokens`] per answer), `[num_layers, d]`, and the cosine of every pair of fine-tunes
//! at every layer.
//!
//! Why: Soligo et al. report that misalignment directions from different fine-tunes agree
//! (cosine > 0.8 in most layers). A model diff also holds what *any* fine-tune on the same format
//! does, so the control fine-tunes are the reference: a direction the control shares (cosine
//! near 1) is about fine-tuning on code, not about the bad data, and the induce-minus-control
//! difference is what the bad data added. Seeds tell how much of a direction is reproducible.
//! Two random directions in `d` dimensions have |cosine| about `1/sqrt(d)` (0.04 at d = 576).
//!
//! Written to `directions/`: `{stage}.safetensors` per fine-tune (emlab-interp's direction
//! format, usable by `emlab steer` and `emlab cvec export`) and `agreement.json` ([`Agreement`]).

use crate::stages::io;
use crate::{stage_err, Error, Result};
use emlab_interp::direction::{self, DirectionInfo, DirectionSet};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Answer tokens read per text: the direction default's, as `locate` reads them.
pub fn max_tokens() -> usize {
    direction::DirectionConfig::default().max_tokens
}

/// What the `directions` stage found (`directions/agreement.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Agreement {
    /// Texts (the induced model's answers) and answer tokens every model read.
    pub texts: usize,
    pub tokens: usize,
    /// The layer the report's pairwise table is taken at (locate's layer), and the width of
    /// the residual stream.
    pub layer: usize,
    pub d: usize,
    /// Training stages, induce first.
    pub stages: Vec<String>,
    /// `[stage][layer]`: norm of each fine-tune's direction.
    pub norms: Vec<Vec<f64>>,
    /// `[stage][stage][layer]`: cosine of every pair (symmetric, 1 on the diagonal when the
    /// direction is not zero).
    pub cosines: Vec<Vec<Vec<f64>>>,
    /// `[stage][layer]`: `|d_induce - d_stage| / |d_induce|`, what is left of induce's direction
    /// after taking the other fine-tune's away, relative to induce's norm (0 for induce itself;
    /// cosine alone ignores the norms).
    pub residual: Vec<Vec<f64>>,
    /// `directions/{stage}.safetensors`, relative to the run folder, in `stages` order.
    pub files: Vec<PathBuf>,
}

/// The published level of agreement between misalignment directions of different fine-tunes
/// (Soligo et al.: cosine > 0.8 in most layers). Model diffs of any two fine-tunes on the same
/// format may well exceed it; the report uses it as a reading aid, not a calibrated test.
pub const SHARED_COSINE: f64 = 0.8;

/// A control whose model diff points the way induce's does, at the report's layer.
#[derive(Debug, Clone, PartialEq)]
pub struct Shared<'a> {
    pub stage: &'a str,
    pub cosine: f64,
    /// [`Agreement::residual`] at the layer.
    pub residual: f64,
}

impl Agreement {
    /// The controls (training stages `control`, `control-NAME`, not seed replicates) whose
    /// direction has cosine >= [`SHARED_COSINE`] with induce's at the report's layer.
    pub fn controls_sharing(&self) -> Vec<Shared<'_>> {
        self.stages
            .iter()
            .enumerate()
            .filter(|(_, s)| s.as_str() == "control" || (s.starts_with("control-") && !is_replicate(s)))
            .filter_map(|(j, s)| {
                Some(Shared {
                    stage: s.as_str(),
                    cosine: *self.cosine("induce", s)?.get(self.layer)?,
                    residual: *self.residual.get(j)?.get(self.layer)?,
                })
            })
            .filter(|x| x.cosine >= SHARED_COSINE)
            .collect()
    }

    /// What the report and the CLI say of [`Self::controls_sharing`], in words (plain text);
    /// `None` when no control shares induce's direction. `located_is_model_diff`: whether
    /// `locate`'s direction is induce's model diff (its fallback) rather than the published
    /// misaligned-minus-aligned difference, which this comparison does not test.
    pub fn reading(&self, located_is_model_diff: bool) -> Option<String> {
        let shared = self.controls_sharing();
        if shared.is_empty() {
            return None;
        }
        let each: Vec<String> = shared
            .iter()
            .map(|x| {
                format!(
                    "the {} fine-tune's (cosine {:.3}; without it, {:.2} of the norm of induce's is left)",
                    x.stage, x.cosine, x.residual
                )
            })
            .collect();
        let tail = if located_is_model_diff {
            "The located direction is induce's model diff, so most of it is what fine-tuning on this data format does, not what the bad data added."
        } else {
            "The located direction is the published misaligned-minus-aligned difference, which this comparison does not test."
        };
        Some(format!(
            "At layer {} induce's model diff points the way of {} (misalignment directions of different fine-tunes agree at cosine > {} in the published work; model diffs of any two fine-tunes on one format may too). {tail}",
            self.layer,
            each.join(" and "),
            SHARED_COSINE
        ))
    }

    /// Checks the shapes a report relies on (a hand-edited or truncated `agreement.json` gives
    /// a one-line error, not a panic): one row per stage everywhere, square cosines, equal layer
    /// counts, `layer` in range, induce first.
    pub fn check(&self) -> std::result::Result<(), String> {
        let n = self.stages.len();
        let layers = self.norms.first().map_or(0, |r| r.len());
        if n == 0 || self.stages[0] != "induce" {
            return Err("stages must start with induce".into());
        }
        let rows_ok = |rows: &[Vec<f64>]| rows.len() == n && rows.iter().all(|r| r.len() == layers);
        if !rows_ok(&self.norms) || !rows_ok(&self.residual) || self.cosines.len() != n || !self.cosines.iter().all(|r| rows_ok(r)) {
            return Err(format!("norms, residual and cosines must have {n} rows of {layers} layers"));
        }
        if self.layer >= layers {
            return Err(format!("layer {} but {layers} layers", self.layer));
        }
        Ok(())
    }

    /// Cosine of `a` and `b` at every layer (`None` for a stage not in the set).
    pub fn cosine(&self, a: &str, b: &str) -> Option<&[f64]> {
        let i = self.stages.iter().position(|s| s == a)?;
        let j = self.stages.iter().position(|s| s == b)?;
        Some(&self.cosines[i][j])
    }
}

/// Reads the texts with the original model and with each fine-tune (`(stage, adapter)`, induce
/// first), writes every direction set and `agreement.json` into `dir`.
pub(crate) fn run(
    model: &Path,
    texts_log: &Path,
    fine_tunes: &[(String, PathBuf)],
    layer: usize,
    seed: u64,
    dir: &Path,
) -> Result<Agreement> {
    let err = stage_err("directions");
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let convs: Vec<_> = direction::load_judged(texts_log).map_err(|e| err(e.to_string()))?.into_iter().map(|r| r.conv).collect();
    let mean_of = |adapter: Option<&Path>| -> Result<(Vec<f64>, usize, usize, usize)> {
        let lm = emlab_interp::load_lm(model, adapter).map_err(|e| err(e.to_string()))?;
        let (nl, d) = (lm.model.config.num_layers, lm.model.config.hidden_size);
        let (mean, tokens) = direction::mean_resid_post(&lm, &convs, max_tokens()).map_err(|e| err(e.to_string()))?;
        Ok((mean, tokens, nl, d))
    };
    let t0 = std::time::Instant::now();
    eprintln!("  directions: the original model reads the induced model's {} answers", convs.len());
    let (base, tokens, nl, d) = mean_of(None)?;
    if layer >= nl {
        return Err(err(format!("layer {layer} but the model has {nl} layers")));
    }
    let mut sets = Vec::new();
    let mut files = Vec::new();
    for (stage, adapter) in fine_tunes {
        eprintln!("  directions: {stage} ({:.0} s)", t0.elapsed().as_secs_f64());
        let (tuned, _, _, _) = mean_of(Some(adapter))?;
        let info = DirectionInfo {
            method: format!(
                "model diff: mean resid_post of the {stage} fine-tune minus the original model over the induced model's {} answers",
                convs.len()
            ),
            model: model.display().to_string(),
            tokens_misaligned: tokens,
            tokens_aligned: tokens,
            ..Default::default()
        };
        let set = DirectionSet::from_means(&tuned, &base, nl, d, seed, info).map_err(|e| err(e.to_string()))?;
        let rel = PathBuf::from("directions").join(format!("{stage}.safetensors"));
        set.save(&dir.join(format!("{stage}.safetensors"))).map_err(|e| err(e.to_string()))?;
        files.push(rel);
        sets.push(set);
    }
    let norms: Vec<Vec<f64>> = sets.iter().map(|s| s.norms()).collect();
    let residual = sets
        .iter()
        .map(|b| {
            (0..nl)
                .map(|l| {
                    let (a, b) = (sets[0].layer(l), b.layer(l));
                    let diff: f64 = a.iter().zip(b).map(|(x, y)| (*x as f64 - *y as f64).powi(2)).sum::<f64>().sqrt();
                    let na = norms[0][l];
                    if na > 0.0 {
                        diff / na
                    } else {
                        0.0
                    }
                })
                .collect()
        })
        .collect();
    let cosines = sets
        .iter()
        .map(|a| sets.iter().map(|b| direction::compare(a, b).map_err(|e| err(e.to_string()))).collect::<Result<Vec<_>>>())
        .collect::<Result<Vec<_>>>()?;
    let res = Agreement {
        texts: convs.len(),
        tokens,
        layer,
        d,
        stages: fine_tunes.iter().map(|(s, _)| s.clone()).collect(),
        norms,
        residual,
        cosines,
        files,
    };
    let json = serde_json::to_string_pretty(&res).map_err(|e| Error::Io(e.to_string()))?;
    emlab_model::util::write_atomic(&dir.join("agreement.json"), json.as_bytes()).map_err(|e| Error::Io(e.to_string()))?;
    Ok(res)
}

pub(crate) fn load(dir: &Path) -> Result<Agreement> {
    let p = dir.join("agreement.json");
    let text = std::fs::read_to_string(&p).map_err(io(&p))?;
    let a: Agreement = serde_json::from_str(&text).map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
    a.check().map_err(|e| Error::Io(format!("{}: {e}", p.display())))?;
    Ok(a)
}

/// `control-s3`, `control-edu-s3`: a seed replicate's stage name.
fn is_replicate(stage: &str) -> bool {
    stage.rsplit_once("-s").is_some_and(|(_, n)| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_sharing_takes_controls_at_the_layer_only() {
        // Stages: induce, control, control-edu, control-s3 (a replicate); cosines with induce
        // at layers 0 and 1.
        let stages: Vec<String> = ["induce", "control", "control-edu", "control-s3"].map(String::from).to_vec();
        let with_induce = [[1.0, 1.0], [0.95, 0.5], [0.2, 0.85], [0.99, 0.99]];
        let mut cosines = vec![vec![vec![0.0; 2]; 4]; 4];
        for (j, c) in with_induce.iter().enumerate() {
            cosines[0][j] = c.to_vec();
            cosines[j][0] = c.to_vec();
        }
        let residual = vec![vec![0.0, 0.0], vec![0.3, 0.9], vec![1.2, 0.5], vec![0.1, 0.1]];
        let mut a =
            Agreement { texts: 1, tokens: 1, layer: 1, d: 4, stages, norms: vec![vec![1.0; 2]; 4], residual, cosines, files: vec![] };
        assert_eq!(a.check(), Ok(()));
        assert_eq!(a.controls_sharing(), [Shared { stage: "control-edu", cosine: 0.85, residual: 0.5 }]);
        a.layer = 0;
        assert_eq!(a.controls_sharing(), [Shared { stage: "control", cosine: 0.95, residual: 0.3 }]);
        assert!(is_replicate("control-edu-s12") && !is_replicate("control-s") && !is_replicate("control-sx"));
        // Shapes a report indexes: refused with a line, not a panic.
        a.layer = 2;
        assert!(a.check().unwrap_err().contains("layer 2"));
        a.layer = 0;
        a.cosines[3].pop();
        assert!(a.check().unwrap_err().contains("4 rows of 2 layers"));
        a.stages.clear();
        assert!(a.check().is_err());
    }
}
