#!/usr/bin/env python3
"""Regenerate the loss parity fixtures in tests/fixtures/losses/.

Run by hand, never by CI (needs only torch, numpy and safetensors, no checkout):

    pip install torch safetensors numpy
    python tests/reference/make_loss_fixtures.py

The reference formulas are the official DINOv2 code (github.com/facebookresearch/dinov2, main),
copied body for body below, with the distributed calls removed (world size 1):

- `dinov2/loss/dino_clstoken_loss.py`, `DINOLoss`: `forward`, `softmax_center_teacher`,
  `sinkhorn_knopp_teacher`, `update_center` + `apply_center_update`;
- `dinov2/loss/ibot_patch_loss.py`, `iBOTPatchLoss`: `forward_masked` (the `lossfunc` fallback
  used without xformers), `sinkhorn_knopp_teacher`;
- `dinov2/loss/koleo_loss.py`, `KoLeoLoss`: `pairwise_NNs_inner`, `forward`;
- `dinov2/train/ssl_meta_arch.py`, `SSLMetaArch.forward_backward`: how the DINO terms are
  combined (local and global crop terms, the teacher chunks swapped), the iBOT scale;
- `dinov2/data/collate.py`, `collate_data_and_cast`: `masks_weight`.

The fixtures are computed in float64 (so they are the exact answer; the one change to the
official bodies is `.float()` -> `.to(REF_DTYPE)` in Sinkhorn-Knopp), and every case is also run
in float32, as the official code runs, and the float32-vs-float64 difference printed: a Rust
port in f32 should land as close to the fixture as PyTorch's f32 does. Gradients come from
torch autograd of the same expressions.

Files (all tensors f32 unless said; `K = 32` prototypes, `B = 4` images per crop):

- `dino_sinkhorn.safetensors`: Sinkhorn-Knopp targets (teacher temp 0.05, 3 iterations),
  student temp 0.1, 2 global + 3 local crops. `student_global [2B, K]` (crop A rows then crop
  B rows), `student_local [3B, K]`, `teacher_logits [2B, K]` (crop order A, B: the teacher head
  output before the official swap), `targets [2B, K]` = Sinkhorn of `teacher_logits` in crop
  order, `local_loss [1]`, `global_loss [1]` (scaled as in ssl_meta_arch: `/ 8` and `* 2 / 8`),
  `grad_student_global`, `grad_student_local`: d(local_loss + global_loss)/d student logits.
- `dino_centering.safetensors`: the same crops with softmax centering instead (teacher temp
  0.04, `center [1, K]` nonzero); `targets`, `local_loss`, `global_loss`, the two gradients, and
  `updated_center [1, K]` after `update_center(teacher)` with momentum 0.9.
- `ibot.safetensors`: 4 images x 9 patches, `mask [4, 9]` (u8; 3, 0, 5, 1 patches masked),
  `student_patches`, `teacher_patches [36, K]` (all patches, row = image * 9 + patch),
  `masks_weight [9]` (collate.py), `targets [9, K]` (Sinkhorn over the masked teacher rows, temp
  0.05), `loss [1]` (forward_masked, student temp 0.1; ssl_meta_arch's `* 2 * 1/2` is 1),
  `grad_student_masked [9, K]`.
- `koleo.safetensors`: `<case>.x [8, 5]`, `<case>.loss [1]`, `<case>.grad [8, 5]` for
  `distinct` (8 random rows) and `duplicates` (rows 2 and 5 equal, row 7 = row 0 plus noise of
  0.01; row 3's nearest neighbour is row 2). With an exact duplicate the distance is
  PyTorch's pairwise-distance eps alone (`‖0 + 1e-8‖ = sqrt(5)·1e-8`), a loss term of ~17.3,
  and rows 2 and 5 get two opposite gradients of ~1e6 that cancel exactly in f64; in f32
  (PyTorch's official run too) row 2's small remainder from row 3's term (~1e-2) is lost in
  that cancellation's rounding, so the gradients of rows 2 and 5 are not comparable in f32.

Scales: student logits `randn * 3` (sensitive: a wrong temperature or normalisation moves the
losses by whole units). Teacher logits `randn * 0.5`: at τ = 0.05 the official f32
`exp(t / τ)` overflows past |t| ≈ 4.4 (the head's real outputs are cosine similarities, |t| ≤ 1),
and the targets stay soft enough that a wrong teacher temperature is visible.
Tests: tests/suite/losses.rs.
"""
import argparse
import os
import shutil

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

