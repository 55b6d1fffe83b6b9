//! Distillation on micro shapes: the frozen teacher never changes, the student's loss falls, the
//! EMA is kept, resume is exact, teachers that cannot pair with the student are refused.

use std::path::PathBuf;

use dinov2_wgpu::model::DinoVisionTransformer;
use dinov2_wgpu::train::TrainConfig;
use dinov2_wgpu::train::config::Distillation;
use dinov2_wgpu::train::params::named_params;
use dinov2_wgpu::train::trainer::{self, TrainState, make_batch, read_checkpoint};

use crate::common::*;
use crate::training::{assert_same_run, image_folder, losses, micro_config, write_config};

/// A teacher wider than the student (192 vs 128, 3 heads): two steps of `dinov2 train`.
fn teacher_run(dir: &Scratch, data: &str) -> std::path::PathBuf {
    teacher_run_of_width(dir, data, 192, false)
}

/// A teacher `width` wide (heads of 64), its iBOT head untied where `untied_ibot`: two steps
/// of `dinov2 train`, in `dir/teacher-{width}`.
fn teacher_run_of_width(dir: &Scratch, data: &str, width: usize, untied_ibot: bool) -> std::path::PathBuf {
    teacher_run_with(dir, data, &format!("teacher-{width}"), |c| {
        c.arch.embed_dim = width;
        c.arch.num_heads = width / 64;
        c.ibot_separate_head = untied_ibot;
    })
}

