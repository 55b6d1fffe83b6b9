#!/usr/bin/env python3
"""Regenerate the backbone parity fixtures in tests/fixtures/backbone/.

Run by hand, never by CI:

    git clone https://github.com/facebookresearch/dinov2 /tmp/dinov2-src   # the official code
    pip install torch torchvision transformers safetensors pillow scikit-image
    python tests/reference/make_fixtures.py --dinov2-src /tmp/dinov2-src

For each variant (plain MLP, SwiGLU, 4 registers) it builds a small random-weight model with the
official DINOv2 code (`dinov2.models.vision_transformer`) and the same weights in HuggingFace
transformers (`Dinov2Model` / `Dinov2WithRegistersModel`), perturbs every parameter away from its
initial value (LayerScale gammas included, so every block matters), and writes:

- `<variant>.pth`: the official state dict (`torch.save(model.state_dict())`);
- `<variant>-hf/`: `config.json` + `model.safetensors` from `save_pretrained`;
- `<variant>-official.safetensors` / `<variant>-hf.safetensors`: expected `cls`, `patch`,
  `reg` (registers only) for each image set, named `<set>.cls`, ... (f32);
- `images/<set>-<i>.png`: the input images, at exactly the model's input size.

The pixels are preprocessed as `dinov2 embed --size native` does: /255 then ImageNet mean/std.
Image sets: `native` (square, the checkpoint's own grid: no interpolation) and `wide`
(non-square, pos-embed interpolated). Tests: tests/backbone_parity.rs.
"""
import argparse
import json
import math
import os
import shutil
import sys

import numpy as np
import torch
from PIL import Image
from safetensors.torch import save_file

PATCH = 14
MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)

# name: (embed_dim, heads, depth, mlp_ratio, swiglu, registers)
VARIANTS = {
    "plain": (128, 2, 2, 2, False, 0),
    "swiglu": (64, 1, 2, 4, True, 0),
    "reg4": (64, 1, 2, 4, False, 4),
}
GRID = 4  # pos-embed grid of the checkpoints: img_size 56
IMAGE_SETS = {"native": (56, 56), "wide": (42, 70)}  # (height, width), multiples of 14


def sample_images():
    """Two real photographs from scikit-image, as RGB uint8 arrays."""
    from skimage import data

    return [data.astronaut(), data.coffee()]


def make_images(out_dir):
    """Resize/crop the samples to each set's size, write PNGs, return normalised tensors."""
    os.makedirs(os.path.join(out_dir, "images"), exist_ok=True)
    sets = {}
    for name, (h, w) in IMAGE_SETS.items():
        batch = []
        for i, arr in enumerate(sample_images()):
            img = Image.fromarray(arr).convert("RGB")
            scale = max(h / img.height, w / img.width)
            img = img.resize((math.ceil(img.width * scale), math.ceil(img.height * scale)), Image.BICUBIC)
            left, top = (img.width - w) // 2, (img.height - h) // 2
            img = img.crop((left, top, left + w, top + h))
            img.save(os.path.join(out_dir, "images", f"{name}-{i}.png"))
            x = (np.asarray(img, dtype=np.float32) / 255.0 - MEAN) / STD
            batch.append(torch.from_numpy(x.transpose(2, 0, 1).copy()))
        sets[name] = torch.stack(batch)
    return sets


def official_model(dinov2_src, dim, heads, depth, mlp_ratio, swiglu, registers):
    os.environ["XFORMERS_DISABLED"] = "1"
    sys.path.insert(0, dinov2_src)
    from dinov2.models.vision_transformer import DinoVisionTransformer
    from dinov2.layers import MemEffAttention, NestedTensorBlock as Block
    from functools import partial

    # The hub's settings (dinov2/hub/backbones.py): no block chunks; registers models
    # interpolate with antialias and no offset, the others with offset 0.1.
    return DinoVisionTransformer(
        img_size=GRID * PATCH,
        patch_size=PATCH,
        embed_dim=dim,
        depth=depth,
        num_heads=heads,
        mlp_ratio=mlp_ratio,
        block_fn=partial(Block, attn_class=MemEffAttention),
        init_values=1.0,
        ffn_layer="swiglufused" if swiglu else "mlp",
        block_chunks=0,
        num_register_tokens=registers,
        interpolate_antialias=registers > 0,
        interpolate_offset=0.0 if registers > 0 else 0.1,
    ).eval()


