//! The training loop, top to bottom (official `dinov2/train/train.py` and
//! `ssl_meta_arch.py` `forward_backward`): data → crops and masks → teacher targets → student
//! forward → losses → AdamW step → EMA teacher → metrics, checkpoints.
//!
//! Every random choice after the initialisation (data order, augmentations, masks, dropped
//! samples) is drawn from a generator seeded by `(seed, step)`, so a resumed run repeats the
//! uninterrupted one exactly.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::Module;
use burn::tensor::{Bool, DType, Device, Int, Tensor, TensorData};
use indicatif::{ProgressBar, ProgressStyle};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use super::augment::multi_crop;
use super::config::{Centering, Precision, TrainConfig};
use super::data::Dataset;
use super::head::DinoHead;
use super::loss;
use super::mask::{MaskGenerator, collate_masks, mask_weights};
use super::optim::{AdamW, GroupRules, LossScaler, StepRates};
use super::params::{HostTensor, ema_update, load_named_params, named_params};
use super::schedule::Cosine;
use crate::error::{Error, Result};
use crate::model::DinoVisionTransformer;
use crate::model::block::BlockDrop;
use crate::model::precision;

/// The student (and, as an EMA copy, the teacher): backbone and heads.
#[derive(Module, Debug)]
pub struct SslModel {
    pub backbone: DinoVisionTransformer,
    pub dino_head: DinoHead,
    /// Present when the iBOT head is untied.
    pub ibot_head: Option<DinoHead>,
}

impl SslModel {
    pub fn new(c: &TrainConfig, device: &Device) -> Self {
        let d = c.arch.embed_dim;
        Self {
            backbone: DinoVisionTransformer::new(&c.arch, device),
            dino_head: DinoHead::new(d, &c.dino_head, device),
            ibot_head: c.ibot_separate_head.then(|| DinoHead::new(d, &c.ibot_head, device)),
        }
    }

    pub fn ibot_head(&self) -> &DinoHead {
        self.ibot_head.as_ref().unwrap_or(&self.dino_head)
    }
}

/// The schedules of a run (official `build_schedulers`).
pub struct Schedules {
    pub lr: Cosine,
    /// The lr schedule with its first `last_layer_freeze` steps zeroed (official:
    /// `last_layer_lr_schedule.schedule[:freeze_last_layer_epochs * epoch_length] = 0`).
    pub last_layer_freeze: usize,
    pub weight_decay: Cosine,
    pub momentum: Cosine,
    pub teacher_temp: Cosine,
}

impl Schedules {
    pub fn new(c: &TrainConfig) -> Self {
        let total = c.total_steps;
        let warmup = c.epochs_to_steps(c.warmup_epochs);
        let lr = Cosine::new(c.lr(), c.min_lr, total).with_warmup(warmup, 0.0);
        Self {
            lr,
            last_layer_freeze: c.epochs_to_steps(c.freeze_last_layer_epochs),
            weight_decay: Cosine::new(c.weight_decay, c.weight_decay_end, total),
            momentum: Cosine::new(c.momentum_teacher, c.final_momentum_teacher, total),
            teacher_temp: Cosine::new(c.teacher_temp, c.teacher_temp, total)
                .with_warmup(c.epochs_to_steps(c.warmup_teacher_temp_epochs), c.warmup_teacher_temp),
        }
    }

    /// The heads' last-layer lr: zero while frozen, else the lr.
    pub fn last_layer_lr(&self, step: usize) -> f64 {
        if step < self.last_layer_freeze { 0.0 } else { self.lr.at(step) }
    }
}

/// The loss of one step and its parts.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct LossParts {
    pub total: f64,
    pub dino_local: f64,
    pub dino_global: f64,
    pub koleo: f64,
    pub ibot: f64,
}

/// One step's inputs, made on the host.
pub struct Batch {
    /// `[2B, 3, G, G]`, crop-major (all first global crops, then all second ones).
    pub globals: Vec<f32>,
    /// `[n_local · B, 3, L, L]`, crop-major.
    pub locals: Vec<f32>,
    pub global_size: usize,
    pub local_size: usize,
    /// One mask per global crop (row-major patch grid), official collate order: the patch
    /// tokens the iBOT loss covers (all of them in distillation, where the student sees no
    /// mask token).
    pub masks: Vec<Vec<bool>>,
    /// Efficient stochastic depth: the kept samples of every block, for the global and the
    /// local student passes.
    pub drops_global: Vec<BlockDrop>,
    pub drops_local: Vec<BlockDrop>,
}

/// The generator of everything random in step `step`: its own key per (seed, step), one
/// stream per use (0: masks and drop plans, 1 + i: the crops of image i).
fn step_rng(seed: u64, step: usize, stream: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&(step as u64).to_le_bytes());
    key[16..24].copy_from_slice(b"dinov2st");
    let mut rng = ChaCha8Rng::from_seed(key);
    rng.set_stream(stream);
    rng
}