/// A teacher of the micro recipe as `edit` changes it: two steps of `dinov2 train`, in
/// `dir/name`.
fn teacher_run_with(dir: &Scratch, data: &str, name: &str, edit: impl Fn(&mut TrainConfig)) -> PathBuf {
    let mut c = micro_config();
    edit(&mut c);
    c.total_steps = 2;
    let config = dir.join(&format!("{name}.json"));
    write_config(&config, &c);
    let out = dir.join(name);
    let run = dinov2(&[
        "train",
        "--config",
        s(&config),
        "--data",
        data,
        "--out",
        s(&out),
        "--backend",
        "ndarray",
        "--quiet",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    out
}

/// The student's recipe: micro, no stochastic depth, a constant teacher temperature (fixed
/// targets), a learning rate that moves a micro model within a few steps.
fn student_config(teacher: &std::path::Path) -> TrainConfig {
    let mut c = micro_config();
    c.drop_path_rate = 0.0;
    c.warmup_teacher_temp = c.teacher_temp;
    c.base_lr = 0.05;
    c.warmup_epochs = 0.0;
    c.freeze_last_layer_epochs = 0.0;
    c.total_steps = 40;
    c.distillation = Some(Distillation {
        teacher: teacher.to_path_buf(),
        teacher_cache: false,
        init_heads: false,
        init_backbone: false,
    });
    c
}

#[test]
fn distillation_keeps_the_teacher_frozen_and_the_student_learns() {
    let dir = Scratch::new("distill-loop");
    let data_dir = dir.join("data");
    image_folder(&data_dir, 2, 6, 3);
    let teacher = teacher_run(&dir, s(&data_dir));
    let c = student_config(&teacher);
    let data = dinov2_wgpu::train::data::Dataset::open(s(&data_dir)).unwrap();
    let device = ndarray_device();
    let mut state = TrainState::new(&c, &device).unwrap();
    let frozen = state.frozen_teacher.as_ref().expect("a frozen teacher");
    assert_eq!(frozen.backbone.config.embed_dim, 192);
    let frozen_before = named_params(frozen).unwrap();
    // it is the run's EMA teacher, heads included
    let saved = read_checkpoint(&teacher.join(trainer::CHECKPOINT)).unwrap();
    for (name, value) in &frozen_before {
        assert!(saved.tensors[&format!("teacher.{name}")] == *value, "{name} is not the run's teacher");
    }
    let ema_before = named_params(&state.teacher).unwrap();

    // every patch of both global crops is an iBOT target, and the student sees no mask token
    let batch = make_batch(&c, &data, &[0, 3, 6, 9], 0).unwrap();
    assert!(batch.masks.iter().all(|m| m.iter().all(|&x| x)));
    let mut first = None;
    let mut last = 0.0;
    for step in 0..25 {
        let outcome = state.step(&c, &batch, step).unwrap();
        first.get_or_insert(outcome.loss.clone());
        last = outcome.loss.total;
    }
    let first = first.unwrap();
    eprintln!("distillation loss on one batch: {:.4} -> {last:.4}", first.total);
    assert!(
        last < first.total - 0.05 * first.total.abs(),
        "the loss did not fall: {} -> {last}",
        first.total
    );
    assert!(first.ibot > 0.0 && first.dino_global > 0.0 && first.dino_local > 0.0, "{first:?}");

    let frozen_after = named_params(state.frozen_teacher.as_ref().unwrap()).unwrap();
    for (name, value) in &frozen_before {
        assert!(frozen_after[name] == *value, "the frozen teacher's {name} changed");
    }
    // the student's EMA is kept (and is what the run releases)
    let ema_after = named_params(&state.teacher).unwrap();
    let moved = ema_before.iter().filter(|(name, v)| ema_after[*name] != **v).count();
    assert!(moved > ema_before.len() / 2, "only {moved} of {} EMA tensors moved", ema_before.len());
}

type Params = std::collections::BTreeMap<String, dinov2_wgpu::train::params::HostTensor>;

/// The distillation state of `c` with `flag` set on its distillation, and the parameters of
/// the student made without it, of the flagged student, of its EMA and of the frozen teacher.
fn flagged_init(
    c: &mut TrainConfig,
    device: &burn::tensor::Device,
    flag: impl Fn(&mut Distillation),
) -> (TrainState, [Params; 4]) {
    let plain = TrainState::new(c, device).unwrap();
    flag(c.distillation.as_mut().unwrap());
    let state = TrainState::new(c, device).unwrap();
    let params = [
        named_params(&plain.student).unwrap(),
        named_params(&state.student).unwrap(),
        named_params(&state.teacher).unwrap(),
        named_params(state.frozen_teacher.as_ref().unwrap()).unwrap(),
    ];
    (state, params)
}

/// Fifteen steps of `state` on one batch of the images in `data_dir`: the loss falls.
fn assert_loss_falls(mut state: TrainState, c: &TrainConfig, data_dir: &std::path::Path) {
    let data = dinov2_wgpu::train::data::Dataset::open(s(data_dir)).unwrap();
    let batch = make_batch(c, &data, &[0, 3, 6, 9], 0).unwrap();
    let first = state.step(c, &batch, 0).unwrap().loss.total;
    let last = (1..15).map(|t| state.step(c, &batch, t).unwrap().loss.total).last().unwrap();
    assert!(last < first, "the loss did not fall: {first} -> {last}");
}

#[test]
fn the_students_heads_can_start_as_the_teachers() {
    let dir = Scratch::new("distill-init-heads");
    let data_dir = dir.join("data");
    image_folder(&data_dir, 2, 6, 5);
    let device = ndarray_device();
    // a teacher as wide as the student (128), both with untied iBOT heads
    let teacher = teacher_run_of_width(&dir, s(&data_dir), 128, true);
    let mut c = student_config(&teacher);
    c.ibot_separate_head = true;
    let (state, [plain_student, student, ema, frozen]) =
        flagged_init(&mut c, &device, |d| d.init_heads = true);
    let heads: Vec<&String> = frozen.keys().filter(|k| k.contains("_head.")).collect();
    assert!(
        heads.iter().any(|k| k.starts_with("ibot_head."))
            && heads.iter().any(|k| k.starts_with("dino_head."))
    );
    for name in &heads {
        assert!(student[*name] == frozen[*name], "the student's {name} is not the teacher's");
        assert!(ema[*name] == frozen[*name], "the student's EMA {name} is not the teacher's");
        // (the weight-norm magnitudes start at 1 and stay there while the last layer is frozen)
        if !name.contains("last_layer_g") {
            assert!(
                plain_student[*name] != frozen[*name],
                "without the flag the student's {name} is the teacher's"
            );
        }
    }
    // the backbone still starts from the seed, as without the flag
    for (name, value) in plain_student.iter().filter(|(k, _)| k.starts_with("backbone.")) {
        assert!(student[name] == *value, "the student's {name} moved");
        assert!(frozen[name] != *value, "the teacher's {name} equals a fresh one");
    }
    // it trains: a few steps, the loss falls
    assert_loss_falls(state, &c, &data_dir);

    // a teacher of another width cannot lend its heads: refused in one line, before a run starts
    let wide = teacher_run(&dir, s(&data_dir));
    let mut c = student_config(&wide);
    c.distillation.as_mut().unwrap().init_heads = true;
    let err = TrainState::new(&c, &device).err().expect("a 192-wide teacher's heads do not fit").to_string();
    assert!(err.contains("--init-heads-from-teacher") && err.contains("dino_head"), "{err}");
    let mut student = c.clone();
    student.distillation = None;
    let config = dir.join("student.json");
    write_config(&config, &student);
    let out = dir.join("refused");
    refused(
        &[
            "distill",
            "--teacher",
            s(&wide),
            "--config",
            s(&config),
            "--data",
            s(&data_dir),
            "--out",
            s(&out),
            "--init-heads-from-teacher",
        ],
        "the teacher is 192 wide, the student 128",
    );
    // nor can a backbone alone, which has no trained heads
    let backbone = dir.join("backbone.safetensors");
    dinov2_wgpu::checkpoint::export::write_backbone(
        &DinoVisionTransformer::new(&micro_config().arch, &device),
        &backbone,
    )
    .unwrap();
    refused(
        &[
            "distill",
            "--teacher",
            s(&backbone),
            "--config",
            s(&config),
            "--data",
            s(&data_dir),
            "--out",
            s(&out),
            "--init-heads-from-teacher",
        ],
        "needs a teacher run of this project",
    );
    assert!(!out.join(trainer::CHECKPOINT).exists());
}

#[test]
fn the_students_backbone_can_start_from_a_deeper_teachers_blocks() {
    // the blocks taken: as many as the student has, increasing, first and last included
    for (depth, teacher_depth) in [(2, 2), (2, 3), (4, 6), (4, 4), (3, 40), (12, 40)] {
        let blocks = trainer::teacher_blocks(depth, teacher_depth);
        assert_eq!(blocks.len(), depth);
        assert!(blocks.windows(2).all(|w| w[0] < w[1]), "{depth} of {teacher_depth}: {blocks:?}");
        assert_eq!((blocks[0], blocks[depth - 1]), (0, teacher_depth - 1), "{blocks:?}");
        if depth == teacher_depth {
            assert!(blocks.iter().enumerate().all(|(i, &b)| i == b));
        }
    }
    let dir = Scratch::new("distill-init-backbone");
    let data_dir = dir.join("data");
    image_folder(&data_dir, 2, 6, 7);
    let device = ndarray_device();
    // a teacher as wide as the student (128), three blocks to the student's two
    let teacher = teacher_run_with(&dir, s(&data_dir), "teacher-deep", |c| c.arch.depth = 3);
    let mut c = student_config(&teacher);
    let (state, [plain_student, student, ema, frozen]) =
        flagged_init(&mut c, &device, |d| d.init_backbone = true);
    let blocks = trainer::teacher_blocks(2, 3);
    let mut from_blocks = 0;
    for (name, value) in student.iter().filter(|(k, _)| k.starts_with("backbone.")) {
        let source = match name.strip_prefix("backbone.blocks.").and_then(|r| r.split_once('.')) {
            Some((i, tail)) => {
                from_blocks += 1;
                format!("backbone.blocks.{}.{tail}", blocks[i.parse::<usize>().unwrap()])
            }
            None => name.clone(),
        };
        assert!(*value == frozen[&source], "the student's {name} is not the teacher's {source}");
        assert!(ema[name] == frozen[&source], "the student's EMA {name} is not the teacher's {source}");
        assert!(plain_student[name] != *value, "without the flag the student's {name} is the teacher's");
    }
    assert!(from_blocks > 10, "{from_blocks} block tensors");
    // the heads still start from the seed
    for (name, value) in plain_student.iter().filter(|(k, _)| k.contains("_head.")) {
        assert!(student[name] == *value, "the student's {name} moved");
    }
    // it trains: a few steps, the loss falls
    assert_loss_falls(state, &c, &data_dir);

    // teachers that cannot lend their blocks are refused in one line, before a run starts
    let mut student = c.clone();
    student.distillation = None;
    let config = dir.join("student.json");
    write_config(&config, &student);
    student.arch.depth = 4;
    let deep = dir.join("deep-student.json");
    write_config(&deep, &student);
    let wide = teacher_run(&dir, s(&data_dir));
    for (teacher, config, says) in [
        (&wide, &config, "the teacher's width is 192, the student's 128"),
        (&teacher, &deep, "the teacher has 3 blocks, the student 4"),
    ] {
        let out = dir.join("refused");
        refused(
            &[
                "distill",
                "--teacher",
                s(teacher),
                "--config",
                s(config),
                "--data",
                s(&data_dir),
                "--out",
                s(&out),
                "--init-backbone-from-teacher",
            ],
            says,
        );
        assert!(!out.join(trainer::CHECKPOINT).exists());
    }
}

/// A scratch folder `name` holding 12 images (`seed`) and a teacher run on them: the folder,
/// the images' folder and the teacher run.
fn with_teacher(name: &str, seed: u64) -> (Scratch, PathBuf, PathBuf) {
    let dir = Scratch::new(name);
    let data_dir = dir.join("data");
    image_folder(&data_dir, 2, 6, seed);
    let teacher = teacher_run(&dir, s(&data_dir));
    (dir, data_dir, teacher)
}

/// For the command-line tests: a scratch folder `name` holding 12 images (`seed`), a teacher
/// run on them and the student's recipe of `steps` steps as student.json, without a
/// distillation section (`--teacher` sets it). Returns the folder, data, teacher and recipe.
fn cli_setup(name: &str, seed: u64, steps: usize) -> (Scratch, PathBuf, PathBuf, PathBuf) {
    let (dir, data_dir, teacher) = with_teacher(name, seed);
    let mut c = student_config(&teacher);
    c.total_steps = steps;
    c.distillation = None;
    let config = dir.join("student.json");
    write_config(&config, &c);
    (dir, data_dir, teacher, config)
}

#[test]
fn distill_from_the_command_line_resumes_exactly_and_refuses_unpairable_teachers() {
    let (dir, data_dir, teacher, config) = cli_setup("distill-cli", 4, 6);
    let data = s(&data_dir);
    let args = |out: &std::path::Path| -> Vec<String> {
        ["distill", "--teacher", s(&teacher), "--config", s(&config), "--data", data, "--out", s(out)]
            .iter()
            .chain(&["--backend", "ndarray", "--quiet"])
            .map(|a| a.to_string())
            .collect()
    };
    let run_with = |extra: &[&str], out: &std::path::Path| {
        let mut a = args(out);
        a.extend(extra.iter().map(|x| x.to_string()));
        let refs: Vec<&str> = a.iter().map(String::as_str).collect();
        dinov2(&refs)
    };
    let straight = dir.join("straight");
    let run = run_with(&[], &straight);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_eq!(losses(&straight).len(), 6);
    let saved = read_checkpoint(&straight.join(trainer::CHECKPOINT)).unwrap();
    assert_eq!(saved.config.distillation.as_ref().map(|d| d.teacher.clone()), Some(teacher.clone()));
    // the frozen teacher is not part of the student's checkpoint
    assert!(
        saved
            .tensors
            .keys()
            .all(|k| k.starts_with("student.") || k.starts_with("teacher.") || k.starts_with("optimizer."))
    );
    assert_eq!(saved.tensors["teacher.backbone.cls_token"].shape, vec![1, 1, 128]);

    let stopped = dir.join("stopped");
    assert!(run_with(&["--steps", "2"], &stopped).status.success());
    let run = run_with(&["--resume"], &stopped);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    assert_same_run(&straight, &stopped, "distill: stop + resume");
    // a run started without the teacher cache does not resume with it (its own recipe, no
    // --config: the flag would otherwise be dropped)
    refused(
        &[
            "distill",
            "--teacher",
            s(&teacher),
            "--data",
            data,
            "--out",
            s(&stopped),
            "--resume",
            "--teacher-cache",
        ],
        "started without --teacher-cache",
    );

    // a backbone-only teacher (heads made from the seed) with the student's patch size works;
    // one with another patch size is refused in one line
    let mut arch = micro_config().arch;
    let device = ndarray_device();
    let backbone = dir.join("backbone.safetensors");
    dinov2_wgpu::checkpoint::export::write_backbone(&DinoVisionTransformer::new(&arch, &device), &backbone)
        .unwrap();
    let run = dinov2(&[
        "distill",
        "--teacher",
        s(&backbone),
        "--config",
        s(&config),
        "--data",
        data,
        "--out",
        s(&dir.join("from-backbone")),
        "--steps",
        "2",
        "--backend",
        "ndarray",
        "--quiet",
    ]);
    assert!(run.status.success(), "{}", String::from_utf8_lossy(&run.stderr));
    arch.patch_size = 14;
    arch.pos_grid = 1;
    let wrong = dir.join("patch14.safetensors");
    dinov2_wgpu::checkpoint::export::write_backbone(&DinoVisionTransformer::new(&arch, &device), &wrong)
        .unwrap();
    for teacher in [wrong, dir.join("nowhere")] {
        let out = dir.join("refused");
        let args =
            ["distill", "--teacher", s(&teacher), "--config", s(&config), "--data", data, "--out", s(&out)];
        refused(&args, s(&teacher));
    }
    assert!(!dir.join("refused").join(trainer::CHECKPOINT).exists());
}

/// `args` (on the CPU backend, quietly) fail with one line of error that contains `says`.
fn refused(args: &[&str], says: &str) {
    let mut all = args.to_vec();
    all.extend(["--backend", "ndarray", "--quiet"]);
    let run = dinov2(&all);
    assert!(!run.status.success(), "{args:?} succeeded");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains(says), "{stderr}");
}

#[test]
fn distillation_on_two_cpu_devices_equals_one() {
    let dir = Scratch::new("distill-devices");
    let data_dir = dir.join("data");
    image_folder(&data_dir, 2, 6, 8);
    let teacher = teacher_run(&dir, s(&data_dir));
    let c = student_config(&teacher);
    let data = dinov2_wgpu::train::data::Dataset::open(s(&data_dir)).unwrap();
    let run = |n: usize| {
        let device = ndarray_device();
        let mut state = TrainState::new(&c, &device).unwrap().on_devices(vec![device; n]).unwrap();
        let mut losses = Vec::new();
        for step in 0..3 {
            let batch = make_batch(&c, &data, &[0, 3, 6, 9], step).unwrap();
            losses.push(state.step(&c, &batch, step).unwrap().loss);
        }
        (losses, named_params(&state.teacher).unwrap())
    };
    let (one, ema_one) = run(1);
    let (two, ema_two) = run(2);
    for (a, b) in one.iter().zip(&two) {
        for (x, y) in [(a.total, b.total), (a.dino_local, b.dino_local), (a.ibot, b.ibot), (a.koleo, b.koleo)]
        {
            assert!((x - y).abs() <= 1e-5 * (1.0 + x.abs()), "one device {a:?}, two {b:?}");
        }
    }
    // the released EMA (key biases aside: see multi_device.rs)
    for (name, t) in &ema_one {
        if name.ends_with("attn.qkv.bias") {
            continue;
        }
        let err = max_abs_diff(&t.data, &ema_two[name].data);
        assert!(err <= 1e-5, "{name} differs by {err}");
    }
}

/// With whole-image global crops and no colour augmentation, the cached teacher's outputs are
/// exactly what the teacher computes on the crops: the same logits, the same steps.
#[test]
fn the_teacher_cache_gives_the_live_teachers_targets_on_whole_image_crops() {
    let (_dir, data_dir, teacher) = with_teacher("distill-cache", 5);
    let mut live = student_config(&teacher);
    live.crops.global_scale = (1.0, 1.0);
    live.crops.jitter_prob = 0.0;
    live.crops.grayscale_prob = 0.0;
    live.crops.solarize_prob = 0.0;
    live.crops.blur_kernel = 1;
    let mut cached = live.clone();
    cached.distillation.as_mut().unwrap().teacher_cache = true;
    let data = dinov2_wgpu::train::data::Dataset::open(s(&data_dir)).unwrap();
    let device = ndarray_device();
    let mut with_cache =
        TrainState::new(&cached, &device).unwrap().on_devices(vec![device.clone(); 2]).unwrap();
    let mut done = 0;
    with_cache.cache_teacher(&data, &cached, |n| done += n).unwrap();
    assert_eq!(done, data.len());
    let mut without = TrainState::new(&live, &device).unwrap();
    assert!(without.teacher_cache.is_none());

    let frozen = without.frozen_teacher.as_ref().unwrap();
    let cache = with_cache.teacher_cache.as_ref().unwrap();
    let mut flips = std::collections::BTreeSet::new();
    for step in 0..3 {
        let batch = make_batch(&cached, &data, &[1, 4, 7, 10], step).unwrap();
        flips.extend(batch.global_flips.iter().copied());
        let want = trainer::teacher_logits(&cached, frozen, &batch, &device);
        let got = cache.logits(&cached, frozen, &batch, &device);
        for (name, a, b) in [("cls", want.cls, got.cls), ("patch", want.patch.unwrap(), got.patch.unwrap())] {
            let (a, b) = (host(a), host(b));
            let err = max_abs_diff(&a, &b);
            assert!(err <= 1e-4, "{name} logits differ by {err} at step {step}");
        }
    }
    assert_eq!(flips.len(), 2, "the batches hold mirrored and unmirrored crops");
    for step in 0..3 {
        let batch = make_batch(&cached, &data, &[0, 5, 6, 11], step).unwrap();
        let (a, b) = (
            without.step(&live, &batch, step).unwrap().loss,
            with_cache.step(&cached, &batch, step).unwrap().loss,
        );
        for (x, y) in [
            (a.total, b.total),
            (a.dino_local, b.dino_local),
            (a.dino_global, b.dino_global),
            (a.ibot, b.ibot),
        ] {
            assert!((x - y).abs() <= 1e-4 * (1.0 + x.abs()), "step {step}: live {a:?}, cached {b:?}");
        }
    }

    // a cache cannot hold a highres phase's larger crops
    let mut highres = cached.clone();
    highres.highres = Some(dinov2_wgpu::train::config::HighRes { steps: 1, global_size: 28, local_size: 14 });
    assert!(highres.validate().unwrap_err().contains("teacher_cache"));
}

/// `distill --teacher-cache` records the cache in the run's recipe and resumes exactly (the
/// cache is rebuilt from the same teacher).
#[test]
fn distill_with_the_teacher_cache_from_the_command_line_resumes_exactly() {
    let (dir, data_dir, teacher, config) = cli_setup("distill-cache-cli", 6, 4);
    let data = s(&data_dir);
    let run = |extra: &[&str], out: &std::path::Path| {
        let mut a = vec!["distill", "--teacher", s(&teacher), "--config", s(&config), "--teacher-cache"];
        a.extend(["--data", data, "--out", s(out), "--backend", "ndarray", "--quiet"]);
        a.extend(extra);
        let o = dinov2(&a);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let straight = dir.join("straight");
    let stderr = run(&[], &straight);
    assert!(stderr.contains("cached the teacher's outputs for 12 images"), "{stderr}");
    let saved = read_checkpoint(&straight.join(trainer::CHECKPOINT)).unwrap();
    assert!(saved.config.distillation.as_ref().is_some_and(|d| d.teacher_cache));
    let stopped = dir.join("stopped");
    run(&["--steps", "2"], &stopped);
    run(&["--resume"], &stopped);
    assert_same_run(&straight, &stopped, "distill --teacher-cache: stop + resume");
    // --fit-minutes: the cache is built once, before the speed probe that sizes the schedule
    let fitted = dir.join("fitted");
    let stderr = run(&["--fit-minutes", "0.05"], &fitted);
    assert_eq!(stderr.matches("cached the teacher's outputs").count(), 1, "{stderr}");
    let (cached, fit) = (stderr.find("cached the teacher").unwrap(), stderr.find("fitted the schedule"));
    assert!(fit.is_some_and(|f| f > cached), "{stderr}");
    let c = dinov2_wgpu::train::TrainConfig::from_json_file(&fitted.join(trainer::CONFIG)).unwrap();
    assert!(c.distillation.as_ref().is_some_and(|d| d.teacher_cache));
}
