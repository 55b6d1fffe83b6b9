#!/usr/bin/env python3
"""Regenerate the linear-probe parity fixture tests/fixtures/linear/probe.safetensors.

Run by hand, never by CI (needs only torch and safetensors):

    pip install torch safetensors
    python tests/reference/make_linear_probe_fixture.py

The reference is the official DINOv2 linear evaluation (github.com/facebookresearch/dinov2,
`dinov2/eval/linear.py`), its bodies copied below: `create_linear_input`, `LinearClassifier`
(weights N(0, 0.01), zero bias), the training step of `eval_linear` (one cross-entropy per head,
summed; `torch.optim.SGD(param_groups, momentum=0.9, weight_decay=0)`, one parameter group per
head with its own lr; `CosineAnnealingLR(optimizer, max_iter, eta_min=0)` stepped after every
iteration). Everything runs in float64, so the fixture is the exact answer; tensors are stored
in float32.

Setup: N = 24 images, D = 6 wide tokens, 4 blocks, P = 5 patch tokens in the last block,
C = 3 classes, T = 7 iterations of batches of 8 (indices fixed in the file), learning rates
(0.01, 0.3, 2.0) per setting. Tensors:

- `cls.{j}` [N, D] for j = 0..3, the CLS token of the last four blocks, oldest first;
  `patch` [N, P, D], the last block's patch tokens; `labels` [N] (as f32);
  `batches` [T, 8] (indices as f32);
- per setting `{n}_{avgpool}` (n = 1 or 4, avgpool = 0 or 1): `input.{s}` [N, dim]
  (`create_linear_input`), and per learning-rate index h: `init_weight.{s}.{h}` [C, dim],
  `weight.{s}.{h}` [C, dim] and `bias.{s}.{h}` [C] after the T iterations.

Tests: tests/suite/eval.rs.
"""
import os

import torch
import torch.nn as nn
from safetensors.torch import save_file

N, D, BLOCKS, P, C, T, BATCH = 24, 6, 4, 5, 3, 7, 8
LRS = [0.01, 0.3, 2.0]
torch.set_default_dtype(torch.float64)


# --- dinov2/eval/linear.py -----------------------------------------------------------------------


def create_linear_input(x_tokens_list, use_n_blocks, use_avgpool):
    intermediate_output = x_tokens_list[-use_n_blocks:]
    output = torch.cat([class_token for _, class_token in intermediate_output], dim=-1)
    if use_avgpool:
        output = torch.cat(
            (
                output,
                torch.mean(intermediate_output[-1][0], dim=1),  # patch tokens
            ),
            dim=-1,
        )
        output = output.reshape(output.shape[0], -1)
    return output  # official: output.float(); the fixture stays in float64


class LinearClassifier(nn.Module):
    """Linear layer to train on top of frozen features"""

    def __init__(self, out_dim, use_n_blocks, use_avgpool, num_classes=1000):
        super().__init__()
        self.out_dim = out_dim
        self.use_n_blocks = use_n_blocks
        self.use_avgpool = use_avgpool
        self.num_classes = num_classes
        self.linear = nn.Linear(out_dim, num_classes)
        self.linear.weight.data.normal_(mean=0.0, std=0.01)
        self.linear.bias.data.zero_()

    def forward(self, x_tokens_list):
        output = create_linear_input(x_tokens_list, self.use_n_blocks, self.use_avgpool)
        return self.linear(output)


# -------------------------------------------------------------------------------------------------


def main():
    torch.manual_seed(0)
    cls = [torch.randn(N, D) for _ in range(BLOCKS)]
    patch = torch.randn(N, P, D)
    labels = torch.randint(0, C, (N,))
    batches = torch.stack([torch.randperm(N)[:BATCH] for _ in range(T)])
    # get_intermediate_layers returns (patch tokens, class token) per block; the probe only
    # reads the last block's patch tokens
    tokens = [(patch if j == BLOCKS - 1 else torch.zeros(N, P, D), cls[j]) for j in range(BLOCKS)]
    out = {f"cls.{j}": cls[j] for j in range(BLOCKS)}
    out["patch"] = patch
    out["labels"] = labels.double()
    out["batches"] = batches.double()
    for n in (1, 4):
        for avgpool in (0, 1):
            s = f"{n}_{avgpool}"
            x = create_linear_input(tokens, n, bool(avgpool))
            out[f"input.{s}"] = x
            heads = [LinearClassifier(x.shape[1], n, bool(avgpool), C) for _ in LRS]
            for h, head in enumerate(heads):
                out[f"init_weight.{s}.{h}"] = head.linear.weight.detach().clone()
            groups = [{"params": head.parameters(), "lr": lr} for head, lr in zip(heads, LRS)]
            optimizer = torch.optim.SGD(groups, momentum=0.9, weight_decay=0)
            scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T, eta_min=0)
            for t in range(T):
                idx = batches[t]
                batch_tokens = [(p[idx], c[idx]) for p, c in tokens]
                loss = sum(nn.CrossEntropyLoss()(head(batch_tokens), labels[idx]) for head in heads)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
                scheduler.step()
            for h, head in enumerate(heads):
                out[f"weight.{s}.{h}"] = head.linear.weight.detach().clone()
                out[f"bias.{s}.{h}"] = head.linear.bias.detach().clone()
    here = os.path.dirname(os.path.abspath(__file__))
    path = os.path.join(here, "..", "fixtures", "linear", "probe.safetensors")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    save_file({k: v.float().contiguous() for k, v in out.items()}, path, metadata={"lrs": str(LRS), "iterations": str(T)})
    print("wrote", os.path.normpath(path))


if __name__ == "__main__":
    main()
