//! Backbone weights from local files, with no network: official DINOv2 `.pth` state dicts,
//! HuggingFace folders (`config.json` + `model.safetensors` or `pytorch_model.bin`), and
//! safetensors files in either key layout.
//!
//! Loading is planned before anything is read: every tensor the architecture needs is mapped
//! to the file's key(s) and checked by shape, so a missing, unexpected or mis-shaped tensor is
//! an error naming the key and both shapes, and a checkpoint for another architecture never
//! gets half-loaded.

#[cfg(feature = "native")]
pub mod export;
mod source;

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

pub use source::TensorSource;

/// The safetensors metadata key holding the architecture (JSON of [`VitConfig`]) in the
/// checkpoints this project writes (`export::write_backbone`).
pub const CONFIG_METADATA: &str = "dinov2_wgpu_config";

use crate::config::{FfnKind, PosInterpolation, VitConfig};
use crate::error::{Error, Result};

/// Where a checkpoint came from; decides the default position-embedding interpolation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointKind {
    /// The official DINOv2 state dict layout (`blocks.N.attn.qkv.weight`, ...).
    Official,
    /// HuggingFace `Dinov2Model` / `Dinov2WithRegistersModel` (`encoder.layer.N...`).
    HuggingFace,
}

/// What the user said about the architecture; everything else is read from the checkpoint.
#[derive(Clone, Debug, Default)]
pub struct LoadOptions {
    /// A preset name (`--arch`).
    pub arch: Option<String>,
    /// A full config (`--config`). It describes the architecture; the interpolation still
    /// comes from the checkpoint kind unless `interpolation` is set.
    pub config: Option<VitConfig>,
    /// Position-embedding interpolation override (`--interpolation`).
    pub interpolation: Option<PosInterpolation>,
}

/// A validated plan: the config, and for each tensor the model needs (official name, PyTorch
/// layout) the file keys whose rows, concatenated, make it.
pub struct BackboneWeights {
    /// The architecture, with the interpolation chosen for this checkpoint.
    pub config: VitConfig,
    /// Where it came from.
    pub kind: CheckpointKind,
    source: TensorSource,
    recipes: BTreeMap<String, (Vec<usize>, Vec<String>)>,
}

impl BackboneWeights {
    /// Whether the checkpoint provides `key` (official name).
    pub fn contains(&self, key: &str) -> bool {
        self.recipes.contains_key(key)
    }

    /// The tensor `key` (official name) as f32 with its PyTorch shape.
    pub fn tensor(&self, key: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        let (shape, sources) = self
            .recipes
            .get(key)
            .ok_or_else(|| Error::checkpoint(self.source.path(), format!("no tensor for `{key}`")))?;
        let mut data = Vec::with_capacity(shape.iter().product());
        for src in sources {
            data.extend(self.source.read_f32(src)?);
        }
        if data.len() != shape.iter().product::<usize>() {
            return Err(Error::checkpoint(
                self.source.path(),
                format!("tensor `{key}`: data length does not match its shape"),
            ));
        }
        Ok((shape.clone(), data))
    }

    /// The checkpoint file read.
    pub fn path(&self) -> &Path {
        self.source.path()
    }
}

/// Read and validate a backbone checkpoint (file or HuggingFace folder).
pub fn read_backbone(path: &Path, options: &LoadOptions) -> Result<BackboneWeights> {
    let (file, hf_config) = resolve_files(path)?;
    let source = TensorSource::open(&file)?;
    from_source(path, source, hf_config, options)
}

/// [`read_backbone`] of a safetensors checkpoint held in memory (official or this project's
/// layout, or HuggingFace's `model.safetensors`); `name` stands for its file in errors.
pub fn read_backbone_bytes(name: &str, bytes: Vec<u8>, options: &LoadOptions) -> Result<BackboneWeights> {
    let path = Path::new(name);
    let source = TensorSource::from_safetensors_bytes(path, bytes)?;
    from_source(path, source, None, options)
}

