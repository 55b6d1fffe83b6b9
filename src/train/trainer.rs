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
use burn::optim::{GradientsAccumulator, GradientsParams};
use burn::tensor::{Bool, DType, Device, IndexingUpdateOp, Int, Tensor, TensorData};
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
#[derive(Clone)]
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
    /// The images of the whole step, which the losses average over (more than this batch's
    /// own where it is one device's shard of the step).
    pub step_images: usize,
    /// This batch's dataset indices, and whether each global crop was mirrored (crop-major,
    /// as `globals`): what distillation's teacher cache looks its outputs up by.
    pub indices: Vec<usize>,
    pub global_flips: Vec<bool>,
}

impl Batch {
    /// Images `start .. start + len` of the step: their crops, masks and drop plans (the
    /// residual scales stay the whole batch's), for one device of several.
    pub fn shard(&self, start: usize, len: usize) -> Batch {
        let b = self.step_images;
        let n_global = self.masks.len() / b;
        let per_global = 3 * self.global_size * self.global_size;
        let per_local = 3 * self.local_size * self.local_size;
        let n_local = self.locals.len() / per_local.max(1) / b;
        let rows = |data: &[f32], chunks: usize, per: usize| -> Vec<f32> {
            (0..chunks)
                .flat_map(|h| data[(h * b + start) * per..(h * b + start + len) * per].iter().copied())
                .collect()
        };
        let ranges =
            |chunks: usize| -> Vec<(usize, usize)> { (0..chunks).map(|h| (h * b + start, len)).collect() };
        Batch {
            globals: rows(&self.globals, n_global, per_global),
            locals: rows(&self.locals, n_local, per_local),
            global_size: self.global_size,
            local_size: self.local_size,
            masks: (0..n_global)
                .flat_map(|h| self.masks[h * b + start..h * b + start + len].iter().cloned())
                .collect(),
            drops_global: self.drops_global.iter().map(|d| d.shard(&ranges(n_global))).collect(),
            drops_local: self.drops_local.iter().map(|d| d.shard(&ranges(n_local))).collect(),
            step_images: b,
            indices: self.indices[start..start + len].to_vec(),
            global_flips: (0..n_global)
                .flat_map(|h| self.global_flips[h * b + start..h * b + start + len].iter().copied())
                .collect(),
        }
    }
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
    let mut global_flips = Vec::new();
    for g in 0..crops_config.n_global {
        for crop in &crops {
            globals.extend_from_slice(&crop.globals[g]);
            global_flips.push(crop.global_flips[g]);
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
        step_images: b,
        indices: indices.to_vec(),
        global_flips,
    })
}

/// State carried across steps besides the models and the optimizer.
#[derive(Clone)]
pub struct Centers {
    pub dino: Option<Tensor<2>>,
    pub ibot: Option<Tensor<2>>,
}

/// The teacher's logits of one (shard of a) batch, before centering: the CLS rows of the
/// swapped global crops (`[n_global · b, K]`, chunk `h` = the targets of student crop `h`), and
/// the masked patch rows (`[m, K]`, crop-major, image by image), `None` where nothing is masked.
pub struct TeacherLogits {
    pub cls: Tensor<2>,
    pub patch: Option<Tensor<2>>,
}

fn image_tensor(data: &[f32], n: usize, side: usize, device: &Device) -> Tensor<4> {
    Tensor::<4>::from_data(TensorData::new(data.to_vec(), [n, 3, side, side]), device)
}

fn masked_rows(masks: &[Vec<bool>], device: &Device) -> (usize, Tensor<1, Int>) {
    let indices: Vec<i64> =
        masks.iter().flatten().enumerate().filter(|(_, m)| **m).map(|(i, _)| i as i64).collect();
    let n = indices.len();
    (n, Tensor::<1, Int>::from_data(TensorData::new(indices, [n]), device))
}

/// The teacher's forward (official `get_teacher_output`, before centering) on `device`, the
/// teacher's own (plain) device: both global crops, no masks, no gradients.
pub fn teacher_logits(c: &TrainConfig, teacher: &SslModel, batch: &Batch, device: &Device) -> TeacherLogits {
    let b2 = batch.masks.len();
    let out = teacher.backbone.forward_features(image_tensor(&batch.globals, b2, batch.global_size, device));
    let tokens = batch.masks.first().map_or(0, Vec::len);
    let patch = out.patch.reshape([b2, tokens, teacher.backbone.config.embed_dim]);
    teacher_head_logits(c, teacher, out.cls, patch, batch, device)
}

/// The teacher's heads on its backbone's outputs for the global crops: `cls` `[2b, D]`,
/// `patch` `[2b, P, D]`, crop-major.
fn teacher_head_logits(
    c: &TrainConfig,
    teacher: &SslModel,
    cls: Tensor<2>,
    patch: Tensor<3>,
    batch: &Batch,
    device: &Device,
) -> TeacherLogits {
    let b2 = batch.masks.len();
    let b = b2 / c.crops.n_global;
    let tokens = batch.masks.first().map_or(0, Vec::len);
    let swapped = Tensor::cat(vec![cls.clone().narrow(0, b, b), cls.narrow(0, 0, b)], 0);
    let (n_masked, rows) = masked_rows(&batch.masks, device);
    let patches = patch.reshape([b2 * tokens, teacher.backbone.config.embed_dim]);
    let masked = (n_masked > 0).then(|| patches.select(0, rows));
    match masked {
        Some(masked) if c.ibot_separate_head => TeacherLogits {
            cls: teacher.dino_head.forward(swapped),
            patch: Some(teacher.ibot_head().forward(masked)),
        },
        Some(masked) => {
            let both = teacher.dino_head.forward(Tensor::cat(vec![swapped, masked], 0));
            TeacherLogits { cls: both.clone().narrow(0, 0, b2), patch: Some(both.narrow(0, b2, n_masked)) }
        }
        None => TeacherLogits { cls: teacher.dino_head.forward(swapped), patch: None },
    }
}

/// Distillation's teacher cache ([`crate::train::config::Distillation::teacher_cache`]): the
/// frozen teacher's backbone outputs (CLS then patch tokens, after the final norm) for every
/// training image, as is and mirrored, at the global crop size, on the host.
pub struct TeacherCache {
    /// `[images, 2 (as is, mirrored), 1 + P, D]`.
    tokens: Vec<f32>,
    patches: usize,
    dim: usize,
}

/// The largest teacher cache `distill --teacher-cache` builds (host memory).
const TEACHER_CACHE_LIMIT_BYTES: usize = 8 << 30;

