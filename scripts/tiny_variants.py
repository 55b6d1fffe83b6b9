"""Variants of the tiny recipe as JSON configs, for the Fashion-MNIST sweep scripts.

`write_variants(out, variants)` reads OUT/tiny.json (the preset as `dinov2 train --preset tiny
--print-config` prints it) and writes OUT/NAME.json for every NAME in `variants`, a dict of
changes whose keys are dotted paths into the recipe ("crops.local_size", "base_lr").
`continue_run(checkpoint, out, edit)` starts a continuation of a finished run with a new
recipe (scripts/fashion_mnist_plateau.sh, scripts/fashion_mnist_highres_probe.sh)."""
import json
import os
import shutil
import struct


def write_variants(out, variants):
    for name, changes in variants.items():
        shutil.copyfile(f"{out}/tiny.json", f"{out}/{name}.json")
        rewrite(f"{out}/{name}.json", changes)


# The tiny preset before 2026-12-01, as changes to today's: 128 wide, 2 heads, patch 7 (a 4 x 4
# grid at 28 px), the official augmentations at 28 / 14 px with 6 local crops of 0.1-0.4 and
# global crops of 0.4-1, teacher momentum 0.99 -> 1, 2000 steps in epochs of 100. Every sweep,
# probe, teacher and distillation script below starts from it, as when their numbers in
# BENCHMARKS.md were measured; the preset itself became the patch-14 recipe that
# scripts/fashion_mnist_knn.sh trains (BENCHMARKS.md, "Patch 14").
PATCH7 = {"arch.embed_dim": 128, "arch.num_heads": 2, "arch.ffn_hidden": 512, "arch.patch_size": 7,
          "arch.pos_grid": 4, "crops.n_local": 6, "crops.global_scale": [0.4, 1.0],
          "crops.local_scale": [0.1, 0.4], "crops.blur_kernel": 3, "crops.solarize_prob": 0.2,
          "crops.jitter_prob": 0.8, "crops.grayscale_prob": 0.2, "momentum_teacher": 0.99,
          "final_momentum_teacher": 1.0, "total_steps": 2000, "epoch_length": 100,
          "checkpoint_every": 200}


# The augmentation recipes of the Fashion-MNIST scripts, as changes to the tiny preset
# (BENCHMARKS.md, "Milder augmentations"): official (the preset's own), mild (geometric
# augmentations only: global crops of 0.8-1, local crops of 0.2-0.5, flips; no colour jitter,
# grayscale, solarisation or blur) and milder (crops of 0.9-1 and 0.3-0.6, and a constant EMA
# momentum of 0.996, ahead of mild in the 12-minute probes of fashion_mnist_mild_probes.sh) and
# milder_nolocal (milder without local crops: ahead of milder in those probes with two seeds,
# level with it over the hour; BENCHMARKS.md, "No local crops over the hour").
MILD_CROPS = {"crops.global_scale": [0.8, 1.0], "crops.local_scale": [0.2, 0.5]}
GEOMETRIC_ONLY = {"crops.jitter_prob": 0.0, "crops.grayscale_prob": 0.0, "crops.solarize_prob": 0.0,
                  "crops.blur_kernel": 1}
MILD = {**MILD_CROPS, **GEOMETRIC_ONLY}
AUGMENTATIONS = {
    "official": {},
    "mild": MILD,
    "milder": {**MILD, "crops.global_scale": [0.9, 1.0], "crops.local_scale": [0.3, 0.6],
               "momentum_teacher": 0.996, "final_momentum_teacher": 0.996},
}
AUGMENTATIONS["milder_nolocal"] = {**AUGMENTATIONS["milder"], "crops.n_local": 0}
# milder_nolocal without flips and with KoLeo 0.3: the two changes a little (within noise) ahead
# of it in the 12-minute probes of 2026-12-01 (BENCHMARKS.md, "Less invariance").
AUGMENTATIONS["nolocal_noflip_koleo03"] = {**AUGMENTATIONS["milder_nolocal"], "crops.flip_prob": 0.0,
                                           "koleo_loss_weight": 0.3}


def apply(config, changes):
    """Apply `changes` (dotted paths, as in write_variants) to the recipe dict `config`."""
    for key, value in changes.items():
        node = config
        *keys, last = key.split(".")
        for k in keys:
            node = node[k]
        node[last] = value


def rewrite(path, changes):
    """Apply `changes` to the JSON recipe at `path`."""
    c = json.load(open(path))
    apply(c, changes)
    json.dump(c, open(path, "w"), indent=1)


def continue_run(checkpoint, out, edit):
    """A continuation of the run whose training checkpoint is `checkpoint`, in the folder `out`:
    its recipe (from the checkpoint's header) passed through `edit` (a function that changes the
    dict in place), written to OUT/config.json and into the header of a copy of the checkpoint,
    OUT/checkpoint.safetensors (tensors, optimiser state and step unchanged, written to a temp
    file and renamed). `dinov2 train --resume` refuses a config other than the run's own; with
    the new recipe in both places it continues the run under it."""
    with open(checkpoint, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
        data_start = 8 + n
    meta = header["__metadata__"]
    c = json.loads(meta["config"])
    edit(c)
    header["__metadata__"] = dict(meta, config=json.dumps(c, separators=(",", ":")))
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)
    os.makedirs(out, exist_ok=True)
    json.dump(c, open(f"{out}/config.json", "w"), indent=1)
    tmp = f"{out}/checkpoint.safetensors.tmp"
    with open(checkpoint, "rb") as f, open(tmp, "wb") as g:
        g.write(struct.pack("<Q", len(text)) + text)
        f.seek(data_start)
        while chunk := f.read(1 << 24):
            g.write(chunk)
    os.replace(tmp, f"{out}/checkpoint.safetensors")
