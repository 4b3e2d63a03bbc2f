"""Labels in and out: query batches for annotators, label files and annotation-tool exports read back, the
run's label store, a run's Label Studio project, and the simulated oracle."""

import lazy_loader

# Each name is imported from its module on first use: importing the package costs nothing.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "backend": ["LabelStudioBackend", "serve_label_studio_backend"],
        "label_studio": ["AnswersDisagree", "label_studio_config", "label_studio_prediction"],
        "label_studio_api": ["LabelStudioClient", "LabelStudioUnreachable", "pull_export", "push_query"],
        "labels": ["ClassLookup", "LabelBatch", "LabelError", "check_class_names", "parse_pool_index"],
        "loop": ["RoundProgress", "label_studio_loop"],
        "oracle": ["oracle_labels"],
        "queries": ["open_query", "query_directory", "read_query_indices", "write_query_batch"],
        "readers": ["read_labels"],
        "rounds": ["annotation_summary", "skipped_indices"],
        "store": ["AddResult", "LabelStore", "ingest_labels", "query_is_complete"],
    },
)
