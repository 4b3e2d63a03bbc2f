"""Names and vocabularies stated once: the files of a run directory and of the Hub artifacts, the column
names the package adds, the choices of every enumerated setting and the defaults they share.

Help texts, error messages and docs are built from these; nothing else spells them out.
"""

VERSION = "0.1.0"

# ----- the run directory (`output_dir`) -----

STATE_NAME = "state.json"
# The pool's per-image arrays (round, label, score; the pixel digest of each labeled row, 0 for the others),
# beside state.json: `pool_arrays-<revision>.npz`.
POOL_ARRAYS_PREFIX = "pool_arrays"
POOL_ARRAYS = ("rounds", "labels", "scores")
ROW_DIGESTS = "row_digests"
SELECTION_NAME = "selection.parquet"
LABELS_NAME = "labels.parquet"
# The boxes people drew for an object-detection run (cppe-5 `objects` column), beside the class-id store.
LABELED_OBJECTS_NAME = "labeled_objects.parquet"
# The masks people painted for a semantic-segmentation run: one PNG of class ids per labeled image in the folder, and
# the parquet index of them (pool index, file, round, source, who answered).
LABELED_MASKS_NAME = "labeled_masks.parquet"
LABELED_MASKS_DIR = "labeled_masks"
METRICS_NAME = "metrics.json"
REPORT_NAME = "report.md"
ACCURACY_PLOT = "accuracy.png"
COST_PLOT = "selection_cost.png"
CLASS_BALANCE_PLOT = "class_balance.png"
SURROGATE_DIR = "surrogate"
FUSED_DIR = "fused"
# Checkpoints a resumed run continues from: θ0, the base fusion writes into, the surrogate's initialization.
DENSE_INIT_DIR = "dense_init"
DENSE_BASE_DIR = "dense_base"
SURROGATE_INIT_DIR = "surrogate_init"
TRAINER_DIR = "trainer_output"
QUERIES_DIR = "queries"
# A query batch (`queries/round_K/`): queried rows, the template annotators fill, Label Studio import and config.
QUERY_DATASET_DIR = "dataset"
QUERY_CSV = "labels.csv"
LABEL_STUDIO_TASKS = "label_studio_tasks.json"
LABEL_STUDIO_CONFIG = "label_studio_config.xml"
# Object detection: the COCO JSON template of a query batch, and the annotation file of Label Studio's COCO export.
COCO_TEMPLATE = "annotations.json"
# The files of a query batch that annotators use, in the order the "images to label" line names them (those present).
# Semantic segmentation: the queried images and their empty masks (255: not labeled yet), named alike, to paint.
QUERY_IMAGES_DIR = "images"
QUERY_MASKS_DIR = "masks"
QUERY_FILES = {QUERY_DATASET_DIR: f"{QUERY_DATASET_DIR}/", COCO_TEMPLATE: f"{COCO_TEMPLATE} (COCO template to fill in)",
               QUERY_MASKS_DIR: f"{QUERY_MASKS_DIR}/ (mask templates to paint)", QUERY_CSV: QUERY_CSV,
               LABEL_STUDIO_TASKS: LABEL_STUDIO_TASKS}  # fmt: skip
LABEL_STUDIO_COCO = "result.json"
# Columns of a query batch beside the pool index, and the marker of a round continued with part of its labels.
QUERY_FILE_NAME = "file_name"
QUERY_SCORE = "score"
QUERY_PARTIAL = "partial.json"
# What identifies each queried image (pixel digest, path, file name), recorded in state.json with the query.
QUERY_IMAGES = "images"
# The surrogate's guess for each queried image (labels.csv, the query dataset, Label Studio predictions).
QUERY_PREDICTED_LABEL = "predicted_label"
QUERY_PREDICTED_SCORE = "predicted_score"
# Pool indices annotators skipped in a round (they go back to the pool but are not queried again).
QUERY_SKIPPED = "skipped.json"
# A Label Studio project of a run (`RUN/label_studio.json`: url, project id) and the export pulled per round.
LABEL_STUDIO_PROJECT = "label_studio.json"
LABEL_STUDIO_EXPORT = "label_studio_export.json"
# Label Studio's local-files serving: the URL prefix of a file under LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT.
LABEL_STUDIO_LOCAL_FILES_URL = "/data/local-files/?d="
# The environment of a Label Studio client (the SDK's names) and of the server's local-file serving.
LABEL_STUDIO_URL_ENV = "LABEL_STUDIO_URL"
LABEL_STUDIO_TOKEN_ENV = "LABEL_STUDIO_API_KEY"
LABEL_STUDIO_DOCUMENT_ROOT_ENV = "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT"
# How several answers to one image become one label (None: refuse when they disagree), and what
# labels.parquet records about each label besides the five original columns.
RESOLUTIONS = ("ground_truth", "majority", "latest")
ANNOTATION_COLUMNS = ("annotator", "annotation_id", "num_answers", "resolution")

