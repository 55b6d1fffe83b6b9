//! Training schedules as small pure functions of the step (official
//! `dinov2/utils/utils.py` `CosineScheduler` and `dinov2/train/train.py` `build_schedulers`).

/// Official `CosineScheduler`: `freeze` steps at 0, a linear warm-up from `warmup_start` to
/// `base` over `warmup` steps (numpy `linspace`, both ends included), then a half cosine from
/// `base` to `last` over the remaining steps; `last` from `total` on.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Cosine {
    pub base: f64,
    pub last: f64,
    pub total: usize,
    pub warmup: usize,
    pub warmup_start: f64,
    pub freeze: usize,
}

impl Cosine {
    /// A cosine from `base` to `last` over `total` steps, no warm-up.
    pub fn new(base: f64, last: f64, total: usize) -> Self {
        Self { base, last, total, warmup: 0, warmup_start: 0.0, freeze: 0 }
    }

    pub fn with_warmup(mut self, steps: usize, start: f64) -> Self {
        self.warmup = steps;
        self.warmup_start = start;
        self
    }

    pub fn with_freeze(mut self, steps: usize) -> Self {
        self.freeze = steps;
        self
    }

    pub fn at(&self, step: usize) -> f64 {
        if step >= self.total {
            return self.last;
        }
        if step < self.freeze {
            return 0.0;
        }
        let step = step - self.freeze;
        if step < self.warmup {
            if self.warmup == 1 {
                return self.warmup_start;
            }
            let t = step as f64 / (self.warmup - 1) as f64;
            return self.warmup_start + t * (self.base - self.warmup_start);
        }
        let step = step - self.warmup;
        let len = self.total.saturating_sub(self.warmup + self.freeze).max(1);
        let cos = (std::f64::consts::PI * step as f64 / len as f64).cos();
        self.last + 0.5 * (self.base - self.last) * (1.0 + cos)
    }
}

/// Learning rate for a batch: `base_lr · sqrt(batch / 1024)` (official `sqrt_wrt_1024`).
pub fn scaled_lr(base_lr: f64, total_batch: usize) -> f64 {
    base_lr * (total_batch as f64 / 1024.0).sqrt()
}

/// Layer-wise lr decay of one parameter (official `get_vit_lr_decay_rate`):
/// `decay^(depth + 1 − layer)` where the layer is 0 for the patch embedding and the tokens,
/// `i + 1` for block `i`, `depth + 1` for the final norm and the heads.
pub fn layer_decay(path: &str, decay: f64, depth: usize) -> f64 {
    let layer = if !path.starts_with("backbone.") {
        depth + 1
    } else if ["pos_embed", "patch_embed", "mask_token", "cls_token", "register_tokens"]
        .iter()
        .any(|name| path.contains(&format!(".{name}")))
    {
        0
    } else if let Some(rest) = path.split(".blocks.").nth(1) {
        rest.split('.').next().and_then(|i| i.parse::<usize>().ok()).map_or(depth + 1, |i| i + 1)
    } else {
        depth + 1
    };
    decay.powi((depth + 1 - layer) as i32)
}

/// Weight-decay multiplier (official `get_params_groups_with_decay`): none on biases, norms
/// and LayerScale gammas.
pub fn weight_decay_multiplier(path: &str) -> f64 {
    let leaf = path.rsplit('.').next().unwrap_or(path);
    let no_decay =
        path.ends_with(".bias") || path.contains("norm") || leaf.starts_with("ls") || path.contains("gamma");
    if no_decay { 0.0 } else { 1.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cosine_matches_the_official_scheduler() {
        // numpy: np.concatenate((np.zeros(2), np.linspace(0.1, 1.0, 3),
        //   0.0 + 0.5 * (1.0 - 0.0) * (1 + np.cos(np.pi * np.arange(5) / 5))))
        let s = Cosine::new(1.0, 0.0, 10).with_warmup(3, 0.1).with_freeze(2);
        let want = [
            0.0,
            0.0,
            0.1,
            0.55,
            1.0,
            1.0,
            0.904_508_497_187_473_7,
            0.654_508_497_187_473_8,
            0.345_491_502_812_526_3,
            0.095_491_502_812_526_3,
        ];
        for (step, want) in want.iter().enumerate() {
            assert!((s.at(step) - want).abs() < 1e-12, "step {step}: {} vs {want}", s.at(step));
        }
        assert_eq!(s.at(10), 0.0);
        assert_eq!(s.at(1000), 0.0);
    }

    #[test]
    fn momentum_and_teacher_temperature_schedules() {
        let momentum = Cosine::new(0.992, 1.0, 100);
        assert!((momentum.at(0) - 0.992).abs() < 1e-12);
        assert!((momentum.at(50) - 0.996).abs() < 1e-12);
        assert!(momentum.at(99) < 1.0 && momentum.at(99) > 0.9999);
        // teacher temperature: warm-up 0.04 -> 0.07 then constant
        let temp = Cosine::new(0.07, 0.07, 100).with_warmup(31, 0.04);
        assert!((temp.at(0) - 0.04).abs() < 1e-12);
        assert!((temp.at(15) - 0.055).abs() < 1e-12);
        assert!((temp.at(30) - 0.07).abs() < 1e-12);
        assert!((temp.at(70) - 0.07).abs() < 1e-12);
    }

    #[test]
    fn lr_scaling_layer_decay_and_weight_decay_groups() {
        assert!((scaled_lr(0.004, 256) - 0.002).abs() < 1e-15);
        let depth = 12;
        assert!((layer_decay("backbone.patch_embed.weight", 0.9, depth) - 0.9f64.powi(13)).abs() < 1e-15);
        assert!((layer_decay("backbone.cls_token", 0.9, depth) - 0.9f64.powi(13)).abs() < 1e-15);
        assert!(
            (layer_decay("backbone.blocks.0.attn.qkv.weight", 0.9, depth) - 0.9f64.powi(12)).abs() < 1e-15
        );
        assert!((layer_decay("backbone.blocks.11.mlp.fc2.bias", 0.9, depth) - 0.9).abs() < 1e-15);
        assert_eq!(layer_decay("backbone.norm.gamma", 0.9, depth), 1.0);
        assert_eq!(layer_decay("dino_head.mlp.0.weight", 0.9, depth), 1.0);
        assert_eq!(weight_decay_multiplier("backbone.blocks.3.attn.qkv.bias"), 0.0);
        assert_eq!(weight_decay_multiplier("backbone.blocks.3.norm1.gamma"), 0.0);
        assert_eq!(weight_decay_multiplier("backbone.blocks.3.ls1"), 0.0);
        assert_eq!(weight_decay_multiplier("backbone.blocks.3.attn.qkv.weight"), 1.0);
        assert_eq!(weight_decay_multiplier("dino_head.last_layer_v"), 1.0);
    }
}