fn from_source(
    path: &Path,
    source: TensorSource,
    hf_config: Option<serde_json::Value>,
    options: &LoadOptions,
) -> Result<BackboneWeights> {
    let file = source.path().to_path_buf();
    let (layout, prefix) = detect_layout(&source)?;

    let kind = match layout {
        Layout::HuggingFace => CheckpointKind::HuggingFace,
        Layout::Official => CheckpointKind::Official,
    };
    let view = KeyView::new(&source, layout, &prefix);
    let saved_config = source
        .metadata(CONFIG_METADATA)
        .map(|text| {
            let config: VitConfig = serde_json::from_str(text)
                .map_err(|e| Error::checkpoint(&file, format!("architecture metadata: {e}")))?;
            config.check().map_err(|e| Error::checkpoint(&file, format!("architecture metadata: {e}")))?;
            Ok::<_, Error>(config)
        })
        .transpose()?;
    let mut config = if let Some(config) = &options.config {
        config.clone()
    } else if let (Some(config), None) = (&saved_config, &options.arch) {
        config.clone()
    } else if let Some(name) = &options.arch {
        VitConfig::preset(name)?
    } else {
        let mut config = infer_config(&view).map_err(|m| Error::checkpoint(&file, m))?;
        if let Some(hf) = &hf_config {
            apply_hf_config(&mut config, hf).map_err(|m| Error::checkpoint(&path.join("config.json"), m))?;
        }
        if config.num_heads == 0 {
            let message = format!(
                "width {} is not a multiple of the head width 64; pass --arch or --config",
                config.embed_dim
            );
            return Err(Error::checkpoint(&file, message));
        }
        config.check().map_err(|e| Error::checkpoint(&file, format!("inferred architecture: {e}")))?;
        config
    };
    config.interpolation = match (options.interpolation, kind) {
        (Some(interp), _) => interp,
        (None, _) if saved_config.is_some() && options.arch.is_none() && options.config.is_none() => {
            config.interpolation
        }
        (None, CheckpointKind::Official) if config.num_register_tokens > 0 => PosInterpolation::ANTIALIAS,
        (None, CheckpointKind::Official) => PosInterpolation::OFFICIAL,
        (None, CheckpointKind::HuggingFace) => {
            let registers = hf_config
                .as_ref()
                .and_then(|c| c.get("model_type"))
                .and_then(|t| t.as_str())
                .map(|t| t == "dinov2_with_registers")
                .unwrap_or(config.num_register_tokens > 0);
            if registers { PosInterpolation::ANTIALIAS } else { PosInterpolation::SIZE }
        }
    };

    let recipes = plan(&config, &view).map_err(|m| {
        let what = options.arch.as_deref().map(|a| format!(" (for --arch {a})")).unwrap_or_default();
        Error::checkpoint(&file, format!("{m}{what}"))
    })?;
    Ok(BackboneWeights { config, kind, source, recipes })
}

/// A folder is a HuggingFace model: its weights file and its parsed `config.json`.
fn resolve_files(path: &Path) -> Result<(PathBuf, Option<serde_json::Value>)> {
    if !path.is_dir() {
        if !path.exists() {
            return Err(Error::checkpoint(path, "no such file or folder"));
        }
        return Ok((path.to_path_buf(), None));
    }
    let config_path = path.join("config.json");
    let text = std::fs::read_to_string(&config_path).map_err(|e| Error::io(&config_path, e))?;
    let config: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::checkpoint(&config_path, format!("invalid JSON: {e}")))?;
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let file = path.join(name);
        if file.is_file() {
            return Ok((file, Some(config)));
        }
    }
    Err(Error::checkpoint(path, "folder has neither model.safetensors nor pytorch_model.bin"))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Layout {
    Official,
    HuggingFace,
}

/// Find the key layout and the prefix under which the backbone lives (`""`, `"dinov2."`,
/// `"teacher.backbone."`, ...). With several backbones (a training checkpoint holds student and
/// teacher), the teacher is the released model.
fn detect_layout(source: &TensorSource) -> Result<(Layout, String)> {
    let mut found: Vec<(Layout, String)> = source
        .shapes()
        .keys()
        .filter_map(|k| {
            if let Some(p) = k.strip_suffix("embeddings.cls_token") {
                Some((Layout::HuggingFace, p.to_string()))
            } else {
                k.strip_suffix("cls_token").map(|p| (Layout::Official, p.to_string()))
            }
        })
        .collect();
    found.sort_by_key(|(_, p)| (!p.contains("teacher"), p.len()));
    found.into_iter().next().ok_or_else(|| {
        Error::checkpoint(
            source.path(),
            "no `cls_token` tensor: not a DINOv2 backbone checkpoint (official or HuggingFace layout)",
        )
    })
}

