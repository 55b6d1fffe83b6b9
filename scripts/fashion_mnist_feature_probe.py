"""Where a model's Fashion-MNIST features carry the classes: the official k-NN protocol (cosine,
T = 0.07, weighted vote; test as queries, train as memory) on several descriptors of the same
backbone, next to raw pixels, and per class. A diagnostic, not the protocol: `dinov2 eval knn`
(CLS only) is what BENCHMARKS.md reports as a model's k-NN.

Descriptors: the CLS token (the protocol's; must agree with `dinov2 eval knn`), the mean patch
token, the two concatenated (each L2-normalised), every patch token concatenated in grid order
(each normalised: a spatial descriptor, as raw pixels are), raw pixels and raw pixels made
flip-invariant (the image plus its mirror image: what invariance to flips costs the pixels).
Then how invariant the CLS is: the cosine of each of the first 1000 test images' CLS with its
mirror image's, against the cosine with the most similar other test image of the 1000.

    python3 scripts/fashion_mnist_feature_probe.py WEIGHTS [WORK_DIR]   # ~3 min for a 3M model

Needs numpy, pillow, safetensors, dataset-fashion-mnist and the release build
(target/release/dinov2). WORK_DIR (default /tmp/fashion-mnist-probe) receives the 70k images as
PNG files and the embeddings."""
import gzip
import os
import subprocess
import sys

import numpy as np
from PIL import Image
from safetensors.numpy import load_file

DATA = "/usr/share/datasets/fashion-mnist/"
CLASSES = ["T-shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker", "bag", "boot"]
KS = (10, 20, 100, 200)
MIRRORED = 1000  # test images whose mirror image is embedded too


def idx(name, offset):
    return np.frombuffer(gzip.open(DATA + name).read(), np.uint8, offset=offset)


def split(work, name, images, labels, mirror=False):
    x = idx(images, 16).reshape(-1, 28, 28)
    y = idx(labels, 8)
    if mirror:
        x, y, name = x[:MIRRORED, :, ::-1], y[:MIRRORED], name + "-mirrored"
    os.makedirs(f"{work}/{name}", exist_ok=True)
    paths = [f"{work}/{name}/{i:05d}.png" for i in range(len(x))]
    for p, image in zip(paths, x):
        if not os.path.exists(p):
            Image.fromarray(image).save(p)
    return x, y, paths


def embed(weights, paths, out):
    """CLS and patch tokens of `paths`, embedded 10k at a time (the argument list's limit)."""
    parts = []
    for s in range(0, len(paths), 10000):
        part = f"{out}.{s}.safetensors"
        if not os.path.exists(part):
            # native size: the 28-px images as they are, as `eval knn` sees them for a 28-px run
            subprocess.run(["target/release/dinov2", "embed", "--weights", weights, "--size", "native",
                            "--batch-size", "256", "--backend", "ndarray", "-o", part + ".tmp", *paths[s:s + 10000]],
                           check=True, capture_output=True)
            os.replace(part + ".tmp", part)
        parts.append(load_file(part))
    return {key: np.concatenate([p[key] for p in parts]) for key in ("cls", "patch")}


def cached_embeddings(weights, work, splits):
    """`embed` of each named list of paths in `splits`, cached in WORK/embeddings under a key of
    the weights' path, size and time (a retrained file is re-embedded)."""
    os.makedirs(f"{work}/embeddings", exist_ok=True)
    info = os.stat(weights)
    tag = f"{os.path.abspath(weights).replace('/', '_')}.{info.st_size}.{info.st_mtime_ns}"
    return [embed(weights, paths, f"{work}/embeddings/{tag}.{name}") for name, paths in splits.items()]


def normalise(x):
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


def knn(train, train_y, test, T=0.07):
    """Predictions [len(KS), n_test] of the weighted k-NN vote."""
    train, test = normalise(train.astype(np.float32)), normalise(test.astype(np.float32))
    votes = []
    for s in range(0, len(test), 1000):
        sim = test[s:s + 1000] @ train.T
        top = np.argpartition(-sim, max(KS), axis=1)[:, :max(KS)]
        v = np.take_along_axis(sim, top, 1)
        order = np.argsort(-v, 1)
        v, top = np.take_along_axis(v, order, 1), np.take_along_axis(top, order, 1)
        rows = []
        for k in KS:
            w, lab = np.exp(v[:, :k] / T), train_y[top[:, :k]]
            rows.append(np.stack([(w * (lab == c)).sum(1) for c in range(10)], 1).argmax(1))
        votes.append(np.stack(rows))
    return np.concatenate(votes, 1)


