"""The surgery: the family registry, loading image classifiers, pruning at initialization into a surrogate with
its `PruningPlan`, fusing the trained surrogate back into the dense model, and the FLOPs of both."""
