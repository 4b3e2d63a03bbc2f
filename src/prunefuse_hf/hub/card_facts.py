"""Collecting a card's facts from a run directory: the recipe, the per-round records, the cost ledger, the
libraries' versions and where the model and data came from."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

from ..arguments import run_data_arguments
from ..constants import (
    FASHION_MNIST,
    FUSED_DIR,
    IMAGE_PATH,
    METHOD_DESCRIPTIONS,
    POOL_INDEX,
    PRUNING_PATH_CONFIG,
    PRUNING_PLAN_NAME,
    SELECTION_LABEL,
    SOURCE_INDEX,
    SURROGATE_DIR,
    SURROGATE_INIT_DIR,
    VERSION,
)
from ..utils.hub_ids import is_hub_id
from ..utils.io import redact_secrets
from ..utils.run_directory import RunDirectory
from ..utils.run_metrics import build_metrics
from . import card_text
from .card_data import ModelCardFacts, SubsetCardFacts, SurrogateCardFacts


def collect_model_card_facts(
    run_dir: str | os.PathLike,
    *,
    progress: dict | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    model_repo_id: str | None = None,
    subset_repo_id: str | None = None,
    surrogate_repo_id: str | None = None,
    endpoint: str | None = None,
) -> ModelCardFacts:
    """
    Gather what the fused model's card says from a finished run.

    Args:
        run_dir (`str` or `os.PathLike`): A finished run directory (`state.json` and `fused/`).
        progress (`dict`, *optional*): The run's state; read from `state.json` when not given.
        checkpoint_dir (`str` or `os.PathLike`, *optional*): The checkpoint the card describes (its `config.json`
            gives the architecture and class names); defaults to `run_dir/fused`.
        model_repo_id (`str`, *optional*): The model repo the card goes to (used in the snippets).
        subset_repo_id (`str`, *optional*): The selected subset's dataset repo (linked).
        surrogate_repo_id (`str`, *optional*): The surrogate's model repo (linked).
        endpoint (`str`, *optional*): Hub address of every link; defaults to `huggingface_hub.constants.ENDPOINT`
            (which follows `HF_ENDPOINT`).

    Returns:
        [`ModelCardFacts`]: the card's data.

    Raises:
        `FileNotFoundError`: the run has no `state.json` or the checkpoint no `config.json`.

    Example:

    ```python
    >>> from prunefuse_hf.hub import collect_model_card_facts, render_model_card
    >>> facts = collect_model_card_facts("runs/fashion-mnist-resnet/prunefuse", model_repo_id="me/fmnist")
    >>> facts.base_model, facts.labeled
    (None, '5,000')
    >>> card = render_model_card(facts)
    ```
    """
    run_dir = Path(run_dir)
    checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir is not None else run_dir / FUSED_DIR
    endpoint = _endpoint(endpoint)
    progress = RunDirectory(run_dir).read_state() if progress is None else progress
    metrics = build_metrics(progress)
    model_config = json.loads((checkpoint_dir / "config.json").read_text())
    config, costs, final = metrics["config"], metrics["costs"], metrics["final"]
    recipe = redact_secrets(metrics["recipe"])
    data = run_data_arguments(recipe)
    pool_size = progress.get("pool", {}).get("num_examples") or config.get("pool_size")
    labeled = final.get("labeled")
    dense, surrogate = costs.get("dense", {}), costs.get("surrogate", {})

    base_model, base_model_folder, from_config = _model_origin(recipe, run_dir)
    dataset_hub_id, dataset, dataset_details = card_text.training_data(data, endpoint)
    labels = _class_names(model_config)
    method = config.get("method")
    title = (model_repo_id or "").split("/")[-1] or f"PruneFuse {model_config.get('model_type', 'model')}"
    source = model_repo_id or f"path/to/{checkpoint_dir.name}"
    num_channels = int(model_config.get("num_channels") or 3)
    shareable_recipe, shortened = card_text.shareable(recipe) if recipe else (None, False)
    task, metric = metrics["task"], metrics["metric"]
    kind, auto_class, _ = card_text.model_kind(task)
    return ModelCardFacts(
        title=title,
        model_repo_id=model_repo_id,
        model_source=source,
        architecture=(model_config.get("architectures") or [auto_class])[0],
        model_type=model_config.get("model_type"),
        num_channels=num_channels,
        num_labels=len(model_config.get("id2label") or {}) or None,
        labels=card_text.listing(labels),
        example_label=labels[0] if labels else None,
        summary=card_text.summary(config, card_text.count(pool_size)),
        method=method,
        method_description=card_text.method_description(METHOD_DESCRIPTIONS.get(method), task),
        method_overrides=card_text.overrides(card_text.user_overrides(metrics["method_overrides"], task)),
        base_model=base_model,
        base_model_url=f"{endpoint}/{base_model}" if base_model else None,
        base_model_folder=base_model_folder,
        from_config=from_config,
        seed=config.get("seed"),
        dataset_hub_id=dataset_hub_id,
        dataset_label="Fashion-MNIST" if data and data["dataset_name"] == FASHION_MNIST else dataset_hub_id,
        dataset=dataset,
        dataset_details=dataset_details,
        eval_description=card_text.evaluation(data, config),
        task=task,
        model_kind=kind,
        metric=metric,
        metric_name=card_text.metric_name(metric)[0],
        metric_phrase=card_text.metric_name(metric)[1],
        subset_repo_id=subset_repo_id,
        subset_repo_url=f"{endpoint}/datasets/{subset_repo_id}" if subset_repo_id else None,
        surrogate_repo_id=surrogate_repo_id,
        surrogate_repo_url=f"{endpoint}/{surrogate_repo_id}" if surrogate_repo_id else None,
        pool_size=card_text.count(pool_size),
        labeled=card_text.count(labeled),
        labeled_fraction=f"{labeled / pool_size:.1%}" if labeled and pool_size else None,
        pruning_ratio=config.get("pruning_ratio"),
        importance=config.get("importance"),
        dense_params=card_text.human(dense.get("params")),
        surrogate_params=card_text.human(surrogate.get("params")),
        params_ratio=card_text.ratio(surrogate.get("params"), dense.get("params")),
        dense_macs=card_text.human(dense.get("macs")),
        surrogate_macs=card_text.human(surrogate.get("macs")),
        macs_ratio=card_text.ratio(surrogate.get("macs"), dense.get("macs")),
        image_size="×".join(map(str, costs["image_size"])) + " pixels" if costs.get("image_size") else None,
        strategy=config.get("strategy"),
        num_rounds=config.get("num_rounds"),
        round_sizes=card_text.round_sizes(config.get("initial_labeled_size"), card_text.query_sizes(config)),
        surrogate_init=config.get("surrogate_init"),
        sync_every=config.get("sync_every") or None,
        fusion=card_text.fusion(config),
        distillation=card_text.distillation(config, task),
        rounds=card_text.rounds(metrics["rounds"], metric),
        final_metric=card_text.accuracy(final.get(metric)),
        final_metric_at_start=card_text.accuracy(final.get(f"{metric}_at_start")),
        final_epochs=card_text.number(final.get("epochs")),
        costs=card_text.costs(metrics),
        selection_flops_ratio=card_text.ratio(
            metrics["selection"]["flops"], metrics["selection"]["dense_flops"]
        ),
        quickstart=card_text.quickstart(source, num_channels, labels, task),
        recipe=card_text.yaml(shareable_recipe) if shareable_recipe else None,
        recipe_paths_shortened=shortened,
        versions=framework_versions(),
    )


def collect_surrogate_card_facts(
    run_dir: str | os.PathLike,
    repo_id: str,
    *,
    progress: dict | None = None,
    model_repo_id: str | None = None,
    subset_repo_id: str | None = None,
    endpoint: str | None = None,
) -> SurrogateCardFacts:
    """
    Gather what the surrogate's card says from a finished run.

    Args:
        run_dir (`str` or `os.PathLike`): A finished run directory.
        repo_id (`str`): The surrogate's model repo.
        progress (`dict`, *optional*): The run's state; read from `state.json` when not given.
        model_repo_id (`str`, *optional*): The fused model's repo (linked).
        subset_repo_id (`str`, *optional*): The selected subset's repo (linked).
        endpoint (`str`, *optional*): Hub address of the links; defaults to `huggingface_hub.constants.ENDPOINT`.

    Returns:
        [`SurrogateCardFacts`]: the card's data.

    Raises:
        `FileNotFoundError`: the run has no `state.json` or no `fused/config.json`.

    Example:

    ```python
    >>> facts = collect_surrogate_card_facts("runs/fashion-mnist-resnet/prunefuse", "me/fmnist-surrogate")
    >>> facts.pruning_ratio, facts.params_ratio
    (0.5, '0.250')
    ```
    """
    run_dir = Path(run_dir)
    endpoint = _endpoint(endpoint)
    progress = RunDirectory(run_dir).read_state() if progress is None else progress
    metrics = build_metrics(progress)
    config, costs = metrics["config"], metrics["costs"]
    dense, surrogate = costs.get("dense", {}), costs.get("surrogate", {})
    model_type = json.loads((run_dir / FUSED_DIR / "config.json").read_text()).get("model_type")
    return SurrogateCardFacts(
        title=f"{repo_id.split('/')[-1]} (PruneFuse surrogate)",
        repo_id=repo_id,
        model_type=model_type,
        pruning_ratio=config.get("pruning_ratio"),
        importance=config.get("importance"),
        surrogate_params=card_text.human(surrogate.get("params")),
        dense_params=card_text.human(dense.get("params")),
        params_ratio=card_text.ratio(surrogate.get("params"), dense.get("params")),
        base_model=_model_origin(redact_secrets(metrics["recipe"]), run_dir)[0],
        model_repo_id=model_repo_id,
        model_repo_url=f"{endpoint}/{model_repo_id}" if model_repo_id else None,
        subset_repo_id=subset_repo_id,
        subset_repo_url=f"{endpoint}/datasets/{subset_repo_id}" if subset_repo_id else None,
        pruning_path=_pruning_path(run_dir / SURROGATE_DIR / PRUNING_PLAN_NAME),
        task=metrics["task"],
    )


def _pruning_path(plan_path: Path) -> str | None:
    # Read from the JSON (hub/ does not import pruning/): which path the surrogate takes decides how it loads.
    if not plan_path.is_file():
        return None
    return json.loads(plan_path.read_text()).get("pruning_path", PRUNING_PATH_CONFIG)


def collect_subset_card_facts(
    metadata: dict,
    selection,
    *,
    repo_id: str | None = None,
    model_repo_id: str | None = None,
    has_examples: bool = False,
    endpoint: str | None = None,
) -> SubsetCardFacts:
    """
    Gather what the selected subset's dataset card says.

    Args:
        metadata (`dict`): The subset's record (`prunefuse_subset.json`, see
            [`~prunefuse_hf.hub.subset_metadata`]).
        selection (`pyarrow.Table`): The subset's `selection.parquet`.
        repo_id (`str`, *optional*): The dataset repo it goes to (used in the snippets).
        model_repo_id (`str`, *optional*): The model trained on it (linked).
        has_examples (`bool`, *optional*, defaults to `False`): Whether the subset carries its images (`examples/`).
        endpoint (`str`, *optional*): Hub address of the links; defaults to `huggingface_hub.constants.ENDPOINT`.

    Returns:
        [`SubsetCardFacts`]: the card's data.

    Example:

    ```python
    >>> import pyarrow.parquet as pq
    >>> from prunefuse_hf.hub import subset_metadata
    >>> run = "runs/fashion-mnist-resnet/prunefuse"
    >>> facts = collect_subset_card_facts(subset_metadata(run), pq.read_table(f"{run}/selection.parquet"))
    >>> facts.num_selected, facts.class_counts[0]
    ('5,000', {'name': 'T-shirt/top', 'count': '497', 'share': '9.9%'})
    ```
    """
    endpoint = _endpoint(endpoint)
    source = metadata.get("source") or {}
    name = source.get("dataset_name")
    source_hub_id, shown = card_text.dataset_link(name, endpoint) if name else (None, None)
    details = []
    if name:
        details.append(f"split `{source.get('split') or 'train'}`")
        if source.get("config_name"):
            details.append(f"config `{source['config_name']}`")
        if source.get("revision"):
            details.append(f"revision `{source['revision']}`")
    rows = selection.to_pydict()
    if source.get("annotation_column") == SELECTION_LABEL:
        rows.pop(SELECTION_LABEL)  # people's masks, not class ids
    counts: dict[int, int] = {}
    strategies: dict[int, str | None] = {}
    for round_, strategy in zip(rows["round"], rows["strategy"]):
        counts[round_] = counts.get(round_, 0) + 1
        strategies[round_] = strategy
    pool, run = metadata["pool"], metadata.get("run", {})
    label_column = source.get("label_column") or "label"
    return SubsetCardFacts(
        title=f"PruneFuse subset of {card_text.shown_name(name)}" if name else "PruneFuse subset",
        repo_id=repo_id or "path/to/subset",
        model_repo_id=model_repo_id,
        model_repo_url=f"{endpoint}/{model_repo_id}" if model_repo_id else None,
        source_hub_id=source_hub_id,
        source=shown,
        source_details=", ".join(details) or None,
        source_revision=source.get("revision") if name else None,
        num_selected=card_text.count(len(rows[POOL_INDEX])),
        pool_size=card_text.count(pool["num_examples"]),
        pool_fingerprint=pool["fingerprint"],
        max_pool_size=card_text.count(pool.get("max_pool_size")),
        pool_seed=pool.get("seed"),
        strategy=run.get("strategy"),
        num_rounds=run.get("num_rounds"),
        label_column=label_column,
        has_source_index=SOURCE_INDEX in rows,
        has_labels=SELECTION_LABEL in rows and any(y is not None for y in rows[SELECTION_LABEL]),
        has_image_path=IMAGE_PATH in rows,
        has_examples=has_examples,
        rounds=[
            {"round": str(r), "count": card_text.count(counts[r]), "strategy": strategies[r] or "–"}
            for r in sorted(counts)
        ],
        class_counts=card_text.class_counts(rows, metadata.get("class_names")),
        task=metadata.get("task") or "image-classification",
        annotation_column=source.get("annotation_column")
        if source.get("annotation_column") in selection.column_names
        else None,
    )


def _endpoint(endpoint: str | None) -> str:
    if endpoint is None:
        from huggingface_hub import constants

        endpoint = constants.ENDPOINT
    return endpoint.rstrip("/")


def _model_origin(recipe: dict | None, run_dir: Path) -> tuple[str | None, str | None, bool]:
    """(Hub id, local folder name, built from a config) of the dense model the run started from."""
    if recipe is not None:
        if recipe.get("model_config") or not recipe.get("model_name_or_path"):
            return None, None, True
        name = os.fspath(recipe["model_name_or_path"])
    else:
        # Started from Python: the pruning plan keeps the name the dense model was loaded under.
        plan_path = run_dir / SURROGATE_INIT_DIR / PRUNING_PLAN_NAME
        name = json.loads(plan_path.read_text()).get("dense_name_or_path") if plan_path.is_file() else None
        if not name:
            return None, None, plan_path.is_file()
        if Path(name).absolute().is_relative_to(run_dir.absolute()):
            return None, None, False  # a checkpoint of the run itself (after a re-synchronization)
    if is_hub_id(name):
        return name, None, False
    return None, Path(name).name or name, False


def _class_names(model_config: dict) -> list[str]:
    id2label = model_config.get("id2label") or {}
    labels = [label for _, label in sorted(id2label.items(), key=lambda kv: int(kv[0]))]
    return [] if all(card_text.PLACEHOLDER_LABEL.fullmatch(label) for label in labels) else labels


def framework_versions() -> dict[str, str]:
    """
    Versions of the libraries a card lists.

    Returns:
        `dict[str, str]`: library name -> version (prunefuse-hf, Transformers, PyTorch, Datasets, huggingface_hub,
        Python).

    Example:

    ```python
    >>> framework_versions()["prunefuse-hf"]
    '0.1.0'
    ```
    """
    import datasets
    import huggingface_hub
    import torch
    import transformers

    return {
        "prunefuse-hf": VERSION,
        "Transformers": transformers.__version__,
        "PyTorch": torch.__version__,
        "Datasets": datasets.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "Python": platform.python_version(),
    }