impl TeacherCache {
    /// The teacher's outputs for every image of `data`: batches of whole-image views, split
    /// over `teachers` (one per device, on `devices`); `progress` gets the images done.
    pub fn build(
        c: &TrainConfig,
        data: &Dataset,
        teachers: &[SslModel],
        devices: &[Device],
        compute: Option<DType>,
        mut progress: impl FnMut(usize),
    ) -> Result<Self> {
        let size = c.crops.global_size;
        let grid = size / c.arch.patch_size;
        let (patches, dim) = (grid * grid, teachers[0].backbone.config.embed_dim);
        let per_image = 2 * (1 + patches) * dim;
        let bytes = data.len().saturating_mul(per_image).saturating_mul(4);
        if bytes > TEACHER_CACHE_LIMIT_BYTES {
            return Err(Error::Usage(format!(
                "--teacher-cache: {} images would need {:.1} GiB of host memory for the teacher's outputs \
                 (limit {} GiB); distil without it",
                data.len(),
                bytes as f64 / (1u64 << 30) as f64,
                TEACHER_CACHE_LIMIT_BYTES >> 30
            )));
        }
        // the live teacher runs under the step's autocast; `per_shard` sets it on its other threads
        let _scope = precision::autocast(compute);
        let mut tokens = vec![0.0f32; data.len() * per_image];
        let chunk = 128 * devices.len();
        for start in (0..data.len()).step_by(chunk) {
            let end = (start + chunk).min(data.len());
            let shards = shard_sizes(end - start, devices.len());
            let mut offset = start;
            let ranges: Vec<(usize, usize)> = shards
                .iter()
                .map(|&len| {
                    offset += len;
                    (offset - len, offset)
                })
                .collect();
            let outputs = per_shard(ranges.len(), compute, |s| -> Result<Vec<f32>> {
                let (from, to) = ranges[s];
                let mut views = Vec::with_capacity((to - from) * 2 * 3 * size * size);
                for i in from..to {
                    let image = data.image(i)?;
                    for flip in [false, true] {
                        views.extend(crate::train::augment::whole_view(&image, size, flip));
                    }
                }
                let out = teachers[s].backbone.forward_features(image_tensor(
                    &views,
                    2 * (to - from),
                    size,
                    &devices[s],
                ));
                let n = 2 * (to - from);
                let patch = out.patch.reshape([n, patches, dim]);
                let both = Tensor::cat(vec![out.cls.reshape([n, 1, dim]), patch], 1);
                crate::features::to_host(both)
                    .map_err(|e| Error::Device(format!("cannot read the teacher's outputs back: {e}")))
            });
            for ((from, to), values) in ranges.into_iter().zip(outputs) {
                tokens[from * per_image..to * per_image].copy_from_slice(&values?);
            }
            progress(end - start);
        }
        Ok(Self { tokens, patches, dim })
    }

    /// The teacher's logits for `batch` (a shard of a step) from the cache, on `device`.
    pub fn logits(
        &self,
        c: &TrainConfig,
        teacher: &SslModel,
        batch: &Batch,
        device: &Device,
    ) -> TeacherLogits {
        let per_view = (1 + self.patches) * self.dim;
        let b = batch.indices.len();
        let mut rows = Vec::with_capacity(batch.global_flips.len() * per_view);
        for (k, &flip) in batch.global_flips.iter().enumerate() {
            let view = 2 * batch.indices[k % b] + usize::from(flip);
            rows.extend_from_slice(&self.tokens[view * per_view..(view + 1) * per_view]);
        }
        let b2 = batch.global_flips.len();
        let all = Tensor::<3>::from_data(TensorData::new(rows, [b2, 1 + self.patches, self.dim]), device);
        let cls = all.clone().narrow(1, 0, 1).reshape([b2, self.dim]);
        let patch = all.narrow(1, 1, self.patches);
        teacher_head_logits(c, teacher, cls, patch, batch, device)
    }
}

/// Teacher probabilities from the logits of the whole batch (official
/// `sinkhorn_knopp_teacher` / `softmax_center_teacher` + `update_center`): Sinkhorn-Knopp
/// normalises over every row of the step, so it runs once, on the main device, over all
/// shards' rows.
pub fn teacher_targets(
    c: &TrainConfig,
    logits: TeacherLogits,
    teacher_temp: f64,
    centers: &mut Centers,
    device: &Device,
) -> (Tensor<2>, Option<Tensor<2>>) {
    match c.centering {
        Centering::SinkhornKnopp => (
            loss::sinkhorn_targets(logits.cls, teacher_temp),
            logits.patch.map(|t| loss::sinkhorn_targets(t, teacher_temp)),
        ),
        Centering::Centering => {
            let k_dino = c.dino_head.n_prototypes;
            let k_ibot = if c.ibot_separate_head { c.ibot_head.n_prototypes } else { k_dino };
            let dino_center = centers.dino.take().unwrap_or_else(|| Tensor::zeros([1, k_dino], device));
            let ibot_center = centers.ibot.take().unwrap_or_else(|| Tensor::zeros([1, k_ibot], device));
            let cls_targets =
                loss::softmax_center_targets(logits.cls.clone(), dino_center.clone(), teacher_temp);
            centers.dino = Some(loss::updated_center(dino_center, logits.cls, c.center_momentum));
            let patch_targets = logits.patch.map(|t| {
                let targets = loss::softmax_center_targets(t.clone(), ibot_center.clone(), teacher_temp);
                centers.ibot = Some(loss::updated_center(ibot_center.clone(), t, c.center_momentum));
                targets
            });
            if centers.ibot.is_none() {
                centers.ibot = Some(ibot_center);
            }
            (cls_targets, patch_targets)
        }
    }
}

/// The student's forward on one (shard of a) batch, on its autodiff device.
pub struct StudentOutput {
    /// `[n_local · b, K]`, `None` without local crops.
    pub local_logits: Option<Tensor<2>>,
    /// `[n_global · b, K]`.
    pub global_logits: Tensor<2>,
    /// The backbone's CLS of the global crops `[n_global · b, D]` (KoLeo's input).
    pub global_cls: Tensor<2>,
    /// `[m, K]` on the masked patch tokens.
    pub patch_logits: Option<Tensor<2>>,
}

/// Global crops with masks (none in distillation), local crops without; one pass through the
/// DINO head for local CLS, (masked patches,) global CLS, as the official code.
pub fn student_forward(c: &TrainConfig, student: &SslModel, batch: &Batch, device: &Device) -> StudentOutput {
    let b2 = batch.masks.len();
    let b = b2 / c.crops.n_global;
    let n_local = c.crops.n_local;
    let tokens = batch.masks.first().map_or(0, Vec::len);
    let mask_flat: Vec<bool> = batch.masks.iter().flatten().copied().collect();
    let masks = Tensor::<2, Bool>::from_data(TensorData::new(mask_flat, [b2, tokens]), device);
    let global = student.backbone.forward_train(
        image_tensor(&batch.globals, b2, batch.global_size, device),
        c.distillation.is_none().then_some(masks),
        &batch.drops_global,
    );
    let local = (n_local > 0).then(|| {
        student.backbone.forward_train(
            image_tensor(&batch.locals, n_local * b, batch.local_size, device),
            None,
            &batch.drops_local,
        )
    });
    let (n_masked, rows) = masked_rows(&batch.masks, device);
    let patches = global.patch.reshape([b2 * tokens, c.arch.embed_dim]);
    let masked = (n_masked > 0).then(|| patches.select(0, rows));
    let shared_patches = !c.ibot_separate_head && masked.is_some();
    let mut inputs = Vec::new();
    if let Some(local) = &local {
        inputs.push(local.cls.clone());
    }
    if shared_patches {
        inputs.push(masked.clone().expect("checked"));
    }
    inputs.push(global.cls.clone());
    let out = student.dino_head.forward(Tensor::cat(inputs, 0));
    let n_local_rows = local.as_ref().map_or(0, |_| n_local * b);
    let local_logits = (n_local_rows > 0).then(|| out.clone().narrow(0, 0, n_local_rows));
    let mut offset = n_local_rows;
    let patch_logits = if shared_patches {
        let t = out.clone().narrow(0, offset, n_masked);
        offset += n_masked;
        Some(t)
    } else {
        masked.map(|m| student.ibot_head().forward(m))
    };
    StudentOutput {
        local_logits,
        global_logits: out.narrow(0, offset, b2),
        global_cls: global.cls,
        patch_logits,
    }
}