/// The file's keys under the backbone prefix, with official training checkpoints' block chunks
/// (`blocks.C.N.`) flattened to `blocks.N.`.
struct KeyView<'a> {
    source: &'a TensorSource,
    layout: Layout,
    /// local name -> file key
    keys: BTreeMap<String, String>,
}

impl<'a> KeyView<'a> {
    fn new(source: &'a TensorSource, layout: Layout, prefix: &str) -> Self {
        let mut keys = BTreeMap::new();
        for key in source.shapes().keys() {
            let Some(local) = key.strip_prefix(prefix) else {
                continue;
            };
            let local = match layout {
                Layout::Official => unchunk(local),
                Layout::HuggingFace => local.to_string(),
            };
            keys.insert(local, key.clone());
        }
        Self { source, layout, keys }
    }

    fn shape(&self, local: &str) -> Option<&[usize]> {
        self.keys.get(local).and_then(|k| self.source.shape(k))
    }

    fn depth(&self) -> usize {
        let prefix = match self.layout {
            Layout::Official => "blocks.",
            Layout::HuggingFace => "encoder.layer.",
        };
        self.keys
            .keys()
            .filter_map(|k| k.strip_prefix(prefix)?.split('.').next()?.parse::<usize>().ok())
            .map(|i| i + 1)
            .max()
            .unwrap_or(0)
    }
}

/// `blocks.2.7.attn...` -> `blocks.7.attn...` (official FSDP block chunks).
fn unchunk(key: &str) -> String {
    let parts: Vec<&str> = key.splitn(4, '.').collect();
    if parts.len() == 4
        && parts[0] == "blocks"
        && parts[1].parse::<usize>().is_ok()
        && parts[2].parse::<usize>().is_ok()
    {
        format!("blocks.{}.{}", parts[2], parts[3])
    } else {
        key.to_string()
    }
}

/// What `config.json` adds to the shapes: the head count, the LayerNorm epsilon, and checks
/// that the model is one this engine computes.
fn apply_hf_config(config: &mut VitConfig, hf: &serde_json::Value) -> Result<(), String> {
    let swiglu = hf.get("use_swiglu_ffn").and_then(|v| v.as_bool()).unwrap_or(false);
    if let Some(act) = hf.get("hidden_act").and_then(|v| v.as_str())
        && !swiglu
        && act != "gelu"
    {
        return Err(format!("hidden_act `{act}` is not supported (only gelu)"));
    }
    if hf.get("qkv_bias").and_then(|v| v.as_bool()) == Some(false) {
        return Err("qkv_bias false is not supported".into());
    }
    if let Some(heads) = hf.get("num_attention_heads") {
        config.num_heads = heads
            .as_u64()
            .filter(|&h| h > 0)
            .ok_or(format!("num_attention_heads {heads} is not a positive integer"))?
            as usize;
    }
    if let Some(eps) = hf.get("layer_norm_eps").and_then(|v| v.as_f64()) {
        config.layer_norm_eps = eps;
    }
    Ok(())
}