# ----- checkpoints and Hub artifacts -----

PRUNING_PLAN_NAME = "pruning_plan.json"
# The weights of a general-path surrogate (its own tensor names, narrowed shapes).
SURROGATE_WEIGHTS_NAME = "model.safetensors"
MODEL_CARD_NAME = "README.md"
SUBSET_METADATA_NAME = "prunefuse_subset.json"
# Metadata files the `imagefolder` builder reads next to the images (they replace the class sub-folders).
IMAGEFOLDER_METADATA_NAMES = ("metadata.jsonl", "metadata.csv", "metadata.parquet")
SUBSET_EXAMPLES_DIR = "examples"

# ----- columns -----

PIXEL_VALUES = "pixel_values"

# ----- the pixel cache -----

# How cached pixels are stored: "raw" uint8 arrays (read without decoding), "jpeg" (lossy, about a tenth of raw
# at 224 px) or "png" (lossless) bytes decoded per batch; "auto" picks (see `prunefuse_hf.data.pixel_cache`).
PIXEL_CACHE_FORMATS = ("auto", "raw", "jpeg", "png")
# A cache of key K is `pixels-K.arrow` (or `pixels-K_00000_of_0000N.arrow` shards, one per building process)
# with its description `pixels-K.json`, written once the build is complete.
PIXEL_CACHE_PREFIX = "pixels-"
PIXEL_CACHE_DIR_ENV = "PRUNEFUSE_PIXEL_CACHE"
# The cap on the cache folder's size (e.g. "50GB", "none"): least recently used caches are removed beyond it.
PIXEL_CACHE_MAX_SIZE_ENV = "PRUNEFUSE_PIXEL_CACHE_MAX_SIZE"
DEFAULT_PIXEL_CACHE_MAX_SIZE = "50GB"
# Which datasets a run caches: "run" (the pool and the evaluation set given at construction) or "all" (also those
# given to evaluate() / predict(); otherwise they are decoded as read and leave nothing on disk).
PIXEL_CACHE_SCOPES = ("run", "all")
LABELS = "labels"
POOL_INDEX = "pool_index"
SOURCE_INDEX = "source_index"
# Columns of selection.parquet besides the pool index.
SELECTION_LABEL = "label"
SELECTION_LABEL_NAME = "label_name"
IMAGE_PATH = "image_path"

# ----- vocabularies -----

