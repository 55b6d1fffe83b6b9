//! Checkpoint loading beyond the parity fixtures' own files — FSDP block chunks under a
//! `teacher.backbone.` prefix, transformers-5 key names without config.json, f16 weights — and
//! bad checkpoints, which are errors naming the file and the tensor, never panics.

use std::path::{Path, PathBuf};

use crate::common::*;
use dinov2_wgpu::checkpoint::{BackboneWeights, LoadOptions, TensorSource, official_shapes, read_backbone};

type Tensors = Vec<(String, Vec<usize>, Vec<f32>)>;

fn all_tensors(path: &Path) -> Tensors {
    let source = TensorSource::open(path).unwrap();
    source.shapes().iter().map(|(k, s)| (k.clone(), s.clone(), source.read_f32(k).unwrap())).collect()
}

fn write_f32(path: &Path, tensors: &Tensors) {
    let refs: Vec<(&str, Vec<usize>, &[f32])> =
        tensors.iter().map(|(k, s, d)| (k.as_str(), s.clone(), d.as_slice())).collect();
    std::fs::write(path, dinov2_wgpu::io::safetensors_bytes(&refs, None).unwrap()).unwrap();
}

fn load(path: &Path) -> BackboneWeights {
    read_backbone(path, &LoadOptions::default()).unwrap_or_else(|e| panic!("{e}"))
}

/// Every tensor the model needs is the same in `a` and `b` (within `tol`).
fn assert_same_weights(a: &BackboneWeights, b: &BackboneWeights, tol: f32) {
    assert_eq!(a.config.embed_dim, b.config.embed_dim);
    assert_eq!(
        (a.config.depth, a.config.ffn, a.config.ffn_hidden),
        (b.config.depth, b.config.ffn, b.config.ffn_hidden)
    );
    for (key, _) in official_shapes(&a.config) {
        let (sa, da) = a.tensor(&key).unwrap();
        let (sb, db) = b.tensor(&key).unwrap();
        assert_eq!(sa, sb, "{key}");
        let err = max_abs_diff(&da, &db);
        assert!(err <= tol, "{key}: max abs difference {err}");
    }
}

fn error_of(path: &Path, options: LoadOptions) -> String {
    match read_backbone(path, &options) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn fsdp_chunks_under_a_teacher_prefix() {
    // The layout of an official training checkpoint: student and teacher, blocks in chunks
    // (`blocks.C.N.`), heads beside the backbones. The teacher's backbone is what loads.
    let dir = Scratch::new("chunks");
    let mut tensors = Tensors::new();
    for (key, shape, data) in all_tensors(&fixtures().join("plain.pth")) {
        let chunked = match key.strip_prefix("blocks.") {
            Some(rest) => format!("blocks.{}.{rest}", rest.split('.').next().unwrap()),
            None => key.clone(),
        };
        tensors.push((format!("student.backbone.{chunked}"), shape.clone(), vec![0.5; data.len()]));
        tensors.push((format!("teacher.backbone.{chunked}"), shape, data));
    }
    tensors.push(("teacher.dino_head.last_layer.weight".into(), vec![4, 2], vec![0.0; 8]));
    let path = dir.join("training.safetensors");
    write_f32(&path, &tensors);
    assert_same_weights(&load(&path), &load(&fixtures().join("plain.pth")), 0.0);
}

#[test]
fn transformers5_names_without_config_json() {
    // transformers 5 names its modules q_proj/k_proj/v_proj/o_proj and gate_proj/up_proj/
    // down_proj (it saves the older names, but a raw state dict has these). With no
    // config.json, the architecture (SwiGLU included) comes from the shapes.
    let dir = Scratch::new("v5");
    let mut tensors = Tensors::new();
    for (key, shape, data) in all_tensors(&fixtures().join("swiglu-hf/model.safetensors")) {
        if key.contains("mlp.weights_in.") {
            let half = data.len() / 2;
            let mut part = shape.clone();
            part[0] /= 2;
            tensors.push((key.replace("weights_in", "gate_proj"), part.clone(), data[..half].to_vec()));
            tensors.push((key.replace("weights_in", "up_proj"), part, data[half..].to_vec()));
            continue;
        }
        let renamed = key
            .replace("attention.attention.query", "attention.q_proj")
            .replace("attention.attention.key", "attention.k_proj")
            .replace("attention.attention.value", "attention.v_proj")
            .replace("attention.output.dense", "attention.o_proj")
            .replace("mlp.weights_out", "mlp.down_proj");
        tensors.push((renamed, shape, data));
    }
    assert!(
        tensors.iter().any(|(k, _, _)| k.contains("gate_proj"))
            && !tensors.iter().any(|(k, _, _)| k.contains("query"))
    );
    let path = dir.join("model.safetensors");
    write_f32(&path, &tensors);
    assert_same_weights(&load(&path), &load(&fixtures().join("swiglu.pth")), 0.0);
}

#[test]
fn f16_weights_become_f32() {
    let dir = Scratch::new("f16");
    let tensors = all_tensors(&fixtures().join("plain.pth"));
    let halves: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(k, s, d)| {
            (k.clone(), s.clone(), d.iter().flat_map(|v| half::f16::from_f32(*v).to_le_bytes()).collect())
        })
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = halves
        .iter()
        .map(|(k, s, b)| {
            (k.clone(), safetensors::tensor::TensorView::new(safetensors::Dtype::F16, s.clone(), b).unwrap())
        })
        .collect();
    let path = dir.join("half.safetensors");
    std::fs::write(&path, safetensors::serialize(views, None).unwrap()).unwrap();
    let loaded = load(&path);
    for (key, _, data) in &tensors {
        let (_, got) = loaded.tensor(key).unwrap();
        let want: Vec<f32> = data.iter().map(|v| half::f16::from_f32(*v).to_f32()).collect();
        assert_eq!(got, want, "{key}");
    }
}

