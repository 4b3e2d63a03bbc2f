"""PruneFuse data selection for Hugging Face vision models."""

from .fusion import fuse_into_dense
from .plan import PruningPlan
from .pruning import prune_model

__version__ = "0.1.0"

__all__ = ["PruningPlan", "fuse_into_dense", "prune_model"]
