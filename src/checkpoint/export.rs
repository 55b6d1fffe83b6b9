//! Writing a backbone in the official DINOv2 key layout (`blocks.N.attn.qkv.weight` as
//! PyTorch `[out, in]`, ...), with its architecture in the safetensors metadata, so every
//! command that reads weights (and the official code, key for key) can load it.

use std::path::Path;

use crate::error::{Error, Result};
use crate::model::DinoVisionTransformer;
use crate::train::params::named_params;

pub use super::CONFIG_METADATA;

/// The official name of a burn parameter name, and whether its matrix is transposed
/// (burn's `Linear` keeps `[in, out]`).
fn official_name(name: &str, swiglu: bool) -> (String, bool) {
    let mut parts: Vec<&str> = name.split('.').collect();
    let leaf = parts.pop().unwrap_or_default();
    let parent = parts.last().copied().unwrap_or_default();
    let prefix = if parts.is_empty() { String::new() } else { format!("{}.", parts.join(".")) };
    match (parent, leaf) {
        ("patch_embed", "weight" | "bias") => (format!("patch_embed.proj.{leaf}"), false),
        (_, "gamma") => (format!("{prefix}weight"), false),
        (_, "beta") => (format!("{prefix}bias"), false),
        (_, "ls1" | "ls2") => (format!("{prefix}{leaf}.gamma"), false),
        ("fc1" | "fc2", _) if swiglu => {
            let renamed = prefix.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.");
            (format!("{renamed}{leaf}"), leaf == "weight")
        }
        ("qkv" | "proj" | "fc1" | "fc2", "weight") => (name.to_string(), true),
        _ => (name.to_string(), false),
    }
}

/// Write `model` to `path` atomically in the official layout, f32.
pub fn write_backbone(model: &DinoVisionTransformer, path: &Path) -> Result<()> {
    let swiglu = model.config.ffn == crate::config::FfnKind::Swiglu;
    let mut tensors = Vec::new();
    for (name, host) in named_params(model)? {
        let (official, transpose) = official_name(&name, swiglu);
        let (shape, data) = if transpose && host.shape.len() == 2 {
            let (rows, cols) = (host.shape[0], host.shape[1]);
            let mut t = vec![0.0f32; host.data.len()];
            for r in 0..rows {
                for c in 0..cols {
                    t[c * rows + r] = host.data[r * cols + c];
                }
            }
            (vec![cols, rows], t)
        } else {
            (host.shape, host.data)
        };
        tensors.push((official, shape, data));
    }
    let mut metadata = std::collections::HashMap::new();
    metadata.insert(
        CONFIG_METADATA.to_string(),
        serde_json::to_string(&model.config).map_err(|e| Error::Config(e.to_string()))?,
    );
    let list: Vec<(&str, Vec<usize>, &[f32])> =
        tensors.iter().map(|(k, s, d)| (k.as_str(), s.clone(), d.as_slice())).collect();
    let bytes = crate::io::safetensors_bytes(&list, Some(metadata))?;
    crate::io::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::official_name;

    #[test]
    fn burn_names_map_to_official_ones() {
        let cases = [
            ("patch_embed.weight", "patch_embed.proj.weight", false),
            ("blocks.3.norm1.gamma", "blocks.3.norm1.weight", false),
            ("blocks.3.norm1.beta", "blocks.3.norm1.bias", false),
            ("blocks.3.ls2", "blocks.3.ls2.gamma", false),
            ("blocks.3.attn.qkv.weight", "blocks.3.attn.qkv.weight", true),
            ("blocks.3.attn.qkv.bias", "blocks.3.attn.qkv.bias", false),
            ("blocks.0.mlp.fc2.weight", "blocks.0.mlp.fc2.weight", true),
            ("norm.gamma", "norm.weight", false),
            ("cls_token", "cls_token", false),
        ];
        for (burn, official, transposed) in cases {
            assert_eq!(official_name(burn, false), (official.to_string(), transposed), "{burn}");
        }
        assert_eq!(official_name("blocks.1.mlp.fc1.weight", true), ("blocks.1.mlp.w12.weight".into(), true));
        assert_eq!(official_name("blocks.1.mlp.fc2.bias", true), ("blocks.1.mlp.w3.bias".into(), false));
    }
}
