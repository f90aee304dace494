//! Named hook points on the residual stream, TransformerLens style.
//!
//! Every block `L` exposes five points, named as in TransformerLens so that capture, steering and
//! diffing share one vocabulary:
//!
//! | name                       | value                                   | shape      |
//! |----------------------------|-----------------------------------------|------------|
//! | `blocks.{L}.hook_resid_pre`  | residual stream entering block L      | `[B, T, d]`|
//! | `blocks.{L}.hook_attn_out`   | attention output (after `o_proj`)     | `[B, T, d]`|
//! | `blocks.{L}.hook_resid_mid`  | `resid_pre + attn_out`                | `[B, T, d]`|
//! | `blocks.{L}.hook_mlp_out`    | MLP output (after `down_proj`)        | `[B, T, d]`|
//! | `blocks.{L}.hook_resid_post` | `resid_mid + mlp_out`, leaving block L| `[B, T, d]`|
//!
//! ```
//! use emlab_model::hooks::{HookPoint, HookKind};
//! let p: HookPoint = "blocks.12.hook_resid_post".parse().unwrap();
//! assert_eq!(p, HookPoint { layer: 12, kind: HookKind::ResidPost });
//! assert_eq!(p.to_string(), "blocks.12.hook_resid_post");
//! ```
//!
//! A [`HookSet`] edits and records the stream: directional ablation, then vector addition, then
//! capture (so a capture sees the edited stream). Edits keep the autograd graph intact, so the
//! same hooks work while training.

use crate::{Error, Result};
use candle_core::{Tensor, D};
use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;

/// Where in a block a hook sits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub enum HookKind {
    ResidPre,
    AttnOut,
    ResidMid,
    MlpOut,
    ResidPost,
}

impl HookKind {
    pub const ALL: [HookKind; 5] = [HookKind::ResidPre, HookKind::AttnOut, HookKind::ResidMid, HookKind::MlpOut, HookKind::ResidPost];
    pub fn name(&self) -> &'static str {
        match self {
            HookKind::ResidPre => "hook_resid_pre",
            HookKind::AttnOut => "hook_attn_out",
            HookKind::ResidMid => "hook_resid_mid",
            HookKind::MlpOut => "hook_mlp_out",
            HookKind::ResidPost => "hook_resid_post",
        }
    }
}

/// A named point in the forward pass: `blocks.{layer}.{kind}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct HookPoint {
    pub layer: usize,
    pub kind: HookKind,
}

impl HookPoint {
    pub fn resid_pre(layer: usize) -> Self {
        HookPoint { layer, kind: HookKind::ResidPre }
    }
    pub fn resid_post(layer: usize) -> Self {
        HookPoint { layer, kind: HookKind::ResidPost }
    }
}

impl fmt::Display for HookPoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "blocks.{}.{}", self.layer, self.kind.name())
    }
}

impl FromStr for HookPoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = || Error::Invalid(format!("bad hook name `{s}` (expected e.g. blocks.12.hook_resid_post)"));
        let rest = s.strip_prefix("blocks.").ok_or_else(bad)?;
        let (l, k) = rest.split_once('.').ok_or_else(bad)?;
        let layer = l.parse().map_err(|_| bad())?;
        let kind = HookKind::ALL.into_iter().find(|k2| k2.name() == k).ok_or_else(bad)?;
        Ok(HookPoint { layer, kind })
    }
}

/// Something the forward pass calls at each hook point.
pub trait Hooks {
    /// Cheap test, called first: points nobody wants cost nothing.
    fn wants(&self, point: HookPoint) -> bool;
    /// Receives the stream `[B, T, d]` at `point` and returns it, possibly edited.
    fn apply(&mut self, point: HookPoint, x: Tensor) -> Result<Tensor>;
    /// True when `apply` only computes on the device from the stream and tensors it holds for
    /// its whole life (no host reads, nothing kept, the same work at every call): then a decode
    /// step with these hooks may be captured once as a CUDA graph and replayed
    /// ([`crate::decode_graph`]), which runs the captured edits again without calling `apply`.
    /// Default: false (the step runs eagerly and `apply` is called every time).
    fn graph_safe(&self) -> bool {
        false
    }
}

/// One edit of the residual stream.
#[derive(Debug, Clone)]
pub enum Edit {
    /// `x <- x + coef * v` at every position; `v` has shape `[d]`.
    Add { vector: Tensor, coef: f64 },
    /// `x <- x - (x . r) r` at every position; `r` is unit-norm, shape `[d]`.
    Ablate { unit: Tensor },
}

/// The standard hook set: edits per point, and captures.
#[derive(Default)]
pub struct HookSet {
    edits: HashMap<HookPoint, Vec<Edit>>,
    capture: HashMap<HookPoint, Vec<Tensor>>,
    capturing: Vec<HookPoint>,
    /// Flat indices (`b * T + t`) of the positions to capture, when a token mask is set.
    mask_index: Option<Tensor>,
}

