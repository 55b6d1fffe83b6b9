"""Variants of the tiny recipe as JSON configs, for the Fashion-MNIST sweep scripts.

`write_variants(out, variants)` reads OUT/tiny.json (the preset as `dinov2 train --preset tiny
--print-config` prints it) and writes OUT/NAME.json for every NAME in `variants`, a dict of
changes whose keys are dotted paths into the recipe ("crops.local_size", "base_lr")."""
import json
import shutil


def write_variants(out, variants):
    for name, changes in variants.items():
        shutil.copyfile(f"{out}/tiny.json", f"{out}/{name}.json")
        rewrite(f"{out}/{name}.json", changes)


# The augmentation recipes of the Fashion-MNIST scripts, as changes to the tiny preset
# (BENCHMARKS.md, "Milder augmentations"): official (the preset's own), mild (geometric
# augmentations only: global crops of 0.8-1, local crops of 0.2-0.5, flips; no colour jitter,
# grayscale, solarisation or blur) and milder (crops of 0.9-1 and 0.3-0.6, and a constant EMA
# momentum of 0.996, ahead of mild in the 12-minute probes of fashion_mnist_mild_probes.sh).
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
