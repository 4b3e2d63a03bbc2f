"""Scoring the pool (streamed, sharded across processes) and the strategies that turn scores into a query."""

import lazy_loader

# Strategies register themselves (`@register_strategy`) when their module runs: the registering modules load with
# the package, so `STRATEGIES` and `get_strategy` know every strategy whatever is imported first.
from . import cluster_margin, diversity, dropquery, strategies

# Each name is imported from its module on first use: importing the package costs nothing.
__getattr__, __dir__, __all__ = lazy_loader.attach(
    __name__,
    submod_attrs={
        "cluster_margin": ["CLUSTER_MARGIN_CANDIDATES", "ClusterMarginStrategy"],
        "dropquery": ["DROPQUERY_DROPOUT", "DROPQUERY_PASSES", "DropQueryStrategy", "dropout_disagreement"],
        "diversity": ["BadgeStrategy", "KCenterGreedyStrategy"],
        "gradient_embedding": ["HeadCalls", "last_layer_gradients"],
        "proxy": ["LinearProbe", "normalize_features", "train_linear_probe"],
        "scoring": ["PoolScores", "active_dropout_layers", "score_pool"],
        "shards": ["ShardGroup", "gather_variable_rows"],
        "strategies": [
            "STRATEGIES",
            "BaldStrategy",
            "EntropyStrategy",
            "LeastConfidenceStrategy",
            "MarginStrategy",
            "RandomStrategy",
            "Selection",
            "SelectionStrategy",
            "UncertaintyStrategy",
            "get_strategy",
            "register_strategy",
            "top_n_by_score",
        ],
        "typiclust": ["typicality", "typiclust_select"],
    },
)