/// Architecture from tensor shapes, head width 64 as in every official model.
fn infer_config(view: &KeyView) -> Result<VitConfig, String> {
    let (cls, pos, patch, mlp_fc1, w12, regs) = match view.layout {
        Layout::Official => (
            "cls_token",
            "pos_embed",
            "patch_embed.proj.weight",
            "blocks.0.mlp.fc1.weight",
            "blocks.0.mlp.w12.weight",
            "register_tokens",
        ),
        Layout::HuggingFace => (
            "embeddings.cls_token",
            "embeddings.position_embeddings",
            "embeddings.patch_embeddings.projection.weight",
            "encoder.layer.0.mlp.fc1.weight",
            "encoder.layer.0.mlp.weights_in.weight",
            "embeddings.register_tokens",
        ),
    };
    let need = |k: &str| view.shape(k).ok_or(format!("missing tensor `{k}`"));
    let axis = |k: &str, i: usize| -> Result<usize, String> {
        need(k)?.get(i).copied().ok_or(format!("tensor `{k}` has too few axes"))
    };
    let embed_dim = axis(cls, 2)?;
    let positions = axis(pos, 1)?.saturating_sub(1);
    let pos_grid = (positions as f64).sqrt().round() as usize;
    if pos_grid * pos_grid != positions {
        return Err(format!("position embedding holds {positions} patch positions, not a square grid"));
    }
    let patch_size = axis(patch, 2)?;
    let gate = "encoder.layer.0.mlp.gate_proj.weight";
    let (ffn, ffn_hidden) = if view.shape(mlp_fc1).is_some() {
        (FfnKind::Mlp, axis(mlp_fc1, 0)?)
    } else if view.shape(w12).is_some() {
        (FfnKind::Swiglu, axis(w12, 0)? / 2)
    } else if view.shape(gate).is_some() {
        (FfnKind::Swiglu, axis(gate, 0)?)
    } else {
        return Err(format!("missing tensor `{mlp_fc1}` (or a SwiGLU `{w12}`)"));
    };
    Ok(VitConfig {
        embed_dim,
        depth: view.depth(),
        // head width 64, as in every official model; 0 (refused by `check`) when impossible
        num_heads: if embed_dim % 64 == 0 { embed_dim / 64 } else { 0 },
        ffn,
        ffn_hidden,
        patch_size,
        pos_grid,
        num_register_tokens: if view.shape(regs).is_some() { axis(regs, 1)? } else { 0 },
        layer_norm_eps: 1e-6,
        layerscale_init: 1e-5,
        interpolation: PosInterpolation::OFFICIAL,
    })
}

/// Every tensor of the backbone: official name and PyTorch shape. `mask_token` is optional
/// (not needed for features; zeros when absent).
pub fn official_shapes(c: &VitConfig) -> Vec<(String, Vec<usize>)> {
    let (d, h, p) = (c.embed_dim, c.ffn_hidden, c.patch_size);
    let mut out: Vec<(String, Vec<usize>)> = vec![
        ("cls_token".into(), vec![1, 1, d]),
        ("pos_embed".into(), vec![1, 1 + c.pos_grid * c.pos_grid, d]),
        ("mask_token".into(), vec![1, d]),
        ("patch_embed.proj.weight".into(), vec![d, 3, p, p]),
        ("patch_embed.proj.bias".into(), vec![d]),
    ];
    if c.num_register_tokens > 0 {
        out.push(("register_tokens".into(), vec![1, c.num_register_tokens, d]));
    }
    for i in 0..c.depth {
        let b = format!("blocks.{i}.");
        let mut add = |k: &str, s: Vec<usize>| out.push((format!("{b}{k}"), s));
        for norm in ["norm1", "norm2"] {
            add(&format!("{norm}.weight"), vec![d]);
            add(&format!("{norm}.bias"), vec![d]);
        }
        add("attn.qkv.weight", vec![3 * d, d]);
        add("attn.qkv.bias", vec![3 * d]);
        add("attn.proj.weight", vec![d, d]);
        add("attn.proj.bias", vec![d]);
        add("ls1.gamma", vec![d]);
        add("ls2.gamma", vec![d]);
        match c.ffn {
            FfnKind::Mlp => {
                add("mlp.fc1.weight", vec![h, d]);
                add("mlp.fc1.bias", vec![h]);
                add("mlp.fc2.weight", vec![d, h]);
                add("mlp.fc2.bias", vec![d]);
            }
            FfnKind::Swiglu => {
                add("mlp.w12.weight", vec![2 * h, d]);
                add("mlp.w12.bias", vec![2 * h]);
                add("mlp.w3.weight", vec![d, h]);
                add("mlp.w3.bias", vec![d]);
            }
        }
    }
    out.push(("norm.weight".into(), vec![d]));
    out.push(("norm.bias".into(), vec![d]));
    out
}

