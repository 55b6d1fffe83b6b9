//! The memory plan of a training step (docs/SCALE.md): the bytes of the parameters, the AdamW
//! moments and the EMA teacher, and of the activations one image keeps for the backward pass,
//! from the recipe alone. `dinov2 bench memory` measures steps next to it.
//!
//! The peak of a step comes at the start of the backward pass, when every activation is still
//! kept and the gradients are not made yet; the backward then trades activations for
//! gradients, so the peak is the fixed part plus the larger of the batch's activations and the
//! gradients. Activations are floats per token per block in units of the width (`a·D` for the
//! attention half, `b·F` for the FFN's hidden width F); `a` and `b` are measured on the CPU
//! backend (ViT-S/14 and ViT-B/14 at 224 px, BENCHMARKS.md), where burn's autodiff keeps about
//! 15 floats per token per block per unit of D for the MLP presets (the attention keeps q, k,
//! v, its output and the log-sum-exp, never the N × N scores). The heads keep their MLP and
//! `FLOATS_PER_HEAD_ROW_K` floats per prototype for each CLS and masked patch row. On the CPU
//! backend the attention's backward also holds the N × N probabilities of one block for a
//! moment ([`Plan::cpu_attention_per_image`]); the fused WGSL kernels never do.

use super::TrainConfig;
use super::head::HeadConfig;
use crate::config::FfnKind;

/// Floats a token keeps per block, per unit of the embedding width.
pub const FLOATS_PER_TOKEN_PER_BLOCK_D: f64 = 7.0;
/// … per unit of the FFN's hidden width (SwiGLU: its two branches and their product count
/// 1.5 times its hidden width).
pub const FLOATS_PER_TOKEN_PER_BLOCK_FFN: f64 = 2.0;
/// Floats each head row keeps per prototype: the logits, their scaled log-softmax, the
/// product with the teacher's targets, and the targets.
pub const FLOATS_PER_HEAD_ROW_K: f64 = 4.0;
/// N × N matrices per head of one block that the CPU attention's backward holds at once (the
/// scores, probabilities, their gradient, the scores' gradient and temporaries; measured with
/// the tiny preset at 224 px, 1025 tokens per crop, where they matter).
pub const CPU_ATTENTION_MATRICES: f64 = 6.0;

/// What a training step of a recipe needs, by part (bytes unless named otherwise).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Plan {
    /// Parameters of the student: backbone and heads.
    pub student_params: u64,
    /// Student weights, their gradients, AdamW's two moments and the EMA teacher.
    pub weights: u64,
    pub gradients: u64,
    pub adamw: u64,
    pub teacher: u64,
    /// The weight-normalised last layers (`v / ‖v‖ · g`, kept for backward), per step.
    pub last_layers: u64,
    /// Tokens one image brings to the student (every crop, CLS and registers included).
    pub tokens_per_image: u64,
    /// Activations kept for backward, per image: backbone, heads.
    pub backbone_per_image: u64,
    pub heads_per_image: u64,
    /// The CPU backend's attention backward, for a moment, per image (0 on wgpu).
    pub cpu_attention_per_image: u64,
}

impl Plan {
    /// What does not grow with the batch and is held through the whole step: weights,
    /// AdamW's moments, the teacher, the last layers' normalised weights.
    pub fn fixed(&self) -> u64 {
        self.weights + self.adamw + self.teacher + self.last_layers
    }

    /// Activations per image (`cpu`: with the CPU attention's moment).
    pub fn per_image(&self, cpu: bool) -> u64 {
        self.backbone_per_image + self.heads_per_image + if cpu { self.cpu_attention_per_image } else { 0 }
    }

    /// The peak of a step of `batch` images: the fixed part and the larger of the
    /// activations and the gradients.
    pub fn step(&self, batch: usize, cpu: bool) -> u64 {
        self.fixed() + (batch as u64 * self.per_image(cpu)).max(self.gradients)
    }

