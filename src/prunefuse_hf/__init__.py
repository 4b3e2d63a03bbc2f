"""PruneFuse data selection for Hugging Face vision models.

The front door is [`PruneFuseTrainer`] with its [`PruneFuseConfig`]; every piece also works alone (pruning,
fusion, the pool, scoring, strategies, the subset on the Hub).

Names are imported from their modules on first use (as `transformers` does), so `import prunefuse_hf` and the
commands that do not train stay fast.
"""

import lazy_loader

from .constants import VERSION as __version__  # noqa: F401

__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "annotation.backend": ["serve_label_studio_backend"],
        "annotation.labels": ["LabelBatch"],
        "annotation.loop": ["label_studio_loop"],
        "annotation.queries": ["write_query_batch"],
        "annotation.readers": ["read_labels"],
        "annotation.store": ["LabelStore"],
        "data.image_processor": ["build_image_processor"],
        "data.loading": ["load_image_dataset"],
        "data.pixel_cache": ["clear_pixel_caches", "list_pixel_caches"],
        "data.pool": ["DataPool"],
        "data.preprocessing": ["ImagePreprocessor"],
        "hub.pipeline_ready": ["export_rgb_checkpoint"],
        "hub.push": ["push_run"],
        "hub.subset": ["load_subset"],
        "pruning.fusion": ["fuse_into_dense"],
        "pruning.plan": ["PruningPlan"],
        "pruning.prune": ["prune_model"],
        "pruning.replay": ["load_surrogate", "save_surrogate"],
        "selection.scoring": ["score_pool"],
        "selection.strategies": ["get_strategy"],
        "tasks": ["Task", "get_task", "load_detection_dataset", "synthetic_detection_pool", "task_for_model"],
        "trainer.distillation_trainer": ["DistillationTrainer", "compute_accuracy"],
        "trainer.prunefuse_config": ["PruneFuseConfig"],
        "trainer.prunefuse_trainer": ["PruneFuseTrainer"],
        "trainer.run_progress": ["RunProgressCallback"],
        "utils.memory": ["keep_freed_memory"],
    },
)