/// Rewrite `plain.pth` as an official-layout safetensors file after `edit`.
fn rewritten(dir: &Scratch, edit: impl FnOnce(&mut Tensors)) -> PathBuf {
    let mut tensors = all_tensors(&fixtures().join("plain.pth"));
    edit(&mut tensors);
    let path = dir.join("model.safetensors");
    write_f32(&path, &tensors);
    path
}

#[test]
fn rewritten_checkpoint_loads() {
    // the control for the edits below: an unedited rewrite is accepted
    let dir = Scratch::new("control");
    assert_same_weights(&load(&rewritten(&dir, |_| {})), &load(&fixtures().join("plain.pth")), 0.0);
}

#[test]
fn truncated_pth() {
    let dir = Scratch::new("trunc-pth");
    let bytes = std::fs::read(fixtures().join("plain.pth")).unwrap();
    let path = dir.join("model.pth");
    std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("model.pth") && e.contains("not a readable PyTorch checkpoint"), "{e}");
}

#[test]
fn truncated_safetensors() {
    let dir = Scratch::new("trunc-st");
    let bytes = std::fs::read(fixtures().join("plain-hf/model.safetensors")).unwrap();
    let path = dir.join("model.safetensors");
    std::fs::write(&path, &bytes[..bytes.len() - 1000]).unwrap();
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("model.safetensors") && e.contains("truncated"), "{e}");
}

#[test]
fn another_architecture() {
    let options = LoadOptions { arch: Some("vits14".into()), ..Default::default() };
    let e = error_of(&fixtures().join("plain.pth"), options);
    assert!(e.contains("`cls_token` has shape [1, 1, 128]") && e.contains("expects [1, 1, 384]"), "{e}");
    assert!(e.contains("--arch vits14"), "{e}");
}

#[test]
fn missing_tensor() {
    let dir = Scratch::new("missing");
    let path = rewritten(&dir, |t| t.retain(|(k, _, _)| k != "blocks.1.ls2.gamma"));
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("missing tensor `blocks.1.ls2.gamma` (expected shape [128])"), "{e}");
}

#[test]
fn unexpected_tensor() {
    let dir = Scratch::new("unexpected");
    let path = rewritten(&dir, |t| t.push(("blocks.0.attn.extra".into(), vec![2], vec![0.0, 1.0])));
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("unexpected tensor `blocks.0.attn.extra` with shape [2]"), "{e}");
}

#[test]
fn misshaped_tensor() {
    let dir = Scratch::new("misshaped");
    let path = rewritten(&dir, |t| {
        let entry = t.iter_mut().find(|(k, _, _)| k == "blocks.0.norm2.bias").unwrap();
        entry.1 = vec![64];
        entry.2.truncate(64);
    });
    let e = error_of(&path, LoadOptions::default());
    assert!(
        e.contains("tensor `blocks.0.norm2.bias` has shape [64] in the checkpoint, the model expects [128]"),
        "{e}"
    );
}

#[test]
fn malformed_shapes_are_errors_not_panics() {
    // a scalar where a matrix belongs, and a width that is no multiple of the head width
    let dir = Scratch::new("scalar");
    let path = rewritten(&dir, |t| {
        let entry = t.iter_mut().find(|(k, _, _)| k == "blocks.0.mlp.fc1.weight").unwrap();
        entry.1 = vec![];
        entry.2.truncate(1);
    });
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("`blocks.0.mlp.fc1.weight` has too few axes"), "{e}");
    let dir = Scratch::new("narrow");
    let path = rewritten(&dir, |t| {
        let entry = t.iter_mut().find(|(k, _, _)| k == "cls_token").unwrap();
        entry.1 = vec![1, 1, 100];
        entry.2.truncate(100);
    });
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("width 100 is not a multiple of the head width 64"), "{e}");
}

#[test]
fn hf_folder_names_hf_keys() {
    // A HuggingFace checkpoint with one tensor removed names the HuggingFace key.
    let dir = Scratch::new("hf-missing");
    std::fs::copy(fixtures().join("plain-hf/config.json"), dir.join("config.json")).unwrap();
    let mut tensors = all_tensors(&fixtures().join("plain-hf/model.safetensors"));
    tensors.retain(|(k, _, _)| k != "encoder.layer.0.attention.attention.key.weight");
    write_f32(&dir.join("model.safetensors"), &tensors);
    let e = error_of(&dir.0, LoadOptions::default());
    assert!(
        e.contains(
            "missing tensor `encoder.layer.0.attention.attention.key.weight` (expected shape [128, 128])"
        ),
        "{e}"
    );
}

#[test]
fn hf_config_with_impossible_heads() {
    let dir = Scratch::new("hf-heads");
    let config = std::fs::read_to_string(fixtures().join("plain-hf/config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        config.replace("\"num_attention_heads\": 2", "\"num_attention_heads\": 3"),
    )
    .unwrap();
    std::fs::copy(fixtures().join("plain-hf/model.safetensors"), dir.join("model.safetensors")).unwrap();
    let e = error_of(&dir.0, LoadOptions::default());
    assert!(e.contains("embed_dim 128 is not a multiple of num_heads 3"), "{e}");
}

#[test]
fn not_a_checkpoint() {
    let dir = Scratch::new("garbage");
    let path = dir.join("x.pth");
    std::fs::write(&path, b"this is not a checkpoint at all").unwrap();
    let e = error_of(&path, LoadOptions::default());
    assert!(e.contains("x.pth"), "{e}");
}
