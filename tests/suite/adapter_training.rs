//! The longest tests, training on the wgpu adapter: most of their time is the software
//! adapter compiling kernels. libtest starts tests in name order, and this module's name sorts
//! first so that they start at once, side by side, and the short tests fill the other core
//! around them instead of waiting behind them at the end. Each trains on its own burn device:
//! burn runs a device's work on one thread, and on a shared one they would take turns.

use burn::module::Module;

use crate::common::*;
use crate::multi_device::{assert_equivalent, run, setup};
use crate::training::{image_folder, layer_scale_one, micro_config};

/// Mixed precision on the wgpu adapter (lavapipe has shader-f16): the f16 matrix products
/// change the losses by rounding only (against f32 on the CPU backend), the parameters stay
/// f32, and a step whose scaled gradients overflow f16 is skipped with the scale halved; the
/// CPU backend refuses `mixed`.
#[test]
fn mixed_precision_on_wgpu_tracks_f32_and_skips_overflowing_steps() {
    use burn::tensor::DType;
    use dinov2_wgpu::train::config::Precision;
    use dinov2_wgpu::train::params::{load_named_params, named_params};
    use dinov2_wgpu::train::trainer::{SslModel, TrainState, make_batch, resolve_precision};
    assert_eq!(resolve_precision(Precision::Auto, &ndarray_device()).unwrap(), None);
    let refused = resolve_precision(Precision::Mixed, &ndarray_device()).unwrap_err().to_string();
    assert!(refused.contains("shader-f16"), "{refused}");
    // a handle of its own: the test next to it trains on the default one
    let gpu = wgpu_handle(2);
    if !gpu.supports_dtype(DType::F16) {
        eprintln!("adapter without f16: mixed precision is not offered, auto resolves to f32");
        assert_eq!(resolve_precision(Precision::Auto, &gpu).unwrap(), None);
        return;
    }
    let software = dinov2_wgpu::backend::adapters().iter().all(|a| a.is_software);
    let auto = resolve_precision(Precision::Auto, &gpu).unwrap();
    assert_eq!(auto, (!software).then_some(DType::F16), "auto is mixed on hardware adapters only");
    let dir = Scratch::new("train-mixed");
    let data_dir = dir.join("data");
    image_folder(&data_dir, 1, 8, 4);
    let data = dinov2_wgpu::train::data::Dataset::open(s(&data_dir)).unwrap();
    let mut c = micro_config();
    c.arch.depth = 1;
    let mut weights = named_params(&SslModel::new(&c, &ndarray_device().autodiff())).unwrap();
    layer_scale_one(&mut weights);
    let batches: Vec<_> = (0..3).map(|step| make_batch(&c, &data, &[0, 1, 2, 3], step).unwrap()).collect();
    // the f32 run on the CPU backend: f32 on wgpu equals it (training::the_recipe_gives_the_
    // same_losses_on_wgpu_as_on_ndarray), and each new kernel costs seconds of compilation on
    // a software adapter
    let cpu = ndarray_device();
    let state = |precision: Precision| {
        let mut c = c.clone();
        c.precision = precision;
        let device = if precision == Precision::F32 { &cpu } else { &gpu };
        let mut state = TrainState::new(&c, device).unwrap();
        state.student = load_named_params(state.student, &weights, "").unwrap();
        state.teacher = state.student.valid();
        (c, state)
    };
    let mut losses = Vec::new();
    for precision in [Precision::F32, Precision::Mixed] {
        let (c, mut state) = state(precision);
        assert_eq!(state.compute.is_some(), precision == Precision::Mixed);
        // batch 4 gives gradients far larger than a real batch (the head's bias gets ~300 at
        // scale 1, measured): start where f16 holds them; from GradScaler's 65536 the scale
        // backs off over the first steps (the overflow case below)
        let start_scale = 8.0;
        if let Some(scaler) = state.scaler.as_mut() {
            scaler.scale = start_scale;
        }
        let outcomes: Vec<_> = (0..3).map(|step| state.step(&c, &batches[step], step).unwrap()).collect();
        let run: Vec<f64> = outcomes.iter().map(|o| o.loss.total).collect();
        let skipped = outcomes.iter().filter(|o| o.report.skipped).count();
        if precision == Precision::F32 {
            assert_eq!(skipped, 0, "f32 steps are never skipped");
            assert!(state.scaler.is_none());
        } else {
            // as GradScaler: each overflow halves the scale, good steps count up
            let scaler = state.scaler.expect("a loss scale under mixed precision");
            eprintln!("mixed: {skipped} of 3 steps skipped, scale {}", scaler.scale);
            assert!(skipped < 3, "every mixed-precision step overflowed at scale {start_scale}");
            assert_eq!(scaler.scale, start_scale / (1u64 << skipped) as f64);
            let trailing_good = outcomes.iter().rev().take_while(|o| !o.report.skipped).count();
            assert_eq!(scaler.good_steps, trailing_good as u64);
            let weight = state.student.backbone.blocks[0].attn.qkv.weight.val();
            assert_eq!(weight.dtype(), DType::F32, "the master weights stay f32");
        }
        losses.push(run);
    }
    eprintln!("losses f32 {:?} mixed {:?}", losses[0], losses[1]);
    let worst = losses[0].iter().zip(&losses[1]).map(|(a, b)| (a - b).abs() / a.abs()).fold(0f64, f64::max);
    assert!(worst > 0.0, "mixed precision gave bit-identical losses: the f16 path did not run");
    assert!(worst <= 1e-2, "mixed precision strays {worst:.2e} (relative) from f32: {losses:?}");

    // a scale so large that the f16 gradients overflow: the step is skipped, the scale halves
    let (c, mut state) = state(Precision::Mixed);
    let before = named_params(&state.student).unwrap();
    state.scaler.as_mut().unwrap().scale = 1e30;
    let outcome = state.step(&c, &batches[0], 0).unwrap();
    assert!(outcome.report.skipped, "gradients at scale 1e30 must overflow f16");
    assert_eq!(state.scaler.unwrap().scale, 5e29);
    let after = named_params(&state.student).unwrap();
    assert!(before == after, "a skipped step changed the student");
}

#[test]
fn two_wgpu_handles_train_as_one() {
    let (mut c, data, _dir, init) = setup(4);
    c.arch.depth = 1;
    // no stochastic depth: its per-shard subsets would be new shapes, each compiled anew on
    // the software adapter (the CPU test covers them). Two steps: after one, AdamW's update is
    // the gradient's sign and would hide differences.
    c.drop_path_rate = 0.0;
    let steps = 2;
    let main = wgpu_device();
    let t = std::time::Instant::now();
    let one = run(&c, &data, &init, vec![main.clone()], steps);
    eprintln!("one handle: {:.1} s", t.elapsed().as_secs_f64());
    // adapter 0 twice: a second burn device sharing the wgpu device and queue
    let pair = dinov2_wgpu::backend::devices("0,0").unwrap();
    assert_eq!(pair.len(), 2);
    assert!(pair[0] == main && pair[1] != main, "adapter 0 is the main device, and a second handle on it");
    let t = std::time::Instant::now();
    let two = run(&c, &data, &init, pair, steps);
    eprintln!("two handles: {:.1} s", t.elapsed().as_secs_f64());
    assert_equivalent("2 wgpu handles", &one, &two, 1e-4, 1e-4);
}