def perturb(model, gen):
    """Give every parameter a random value of a sensible scale, so every block matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):  # LayerScale: away from its 1e-5 / 1.0 init
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
            elif p.ndim >= 2 and "weight" in name:  # linear / conv weights: unit-variance outputs
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / math.sqrt(fan_in))
            elif name.startswith("norm") or ".norm" in name:  # LayerNorm weight/bias
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:  # biases, cls/pos/register/mask tokens
                p.copy_(0.5 * torch.randn(p.shape, generator=gen))


def official_to_hf(sd, swiglu, registers):
    """Official state dict -> HuggingFace module names (transformers 5 in-memory names)."""
    out = {
        "embeddings.cls_token": sd["cls_token"],
        "embeddings.mask_token": sd["mask_token"],
        "embeddings.position_embeddings": sd["pos_embed"],
        "embeddings.patch_embeddings.projection.weight": sd["patch_embed.proj.weight"],
        "embeddings.patch_embeddings.projection.bias": sd["patch_embed.proj.bias"],
        "layernorm.weight": sd["norm.weight"],
        "layernorm.bias": sd["norm.bias"],
    }
    if registers:
        out["embeddings.register_tokens"] = sd["register_tokens"]
    depth = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("blocks."))
    for i in range(depth):
        b, h = f"blocks.{i}.", f"encoder.layer.{i}."
        for t in ("weight", "bias"):
            q, k, v = sd[b + f"attn.qkv.{t}"].chunk(3, dim=0)
            out[h + f"attention.q_proj.{t}"] = q
            out[h + f"attention.k_proj.{t}"] = k
            out[h + f"attention.v_proj.{t}"] = v
            out[h + f"attention.o_proj.{t}"] = sd[b + f"attn.proj.{t}"]
            out[h + f"norm1.{t}"] = sd[b + f"norm1.{t}"]
            out[h + f"norm2.{t}"] = sd[b + f"norm2.{t}"]
            if swiglu:
                gate, up = sd[b + f"mlp.w12.{t}"].chunk(2, dim=0)
                out[h + f"mlp.gate_proj.{t}"] = gate
                out[h + f"mlp.up_proj.{t}"] = up
                out[h + f"mlp.down_proj.{t}"] = sd[b + f"mlp.w3.{t}"]
            else:
                out[h + f"mlp.fc1.{t}"] = sd[b + f"mlp.fc1.{t}"]
                out[h + f"mlp.fc2.{t}"] = sd[b + f"mlp.fc2.{t}"]
        out[h + "layer_scale1.lambda1"] = sd[b + "ls1.gamma"]
        out[h + "layer_scale2.lambda1"] = sd[b + "ls2.gamma"]
    return out


def hf_model(dim, heads, depth, mlp_ratio, swiglu, registers):
    from transformers import (Dinov2Config, Dinov2Model, Dinov2WithRegistersConfig,
                              Dinov2WithRegistersModel)

    kwargs = dict(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                  mlp_ratio=mlp_ratio, image_size=GRID * PATCH, patch_size=PATCH,
                  layer_norm_eps=1e-6, hidden_act="gelu", use_swiglu_ffn=swiglu)
    if registers:
        return Dinov2WithRegistersModel(Dinov2WithRegistersConfig(num_register_tokens=registers, **kwargs)).eval()
    return Dinov2Model(Dinov2Config(**kwargs)).eval()


def split(x_norm, registers, h, w):
    """[B, 1+R+h*w, D] -> cls [B,D], reg [B,R,D], patch [B,h,w,D]."""
    b, _, d = x_norm.shape
    return {
        "cls": x_norm[:, 0],
        "reg": x_norm[:, 1 : 1 + registers],
        "patch": x_norm[:, 1 + registers :].reshape(b, h, w, d),
    }


INTERP_CASES = [(37, 16, 16), (37, 16, 23), (37, 52, 40), (37, 37, 37), (4, 3, 5), (4, 9, 2)]


def interpolation_fixture(out, gen):
    """Pos-embed interpolation alone, each mode on grids up and down: `interp.safetensors`."""
    import torch.nn.functional as F

    tensors = {}
    for m, h, w in INTERP_CASES:
        grid = torch.randn(1, 8, m, m, generator=gen)
        tensors[f"{m}-{h}x{w}.input"] = grid[0].contiguous()
        modes = {
            # official DINOv2 without registers: scale factors with the 0.1 offset
            "offset": dict(scale_factor=((h + 0.1) / m, (w + 0.1) / m)),
            # HuggingFace Dinov2Model: output size
            "size": dict(size=(h, w)),
            # official `_reg` and HuggingFace Dinov2WithRegistersModel: output size, antialias
            "size_aa": dict(size=(h, w), antialias=True),
        }
        for mode, kwargs in modes.items():
            y = F.interpolate(grid, mode="bicubic", align_corners=False, **kwargs)
            assert y.shape[-2:] == (h, w), (mode, y.shape)
            tensors[f"{m}-{h}x{w}.{mode}"] = y[0].contiguous()
    save_file(tensors, os.path.join(out, "interp.safetensors"))


EVAL_IMAGES = ["coffee.jpg", "astronaut.jpg"]  # landscape and square, from assets/images


def eval_transform_fixture(out, dinov2_src):
    """The official evaluation transform (`make_classification_eval_transform`: torchvision
    Resize(256, bicubic) on PIL, CenterCrop(224), then ToTensor and Normalize) of sample images:
    `eval_transform.safetensors`, per file name the uint8 [224, 224, 3] image after the resize
    and crop (the normalisation is covered by the parity fixtures)."""
    import torchvision.transforms as T

    sys.path.insert(0, dinov2_src)
    from dinov2.data.transforms import make_classification_eval_transform

    resize_crop = T.Compose(make_classification_eval_transform().transforms[:2])
    assets = os.path.join(os.path.dirname(__file__), "..", "..", "assets", "images")
    tensors = {}
    for name in EVAL_IMAGES:
        img = resize_crop(Image.open(os.path.join(assets, name)).convert("RGB"))
        tensors[name] = torch.from_numpy(np.asarray(img).copy())
    save_file(tensors, os.path.join(out, "eval_transform.safetensors"))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dinov2-src", required=True, help="checkout of facebookresearch/dinov2")
    ap.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "..", "fixtures", "backbone"))
    args = ap.parse_args()
    out = os.path.abspath(args.out)
    if os.path.exists(out):
        shutil.rmtree(out)
    os.makedirs(out)
    torch.manual_seed(0)
    sets = make_images(out)
    gen = torch.Generator().manual_seed(1234)
    interpolation_fixture(out, gen)
    eval_transform_fixture(out, args.dinov2_src)
    manifest = {"image_sets": {k: list(v) for k, v in IMAGE_SETS.items()}, "variants": {}}
    for name, (dim, heads, depth, ratio, swiglu, registers) in VARIANTS.items():
        model = official_model(args.dinov2_src, dim, heads, depth, ratio, swiglu, registers)
        perturb(model, gen)
        sd = {k: v.contiguous() for k, v in model.state_dict().items()}
        torch.save(sd, os.path.join(out, f"{name}.pth"))

        hf = hf_model(dim, heads, depth, ratio, swiglu, registers)
        missing, unexpected = hf.load_state_dict(official_to_hf(sd, swiglu, registers), strict=True)
        assert not missing and not unexpected, (missing, unexpected)
        hf.save_pretrained(os.path.join(out, f"{name}-hf"))

        expected = {"official": {}, "hf": {}}
        with torch.no_grad():
            for set_name, x in sets.items():
                h, w = x.shape[2] // PATCH, x.shape[3] // PATCH
                ref = model.forward_features(x)
                official = {"cls": ref["x_norm_clstoken"], "reg": ref["x_norm_regtokens"],
                            "patch": ref["x_norm_patchtokens"].reshape(x.shape[0], h, w, dim)}
                hf_out = split(hf(pixel_values=x).last_hidden_state, registers, h, w)
                for kind, tensors in (("official", official), ("hf", hf_out)):
                    for key, t in tensors.items():
                        if key == "reg" and not registers:
                            continue
                        expected[kind][f"{set_name}.{key}"] = t.float().contiguous()
                diff = (official["patch"] - hf_out["patch"]).abs().max().item()
                print(f"{name:7s} {set_name:6s} official vs hf patch max|diff| = {diff:.3e}")
        for kind, tensors in expected.items():
            save_file(tensors, os.path.join(out, f"{name}-{kind}.safetensors"))
        manifest["variants"][name] = dict(embed_dim=dim, heads=heads, depth=depth, mlp_ratio=ratio,
                                          swiglu=swiglu, registers=registers, grid=GRID)
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=2)
    total = sum(os.path.getsize(os.path.join(dp, fn)) for dp, _, fns in os.walk(out) for fn in fns)
    print(f"wrote {out} ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