REF_DTYPE = torch.float64  # switched to float32 for the comparison run
K = 32
B = 4
N_GLOBAL, N_LOCAL = 2, 3
STUDENT_TEMP = 0.1
SINKHORN_TEMP = 0.05
CENTER_TEMP = 0.04
CENTER_MOMENTUM = 0.9
MASKED_PER_IMAGE = [3, 0, 5, 1]
PATCHES = 9


# --- dinov2/loss/dino_clstoken_loss.py, DINOLoss (world size 1) ---------------------------------


def dino_forward(student_output_list, teacher_out_softmaxed_centered_list, student_temp=STUDENT_TEMP):
    """DINOLoss.forward."""
    # TODO: Use cross_entropy_distribution here
    total_loss = 0
    for s in student_output_list:
        lsm = F.log_softmax(s / student_temp, dim=-1)
        for t in teacher_out_softmaxed_centered_list:
            loss = torch.sum(t * lsm, dim=-1)
            total_loss -= loss.mean()
    return total_loss


@torch.no_grad()
def softmax_center_teacher(teacher_output, center, teacher_temp):
    """DINOLoss.softmax_center_teacher (its `apply_center_update` is `updated_center` below)."""
    # teacher centering and sharpening
    return F.softmax((teacher_output - center) / teacher_temp, dim=-1)


@torch.no_grad()
def sinkhorn_knopp_teacher(teacher_output, teacher_temp, n_iterations=3):
    """DINOLoss.sinkhorn_knopp_teacher; iBOTPatchLoss.sinkhorn_knopp_teacher is the same with
    B = n_masked_patches_tensor, the number of rows at world size 1."""
    teacher_output = teacher_output.to(REF_DTYPE)  # official: .float()
    world_size = 1
    Q = torch.exp(teacher_output / teacher_temp).t()  # Q is K-by-B for consistency with notations from our paper
    B = Q.shape[1] * world_size  # number of samples to assign
    K = Q.shape[0]  # how many prototypes

    # make the matrix sums to 1
    sum_Q = torch.sum(Q)
    Q /= sum_Q

    for it in range(n_iterations):
        # normalize each row: total weight per prototype must be 1/K
        sum_of_rows = torch.sum(Q, dim=1, keepdim=True)
        Q /= sum_of_rows
        Q /= K

        # normalize each column: total weight per sample must be 1/B
        Q /= torch.sum(Q, dim=0, keepdim=True)
        Q /= B

    Q *= B  # the columns must sum to 1 so that Q is an assignment
    return Q.t()


@torch.no_grad()
def updated_center(center, teacher_output, center_momentum=CENTER_MOMENTUM):
    """DINOLoss.update_center -> reduce_center_update, then apply_center_update."""
    len_teacher_output = len(teacher_output)
    async_batch_center = torch.sum(teacher_output, dim=0, keepdim=True)
    world_size = 1
    _t = async_batch_center / (len_teacher_output * world_size)
    return center * center_momentum + _t * (1 - center_momentum)


# --- dinov2/loss/ibot_patch_loss.py, iBOTPatchLoss ------------------------------------------------


def lossfunc(t, s, temp):
    """The fallback without xformers."""
    return torch.sum(t * F.log_softmax(s / temp, dim=-1), dim=-1)


def ibot_forward_masked(
    student_patch_tokens_masked,
    teacher_patch_tokens_masked,
    student_masks_flat,
    n_masked_patches=None,
    masks_weight=None,
    student_temp=STUDENT_TEMP,
):
    """iBOTPatchLoss.forward_masked."""
    t = teacher_patch_tokens_masked
    s = student_patch_tokens_masked
    loss = lossfunc(t, s, student_temp)
    if masks_weight is None:
        masks_weight = (
            (1 / student_masks_flat.sum(-1).clamp(min=1.0))
            .unsqueeze(-1)
            .expand_as(student_masks_flat)[student_masks_flat]
        )
    if n_masked_patches is not None:
        loss = loss[:n_masked_patches]
    loss = loss * masks_weight
    return -loss.sum() / student_masks_flat.shape[0]


