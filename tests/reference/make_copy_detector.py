#!/usr/bin/env python3
"""Trains the copy-detection test weights, tests/fixtures/curation/copy-detector.safetensors.

The DINOv2 paper deduplicates with a copy-detection model (SSCD, Pizzi et al. 2022), not with
DINO features: a DINO backbone's CLS token is made to predict the same prototypes across views,
not to stay put under crops and flips, and the tiny models this project trains on 28 px clothes
are not invariant to a 1 px crop (BENCHMARKS.md, "Planted near-copies"). This script trains a
small ViT the SSCD way, so that the curation test can check the whole pipeline (`curate embed`
-> `curate dedup` / `curate relative`) with a model made for the job:

- data: Debian's Fashion-MNIST *training* images (the test plants copies of *test* images);
- views: two independent copy-like augmentations of each image (a crop of 0-3 px per side
  resized back, a downscale to 14-27 px and back (bilinear or bicubic), a mirror image, JPEG re-encoding at quality
  40-95, each at random), made with PIL;
- loss: InfoNCE over the batch's views (SimCLR, temperature 0.05, as SSCD) on the L2-normalised
  CLS token after the final norm -- the feature `dinov2 curate embed` writes -- plus KoLeo
  (SSCD's entropy regulariser, over views of other images) with weight 1;
- model: the official DINOv2 ViT layout (`blocks.N.attn.qkv.weight`, LayerScale, exact GELU,
  LayerNorm eps 1e-6), embed_dim 128, 2 heads of 64, depth 4, patch 7, 28 px input (a 4 x 4
  grid: no position-embedding interpolation), preprocessed as `dinov2 curate embed --size 28`
  does (grey to RGB, /255, ImageNet mean/std);
- output: f16 safetensors with the architecture in the `dinov2_wgpu_config` metadata, which
  `dinov2` loads like its own checkpoints.

Run by hand, never by CI (3000 steps of 256 images, about 45 minutes on 2 CPU cores):

    apt-get install dataset-fashion-mnist; pip install torch numpy pillow safetensors
    python3 tests/reference/make_copy_detector.py [--steps 3000] [--out PATH]

At the end (or with `--check WEIGHTS`, for weights already made) it chooses the similarity
threshold on test images 1000-1999 with planted copies (the best smallest of pair precision and
the four recalls), then prints, for the curation test's 400 originals (test images 0-399) and
their planted copies, made as the test makes them, the similarity of each kind of copy to its
original, of each original to its most similar other original, and the scores at that
threshold.
"""
import argparse
import gzip
import io
import json
import math
import os
import struct
import sys
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import load_file, save_file

SRC = os.environ.get("DINOV2_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "curation", "copy-detector.safetensors")
SIDE, PATCH, DIM, HEADS, DEPTH, MLP = 28, 7, 128, 2, 4, 512
MEAN = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
STD = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)


def read_images(name):
    with gzip.open(os.path.join(SRC, name), "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051 and (rows, cols) == (SIDE, SIDE)
        return np.frombuffer(f.read(), dtype=np.uint8).reshape(n, SIDE, SIDE)


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.norm1 = nn.LayerNorm(DIM, eps=1e-6)
        self.attn = nn.Module()
        self.attn.qkv = nn.Linear(DIM, 3 * DIM)
        self.attn.proj = nn.Linear(DIM, DIM)
        self.ls1 = nn.Module()
        self.ls1.gamma = nn.Parameter(torch.full((DIM,), 0.1))
        self.norm2 = nn.LayerNorm(DIM, eps=1e-6)
        self.mlp = nn.Module()
        self.mlp.fc1 = nn.Linear(DIM, MLP)
        self.mlp.fc2 = nn.Linear(MLP, DIM)
        self.ls2 = nn.Module()
        self.ls2.gamma = nn.Parameter(torch.full((DIM,), 0.1))

    def forward(self, x):
        b, n, _ = x.shape
        qkv = self.attn.qkv(self.norm1(x)).view(b, n, 3, HEADS, DIM // HEADS).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2])
        x = x + self.ls1.gamma * self.attn.proj(a.transpose(1, 2).reshape(b, n, DIM))
        return x + self.ls2.gamma * self.mlp.fc2(F.gelu(self.mlp.fc1(self.norm2(x))))


class Vit(nn.Module):
    """The official DINOv2 ViT (no registers), named as its state dict is."""

    def __init__(self):
        super().__init__()
        grid = SIDE // PATCH
        self.cls_token = nn.Parameter(torch.randn(1, 1, DIM) * 1e-6)
        self.pos_embed = nn.Parameter(torch.randn(1, 1 + grid * grid, DIM) * 0.02)
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, DIM, PATCH, PATCH)
        self.blocks = nn.ModuleList(Block() for _ in range(DEPTH))
        self.norm = nn.LayerNorm(DIM, eps=1e-6)

    def forward(self, x):
        x = self.patch_embed.proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)[:, 0]


