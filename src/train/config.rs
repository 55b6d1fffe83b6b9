//! The training recipe as one JSON-serialisable config. Defaults are the official DINOv2 ones
//! (`dinov2/configs/ssl_default_config.yaml`, the ViT-L/g values where they differ are noted);
//! the `tiny` preset changes sizes and lengths for small images and short runs on one machine.

use serde::{Deserialize, Serialize};

use super::augment::CropConfig;
use super::head::HeadConfig;
use crate::config::VitConfig;
use crate::error::{Error, Result};

/// How the teacher's outputs become targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Centering {
    /// Sinkhorn-Knopp, 3 iterations (the paper's method and the released models' configs;
    /// `ssl_default_config.yaml` itself still says `centering`).
    SinkhornKnopp,
    /// Softmax after subtracting an EMA centre (DINO; centre momentum `center_momentum`).
    Centering,
}

/// The element type of the matrix products (the parameters and the optimizer stay f32).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// `mixed` where the device is a hardware wgpu adapter with shader-f16, `f32` otherwise
    /// (the CPU backend computes in f32; software adapters emulate f16 slowly).
    #[default]
    Auto,
    /// Everything in f32.
    F32,
    /// f16 matrix products under autocast with a dynamic loss scale (the official
    /// `compute_precision` fp16 with its gradient scaler); an error where the device has no f16.
    Mixed,
}

/// A final phase at larger crops (the paper's high-resolution adaptation: 518 px for the
/// official models), with the position embeddings interpolated to the new grid.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HighRes {
    /// Steps at the end of the run that use the larger crops.
    pub steps: usize,
    pub global_size: usize,
    pub local_size: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// The backbone.
    pub arch: VitConfig,
    /// Multi-crop sizes, counts, scales and augmentation probabilities.
    pub crops: CropConfig,
    /// Images per step (official: 64 per GPU).
    pub batch_size: usize,
    /// Schedule length in steps (official: epochs × 1250).
    pub total_steps: usize,
    /// The official "epoch" (1250 steps): the unit of warm-ups and the last-layer freeze.
    pub epoch_length: usize,
    /// Learning rate for a batch of 1024 (official 0.004); scaled by sqrt(batch / 1024).
    pub base_lr: f64,
    pub min_lr: f64,
    pub warmup_epochs: f64,
    pub weight_decay: f64,
    pub weight_decay_end: f64,
    pub adamw_betas: (f64, f64),
    /// Layer-wise lr decay (official 0.9).
    pub layerwise_decay: f64,
    /// Patch-embedding lr multiplier (official 0.2).
    pub patch_embed_lr_mult: f64,
    /// Gradient-norm bound per student part (official 3.0).
    pub clip_grad: f64,
    /// Epochs with the heads' last layer frozen (official 1).
    pub freeze_last_layer_epochs: f64,
    /// Teacher EMA momentum, cosine from `momentum_teacher` to `final_momentum_teacher`
    /// (official 0.992 → 1; 0.994 for ViT-L/g).
    pub momentum_teacher: f64,
    pub final_momentum_teacher: f64,
    pub student_temp: f64,
    /// Teacher temperature, linear warm-up from `warmup_teacher_temp` over
    /// `warmup_teacher_temp_epochs` (official 0.04 → 0.07 over 30 epochs).
    pub teacher_temp: f64,
    pub warmup_teacher_temp: f64,
    pub warmup_teacher_temp_epochs: f64,
    pub centering: Centering,
    pub center_momentum: f64,
    pub dino_head: HeadConfig,
    pub dino_loss_weight: f64,
    pub koleo_loss_weight: f64,
    /// A separate iBOT head (untied); `false` shares the DINO head (the default config;
    /// the released ViT-g config unties them).
    pub ibot_separate_head: bool,
    pub ibot_head: HeadConfig,
    pub ibot_loss_weight: f64,
    /// Fraction of global crops that get a mask (official 0.5).
    pub mask_sample_probability: f64,
    /// Mask ratios, stratified over this range (official 0.1–0.5).
    pub mask_ratio: (f64, f64),
    /// Efficient stochastic depth rate of every block (official default 0.3; 0.4 for ViT-L/g).
    pub drop_path_rate: f64,
    /// Optional high-resolution phase at the end.
    pub highres: Option<HighRes>,
    /// Seed of the model init, the data order and every augmentation.
    pub seed: u64,
    /// Steps between checkpoints (one is always written at the end).
    pub checkpoint_every: usize,
    /// f32 or mixed precision (official: fp16 compute with a gradient scaler); `auto` picks
    /// mixed where the adapter supports f16.
    #[serde(default)]
    pub precision: Precision,
    /// Distillation from a frozen pretrained teacher instead of self-distillation from the
    /// EMA (`dinov2 distill`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub distillation: Option<Distillation>,
}

