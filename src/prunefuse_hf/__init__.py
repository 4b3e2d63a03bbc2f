"""PruneFuse data selection for Hugging Face vision models.

The front door is [`PruneFuseTrainer`] with its [`PruneFuseConfig`]; every piece also works alone (pruning,
fusion, the pool, scoring, strategies, the subset on the Hub).
"""

from .annotation.labels import LabelBatch
from .annotation.queries import write_query_batch
from .annotation.readers import read_labels
from .annotation.store import LabelStore
from .constants import VERSION as __version__  # noqa: F401
from .data.image_processor import build_image_processor
from .data.loading import load_image_dataset
from .data.pixel_cache import clear_pixel_caches, list_pixel_caches
from .data.pool import DataPool
from .data.preprocessing import ImagePreprocessor
from .hub.pipeline_ready import export_rgb_checkpoint
from .hub.push import push_run
from .hub.subset import load_subset
from .pruning.fusion import fuse_into_dense
from .pruning.plan import PruningPlan
from .pruning.prune import prune_model
from .pruning.replay import load_surrogate, save_surrogate
from .selection.scoring import score_pool
from .selection.strategies import get_strategy
from .tasks import Task, get_task, load_detection_dataset, synthetic_detection_pool, task_for_model
from .trainer.distillation_trainer import DistillationTrainer, compute_accuracy
from .trainer.prunefuse_config import PruneFuseConfig
from .trainer.prunefuse_trainer import PruneFuseTrainer
from .utils.memory import keep_freed_memory

__all__ = [
    "export_rgb_checkpoint",
    "DataPool",
    "DistillationTrainer",
    "ImagePreprocessor",
    "LabelBatch",
    "LabelStore",
    "PruneFuseConfig",
    "PruneFuseTrainer",
    "PruningPlan",
    "Task",
    "build_image_processor",
    "clear_pixel_caches",
    "compute_accuracy",
    "fuse_into_dense",
    "get_strategy",
    "get_task",
    "keep_freed_memory",
    "list_pixel_caches",
    "load_image_dataset",
    "load_detection_dataset",
    "load_subset",
    "load_surrogate",
    "prune_model",
    "push_run",
    "read_labels",
    "save_surrogate",
    "score_pool",
    "synthetic_detection_pool",
    "task_for_model",
    "write_query_batch",
]