/// Which dataset images step `step` uses: a fresh permutation per pass over the data.
fn batch_indices(
    len: usize,
    batch: usize,
    step: usize,
    seed: u64,
    cache: &mut Option<(usize, Vec<usize>)>,
) -> Vec<usize> {
    (0..batch)
        .map(|i| {
            let position = step * batch + i;
            let (epoch, at) = (position / len, position % len);
            if cache.as_ref().is_none_or(|(e, _)| *e != epoch) {
                let mut order: Vec<usize> = (0..len).collect();
                let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5eed_da7a);
                rng.set_stream(epoch as u64);
                rand::seq::SliceRandom::shuffle(order.as_mut_slice(), &mut rng);
                *cache = Some((epoch, order));
            }
            cache.as_ref().expect("filled above").1[at]
        })
        .collect()
}

/// Crops, masks and drop plans of one step.
pub fn make_batch(c: &TrainConfig, data: &Dataset, indices: &[usize], step: usize) -> Result<Batch> {
    let mut crops_config = c.crops.clone();
    if let Some(h) = &c.highres {
        if step + h.steps >= c.total_steps {
            crops_config.global_size = h.global_size;
            crops_config.local_size = h.local_size;
        }
    }
    let crops: Vec<_> = indices
        .par_iter()
        .enumerate()
        .map(|(i, &index)| {
            let image = data.image(index)?;
            let mut rng = step_rng(c.seed, step, 1 + i as u64);
            Ok(multi_crop(&image, &crops_config, &mut rng))
        })
        .collect::<Result<_>>()?;
    let b = indices.len();
    let mut globals = Vec::new();
    for g in 0..crops_config.n_global {
        for crop in &crops {
            globals.extend_from_slice(&crop.globals[g]);
        }
    }
    let mut locals = Vec::new();
    for l in 0..crops_config.n_local {
        for crop in &crops {
            locals.extend_from_slice(&crop.locals[l]);
        }
    }
    let mut rng = step_rng(c.seed, step, 0);
    let grid = crops_config.global_size / c.arch.patch_size;
    let masks = if c.distillation.is_some() {
        // distillation: iBOT on every patch token of the (unmasked) global crops
        vec![vec![true; grid * grid]; 2 * b]
    } else {
        let generator = MaskGenerator::new(grid, grid);
        collate_masks(2 * b, &generator, c.mask_ratio, c.mask_sample_probability, &mut rng)
    };
    let plan = |batch: usize, rng: &mut ChaCha8Rng| -> Vec<BlockDrop> {
        if c.drop_path_rate <= 0.0 {
            return Vec::new();
        }
        (0..c.arch.depth).map(|_| BlockDrop::sample(batch, c.drop_path_rate, rng)).collect()
    };
    let drops_global = plan(2 * b, &mut rng);
    let drops_local = plan(crops_config.n_local * b, &mut rng);
    Ok(Batch {
        globals,
        locals,
        global_size: crops_config.global_size,
        local_size: crops_config.local_size,
        masks,
        drops_global,
        drops_local,
    })
}

/// State carried across steps besides the models and the optimizer.
pub struct Centers {
    pub dino: Option<Tensor<2>>,
    pub ibot: Option<Tensor<2>>,
}

