//! Training over several devices (`--devices`): a step on two or three shards of the batch
//! gives the losses and parameters of the same step on one device; KoLeo's gradient written
//! out equals autodiff's. The same on two wgpu handles is in `adapter_training`.

use burn::tensor::{Device, Distribution, Tensor};
use dinov2_wgpu::train::TrainConfig;
use dinov2_wgpu::train::data::Dataset;
use dinov2_wgpu::train::params::{HostTensor, load_named_params, named_params};
use dinov2_wgpu::train::trainer::{TrainState, make_batch};

use crate::common::*;
use crate::training::{image_folder, layer_scale_one, micro_config};

/// Run `steps` steps of `c` from the weights `init` with each batch split over `devices`
/// (`devices[0]` the main device): the losses of every step and the final student, teacher.
pub(crate) fn run(
    c: &TrainConfig,
    data: &Dataset,
    init: &std::collections::BTreeMap<String, HostTensor>,
    devices: Vec<Device>,
    steps: usize,
) -> (Vec<[f64; 5]>, std::collections::BTreeMap<String, HostTensor>) {
    let mut state = TrainState::new(c, &devices[0]).unwrap().on_devices(devices).unwrap();
    state.student = load_named_params(state.student, init, "").unwrap();
    state.teacher = load_named_params(state.teacher, init, "").unwrap();
    let mut losses = Vec::new();
    for step in 0..steps {
        let indices: Vec<usize> = (0..c.batch_size).map(|i| (step * c.batch_size + i) % data.len()).collect();
        let batch = make_batch(c, data, &indices, step).unwrap();
        let l = state.step(c, &batch, step).unwrap().loss;
        losses.push([l.total, l.dino_local, l.dino_global, l.koleo, l.ibot]);
    }
    let mut params = std::collections::BTreeMap::new();
    for (prefix, module) in [("student.", &state.student), ("teacher.", &state.teacher)] {
        for (k, v) in named_params(module).unwrap() {
            params.insert(format!("{prefix}{k}"), v);
        }
    }
    (losses, params)
}

/// The recipe of these tests: micro shapes with stochastic depth, KoLeo and iBOT, and
/// LayerScale at 1 instead of 1e-5 (with 1e-5 every CLS feature is nearly the same and KoLeo's
/// neighbours are ties decided by rounding). Returns the initial weights too.
pub(crate) fn setup(
    batch: usize,
) -> (TrainConfig, Dataset, Scratch, std::collections::BTreeMap<String, HostTensor>) {
    let dir = Scratch::new(&format!("multi-device-{batch}"));
    let data_dir = dir.join("data");
    image_folder(&data_dir, 2, 8, 11);
    let data = Dataset::open(s(&data_dir)).unwrap();
    let mut c = micro_config();
    c.batch_size = batch;
    c.base_lr = 0.05;
    c.freeze_last_layer_epochs = 0.0;
    let state = TrainState::new(&c, &ndarray_device()).unwrap();
    let mut init = named_params(&state.student).unwrap();
    layer_scale_one(&mut init);
    (c, data, dir, init)
}

/// Largest `|a − b| / (1 + |b|)` over every parameter, and its name. Not the key biases
/// (the middle third of `attn.qkv.bias`): their exact gradient is zero (a shift of every score
/// of a query leaves its softmax unchanged), so what they get is rounding noise, which AdamW
/// scales up to steps of the learning rate; [`key_bias_diff`] bounds them.
fn param_diff(
    a: &std::collections::BTreeMap<String, HostTensor>,
    b: &std::collections::BTreeMap<String, HostTensor>,
) -> (f32, String) {
    let mut worst = (0.0f32, String::new());
    assert_eq!(a.keys().collect::<Vec<_>>(), b.keys().collect::<Vec<_>>());
    for (name, x) in a {
        let third = x.data.len() / 3;
        for (i, (p, q)) in x.data.iter().zip(&b[name].data).enumerate() {
            if name.ends_with("attn.qkv.bias") && (third..2 * third).contains(&i) {
                continue;
            }
            let d = (p - q).abs() / (1.0 + q.abs());
            if d > worst.0 || d.is_nan() {
                worst = (d, name.clone());
            }
        }
    }
    worst
}

