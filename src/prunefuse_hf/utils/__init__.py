"""Helpers every layer uses: atomic writes and the run directory's files, Hub ids, the allocator setting."""

from .hub_ids import check_hub_model, has_weights, hub_reachable, is_hub_id, validate_hub_id
from .io import atomic_write, fsync_directory, json_default, redact_secrets
from .memory import keep_freed_memory
from .run_directory import RunDirectory, RunDirectoryError, step_name
from .run_metrics import budget_accuracies, build_metrics, load_metrics