    /// The largest batch whose step fits in `bytes` (on a GPU), 0 where none does.
    pub fn max_batch(&self, bytes: u64) -> u64 {
        if self.fixed() + self.gradients > bytes {
            return 0;
        }
        bytes.saturating_sub(self.fixed()) / self.per_image(false).max(1)
    }
}

fn head_params(in_dim: usize, h: &HeadConfig) -> u64 {
    let n = h.n_layers.max(1);
    let mut dims = vec![in_dim];
    dims.extend(std::iter::repeat_n(h.hidden_dim, n - 1));
    dims.push(h.bottleneck_dim);
    let mlp: usize = dims.windows(2).map(|w| w[0] * w[1] + w[1]).sum();
    (mlp + h.bottleneck_dim * h.n_prototypes + h.n_prototypes) as u64
}

/// The plan of one step of `c` at its crop sizes, in f32.
pub fn plan(c: &TrainConfig) -> Plan {
    const F32: u64 = 4;
    let a = &c.arch;
    let d = a.embed_dim as f64;
    let heads: Vec<&HeadConfig> =
        if c.ibot_separate_head { vec![&c.dino_head, &c.ibot_head] } else { vec![&c.dino_head] };
    let student_params =
        a.num_params() as u64 + heads.iter().map(|h| head_params(a.embed_dim, h)).sum::<u64>();
    let tokens = |size: usize| ((size / a.patch_size).pow(2) + 1 + a.num_register_tokens) as u64;
    let global_tokens = tokens(c.crops.global_size);
    let tokens_per_image =
        c.crops.n_global as u64 * global_tokens + c.crops.n_local as u64 * tokens(c.crops.local_size);
    let ffn_width = match a.ffn {
        FfnKind::Mlp => a.ffn_hidden as f64,
        // two branches of the stored hidden width and their product
        FfnKind::Swiglu => 1.5 * crate::config::swiglu_hidden(a.ffn_hidden) as f64,
    };
    let per_token_block = FLOATS_PER_TOKEN_PER_BLOCK_D * d + FLOATS_PER_TOKEN_PER_BLOCK_FFN * ffn_width;
    let backbone_per_image = (tokens_per_image as f64 * a.depth as f64 * per_token_block) as u64 * F32;
    // head rows per image: every crop's CLS, and the masked patches (on average: a share
    // `mask_sample_probability` of the global crops, the mean of the ratio range)
    let mean_ratio = (c.mask_ratio.0 + c.mask_ratio.1) / 2.0;
    let masked = c.crops.n_global as f64
        * (global_tokens - 1 - a.num_register_tokens as u64) as f64
        * if c.distillation.is_some() { 1.0 } else { c.mask_sample_probability * mean_ratio };
    let cls_rows = (c.crops.n_global + c.crops.n_local) as f64;
    let row = |h: &HeadConfig, rows: f64| {
        let mlp = (2 * h.hidden_dim * (h.n_layers.max(2) - 1) + 2 * h.bottleneck_dim) as f64;
        rows * (mlp + FLOATS_PER_HEAD_ROW_K * h.n_prototypes as f64)
    };
    let ibot = if c.ibot_separate_head { &c.ibot_head } else { &c.dino_head };
    let heads_per_image = ((row(&c.dino_head, cls_rows) + row(ibot, masked)) * F32 as f64) as u64;
    let last_layers = heads.iter().map(|h| (2 * h.bottleneck_dim * h.n_prototypes) as u64 * F32).sum();
    let n = global_tokens as f64;
    let cpu_attention_per_image =
        (c.crops.n_global as f64 * a.num_heads as f64 * n * n * CPU_ATTENTION_MATRICES) as u64 * F32;
    Plan {
        student_params,
        weights: student_params * F32,
        gradients: student_params * F32,
        adamw: 2 * student_params * F32,
        teacher: student_params * F32,
        last_layers,
        tokens_per_image,
        backbone_per_image,
        heads_per_image,
        cpu_attention_per_image,
    }
}