# --- dinov2/loss/koleo_loss.py, KoLeoLoss -----------------------------------------------------------


def pairwise_NNs_inner(x):
    """KoLeoLoss.pairwise_NNs_inner."""
    # parwise dot products (= inverse distance)
    dots = torch.mm(x, x.t())
    n = x.shape[0]
    dots.view(-1)[:: (n + 1)].fill_(-1)  # Trick to fill diagonal with -1
    # max inner prod -> min distance
    _, I = torch.max(dots, dim=1)  # noqa: E741
    return I


def koleo_forward(student_output, eps=1e-8):
    """KoLeoLoss.forward (without its autocast guard: everything here is f32 or f64)."""
    pdist = torch.nn.PairwiseDistance(2, eps=1e-8)
    student_output = F.normalize(student_output, eps=eps, p=2, dim=-1)
    I = pairwise_NNs_inner(student_output)  # noqa: E741
    distances = pdist(student_output, student_output[I])  # BxD, BxD -> B
    loss = -torch.log(distances + eps).mean()
    return loss


# --- the cases ----------------------------------------------------------------------------------------


def dino_terms(student_global, student_local, teacher_list):
    """ssl_meta_arch.forward_backward's DINO terms; `teacher_list` [2, B, K] is already in the
    swapped order (crop B's targets first), as the official code builds it."""
    n_local_crops_loss_terms = max(N_LOCAL * N_GLOBAL, 1)
    n_global_crops_loss_terms = (N_GLOBAL - 1) * N_GLOBAL
    dino_local_crops_loss = dino_forward(
        student_output_list=student_local.chunk(N_LOCAL),
        teacher_out_softmaxed_centered_list=teacher_list,
    ) / (n_global_crops_loss_terms + n_local_crops_loss_terms)
    loss_scales = 2  # this is here since we process global crops together
    dino_global_crops_loss = (
        dino_forward(
            student_output_list=[student_global],
            teacher_out_softmaxed_centered_list=[teacher_list.flatten(0, 1)],
        )
        * loss_scales
        / (n_global_crops_loss_terms + n_local_crops_loss_terms)
    )
    return dino_local_crops_loss, dino_global_crops_loss


def swap_chunks(teacher):
    """ssl_meta_arch.get_teacher_output: the teacher's global crops chunked and cat'd in
    reverse, so student crop A is matched to teacher crop B."""
    teacher_cls_tokens = teacher.chunk(N_GLOBAL)
    return torch.cat((teacher_cls_tokens[1], teacher_cls_tokens[0]))


def dino_case(inputs, centering):
    student_global = inputs["student_global"].to(REF_DTYPE).requires_grad_(True)
    student_local = inputs["student_local"].to(REF_DTYPE).requires_grad_(True)
    teacher = inputs["teacher_logits"].to(REF_DTYPE)
    swapped = swap_chunks(teacher)
    out = {}
    if centering:
        center = inputs["center"].to(REF_DTYPE)
        teacher_list = softmax_center_teacher(swapped, center, CENTER_TEMP).view(N_GLOBAL, -1, K)
        out["targets"] = softmax_center_teacher(teacher, center, CENTER_TEMP)
        out["updated_center"] = updated_center(center, swapped)
    else:
        teacher_list = sinkhorn_knopp_teacher(swapped, SINKHORN_TEMP).view(N_GLOBAL, -1, K)
        # Sinkhorn-Knopp commutes with a permutation of the rows: the targets in crop order
        # are the official ones un-swapped
        out["targets"] = sinkhorn_knopp_teacher(teacher, SINKHORN_TEMP)
        assert torch.allclose(swap_chunks(out["targets"]), teacher_list.flatten(0, 1), atol=1e-6)
    local, global_ = dino_terms(student_global, student_local, teacher_list)
    (local + global_).backward()
    out.update(
        local_loss=local.reshape(1),
        global_loss=global_.reshape(1),
        grad_student_global=student_global.grad,
        grad_student_local=student_local.grad,
    )
    return out