/// The loss of one step (official `forward_backward`), on the student's (autodiff) device.
/// `teacher` gives the targets: the EMA teacher, or the frozen teacher in distillation (its
/// width may differ from the student's; its patch size may not).
pub fn step_loss(
    c: &TrainConfig,
    student: &SslModel,
    teacher: &SslModel,
    batch: &Batch,
    teacher_temp: f64,
    centers: &mut Centers,
    device: &Device,
) -> (Tensor<1>, [Tensor<1>; 4]) {
    let plain = device.clone().inner();
    let n_global = c.crops.n_global;
    let n_local = c.crops.n_local;
    let b2 = batch.masks.len();
    let b = b2 / n_global;
    let (g, l) = (batch.global_size, batch.local_size);
    let images = |data: &[f32], n: usize, side: usize, device: &Device| {
        Tensor::<4>::from_data(TensorData::new(data.to_vec(), [n, 3, side, side]), device)
    };
    let tokens = batch.masks.first().map_or(0, Vec::len);
    let mask_flat: Vec<bool> = batch.masks.iter().flatten().copied().collect();
    let mask_indices: Vec<i64> =
        mask_flat.iter().enumerate().filter(|(_, m)| **m).map(|(i, _)| i as i64).collect();
    let n_masked = mask_indices.len();
    let index_tensor = |device: &Device| {
        Tensor::<1, Int>::from_data(TensorData::new(mask_indices.clone(), [n_masked]), device)
    };
    let d = c.arch.embed_dim;

    // teacher: both global crops, no masks, no gradients
    let teacher_out = teacher.backbone.forward_features(images(&batch.globals, b2, g, &plain));
    let cls = teacher_out.cls;
    let swapped = Tensor::cat(vec![cls.clone().narrow(0, b, b), cls.narrow(0, 0, b)], 0);
    let teacher_patches = teacher_out.patch.reshape([b2 * tokens, teacher.backbone.config.embed_dim]);
    let (teacher_cls_logits, teacher_patch_logits) = if c.ibot_separate_head {
        let patches = (n_masked > 0)
            .then(|| teacher.ibot_head().forward(teacher_patches.select(0, index_tensor(&plain))));
        (teacher.dino_head.forward(swapped), patches)
    } else if n_masked > 0 {
        let masked = teacher_patches.select(0, index_tensor(&plain));
        let both = teacher.dino_head.forward(Tensor::cat(vec![swapped, masked], 0));
        (both.clone().narrow(0, 0, b2), Some(both.narrow(0, b2, n_masked)))
    } else {
        (teacher.dino_head.forward(swapped), None)
    };
    let (teacher_cls, teacher_patch) = match c.centering {
        Centering::SinkhornKnopp => (
            loss::sinkhorn_targets(teacher_cls_logits, teacher_temp),
            teacher_patch_logits.map(|t| loss::sinkhorn_targets(t, teacher_temp)),
        ),
        Centering::Centering => {
            let k_dino = c.dino_head.n_prototypes;
            let k_ibot = if c.ibot_separate_head { c.ibot_head.n_prototypes } else { k_dino };
            let dino_center = centers.dino.take().unwrap_or_else(|| Tensor::zeros([1, k_dino], &plain));
            let ibot_center = centers.ibot.take().unwrap_or_else(|| Tensor::zeros([1, k_ibot], &plain));
            let cls_targets =
                loss::softmax_center_targets(teacher_cls_logits.clone(), dino_center.clone(), teacher_temp);
            centers.dino = Some(loss::updated_center(dino_center, teacher_cls_logits, c.center_momentum));
            let patch_targets = teacher_patch_logits.map(|t| {
                let targets = loss::softmax_center_targets(t.clone(), ibot_center.clone(), teacher_temp);
                centers.ibot = Some(loss::updated_center(ibot_center.clone(), t, c.center_momentum));
                targets
            });
            if centers.ibot.is_none() {
                centers.ibot = Some(ibot_center);
            }
            (cls_targets, patch_targets)
        }
    };
    let to_device = |t: Tensor<2>| Tensor::<2>::from_inner(t).set_require_grad(false);
    let teacher_cls = to_device(teacher_cls);
    let teacher_chunks: Vec<Tensor<2>> =
        (0..n_global).map(|i| teacher_cls.clone().narrow(0, i * b, b)).collect();

    // student: global crops with masks, local crops without
    let masks = Tensor::<2, Bool>::from_data(TensorData::new(mask_flat, [b2, tokens]), device);
    let student_global = student.backbone.forward_train(
        images(&batch.globals, b2, g, device),
        c.distillation.is_none().then_some(masks),
        &batch.drops_global,
    );
    let student_local = (n_local > 0).then(|| {
        student.backbone.forward_train(
            images(&batch.locals, n_local * b, l, device),
            None,
            &batch.drops_local,
        )
    });
    let global_cls = student_global.cls.clone();
    let student_patches = student_global.patch.reshape([b2 * tokens, d]);
    let masked_student = (n_masked > 0).then(|| student_patches.select(0, index_tensor(device)));

    // one pass through the DINO head for local CLS, (masked patches,) global CLS
    let mut head_inputs = Vec::new();
    if let Some(local) = &student_local {
        head_inputs.push(local.cls.clone());
    }
    let shared_patches = !c.ibot_separate_head && masked_student.is_some();
    if shared_patches {
        head_inputs.push(masked_student.clone().expect("checked"));
    }
    head_inputs.push(global_cls.clone());
    let head_out = student.dino_head.forward(Tensor::cat(head_inputs, 0));
    let n_local_rows = student_local.as_ref().map_or(0, |_| n_local * b);
    let local_logits = head_out.clone().narrow(0, 0, n_local_rows.max(1));
    let mut offset = n_local_rows;
    let patch_logits = if shared_patches {
        let t = head_out.clone().narrow(0, offset, n_masked);
        offset += n_masked;
        Some(t)
    } else {
        masked_student.map(|m| student.ibot_head().forward(m))
    };
    let global_logits = head_out.narrow(0, offset, b2);

    let n_local_terms = (n_local * n_global).max(1) as f64;
    let n_global_terms = ((n_global - 1) * n_global) as f64;
    let terms = n_local_terms + n_global_terms;
    let zero = || Tensor::<1>::zeros([1], device);
    let dino_local = if n_local > 0 {
        let chunks: Vec<Tensor<2>> = (0..n_local).map(|i| local_logits.clone().narrow(0, i * b, b)).collect();
        loss::dino_loss(&chunks, &teacher_chunks, c.student_temp).div_scalar(terms)
    } else {
        zero()
    };
    let dino_global =
        loss::dino_loss(&[global_logits], &[teacher_cls], c.student_temp).mul_scalar(2.0).div_scalar(terms);
    let koleo = if c.koleo_loss_weight > 0.0 && c.dino_loss_weight > 0.0 {
        (0..n_global)
            .map(|i| loss::koleo_loss(global_cls.clone().narrow(0, i * b, b)))
            .reduce(|a, b| a + b)
            .expect("two global crops")
            .mul_scalar(c.koleo_loss_weight)
    } else {
        zero()
    };
    let ibot = match (patch_logits, teacher_patch) {
        (Some(student_patch), Some(teacher_patch)) => {
            let weights = mask_weights(&batch.masks);
            let weights = Tensor::<1>::from_data(TensorData::new(weights, [n_masked]), device);
            // official: loss_scales (2) · ibot_loss_scale (1 / n_global_crops)
            loss::ibot_loss(student_patch, to_device(teacher_patch), weights, b2, c.student_temp)
                .mul_scalar(2.0 / n_global as f64)
        }
        _ => zero(),
    };
    let total = dino_local.clone().mul_scalar(c.dino_loss_weight)
        + dino_global.clone().mul_scalar(c.dino_loss_weight)
        + koleo.clone()
        + ibot.clone().mul_scalar(c.ibot_loss_weight);
    (total, [dino_local, dino_global, koleo, ibot])
}