impl HookSet {
    pub fn new() -> Self {
        Self::default()
    }
    pub fn is_empty(&self) -> bool {
        self.edits.is_empty() && self.capturing.is_empty()
    }
    /// Adds `coef * v` at `point` (vector `[d]`, unnormalised as in the published steering).
    pub fn add(&mut self, point: HookPoint, vector: &Tensor, coef: f64) -> &mut Self {
        self.edits.entry(point).or_default().push(Edit::Add { vector: vector.clone(), coef });
        self
    }
    /// Projects the direction `dir` (any norm; normalised here) out of the stream at `point`.
    pub fn ablate(&mut self, point: HookPoint, dir: &Tensor) -> Result<&mut Self> {
        let unit = unit(dir)?;
        self.edits.entry(point).or_default().push(Edit::Ablate { unit });
        Ok(self)
    }
    /// Directional ablation everywhere: the direction is removed from the embedding output
    /// (`blocks.0.hook_resid_pre`) and from everything each block writes (`attn_out`,
    /// `mlp_out`), so no residual-stream position ever carries a component along it. This is the
    /// activation-level twin of orthogonalising the weights that write to the stream.
    pub fn ablate_everywhere(&mut self, dir: &Tensor, num_layers: usize) -> Result<&mut Self> {
        self.ablate(HookPoint::resid_pre(0), dir)?;
        for l in 0..num_layers {
            self.ablate(HookPoint { layer: l, kind: HookKind::AttnOut }, dir)?;
            self.ablate(HookPoint { layer: l, kind: HookKind::MlpOut }, dir)?;
        }
        Ok(self)
    }
    /// Records the stream at `point` (after this set's edits) on every forward call.
    pub fn capture(&mut self, point: HookPoint) -> &mut Self {
        if !self.capturing.contains(&point) {
            self.capturing.push(point);
        }
        self
    }
    /// Restricts captures of the next forward calls to the positions where `mask` `[B, T]` is
    /// non-zero (e.g. answer tokens only): each capture is then `[N, d]`, the selected positions
    /// in row-major order. `None` captures every position again.
    pub fn set_token_mask(&mut self, mask: Option<&Tensor>) -> Result<()> {
        self.mask_index = match mask {
            None => None,
            Some(m) => {
                let flat = m.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1::<f32>()?;
                let idx: Vec<u32> = flat.iter().enumerate().filter(|(_, v)| **v != 0.0).map(|(i, _)| i as u32).collect();
                let n = idx.len();
                Some(Tensor::from_vec(idx, n, m.device())?)
            }
        };
        Ok(())
    }
    /// The captures at `point`, one tensor per forward call (`[B, T, d]`, or `[N, d]` under a
    /// token mask), detached.
    pub fn captured(&self, point: HookPoint) -> &[Tensor] {
        self.capture.get(&point).map(|v| v.as_slice()).unwrap_or(&[])
    }
    /// Takes the captures out, leaving the set ready for the next batch.
    pub fn take_captured(&mut self) -> HashMap<HookPoint, Vec<Tensor>> {
        std::mem::take(&mut self.capture)
    }
    /// Edits registered at `point`.
    pub fn edits(&self, point: HookPoint) -> &[Edit] {
        self.edits.get(&point).map(|v| v.as_slice()).unwrap_or(&[])
    }
}

/// `v / |v|`, erroring on a zero vector.
pub fn unit(v: &Tensor) -> Result<Tensor> {
    let n = v.sqr()?.sum_all()?.sqrt()?.to_scalar::<f32>()?;
    if !(n > 0.0 && n.is_finite()) {
        return Err(Error::Invalid("cannot ablate a zero or non-finite direction".into()));
    }
    Ok((v / n as f64)?)
}

/// `x - (x . r) r` for `x` `[.., d]` and unit `r` `[d]`.
pub fn project_out(x: &Tensor, r: &Tensor) -> Result<Tensor> {
    let d = r.dim(0)?;
    let proj = x.broadcast_mul(&r.reshape((1, d))?)?.sum_keepdim(D::Minus1)?; // [.., 1]
    Ok((x - proj.broadcast_mul(r)?)?)
}

impl Hooks for HookSet {
    fn wants(&self, point: HookPoint) -> bool {
        self.edits.contains_key(&point) || self.capturing.contains(&point)
    }
    /// Edits only (additions and ablations of fixed vectors): steering while sampling replays
    /// from a graph. A set that captures keeps tensors, so it runs eagerly.
    fn graph_safe(&self) -> bool {
        self.capturing.is_empty()
    }
    fn apply(&mut self, point: HookPoint, mut x: Tensor) -> Result<Tensor> {
        if let Some(edits) = self.edits.get(&point) {
            // Ablations first, then additions: "ablate-then-add" puts back exactly the chosen
            // amount along the direction.
            // Directions are f32; a bf16 stream (GPU) gets them in its own dtype.
            let dt = x.dtype();
            for e in edits {
                if let Edit::Ablate { unit } = e {
                    x = project_out(&x, &unit.to_dtype(dt)?)?;
                }
            }
            for e in edits {
                if let Edit::Add { vector, coef } = e {
                    x = x.broadcast_add(&(vector * *coef)?.to_dtype(dt)?)?;
                }
            }
        }
        if self.capturing.contains(&point) {
            let c = match &self.mask_index {
                None => x.detach(),
                Some(idx) => {
                    let (b, t, d) = x.dims3()?;
                    if idx.dim(0)? > 0 && idx.max(0)?.to_scalar::<u32>()? as usize >= b * t {
                        return Err(Error::Invalid(format!("token mask larger than the batch [{b}, {t}]")));
                    }
                    x.detach().reshape((b * t, d))?.index_select(idx, 0)?
                }
            };
            self.capture.entry(point).or_default().push(c);
        }
        Ok(x)
    }
}
