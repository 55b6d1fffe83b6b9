"""Are two evaluations' top-1 on the same test set different beyond chance? Reads two files
written by `dinov2 eval knn --predictions FILE` or `dinov2 eval linear --predictions FILE`
(each test image's label and predicted class) and runs an exact McNemar test on the images
one gets right and the other wrong. Both evaluations see the same test images, so the paired
test is the fair one: it counts only the images where they disagree.

    python3 scripts/paired_predictions.py A.json[:COLUMN] B.json[:COLUMN]

COLUMN picks the predictions in the file: `k=10`, `k=20` (default for k-NN), `k=100`, `k=200`,
or `linear` (the chosen head; the only column of a linear file). Standard library only.

    dinov2 eval knn --weights runs/fm --train fashion-mnist-train --test fashion-mnist-test --predictions knn.json
    dinov2 eval linear --weights runs/fm --train fashion-mnist-train --test fashion-mnist-test --grid --predictions linear.json
    python3 scripts/paired_predictions.py linear.json knn.json:k=20
"""
import json
import math
import sys


def load(spec):
    path, _, column = spec.partition(":")
    try:
        with open(path) as f:
            data = json.load(f)
    except (OSError, ValueError) as e:
        sys.exit(f"error: {path}: {e}")
    columns = data.get("predictions", {})
    if not column:
        column = "linear" if "linear" in columns else "k=20"
    if column not in columns:
        sys.exit(f"error: {path} has no predictions '{column}' (it has: {', '.join(columns)})")
    return path, column, data["images"], data["labels"], columns[column]


def mcnemar_exact(only_a, only_b):
    """Two-sided exact McNemar p-value: the binomial test of only_a of only_a + only_b at 1/2."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**n)


def main():
    if len(sys.argv) != 3:
        sys.exit("usage: paired_predictions.py A.json[:COLUMN] B.json[:COLUMN]")
    a, b = load(sys.argv[1]), load(sys.argv[2])
    if a[2] != b[2] or a[3] != b[3]:
        sys.exit(f"error: {a[0]} and {b[0]} are not on the same test images and labels")
    labels = a[3]
    right_a = [p == y for p, y in zip(a[4], labels)]
    right_b = [p == y for p, y in zip(b[4], labels)]
    n = len(labels)
    only_a = sum(x and not y for x, y in zip(right_a, right_b))
    only_b = sum(y and not x for x, y in zip(right_a, right_b))
    top_a, top_b = sum(right_a) / n, sum(right_b) / n
    # the standard error of the paired difference in top-1
    diff = (only_a - only_b) / n
    se = math.sqrt(max((only_a + only_b) / n - diff**2, 0.0) / n)
    print(f"A = {a[0]} ({a[1]}): top-1 {100 * top_a:.2f}%")
    print(f"B = {b[0]} ({b[1]}): top-1 {100 * top_b:.2f}%")
    print(f"{n} test images: A only right on {only_a}, B only right on {only_b}")
    print(f"A - B = {100 * diff:+.2f} points (paired s.e. {100 * se:.2f}); exact McNemar p = {mcnemar_exact(only_a, only_b):.4f}")


if __name__ == "__main__":
    main()
