"""Helpers every layer uses: atomic writes and the run directory's files, Hub ids, the allocator setting."""

import lazy_loader

# Each name is imported from its module on first use: importing the package costs nothing.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "hub_ids": ["check_hub_model", "has_weights", "hub_reachable", "is_hub_id", "validate_hub_id"],
        "io": ["atomic_write", "fsync_directory", "json_default", "redact_secrets"],
        "memory": ["keep_freed_memory"],
        "run_directory": ["RunDirectory", "RunDirectoryError", "step_name"],
        "run_metrics": ["budget_accuracies", "build_metrics", "load_metrics", "record_metric"],
    },
)