IMPORTANCES = ("l2",)
SURROGATE_INITS = ("reinit", "warm")
FUSION_INITS = ("dense_init", "fresh")
DEFAULT_DISTILL_ALPHA = 0.5
DEFAULT_DISTILL_TEMPERATURE = 4.0
DEFAULT_NUM_ROUNDS = 4
ANNOTATIONS = ("simulated", "human")
# The tasks a run performs (`pipeline()` task names; `prunefuse_hf.tasks.TASKS` describes each).
TASK_NAMES = ("image-classification", "object-detection", "image-segmentation")
# Box layouts of a detection dataset's `objects.bbox` (COCO pixels, Pascal VOC corners, YOLO normalized centers).
BBOX_FORMATS = ("coco", "pascal_voc", "yolo")
# How the per-detection uncertainties of an image become its acquisition score (Brust et al., VISAPP 2019).
DETECTION_AGGREGATIONS = ("max", "mean", "sum")
# How the per-pixel uncertainties of an image become its acquisition score (mean, max, or the mean over the classes
# the model predicts in the image of their pixels' mean: rare classes count as much as large ones).
SEGMENTATION_AGGREGATIONS = ("mean", "max", "class_weighted")
# What selects the next query: the surrogate trained on the labeled set each round ("trained"; at p = 0 the dense
# model itself), or a linear head trained each round on the surrogate's frozen pooled features, computed once at
# its (pretrained) initialization ("linear_probe").
SELECTORS = ("trained", "linear_probe")
# How the first query (`initial_labeled_size`) is drawn: a seeded random draw, or TypiClust's typical points of
# k-means clusters of the dense model's pooled features.
INITIAL_STRATEGIES = ("random", "typiclust")
# Label-free distillation of the dense model into the surrogate before round 1 (epochs over the pool).
DEFAULT_SURROGATE_DISTILL_EPOCHS = 1.0
# What each named method sets; fields given explicitly win over these (and are recorded as overrides).
_TRAINED = {"selector": "trained", "surrogate_distill_epochs": 0.0}
METHODS = {
    "prunefuse": {"pruning_ratio": 0.5, "strategy": "least_confidence", "fusion": True,
                  "distill_alpha": DEFAULT_DISTILL_ALPHA, **_TRAINED},
    "prunefuse_distilled": {"pruning_ratio": 0.5, "strategy": "least_confidence", "fusion": True,
                            "distill_alpha": DEFAULT_DISTILL_ALPHA, "selector": "trained",
                            "surrogate_distill_epochs": DEFAULT_SURROGATE_DISTILL_EPOCHS},
    "svp": {"pruning_ratio": 0.5, "strategy": "least_confidence", "fusion": False, "distill_alpha": 0.0, **_TRAINED},
    "feature_proxy": {"pruning_ratio": 0.0, "strategy": "least_confidence", "fusion": False, "distill_alpha": 0.0,
                      "selector": "linear_probe", "surrogate_distill_epochs": 0.0},
    "dense_al": {"pruning_ratio": 0.0, "strategy": "least_confidence", "fusion": False, "distill_alpha": 0.0,
                 **_TRAINED},
    "random": {"pruning_ratio": 0.0, "strategy": "random", "fusion": False, "distill_alpha": 0.0, **_TRAINED},
}  # fmt: skip
METHOD_DESCRIPTIONS = {
    "prunefuse": "the pruned surrogate selects, is fused into the dense model, which trains with distillation",
    "prunefuse_distilled": "as prunefuse, but the pruned surrogate first learns the dense model's pooled features "
    "on the unlabeled pool (label-free distillation) before the rounds start",
    "svp": "the pruned surrogate selects, a fresh dense model trains on the selection (selection via proxy)",
    "feature_proxy": "a linear head on the dense model's frozen pooled features (computed once) selects each round; "
    "the dense model trains on the selection (selection via proxy with a linear probe)",
    "dense_al": "the dense model selects for itself (classic active learning) and is retrained from scratch",
    "random": "a seeded random draw, no model-based selection, the dense model trains on it",
}
# Pooled features of the whole pool, computed once per model and reused by resumes (`RUN/pool_features/`).
POOL_FEATURES_DIR = "pool_features"

# ----- the built-in dataset, read from Debian's `dataset-fashion-mnist` package when present -----

FASHION_MNIST = "fashion_mnist"
# The built-in object-detection pool: Fashion-MNIST items pasted on textured canvases (`tasks.synthetic_detection_pool`).
SYNTHETIC_DETECTION = "synthetic_detection"
# The built-in semantic-segmentation pool: the same items with per-pixel masks (`tasks.synthetic_segmentation_pool`).
SYNTHETIC_SEGMENTATION = "synthetic_segmentation"
# Images of a recipe's built-in synthetic pool and evaluation set when `max_pool_size` / `max_eval_samples` are unset.
SYNTHETIC_POOL_SIZE = 1000
SYNTHETIC_EVAL_SIZE = 200
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

# How a family's surrogate is written down: a narrowed config of the same class ("config", reloads with
# AutoModelForImageClassification), or the dense config + the pruning history replayed by prunefuse-hf ("replay").
PRUNING_PATH_CONFIG = "config"
PRUNING_PATH_REPLAY = "replay"
