//! The linear probe: parity with the official `dinov2/eval/linear.py` training (fixture from
//! tests/reference/make_linear_probe_fixture.py), synthetic separable features, the command line.

use burn::tensor::{Tensor, TensorData};
use dinov2_wgpu::eval::linear::{
    Cache, GRID_SETTINGS, LinearHeads, ProbeFeatures, ProbeOptions, SETTINGS, Setting, cosine_factor,
    grid_bins, train_probes,
};
use indicatif::ProgressBar;

use crate::common::*;

fn fixture() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/linear/probe.safetensors")
}

#[test]
fn linear_heads_train_as_the_official_probe() {
    let path = fixture();
    let device = ndarray_device();
    let cls: Vec<Vec<f32>> = (0..4).map(|j| read_tensor(&path, &format!("cls.{j}")).1).collect();
    let (patch_shape, patch) = read_tensor(&path, "patch");
    let (n, d) = (patch_shape[0], patch_shape[2]);
    let labels: Vec<usize> = read_tensor(&path, "labels").1.iter().map(|&v| v as usize).collect();
    let (batch_shape, batches) = read_tensor(&path, "batches");
    let (iterations, batch) = (batch_shape[0], batch_shape[1]);
    let lrs = [0.01, 0.3, 2.0];
    let classes = 3;
    let features = ProbeFeatures::from_blocks(&cls, &patch, n, d, (1, patch_shape[1])).unwrap();
    for setting in SETTINGS {
        let s = format!("{}_{}", setting.blocks, setting.avgpool as u8);
        // the head's input (official create_linear_input)
        let (input, dim) = features.input(setting);
        assert_close(&format!("input {s}"), &input, &read_tensor(&path, &format!("input.{s}")).1, 1e-6);
        // the heads from the fixture's initial weights, trained on the fixture's batches
        let mut weight = vec![0.0f32; dim * lrs.len() * classes];
        for h in 0..lrs.len() {
            let init = read_tensor(&path, &format!("init_weight.{s}.{h}")).1; // [C, dim]
            for c in 0..classes {
                for i in 0..dim {
                    weight[i * lrs.len() * classes + h * classes + c] = init[c * dim + i];
                }
            }
        }
        let weight = Tensor::<2>::from_data(TensorData::new(weight, [dim, lrs.len() * classes]), &device);
        let bias = Tensor::<2>::zeros([1, lrs.len() * classes], &device);
        let mut heads = LinearHeads::from_tensors(weight, bias, classes, &lrs);
        for t in 0..iterations {
            let idx: Vec<usize> = batches[t * batch..(t + 1) * batch].iter().map(|&v| v as usize).collect();
            let rows: Vec<f32> = idx.iter().flat_map(|&i| input[i * dim..(i + 1) * dim].to_vec()).collect();
            let x = Tensor::<2>::from_data(TensorData::new(rows, [batch, dim]), &device);
            let y: Vec<usize> = idx.iter().map(|&i| labels[i]).collect();
            heads.step(x, &y, cosine_factor(t, iterations));
        }
        let got_weight = heads.weight.clone().into_data().try_to_vec::<f32>().unwrap();
        let got_bias = heads.bias.clone().into_data().try_to_vec::<f32>().unwrap();
        for h in 0..lrs.len() {
            let expected = read_tensor(&path, &format!("weight.{s}.{h}")).1;
            let got: Vec<f32> = (0..classes)
                .flat_map(|c| (0..dim).map(move |i| (c, i)))
                .map(|(c, i)| got_weight[i * lrs.len() * classes + h * classes + c])
                .collect();
            assert_close(&format!("weight {s} lr {}", lrs[h]), &got, &expected, 2e-5);
            let expected = read_tensor(&path, &format!("bias.{s}.{h}")).1;
            assert_close(
                &format!("bias {s} lr {}", lrs[h]),
                &got_bias[h * classes..(h + 1) * classes],
                &expected,
                2e-5,
            );
        }
    }
}

