//! Pretraining end to end on a micro recipe: exact resume after `kill -9`, a crash during a
//! checkpoint write, a non-finite loss, the wgpu path against ndarray, efficient stochastic
//! depth against the masked formulation, the exported backbone, and the k-NN probe.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use burn::module::Module;
use burn::tensor::{Distribution, Tensor};
use dinov2_wgpu::train::TrainConfig;
use dinov2_wgpu::train::head::HeadConfig;
use dinov2_wgpu::train::params::HostTensor;
use dinov2_wgpu::train::trainer::{self, read_checkpoint};

use crate::common::*;

/// The tiny recipe shrunk so a step takes milliseconds: 14 px global crops (2 × 2 patches of
/// 7), two 7 px local crops, the official augmentations and teacher momentum schedule, batch 4,
/// stochastic depth on, a checkpoint every step.
pub(crate) fn micro_config() -> TrainConfig {
    let mut c = TrainConfig::tiny();
    c.arch.embed_dim = 128;
    c.arch.num_heads = 2;
    c.arch.depth = 2;
    c.arch.ffn_hidden = 128;
    c.arch.patch_size = 7;
    c.arch.pos_grid = 2;
    // the official augmentations (the tiny recipe keeps only crops and flips), so that these
    // tests run every one of them
    c.crops = dinov2_wgpu::train::augment::CropConfig {
        global_size: 14,
        local_size: 7,
        n_global: 2,
        n_local: 2,
        global_scale: (0.4, 1.0),
        local_scale: (0.1, 0.4),
        blur_kernel: 3,
        ..Default::default()
    };
    c.momentum_teacher = 0.99;
    c.final_momentum_teacher = 1.0;
    c.batch_size = 4;
    c.total_steps = 8;
    c.epoch_length = 2;
    c.warmup_epochs = 1.0;
    c.warmup_teacher_temp_epochs = 1.0;
    c.dino_head = HeadConfig { n_prototypes: 64, hidden_dim: 32, bottleneck_dim: 16, n_layers: 3 };
    c.ibot_head = c.dino_head.clone();
    c.drop_path_rate = 0.25;
    c.checkpoint_every = 1;
    c
}

/// LayerScale gammas of `params` set to 1: at 1e-5 every CLS feature is nearly the same, and
/// KoLeo's nearest neighbours are then ties decided by rounding; this gives the blocks weight.
pub(crate) fn layer_scale_one(params: &mut BTreeMap<String, HostTensor>) {
    for (name, t) in params.iter_mut() {
        if name.ends_with(".ls1") || name.ends_with(".ls2") {
            t.data.iter_mut().for_each(|v| *v = 1.0);
        }
    }
}

/// `n` random 28 × 28 PNGs per class; class `k` has mean brightness `60 + 120 k`.
pub(crate) fn image_folder(dir: &Path, classes: usize, n: usize, seed: u64) {
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let mut next = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (state >> 33) as u32
    };
    for k in 0..classes {
        let class_dir = dir.join(format!("class{k}"));
        std::fs::create_dir_all(&class_dir).unwrap();
        for i in 0..n {
            let base = 60 + 120 * k as u32;
            let img = image::RgbImage::from_fn(28, 28, |_, _| {
                let v = (base + next() % 60).min(255) as u8;
                image::Rgb([v, v / 2 + next() as u8 % 64, 255 - v])
            });
            img.save(class_dir.join(format!("{i}.png"))).unwrap();
        }
    }
}

pub(crate) fn write_config(path: &Path, c: &TrainConfig) {
    std::fs::write(path, serde_json::to_string_pretty(c).unwrap()).unwrap();
}

fn train_args<'a>(config: &'a str, data: &'a str, out: &'a str) -> Vec<&'a str> {
    vec!["train", "--config", config, "--data", data, "--out", out, "--backend", "ndarray", "--quiet"]
}

pub(crate) fn losses(run: &Path) -> Vec<(u64, f64)> {
    std::fs::read_to_string(run.join(trainer::METRICS))
        .unwrap()
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (v["step"].as_u64().unwrap(), v["loss"]["total"].as_f64().unwrap())
        })
        .collect()
}