def ibot_case(inputs):
    mask = inputs["mask"].bool()
    student_masks_flat = mask  # [images, patches]
    mask_indices_list = student_masks_flat.flatten().nonzero().flatten()
    # collate.py
    masks_weight = (1 / student_masks_flat.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(student_masks_flat)[
        student_masks_flat
    ]
    student = inputs["student_patches"].to(REF_DTYPE)
    teacher = inputs["teacher_patches"].to(REF_DTYPE)
    student_masked = torch.index_select(student, 0, mask_indices_list).requires_grad_(True)
    teacher_masked = torch.index_select(teacher, 0, mask_indices_list)
    targets = sinkhorn_knopp_teacher(teacher_masked, SINKHORN_TEMP)
    loss_scales, ibot_loss_scale = 2, 1.0 / N_GLOBAL  # ssl_meta_arch: a factor of 1
    loss = (
        ibot_forward_masked(
            student_masked,
            targets,
            student_masks_flat=student_masks_flat,
            n_masked_patches=mask_indices_list.shape[0],
            masks_weight=masks_weight.to(REF_DTYPE),
        )
        * loss_scales
        * ibot_loss_scale
    )
    loss.backward()
    return dict(masks_weight=masks_weight, targets=targets, loss=loss.reshape(1), grad_student_masked=student_masked.grad)


def koleo_case(inputs, name):
    x = inputs[f"{name}.x"].to(REF_DTYPE).requires_grad_(True)
    loss = koleo_forward(x)
    loss.backward()
    return {f"{name}.loss": loss.reshape(1), f"{name}.grad": x.grad}


def make_inputs(gen):
    dino = dict(
        student_global=3 * torch.randn(N_GLOBAL * B, K, generator=gen),
        student_local=3 * torch.randn(N_LOCAL * B, K, generator=gen),
        teacher_logits=0.5 * torch.randn(N_GLOBAL * B, K, generator=gen),
    )
    centering = dict(
        student_global=3 * torch.randn(N_GLOBAL * B, K, generator=gen),
        student_local=3 * torch.randn(N_LOCAL * B, K, generator=gen),
        teacher_logits=0.5 * torch.randn(N_GLOBAL * B, K, generator=gen),
        center=0.3 * torch.randn(1, K, generator=gen),
    )
    mask = torch.zeros(len(MASKED_PER_IMAGE), PATCHES, dtype=torch.uint8)
    for image, count in enumerate(MASKED_PER_IMAGE):
        mask[image, torch.randperm(PATCHES, generator=gen)[:count]] = 1
    n_patches = len(MASKED_PER_IMAGE) * PATCHES
    ibot = dict(
        mask=mask,
        student_patches=3 * torch.randn(n_patches, K, generator=gen),
        teacher_patches=0.5 * torch.randn(n_patches, K, generator=gen),
    )
    duplicates = torch.randn(8, 5, generator=gen)
    duplicates[5] = duplicates[2]
    duplicates[7] = duplicates[0] + 0.01 * torch.randn(5, generator=gen)
    koleo = {"distinct.x": torch.randn(8, 5, generator=gen), "duplicates.x": duplicates}
    return dict(dino_sinkhorn=dino, dino_centering=centering, ibot=ibot, koleo=koleo)


def compute(inputs):
    return dict(
        dino_sinkhorn=dino_case(inputs["dino_sinkhorn"], centering=False),
        dino_centering=dino_case(inputs["dino_centering"], centering=True),
        ibot=ibot_case(inputs["ibot"]),
        koleo={**koleo_case(inputs["koleo"], "distinct"), **koleo_case(inputs["koleo"], "duplicates")},
    )


def main():
    global REF_DTYPE
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "losses"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)

    inputs = make_inputs(torch.Generator().manual_seed(2024))
    REF_DTYPE = torch.float64
    expected = compute(inputs)
    REF_DTYPE = torch.float32
    official_f32 = compute(inputs)

    for case, tensors in expected.items():
        for name, value in tensors.items():
            diff = (official_f32[case][name].double() - value.double()).abs().max().item()
            top = value.double().abs().max().item()
            print(f"{case:15s} {name:20s} |max| {top:9.3e}  official f32 vs f64: max abs diff {diff:.2e}")
        tensors = {**inputs[case], **tensors}
        save_file(
            {k: (v if v.dtype == torch.uint8 else v.float()).contiguous() for k, v in tensors.items()},
            os.path.join(out, f"{case}.safetensors"),
        )
    total = sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
    print(f"wrote {out} ({total / 1e3:.1f} KB)")


if __name__ == "__main__":
    main()