/// Options of a training run besides the recipe.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Stop after this many steps of this invocation's schedule (the schedule keeps its length).
    pub max_steps: Option<usize>,
    pub max_minutes: Option<f64>,
    pub resume: bool,
    /// Start over in a folder that holds a run.
    pub overwrite: bool,
    pub progress: bool,
    /// Also keep the teacher backbone of every checkpoint as `snapshots/teacher_step{N}.safetensors`
    /// (for learning curves).
    pub keep_snapshots: bool,
}

/// What a run did.
#[derive(Clone, Debug)]
pub struct RunSummary {
    pub steps_done: usize,
    pub last_loss: Option<LossParts>,
    pub images_per_second: f64,
    pub checkpoint: PathBuf,
}

pub const CHECKPOINT: &str = "checkpoint.safetensors";
pub const TEACHER_BACKBONE: &str = "teacher_backbone.safetensors";
pub const INIT_BACKBONE: &str = "init_backbone.safetensors";
pub const METRICS: &str = "metrics.jsonl";
pub const CONFIG: &str = "config.json";

/// Train `c` on `data` into `options.out`.
/// Everything a run carries from step to step.
pub struct TrainState {
    pub student: SslModel,
    /// The EMA of the student: the teacher in self-distillation, the released model in
    /// distillation.
    pub teacher: SslModel,
    /// Distillation's frozen teacher (on the plain device), which gives the targets.
    pub frozen_teacher: Option<SslModel>,
    pub optimizer: AdamW,
    pub centers: Centers,
    pub schedules: Schedules,
    /// The student's (autodiff) device.
    pub device: Device,
    /// The element type of the matrix products under mixed precision, `None` for f32.
    pub compute: Option<DType>,
    /// The dynamic loss scale under mixed precision.
    pub scaler: Option<LossScaler>,
}

/// What `precision` means on `device`: f16 matrix products where it is a wgpu adapter with
/// f16 and the recipe asks for `mixed`, or `auto` on a hardware adapter (a software adapter
/// emulates f16: lavapipe runs the tiny recipe 5x slower in mixed precision, BENCHMARKS.md);
/// an error where `mixed` cannot run.
pub fn resolve_precision(precision: Precision, device: &Device) -> Result<Option<DType>> {
    let name = crate::backend::device_name(device);
    let f16 = name.is_some() && device.supports_dtype(DType::F16);
    let hardware =
        name.is_some_and(|n| crate::backend::adapters().iter().any(|a| a.name == n && !a.is_software));
    match precision {
        Precision::F32 => Ok(None),
        Precision::Auto => Ok((f16 && hardware).then_some(DType::F16)),
        Precision::Mixed if f16 => Ok(Some(DType::F16)),
        Precision::Mixed => Err(Error::Usage(
            "precision `mixed` needs a wgpu adapter with shader-f16; this device computes in f32 only \
             (use \"precision\": \"auto\" or \"f32\")"
                .to_string(),
        )),
    }
}

/// What one step did.
pub struct StepOutcome {
    pub loss: LossParts,
    pub rates: StepRates,
    pub momentum: f64,
    pub teacher_temp: f64,
    pub report: super::optim::StepReport,
}

