//! Bad checkpoints are errors that name the file and the tensor, never panics: truncated
//! files, another architecture, missing / unexpected / mis-shaped tensors.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use dinov2_wgpu::checkpoint::{LoadOptions, TensorSource, read_backbone};

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("dinov2-ckpt-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn error_of(path: &Path, options: LoadOptions) -> String {
    match read_backbone(path, &options) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e.to_string(),
    }
}

/// Rewrite `plain.pth` as an official-layout safetensors file after `edit`.
fn rewritten(name: &str, edit: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) -> PathBuf {
    let source = TensorSource::open(&fixtures().join("plain.pth")).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = source
        .shapes()
        .iter()
        .map(|(k, s)| (k.clone(), s.clone(), source.read_f32(k).unwrap()))
        .collect();
    edit(&mut tensors);
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(k, s, d)| (k.as_str(), s.clone(), d.as_slice()))
        .collect();
    let bytes = dinov2_wgpu::io::safetensors_bytes(&refs, None).unwrap();
    let path = scratch(name).join("model.safetensors");
    std::fs::write(&path, bytes).unwrap();
    path
}

#[test]
fn rewritten_checkpoint_loads() {
    // the control for the edits below: an unedited rewrite is accepted
    let path = rewritten("control", |_| {});
    read_backbone(&path, &LoadOptions::default()).unwrap();
}

#[test]
fn truncated_pth() {
    let bytes = std::fs::read(fixtures().join("plain.pth")).unwrap();
    let path = scratch("trunc-pth").join("model.pth");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = error_of(&path, LoadOptions::default());
    assert!(
        e.contains("model.pth") && e.contains("not a readable PyTorch checkpoint"),
        "{e}"
    );
}

#[test]
fn truncated_safetensors() {
    let bytes = std::fs::read(fixtures().join("plain-hf/model.safetensors")).unwrap();
    let path = scratch("trunc-st").join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let e = error_of(&path, LoadOptions::default());
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );
}

#[test]
fn another_architecture() {
    let options = LoadOptions {
        arch: Some("vits14".into()),
        ..Default::default()
    };
    let e = error_of(&fixtures().join("plain.pth"), options);
    assert!(
        e.contains("`cls_token` has shape [1, 1, 128]") && e.contains("expects [1, 1, 384]"),
        "{e}"
    );
    assert!(e.contains("--arch vits14"), "{e}");
}

#[test]
fn missing_tensor() {
    let path = rewritten("missing", |t| {
        t.retain(|(k, _, _)| k != "blocks.1.ls2.gamma")
    });
    let e = error_of(&path, LoadOptions::default());
    assert!(
        e.contains("missing tensor `blocks.1.ls2.gamma` (expected shape [128])"),
        "{e}"
    );
}

#[test]
fn unexpected_tensor() {
    let path = rewritten("unexpected", |t| {
        t.push(("blocks.0.attn.extra".into(), vec![2], vec![0.0, 1.0]))
    });
    let e = error_of(&path, LoadOptions::default());
    assert!(
        e.contains("unexpected tensor `blocks.0.attn.extra` with shape [2]"),
        "{e}"
    );
}

#[test]
fn misshaped_tensor() {
    let path = rewritten("misshaped", |t| {
        let entry = t
            .iter_mut()
            .find(|(k, _, _)| k == "blocks.0.norm2.bias")
            .unwrap();
        entry.1 = vec![64];
        entry.2.truncate(64);
    });
    let e = error_of(&path, LoadOptions::default());
    assert!(
        e.contains(
            "tensor `blocks.0.norm2.bias` has shape [64] in the checkpoint, the model expects [128]"
        ),
        "{e}"
    );
}

#[test]
fn hf_folder_names_hf_keys() {
    // A HuggingFace checkpoint with one tensor removed names the HuggingFace key.
    let dir = scratch("hf-missing");
    std::fs::copy(
        fixtures().join("plain-hf/config.json"),
        dir.join("config.json"),
    )
    .unwrap();
    let source = TensorSource::open(&fixtures().join("plain-hf/model.safetensors")).unwrap();
    let tensors: Vec<(String, Vec<usize>, Vec<f32>)> = source
        .shapes()
        .iter()
        .filter(|(k, _)| k.as_str() != "encoder.layer.0.attention.attention.key.weight")
        .map(|(k, s)| (k.clone(), s.clone(), source.read_f32(k).unwrap()))
        .collect();
    let refs: Vec<(&str, Vec<usize>, &[f32])> = tensors
        .iter()
        .map(|(k, s, d)| (k.as_str(), s.clone(), d.as_slice()))
        .collect();
    std::fs::write(
        dir.join("model.safetensors"),
        dinov2_wgpu::io::safetensors_bytes(&refs, None).unwrap(),
    )
    .unwrap();
    let e = error_of(&dir, LoadOptions::default());
    assert!(e.contains("missing tensor `encoder.layer.0.attention.attention.key.weight` (expected shape [128, 128])"), "{e}");
}

#[test]
fn not_a_checkpoint() {
    let path = scratch("garbage").join("x.pth");
    std::fs::write(&path, b"this is not a checkpoint at all").unwrap();
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("x.pth"), "{e}");
}