/// Largest difference of the key biases (see [`param_diff`]).
fn key_bias_diff(
    a: &std::collections::BTreeMap<String, HostTensor>,
    b: &std::collections::BTreeMap<String, HostTensor>,
) -> f32 {
    let mut worst = 0.0f32;
    for (name, x) in a.iter().filter(|(n, _)| n.ends_with("attn.qkv.bias")) {
        let third = x.data.len() / 3;
        for (p, q) in x.data[third..2 * third].iter().zip(&b[name].data[third..2 * third]) {
            worst = worst.max((p - q).abs());
        }
    }
    worst
}

pub(crate) fn assert_equivalent(
    what: &str,
    one: &(Vec<[f64; 5]>, std::collections::BTreeMap<String, HostTensor>),
    many: &(Vec<[f64; 5]>, std::collections::BTreeMap<String, HostTensor>),
    loss_tol: f64,
    param_tol: f32,
) {
    for (step, (a, b)) in one.0.iter().zip(&many.0).enumerate() {
        for (part, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() <= loss_tol * (1.0 + x.abs()),
                "{what}: step {step} loss part {part}: one device {x}, several {y}\n{:?}\n{:?}",
                one.0,
                many.0
            );
        }
    }
    let (diff, name) = param_diff(&many.1, &one.1);
    eprintln!("{what}: largest relative parameter difference {diff:e} ({name})");
    assert!(diff <= param_tol, "{what}: {name} differs by {diff} (relative)");
    // at most one learning-rate-sized AdamW step per step (lr ≤ 0.004 here)
    let keys = key_bias_diff(&many.1, &one.1);
    eprintln!("{what}: key biases differ by at most {keys:e}");
    assert!(keys <= 0.004 * one.0.len() as f32, "{what}: key biases differ by {keys}");
}

#[test]
fn two_and_three_cpu_devices_train_as_one() {
    let (c, data, _dir, init) = setup(6);
    let steps = 4;
    let devices = |n: usize| vec![ndarray_device(); n];
    let one = run(&c, &data, &init, devices(1), steps);
    // the parameters move: the comparison below is not between two untouched models
    let (moved, _) = param_diff(
        &one.1,
        &init
            .iter()
            .flat_map(|(k, v)| [(format!("student.{k}"), v.clone()), (format!("teacher.{k}"), v.clone())])
            .collect(),
    );
    assert!(moved > 1e-3, "training moved the parameters by {moved} only");
    let two = run(&c, &data, &init, devices(2), steps);
    assert_equivalent("2 devices × 3 images", &one, &two, 1e-5, 1e-5);
    // 6 images over 4 devices: shards of 2, 2, 1, 1
    let four = run(&c, &data, &init, devices(4), steps);
    assert_equivalent("4 devices, uneven shards", &one, &four, 1e-5, 1e-5);
}

#[test]
fn koleo_gradient_written_out_equals_autodiff() {
    let device = ndarray_device();
    device.seed(3);
    for (n, d) in [(2, 8), (5, 16), (17, 32)] {
        let x = Tensor::<2>::random([n, d], Distribution::Normal(0.0, 1.0), &device);
        let xa = Tensor::<2>::from_inner(x.clone()).require_grad();
        let loss = dinov2_wgpu::kernels::koleo_loss(xa.clone());
        let grads = loss.clone().backward();
        let want = host(xa.grad(&grads).unwrap());
        let want_loss = host(loss.inner());
        // the written-out gradient is with respect to x̂; through the normalisation by autodiff
        let (value, g) = dinov2_wgpu::train::trainer::koleo_gradient(x.clone());
        let xb = Tensor::<2>::from_inner(x).require_grad();
        let surrogate =
            (Tensor::<2>::from_inner(g) * dinov2_wgpu::kernels::l2_normalize_rows(xb.clone())).sum();
        let got = host(xb.grad(&surrogate.backward()).unwrap());
        assert_close(&format!("KoLeo value n={n}"), &host(value), &want_loss, 1e-5);
        assert_close(&format!("KoLeo gradient n={n}"), &got, &want, 1e-5);
    }
}