impl TrainState {
    /// A new run: the student initialised from `c.seed`, the teacher its copy.
    pub fn new(c: &TrainConfig, device: &Device) -> Result<Self> {
        let compute = resolve_precision(c.precision, device)?;
        let ad = device.clone().autodiff();
        device.seed(c.seed);
        let student = SslModel::new(c, &ad);
        let teacher = student.valid();
        let frozen_teacher = match &c.distillation {
            Some(d) => Some(load_frozen_teacher(&d.teacher, c, &device.clone().inner())?),
            None => None,
        };
        let rules = GroupRules {
            layer_decay: c.layerwise_decay,
            depth: c.arch.depth,
            patch_embed_lr_mult: c.patch_embed_lr_mult,
            clip_grad: c.clip_grad,
        };
        Ok(Self {
            student,
            teacher,
            frozen_teacher,
            optimizer: AdamW::new(c.adamw_betas.0, c.adamw_betas.1, rules),
            centers: Centers { dino: None, ibot: None },
            schedules: Schedules::new(c),
            device: ad,
            compute,
            scaler: compute.map(|_| LossScaler::default()),
        })
    }

    /// Continue from a checkpoint's tensors.
    pub fn load(mut self, saved: &SavedRun, path: &Path) -> Result<Self> {
        self.student =
            load_named_params(self.student, &saved.tensors, "student.").map_err(|e| ckpt_err(path, e))?;
        self.teacher =
            load_named_params(self.teacher, &saved.tensors, "teacher.").map_err(|e| ckpt_err(path, e))?;
        let opt_state: BTreeMap<String, HostTensor> = saved
            .tensors
            .iter()
            .filter_map(|(k, v)| k.strip_prefix("optimizer.").map(|k| (k.to_string(), v.clone())))
            .collect();
        self.optimizer.load_state(&opt_state, &self.device);
        let plain = self.device.clone().inner();
        let center = |name: &str| {
            saved
                .tensors
                .get(name)
                .map(|h| Tensor::<2>::from_data(TensorData::new(h.data.clone(), [1, h.data.len()]), &plain))
        };
        self.centers = Centers { dino: center("center.dino"), ibot: center("center.ibot") };
        if let (Some(scaler), Some(saved)) = (self.scaler.as_mut(), saved.tensors.get("scaler"))
            && let [scale, good_steps] = saved.data[..]
        {
            scaler.scale = scale as f64;
            scaler.good_steps = good_steps as u64;
        }
        Ok(self)
    }

    /// One training step on `batch`: losses, backward, AdamW, EMA teacher. A non-finite loss
    /// is an error and leaves the models untouched. Under mixed precision the forward passes
    /// run under autocast, the loss is scaled for backward, and a step whose gradients
    /// overflow is skipped (the optimizer's and the teacher's weights unchanged, the scale
    /// halved), as PyTorch's gradient scaler does; in f32 such gradients are an error.
    pub fn step(&mut self, c: &TrainConfig, batch: &Batch, step: usize) -> Result<StepOutcome> {
        let teacher_temp = self.schedules.teacher_temp.at(step);
        let mut centers = Centers { dino: self.centers.dino.clone(), ibot: self.centers.ibot.clone() };
        let scope = precision::autocast(self.compute);
        let targets_from = self.frozen_teacher.as_ref().unwrap_or(&self.teacher);
        let (total, parts) =
            step_loss(c, &self.student, targets_from, batch, teacher_temp, &mut centers, &self.device);
        drop(scope);
        let values = Tensor::cat(std::iter::once(total.clone()).chain(parts).collect(), 0)
            .into_data()
            .convert::<f32>()
            .try_into_vec::<f32>()
            .map_err(|e| Error::Device(format!("cannot read the loss back: {e:?}")))?;
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Training(format!(
                "loss became non-finite at step {step} (total {}, parts {:?})",
                values[0],
                &values[1..]
            )));
        }
        self.centers = centers;
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
        let mut grads = if loss_scale == 1.0 { total } else { total.mul_scalar(loss_scale) }.backward();
        let rates = StepRates {
            lr: self.schedules.lr.at(step),
            last_layer_lr: self.schedules.last_layer_lr(step),
            weight_decay: self.schedules.weight_decay.at(step),
            grad_scale: 1.0 / loss_scale,
        };
        // modules clone by reference: the clones are the ones mapped
        let (student, report) = self.optimizer.step(self.student.clone(), &mut grads, rates);
        self.student = student;
        match self.scaler.as_mut() {
            Some(scaler) => scaler.update(report.skipped),
            None if report.skipped => {
                return Err(Error::Training(format!(
                    "gradients became non-finite at step {step} (norms {:?})",
                    report.grad_norms
                )));
            }
            None => {}
        }
        let momentum = self.schedules.momentum.at(step);
        // as the official loop: the teacher follows the student on every step
        self.teacher = ema_update(self.teacher.clone(), &self.student, momentum);
        let loss = LossParts {
            total: values[0] as f64,
            dino_local: values[1] as f64,
            dino_global: values[2] as f64,
            koleo: values[3] as f64,
            ibot: values[4] as f64,
        };
        Ok(StepOutcome { loss, rates, momentum, teacher_temp, report })
    }
}