/// How a shard's loss gets its KoLeo term.
pub enum Koleo {
    /// From its own global CLS (the whole batch is on one device).
    Direct,
    /// `∂L/∂x̂` of the whole batch's KoLeo loss for this shard's normalised CLS rows
    /// `[n_global · b, D]` (see [`koleo_gradient`]): the loss gets `Σ g · x̂`, whose gradient is
    /// the whole batch's.
    Gradient(Box<Tensor<2>>),
}

/// The losses of one (shard of a) batch against the teacher's targets (on `device`, the
/// student's): `(the loss to back-propagate, total, [dino_local, dino_global, koleo, ibot])`
/// (the two differ by the KoLeo gradient's stand-in under [`Koleo::Gradient`]). Every
/// mean is over the whole step's images (`batch.step_images`), so the shards' losses add up
/// to the whole batch's.
pub fn shard_loss(
    c: &TrainConfig,
    out: StudentOutput,
    targets: (Tensor<2>, Option<Tensor<2>>),
    batch: &Batch,
    koleo: Koleo,
    device: &Device,
) -> (Tensor<1>, Tensor<1>, [Tensor<1>; 4]) {
    let n_global = c.crops.n_global;
    let n_local = c.crops.n_local;
    let b2 = batch.masks.len();
    let b = b2 / n_global;
    // the official losses average over the images of the step
    let share = b as f64 / batch.step_images as f64;
    let (teacher_cls, teacher_patch) = targets;
    let teacher_chunks: Vec<Tensor<2>> =
        (0..n_global).map(|i| teacher_cls.clone().narrow(0, i * b, b)).collect();
    let n_local_terms = (n_local * n_global).max(1) as f64;
    let n_global_terms = ((n_global - 1) * n_global) as f64;
    let terms = n_local_terms + n_global_terms;
    let zero = || Tensor::<1>::zeros([1], device);
    let dino_local = match &out.local_logits {
        Some(local) => {
            let chunks: Vec<Tensor<2>> = (0..n_local).map(|i| local.clone().narrow(0, i * b, b)).collect();
            loss::dino_loss(&chunks, &teacher_chunks, c.student_temp).div_scalar(terms)
        }
        None => zero(),
    };
    let dino_global = loss::dino_loss(&[out.global_logits], &[teacher_cls], c.student_temp)
        .mul_scalar(2.0)
        .div_scalar(terms);
    let (dino_local, dino_global) = if share == 1.0 {
        (dino_local, dino_global)
    } else {
        (dino_local.mul_scalar(share), dino_global.mul_scalar(share))
    };
    let with_koleo = c.koleo_loss_weight > 0.0 && c.dino_loss_weight > 0.0;
    let (koleo, surrogate) = match koleo {
        Koleo::Direct if with_koleo => {
            let k = (0..n_global)
                .map(|i| loss::koleo_loss(out.global_cls.clone().narrow(0, i * b, b)))
                .reduce(|a, b| a + b)
                .expect("two global crops")
                .mul_scalar(c.koleo_loss_weight);
            (k, None)
        }
        Koleo::Gradient(g) if with_koleo => {
            let g = *g;
            let s =
                (g * crate::kernels::l2_normalize_rows(out.global_cls)).sum().mul_scalar(c.koleo_loss_weight);
            (zero(), Some(s))
        }
        _ => (zero(), None),
    };
    let ibot = match (out.patch_logits, teacher_patch) {
        (Some(student_patch), Some(teacher_patch)) => {
            let weights = mask_weights(&batch.masks);
            let n_masked = weights.len();
            let weights = Tensor::<1>::from_data(TensorData::new(weights, [n_masked]), device);
            // official: loss_scales (2) · ibot_loss_scale (1 / n_global_crops)
            loss::ibot_loss(
                student_patch,
                teacher_patch,
                weights,
                n_global * batch.step_images,
                c.student_temp,
            )
            .mul_scalar(2.0 / n_global as f64)
        }
        _ => zero(),
    };
    let total = dino_local.clone().mul_scalar(c.dino_loss_weight)
        + dino_global.clone().mul_scalar(c.dino_loss_weight)
        + koleo.clone()
        + ibot.clone().mul_scalar(c.ibot_loss_weight);
    let backward = match surrogate {
        Some(s) => total.clone() + s,
        None => total.clone(),
    };
    (backward, total, [dino_local, dino_global, koleo, ibot])
}

/// The KoLeo loss of the rows of `x` `[n, d]` (plain, on one device) and its gradient with
/// respect to the normalised rows x̂ = x / max(‖x‖, ε), written out: with u_i = x̂_i − x̂_nn(i) + ε
/// and d_i = ‖u_i‖, ∂L/∂u_i = −u_i / (n · d_i · (d_i + ε)), added to row i and subtracted from
/// row nn(i). [`koleo_loss`](crate::kernels::koleo_loss) is the same loss, differentiated by
/// autodiff.
pub fn koleo_gradient(x: Tensor<2>) -> (Tensor<1>, Tensor<2>) {
    const EPS: f64 = 1e-8;
    let [n, d] = x.dims();
    let x = crate::kernels::l2_normalize_rows(x);
    let nearest = crate::kernels::koleo_nearest(x.clone());
    let u = (x.clone() - x.clone().select(0, nearest.clone())).add_scalar(EPS);
    let distance = u.clone().square().sum_dim(1).sqrt();
    let value = distance.clone().add_scalar(EPS).log().mean().neg();
    let du = u.div(distance.clone() * distance.add_scalar(EPS)).div_scalar(-(n as f64));
    let to_neighbours =
        Tensor::<2>::zeros([n, d], &x.device()).select_assign(0, nearest, du.clone(), IndexingUpdateOp::Add);
    (value, du - to_neighbours)
}

/// The loss of one step (official `forward_backward`) with the whole batch on the student's
/// (autodiff) device: `(total, [dino_local, dino_global, koleo, ibot])`. `teacher` gives the
/// targets: the EMA teacher, or the frozen teacher in distillation (its width may differ from
/// the student's; its patch size may not). [`TrainState::step`] runs the same parts over
/// shards of the batch on several devices.
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
    let logits = teacher_logits(c, teacher, batch, &plain);
    let (cls, patch) = teacher_targets(c, logits, teacher_temp, centers, &plain);
    // without autodiff: a constant in the student's graph, whatever its checkpointing
    let on_student = |t: Tensor<2>| t;
    let out = student_forward(c, student, batch, device);
    let (_, total, parts) =
        shard_loss(c, out, (on_student(cls), patch.map(on_student)), batch, Koleo::Direct, device);
    (total, parts)
}

