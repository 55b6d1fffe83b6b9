//! Backbone architectures: the official DINOv2 presets and the project's `tiny` preset, built
//! from one small table, plus the JSON form a `--config` file takes.
//!
//! Every official model has head_dim 64, patch 14, MLP ratio 4, LayerNorm eps 1e-6 and a
//! 37 x 37 position-embedding grid (trained at 518 px). ViT-g/14 uses SwiGLU with the hidden
//! width computed as the official `SwiGLUFFNFused` does: `(int(4 * 1536 * 2 / 3) + 7) // 8 * 8`
//! = 4096.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Every preset, the `_reg4` variants included, in the order `dinov2 presets` prints them.
pub const PRESET_NAMES: &[&str] = &[
    "tiny",
    "vits14",
    "vitb14",
    "vitl14",
    "vitg14",
    "vits14_reg4",
    "vitb14_reg4",
    "vitl14_reg4",
    "vitg14_reg4",
];

/// The feed-forward layer of a block.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FfnKind {
    /// `fc1 -> GELU (exact, erf) -> fc2`.
    Mlp,
    /// `w12 -> (silu(x1) * x2) -> w3`, the official `SwiGLUFFNFused`.
    Swiglu,
}

/// How the learned position embeddings are resized to another patch grid. The three forms
/// give different numbers, so the one a checkpoint was trained with must be used.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum PosInterpolation {
    /// Bicubic (a = -0.75) driven by scale factors `(h + offset) / M`, as the official models
    /// without registers do (`interpolate_offset` 0.1, `torch.nn.functional.interpolate` with
    /// `scale_factor`).
    ScaleFactor { offset: f64 },
    /// Bicubic driven by the output size; with `antialias` PyTorch's antialiased bicubic
    /// (a = -0.5, support widened when downsampling). Official `_reg` models: antialias;
    /// HuggingFace `Dinov2Model`: none; `Dinov2WithRegistersModel`: antialias.
    Size { antialias: bool },
}

impl PosInterpolation {
    /// The official models without registers.
    pub const OFFICIAL: Self = Self::ScaleFactor { offset: 0.1 };
    /// The official models with registers, and HuggingFace `Dinov2WithRegistersModel`.
    pub const ANTIALIAS: Self = Self::Size { antialias: true };
    /// HuggingFace `Dinov2Model`.
    pub const SIZE: Self = Self::Size { antialias: false };

    /// Parse the CLI spelling: `offset`, `size` or `size-antialias`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "offset" => Ok(Self::OFFICIAL),
            "size" => Ok(Self::SIZE),
            "size-antialias" => Ok(Self::ANTIALIAS),
            other => Err(Error::Usage(format!(
                "unknown interpolation `{other}`: expected offset, size or size-antialias"
            ))),
        }
    }
}

/// A ViT backbone's architecture.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VitConfig {
    /// Token width D.
    pub embed_dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads; `embed_dim / num_heads` is the head width (64 in every preset).
    pub num_heads: usize,
    /// Feed-forward kind.
    pub ffn: FfnKind,
    /// Feed-forward hidden width (for SwiGLU: the width of each of the two branches).
    pub ffn_hidden: usize,
    /// Square patch side in pixels.
    pub patch_size: usize,
    /// Side of the position-embedding grid the weights hold (518 / 14 = 37 for the official
    /// models); other inputs interpolate it.
    pub pos_grid: usize,
    /// Register tokens (arXiv 2309.16588), 0 or 4 in the official models.
    #[serde(default)]
    pub num_register_tokens: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Initial LayerScale value for new models (1e-5 in DINOv2 training).
    #[serde(default = "default_layerscale")]
    pub layerscale_init: f64,
    /// Position-embedding interpolation.
    #[serde(default = "default_interpolation")]
    pub interpolation: PosInterpolation,
}

fn default_eps() -> f64 {
    1e-6
}
fn default_layerscale() -> f64 {
    1e-5
}
fn default_interpolation() -> PosInterpolation {
    PosInterpolation::OFFICIAL
}

/// The official SwiGLU hidden width for an MLP width `hidden` (`SwiGLUFFNFused`).
pub fn swiglu_hidden(hidden: usize) -> usize {
    (hidden * 2 / 3 + 7) / 8 * 8
}

impl VitConfig {
    /// A preset by name (see [`PRESET_NAMES`]).
    pub fn preset(name: &str) -> Result<Self> {
        // (name, embed_dim, depth, heads, swiglu)
        const TABLE: &[(&str, usize, usize, usize, bool)] = &[
            ("vits14", 384, 12, 6, false),
            ("vitb14", 768, 12, 12, false),
            ("vitl14", 1024, 24, 16, false),
            ("vitg14", 1536, 40, 24, true),
        ];
        if name == "tiny" {
            return Ok(Self::tiny());
        }
        let (base, registers) = match name.strip_suffix("_reg4") {
            Some(base) => (base, 4),
            None => (name, 0),
        };
        let &(_, embed_dim, depth, num_heads, swiglu) =
            TABLE.iter().find(|row| row.0 == base).ok_or_else(|| {
                Error::Usage(format!("unknown preset `{name}`: expected one of {}", PRESET_NAMES.join(", ")))
            })?;
        let mlp_hidden = 4 * embed_dim;
        Ok(Self {
            embed_dim,
            depth,
            num_heads,
            ffn: if swiglu { FfnKind::Swiglu } else { FfnKind::Mlp },
            ffn_hidden: if swiglu { swiglu_hidden(mlp_hidden) } else { mlp_hidden },
            patch_size: 14,
            pos_grid: 37,
            num_register_tokens: registers,
            layer_norm_eps: 1e-6,
            layerscale_init: 1e-5,
            interpolation: if registers > 0 {
                PosInterpolation::ANTIALIAS
            } else {
                PosInterpolation::OFFICIAL
            },
        })
    }