/// Train `c` on `data` into `options.out`.
pub fn train(c: &TrainConfig, data: &Dataset, device: &Device, options: &RunOptions) -> Result<RunSummary> {
    c.validate().map_err(Error::Config)?;
    if data.is_empty() {
        return Err(Error::Usage(format!("{}: no images", data.name())));
    }
    let out = &options.out;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let checkpoint_path = out.join(CHECKPOINT);
    let mut state = TrainState::new(c, device)?;
    let mut start = 0;
    if options.resume && checkpoint_path.exists() {
        let saved = read_checkpoint(&checkpoint_path)?;
        if saved.config != *c {
            return Err(Error::Usage(format!(
                "{}: --resume with a different config than the run's own ({}); use the run's config or a new --out",
                checkpoint_path.display(),
                out.join(CONFIG).display()
            )));
        }
        state = state.load(&saved, &checkpoint_path)?;
        start = saved.step;
        truncate_metrics(&out.join(METRICS), start)?;
    } else {
        if checkpoint_path.exists() && !options.overwrite {
            return Err(Error::Usage(format!(
                "{} already holds a run: --resume to continue it, --overwrite to start over, or another --out",
                out.display()
            )));
        }
        let _ = std::fs::remove_file(&checkpoint_path);
        if options.resume {
            eprintln!("no checkpoint in {}: starting a new run", out.display());
        }
        write_json_atomic(&out.join(CONFIG), c)?;
        let _ = std::fs::remove_file(out.join(METRICS));
        // the network at initialisation, for baselines (`dinov2 eval knn --weights` on it)
        crate::checkpoint::export::write_backbone(&state.teacher.backbone, &out.join(INIT_BACKBONE))?;
    }

    let end = options.max_steps.map_or(c.total_steps, |m| (start + m).min(c.total_steps)).max(start);
    let bar = if options.progress { ProgressBar::new((end - start) as u64) } else { ProgressBar::hidden() };
    bar.set_style(
        ProgressStyle::with_template("{elapsed_precise} [{bar:30}] {pos}/{len} {msg}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    let metrics_path = out.join(METRICS);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let started = Instant::now();
    let mut order_cache = None;
    let mut last = None;
    let mut images = 0usize;
    let mut step = start;
    let out_of_time =
        |started: &Instant| options.max_minutes.is_some_and(|m| started.elapsed().as_secs_f64() > m * 60.0);
    let mut stop = false;
    while step < end && !stop {
        let indices = batch_indices(data.len(), c.batch_size, step, c.seed, &mut order_cache);
        let batch = make_batch(c, data, &indices, step)?;
        let outcome = match state.step(c, &batch, step) {
            Ok(outcome) => outcome,
            Err(Error::Training(message)) => {
                bar.finish_and_clear();
                let kept = match read_checkpoint(&checkpoint_path) {
                    Ok(saved) => format!(
                        "the last good checkpoint is {} (step {})",
                        checkpoint_path.display(),
                        saved.step
                    ),
                    Err(_) => "no checkpoint was written yet".to_string(),
                };
                return Err(Error::Training(format!("{message}; stopping: {kept}")));
            }
            Err(e) => return Err(e),
        };
        images += c.batch_size;
        step += 1;
        let rate = images as f64 / started.elapsed().as_secs_f64().max(1e-9);
        let (loss, rates) = (&outcome.loss, &outcome.rates);
        let record = serde_json::json!({
            "step": step,
            "loss": loss,
            "lr": rates.lr,
            "last_layer_lr": rates.last_layer_lr,
            "weight_decay": rates.weight_decay,
            "momentum": outcome.momentum,
            "teacher_temp": outcome.teacher_temp,
            "grad_norm": outcome.report.grad_norms,
            "loss_scale": state.scaler.map(|s| s.scale),
            "skipped": outcome.report.skipped,
            "images_per_s": rate,
            "elapsed_s": started.elapsed().as_secs_f64(),
        });
        writeln!(metrics, "{record}").map_err(|e| Error::io(&metrics_path, e))?;
        bar.set_message(format!(
            "loss {:.3} (dino {:.3}+{:.3} ibot {:.3} koleo {:.3}) lr {:.2e} m {:.4} T {:.3} {:.1} img/s",
            loss.total,
            loss.dino_local,
            loss.dino_global,
            loss.ibot,
            loss.koleo,
            rates.lr,
            outcome.momentum,
            outcome.teacher_temp,
            rate
        ));
        bar.inc(1);
        last = Some(outcome.loss);
        stop = out_of_time(&started);
        if step % c.checkpoint_every == 0 || step == end || stop {
            save_checkpoint(out, c, step, &state)?;
            if options.keep_snapshots {
                let dir = out.join("snapshots");
                std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
                let snapshot = dir.join(format!("teacher_step{step}.safetensors"));
                crate::checkpoint::export::write_backbone(&state.teacher.backbone, &snapshot)?;
            }
        }
    }
    bar.finish();
    Ok(RunSummary {
        steps_done: step - start,
        last_loss: last,
        images_per_second: images as f64 / started.elapsed().as_secs_f64().max(1e-9),
        checkpoint: checkpoint_path,
    })
}

/// Distillation's teacher from `path`: a run folder or training checkpoint of this project
/// (its EMA teacher, heads included), or any backbone with heads made from `c`'s head configs
/// (seeded by `c.seed`), all frozen. Errors where it cannot pair with `c`'s student.
pub fn load_frozen_teacher(path: &Path, c: &TrainConfig, device: &Device) -> Result<SslModel> {
    let run_checkpoint = if path.is_dir() { path.join(CHECKPOINT) } else { path.to_path_buf() };
    let teacher = if run_checkpoint.is_file() && is_training_checkpoint(&run_checkpoint) {
        let saved = read_checkpoint(&run_checkpoint)?;
        let model = SslModel::new(&saved.config, device);
        load_named_params(model, &saved.tensors, "teacher.").map_err(|e| ckpt_err(&run_checkpoint, e))?
    } else {
        let weights = crate::checkpoint::read_backbone(path, &crate::checkpoint::LoadOptions::default())?;
        let backbone = DinoVisionTransformer::from_weights(&weights, device)?;
        let d = backbone.config.embed_dim;
        device.seed(c.seed ^ 0x7eac_4e2d);
        SslModel {
            backbone,
            dino_head: DinoHead::new(d, &c.dino_head, device),
            ibot_head: c.ibot_separate_head.then(|| DinoHead::new(d, &c.ibot_head, device)),
        }
    };
    check_teacher_patch(path, &teacher.backbone.config, c)?;
    let student_ibot = if c.ibot_separate_head { &c.ibot_head } else { &c.dino_head };
    for (what, teacher_k, student_k) in [
        ("DINO", teacher.dino_head.n_prototypes(), c.dino_head.n_prototypes),
        ("iBOT", teacher.ibot_head().n_prototypes(), student_ibot.n_prototypes),
    ] {
        if teacher_k != student_k {
            return Err(Error::Usage(format!(
                "{}: the teacher's {what} head has {teacher_k} prototypes, the student's {student_k}",
                path.display()
            )));
        }
    }
    Ok(teacher)
}

/// The architecture of distillation's teacher at `path` (a run's from its header, a
/// backbone's from its file), checked against `c`'s student: an error where they cannot pair.
pub fn check_teacher(path: &Path, c: &TrainConfig) -> Result<()> {
    let arch = match run_config(path) {
        Some(run) => run.arch,
        None => crate::checkpoint::read_backbone(path, &crate::checkpoint::LoadOptions::default())?.config,
    };
    check_teacher_patch(path, &arch, c)
}

fn check_teacher_patch(path: &Path, teacher: &crate::config::VitConfig, c: &TrainConfig) -> Result<()> {
    let (tp, sp) = (teacher.patch_size, c.arch.patch_size);
    if tp != sp {
        return Err(Error::Usage(format!(
            "{}: the teacher's patch size {tp} differs from the student's {sp} (iBOT pairs their patch tokens)",
            path.display()
        )));
    }
    Ok(())
}

fn ckpt_err(path: &Path, e: Error) -> Error {
    Error::checkpoint(path, e.to_string())
}

/// A training checkpoint read back.
pub struct SavedRun {
    pub step: usize,
    pub config: TrainConfig,
    pub tensors: BTreeMap<String, HostTensor>,
}

/// Write the checkpoint (student, teacher, optimizer, centres, step, config) and the teacher's
/// backbone in the official layout, each atomically.
fn save_checkpoint(out: &Path, c: &TrainConfig, step: usize, state: &TrainState) -> Result<()> {
    let TrainState { student, teacher, optimizer, centers, scaler, .. } = state;
    let mut tensors = BTreeMap::new();
    for (prefix, module) in [("student.", student), ("teacher.", teacher)] {
        for (k, v) in named_params(module)? {
            tensors.insert(format!("{prefix}{k}"), v);
        }
    }
    for (k, v) in optimizer.state()? {
        tensors.insert(format!("optimizer.{k}"), v);
    }
    for (name, center) in [("center.dino", &centers.dino), ("center.ibot", &centers.ibot)] {
        if let Some(t) = center {
            let data = crate::features::to_host(t.clone())?;
            tensors.insert(name.to_string(), HostTensor { shape: vec![data.len()], data });
        }
    }
    if let Some(s) = scaler {
        tensors.insert(
            "scaler".to_string(),
            HostTensor { shape: vec![2], data: vec![s.scale as f32, s.good_steps as f32] },
        );
    }
    let mut metadata = std::collections::HashMap::new();
    metadata.insert("format".to_string(), "dinov2-wgpu-train".to_string());
    metadata.insert("step".to_string(), step.to_string());
    metadata
        .insert("config".to_string(), serde_json::to_string(c).map_err(|e| Error::Config(e.to_string()))?);
    let list: Vec<(&str, Vec<usize>, &[f32])> =
        tensors.iter().map(|(k, v)| (k.as_str(), v.shape.clone(), v.data.as_slice())).collect();
    let bytes = crate::io::safetensors_bytes(&list, Some(metadata))?;
    crate::io::write_atomic(&out.join(CHECKPOINT), &bytes)?;
    crate::checkpoint::export::write_backbone(&teacher.backbone, &out.join(TEACHER_BACKBONE))
}

/// Read a checkpoint written by [`train`].
pub fn read_checkpoint(path: &Path) -> Result<SavedRun> {
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes)
        .map_err(|e| Error::checkpoint(path, format!("not a safetensors file: {e}")))?;
    let meta = meta.metadata().clone().unwrap_or_default();
    if meta.get("format").map(String::as_str) != Some("dinov2-wgpu-train") {
        return Err(Error::checkpoint(path, "not a training checkpoint of this project"));
    }
    let step =
        meta.get("step").and_then(|s| s.parse().ok()).ok_or_else(|| Error::checkpoint(path, "no step"))?;
    let config: TrainConfig = meta
        .get("config")
        .and_then(|s| serde_json::from_str(s).ok())
        .ok_or_else(|| Error::checkpoint(path, "no readable config"))?;
    let st =
        safetensors::SafeTensors::deserialize(&bytes).map_err(|e| Error::checkpoint(path, e.to_string()))?;
    let mut tensors = BTreeMap::new();
    for (name, view) in st.tensors() {
        if view.dtype() != safetensors::Dtype::F32 {
            return Err(Error::checkpoint(path, format!("tensor {name} is not f32")));
        }
        let data =
            view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect();
        tensors.insert(name, HostTensor { shape: view.shape().to_vec(), data });
    }
    Ok(SavedRun { step, config, tensors })
}

/// Drop metric lines past `step` (written after the checkpoint a resumed run starts from).
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    crate::io::write_atomic(path, kept.as_bytes())
}

fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(|e| Error::Config(e.to_string()))?;
    crate::io::write_atomic(path, text.as_bytes())
}

/// The backbone file behind `path`: a run folder or a training checkpoint give the teacher's
/// exported backbone; anything else is returned as is.
pub fn backbone_path(path: &Path) -> Result<PathBuf> {
    if path.is_dir() && path.join(CHECKPOINT).exists() {
        return Ok(path.join(TEACHER_BACKBONE));
    }
    if path.is_file() && is_training_checkpoint(path) {
        let beside = path.with_file_name(TEACHER_BACKBONE);
        if beside.exists() {
            return Ok(beside);
        }
        return Err(Error::checkpoint(
            path,
            format!("a training checkpoint without {TEACHER_BACKBONE} beside it"),
        ));
    }
    Ok(path.to_path_buf())
}

/// The recipe of a run folder or training checkpoint (read from its header), `None` for
/// anything else.
pub fn run_config(path: &Path) -> Option<TrainConfig> {
    let file = if path.is_dir() { path.join(CHECKPOINT) } else { path.to_path_buf() };
    let header: serde_json::Value = serde_json::from_slice(&checkpoint_header(&file)?).ok()?;
    let meta = header.get("__metadata__")?;
    if meta.get("format")?.as_str()? != "dinov2-wgpu-train" {
        return None;
    }
    serde_json::from_str(meta.get("config")?.as_str()?).ok()
}

/// The JSON header of a safetensors file (at most 16 MiB read).
fn checkpoint_header(path: &Path) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut file = std::fs::File::open(path).ok()?;
    let mut head = [0u8; 8];
    file.read_exact(&mut head).ok()?;
    let len = u64::from_le_bytes(head).min(1 << 24) as usize;
    let mut header = vec![0u8; len];
    file.read_exact(&mut header).ok()?;
    Some(header)
}

fn is_training_checkpoint(path: &Path) -> bool {
    checkpoint_header(path).is_some_and(|h| String::from_utf8_lossy(&h).contains("dinov2-wgpu-train"))
}

/// The global crop size of a run folder or training checkpoint (its evaluation size).
pub fn run_crop_size(path: &Path) -> Option<usize> {
    let dir = if path.is_dir() { path.to_path_buf() } else { path.parent()?.to_path_buf() };
    let text = std::fs::read_to_string(dir.join(CONFIG)).ok()?;
    let c: TrainConfig = serde_json::from_str(&text).ok()?;
    Some(c.highres.as_ref().map_or(c.crops.global_size, |h| h.global_size))
}
