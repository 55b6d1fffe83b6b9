#!/usr/bin/env python3
"""Writes tests/fixtures/curation/fashion-mnist-400.png: the first 400 images of Debian's
Fashion-MNIST test set (dataset-fashion-mnist) as a 20 x 20 grid of 28 x 28 grey tiles, row
by row. The curation test cuts it into 400 distinct images and plants near-copies of some.

    python3 tests/reference/make_curation_fixture.py      # needs: apt-get install dataset-fashion-mnist; pip install pillow
"""
import gzip
import os
import struct
import sys

from PIL import Image

SRC = os.environ.get("DINOV2_FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
OUT = os.path.join(os.path.dirname(__file__), "..", "fixtures", "curation", "fashion-mnist-400.png")
N, GRID, SIDE = 400, 20, 28


def main():
    with gzip.open(os.path.join(SRC, "t10k-images-idx3-ubyte.gz"), "rb") as f:
        magic, n, rows, cols = struct.unpack(">IIII", f.read(16))
        assert magic == 2051 and (rows, cols) == (SIDE, SIDE) and n >= N
        pixels = f.read(N * SIDE * SIDE)
    sheet = Image.new("L", (GRID * SIDE, GRID * SIDE))
    for i in range(N):
        tile = Image.frombytes("L", (SIDE, SIDE), pixels[i * SIDE * SIDE:(i + 1) * SIDE * SIDE])
        sheet.paste(tile, ((i % GRID) * SIDE, (i // GRID) * SIDE))
    os.makedirs(os.path.dirname(OUT), exist_ok=True)
    sheet.save(OUT, optimize=True)
    print(f"wrote {OUT}", file=sys.stderr)


if __name__ == "__main__":
    main()