/// Distillation (the paper's recipe for its smaller models, §5 and appendix): the same losses,
/// but the targets come from a frozen pretrained teacher; the student sees unmasked global crops
/// and iBOT applies to all their patch tokens; no stochastic depth (`dinov2 distill` sets
/// `drop_path_rate` to 0); the EMA of the student is kept and is the model released.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Distillation {
    /// The teacher: a run folder or training checkpoint of this project (backbone and heads
    /// are used), or any backbone the loaders read (official .pth, HuggingFace folder,
    /// exported safetensors), whose heads are then initialised from `seed` and stay frozen.
    /// It must use the student's patch size (iBOT pairs their patch tokens).
    pub teacher: std::path::PathBuf,
    /// Compute the frozen teacher's backbone outputs once, at the start of the run, for every
    /// training image and its mirror image (the view of a scale-1 global crop, no other
    /// augmentation), and pair each student global crop with the teacher's output for its
    /// image the same way round, instead of running the teacher's backbone on every crop
    /// (`dinov2 distill --teacher-cache`; only its heads run at each step). An
    /// approximation of the teacher seeing the student's own crop, close where the global
    /// crops cover most of the image; it holds the cache in memory (4 bytes per value, tokens
    /// × teacher width × 2 per image).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub teacher_cache: bool,
    /// Start the student's DINO and iBOT heads (and so their EMA) as copies of the frozen
    /// teacher's (`dinov2 distill --init-heads-from-teacher`): the student then learns to hit
    /// prototypes that already mean something, instead of new random ones. Needs heads of the
    /// same shapes: a teacher run of this project as wide as the student, with the student's
    /// head widths. Not in the paper, whose students are narrower than their teacher; the
    /// released model (the student's EMA backbone) starts from the seed either way.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_heads: bool,
    /// Start the student's backbone (and so its EMA) from the teacher's, as DistilBERT starts
    /// its student from every other layer of its teacher (`dinov2 distill
    /// --init-backbone-from-teacher`): the patch embedding, class, register and mask tokens,
    /// position embedding and final norm copied, and the student's d blocks taken from the
    /// teacher's D evenly, first and last included (block i from block round(i (D − 1) /
    /// (d − 1)); [`crate::train::trainer::teacher_blocks`]). Needs a teacher at least as deep
    /// with the student's width, heads, feed-forward, patch, position grid and registers. Not
    /// in the paper, whose students are narrower than their teacher.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub init_backbone: bool,
}

