//! The DINOv2 losses, ported formula by formula from the official code (f32, same epsilons):
//! `dinov2/loss/dino_clstoken_loss.py`, `ibot_patch_loss.py`, `koleo_loss.py`.
//!
//! Teacher targets come from Sinkhorn-Knopp (3 iterations, the default of DINOv2) or from
//! softmax centering with an EMA centre (DINO's original method, kept as the alternative).
//!
//! # Shapes
//! - logits / probabilities: `[rows, K]` with K prototypes; the centre `[1, K]`.

use burn::tensor::Tensor;
use burn::tensor::activation::log_softmax;

/// Sinkhorn-Knopp iterations of the official teacher centering.
pub const SINKHORN_ITERATIONS: u32 = 3;

/// Official `DINOLoss.forward`: `-Σ_s Σ_t mean_b Σ_k t[b,k] · log_softmax(s / τ_s)[b,k]`, over
/// every student chunk `s` and every teacher chunk `t` (all `[B, K]`).
pub fn dino_loss(student: &[Tensor<2>], teacher: &[Tensor<2>], student_temp: f64) -> Tensor<1> {
    let mut total: Option<Tensor<1>> = None;
    for s in student {
        let lsm = log_softmax(s.clone().div_scalar(student_temp), 1);
        for t in teacher {
            let term = (t.clone() * lsm.clone()).sum_dim(1).mean().neg();
            total = Some(match total {
                Some(acc) => acc + term,
                None => term,
            });
        }
    }
    total.expect("dino_loss needs at least one student and one teacher chunk")
}

/// Official `iBOTPatchLoss.forward_masked`: the cross-entropy of each masked patch
/// (`[M, K]` student logits against `[M, K]` teacher probabilities), weighted per patch by
/// `weights` (`1 / masked patches of its image`), summed, divided by the number of images.
pub fn ibot_loss(
    student_masked: Tensor<2>,
    teacher_masked: Tensor<2>,
    weights: Tensor<1>,
    n_images: usize,
    student_temp: f64,
) -> Tensor<1> {
    let lsm = log_softmax(student_masked.div_scalar(student_temp), 1);
    let per_patch = (teacher_masked * lsm).sum_dim(1).squeeze_dim::<1>(1);
    (per_patch * weights).sum().neg().div_scalar(n_images.max(1) as f64)
}

/// Teacher probabilities by Sinkhorn-Knopp (official `sinkhorn_knopp_teacher`, 3 iterations,
/// the WGSL kernel on wgpu): rows are samples, the prototypes get equal mass.
pub fn sinkhorn_targets(teacher_logits: Tensor<2>, teacher_temp: f64) -> Tensor<2> {
    crate::kernels::sinkhorn_knopp(teacher_logits.detach(), teacher_temp as f32, SINKHORN_ITERATIONS)
}

/// Teacher probabilities by centering (official `softmax_center_teacher`):
/// `softmax((t − center) / τ_t)`.
pub fn softmax_center_targets(teacher_logits: Tensor<2>, center: Tensor<2>, teacher_temp: f64) -> Tensor<2> {
    burn::tensor::activation::softmax((teacher_logits.detach() - center).div_scalar(teacher_temp), 1)
}

/// The centre after one step (official `update_center`):
/// `center · m + mean_rows(teacher_logits) · (1 − m)`.
pub fn updated_center(center: Tensor<2>, teacher_logits: Tensor<2>, momentum: f64) -> Tensor<2> {
    let batch_center = teacher_logits.detach().mean_dim(0);
    center.mul_scalar(momentum) + batch_center.mul_scalar(1.0 - momentum)
}

/// Official `KoLeoLoss.forward`: `-mean log(‖x̂ − x̂_nn‖ + ε)` over L2-normalised rows, the
/// nearest neighbour by inner product (the WGSL kernel on wgpu), ε = 1e-8.
pub fn koleo_loss(x: Tensor<2>) -> Tensor<1> {
    crate::kernels::koleo_loss(x)
}
