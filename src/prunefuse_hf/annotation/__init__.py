"""Labels in and out: query batches for annotators, label files and annotation-tool exports read back, the
run's label store, a run's Label Studio project, and the simulated oracle."""

from .label_studio import label_studio_config, label_studio_prediction
from .label_studio_api import LabelStudioClient, pull_export, push_query
from .labels import ClassLookup, LabelBatch, LabelError, check_class_names, parse_pool_index
from .oracle import oracle_labels
from .queries import open_query, query_directory, read_query_indices, write_query_batch
from .readers import read_labels
from .rounds import annotation_summary, skipped_indices
from .store import AddResult, LabelStore, ingest_labels, query_is_complete