/// The HuggingFace key(s) for an official name: alternatives, each a list of keys whose rows
/// concatenate to the tensor. The saved (legacy) names come first; transformers 5 in-memory
/// names second.
fn hf_alternatives(official: &str) -> Vec<Vec<String>> {
    let one = |k: &str| vec![vec![k.to_string()]];
    match official {
        "cls_token" => return one("embeddings.cls_token"),
        "mask_token" => return one("embeddings.mask_token"),
        "pos_embed" => return one("embeddings.position_embeddings"),
        "register_tokens" => return one("embeddings.register_tokens"),
        "norm.weight" => return one("layernorm.weight"),
        "norm.bias" => return one("layernorm.bias"),
        _ => {}
    }
    if let Some(t) = official.strip_prefix("patch_embed.proj.") {
        return one(&format!("embeddings.patch_embeddings.projection.{t}"));
    }
    let rest = official.strip_prefix("blocks.").expect("official block key");
    let (i, key) = rest.split_once('.').expect("block index");
    let l = format!("encoder.layer.{i}.");
    let many = |names: &[&str], t: &str| names.iter().map(|n| format!("{l}{n}.{t}")).collect::<Vec<_>>();
    let (base, t) = key.rsplit_once('.').expect("param name");
    match base {
        "attn.qkv" => vec![
            many(&["attention.attention.query", "attention.attention.key", "attention.attention.value"], t),
            many(&["attention.q_proj", "attention.k_proj", "attention.v_proj"], t),
        ],
        "attn.proj" => vec![many(&["attention.output.dense"], t), many(&["attention.o_proj"], t)],
        "ls1" => vec![many(&["layer_scale1"], "lambda1")],
        "ls2" => vec![many(&["layer_scale2"], "lambda1")],
        "mlp.w12" => vec![many(&["mlp.weights_in"], t), many(&["mlp.gate_proj", "mlp.up_proj"], t)],
        "mlp.w3" => vec![many(&["mlp.weights_out"], t), many(&["mlp.down_proj"], t)],
        other => vec![many(&[other], t)], // norm1, norm2, mlp.fc1, mlp.fc2
    }
}

fn fmt_shape(s: &[usize]) -> String {
    format!("{s:?}")
}

/// Map every needed tensor to file keys and check every shape; then nothing is left over.
fn plan(config: &VitConfig, view: &KeyView) -> Result<BTreeMap<String, (Vec<usize>, Vec<String>)>, String> {
    let mut recipes = BTreeMap::new();
    let mut used = BTreeSet::new();
    let mut problems = Vec::new();
    for (name, shape) in official_shapes(config) {
        let alternatives = match view.layout {
            Layout::Official => vec![vec![name.clone()]],
            Layout::HuggingFace => hf_alternatives(&name),
        };
        let chosen =
            alternatives.iter().find(|alt| view.shape(&alt[0]).is_some()).unwrap_or(&alternatives[0]);
        let parts = chosen.len();
        let mut part_shape = shape.clone();
        part_shape[0] /= parts;
        let mut file_keys = Vec::new();
        let mut ok = true;
        for local in chosen {
            match view.shape(local) {
                None if name == "mask_token" => ok = false,
                None => {
                    problems.push(format!(
                        "missing tensor `{local}` (expected shape {})",
                        fmt_shape(&part_shape)
                    ));
                    ok = false;
                }
                Some(actual) if actual != part_shape.as_slice() => {
                    problems.push(format!(
                        "tensor `{local}` has shape {} in the checkpoint, the model expects {}",
                        fmt_shape(actual),
                        fmt_shape(&part_shape)
                    ));
                    used.insert(local.clone());
                    ok = false;
                }
                Some(_) => {
                    used.insert(local.clone());
                    file_keys.push(view.keys[local].clone());
                }
            }
        }
        if ok {
            recipes.insert(name, (shape, file_keys));
        }
    }
    for (local, _) in view.keys.iter().filter(|(k, _)| !used.contains(*k)) {
        let shape = view.shape(local).unwrap_or(&[]);
        problems.push(format!("unexpected tensor `{local}` with shape {}", fmt_shape(shape)));
    }
    match problems.len() {
        0 => Ok(recipes),
        1 => Err(problems.remove(0)),
        n => Err(format!("{} (and {} more problems)", problems[0], n - 1)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_chunks_are_flattened() {
        assert_eq!(unchunk("blocks.1.7.attn.qkv.weight"), "blocks.7.attn.qkv.weight");
        assert_eq!(unchunk("blocks.7.attn.qkv.weight"), "blocks.7.attn.qkv.weight");
        assert_eq!(unchunk("blocks.7.ls1.gamma"), "blocks.7.ls1.gamma");
    }

    #[test]
    fn hf_names() {
        assert_eq!(
            hf_alternatives("blocks.3.attn.qkv.bias")[0][1],
            "encoder.layer.3.attention.attention.key.bias"
        );
        assert_eq!(hf_alternatives("blocks.0.norm2.weight")[0][0], "encoder.layer.0.norm2.weight");
    }
}