fn model_tensors(run: &Path) -> BTreeMap<String, HostTensor> {
    let saved = read_checkpoint(&run.join(trainer::CHECKPOINT)).unwrap();
    saved.tensors
}

pub(crate) fn assert_same_run(a: &Path, b: &Path, what: &str) {
    let (la, lb) = (losses(a), losses(b));
    assert_eq!(la, lb, "{what}: loss sequences differ");
    let (ta, tb) = (model_tensors(a), model_tensors(b));
    assert_eq!(ta.keys().collect::<Vec<_>>(), tb.keys().collect::<Vec<_>>(), "{what}: tensor names differ");
    for (name, x) in &ta {
        assert!(
            x == &tb[name],
            "{what}: tensor {name} differs (max abs {})",
            max_abs_diff(&x.data, &tb[name].data)
        );
    }
}

/// `train --fit-minutes`: the schedule is sized to the minutes in the recipe's shape
/// (`TrainConfig::with_schedule_length`), most of it runs within them, and the speed probe
/// leaves no trace: the run equals a plain run of the config.json it wrote, step for step.
#[test]
fn fit_minutes_sizes_the_schedule_and_the_probe_leaves_no_trace() {
    let dir = Scratch::new("train-fit");
    let data = dir.join("data");
    image_folder(&data, 1, 6, 3);
    let config = dir.join("micro.json");
    let mut c = micro_config();
    // a schedule far longer than 6 seconds hold, in 4 epochs
    (c.total_steps, c.epoch_length, c.checkpoint_every) = (100_000, 25_000, 100_000);
    write_config(&config, &c);
    let (config, data) = (s(&config), s(&data));

    let fitted = dir.join("fitted");
    let mut args = train_args(config, data, s(&fitted));
    args.extend(["--fit-minutes", "0.1"]);
    let run = dinov2(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success() && stderr.contains("fitted the schedule to 0.1 min"), "{stderr}");
    let f = TrainConfig::from_json_file(&fitted.join(trainer::CONFIG)).unwrap();
    assert!(f.total_steps >= 4 && f.total_steps < c.total_steps, "{} steps", f.total_steps);
    assert_eq!(f, c.with_schedule_length(f.total_steps), "only the schedule's length changes, in shape");
    let done = losses(&fitted).len();
    eprintln!("fitted {} steps, {done} done in 6 s", f.total_steps);
    assert!(4 * done >= f.total_steps && done <= f.total_steps, "{done} of {} steps done", f.total_steps);
    // a run the limit cut short says so
    let cut = format!("note: stopped at step {done} of {}", f.total_steps);
    assert_eq!(stderr.contains(&cut), done < f.total_steps, "{stderr}");

    let plain = dir.join("plain");
    let done_arg = done.to_string();
    let fitted_config = fitted.join(trainer::CONFIG);
    let mut args = train_args(s(&fitted_config), data, s(&plain));
    args.extend(["--steps", &done_arg]);
    let run = dinov2(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_same_run(&fitted, &plain, "fitted run against its config.json run plainly");

    // --max-minutes stops after the step that passes it, checkpointed, and says so
    let limited = dir.join("limited");
    let mut args = train_args(config, data, s(&limited));
    args.extend(["--max-minutes", "0.00001"]);
    let run = dinov2(&args);
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("note: stopped at step 1 of 100000: the 0.00001-minute limit"), "{stderr}");
    assert_eq!(read_checkpoint(&limited.join(trainer::CHECKPOINT)).unwrap().step, 1);

    // a length that fits nothing, and a resume (whose schedule is the run's own): one line each
    for extra in [&["--fit-minutes", "0"][..], &["--fit-minutes", "1", "--resume"]] {
        let mut args = train_args(config, data, s(&plain));
        args.extend(extra);
        let run = dinov2(&args);
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert!(
            !run.status.success() && stderr.starts_with("error: ") && !stderr.contains("panicked"),
            "{stderr}"
        );
    }
}

