"""File names and shared constants, kept in one place (the run directory, checkpoints and tests use them)."""

PRUNING_PLAN_NAME = "pruning_plan.json"
STATE_NAME = "state.json"
SELECTION_NAME = "selection.parquet"
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"
SURROGATE_DIR = "surrogate"
FUSED_DIR = "fused"

# Column names the package adds to transformed batches.
PIXEL_VALUES = "pixel_values"
LABELS = "labels"
POOL_INDEX = "pool_index"

# The built-in dataset, read from Debian's `dataset-fashion-mnist` package when present.
FASHION_MNIST = "fashion_mnist"
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_APT_PACKAGE = "dataset-fashion-mnist"
FASHION_MNIST_HUB_ID = "zalando-datasets/fashion_mnist"
FASHION_MNIST_LABELS = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
