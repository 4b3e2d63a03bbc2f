"""`PruneFuseTrainer` (the method, one resumable step at a time) with `PruneFuseConfig`, the
`DistillationTrainer` used for the inner trainings, BatchNorm over processes and the run's report."""

import lazy_loader

# Each name is imported from its module on first use: importing the package costs nothing.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "batchnorm": ["GlobalBatchNorm", "synced_batchnorm"],
        "distillation_trainer": ["DistillationTrainer", "compute_accuracy"],
        "prunefuse_config": ["PruneFuseConfig"],
        "prunefuse_trainer": ["PruneFuseTrainer"],
        "report": ["class_balance", "comparison_table", "render_report", "write_report"],
        "run_plan": ["Step"],
        "run_progress": ["RunProgress", "RunProgressCallback", "RunTracker"],
    },
)