def to_input(tiles):
    """uint8 [B, 28, 28] grey -> normalised [B, 3, 28, 28], as `curate embed` prepares it."""
    x = torch.from_numpy(np.array(tiles)).float().div(255).unsqueeze(1).expand(-1, 3, -1, -1)
    return (x - MEAN) / STD


def jpeg(img, quality):
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=quality)
    buf.seek(0)
    return Image.open(buf).convert("L")


def augment(tile, rng):
    """One random copy-like view of a uint8 tile."""
    img = Image.fromarray(tile)
    filters = (Image.BILINEAR, Image.BICUBIC)
    if rng.random() < 0.6:
        l, t, r, b = rng.integers(0, 4, size=4)
        img = img.crop((l, t, SIDE - r, SIDE - b)).resize((SIDE, SIDE), filters[rng.integers(2)])
    if rng.random() < 0.4:
        s = int(rng.integers(14, SIDE))
        f = filters[rng.integers(2)]
        img = img.resize((s, s), f).resize((SIDE, SIDE), f)
    if rng.random() < 0.5:
        img = img.transpose(Image.FLIP_LEFT_RIGHT)
    if rng.random() < 0.5:
        img = jpeg(img, int(rng.integers(40, 96)))
    return np.asarray(img)


def planted_copy(tile, kind):
    """The curation test's near-copies (tests/suite/curate.rs, `near_copy`), with PIL."""
    img = Image.fromarray(tile)
    if kind == 0:
        return np.asarray(jpeg(img, 70))
    if kind == 1:
        return np.asarray(img.crop((1, 1, SIDE - 1, SIDE - 1)).resize((SIDE, SIDE), Image.BICUBIC))
    if kind == 2:
        return np.asarray(img.resize((22, 22), Image.BILINEAR).resize((SIDE, SIDE), Image.BILINEAR))
    return np.asarray(img.transpose(Image.FLIP_LEFT_RIGHT))


def loss_fn(z, temperature):
    """InfoNCE over 2B normalised views (view i's positive is i ^ 1) and KoLeo."""
    n = z.shape[0]
    sim = z @ z.t()
    eye = torch.eye(n, dtype=torch.bool)
    logits = (sim / temperature).masked_fill(eye, float("-inf"))
    target = torch.arange(n) ^ 1
    infonce = F.cross_entropy(logits, target)
    # KoLeo over other images only: a view's own pair is meant to be close
    same = eye | (torch.arange(n)[:, None] == target[None, :])
    nearest = sim.masked_fill(same, -2).max(1).values
    koleo = -torch.log(torch.sqrt((2 - 2 * nearest).clamp_min(0)) + 1e-8).mean()
    return infonce, koleo