/// `f(0)`, …, `f(n - 1)`, each shard on its own thread (shard 0 on this one), with this step's
/// autocast type set on every thread: devices work at the same time (CPU devices on separate
/// cores, wgpu devices on separate queues' submissions).
fn per_shard<T: Send>(n: usize, compute: Option<DType>, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    if n == 1 {
        return vec![f(0)];
    }
    std::thread::scope(|scope| {
        let f = &f;
        let others: Vec<_> = (1..n)
            .map(|s| {
                scope.spawn(move || {
                    let _scope = precision::autocast(compute);
                    f(s)
                })
            })
            .collect();
        let first = f(0);
        std::iter::once(first)
            .chain(others.into_iter().map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e))))
            .collect()
    })
}

/// Rows of one tensor per shard, each made of `n_global` chunks (`lens[s][h]` rows of chunk
/// `h`), put in the whole batch's order (chunk-major, then shard) on `device`.
fn gather_chunks(parts: Vec<Option<Tensor<2>>>, lens: &[Vec<usize>], device: &Device) -> Option<Tensor<2>> {
    if let [part] = &parts[..] {
        // one shard is the whole batch, in order
        return part.clone();
    }
    let chunks = lens.first().map_or(0, Vec::len);
    let mut pieces = Vec::new();
    for h in 0..chunks {
        for (s, part) in parts.iter().enumerate() {
            let start: usize = lens[s][..h].iter().sum();
            if let Some(part) = part.as_ref().filter(|_| lens[s][h] > 0) {
                pieces.push(part.clone().narrow(0, start, lens[s][h]).to_device(device));
            }
        }
    }
    (!pieces.is_empty()).then(|| Tensor::cat(pieces, 0))
}

/// The inverse of [`gather_chunks`]: each shard's rows, on its own device.
fn scatter_chunks(whole: Tensor<2>, lens: &[Vec<usize>], devices: &[Device]) -> Vec<Option<Tensor<2>>> {
    if lens.len() == 1 {
        return vec![Some(whole)];
    }
    let chunks = lens.first().map_or(0, Vec::len);
    let mut starts = vec![0usize; chunks];
    let mut offset = 0;
    for (h, start) in starts.iter_mut().enumerate() {
        *start = offset;
        offset += lens.iter().map(|l| l[h]).sum::<usize>();
    }
    lens.iter()
        .zip(devices)
        .enumerate()
        .map(|(s, (l, device))| {
            let pieces: Vec<Tensor<2>> = (0..chunks)
                .filter(|&h| l[h] > 0)
                .map(|h| {
                    let before: usize = lens[..s].iter().map(|l| l[h]).sum();
                    whole.clone().narrow(0, starts[h] + before, l[h]).to_device(device)
                })
                .collect();
            (!pieces.is_empty()).then(|| Tensor::cat(pieces, 0))
        })
        .collect()
}

/// Options of a training run besides the recipe.
#[derive(Clone, Debug)]
pub struct RunOptions {
    pub out: PathBuf,
    /// Stop after this many steps of this invocation's schedule (the schedule keeps its length).
    pub max_steps: Option<usize>,
    pub max_minutes: Option<f64>,
    /// A new run's schedule sized to these minutes (see [`fit_schedule`]); they also cap it
    /// as `max_minutes` does.
    pub fit_minutes: Option<f64>,
    pub resume: bool,
    /// Start over in a folder that holds a run.
    pub overwrite: bool,
    pub progress: bool,
    /// Also keep the teacher backbone of every checkpoint as `snapshots/teacher_step{N}.safetensors`
    /// (for learning curves).
    pub keep_snapshots: bool,
    /// Split every step's batch over these (plain) devices, the first being `train`'s device
    /// (see [`TrainState::loss_and_grads`]); empty: that device alone. Not part of the recipe:
    /// a run resumes on any devices with the same result.
    pub devices: Vec<Device>,
    /// Burn's gradient checkpointing (see [`TrainState::new_with`]); not part of the recipe.
    pub gradient_checkpointing: bool,
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
    /// The student's (autodiff) device: the main device.
    pub device: Device,
    /// Gradient checkpointing on the student's devices ([`Self::new_with`]).
    pub checkpointing: bool,
    /// The (plain) devices a step's batch is split over, the main device first
    /// ([`Self::on_devices`]).
    pub devices: Vec<Device>,
    /// Distillation's frozen teacher on each of `devices`, copied once.
    frozen_replicas: Vec<SslModel>,
    /// Distillation's teacher cache, once [`Self::cache_teacher`] has built it: the targets
    /// then come from it instead of the teacher's backbone.
    pub teacher_cache: Option<TeacherCache>,
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

/// Each chunk of the heads' last layers (`[bottleneck, chunk]` f32, at most 64 MiB: see
/// [`super::head::prototype_chunks`]) must be one buffer on `device`: a clear error on an
/// adapter that binds less, instead of a failed allocation in the first step.
fn check_head_weights(c: &TrainConfig, device: &Device) -> Result<()> {
    let heads = [Some(("DINO", &c.dino_head)), c.ibot_separate_head.then_some(("iBOT", &c.ibot_head))];
    for (name, h) in heads.into_iter().flatten() {
        let chunk = super::head::prototype_chunks(h.bottleneck_dim, h.n_prototypes)[0].len();
        crate::backend::check_tensor_fits(
            device,
            (h.bottleneck_dim * chunk * 4) as u64,
            &format!("a chunk of the {name} head's last layer ({} x {chunk} f32)", h.bottleneck_dim),
            "use a smaller bottleneck (the recipe's `bottleneck_dim`), or a GPU adapter with larger bindings",
        )?;
    }
    Ok(())
}

/// Images per device when `images` are cut into contiguous shards over `devices`: the first
/// `images % n` one image larger, none empty (fewer shards than devices for a small batch).
fn shard_sizes(images: usize, devices: usize) -> Vec<usize> {
    let n = devices.min(images);
    (0..n).map(|s| images / n + usize::from(s < images % n)).collect()
}

/// The largest logits of a step on one device (`images` of its shard, `masked` patches of its
/// global crops) must be one buffer there ([`check_head_weights`] says why): the student's
/// DINO logits of every crop, the teacher's of the global crops with the masked patches (one
/// head) or the iBOT logits of the masked patches (separate heads).
fn check_logits(c: &TrainConfig, device: &Device, images: usize, masked: usize) -> Result<()> {
    let crops = c.crops.n_global + c.crops.n_local;
    let second = if c.ibot_separate_head {
        ("one step's iBOT", masked, c.ibot_head.n_prototypes)
    } else {
        ("one step's DINO and iBOT", images * c.crops.n_global + masked, c.dino_head.n_prototypes)
    };
    let tensors = [("one step's DINO", images * crops, c.dino_head.n_prototypes), second];
    check_logit_buffers(device, &tensors, "use a smaller --batch-size, more --devices, or fewer prototypes")
}

/// The teacher's logits of the whole step (`images`, `masked` patches), gathered on the main
/// device for the targets, must each be one buffer there.
fn check_gathered_logits(c: &TrainConfig, main: &Device, images: usize, masked: usize) -> Result<()> {
    let k_ibot = if c.ibot_separate_head { c.ibot_head.n_prototypes } else { c.dino_head.n_prototypes };
    let tensors = [
        ("the step's teacher CLS", images * c.crops.n_global, c.dino_head.n_prototypes),
        ("the step's teacher patch", masked, k_ibot),
    ];
    check_logit_buffers(main, &tensors, "use a smaller --batch-size or fewer prototypes")
}

/// Each `(what, rows, prototypes)` f32 logits tensor must be one buffer on `device`.
fn check_logit_buffers(device: &Device, tensors: &[(&str, usize, usize)], hint: &str) -> Result<()> {
    for &(what, rows, k) in tensors {
        let name = format!("{what} logits ({rows} rows x {k} prototypes, f32)");
        crate::backend::check_tensor_fits(device, (rows * k * 4) as u64, &name, hint)?;
    }
    Ok(())
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
        Self::new_with(c, device, false)
    }

