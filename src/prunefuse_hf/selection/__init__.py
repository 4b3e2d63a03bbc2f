"""Scoring the pool (streamed, sharded across processes) and the strategies that turn scores into a query."""

from .diversity import BadgeStrategy, KCenterGreedyStrategy
from .proxy import LinearProbe, normalize_features, train_linear_probe
from .scoring import PoolScores, active_dropout_layers, score_pool
from .shards import ShardGroup, gather_variable_rows
from .strategies import (
    STRATEGIES,
    BaldStrategy,
    EntropyStrategy,
    LeastConfidenceStrategy,
    MarginStrategy,
    RandomStrategy,
    Selection,
    SelectionStrategy,
    UncertaintyStrategy,
    get_strategy,
    register_strategy,
    top_n_by_score,
)
from .typiclust import typicality, typiclust_select
