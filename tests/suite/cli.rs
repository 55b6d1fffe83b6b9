//! The `dinov2` binary end to end: `embed --size native` reproduces the reference numbers on
//! both backends; bad input gives one line on stderr, a non-zero exit, no panic and no
//! output file; `pca` and `match` draw non-blank pictures.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::common::*;

fn embed_matches_reference(backend: &str, variant: &str, weights: &str, expected: &str, tol: f32) {
    let dir = Scratch::new(&format!("embed-{backend}-{variant}"));
    let out = dir.join("feats.safetensors");
    let images: Vec<PathBuf> = (0..2).map(|i| fixtures().join(format!("images/wide-{i}.png"))).collect();
    let weights = fixtures().join(weights);
    let mut args = vec![
        "embed",
        "--weights",
        s(&weights),
        "--size",
        "native",
        "--backend",
        backend,
        "--output",
        s(&out),
    ];
    args.extend(images.iter().map(|p| s(p)));
    let run = dinov2(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let reference = fixtures().join(expected);
    let mut names = vec!["cls", "patch"];
    if variant == "reg4" {
        names.push("reg");
    }
    let mut sorted = names.clone();
    sorted.sort();
    assert_eq!(tensor_names(&out), sorted);
    for name in names {
        let (shape, actual) = read_tensor(&out, name);
        let (want_shape, want) = read_tensor(&reference, &format!("wide.{name}"));
        assert_eq!(shape, want_shape, "{name}");
        assert_close(&format!("cli {backend} {variant} {name}"), &actual, &want, tol);
    }
}

#[test]
fn embed_native_ndarray_official() {
    embed_matches_reference("ndarray", "plain", "plain.pth", "plain-official.safetensors", 1e-4);
}

#[test]
fn embed_native_ndarray_hf_registers() {
    embed_matches_reference("ndarray", "reg4", "reg4-hf", "reg4-hf.safetensors", 1e-4);
}

#[test]
fn embed_native_wgpu_official() {
    embed_matches_reference("wgpu", "plain", "plain.pth", "plain-official.safetensors", 1e-3);
}

// No CLI test of the HF registers model on wgpu: the CLI's wgpu path is the one above, the
// HF format through the CLI is checked on ndarray, and the model on wgpu in-process
// (backbone_parity::wgpu_reg4_hf). A child process compiles its kernels anew on the software
// adapter: a minute and a half of the suite for no new coverage.

/// Runs `embed` expecting failure: one line on stderr mentioning `needle`, no panic, no output.
fn expect_failure(name: &str, extra: &[&str], images: &[&Path], needle: &str) {
    let dir = Scratch::new(name);
    let out = dir.join("feats.safetensors");
    let mut args = vec!["embed", "--backend", "ndarray", "--size", "native", "--output", s(&out)];
    args.extend_from_slice(extra);
    args.extend(images.iter().map(|p| s(p)));
    let run = dinov2(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{name}: exit status {:?}, stderr: {stderr}", run.status);
    assert!(!stderr.contains("panicked"), "{name}: panicked: {stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| !l.starts_with("warning:")).collect();
    assert_eq!(errors.len(), 1, "{name}: expected one error line, got: {stderr}");
    assert!(errors[0].starts_with("error: ") && errors[0].contains(needle), "{name}: {stderr}");
    assert!(!out.exists(), "{name}: output file left behind");
    let leftovers: Vec<_> = std::fs::read_dir(&dir.0).unwrap().collect();
    assert!(leftovers.is_empty(), "{name}: files left behind: {leftovers:?}");
}

fn good_image() -> PathBuf {
    fixtures().join("images/native-0.png")
}

#[test]
fn corrupt_image() {
    let dir = Scratch::new("corrupt-src");
    let bad = dir.join("broken.png");
    let mut bytes = std::fs::read(good_image()).unwrap();
    bytes.truncate(bytes.len() / 2);
    std::fs::write(&bad, bytes).unwrap();
    let weights = fixtures().join("plain.pth");
    expect_failure(
        "corrupt",
        &["--weights", s(&weights)],
        &[&good_image(), &bad],
        "broken.png: cannot decode image",
    );
}

#[test]
fn not_an_image() {
    let dir = Scratch::new("text-src");
    let (png, txt) = (dir.join("notes.png"), dir.join("notes.txt"));
    std::fs::write(&png, "just text").unwrap();
    std::fs::write(&txt, "just text").unwrap();
    let weights = fixtures().join("plain.pth");
    expect_failure("text-png", &["--weights", s(&weights)], &[&png], "notes.png: cannot decode image");
    expect_failure(
        "text-txt",
        &["--weights", s(&weights)],
        &[&txt],
        "notes.txt: not a supported image format",
    );
}

#[test]
fn missing_image() {
    let weights = fixtures().join("plain.pth");
    expect_failure(
        "missing",
        &["--weights", s(&weights)],
        &[Path::new("/nonexistent/cat.png")],
        "/nonexistent/cat.png",
    );
}

#[test]
fn truncated_checkpoint() {
    let dir = Scratch::new("trunc-src");
    let ckpt = dir.join("half.pth");
    let bytes = std::fs::read(fixtures().join("plain.pth")).unwrap();
    std::fs::write(&ckpt, &bytes[..bytes.len() / 3]).unwrap();
    expect_failure(
        "trunc",
        &["--weights", s(&ckpt)],
        &[&good_image()],
        "half.pth: not a readable PyTorch checkpoint",
    );
}

#[test]
fn checkpoint_for_another_architecture() {
    let weights = fixtures().join("plain.pth");
    expect_failure(
        "arch",
        &["--weights", s(&weights), "--arch", "vitb14"],
        &[&good_image()],
        "plain.pth: tensor `cls_token` has shape [1, 1, 128]",
    );
}

#[test]
fn image_smaller_than_a_patch() {
    let dir = Scratch::new("small-src");
    let small = dir.join("small.png");
    image::RgbImage::from_pixel(10, 30, image::Rgb([200, 10, 10])).save(&small).unwrap();
    let weights = fixtures().join("plain.pth");
    expect_failure(
        "small",
        &["--weights", s(&weights)],
        &[&small],
        "small.png: image is 10x30, smaller than one 14x14 patch",
    );
}

#[test]
fn images_of_different_sizes() {
    let weights = fixtures().join("plain.pth");
    let wide = fixtures().join("images/wide-0.png");
    expect_failure(
        "sizes",
        &["--weights", s(&weights)],
        &[&good_image(), &wide],
        "images differ in size after preprocessing",
    );
}

#[test]
fn unknown_preset() {
    expect_failure("preset", &["--arch", "vit_huge"], &[&good_image()], "unknown preset `vit_huge`");
}

fn assert_not_blank(path: &Path, width: u32, height: u32) {
    let img = image::open(path).unwrap().to_rgb8();
    assert_eq!(img.dimensions(), (width, height));
    let first = *img.get_pixel(0, 0);
    let distinct = img.pixels().filter(|p| **p != first).count();
    assert!(distinct > (width * height / 4) as usize, "{}: picture is nearly uniform", path.display());
}

#[test]
fn pca_and_match_draw_pictures() {
    let dir = Scratch::new("pictures");
    let assets = Path::new(env!("CARGO_MANIFEST_DIR")).join("assets/images");
    let (cat, coffee) = (assets.join("chelsea.jpg"), assets.join("coffee.jpg"));
    let weights = fixtures().join("plain.pth");
    let pca = dir.join("pca.png");
    let run = dinov2(&[
        "pca",
        "--weights",
        s(&weights),
        "--backend",
        "ndarray",
        "--foreground-mask",
        "--output",
        s(&pca),
        s(&cat),
        s(&coffee),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    // two rows of [224 image | gap 4 | 224 map], 4-pixel gap below each
    assert_not_blank(&pca, 2 * 224 + 4, 2 * (224 + 4));
    let matched = dir.join("match.png");
    let run = dinov2(&[
        "match",
        "--weights",
        s(&weights),
        "--backend",
        "ndarray",
        "--output",
        s(&matched),
        s(&cat),
        s(&cat),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stderr = String::from_utf8_lossy(&run.stderr);
    // an image against itself: every patch is its own mutual nearest neighbour
    assert!(stderr.contains("40 mutual nearest neighbours drawn, mean cosine similarity 1.000"), "{stderr}");
    assert_not_blank(&matched, 224 + 16 + 224, 224);
}

#[test]
fn info_lists_the_adapter() {
    let run = dinov2(&["info", "--backend", "wgpu"]);
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("wgpu adapter 0: ") && stdout.contains("max storage binding"), "{stdout}");
    assert!(stdout.contains("in use: wgpu on "), "{stdout}");
}

/// With the Vulkan loader pointed at no driver, wgpu finds no adapter: `--backend wgpu` is a
/// one-line error with the hint, `--backend auto` falls back to the CPU.
#[test]
fn no_adapter_is_a_hint_not_a_panic() {
    let hide_drivers = |cmd: &mut Command| {
        cmd.env("VK_ICD_FILENAMES", "/nonexistent.json").env("VK_DRIVER_FILES", "/nonexistent.json");
    };
    let weights = fixtures().join("plain.pth");
    let dir = Scratch::new("no-adapter");
    let out = dir.join("f.safetensors");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dinov2"));
    cmd.args([
        "embed",
        "--weights",
        s(&weights),
        "--size",
        "native",
        "--backend",
        "wgpu",
        "--output",
        s(&out),
        s(&good_image()),
    ]);
    hide_drivers(&mut cmd);
    let run = cmd.output().unwrap();
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("no GPU adapter found") && stderr.contains("--backend ndarray"), "{stderr}");
    assert!(!out.exists());

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_dinov2"));
    cmd.args(["embed", "--weights", s(&weights), "--size", "native", "--output", s(&out), s(&good_image())]);
    hide_drivers(&mut cmd);
    let run = cmd.output().unwrap();
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert!(String::from_utf8_lossy(&run.stderr).contains("running on ndarray"));
    assert!(out.exists());
}

#[test]
fn native_size_crops_to_the_patch_grid_with_a_warning() {
    let dir = Scratch::new("crop");
    let odd = dir.join("odd.png");
    image::imageops::crop_imm(&image::open(good_image()).unwrap().to_rgb8(), 0, 0, 50, 45)
        .to_image()
        .save(&odd)
        .unwrap();
    let out = dir.join("f.safetensors");
    let weights = fixtures().join("plain.pth");
    let run = dinov2(&[
        "embed",
        "--weights",
        s(&weights),
        "--size",
        "native",
        "--backend",
        "ndarray",
        "--output",
        s(&out),
        s(&odd),
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(
        stderr.contains("warning: ")
            && stderr.contains("odd.png: 50x45 is not a multiple of the patch size; centre-cropped to 42x42"),
        "{stderr}"
    );
    assert_eq!(read_tensor(&out, "patch").0, vec![1, 3, 3, 128]);
}

#[test]
fn bench_kernels_writes_the_json_records() {
    let dir = Scratch::new("bench-kernels");
    let json = dir.join("kernels.json");
    let run = dinov2(&[
        "bench",
        "kernels",
        "--quick",
        "--runs",
        "1",
        "--ops",
        "sinkhorn,koleo,gelu_forward_backward",
        "--json",
        s(&json),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("| sinkhorn |") && stdout.contains("| koleo |"), "{stdout}");
    let records: serde_json::Value = serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
    let records = records.as_array().expect("a list");
    assert_eq!(records.len(), 3);
    for r in records {
        for field in [
            "op",
            "shape",
            "fused_ms",
            "reference_ms",
            "builtin_ms",
            "fused_peak_bytes",
            "reference_peak_bytes",
        ] {
            assert!(r.get(field).is_some(), "{field} missing in {r}");
        }
        assert!(r["fused_ms"].as_f64().unwrap() > 0.0 && r["reference_ms"].as_f64().unwrap() > 0.0);
        // burn's built-in op is timed for GELU (and attention forward) only
        assert_eq!(r["builtin_ms"].is_null(), r["op"] != "gelu_forward_backward", "{r}");
        assert!(r["max_abs_diff"].as_f64().unwrap() <= 1e-4, "{r}");
    }
    // on the CPU backend GELU takes its one-pass forward and backward
    let cpu = dinov2(&[
        "bench",
        "kernels",
        "--backend",
        "ndarray",
        "--quick",
        "--runs",
        "1",
        "--ops",
        "gelu_forward_backward",
    ]);
    assert!(cpu.status.success(), "{}", String::from_utf8_lossy(&cpu.stderr));
    let row = String::from_utf8_lossy(&cpu.stdout)
        .lines()
        .find(|l| l.starts_with("| gelu_forward_backward |"))
        .map(String::from);
    let diff: f64 = row
        .as_deref()
        .and_then(|r| r.trim_end_matches(" |").rsplit("| ").next())
        .and_then(|d| d.trim().parse().ok())
        .unwrap_or(f64::INFINITY);
    assert!(diff <= 1e-5, "{row:?}");
    let bad = dinov2(&["bench", "kernels", "--ops", "conv"]);
    assert!(!bad.status.success());
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(stderr.contains("unknown op `conv`") && stderr.lines().count() == 1, "{stderr}");
}

/// `main` keeps each matrix product on its own thread (MATMUL_NUM_THREADS=1) when `train` or
/// `distill` puts a device on every CPU core, and leaves every other command alone.
#[test]
fn one_thread_per_product_only_when_training_on_cpu_shards() {
    use clap::Parser;
    use dinov2_wgpu::cli::Cli;
    let shards = |args: &[&str]| {
        let argv = std::iter::once("dinov2").chain(args.iter().copied());
        Cli::try_parse_from(argv).unwrap().trains_on_cpu_shards()
    };
    assert!(shards(&["train"]));
    assert!(shards(&["train", "--backend", "ndarray"]));
    assert!(shards(&["train", "--devices", "cpu:2"]));
    assert!(shards(&["distill", "--teacher", "t"]));
    assert!(!shards(&["train", "--devices", "cpu:1"]));
    assert!(!shards(&["train", "--backend", "wgpu"]));
    assert!(!shards(&["distill", "--teacher", "t", "--devices", "0,1"]));
    assert!(!shards(&["eval", "knn", "--train", "a", "--test", "b"]));
}