    /// [`Self::new`], with burn's gradient checkpointing where `checkpointing`: the student's
    /// memory-bound operations (normalisations, activations, element-wise ops) keep no
    /// output for the backward pass and are recomputed in it, the matrix products and the
    /// attention keep theirs. Less memory, the same results, more compute.
    pub fn new_with(c: &TrainConfig, device: &Device, checkpointing: bool) -> Result<Self> {
        let compute = resolve_precision(c.precision, device)?;
        check_head_weights(c, device)?;
        let ad = if checkpointing {
            device.clone().autodiff().gradient_checkpointing()
        } else {
            device.clone().autodiff()
        };
        device.seed(c.seed);
        let mut student = SslModel::new(c, &ad);
        let frozen_teacher = match &c.distillation {
            Some(d) => Some(load_frozen_teacher(&d.teacher, c, &device.clone().inner())?),
            None => None,
        };
        if let (Some(d), Some(frozen)) = (&c.distillation, &frozen_teacher)
            && d.init_heads
        {
            student = heads_from_teacher(student, frozen, &d.teacher)?;
        }
        if let (Some(d), Some(frozen)) = (&c.distillation, &frozen_teacher)
            && d.init_backbone
        {
            student = backbone_from_teacher(student, frozen, &d.teacher)?;
        }
        let teacher = student.valid();
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
            checkpointing,
            devices: vec![device.clone()],
            frozen_replicas: Vec::new(),
            teacher_cache: None,
            compute,
            scaler: compute.map(|_| LossScaler::default()),
        })
    }

    /// Split every step's batch over `devices` (plain devices; the first must be the main
    /// device this state was made on), as [`Self::step`] describes.
    pub fn on_devices(mut self, devices: Vec<Device>) -> Result<Self> {
        if devices.first() != Some(&self.devices[0]) {
            return Err(Error::Usage("the first of the training devices must be the main device".into()));
        }
        if self.compute.is_some()
            && let Some(other) = devices.iter().find(|d| resolve_precision(Precision::Mixed, d).is_err())
        {
            return Err(Error::Usage(format!(
                "mixed precision on the main device but not on {other:?}: use \"precision\": \"f32\""
            )));
        }
        self.devices = devices;
        self.frozen_replicas.clear();
        Ok(self)
    }

    /// Build distillation's teacher cache over `data` (see [`TeacherCache`]) on this state's
    /// devices; `progress` gets the images done.
    pub fn cache_teacher(
        &mut self,
        data: &Dataset,
        c: &TrainConfig,
        progress: impl FnMut(usize),
    ) -> Result<()> {
        let frozen = self.frozen_teacher.as_ref().ok_or_else(|| {
            Error::Usage("the teacher cache is for distillation: this run has no frozen teacher".into())
        })?;
        if self.frozen_replicas.len() < self.devices.len() {
            self.frozen_replicas = self.devices.iter().map(|d| frozen.clone().to_device(d)).collect();
        }
        let replicas = &self.frozen_replicas[..self.devices.len()];
        self.teacher_cache =
            Some(TeacherCache::build(c, data, replicas, &self.devices, self.compute, progress)?);
        Ok(())
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

    /// The step's loss (`[total, dino_local, dino_global, koleo, ibot]`, read back) and the
    /// whole batch's gradients on the main device.
    ///
    /// With several devices this is burn's multi-device strategy, gradients gathered on the
    /// main device: the batch is cut into contiguous shards, one per device; each device runs
    /// the teacher on its shard, the main device turns all the teacher's logits into targets
    /// at once (Sinkhorn-Knopp and centering see the whole batch, as the official code
    /// all-reduces), each device runs a fork of the student and back-propagates its share of
    /// the loss (every mean is over the whole batch), and burn's `GradientsAccumulator` sums
    /// the gradients on the main device. KoLeo pairs each CLS with its nearest neighbour in the
    /// whole batch, which may sit on another device: the main device computes the loss and its
    /// gradient with respect to the normalised features of every row ([`koleo_gradient`]) and
    /// each device back-propagates its rows of it. One device is the same path with one shard.
    fn loss_and_grads(
        &mut self,
        c: &TrainConfig,
        batch: &Batch,
        teacher_temp: f64,
        centers: &mut Centers,
        step: usize,
    ) -> Result<(Vec<f64>, GradientsParams)> {
        let b = batch.step_images;
        let n_global = c.crops.n_global;
        let main = self.devices[0].clone();
        let sizes = shard_sizes(b, self.devices.len());
        let n = sizes.len();
        let devices: Vec<Device> = self.devices[..n].to_vec();
        let batches: Vec<std::borrow::Cow<Batch>> = if n == 1 {
            vec![std::borrow::Cow::Borrowed(batch)]
        } else {
            let mut start = 0;
            sizes
                .iter()
                .map(|&len| {
                    start += len;
                    std::borrow::Cow::Owned(batch.shard(start - len, len))
                })
                .collect()
        };
        if let Some(frozen) = &self.frozen_teacher
            && self.frozen_replicas.len() < n
        {
            self.frozen_replicas = devices.iter().map(|d| frozen.clone().to_device(d)).collect();
        }
        let teachers: Vec<SslModel> =
            match &self.frozen_teacher {
                Some(_) => self.frozen_replicas[..n].to_vec(),
                None => (0..n)
                    .map(|s| {
                        if s == 0 {
                            self.teacher.clone()
                        } else {
                            self.teacher.clone().to_device(&devices[s])
                        }
                    })
                    .collect(),
            };
        let scope = precision::autocast(self.compute);

        // the teacher on every shard, its targets over the whole batch on the main device
        let cls_lens: Vec<Vec<usize>> = sizes.iter().map(|&len| vec![len; n_global]).collect();
        let patch_lens: Vec<Vec<usize>> = batches
            .iter()
            .map(|sb| {
                let per = sb.masks.len() / n_global;
                (0..n_global)
                    .map(|h| sb.masks[h * per..(h + 1) * per].iter().flatten().filter(|&&m| m).count())
                    .collect()
            })
            .collect();
        for (s, device) in devices.iter().enumerate() {
            let masked: usize = patch_lens[s].iter().sum();
            check_logits(c, device, sizes[s], masked)?;
        }
        let masked: usize = patch_lens.iter().flatten().sum();
        check_gathered_logits(c, &main, b, masked)?;
        let compute = self.compute;
        let cache = self.teacher_cache.as_ref();
        let (cls_logits, patch_logits): (Vec<_>, Vec<_>) = per_shard(n, compute, |s| {
            let logits = match cache {
                Some(cache) => cache.logits(c, &teachers[s], &batches[s], &devices[s]),
                None => teacher_logits(c, &teachers[s], &batches[s], &devices[s]),
            };
            (Some(logits.cls), logits.patch)
        })
        .into_iter()
        .unzip();
        let whole = TeacherLogits {
            cls: gather_chunks(cls_logits, &cls_lens, &main).expect("a batch has images"),
            patch: gather_chunks(patch_logits, &patch_lens, &main),
        };
        let (cls_targets, patch_targets) = teacher_targets(c, whole, teacher_temp, centers, &main);
        let cls_targets = scatter_chunks(cls_targets, &cls_lens, &devices);
        let mut patch_targets = match patch_targets {
            Some(t) => scatter_chunks(t, &patch_lens, &devices),
            None => vec![None; n],
        };

        // the student on every shard: a fork of the main device's (same parameter ids)
        let autodiff: Vec<Device> = devices
            .iter()
            .map(|d| {
                let ad = d.clone().autodiff();
                if self.checkpointing { ad.gradient_checkpointing() } else { ad }
            })
            .collect();
        let students: Vec<SslModel> = (0..n)
            .map(|s| if s == 0 { self.student.clone() } else { self.student.clone().fork(&autodiff[s]) })
            .collect();
        let outputs: Vec<StudentOutput> =
            per_shard(n, compute, |s| student_forward(c, &students[s], &batches[s], &autodiff[s]));

        // KoLeo over the whole batch
        let with_koleo = c.koleo_loss_weight > 0.0 && c.dino_loss_weight > 0.0;
        let (mut koleo, koleo_value) = if n == 1 || !with_koleo {
            ((0..n).map(|_| Koleo::Direct).collect::<Vec<_>>(), 0.0)
        } else {
            let features: Vec<Option<Tensor<2>>> =
                outputs.iter().map(|o| Some(o.global_cls.clone().inner())).collect();
            let whole = gather_chunks(features, &cls_lens, &main).expect("a batch has images");
            let (values, gradients): (Vec<_>, Vec<_>) =
                (0..n_global).map(|h| koleo_gradient(whole.clone().narrow(0, h * b, b))).unzip();
            let value = crate::features::to_host(Tensor::cat(values, 0).sum())?[0] as f64;
            let gradients = scatter_chunks(Tensor::cat(gradients, 0), &cls_lens, &devices);
            let koleo = gradients
                .into_iter()
                .map(|g| Koleo::Gradient(Box::new(g.expect("every shard has rows"))))
                .collect();
            (koleo, value * c.koleo_loss_weight)
        };

        // every shard's losses, then (all finite) its backward
        // targets enter without autodiff: constants in the student's graph, whatever its
        // checkpointing
        let inputs: Vec<_> = outputs
            .into_iter()
            .zip(cls_targets)
            .zip(patch_targets.iter_mut().map(Option::take))
            .zip(koleo.iter_mut().map(|k| std::mem::replace(k, Koleo::Direct)))
            .map(|(((output, cls), patch), kind)| {
                std::sync::Mutex::new(Some((output, (cls.expect("every shard has rows"), patch), kind)))
            })
            .collect();
        let losses = per_shard(n, compute, |s| {
            let (output, targets, kind) =
                inputs[s].lock().expect("one thread per shard").take().expect("once");
            let (backward, total, parts) = shard_loss(c, output, targets, &batches[s], kind, &autodiff[s]);
            let read =
                crate::features::to_host(Tensor::cat(std::iter::once(total).chain(parts).collect(), 0))
                    .map_err(|e| Error::Device(format!("cannot read the loss back: {e}")));
            (backward, read)
        });
        let mut values = vec![0.0f64; 5];
        values[0] += koleo_value;
        values[3] += koleo_value;
        let mut to_backward = Vec::with_capacity(n);
        for (backward, read) in losses {
            for (v, r) in values.iter_mut().zip(read?) {
                *v += r as f64;
            }
            to_backward.push(std::sync::Mutex::new(Some(backward)));
        }
        if values.iter().any(|v| !v.is_finite()) {
            return Err(Error::Training(format!(
                "loss became non-finite at step {step} (total {}, parts {:?})",
                values[0],
                &values[1..]
            )));
        }
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
        let shard_grads = per_shard(n, compute, |s| {
            let loss = to_backward[s].lock().expect("one thread per shard").take().expect("once");
            let grads = if loss_scale == 1.0 { loss } else { loss.mul_scalar(loss_scale) }.backward();
            let grads = GradientsParams::from_grads(grads, &students[s]);
            if s > 0 { grads.to_device(&main, &students[s]) } else { grads }
        });
        drop(scope);
        let mut accumulator = GradientsAccumulator::<SslModel>::new();
        for grads in shard_grads {
            accumulator.accumulate(&self.student, grads);
        }
        Ok((values, accumulator.grads()))
    }

    /// One training step on `batch`: losses, backward, AdamW, EMA teacher. A non-finite loss
    /// is an error and leaves the models untouched. Under mixed precision the forward passes
    /// run under autocast, the loss is scaled for backward, and a step whose gradients
    /// overflow is skipped (the optimizer's and the teacher's weights unchanged, the scale
    /// halved), as PyTorch's gradient scaler does; in f32 such gradients are an error.
    pub fn step(&mut self, c: &TrainConfig, batch: &Batch, step: usize) -> Result<StepOutcome> {
        let teacher_temp = self.schedules.teacher_temp.at(step);
        let mut centers = Centers { dino: self.centers.dino.clone(), ibot: self.centers.ibot.clone() };
        let (values, mut grads) = self.loss_and_grads(c, batch, teacher_temp, &mut centers, step)?;
        self.centers = centers;
        let loss_scale = self.scaler.map_or(1.0, |s| s.scale);
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
            total: values[0],
            dino_local: values[1],
            dino_global: values[2],
            koleo: values[3],
            ibot: values[4],
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
    let mut state = TrainState::new_with(c, device, options.gradient_checkpointing)?;
    if !options.devices.is_empty() {
        state = state.on_devices(options.devices.clone())?;
    }
    // the logits of every crop's CLS, before anything is written (the masked patches' are
    // checked at each step: their number varies)
    for (images, device) in shard_sizes(c.batch_size, state.devices.len()).into_iter().zip(&state.devices) {
        check_logits(c, device, images, 0)?;
    }
    check_gathered_logits(c, &state.devices[0], c.batch_size, 0)?;
    std::fs::create_dir_all(out).map_err(|e| Error::io(out, e))?;
    let checkpoint_path = out.join(CHECKPOINT);
    let mut start = 0;
    // --max-minutes and --fit-minutes count from here: the teacher cache and the probe are
    // part of the run's cost
    let started = Instant::now();
    let mut fitted = None;
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
        if let Some(minutes) = options.fit_minutes {
            if c.distillation.as_ref().is_some_and(|d| d.teacher_cache) {
                build_teacher_cache(&mut state, c, data, options.progress)?;
            }
            let f = fit_schedule(&mut state, c, data, minutes, &started)?;
            state.schedules = Schedules::new(&f);
            fitted = Some(f);
        }
        let c = fitted.as_ref().unwrap_or(c);
        write_json_atomic(&out.join(CONFIG), c)?;
        let _ = std::fs::remove_file(out.join(METRICS));
        // the network at initialisation, for baselines (`dinov2 eval knn --weights` on it)
        crate::checkpoint::export::write_backbone(&state.teacher.backbone, &out.join(INIT_BACKBONE))?;
    }

    let c = fitted.as_ref().unwrap_or(c);
    let end = options.max_steps.map_or(c.total_steps, |m| (start + m).min(c.total_steps)).max(start);
    if c.distillation.as_ref().is_some_and(|d| d.teacher_cache)
        && start < end
        && state.teacher_cache.is_none()
    {
        build_teacher_cache(&mut state, c, data, options.progress)?;
    }
    let max_minutes = options.max_minutes.or(options.fit_minutes);
    let bar = crate::progress::bar(
        (end - start) as u64,
        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
        "training steps",
        !options.progress,
    );
    let metrics_path = out.join(METRICS);
    let mut metrics = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&metrics_path)
        .map_err(|e| Error::io(&metrics_path, e))?;
    let stepping = Instant::now();
    let mut order_cache = None;
    let mut last = None;
    let mut images = 0usize;
    let mut step = start;
    let out_of_time =
        |started: &Instant| max_minutes.is_some_and(|m| started.elapsed().as_secs_f64() > m * 60.0);
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
        let rate = images as f64 / stepping.elapsed().as_secs_f64().max(1e-9);
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
    if stop && step < end {
        eprintln!(
            "note: stopped at step {step} of {}: the {}-minute limit came before the schedule's end (--resume continues it)",
            c.total_steps,
            max_minutes.unwrap_or_default()
        );
    }
    Ok(RunSummary {
        steps_done: step - start,
        last_loss: last,
        images_per_second: images as f64 / stepping.elapsed().as_secs_f64().max(1e-9),
        checkpoint: checkpoint_path,
    })
}