impl TrainConfig {
    /// The recipe of a preset: `tiny` (designed here for small images) or an official
    /// architecture with the official recipe. Patch-14 models use 98 px local crops and train
    /// with a position grid of the global crop (16 × 16 at 224 px), as the official
    /// `vitl14.yaml` / `vitg14.yaml` and `build_model_from_cfg` do; ViT-L and ViT-g take those
    /// files' values (SwiGLU aside: the presets keep the released models' MLP for ViT-L).
    pub fn preset(name: &str) -> Result<Self> {
        let arch = VitConfig::preset(name)?;
        if name == "tiny" {
            return Ok(Self::tiny());
        }
        let large = arch.embed_dim >= 1024;
        let mut c = Self::official(arch);
        c.crops.local_size = 98;
        c.arch.pos_grid = c.crops.global_size / c.arch.patch_size;
        if large {
            // vitl14.yaml / vitg14.yaml
            c.momentum_teacher = 0.994;
            c.drop_path_rate = 0.4;
            c.base_lr = 2e-4;
            c.warmup_epochs = 80.0;
            c.total_steps = 500 * 1250;
            c.layerwise_decay = 1.0;
            c.weight_decay_end = 0.2;
            c.dino_head.n_prototypes = 131072;
            c.dino_head.bottleneck_dim = 384;
            c.ibot_separate_head = true;
            c.ibot_head.n_prototypes = 131072;
        }
        Ok(c)
    }

    /// The official recipe around a given backbone (ssl_default_config.yaml + vitl16 values
    /// for a 100-epoch schedule).
    pub fn official(arch: VitConfig) -> Self {
        Self {
            arch,
            crops: CropConfig::default(),
            batch_size: 64,
            total_steps: 100 * 1250,
            epoch_length: 1250,
            base_lr: 0.004,
            min_lr: 1e-6,
            warmup_epochs: 10.0,
            weight_decay: 0.04,
            weight_decay_end: 0.4,
            adamw_betas: (0.9, 0.999),
            layerwise_decay: 0.9,
            patch_embed_lr_mult: 0.2,
            clip_grad: 3.0,
            freeze_last_layer_epochs: 1.0,
            momentum_teacher: 0.992,
            final_momentum_teacher: 1.0,
            student_temp: 0.1,
            teacher_temp: 0.07,
            warmup_teacher_temp: 0.04,
            warmup_teacher_temp_epochs: 30.0,
            centering: Centering::SinkhornKnopp,
            center_momentum: 0.9,
            dino_head: HeadConfig::default(),
            dino_loss_weight: 1.0,
            koleo_loss_weight: 0.1,
            ibot_separate_head: false,
            ibot_head: HeadConfig::default(),
            ibot_loss_weight: 1.0,
            mask_sample_probability: 0.5,
            mask_ratio: (0.1, 0.5),
            drop_path_rate: 0.3,
            highres: None,
            seed: 0,
            checkpoint_every: 1250,
            precision: Precision::Auto,
            distillation: None,
        }
    }

    /// The `tiny` recipe: 28 px global crops of 0.9 to 1 of the image (patch 14: 2 × 2 grids),
    /// no local crops, geometric augmentations only (crops and flips: no colour jitter,
    /// grayscale, solarisation or blur), a constant teacher momentum of 0.996, small heads
    /// (1024 prototypes), 10500 steps of 64 images (about an hour on 2 CPU cores without
    /// AVX-512: 9322 of them in 60 minutes at 166 images/s; `--fit-minutes 60` made it 18105 on
    /// 2 AVX-512 cores), "epochs" of 525 steps (a 20th of the schedule, as fitting keeps them)
    /// for the warm-ups and the last-layer freeze, no stochastic depth. Larger images are
    /// cropped the same way (the crops are resized). The official augmentations, made for 224 px
    /// photographs, cost k-NN top-1 on 28 px Fashion-MNIST (BENCHMARKS.md, "Milder
    /// augmentations" and "No local crops"); local crops come back with `crops.n_local` (0.3 to
    /// 0.6 of the image, 14 px).
    pub fn tiny() -> Self {
        let mut c = Self::official(VitConfig::tiny());
        c.crops = CropConfig {
            global_size: 28,
            local_size: 14,
            n_global: 2,
            n_local: 0,
            global_scale: (0.9, 1.0),
            local_scale: (0.3, 0.6),
            blur_kernel: 1,
            jitter_prob: 0.0,
            grayscale_prob: 0.0,
            solarize_prob: 0.0,
            ..CropConfig::default()
        };
        c.centering = Centering::SinkhornKnopp;
        c.batch_size = 64;
        c.total_steps = 10500;
        c.epoch_length = 525;
        c.base_lr = 0.004;
        c.warmup_epochs = 2.0;
        c.freeze_last_layer_epochs = 1.0;
        c.warmup_teacher_temp_epochs = 5.0;
        c.momentum_teacher = 0.996;
        c.final_momentum_teacher = 0.996;
        c.dino_head = HeadConfig { n_prototypes: 1024, hidden_dim: 512, bottleneck_dim: 128, n_layers: 3 };
        c.ibot_head = c.dino_head.clone();
        c.drop_path_rate = 0.0;
        c.checkpoint_every = 1050;
        c
    }

