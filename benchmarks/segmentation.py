"""Does PruneFuse pay off for semantic segmentation? Random, dense-selector AL and PruneFuse side by side.

Every method (see `task_benchmark.py`: random, dense_al, prunefuse, full_pool) runs the offline segmentation recipe
(`recipes/synthetic-segmentation-segformer/`: a small SegFormer built from config, trained with its own per-pixel
loss; PruneFuse's surrogate selects by least confidence, mean over pixels) through the real `prunefuse-hf run` code
path on the same seeded data, with the same seeds and training settings.

The data: the built-in synthetic segmentation pool (Fashion-MNIST items pasted at several scales on textured 64-px
canvases) restricted to five item classes that are easy to tell apart (trouser, sandal, sneaker, bag, ankle boot;
six classes with the background), 1,000 pool images and 300 test images. Budgets: 100 random images, then three
rounds of +100 (100, 200, 300, 400 labels); every training runs 20 epochs (the recipe's 10 left the whole-pool model at
0.53 mean IoU, 20 bring it above 0.6); the dense/fused model is trained and evaluated (mean IoU as `evaluate`'s
`mean_iou` defines it) at every budget. Runs resume where they stopped.

    python benchmarks/segmentation.py                 # 3 seeds
    python benchmarks/segmentation.py --seeds 0       # one seed
    python benchmarks/segmentation.py --quick         # tiny pool, one round: seconds (CI)

Writes `segmentation.json`, `segmentation.md` and the plot `segmentation_mean_iou.png` into `--output` (default
`benchmarks/results`).
"""

from __future__ import annotations

from task_benchmark import ROOT, Scenario, main

from prunefuse_hf.tasks.segmentation_synthetic import synthetic_segmentation_pool

SEGMENTATION = Scenario(
    name="segmentation",
    title="semantic segmentation (synthetic pool, SegFormer)",
    recipe=ROOT / "recipes" / "synthetic-segmentation-segformer" / "prunefuse.yaml",
    metrics=("mean_iou",),
    metric_labels={"mean_iou": "Mean IoU"},
    full={"pool_size": 1000, "test_size": 300, "initial_labeled_size": 100, "query_size": 100, "num_rounds": 3,
          "num_train_epochs": 20},
    quick={"pool_size": 60, "test_size": 20, "initial_labeled_size": 20, "query_size": 20, "num_rounds": 1,
           "num_train_epochs": 1},
    # The targets: above random at every budget, within 1 mIoU point of dense AL at <= 0.4x its selection
    # time; the whole-pool model at mIoU >= 0.6.
    targets={"points_vs_dense_al": 1.0, "selection_time_ratio": 0.4, "full_pool": 0.6},
    synthetic_pool=synthetic_segmentation_pool,
)  # fmt: skip

if __name__ == "__main__":
    main(SEGMENTATION, description=__doc__)
