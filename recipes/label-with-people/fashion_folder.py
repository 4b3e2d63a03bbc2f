"""The labeling flow offline, on a folder of unlabeled images: this script plays the data owner and the annotator.

    python recipes/label-with-people/fashion_folder.py make        # the folder of unlabeled images + the answer key
    python recipes/label-with-people/fashion_folder.py annotate runs/label-with-people/prunefuse/queries/round_1
    python recipes/label-with-people/fashion_folder.py evaluate runs/label-with-people/prunefuse/fused

`make` writes Fashion-MNIST training images (from the Debian package `dataset-fashion-mnist`, no network) as PNG
files into one flat folder, with no class sub-folders (so the pool has no labels), and keeps their true classes in
an answer key beside the folder, where the run never looks. `annotate` fills a query's `labels.csv` template from
the answer key, as a person would in a spreadsheet, and writes it next to the answer key (the run directory belongs
to the run). `evaluate` runs the fused model in `pipeline("image-classification")` on the Fashion-MNIST test split.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

DEFAULT_ROOT = Path("runs/label-with-people")
IMAGES_DIR = "images"
ANSWERS = "answers.csv"


def make(root: Path, num_images: int, seed: int) -> None:
    from prunefuse_hf import load_image_dataset

    train = load_image_dataset("fashion_mnist", "train").shuffle(seed=seed).select(range(num_images))
    names = train.features["label"].names
    images = root / IMAGES_DIR
    if images.exists() and any(images.iterdir()):
        raise SystemExit(
            f"{images} is not empty; remove it (or pass another --root) to make the folder again."
        )
    images.mkdir(parents=True, exist_ok=True)
    with open(root / ANSWERS, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["file_name", "label"])
        for i, row in enumerate(train):
            file_name = f"{i:05d}.png"
            row["image"].save(images / file_name)
            writer.writerow([file_name, names[row["label"]]])
    print(f"{num_images:,} unlabeled images in {images}; their classes (the answer key) in {root / ANSWERS}")


def annotate(query_dir: Path, root: Path) -> None:
    with open(root / ANSWERS, newline="") as f:
        answers = {row["file_name"]: row["label"] for row in csv.DictReader(f)}
    with open(query_dir / "labels.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    out = root / f"labels_{query_dir.name}.csv"
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        for row in rows:
            writer.writerow({**row, "label": answers[Path(row["file_name"]).name]})
    print(f"labeled {len(rows)} images of {query_dir} in {out}")


def evaluate(model_dir: Path, num_images: int) -> None:
    from transformers import pipeline

    from prunefuse_hf import load_image_dataset

    test = load_image_dataset("fashion_mnist", "test").select(range(num_images))
    names = test.features["label"].names
    classifier = pipeline("image-classification", model=str(model_dir))
    predictions = classifier(list(test["image"]), top_k=1, batch_size=256)
    correct = sum(p[0]["label"] == names[y] for p, y in zip(predictions, test["label"]))
    print(
        f"{model_dir} in pipeline(): accuracy {correct / num_images:.3f} on {num_images:,} Fashion-MNIST test images"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=DEFAULT_ROOT, help="Where the folder and answer key go.")
    commands = parser.add_subparsers(dest="command", required=True)
    make_parser = commands.add_parser("make", help="Write the folder of unlabeled images and the answer key.")
    make_parser.add_argument("--num_images", type=int, default=1000)
    make_parser.add_argument("--seed", type=int, default=0)
    annotate_parser = commands.add_parser("annotate", help="Fill a query's labels.csv from the answer key.")
    annotate_parser.add_argument("query_dir", type=Path, help="RUN/queries/round_K, as the run printed it.")
    evaluate_parser = commands.add_parser(
        "evaluate", help="Accuracy of a model in pipeline() on the test split."
    )
    evaluate_parser.add_argument("model_dir", type=Path)
    evaluate_parser.add_argument("--num_images", type=int, default=1000)
    args = parser.parse_args(argv)
    if args.command == "make":
        make(args.root, args.num_images, args.seed)
    elif args.command == "annotate":
        annotate(args.query_dir, args.root)
    else:
        evaluate(args.model_dir, args.num_images)


if __name__ == "__main__":
    sys.exit(main())
