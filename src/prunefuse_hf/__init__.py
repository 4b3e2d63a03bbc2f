"""PruneFuse data selection for Hugging Face vision models."""

from .fusion import fuse_into_dense
from .plan import PruningPlan
from .pruning import prune_model
from .subset import load_subset

__version__ = "0.1.0"

__all__ = ["PruningPlan", "fuse_into_dense", "load_subset", "prune_model"]