    /// The project's small preset: trains on a CPU or a software adapter in minutes. Head
    /// width 64 like every official model (one attention kernel for all): 256 wide, 4 heads,
    /// 4 blocks, patch 14 as the official models (Fashion-MNIST's 28 px: a 2 x 2 grid, 5 tokens),
    /// and a 2 x 2 position grid (28 px) interpolated for larger inputs. Patch 14 against 7 on
    /// 28 px images, measured on 2 CPU cores (BENCHMARKS.md, "Patch 14"): 3.4 times the images
    /// per second, and in the same 12 minutes a k-NN top-1 of 86.0% against 77.2%; smaller
    /// patches only lost at equal minutes.
    /// LayerScale starts at 0.1, not DINOv2's 1e-5: with 4 blocks there is no depth to
    /// stabilise, and at 1e-5 the CLS features of all images start out equal, so Sinkhorn-Knopp
    /// hands the student uniform targets and a short run learns nothing (measured: the DINO
    /// loss stayed at log K for 300 steps; at 0.1 it fell from the first epoch).
    pub fn tiny() -> Self {
        Self {
            embed_dim: 256,
            depth: 4,
            num_heads: 4,
            ffn: FfnKind::Mlp,
            ffn_hidden: 4 * 256,
            patch_size: 14,
            pos_grid: 2,
            num_register_tokens: 0,
            layer_norm_eps: 1e-6,
            layerscale_init: 0.1,
            interpolation: PosInterpolation::SIZE,
        }
    }

    /// Head width.
    pub fn head_dim(&self) -> usize {
        self.embed_dim / self.num_heads
    }

    /// Read a config from a JSON file.
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let config: Self =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        config.check().map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(config)
    }

    /// Check the numbers fit together.
    pub fn validate(&self) -> Result<()> {
        self.check().map_err(Error::Config)
    }

    /// [`Self::validate`] with a plain message, for callers that add where the config came from.
    pub fn check(&self) -> Result<(), String> {
        let bad = |msg: String| Err(msg);
        if self.embed_dim == 0 || self.depth == 0 || self.num_heads == 0 || self.ffn_hidden == 0 {
            return bad("embed_dim, depth, num_heads and ffn_hidden must be positive".into());
        }
        if self.embed_dim % self.num_heads != 0 {
            return bad(format!(
                "embed_dim {} is not a multiple of num_heads {}",
                self.embed_dim, self.num_heads
            ));
        }
        if self.patch_size == 0 || self.pos_grid == 0 {
            return bad("patch_size and pos_grid must be positive".into());
        }
        // Far beyond any real model; keeps a corrupt file from asking for absurd allocations.
        let limits = [
            ("embed_dim", self.embed_dim, 1 << 15),
            ("depth", self.depth, 1024),
            ("ffn_hidden", self.ffn_hidden, 1 << 17),
            ("patch_size", self.patch_size, 1024),
            ("pos_grid", self.pos_grid, 4096),
            ("num_register_tokens", self.num_register_tokens, 4096),
        ];
        for (name, value, max) in limits {
            if value > max {
                return bad(format!("{name} {value} exceeds {max}"));
            }
        }
        Ok(())
    }

    /// Parameters of the backbone (no heads).
    pub fn num_params(&self) -> usize {
        let d = self.embed_dim;
        let ffn = match self.ffn {
            FfnKind::Mlp => 2 * d * self.ffn_hidden + self.ffn_hidden + d,
            FfnKind::Swiglu => 3 * d * self.ffn_hidden + 2 * self.ffn_hidden + d,
        };
        let block = 4 * d /* norms */ + 3 * d * d + 3 * d + d * d + d + 2 * d /* layerscale */ + ffn;
        let embed = 3 * self.patch_size * self.patch_size * d + d;
        let tokens = d * (1 + self.pos_grid * self.pos_grid + 1 + self.num_register_tokens + 1);
        embed + tokens + self.depth * block + 2 * d
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn official_swiglu_width_matches_the_python_formula() {
        // (int(h * 2 / 3) + 7) // 8 * 8, evaluated by hand for a few widths
        for (hidden, want) in [(6144, 4096), (256, 176), (1000, 672), (12, 8)] {
            assert_eq!(swiglu_hidden(hidden), want, "hidden {hidden}");
        }
    }

    #[test]
    fn presets_have_head_dim_64_and_known_sizes() {
        for name in PRESET_NAMES {
            let c = VitConfig::preset(name).unwrap();
            assert_eq!(c.head_dim(), 64, "{name}");
            c.validate().unwrap();
        }
        let g = VitConfig::preset("vitg14").unwrap();
        assert_eq!((g.embed_dim, g.depth, g.num_heads, g.ffn_hidden), (1536, 40, 24, 4096));
        // Published sizes: ViT-S/14 21M, ViT-B/14 86M, ViT-L/14 300M, ViT-g/14 1.1B.
        let millions = |n: &str| VitConfig::preset(n).unwrap().num_params() as f64 / 1e6;
        assert!((21.0..23.0).contains(&millions("vits14")));
        assert!((86.0..88.0).contains(&millions("vitb14")));
        assert!((303.0..306.0).contains(&millions("vitl14")));
        assert!((1130.0..1140.0).contains(&millions("vitg14")));
        assert_eq!(VitConfig::preset("vitb14_reg4").unwrap().num_register_tokens, 4);
        assert!(VitConfig::preset("vit_huge").is_err());
    }
}
