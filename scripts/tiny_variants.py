"""Variants of the tiny recipe as JSON configs, for the Fashion-MNIST sweep scripts.

`write_variants(out, variants)` reads OUT/tiny.json (the preset as `dinov2 train --preset tiny
--print-config` prints it) and writes OUT/NAME.json for every NAME in `variants`, a dict of
changes whose keys are dotted paths into the recipe ("crops.local_size", "base_lr")."""
import copy
import json


def write_variants(out, variants):
    base = json.load(open(f"{out}/tiny.json"))
    for name, changes in variants.items():
        c = copy.deepcopy(base)
        for key, value in changes.items():
            node = c
            *path, last = key.split(".")
            for k in path:
                node = node[k]
            node[last] = value
        json.dump(c, open(f"{out}/{name}.json", "w"), indent=1)