def run(body):
    """`body()`, its failures as one-line errors (shared with fashion_mnist_knn_paired.py)."""
    try:
        body()
    except subprocess.CalledProcessError as e:
        sys.exit(f"dinov2 embed failed: {e.stderr.decode().strip()}")
    except OSError as e:
        sys.exit(f"error: {e}")


def probe():
    weights = sys.argv[1]
    work = sys.argv[2] if len(sys.argv) > 2 else "/tmp/fashion-mnist-probe"
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    xtr, ytr, ptr = split(work, "train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    xte, yte, pte = split(work, "test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    _, _, pmi = split(work, "test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", mirror=True)
    tr, te, mi = cached_embeddings(weights, work, {"train": ptr, "test": pte, "test-mirrored": pmi})
    ctr, cte = tr["cls"], te["cls"]
    gtr, gte = tr["patch"].reshape(len(ctr), -1, ctr.shape[1]), te["patch"].reshape(len(cte), -1, cte.shape[1])
    # `eval knn --raw-pixels`: the grey image as RGB, normalised with the ImageNet mean and std
    mean, std = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
    pixels = lambda x: ((x.reshape(len(x), -1, 1).astype(np.float32) / 255 - mean) / std).reshape(len(x), -1)
    mirror = lambda x: pixels(x) + pixels(x[:, :, ::-1])
    descriptors = {
        "CLS (the protocol)": (ctr, cte),
        "mean patch token": (gtr.mean(1), gte.mean(1)),
        "CLS + mean patch token": (np.concatenate([normalise(ctr), normalise(gtr.mean(1))], 1),
                                   np.concatenate([normalise(cte), normalise(gte.mean(1))], 1)),
        "all patch tokens, concatenated": (normalise(gtr).reshape(len(gtr), -1), normalise(gte).reshape(len(gte), -1)),
        "raw pixels": (pixels(xtr), pixels(xte)),
        "raw pixels + mirror image": (mirror(xtr), mirror(xte)),
    }
    print("| descriptor | " + " | ".join(f"k={k}" for k in KS) + " |")
    print("|---|" + "---|" * len(KS))
    predictions = {}
    for name, (a, b) in descriptors.items():
        p = knn(a, ytr, b)
        predictions[name] = p[KS.index(20)]
        print(f"| {name} | " + " | ".join(f"{100 * (row == yte).mean():.2f}%" for row in p) + " |")
    cls, raw = predictions["CLS (the protocol)"], predictions["raw pixels"]
    print("\nper class, k=20: | class | CLS | raw pixels |")
    for c, name in enumerate(CLASSES):
        m = yte == c
        print(f"| {name} | {100 * (cls[m] == c).mean():.1f}% | {100 * (raw[m] == c).mean():.1f}% |")
    print(f"wrong with both {100 * ((cls != yte) & (raw != yte)).mean():.2f}%, with CLS only "
          f"{100 * ((cls != yte) & (raw == yte)).mean():.2f}%, with raw pixels only "
          f"{100 * ((cls == yte) & (raw != yte)).mean():.2f}%")
    original, mirrored = normalise(cte[:MIRRORED]), normalise(mi["cls"])
    sim = original @ original.T
    np.fill_diagonal(sim, -np.inf)
    print(f"CLS invariance (first {MIRRORED} test images): cosine with its mirror image mean "
          f"{(original * mirrored).sum(1).mean():.3f}, with the most similar other image median "
          f"{np.median(sim.max(1)):.3f}, two images at random mean {sim[np.isfinite(sim)].mean():.3f}")
    c = ctr[:10000] - ctr[:10000].mean(0)
    s = np.linalg.svd(c, compute_uv=False) ** 2
    p = s / s.sum()
    print(f"CLS spectrum (first 10k train images): effective rank {np.exp(-(p * np.log(p + 1e-12)).sum()):.1f} "
          f"of {ctr.shape[1]}, largest component {100 * p[0]:.1f}% of the variance")


if __name__ == "__main__":
    run(probe)