    /// Read a config file: a complete JSON config (`dinov2 train --print-config` writes one).
    pub fn from_json_file(path: &std::path::Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let c: Self =
            serde_json::from_str(&text).map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        c.validate().map_err(|e| Error::Config(format!("{}: {e}", path.display())))?;
        Ok(c)
    }

    /// Check the numbers fit together; a message naming the value at fault.
    pub fn validate(&self) -> Result<(), String> {
        self.arch.check()?;
        let p = self.arch.patch_size;
        let mut sizes =
            vec![("crops.global_size", self.crops.global_size), ("crops.local_size", self.crops.local_size)];
        if let Some(h) = &self.highres {
            if self.distillation.as_ref().is_some_and(|d| d.teacher_cache) {
                return Err("distillation.teacher_cache holds the teacher's outputs at crops.global_size: \
                            it cannot be used with a highres phase"
                    .to_string());
            }
            sizes.push(("highres.global_size", h.global_size));
            sizes.push(("highres.local_size", h.local_size));
            if h.steps > self.total_steps {
                return Err(format!("highres.steps {} exceeds total_steps {}", h.steps, self.total_steps));
            }
        }
        for (name, size) in sizes {
            if size < p || size % p != 0 {
                return Err(format!("{name} {size} is not a positive multiple of the patch size {p}"));
            }
        }
        if self.crops.n_global != 2 {
            return Err(format!(
                "crops.n_global is {}: the DINO loss pairs exactly 2 global crops",
                self.crops.n_global
            ));
        }
        let positive = [
            ("batch_size", self.batch_size as f64),
            ("total_steps", self.total_steps as f64),
            ("epoch_length", self.epoch_length as f64),
            ("student_temp", self.student_temp),
            ("teacher_temp", self.teacher_temp),
            ("warmup_teacher_temp", self.warmup_teacher_temp),
            ("dino_head.n_prototypes", self.dino_head.n_prototypes as f64),
            ("checkpoint_every", self.checkpoint_every as f64),
        ];
        for (name, value) in positive {
            if !(value > 0.0) {
                return Err(format!("{name} must be positive, got {value}"));
            }
        }
        if self.batch_size < 2 {
            return Err("batch_size must be at least 2 (KoLeo needs a neighbour)".into());
        }
        if !(0.0..1.0).contains(&self.drop_path_rate) {
            return Err(format!("drop_path_rate {} is outside [0, 1)", self.drop_path_rate));
        }
        if !(0.0..=1.0).contains(&self.mask_sample_probability) {
            return Err(format!(
                "mask_sample_probability {} is outside [0, 1]",
                self.mask_sample_probability
            ));
        }
        Ok(())
    }

    /// The learning rate after batch scaling.
    pub fn lr(&self) -> f64 {
        super::schedule::scaled_lr(self.base_lr, self.batch_size)
    }

    /// `epochs` in steps.
    pub fn epochs_to_steps(&self, epochs: f64) -> usize {
        (epochs * self.epoch_length as f64).round() as usize
    }

