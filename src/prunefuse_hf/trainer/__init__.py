"""`PruneFuseTrainer` (the method, one resumable step at a time) with `PruneFuseConfig`, the
`DistillationTrainer` used for the inner trainings, BatchNorm over processes and the run's report."""

from .batchnorm import GlobalBatchNorm, synced_batchnorm
from .distillation_trainer import DistillationTrainer, compute_accuracy
from .prunefuse_config import PruneFuseConfig
from .prunefuse_trainer import PruneFuseTrainer, Step
from .report import class_balance, comparison_table, render_report, write_report
from .run_progress import RunProgress, RunProgressCallback, RunTracker