#[test]
fn resume_after_a_stop_or_kill_9_repeats_the_uninterrupted_run_exactly() {
    let dir = Scratch::new("train-resume");
    let data = dir.join("data");
    image_folder(&data, 2, 6, 1);
    let config = dir.join("micro.json");
    write_config(&config, &micro_config());
    let (config, data) = (s(&config), s(&data));

    let straight = dir.join("straight");
    let run = dinov2(&train_args(config, data, s(&straight)));
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(losses(&straight).len(), 8);
    assert_eq!(read_checkpoint(&straight.join(trainer::CHECKPOINT)).unwrap().step, 8);

    // a clean stop after 3 steps, then --resume
    let stopped = dir.join("stopped");
    let mut args = train_args(config, data, s(&stopped));
    args.extend(["--steps", "3"]);
    assert!(dinov2(&args).status.success());
    assert_eq!(read_checkpoint(&stopped.join(trainer::CHECKPOINT)).unwrap().step, 3);
    let mut args = train_args(config, data, s(&stopped));
    args.push("--resume");
    let run = dinov2(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_same_run(&straight, &stopped, "stop + resume");

    // kill -9 once some steps are checkpointed, then --resume
    let killed = dir.join("killed");
    let mut child = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(train_args(config, data, s(&killed)))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let started = Instant::now();
    loop {
        let steps = std::fs::read_to_string(killed.join(trainer::METRICS)).map_or(0, |t| t.lines().count());
        if steps >= 3 {
            break;
        }
        assert!(child.try_wait().unwrap().is_none(), "the run ended before it could be killed");
        assert!(started.elapsed() < Duration::from_secs(300), "no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed before finishing");
    let at_kill = read_checkpoint(&killed.join(trainer::CHECKPOINT)).unwrap().step;
    assert!(at_kill < 8, "killed at step {at_kill}");
    let mut args = train_args(config, data, s(&killed));
    args.push("--resume");
    let run = dinov2(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_same_run(&straight, &killed, &format!("kill -9 after step {at_kill} + resume"));
}

#[test]
fn a_crash_while_writing_a_checkpoint_leaves_the_previous_one_loadable() {
    let dir = Scratch::new("train-crash");
    let data = dir.join("data");
    image_folder(&data, 1, 6, 2);
    let config = dir.join("micro.json");
    write_config(&config, &micro_config());
    let out = dir.join("run");
    let mut args = train_args(s(&config), s(&data), s(&out));
    args.extend(["--steps", "2"]);
    assert!(dinov2(&args).status.success());
    let before = std::fs::read(out.join(trainer::CHECKPOINT)).unwrap();

    let mut args = train_args(s(&config), s(&data), s(&out));
    args.extend(["--resume", "--steps", "1"]);
    let crashed = Command::new(env!("CARGO_BIN_EXE_dinov2"))
        .args(&args)
        .env("DINOV2_FAULT_ABORT_WRITING", trainer::CHECKPOINT)
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the injected crash did not happen");
    // the half-written temporary file is there; the checkpoint is the step-2 one, whole
    let leftovers: Vec<_> = std::fs::read_dir(&out)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp-"))
        .collect();
    assert_eq!(leftovers.len(), 1, "expected the interrupted temporary file");
    assert_eq!(std::fs::read(out.join(trainer::CHECKPOINT)).unwrap(), before);
    assert_eq!(read_checkpoint(&out.join(trainer::CHECKPOINT)).unwrap().step, 2);
    let mut args = train_args(s(&config), s(&data), s(&out));
    args.extend(["--resume", "--steps", "1"]);
    assert!(dinov2(&args).status.success());
    assert_eq!(read_checkpoint(&out.join(trainer::CHECKPOINT)).unwrap().step, 3);
}

#[test]
fn a_non_finite_loss_stops_training_with_one_line_and_keeps_the_last_checkpoint() {
    let dir = Scratch::new("train-nan");
    let data = dir.join("data");
    image_folder(&data, 1, 6, 3);
    let mut c = micro_config();
    c.base_lr = 1e30;
    c.warmup_epochs = 0.0;
    c.clip_grad = 0.0;
    let config = dir.join("explode.json");
    write_config(&config, &c);
    let out = dir.join("run");
    let run = dinov2(&train_args(s(&config), s(&data), s(&out)));
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    let error: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(error.len(), 1, "{stderr}");
    assert!(error[0].contains("non-finite"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    let saved = read_checkpoint(&out.join(trainer::CHECKPOINT)).unwrap();
    assert!(saved.step >= 1 && saved.step < 8, "stopped at {}", saved.step);
    assert!(error[0].contains(&format!("(step {})", saved.step)), "{stderr}");
}

#[test]
fn the_recipe_gives_the_same_losses_on_wgpu_as_on_ndarray() {
    use dinov2_wgpu::train::trainer::{Centers, SslModel, make_batch, step_loss};
    let dir = Scratch::new("train-wgpu");
    let data_dir = dir.join("data");
    image_folder(&data_dir, 1, 8, 4);
    let data = dinov2_wgpu::train::data::Dataset::open(s(&data_dir)).unwrap();
    let mut c = micro_config();
    c.arch.depth = 1;
    let cpu = ndarray_device();
    let gpu = wgpu_device();
    let reference = SslModel::new(&c, &cpu.clone().autodiff());
    let mut weights = dinov2_wgpu::train::params::named_params(&reference).unwrap();
    layer_scale_one(&mut weights);
    let batch = make_batch(&c, &data, &[0, 1, 2, 3], 5).unwrap();
    let mut results = Vec::new();
    for device in [&cpu, &gpu] {
        let ad = device.clone().autodiff();
        let student = SslModel::new(&c, &ad);
        let student = dinov2_wgpu::train::params::load_named_params(student, &weights, "").unwrap();
        let teacher = student.valid();
        let mut centers = Centers { dino: None, ibot: None };
        let (total, parts) = step_loss(&c, &student, &teacher, &batch, 0.05, &mut centers, &ad);
        let grads = total.backward();
        let grad = student.backbone.blocks[0].attn.qkv.weight.val().grad(&grads).unwrap();
        let mut values = Vec::new();
        for t in std::iter::once(total).chain(parts) {
            values.push(t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()[0]);
        }
        results.push((values, grad.into_data().convert::<f32>().try_to_vec::<f32>().unwrap()));
    }
    let (cpu_loss, cpu_grad) = &results[0];
    let (gpu_loss, gpu_grad) = &results[1];
    for (a, b) in cpu_loss.iter().zip(gpu_loss) {
        assert!(
            a.is_finite() && (a - b).abs() <= 1e-4 * (1.0 + a.abs()),
            "losses {cpu_loss:?} vs {gpu_loss:?}"
        );
    }
    let scale = cpu_grad.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(cpu_grad, gpu_grad);
    // the gradient passes through Sinkhorn-Knopp, KoLeo's nearest neighbours and two heads in a
    // different summation order on each backend: 0.1% of its largest entry was measured
    assert!(scale > 0.0 && err <= 3e-3 * scale, "qkv gradient max abs error {err} (scale {scale})");
}

/// A step's logits larger than the adapter can hold in one buffer (lavapipe and browsers:
/// 128 MiB) are a one-line error before any work, not a failed allocation deep in a step: in
/// the library when a step starts (their rows follow the batch), from the command line before
/// the run folder is made.
#[test]
fn logits_beyond_the_adapters_buffers_are_refused_clearly() {
    use dinov2_wgpu::train::trainer::{TrainState, make_batch};
    let device = wgpu_device();
    let limit = dinov2_wgpu::backend::max_tensor_bytes(&device).expect("wgpu reports the adapter's limits");
    let mut c = micro_config();
    // a last layer that fits (64 x 65536 f32, 16 MiB), and a batch whose student logits (4
    // crops per image, 256 KiB per row) do not
    c.dino_head.bottleneck_dim = 64;
    c.dino_head.n_prototypes = 65536;
    c.ibot_head = c.dino_head.clone();
    let rows = (limit / (65536 * 4)) as usize + 1;
    c.batch_size = rows.div_ceil(c.crops.n_global + c.crops.n_local);
    if c.batch_size > 2048 {
        eprintln!(
            "adapter binds {} MiB: the logits case would need {} images, skipped",
            limit >> 20,
            c.batch_size
        );
        return;
    }
    let expected = |err: &str| {
        err.contains("DINO logits")
            && err.contains(&format!("the {} MiB this adapter", limit >> 20))
            && err.contains("--batch-size")
    };
    let mut state = TrainState::new(&c, &device).unwrap();
    let dir = Scratch::new("train-binding");
    image_folder(&dir.join("data"), 1, 4, 9);
    let data = dinov2_wgpu::train::data::Dataset::open(s(&dir.join("data"))).unwrap();
    let indices: Vec<usize> = (0..c.batch_size).map(|i| i % 4).collect();
    let batch = make_batch(&c, &data, &indices, 0).unwrap();
    let err = state.step(&c, &batch, 0).err().expect("logits over the limit are refused").to_string();
    assert!(expected(&err) && !err.contains('\n'), "{err}");
    // from the command line: one line, exit status 1, no run folder
    write_config(&dir.join("big.json"), &c);
    let out = dir.join("run");
    let run = dinov2(&[
        "train",
        "--config",
        s(&dir.join("big.json")),
        "--data",
        s(&dir.join("data")),
        "--backend",
        "wgpu",
        "--out",
        s(&out),
        "--quiet",
    ]);
    let stderr = String::from_utf8_lossy(&run.stderr);
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(run.status.code(), Some(1), "{stderr}");
    assert!(errors.len() == 1 && expected(errors[0]) && !stderr.contains("panicked"), "{stderr}");
    assert!(!out.exists(), "a run folder was left behind");
}

/// ViT-L/g's last layer, 384 × 131072 f32 (192 MiB), is more than lavapipe binds (128 MiB):
/// kept in four chunks of 48 MiB, the head runs there, and its logits and the gradients of
/// its last chunk and of its input equal the CPU backend's. (The head alone: a whole step at
/// 131072 prototypes costs lavapipe 150 s of kernel tuning for the same chunked code; it was
/// run once, `dinov2 train` with a micro backbone and these heads on `--backend wgpu`.)
#[test]
fn a_last_layer_beyond_one_binding_runs_in_chunks_on_wgpu() {
    use dinov2_wgpu::train::head::DinoHead;
    let c = HeadConfig { n_prototypes: 131072, hidden_dim: 32, bottleneck_dim: 384, n_layers: 3 };
    let cpu = ndarray_device();
    let reference = DinoHead::new(16, &c, &cpu);
    assert_eq!(reference.last_layer_v.len(), 4);
    assert_eq!(reference.n_prototypes(), 131072);
    let weights = dinov2_wgpu::train::params::named_params(&reference).unwrap();
    let x = Tensor::<2>::random([6, 16], Distribution::Normal(0.0, 1.0), &cpu).into_data();
    // a loss that weighs every logit differently, so every prototype's gradient is checked
    let w = Tensor::<2>::random([6, 131072], Distribution::Uniform(-1.0, 1.0), &cpu).into_data();
    let mut results = Vec::new();
    for device in [cpu.clone(), wgpu_device()] {
        let ad = device.autodiff();
        let head =
            dinov2_wgpu::train::params::load_named_params(DinoHead::new(16, &c, &ad), &weights, "").unwrap();
        let x = Tensor::<2>::from_data(x.clone(), &ad).require_grad();
        let logits = head.forward(x.clone());
        let loss = (logits.clone() * Tensor::<2>::from_data(w.clone(), &ad)).sum();
        let grads = loss.backward();
        let host = |t: Tensor<2>| t.into_data().convert::<f32>().try_to_vec::<f32>().unwrap();
        let chunk = head.last_layer_v[3].val().grad(&grads).unwrap();
        results.push([host(logits), host(chunk), host(x.grad(&grads).unwrap())]);
    }
    // the independent reference: the same head as one unchunked 384 x 131072 layer, on the CPU
    let unchunked = {
        let mut x = Tensor::<2>::from_data(x.clone(), &cpu);
        for (i, layer) in reference.mlp.iter().enumerate() {
            x = layer.forward(x);
            if i + 1 < reference.mlp.len() {
                x = burn::tensor::activation::gelu(x);
            }
        }
        let x = x.clone() / x.square().sum_dim(1).sqrt().clamp_min(1e-12);
        let v = Tensor::cat(reference.last_layer_v.iter().map(|v| v.val()).collect(), 1);
        let g = Tensor::cat(reference.last_layer_g.iter().map(|g| g.val()).collect(), 0);
        assert_eq!(v.dims(), [384, 131072]);
        let weight = v.clone() / v.square().sum_dim(0).sqrt() * g.unsqueeze::<2>();
        x.matmul(weight).into_data().convert::<f32>().try_to_vec::<f32>().unwrap()
    };
    let scale = unchunked.iter().fold(0f32, |m, v| m.max(v.abs()));
    let err = max_abs_diff(&unchunked, &results[0][0]);
    assert!(err <= 1e-5 * scale, "chunked logits against one layer: max abs error {err} (scale {scale})");
    for (i, what) in ["logits", "last chunk's gradient", "input gradient"].iter().enumerate() {
        let (a, b) = (&results[0][i], &results[1][i]);
        let scale = a.iter().fold(0f32, |m, v| m.max(v.abs()));
        let err = max_abs_diff(a, b);
        assert!(scale > 0.0 && err <= 1e-4 * scale, "{what}: max abs error {err} (scale {scale})");
    }
}

#[test]
fn efficient_stochastic_depth_equals_the_masked_formulation() {
    use dinov2_wgpu::model::block::{Kept, drop_add_residual};
    let device = ndarray_device();
    device.seed(7);
    let (b, n, d) = (4, 3, 8);
    let x = Tensor::<3>::random([b, n, d], Distribution::Normal(0.0, 1.0), &device);
    let w = Tensor::<2>::random([d, d], Distribution::Normal(0.0, 1.0), &device);
    // a per-sample residual branch (a token-wise MLP, as attention and the FFN are per sample)
    let residual = |x: Tensor<3>| burn::tensor::activation::gelu(x.matmul(w.clone().unsqueeze::<3>()));
    let full = host(x.clone() + residual(x.clone()));
    let plain = host(x.clone());
    let mut mean = vec![0.0f32; full.len()];
    let subsets: Vec<Vec<usize>> = (0..b).flat_map(|i| (i + 1..b).map(move |j| vec![i, j])).collect();
    for kept in &subsets {
        let got = host(drop_add_residual(x.clone(), &Kept::subset(b, kept.clone()), residual));
        // the masked formulation: x + mask · (B / kept) · residual(x)
        let row = n * d;
        for s in 0..b {
            for e in 0..row {
                let i = s * row + e;
                let want = if kept.contains(&s) {
                    plain[i] + (full[i] - plain[i]) * b as f32 / 2.0
                } else {
                    plain[i]
                };
                assert!((got[i] - want).abs() <= 1e-5 * (1.0 + want.abs()), "sample {s} kept {kept:?}");
            }
        }
        for (m, g) in mean.iter_mut().zip(&got) {
            *m += g / subsets.len() as f32;
        }
    }
    // every subset of 2 of 4 equally likely: the expectation is the full residual
    let err = max_abs_diff(&mean, &full);
    assert!(err < 1e-5, "expectation differs by {err}");
    // keeping everyone is the plain block
    assert_eq!(host(drop_add_residual(x.clone(), &Kept::subset(b, vec![0, 1, 2, 3]), residual)), full);
}

#[test]
fn an_exported_backbone_reloads_to_the_same_features() {
    use dinov2_wgpu::checkpoint::{LoadOptions, read_backbone};
    use dinov2_wgpu::model::DinoVisionTransformer;
    let dir = Scratch::new("export");
    let device = ndarray_device();
    for arch in ["tiny", "vits14_reg4"] {
        let mut config = dinov2_wgpu::config::VitConfig::preset(arch).unwrap();
        config.depth = 2;
        if arch != "tiny" {
            config.ffn = dinov2_wgpu::config::FfnKind::Swiglu;
            config.ffn_hidden = dinov2_wgpu::config::swiglu_hidden(4 * config.embed_dim);
        }
        device.seed(11);
        let mut model = DinoVisionTransformer::new(&config, &device);
        // LayerScale at 1e-5 would hide a wrong block weight: make every block matter
        for block in &mut model.blocks {
            block.ls1 = burn::module::Param::from_tensor(Tensor::ones([config.embed_dim], &device));
            block.ls2 = burn::module::Param::from_tensor(Tensor::ones([config.embed_dim], &device));
        }
        let path = dir.join(&format!("{arch}.safetensors"));
        dinov2_wgpu::checkpoint::export::write_backbone(&model, &path).unwrap();
        let weights = read_backbone(&path, &LoadOptions::default()).unwrap();
        assert_eq!(weights.config, config, "{arch}: architecture from the metadata");
        let reloaded = DinoVisionTransformer::from_weights(&weights, &device).unwrap();
        let size = 2 * config.patch_size * 2;
        let images = Tensor::<4>::random([2, 3, size, size], Distribution::Normal(0.0, 1.0), &device);
        let a = model.forward_features(images.clone());
        let b = reloaded.forward_features(images);
        assert_eq!(host(a.cls), host(b.cls), "{arch}");
        assert_eq!(host(a.patch), host(b.patch), "{arch}");
    }
}

#[test]
fn knn_votes_as_the_official_protocol() {
    use dinov2_wgpu::eval::knn::knn_top1;
    // an independent oracle: full sort of the similarities, softmax weights, vote
    let (n_train, n_test, d, classes) = (300, 80, 6, 4);
    let mut state = 12345u64;
    let mut rand = move || {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
        ((state >> 40) as f32 / (1u64 << 24) as f32) - 0.5
    };
    let train_labels: Vec<usize> = (0..n_train).map(|i| i % classes).collect();
    let test_labels: Vec<usize> = (0..n_test).map(|i| (i * 7) % classes).collect();
    let centre = |c: usize, e: usize| if e % classes == c { 0.6 } else { 0.0 };
    let mut make = |labels: &[usize]| -> Vec<f32> {
        labels.iter().flat_map(|&c| (0..d).map(|e| centre(c, e) + rand()).collect::<Vec<_>>()).collect()
    };
    let train = make(&train_labels);
    let test = make(&test_labels);
    let ks = [1, 5, 20, 100];
    let got = knn_top1(&train, &train_labels, &test, &test_labels, d, &ks, 0.07, &ndarray_device()).unwrap();
    let norm = |v: &[f32]| -> Vec<f64> {
        let n = v.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
        v.iter().map(|x| *x as f64 / n).collect()
    };
    for (slot, &k) in ks.iter().enumerate() {
        let mut correct = 0;
        for t in 0..n_test {
            let q = norm(&test[t * d..(t + 1) * d]);
            let mut sims: Vec<(f64, usize)> = (0..n_train)
                .map(|j| (norm(&train[j * d..(j + 1) * d]).iter().zip(&q).map(|(a, b)| a * b).sum(), j))
                .collect();
            sims.sort_by(|a, b| b.0.total_cmp(&a.0));
            let top = &sims[..k];
            let z: f64 = top.iter().map(|(s, _)| (s / 0.07).exp()).sum();
            let mut votes = vec![0.0; classes];
            for (s, j) in top {
                votes[train_labels[*j]] += (s / 0.07).exp() / z;
            }
            let best = (0..classes).max_by(|a, b| votes[*a].total_cmp(&votes[*b])).unwrap();
            correct += (best == test_labels[t]) as usize;
        }
        let want = correct as f64 / n_test as f64;
        assert_eq!(got[slot].0, k);
        assert!((got[slot].1 - want).abs() < 1e-12, "k={k}: {} vs oracle {want}", got[slot].1);
    }
    // the data is learnable but not trivial: the check is not vacuous
    assert!(got[2].1 > 0.5 && got[2].1 < 1.0, "{got:?}");
}

#[test]
fn eval_knn_and_train_from_the_command_line() {
    let dir = Scratch::new("knn-cli");
    let (train, test) = (dir.join("train"), dir.join("test"));
    image_folder(&train, 2, 10, 5);
    image_folder(&test, 2, 5, 6);
    let json = dir.join("knn.json");
    let run = dinov2(&[
        "eval",
        "knn",
        "--raw-pixels",
        "--train",
        s(&train),
        "--test",
        s(&test),
        "--json",
        s(&json),
        "--quiet",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    // the two classes differ in mean brightness by 120 grey levels: pixels separate them
    assert_eq!(v["top1"]["20"].as_f64(), Some(1.0), "{v}");
    assert_eq!(v["top1"].as_object().unwrap().len(), 4);

    // two steps of training, then k-NN on the run folder (the teacher)
    // with a high-resolution phase: the last step at 21 px global and 14 px local crops
    let mut c = micro_config();
    c.total_steps = 2;
    c.highres = Some(dinov2_wgpu::train::config::HighRes { steps: 1, global_size: 21, local_size: 14 });
    let data = dinov2_wgpu::train::data::Dataset::open(s(&train)).unwrap();
    let sizes = |step| {
        let b = trainer::make_batch(&c, &data, &[0, 1], step).unwrap();
        (b.global_size, b.local_size, b.globals.len(), b.masks[0].len())
    };
    assert_eq!(sizes(0), (14, 7, 2 * 2 * 3 * 14 * 14, 4));
    assert_eq!(sizes(1), (21, 14, 2 * 2 * 3 * 21 * 21, 9));
    let config = dir.join("micro.json");
    write_config(&config, &c);
    let out = dir.join("run");
    let args = train_args(s(&config), s(&train), s(&out));
    let run = dinov2(&args);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let run = dinov2(&[
        "eval",
        "knn",
        "--weights",
        s(&out),
        "--train",
        s(&train),
        "--test",
        s(&test),
        "--backend",
        "ndarray",
        "--json",
        s(&json),
        "--predictions",
        s(&dir.join("predictions.json")),
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert_eq!(stdout.lines().filter(|l| l.contains("top-1")).count(), 4, "{stdout}");
    // --predictions: each test image's label and class per k, whose top-1 is the reported one
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let p: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("predictions.json")).unwrap()).unwrap();
    let labels: Vec<u64> = p["labels"].as_array().unwrap().iter().map(|l| l.as_u64().unwrap()).collect();
    assert_eq!(labels, [0, 0, 0, 0, 0, 1, 1, 1, 1, 1], "{p}");
    assert!(p["images"][7].as_str().unwrap().ends_with("class1/2.png"), "{p}");
    for k in ["10", "20", "100", "200"] {
        let predicted = p["predictions"][format!("k={k}")].as_array().unwrap();
        assert_eq!(predicted.len(), 10, "{p}");
        let right = predicted.iter().zip(&labels).filter(|(a, b)| a.as_u64() == Some(**b)).count();
        assert_eq!(Some(right as f64 / 10.0), v["top1"][k].as_f64(), "k={k}: {p} {v}");
    }
    // a run folder is also what pca takes
    let png = dir.join("pca.png");
    let image = train.join("class0/0.png");
    let run = dinov2(&["pca", "--weights", s(&out), "--size", "28", "--output", s(&png), s(&image)]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));

    // bad input: one line, non-zero exit
    let run =
        dinov2(&["eval", "knn", "--raw-pixels", "--train", s(&dir.join("nowhere")), "--test", s(&test)]);
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    let run = dinov2(&["train", "--data", s(&train), "--out", s(&dir.join("x")), "--batch-size", "1"]);
    assert!(!run.status.success());
    assert!(String::from_utf8_lossy(&run.stderr).contains("batch_size"));
}

#[test]
fn a_schedule_cut_short_without_its_epochs_is_warned_about() {
    for name in ["tiny", "vits14", "vitb14", "vitl14", "vitg14"] {
        let c = TrainConfig::preset(name).unwrap();
        assert_eq!(c.schedule_warnings(), Vec::<String>::new(), "{name}");
    }
    // the 15-minute students of 2026-12-02: the preset's 10500-step schedule cut to 1039 steps
    // with its epoch length of 525 left as it was
    let mut c = TrainConfig::tiny();
    c.total_steps = 1039;
    let warnings = c.schedule_warnings();
    assert_eq!(warnings.len(), 3, "{warnings:?}");
    assert!(
        warnings[0]
            .starts_with("the learning-rate warm-up (warmup_epochs) lasts 1050 of the run's 1039 steps")
    );
    assert!(warnings[1].contains("lasts 2625 of"), "{}", warnings[1]);
    assert!(warnings[2].contains("lasts 525 of"), "{}", warnings[2]);
    // a distillation recipe has no teacher-temperature warm-up to warn about
    c.warmup_teacher_temp = c.teacher_temp;
    assert_eq!(c.schedule_warnings().len(), 2);
    // the epoch length scaled with the steps, as scripts/fashion_mnist_distill.sh now does
    c.epoch_length = 52;
    assert_eq!(c.schedule_warnings(), Vec::<String>::new());
}
