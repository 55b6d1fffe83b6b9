"""Is one model's Fashion-MNIST k-NN top-1 higher than another's beyond chance? The official
k-NN protocol (CLS, cosine, T = 0.07, weighted vote; test as queries, train as memory) on both
models' features, then an exact McNemar test on the test images one model gets right and the
other wrong (the two share the test set, so a paired test is the fair one: two top-1 values
near 83% on 10k images differ by more than 0.53 points one time in three by chance alone when
treated as independent, far less often when paired).

    python3 scripts/fashion_mnist_knn_paired.py WEIGHTS_A WEIGHTS_B [WORK_DIR]   # ~2 min for two tiny models

Needs numpy, pillow, safetensors, scipy, dataset-fashion-mnist and the release build; shares
its image and embedding cache (WORK_DIR, default /tmp/fashion-mnist-probe) with
scripts/fashion_mnist_feature_probe.py."""
import os
import sys

from scipy.stats import binomtest

from fashion_mnist_feature_probe import KS, cached_embeddings, knn, run, split


def main():
    if len(sys.argv) < 3:
        sys.exit("usage: fashion_mnist_knn_paired.py WEIGHTS_A WEIGHTS_B [WORK_DIR]")
    a, b = sys.argv[1:3]
    work = sys.argv[3] if len(sys.argv) > 3 else "/tmp/fashion-mnist-probe"
    os.chdir(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
    _, ytr, ptr = split(work, "train", "train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz")
    _, yte, pte = split(work, "test", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
    right = []
    for weights in (a, b):
        tr, te = cached_embeddings(weights, work, {"train": ptr, "test": pte})
        right.append(knn(tr["cls"], ytr, te["cls"]) == yte)
    print(f"A = {a}\nB = {b}")
    print("| k | A top-1 | B top-1 | A only right | B only right | McNemar exact p (two-sided) |")
    print("|---|---|---|---|---|---|")
    for i, k in enumerate(KS):
        ra, rb = right[0][i], right[1][i]
        only_a, only_b = int((ra & ~rb).sum()), int((rb & ~ra).sum())
        p = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
        print(f"| {k} | {100 * ra.mean():.2f}% | {100 * rb.mean():.2f}% | {only_a} | {only_b} | {p:.4f} |")


if __name__ == "__main__":
    run(main)