    /// This recipe with its schedule stretched or shrunk to `total_steps`, in the same shape:
    /// the epoch length (in which the warm-ups and the last layer's freeze are counted) and a
    /// high-resolution phase scale with it, so each keeps its fraction of the run (`train
    /// --fit-minutes`).
    pub fn with_schedule_length(&self, total_steps: usize) -> TrainConfig {
        let total_steps = total_steps.max(1);
        let ratio = total_steps as f64 / self.total_steps.max(1) as f64;
        let scale = |n: usize| (n as f64 * ratio).round() as usize;
        let mut c = self.clone();
        c.total_steps = total_steps;
        c.epoch_length = scale(self.epoch_length).max(1);
        if let Some(h) = c.highres.as_mut() {
            h.steps = scale(h.steps).clamp(usize::from(h.steps > 0), total_steps);
        }
        c
    }

    /// The parts of the schedule that take more than half of the run: warm-ups and the last
    /// layer's freeze are counted in epochs of `epoch_length` steps, so a shorter `total_steps`
    /// alone leaves them as long as before. One message per part, empty when all fit.
    pub fn schedule_warnings(&self) -> Vec<String> {
        let parts = [
            ("the learning-rate warm-up (warmup_epochs)", self.warmup_epochs, true),
            (
                "the teacher-temperature warm-up (warmup_teacher_temp_epochs)",
                self.warmup_teacher_temp_epochs,
                self.warmup_teacher_temp != self.teacher_temp,
            ),
            ("the last layer's freeze (freeze_last_layer_epochs)", self.freeze_last_layer_epochs, true),
        ];
        parts
            .into_iter()
            .filter(|&(_, epochs, applies)| applies && 2 * self.epochs_to_steps(epochs) > self.total_steps)
            .map(|(name, epochs, _)| {
                format!(
                    "{name} lasts {} of the run's {} steps (epoch_length {}): scale epoch_length with \
                     total_steps to keep the schedule's shape",
                    self.epochs_to_steps(epochs),
                    self.total_steps,
                    self.epoch_length
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `with_schedule_length` keeps every part of the schedule at its fraction of the run.
    #[test]
    fn a_resized_schedule_keeps_its_shape() {
        let mut tiny = TrainConfig::tiny();
        tiny.highres = Some(HighRes { steps: 1050, global_size: 42, local_size: 14 });
        let fraction = |c: &TrainConfig, epochs: f64| c.epochs_to_steps(epochs) as f64 / c.total_steps as f64;
        for steps in [700, 10_500, 63_000] {
            let c = tiny.with_schedule_length(steps);
            assert_eq!(c.total_steps, steps);
            c.validate().unwrap();
            for epochs in [c.warmup_epochs, c.warmup_teacher_temp_epochs, c.freeze_last_layer_epochs] {
                let (before, after) = (fraction(&tiny, epochs), fraction(&c, epochs));
                // rounding the epoch length to whole steps moves a fraction by at most one epoch's
                // rounding over the run
                assert!(
                    (before - after).abs() <= epochs / c.total_steps as f64 + 1e-9,
                    "{epochs}: {before} {after}"
                );
            }
            let h = c.highres.as_ref().unwrap();
            assert!((h.steps as f64 / steps as f64 - 0.1).abs() < 1e-3, "{}", h.steps);
            assert!(c.schedule_warnings().is_empty(), "{:?}", c.schedule_warnings());
            // nothing else changes
            let mut same = c.clone();
            same.total_steps = tiny.total_steps;
            same.epoch_length = tiny.epoch_length;
            same.highres = tiny.highres.clone();
            assert_eq!(same, tiny);
        }
        // the shortest schedules still validate: an epoch is at least a step
        let one = tiny.with_schedule_length(0);
        assert_eq!((one.total_steps, one.epoch_length, one.highres.as_ref().unwrap().steps), (1, 1, 1));
        one.validate().unwrap();
    }
}
