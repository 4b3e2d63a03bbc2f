"""PruneFuse data selection for Hugging Face vision models.

The front door is [`PruneFuseTrainer`] with its [`PruneFuseConfig`]; every piece also works alone (pruning,
fusion, the pool, scoring, strategies, the subset on the Hub).
"""

__version__ = "0.1.0"

from .annotation import LabelStore, write_query_batch
from .config import PruneFuseConfig
from .data import load_image_dataset
from .distillation import DistillationTrainer, compute_accuracy
from .fusion import fuse_into_dense
from .hub import push_run
from .label_files import LabelBatch, read_labels
from .memory import keep_freed_memory
from .plan import PruningPlan
from .pool import DataPool
from .preprocessing import ImagePreprocessor, build_image_processor
from .pruning import prune_model
from .scoring import score_pool
from .strategies import get_strategy
from .subset import load_subset
from .trainer import PruneFuseTrainer

__all__ = [
    "DataPool",
    "DistillationTrainer",
    "ImagePreprocessor",
    "LabelBatch",
    "LabelStore",
    "PruneFuseConfig",
    "PruneFuseTrainer",
    "PruningPlan",
    "build_image_processor",
    "compute_accuracy",
    "fuse_into_dense",
    "get_strategy",
    "keep_freed_memory",
    "load_image_dataset",
    "load_subset",
    "prune_model",
    "push_run",
    "read_labels",
    "score_pool",
    "write_query_batch",
]