/// Build distillation's teacher cache on `state`, with a progress bar (the time it takes
/// counts in the run's minutes).
fn build_teacher_cache(
    state: &mut TrainState,
    c: &TrainConfig,
    data: &Dataset,
    progress: bool,
) -> Result<()> {
    let caching = crate::progress::bar(
        data.len() as u64,
        "{elapsed_precise} [{bar:30}] {pos}/{len} {msg}",
        "caching the teacher's outputs",
        !progress,
    );
    let t = Instant::now();
    state.cache_teacher(data, c, |n| caching.inc(n as u64))?;
    caching.finish_and_clear();
    // scripts/fashion_mnist_distill.sh reads the seconds at the end of this line
    eprintln!(
        "cached the teacher's outputs for {} images (as is and mirrored) in {:.1} s",
        data.len(),
        t.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Steps of a speed probe not timed (the first compile kernels, grow memory pools and fill
/// caches: with 3 of them the probe timed 2 CPU cores 7-15 % slower than the run then went, and
/// `--fit-minutes 3` ended at 2.5 min, `--fit-minutes 60` at 52), and the most that are timed.
const PROBE_UNTIMED: usize = 10;
const PROBE_TIMED: usize = 20;
/// The share of the time left that the fitted schedule plans for (checkpoints, slower steps).
const FIT_SHARE: f64 = 0.95;

/// A length `--fit-minutes` can fit a schedule to: positive and finite.
pub fn check_fit_minutes(minutes: f64) -> Result<()> {
    if minutes > 0.0 && minutes.is_finite() {
        Ok(())
    } else {
        Err(Error::Usage(format!("--fit-minutes must be a positive number of minutes, not {minutes}")))
    }
}

/// `train --fit-minutes`: `c` with its schedule sized (in the same shape,
/// [`TrainConfig::with_schedule_length`]) to what `state` does in the `minutes` counted from
/// `started`, measured by a probe of a few steps that is then undone: `state` is left as it
/// was, so the run is the one its config.json describes. The probe times up to
/// [`PROBE_TIMED`] steps after [`PROBE_UNTIMED`], fewer where they would take more than a
/// twentieth of the minutes.
pub fn fit_schedule(
    state: &mut TrainState,
    c: &TrainConfig,
    data: &Dataset,
    minutes: f64,
    started: &Instant,
) -> Result<TrainConfig> {
    check_fit_minutes(minutes)?;
    let budget = minutes * 60.0;
    eprintln!("fitting the schedule to {minutes} min: timing a few steps, then undoing them");
    let saved = (
        state.student.clone(),
        state.teacher.clone(),
        state.optimizer.clone(),
        state.centers.clone(),
        state.scaler,
    );
    let mut order_cache = None;
    let mut timing = None;
    let mut timed = 0;
    for step in 0.. {
        if step == PROBE_UNTIMED {
            timing = Some(Instant::now());
        }
        if let Some(t) = timing
            && (timed == PROBE_TIMED || (timed >= 2 && t.elapsed().as_secs_f64() > budget / 20.0))
        {
            break;
        }
        if started.elapsed().as_secs_f64() > budget {
            return Err(Error::Usage(format!(
                "--fit-minutes {minutes}: the speed probe used all of it ({} steps in {:.1} s); give more minutes",
                step,
                started.elapsed().as_secs_f64()
            )));
        }
        let indices = batch_indices(data.len(), c.batch_size, step, c.seed, &mut order_cache);
        let batch = make_batch(c, data, &indices, step)?;
        state.step(c, &batch, step)?;
        timed += usize::from(timing.is_some());
    }
    let per_step = timing.map_or(0.0, |t| t.elapsed().as_secs_f64()) / timed as f64;
    (state.student, state.teacher, state.optimizer, state.centers, state.scaler) = saved;
    let left = budget - started.elapsed().as_secs_f64();
    let steps = (FIT_SHARE * left / per_step).floor();
    if steps < 1.0 {
        return Err(Error::Usage(format!(
            "--fit-minutes {minutes}: after the speed probe ({per_step:.2} s a step) no time is left for a step; give more minutes"
        )));
    }
    let fitted = c.with_schedule_length(steps as usize);
    fitted.schedule_warnings().iter().for_each(|w| eprintln!("warning: {w}"));
    eprintln!(
        "fitted the schedule to {minutes} min: {} steps of {} images (epoch_length {}; {:.1} images/s over {timed} timed steps, {:.1} s left)",
        fitted.total_steps,
        fitted.batch_size,
        fitted.epoch_length,
        c.batch_size as f64 / per_step,
        left
    );
    Ok(fitted)
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

/// `student` with its DINO and iBOT heads replaced by copies of the frozen `teacher`'s
/// ([`crate::train::config::Distillation::init_heads`]); an error naming the first tensor
/// whose shape differs where the heads do not fit.
pub fn heads_from_teacher(student: SslModel, teacher: &SslModel, path: &Path) -> Result<SslModel> {
    let values = named_params(teacher)?;
    let fit = |e: Error| {
        Error::Usage(format!(
            "{}: --init-heads-from-teacher needs heads of the student's shapes ({e}): a teacher as wide as the student, with its head widths",
            path.display()
        ))
    };
    let SslModel { backbone, dino_head, ibot_head } = student;
    let dino_head = load_named_params(dino_head, &values, "dino_head.").map_err(fit)?;
    let ibot_head = match ibot_head {
        Some(h) if teacher.ibot_head.is_some() => {
            Some(load_named_params(h, &values, "ibot_head.").map_err(fit)?)
        }
        Some(_) => return Err(fit(Error::Usage("the teacher's iBOT head is tied to its DINO head".into()))),
        None => None,
    };
    Ok(SslModel { backbone, dino_head, ibot_head })
}

/// The teacher's blocks that a student `depth` blocks deep starts from
/// ([`crate::train::config::Distillation::init_backbone`]): spread evenly over the teacher's
/// `teacher_depth` (≥ `depth`), first and last included; a one-block student takes the first.
pub fn teacher_blocks(depth: usize, teacher_depth: usize) -> Vec<usize> {
    if depth <= 1 {
        return vec![0; depth];
    }
    (0..depth).map(|i| ((i * (teacher_depth - 1)) as f64 / (depth - 1) as f64).round() as usize).collect()
}

/// `student` with its backbone replaced by the frozen `teacher`'s, its blocks taken by
/// [`teacher_blocks`] ([`crate::train::config::Distillation::init_backbone`]); a one-line
/// error where the architectures cannot pair.
pub fn backbone_from_teacher(student: SslModel, teacher: &SslModel, path: &Path) -> Result<SslModel> {
    check_teacher_backbone(path, &teacher.backbone.config, &student.backbone.config)?;
    let blocks = teacher_blocks(student.backbone.config.depth, teacher.backbone.config.depth);
    let mut values = std::collections::BTreeMap::new();
    for (name, value) in named_params(&teacher.backbone)? {
        let block = name.strip_prefix("blocks.").and_then(|rest| rest.split_once('.'));
        match block.and_then(|(j, tail)| Some((j.parse::<usize>().ok()?, tail))) {
            Some((j, tail)) => {
                for (i, _) in blocks.iter().enumerate().filter(|&(_, &b)| b == j) {
                    values.insert(format!("blocks.{i}.{tail}"), value.clone());
                }
            }
            None => {
                values.insert(name, value);
            }
        }
    }
    let SslModel { backbone, dino_head, ibot_head } = student;
    let backbone = load_named_params(backbone, &values, "")
        .map_err(|e| Error::Usage(format!("{}: --init-backbone-from-teacher: {e}", path.display())))?;
    Ok(SslModel { backbone, dino_head, ibot_head })
}

/// Whether a teacher of architecture `teacher` can lend its backbone to a `student`
/// (`--init-backbone-from-teacher`): as deep or deeper, everything else equal; a one-line error
/// naming the first difference where not.
pub fn check_teacher_backbone(
    path: &Path,
    teacher: &crate::config::VitConfig,
    student: &crate::config::VitConfig,
) -> Result<()> {
    let shape = |a: &crate::config::VitConfig| {
        [a.embed_dim, a.num_heads, a.ffn_hidden, a.patch_size, a.pos_grid, a.num_register_tokens]
    };
    let names = ["width", "heads", "feed-forward width", "patch", "position grid", "registers"];
    let differs = if let Some(k) = (0..names.len()).find(|&k| shape(teacher)[k] != shape(student)[k]) {
        Some(format!(
            "the teacher's {} is {}, the student's {}",
            names[k],
            shape(teacher)[k],
            shape(student)[k]
        ))
    } else if teacher.ffn != student.ffn {
        Some(format!("the teacher's feed-forward is {:?}, the student's {:?}", teacher.ffn, student.ffn))
    } else if teacher.depth < student.depth {
        Some(format!("the teacher has {} blocks, the student {}", teacher.depth, student.depth))
    } else {
        None
    };
    refuse_teacher(
        path,
        "--init-backbone-from-teacher needs the student's architecture, as deep or deeper",
        differs,
    )
}

/// `Ok` where `differs` is `None`, else the one-line usage error `PATH: needs: why`.
fn refuse_teacher(path: &Path, needs: &str, differs: Option<String>) -> Result<()> {
    match differs {
        Some(why) => Err(Error::Usage(format!("{}: {needs}: {why}", path.display()))),
        None => Ok(()),
    }
}

/// Whether the heads of the teacher run at `path` (recipe `teacher`) have the shapes of the
/// student's of `c` (its width and head widths), as `--init-heads-from-teacher` needs: a
/// one-line error naming the first difference where not.
pub fn check_teacher_heads(path: &Path, teacher: &TrainConfig, c: &TrainConfig) -> Result<()> {
    let widths = |h: &crate::train::head::HeadConfig| (h.hidden_dim, h.bottleneck_dim, h.n_layers);
    let ibot = |c: &TrainConfig| if c.ibot_separate_head { Some(widths(&c.ibot_head)) } else { None };
    let differs = if teacher.arch.embed_dim != c.arch.embed_dim {
        Some(format!("the teacher is {} wide, the student {}", teacher.arch.embed_dim, c.arch.embed_dim))
    } else if widths(&teacher.dino_head) != widths(&c.dino_head) {
        Some(format!(
            "the teacher's DINO head is (hidden, bottleneck, layers) {:?}, the student's {:?}",
            widths(&teacher.dino_head),
            widths(&c.dino_head)
        ))
    } else if ibot(teacher) != ibot(c) {
        Some(format!("the teacher's iBOT head is {:?}, the student's {:?}", ibot(teacher), ibot(c)))
    } else {
        None
    };
    refuse_teacher(path, "--init-heads-from-teacher needs heads of the student's shapes", differs)
}

/// The architecture of distillation's teacher at `path` (a run's from its header, a
/// backbone's from its file), checked against `c`'s student: an error where they cannot pair.
pub fn check_teacher(path: &Path, c: &TrainConfig) -> Result<()> {
    let arch = match run_config(path) {
        Some(run) => run.arch,
        None => crate::checkpoint::read_backbone(path, &crate::checkpoint::LoadOptions::default())?.config,
    };
    check_teacher_patch(path, &arch, c)?;
    if c.distillation.as_ref().is_some_and(|d| d.init_backbone) {
        check_teacher_backbone(path, &arch, &c.arch)?;
    }
    Ok(())
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
    super::head::split_unchunked_last_layers(&mut tensors, &config.dino_head, &config.ibot_head);
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