#[test]
fn devices_are_parsed_with_one_line_errors() {
    assert_eq!(dinov2_wgpu::backend::devices("cpu:3").unwrap().len(), 3);
    for (spec, needle) in [("cpu:0", "cpu:N"), ("gpu", "adapter indices"), ("99", "no wgpu adapter 99")] {
        let e = dinov2_wgpu::backend::devices(spec).unwrap_err().to_string();
        assert!(e.contains(needle) && !e.contains('\n'), "{spec}: {e}");
    }
}

#[test]
fn train_on_two_cpu_devices_from_the_cli_then_resume_on_one() {
    use crate::training::{losses, write_config};
    let dir = Scratch::new("multi-device-cli");
    let data = dir.join("data");
    image_folder(&data, 2, 6, 5);
    let config = dir.join("micro.json");
    let mut c = micro_config();
    c.total_steps = 4;
    write_config(&config, &c);
    let (config, data) = (s(&config), s(&data));
    let straight = dir.join("straight");
    let split = dir.join("split");
    let base = |out: &std::path::Path| {
        vec!["train", "--config", config, "--data", data, "--out", s(out), "--quiet"]
            .into_iter()
            .map(String::from)
            .collect::<Vec<_>>()
    };
    let run = |args: Vec<String>| {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = dinov2(&refs);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stderr).to_string()
    };
    run([base(&straight), vec!["--devices".into(), "cpu:1".into()]].concat());
    let stderr =
        run([base(&split), vec!["--devices".into(), "cpu:2".into(), "--steps".into(), "2".into()]].concat());
    assert!(stderr.contains("2 devices, a thread each, 2 images per step each"), "{stderr}");
    // the devices are not part of the recipe: the run resumes on one
    run([base(&split), vec!["--devices".into(), "cpu:1".into(), "--resume".into()]].concat());
    let (a, b) = (losses(&straight), losses(&split));
    assert_eq!(a.len(), 4);
    assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), b.iter().map(|x| x.0).collect::<Vec<_>>());
    for ((step, x), (_, y)) in a.iter().zip(&b) {
        assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "step {step}: one device {x}, two then one {y}");
    }
    // more devices than images per step: a one-line error
    let out = dinov2(
        &[
            &base(&dir.join("many"))[..].iter().map(String::as_str).collect::<Vec<_>>()[..],
            &["--devices", "cpu:5"],
        ]
        .concat(),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("every device needs at least one"), "{err}");
}

#[test]
fn gradient_checkpointing_gives_the_same_steps() {
    let (c, data, _dir, init) = setup(4);
    let run_with = |checkpointing: bool| {
        use burn::tensor::GradientCheckpointingStrategy;
        let mut state = TrainState::new_with(&c, &ndarray_device(), checkpointing).unwrap();
        state.student = load_named_params(state.student, &init, "").unwrap();
        state.teacher = load_named_params(state.teacher, &init, "").unwrap();
        let mut losses = Vec::new();
        for step in 0..3 {
            let batch = make_batch(&c, &data, &[0, 3, 6, 9], step).unwrap();
            losses.push(state.step(&c, &batch, step).unwrap().loss.total);
        }
        // the strategy is on, and the optimizer's new parameters keep it
        let strategy =
            state.student.backbone.blocks[0].attn.qkv.weight.val().gradient_checkpointing_strategy();
        assert_eq!(
            strategy == Some(GradientCheckpointingStrategy::Balanced),
            checkpointing,
            "checkpointing {checkpointing}: strategy {strategy:?}"
        );
        (losses, named_params(&state.student).unwrap())
    };
    let (plain_losses, plain) = run_with(false);
    let (losses, params) = run_with(true);
    for (a, b) in plain_losses.iter().zip(&losses) {
        assert!((a - b).abs() <= 1e-6 * (1.0 + a.abs()), "losses {plain_losses:?} vs {losses:?}");
    }
    for (name, t) in &plain {
        let err = max_abs_diff(&t.data, &params[name].data);
        assert!(err <= 1e-6, "{name} differs by {err}");
    }
}