@torch.no_grad()
def planted(model, first, count):
    """Fashion-MNIST test images first..first+count and a planted copy of every 4th (the four
    kinds in turn, as the test plants them): the pairwise similarities of all of them, the
    originals first, and the index of each copy's original."""
    model.eval()
    tiles = read_images("t10k-images-idx3-ubyte.gz")[first:first + count]
    copies = [planted_copy(tiles[i], (i // 4) % 4) for i in range(0, count, 4)]
    z = F.normalize(model(to_input(np.concatenate([tiles, np.stack(copies)]))), dim=-1)
    model.train()
    return (z @ z.t()).numpy(), np.arange(0, count, 4)


def scores(sim, originals, threshold):
    """Counting pairs above `threshold`: precision (the share that are a copy and its original)
    and the recall of each kind."""
    count = len(sim) - len(originals)
    upper = np.triu(sim > threshold, 1)
    right = upper[originals, count + np.arange(len(originals))]
    precision = right.sum() / max(upper.sum(), 1)
    return precision, [right[kind::4].mean() for kind in range(4)]


def report(model):
    """The threshold chosen on test images 1000-1999 (not the curation test's 0-399): the one
    with the best smallest of precision and the four recalls; then the curation test's images."""
    sim, originals = planted(model, 1000, 1000)
    grid = np.round(np.arange(0.5, 0.99, 0.01), 2)
    best = max(grid, key=lambda t: min(scores(sim, originals, t)[0], *scores(sim, originals, t)[1]))
    precision, recall = scores(sim, originals, best)
    print(f"calibration (test images 1000-1999): threshold {best:.2f}, pair precision {precision:.3f}, "
          f"recall by kind {np.round(recall, 3).tolist()}", file=sys.stderr)
    sim, originals = planted(model, 0, 400)
    count = 400
    for kind, name in enumerate(["jpeg", "crop", "resize", "flip"]):
        v = sim[originals[kind::4], count + np.arange(kind, 100, 4)]
        print(f"{name} copies: similarity to the original min {v.min():.3f}, mean {v.mean():.3f}", file=sys.stderr)
    distinct = sim[:count, :count] - 3 * np.eye(count)
    nearest = np.sort(distinct.max(1))
    print(f"each original's most similar other original: median {nearest[200]:.3f}, "
          f"95th percentile {nearest[380]:.3f}, max {nearest[399]:.3f}", file=sys.stderr)
    precision, recall = scores(sim, originals, best)
    print(f"the curation test's images at {best:.2f}: pair precision {precision:.3f}, "
          f"recall by kind {np.round(recall, 3).tolist()}", file=sys.stderr)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch", type=int, default=256, help="images per step (two views each)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--out", default=OUT)
    p.add_argument("--check", metavar="WEIGHTS", help="only print the report for these weights")
    args = p.parse_args()
    if args.check:
        model = Vit()
        model.load_state_dict({k: v.float() for k, v in load_file(args.check).items()})
        report(model)
        return
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    train = read_images("train-images-idx3-ubyte.gz")
    model = Vit()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "token" not in n and "pos" not in n]
    other = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "token" not in n and "pos" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": other, "weight_decay": 0}], lr=args.lr)
    start, warmup = time.time(), 200
    for step in range(args.steps):
        elapsed = time.time() - start
        # linear warm-up, then cosine
        lr = args.lr * min(1, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        idx = rng.choice(len(train), args.batch, replace=False)
        views = np.stack([augment(train[i], rng) for i in idx for _ in range(2)])
        z = F.normalize(model(to_input(views)), dim=-1)
        infonce, koleo = loss_fn(z, 0.05)
        loss = infonce + 1.0 * koleo
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 100 == 0:
            print(
                f"step {step} {elapsed / 60:.1f} min lr {lr:.2e} infonce {infonce.item():.3f} koleo {koleo.item():.3f}",
                file=sys.stderr,
            )
    report(model)
    tensors = {k: v.detach().to(torch.float16).contiguous() for k, v in model.state_dict().items()}
    config = {"embed_dim": DIM, "depth": DEPTH, "num_heads": HEADS, "ffn": "mlp", "ffn_hidden": MLP,
              "patch_size": PATCH, "pos_grid": SIDE // PATCH}
    tmp = args.out + ".tmp"
    save_file(tensors, tmp, metadata={"dinov2_wgpu_config": json.dumps(config)})
    os.replace(tmp, args.out)
    print(f"wrote {args.out} after {args.steps} steps, {(time.time() - start) / 60:.1f} min", file=sys.stderr)


if __name__ == "__main__":
    main()