/// Uniform draws in [0, 1) from a xorshift stream keyed by `seed`.
fn uniform_stream(seed: u64) -> impl FnMut() -> f64 {
    uniform_stream_raw(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
}

/// Uniform draws in [0, 1) from a xorshift stream starting at `state` (not 0).
fn uniform_stream_raw(mut state: u64) -> impl FnMut() -> f64 {
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// `n` points per class around 10 random centres in 32 dimensions, 4 "blocks" of noisy copies.
fn clusters(n: usize, seed: u64, shuffle_labels: bool) -> (ProbeFeatures, Vec<usize>) {
    let (classes, d) = (10, 32);
    let mut uniform = uniform_stream(seed);
    let mut normal = move || {
        let (a, b) = (uniform().max(1e-12), uniform());
        ((-2.0 * a.ln()).sqrt() * (2.0 * std::f64::consts::PI * b).cos()) as f32
    };
    // the centres come from a fixed stream: train and test share them
    let mut centre_rng = {
        let mut stream = uniform_stream_raw(0x5eed);
        move || (stream() * 2.0 - 1.0) as f32
    };
    let centres: Vec<f32> = (0..classes * d).map(|_| 2.0 * centre_rng()).collect();
    let mut labels = Vec::new();
    let mut cls = vec![Vec::new(); 4];
    let mut patch = Vec::new();
    for i in 0..n * classes {
        let k = i % classes;
        labels.push(k);
        for block in cls.iter_mut() {
            block.extend((0..d).map(|j| centres[k * d + j] + 0.5 * normal()));
        }
        patch.extend((0..d).map(|_| normal()));
    }
    if shuffle_labels {
        // a second stream from the same seed
        let mut uniform = uniform_stream(seed);
        let m = labels.len();
        for i in (1..m).rev() {
            let j = (uniform() * (i + 1) as f64) as usize % (i + 1);
            labels.swap(i, j);
        }
    }
    (ProbeFeatures::from_blocks(&cls, &patch, n * classes, d, (1, 1)).unwrap(), labels)
}

#[test]
fn linear_probe_separates_synthetic_classes_and_not_random_labels() {
    let device = ndarray_device();
    let options = ProbeOptions { iterations: 300, batch_size: 64, ..ProbeOptions::default() };
    let (train, train_labels) = clusters(100, 1, false);
    let (test, test_labels) = clusters(50, 2, false);
    let bar = ProgressBar::hidden();
    let report =
        train_probes(&train, None, &train_labels, &test, &test_labels, &options, &device, &bar).unwrap();
    assert_eq!(report.heads.len(), SETTINGS.len() * options.learning_rates.len());
    eprintln!("chosen {:?}", report.chosen);
    assert!(report.chosen.test_top1 >= 0.99, "{:?}", report.chosen);
    // the smallest learning rates barely move the heads from their init: the sweep matters
    let slowest = report.heads.iter().filter(|h| h.lr == 1e-5).map(|h| h.test_top1).fold(0.0, f64::max);
    assert!(slowest < report.chosen.test_top1, "lr 1e-5 reached {slowest}");
    // random labels: nothing to learn, the held-out choice does not overfit into accuracy
    let (train, train_labels) = clusters(100, 1, true);
    let report =
        train_probes(&train, None, &train_labels, &test, &test_labels, &options, &device, &bar).unwrap();
    assert!(report.chosen.test_top1 < 0.3, "{:?}", report.chosen);
    // a setting's input is CLS of the last blocks (+ pooled patches)
    assert_eq!(train.input(Setting { blocks: 4, avgpool: true, grid: false }).1, 5 * 32);
    assert_eq!(train.input(Setting { blocks: 1, avgpool: false, grid: false }).1, 32);
    assert_eq!(train.input(Setting { blocks: 4, avgpool: false, grid: true }).1, 8 * 32);
}

#[test]
fn linear_probe_seed_moves_the_split_and_the_heads() {
    let device = ndarray_device();
    let (train, labels) = clusters(40, 1, true);
    let (test, test_labels) = clusters(20, 2, false);
    let bar = ProgressBar::hidden();
    let probe = |seed: u64| {
        let options = ProbeOptions { iterations: 30, batch_size: 16, seed, ..ProbeOptions::default() };
        let r = train_probes(&train, None, &labels, &test, &test_labels, &options, &device, &bar).unwrap();
        r.heads.iter().map(|h| (h.val_top1, h.test_top1)).collect::<Vec<_>>()
    };
    // one seed, one result; another seed holds out other images (random labels: their
    // held-out top-1 differs) and starts the heads elsewhere
    let first = probe(0);
    assert_eq!(probe(0), first);
    let other = probe(1);
    assert_eq!(other.len(), first.len());
    assert!(first.iter().zip(&other).any(|(a, b)| a.0 != b.0), "held-out top-1 identical");
    assert!(first.iter().zip(&other).any(|(a, b)| a.1 != b.1), "test top-1 identical");
}

#[test]
fn linear_probe_trains_on_the_mirrored_features_when_given() {
    let device = ndarray_device();
    let options = ProbeOptions { iterations: 200, batch_size: 64, ..ProbeOptions::default() };
    let (train, labels) = clusters(60, 1, false);
    let (test, test_labels) = clusters(30, 2, false);
    let bar = ProgressBar::hidden();
    let probe = |mirrored: Option<&ProbeFeatures>| {
        train_probes(&train, mirrored, &labels, &test, &test_labels, &options, &device, &bar).unwrap()
    };
    let test_top1 = |r: &dinov2_wgpu::eval::linear::ProbeReport| -> Vec<f64> {
        r.heads.iter().map(|h| h.test_top1).collect()
    };
    let plain = probe(None);
    assert!(plain.chosen.test_top1 >= 0.99, "{:?}", plain.chosen);
    // mirrors identical to the images: the same batches, so the same heads
    assert_eq!(test_top1(&probe(Some(&train))), test_top1(&plain));
    // mirrors that carry the next class's features: half the samples teach the wrong class,
    // so the heads cannot separate neighbouring classes any more
    let mut shifted = train.clone();
    shifted.cls.rotate_left(train.blocks * train.d);
    shifted.avgpool.rotate_left(train.d);
    let confused = probe(Some(&shifted));
    assert!(confused.chosen.test_top1 < 0.8, "{:?}", confused.chosen);
    // mirrors of another set of images: refused
    let (other, _) = clusters(30, 3, false);
    let err = train_probes(&train, Some(&other), &labels, &test, &test_labels, &options, &device, &bar);
    assert!(err.is_err_and(|e| e.to_string().contains("mirrored features")));
}

#[test]
fn mirrored_features_are_the_features_of_the_mirror_images() {
    // images whose left and right halves differ, and the same images mirrored on the host
    let dir = Scratch::new("linear-mirror");
    let (plain_dir, mirror_dir) = (dir.join("plain/c"), dir.join("mirror/c"));
    std::fs::create_dir_all(&plain_dir).unwrap();
    std::fs::create_dir_all(&mirror_dir).unwrap();
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(28, 28, |x, y| {
            let v = (x * 9 + y * (i + 1) + 30 * i) as u8;
            image::Rgb([v, v / 2, 255 - v])
        });
        img.save(plain_dir.join(format!("{i}.png"))).unwrap();
        image::imageops::flip_horizontal(&img).save(mirror_dir.join(format!("{i}.png"))).unwrap();
    }
    let open = |d: &std::path::Path| dinov2_wgpu::train::data::Dataset::open(s(d)).unwrap();
    let (plain, mirror) = (open(&dir.join("plain")), open(&dir.join("mirror")));
    let device = ndarray_device();
    let model =
        dinov2_wgpu::model::DinoVisionTransformer::new(&crate::training::micro_config().arch, &device);
    let bar = ProgressBar::hidden();
    let extract = |data, mirror| {
        ProbeFeatures::extract(&model, data, 28, 2, Cache { mirror, grid: true }, &device, &bar).unwrap()
    };
    let flipped = extract(&plain, true);
    let host_mirrored = extract(&mirror, false);
    assert_close("mirrored CLS", &flipped.cls, &host_mirrored.cls, 1e-5);
    assert_close("mirrored pooled patches", &flipped.avgpool, &host_mirrored.avgpool, 1e-5);
    assert_close("mirrored grid", &flipped.grid, &host_mirrored.grid, 1e-5);
    // and the images as they are give other features
    let as_is = extract(&plain, false);
    let diff = as_is.cls.iter().zip(&flipped.cls).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
    assert!(diff > 1e-3, "the flip changed nothing: {diff}");
}

#[test]
fn eval_linear_from_the_command_line() {
    let dir = Scratch::new("linear-cli");
    let (train, test) = (dir.join("train"), dir.join("test"));
    // two classes: dark and bright images
    for (root, n) in [(&train, 12), (&test, 6)] {
        for k in 0..2u8 {
            let class_dir = root.join(format!("class{k}"));
            std::fs::create_dir_all(&class_dir).unwrap();
            for i in 0..n {
                let img = image::RgbImage::from_fn(28, 28, |x, y| {
                    let v = 40 + 150 * k + ((x * 7 + y * 3 + i * 11) % 40) as u8;
                    image::Rgb([v, v, v])
                });
                img.save(class_dir.join(format!("{i}.png"))).unwrap();
            }
        }
    }
    let json = dir.join("linear.json");
    let predictions = dir.join("predictions.json");
    let args = [
        "eval",
        "linear",
        "--arch",
        "tiny",
        "--size",
        "28",
        "--train",
        s(&train),
        "--test",
        s(&test),
        "--iterations",
        "40",
        "--batch-size",
        "8",
        "--val-fraction",
        "0.25",
        "--flip",
        "--grid",
        "--quiet",
        "--backend",
        "ndarray",
        "--predictions",
        s(&predictions),
        "--json",
        s(&json),
    ];
    let run = dinov2(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(stdout.contains("chosen: last"), "{stdout}");
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // the official 4 settings and the 2 of --grid, 13 learning rates each
    assert_eq!(v["heads"].as_array().unwrap().len(), 78, "{v}");
    assert_eq!(v["best_per_setting"].as_array().unwrap().len(), 6, "{v}");
    assert_eq!(v["grid"], true, "{v}");
    assert_eq!(v["val_images"].as_u64(), Some(6));
    assert_eq!(v["flip"], true, "{v}");
    assert_eq!(v["top1"], v["chosen"]["test_top1"]);
    let top1 = v["top1"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&top1));
    // --predictions: the chosen head's class for each test image, whose top-1 is the reported one
    let p: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&predictions).unwrap()).unwrap();
    let labels = p["labels"].as_array().unwrap();
    assert_eq!(labels.len(), 12, "{p}");
    assert_eq!(labels.iter().filter(|l| l.as_u64() == Some(1)).count(), 6, "{p}");
    let predicted = p["predictions"]["linear"].as_array().unwrap();
    let right = predicted.iter().zip(labels).filter(|(a, b)| a == b).count();
    assert_eq!(predicted.len(), 12);
    assert_eq!(right as f64 / 12.0, top1, "{p} {v}");

    // bad input: one line, non-zero exit, nothing written
    let bad = dir.join("bad.json");
    for (flag, value) in [("--val-fraction", "1.5"), ("--iterations", "0"), ("--train", "nowhere")] {
        let mut args = args.to_vec();
        let at = args.iter().position(|a| *a == flag).unwrap();
        args[at + 1] = value;
        let last = args.len() - 1;
        args[last] = s(&bad);
        let run = dinov2(&args);
        assert!(!run.status.success(), "{flag} {value}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(stderr.lines().count(), 1, "{flag} {value}: {stderr}");
        assert!(!bad.exists());
    }

    // where stderr is not a terminal (here: a pipe) long work writes plain progress lines,
    // every DINOV2_PROGRESS_EVERY seconds; none with --quiet or when turned off
    let mut long = args.to_vec();
    long.retain(|a| *a != "--quiet");
    let at = long.iter().position(|a| *a == "--iterations").unwrap();
    long[at + 1] = "1000";
    let progress_lines = |args: &[&str], every: &str| {
        let run = std::process::Command::new(env!("CARGO_BIN_EXE_dinov2"))
            .args(args)
            .env("DINOV2_PROGRESS_EVERY", every)
            .output()
            .unwrap();
        assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
        let stderr = String::from_utf8_lossy(&run.stderr).to_string();
        stderr
            .lines()
            .filter(|l| l.starts_with("progress: linear heads "))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let lines = progress_lines(&long, "0.02");
    assert!(!lines.is_empty(), "no progress lines");
    assert!(lines.iter().all(|l| l.contains("/6000 (") && l.contains("elapsed, eta")), "{lines:?}");
    assert_eq!(progress_lines(&long, "0"), Vec::<String>::new());
    assert_eq!(progress_lines(&args, "0.02"), Vec::<String>::new(), "--quiet");

    // --learning-rates replaces the official 13 (6 settings x 2 heads), --seed is recorded; bad
    // rates are refused
    let mut narrow = args.to_vec();
    narrow.extend(["--learning-rates", "0.01,0.5", "--seed", "3"]);
    let run = dinov2(&narrow);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(v["heads"].as_array().unwrap().len(), 12, "{v}");
    assert_eq!(v["learning_rates"], serde_json::json!([0.01, 0.5]), "{v}");
    assert_eq!(v["seed"], 3, "{v}");
    assert!(v["heads"].as_array().unwrap().iter().all(|h| h["lr"] == 0.01 || h["lr"] == 0.5), "{v}");
    for value in ["0.01,0", "0.1,-1", "fast"] {
        let mut args = args.to_vec();
        let last = args.len() - 1;
        args[last] = s(&bad);
        args.extend(["--learning-rates", value]);
        let run = dinov2(&args);
        assert!(!run.status.success(), "--learning-rates {value}");
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(stderr.contains("learning-rates"), "--learning-rates {value}: {stderr}");
        assert!(!bad.exists());
    }
}

#[test]
fn grid_cells_pool_the_last_blocks_patch_tokens() {
    // torch's adaptive average pooling bins: halves of an even side, overlapping on an odd one
    assert_eq!(grid_bins(2), [(0, 1), (1, 2)]);
    assert_eq!(grid_bins(3), [(0, 2), (1, 3)]);
    assert_eq!(grid_bins(1), [(0, 1), (0, 1)]);
    let dir = Scratch::new("linear-grid");
    let class_dir = dir.join("c");
    std::fs::create_dir_all(&class_dir).unwrap();
    for i in 0..3u32 {
        let img = image::RgbImage::from_fn(28, 28, |x, y| {
            let v = (x * 5 + y * y * (i + 2) + 17 * i) as u8;
            image::Rgb([v, 255 - v / 3, v / 2])
        });
        img.save(class_dir.join(format!("{i}.png"))).unwrap();
    }
    let data = dinov2_wgpu::train::data::Dataset::open(s(&dir.0)).unwrap();
    let device = ndarray_device();
    let model =
        dinov2_wgpu::model::DinoVisionTransformer::new(&crate::training::micro_config().arch, &device);
    let (p, d) = (model.config.patch_size, model.config.embed_dim);
    let bar = ProgressBar::hidden();
    // 2x2 and 3x3 patch grids: the features cached on the device against the same pooling done
    // on the host from every patch token of the last block
    for side in [2, 3] {
        let size = side * p;
        let cache = Cache { mirror: false, grid: true };
        let cached = ProbeFeatures::extract(&model, &data, size, 2, cache, &device, &bar).unwrap();
        // without --grid the cells are not cached, and the grid settings are refused
        let plain = ProbeFeatures::extract(&model, &data, size, 2, Cache::default(), &device, &bar).unwrap();
        assert!(plain.grid.is_empty());
        assert_close(&format!("{side}x{side} CLS without the grid"), &plain.cls, &cached.cls, 0.0);
        let grid_options = ProbeOptions { iterations: 1, grid: true, ..ProbeOptions::default() };
        let err = train_probes(&plain, None, &[0, 1, 0], &plain, &[0, 1, 0], &grid_options, &device, &bar);
        assert!(err.is_err_and(|e| e.to_string().contains("2x2 grid")));
        let (mut cls, mut patches) = (vec![Vec::new(); cached.blocks], Vec::new());
        dinov2_wgpu::eval::knn::for_each_batch(&data, size, p, 2, &device, |images| {
            let outputs = model.forward_last_blocks(images, cached.blocks);
            for (j, f) in outputs.iter().enumerate() {
                cls[j].extend(f.cls.clone().into_data().try_to_vec::<f32>().unwrap());
            }
            let last = outputs.last().unwrap().patch.clone();
            patches.extend(last.into_data().try_to_vec::<f32>().unwrap());
            Ok(())
        })
        .unwrap();
        let host = ProbeFeatures::from_blocks(&cls, &patches, data.len(), d, (side, side)).unwrap();
        assert_close(&format!("{side}x{side} CLS"), &cached.cls, &host.cls, 1e-5);
        assert_close(&format!("{side}x{side} avgpool"), &cached.avgpool, &host.avgpool, 1e-5);
        assert_close(&format!("{side}x{side} grid"), &cached.grid, &host.grid, 1e-5);
        if side == 2 {
            // one patch per cell: the cells are the patch tokens themselves
            assert_close("2x2 grid = patch tokens", &cached.grid, &patches, 1e-5);
        } else {
            // the middle row and column count in both halves: cell (0, 0) is the mean of the
            // top-left 2x2 tokens
            let token = |i: usize, y: usize, x: usize| &patches[((i * 9) + y * 3 + x) * d..][..d];
            let expected: Vec<f32> = (0..d)
                .map(|k| {
                    (token(1, 0, 0)[k] + token(1, 0, 1)[k] + token(1, 1, 0)[k] + token(1, 1, 1)[k]) / 4.0
                })
                .collect();
            assert_close("3x3 cell (0, 0)", &cached.grid[4 * d..5 * d], &expected, 1e-5);
        }
    }
}

/// `n` images per class of 4 classes whose class is which cell of the 2x2 patch grid carries a
/// signal: the pooled mean and the CLS are the same for every class, up to noise.
fn where_features(n: usize, seed: u64) -> (ProbeFeatures, Vec<usize>) {
    let (classes, d) = (4, 16);
    let mut uniform = uniform_stream(seed);
    let mut noise = move || (uniform() - 0.5) as f32 * 0.4;
    let signal: Vec<f32> = (0..d).map(|k| if k % 2 == 0 { 1.0 } else { -1.0 }).collect();
    let (mut cls, mut patches, mut labels) = (vec![Vec::new(); 4], Vec::new(), Vec::new());
    for i in 0..n * classes {
        let k = i % classes;
        labels.push(k);
        for block in cls.iter_mut() {
            block.extend((0..d).map(|_| noise()));
        }
        for cell in 0..4 {
            patches.extend(signal.iter().map(|&v| if cell == k { v } else { 0.0 } + noise()));
        }
    }
    (ProbeFeatures::from_blocks(&cls, &patches, n * classes, d, (2, 2)).unwrap(), labels)
}

#[test]
fn grid_heads_see_where_a_feature_is_and_the_official_ones_do_not() {
    let device = ndarray_device();
    let (train, train_labels) = where_features(100, 1);
    let (test, test_labels) = where_features(50, 2);
    let bar = ProgressBar::hidden();
    let options = ProbeOptions { iterations: 300, batch_size: 64, grid: true, ..ProbeOptions::default() };
    let report =
        train_probes(&train, None, &train_labels, &test, &test_labels, &options, &device, &bar).unwrap();
    let lrs = options.learning_rates.len();
    assert_eq!(report.heads.len(), (SETTINGS.len() + GRID_SETTINGS.len()) * lrs);
    assert!(report.chosen.grid && report.chosen.test_top1 >= 0.99, "{:?}", report.chosen);
    let official = report.heads.iter().filter(|h| !h.grid).map(|h| h.test_top1).fold(0.0, f64::max);
    assert!(official < 0.5, "a head without the grid reached {official}");
    // without --grid only the official settings are trained
    let options = ProbeOptions { grid: false, ..options };
    let report =
        train_probes(&train, None, &train_labels, &test, &test_labels, &options, &device, &bar).unwrap();
    assert_eq!(report.heads.len(), SETTINGS.len() * lrs);
    assert!(report.heads.iter().all(|h| !h.grid));
}
