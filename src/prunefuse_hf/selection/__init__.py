"""Scoring the pool (streamed, sharded across processes) and the strategies that turn scores into a query."""
