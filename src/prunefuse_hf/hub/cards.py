"""The three cards of a run: the fused model's, the surrogate's and the selected subset's.

As in setfit, each card is a Jinja template (`templates/model_card.md`, `surrogate_card.md`, `dataset_card.md`)
rendered from typed card data ([`ModelCardFacts`], [`SurrogateCardFacts`], [`SubsetCardFacts`]) that a
`collect_*` function gathers from a run directory; all three share one template environment. A fact that is
`None` makes the sentence or section stating it disappear, so a card never prints "None".

The trainer writes the model card into every fused checkpoint it saves ([`write_model_card`]); a push renders
the cards again with the Hub repo ids and the endpoint in use, so every link points where the repos are.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import re
from dataclasses import dataclass, fields
from pathlib import Path

from ..constants import (
    FASHION_MNIST,
    FASHION_MNIST_HUB_ID,
    FUSED_DIR,
    IMAGE_PATH,
    METHOD_DESCRIPTIONS,
    MODEL_CARD_NAME,
    POOL_INDEX,
    PRUNING_PLAN_NAME,
    SELECTION_LABEL_NAME,
    SELECTION_NAME,
    SOURCE_INDEX,
    SUBSET_EXAMPLES_DIR,
    SUBSET_METADATA_NAME,
    SURROGATE_INIT_DIR,
    VERSION,
)
from ..trainer.report import build_metrics
from ..utils.hub_ids import is_hub_id
from ..utils.run_directory import RunDirectory, redact_secrets, run_data_arguments

MODEL_CARD_TEMPLATE = "model_card.md"
SURROGATE_CARD_TEMPLATE = "surrogate_card.md"
DATASET_CARD_TEMPLATE = "dataset_card.md"
PAPER_URL = "https://arxiv.org/abs/2603.26138"
TAGS = ["prunefuse", "active-learning", "data-selection", "pruning", "image-classification"]
CITATION = """@misc{kousar2026prunefuse,
  title         = {PruneFuse: Efficient Data Selection via Weight Pruning and Network Fusion},
  author        = {Kousar, Humaira and Bhatti, Hasnain Irshad and Moon, Jaekyun},
  year          = {2026},
  eprint        = {2603.26138},
  archivePrefix = {arXiv},
  primaryClass  = {cs.LG}
}"""
_PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")
_MAX_LISTED_LABELS = 20


# ----- card data -----


@dataclass
class ModelCardFacts:
    """
    What the fused model's card says, gathered from a finished run by [`collect_model_card_facts`]. Numbers are
    already formatted for reading; `None` removes the sentence or section that would state it.

    Args:
        title (`str`): Heading (the repo's name, else the model type).
        model_repo_id (`str`, *optional*): The model repo the card is pushed to.
        model_source (`str`): What the snippets load: the repo id, else a placeholder path.
        architecture (`str`): The model class (`config.architectures[0]`).
        model_type (`str`, *optional*): `config.model_type`.
        num_channels (`int`): Input channels; 1 needs the processor snippet (`pipeline()` feeds RGB).
        num_labels (`int`, *optional*): Number of classes.
        labels (`str`, *optional*): The class names, comma separated (none when they are `LABEL_N` placeholders).
        example_label (`str`, *optional*): One class name, shown as a possible output of the snippet.
        summary (`str`): How the training data was selected and the model trained, as one clause.
        method (`str`, *optional*): The run's method (`prunefuse`, `svp`, `dense_al`, `random`).
        method_description (`str`, *optional*): What that method does.
        method_overrides (`str`, *optional*): The method's settings the run changed (`fusion: true`).
        base_model (`str`, *optional*): Hub id of the pretrained dense model (the front matter's `base_model`).
        base_model_url (`str`, *optional*): Its address on the endpoint.
        base_model_folder (`str`, *optional*): Folder name of a pretrained dense model given as a local directory.
        from_config (`bool`): Whether the dense model was built from a config with random weights.
        seed (`int`, *optional*): The run's seed.
        dataset_hub_id (`str`, *optional*): Hub id of the training data (`datasets` in the front matter).
        dataset_label (`str`, *optional*): The training data's name in the evaluation results.
        dataset (`str`, *optional*): The training data in markdown (a link, or a local folder's name).
        dataset_details (`str`, *optional*): Split, config, pinned revision and pool draw.
        eval_description (`str`): What the accuracy was measured on.
        subset_repo_id, subset_repo_url (`str`, *optional*): The selected subset's dataset repo and address.
        surrogate_repo_id, surrogate_repo_url (`str`, *optional*): The surrogate's model repo and address.
        pool_size, labeled, labeled_fraction (`str`, *optional*): Pool size, labeled examples and their share.
        pruning_ratio (`float`, *optional*): The surrogate's pruning ratio.
        importance (`str`, *optional*): Channel importance criterion.
        dense_params, surrogate_params, params_ratio (`str`, *optional*): Parameter counts and their ratio.
        dense_macs, surrogate_macs, macs_ratio (`str`, *optional*): MACs per example and their ratio.
        image_size (`str`, *optional*): Input size the costs were counted at.
        strategy (`str`, *optional*): Selection strategy.
        num_rounds (`int`, *optional*): Selection rounds.
        round_sizes (`str`, *optional*): The labeled budget round by round.
        surrogate_init (`str`, *optional*): How the surrogate restarted each round.
        sync_every (`int`, *optional*): Re-synchronization period, when the run re-synchronized.
        fusion (`str`): How the final model started.
        distillation (`str`): Whether and how the final model distilled from the surrogate.
        rounds (`list[dict[str, str]]`, *optional*): Per round: `round`, `labeled`, `surrogate_accuracy`,
            `dense_accuracy`, `selected`; `None` when no round was evaluated.
        final_accuracy, final_accuracy_at_start (`str`, *optional*): The final model's accuracy, after and before
            its final training.
        final_epochs (`str`, *optional*): Epochs of the final training.
        costs (`list[dict[str, str]]`, *optional*): The compute ledger by purpose: `purpose`, `seconds`, `flops`.
        selection_flops_ratio (`str`, *optional*): Selection FLOPs over those of dense-selector active learning.
        quickstart (`str`): Python code that classifies an image with the model.
        recipe (`str`, *optional*): The run's recipe as YAML (secrets removed, local paths shortened).
        recipe_paths_shortened (`bool`): Whether local paths of the recipe were shortened to their last part.
        versions (`dict[str, str]`): Library versions.
        citation (`str`): BibTeX of the paper.
    """

    title: str
    model_repo_id: str | None
    model_source: str
    architecture: str
    model_type: str | None
    num_channels: int
    num_labels: int | None
    labels: str | None
    example_label: str | None
    summary: str
    method: str | None
    method_description: str | None
    method_overrides: str | None
    base_model: str | None
    base_model_url: str | None
    base_model_folder: str | None
    from_config: bool
    seed: int | None
    dataset_hub_id: str | None
    dataset_label: str | None
    dataset: str | None
    dataset_details: str | None
    eval_description: str
    subset_repo_id: str | None
    subset_repo_url: str | None
    surrogate_repo_id: str | None
    surrogate_repo_url: str | None
    pool_size: str | None
    labeled: str | None
    labeled_fraction: str | None
    pruning_ratio: float | None
    importance: str | None
    dense_params: str | None
    surrogate_params: str | None
    params_ratio: str | None
    dense_macs: str | None
    surrogate_macs: str | None
    macs_ratio: str | None
    image_size: str | None
    strategy: str | None
    num_rounds: int | None
    round_sizes: str | None
    surrogate_init: str | None
    sync_every: int | None
    fusion: str
    distillation: str
    rounds: list[dict[str, str]] | None
    final_accuracy: str | None
    final_accuracy_at_start: str | None
    final_epochs: str | None
    costs: list[dict[str, str]] | None
    selection_flops_ratio: str | None
    quickstart: str
    recipe: str | None
    recipe_paths_shortened: bool
    versions: dict[str, str]
    citation: str = CITATION


@dataclass
class SurrogateCardFacts:
    """
    What the surrogate's card says, gathered by [`collect_surrogate_card_facts`].

    Args:
        title (`str`): Heading.
        repo_id (`str`): The surrogate's model repo.
        model_type (`str`, *optional*): The family.
        pruning_ratio (`float`, *optional*): Ratio it was pruned with.
        importance (`str`, *optional*): Channel importance criterion.
        surrogate_params, dense_params, params_ratio (`str`, *optional*): Parameter counts and their ratio.
        base_model (`str`, *optional*): Hub id of the pretrained dense model it was pruned from.
        model_repo_id, model_repo_url (`str`, *optional*): The fused model's repo and address.
        subset_repo_id, subset_repo_url (`str`, *optional*): The selected subset's repo and address.
        citation (`str`): BibTeX of the paper.
    """

    title: str
    repo_id: str
    model_type: str | None
    pruning_ratio: float | None
    importance: str | None
    surrogate_params: str | None
    dense_params: str | None
    params_ratio: str | None
    base_model: str | None
    model_repo_id: str | None
    model_repo_url: str | None
    subset_repo_id: str | None
    subset_repo_url: str | None
    citation: str = CITATION


@dataclass
class SubsetCardFacts:
    """
    What the selected subset's dataset card says, gathered by [`collect_subset_card_facts`].

    Args:
        title (`str`): Heading (also the card's `pretty_name`).
        repo_id (`str`): The dataset repo, or a placeholder path.
        model_repo_id, model_repo_url (`str`, *optional*): The model trained on the subset.
        source_hub_id (`str`, *optional*): Hub id of the source dataset (`source_datasets`).
        source (`str`, *optional*): The source in markdown (a link, or a local folder's name).
        source_details (`str`, *optional*): Split, config and pinned revision.
        source_revision (`str`, *optional*): The source's recorded revision.
        num_selected, pool_size (`str`): Selected examples, and the size of the pool they came from.
        pool_fingerprint (`str`): The pool's `datasets` fingerprint.
        max_pool_size (`str`, *optional*): Size of the seeded draw the pool is, when it is one.
        pool_seed (`int`, *optional*): Seed of that draw.
        strategy (`str`, *optional*): Selection strategy.
        num_rounds (`int`, *optional*): Selection rounds.
        label_column (`str`): The label column of the rebuilt rows.
        has_source_index, has_labels, has_image_path, has_examples (`bool`): Which optional columns and files
            the subset has.
        rounds (`list[dict[str, str]]`): Per round: `round`, `count`, `strategy`.
        class_counts (`list[dict[str, str]]`, *optional*): Per class of the selection: `name`, `count`, `share`.
        citation (`str`): BibTeX of the paper.
    """

    title: str
    repo_id: str
    model_repo_id: str | None
    model_repo_url: str | None
    source_hub_id: str | None
    source: str | None
    source_details: str | None
    source_revision: str | None
    num_selected: str
    pool_size: str
    pool_fingerprint: str
    max_pool_size: str | None
    pool_seed: int | None
    strategy: str | None
    num_rounds: int | None
    label_column: str
    has_source_index: bool
    has_labels: bool
    has_image_path: bool
    has_examples: bool
    rounds: list[dict[str, str]]
    class_counts: list[dict[str, str]] | None
    citation: str = CITATION


# ----- collecting the facts -----


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
    >>> from prunefuse_hf.cards import collect_model_card_facts, render_model_card
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
    dataset_hub_id, dataset, dataset_details = _training_data(data, endpoint)
    labels = _class_names(model_config)
    method = config.get("method")
    title = (model_repo_id or "").split("/")[-1] or f"PruneFuse {model_config.get('model_type', 'model')}"
    source = model_repo_id or f"path/to/{checkpoint_dir.name}"
    num_channels = int(model_config.get("num_channels") or 3)
    shareable_recipe, shortened = _shareable(recipe) if recipe else (None, False)
    return ModelCardFacts(
        title=title,
        model_repo_id=model_repo_id,
        model_source=source,
        architecture=(model_config.get("architectures") or ["AutoModelForImageClassification"])[0],
        model_type=model_config.get("model_type"),
        num_channels=num_channels,
        num_labels=len(model_config.get("id2label") or {}) or None,
        labels=_listing(labels),
        example_label=labels[0] if labels else None,
        summary=_summary(config, _count(pool_size)),
        method=method,
        method_description=METHOD_DESCRIPTIONS.get(method),
        method_overrides=_overrides(metrics["method_overrides"]),
        base_model=base_model,
        base_model_url=f"{endpoint}/{base_model}" if base_model else None,
        base_model_folder=base_model_folder,
        from_config=from_config,
        seed=config.get("seed"),
        dataset_hub_id=dataset_hub_id,
        dataset_label="Fashion-MNIST" if data and data["dataset_name"] == FASHION_MNIST else dataset_hub_id,
        dataset=dataset,
        dataset_details=dataset_details,
        eval_description=_evaluation(data, config),
        subset_repo_id=subset_repo_id,
        subset_repo_url=f"{endpoint}/datasets/{subset_repo_id}" if subset_repo_id else None,
        surrogate_repo_id=surrogate_repo_id,
        surrogate_repo_url=f"{endpoint}/{surrogate_repo_id}" if surrogate_repo_id else None,
        pool_size=_count(pool_size),
        labeled=_count(labeled),
        labeled_fraction=f"{labeled / pool_size:.1%}" if labeled and pool_size else None,
        pruning_ratio=config.get("pruning_ratio"),
        importance=config.get("importance"),
        dense_params=_human(dense.get("params")),
        surrogate_params=_human(surrogate.get("params")),
        params_ratio=_ratio(surrogate.get("params"), dense.get("params")),
        dense_macs=_human(dense.get("macs")),
        surrogate_macs=_human(surrogate.get("macs")),
        macs_ratio=_ratio(surrogate.get("macs"), dense.get("macs")),
        image_size="×".join(map(str, costs["image_size"])) + " pixels" if costs.get("image_size") else None,
        strategy=config.get("strategy"),
        num_rounds=config.get("num_rounds"),
        round_sizes=_round_sizes(config.get("initial_labeled_size"), _query_sizes(config)),
        surrogate_init=config.get("surrogate_init"),
        sync_every=config.get("sync_every") or None,
        fusion=_fusion(config),
        distillation=_distillation(config),
        rounds=_rounds(metrics["rounds"]),
        final_accuracy=_accuracy(final.get("accuracy")),
        final_accuracy_at_start=_accuracy(final.get("accuracy_at_start")),
        final_epochs=_number(final.get("epochs")),
        costs=_costs(metrics),
        selection_flops_ratio=_ratio(metrics["selection"]["flops"], metrics["selection"]["dense_flops"]),
        quickstart=_quickstart(source, num_channels, labels),
        recipe=_yaml(shareable_recipe) if shareable_recipe else None,
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
        surrogate_params=_human(surrogate.get("params")),
        dense_params=_human(dense.get("params")),
        params_ratio=_ratio(surrogate.get("params"), dense.get("params")),
        base_model=_model_origin(redact_secrets(metrics["recipe"]), run_dir)[0],
        model_repo_id=model_repo_id,
        model_repo_url=f"{endpoint}/{model_repo_id}" if model_repo_id else None,
        subset_repo_id=subset_repo_id,
        subset_repo_url=f"{endpoint}/datasets/{subset_repo_id}" if subset_repo_id else None,
    )


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
            [`~prunefuse_hf.subset.subset_metadata`]).
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
    >>> from prunefuse_hf.subset import subset_metadata
    >>> run = "runs/fashion-mnist-resnet/prunefuse"
    >>> facts = collect_subset_card_facts(subset_metadata(run), pq.read_table(f"{run}/selection.parquet"))
    >>> facts.num_selected, facts.class_counts[0]
    ('5,000', {'name': 'T-shirt/top', 'count': '497', 'share': '9.9%'})
    ```
    """
    endpoint = _endpoint(endpoint)
    source = metadata.get("source") or {}
    name = source.get("dataset_name")
    source_hub_id, shown = _dataset_link(name, endpoint) if name else (None, None)
    details = []
    if name:
        details.append(f"split `{source.get('split') or 'train'}`")
        if source.get("config_name"):
            details.append(f"config `{source['config_name']}`")
        if source.get("revision"):
            details.append(f"revision `{source['revision']}`")
    rows = selection.to_pydict()
    counts: dict[int, int] = {}
    strategies: dict[int, str | None] = {}
    for round_, strategy in zip(rows["round"], rows["strategy"]):
        counts[round_] = counts.get(round_, 0) + 1
        strategies[round_] = strategy
    pool, run = metadata["pool"], metadata.get("run", {})
    label_column = source.get("label_column") or "label"
    return SubsetCardFacts(
        title=f"PruneFuse subset of {_shown_name(name)}" if name else "PruneFuse subset",
        repo_id=repo_id or "path/to/subset",
        model_repo_id=model_repo_id,
        model_repo_url=f"{endpoint}/{model_repo_id}" if model_repo_id else None,
        source_hub_id=source_hub_id,
        source=shown,
        source_details=", ".join(details) or None,
        source_revision=source.get("revision") if name else None,
        num_selected=_count(len(rows[POOL_INDEX])),
        pool_size=_count(pool["num_examples"]),
        pool_fingerprint=pool["fingerprint"],
        max_pool_size=_count(pool.get("max_pool_size")),
        pool_seed=pool.get("seed"),
        strategy=run.get("strategy"),
        num_rounds=run.get("num_rounds"),
        label_column=label_column,
        has_source_index=SOURCE_INDEX in rows,
        has_labels="label" in rows and any(y is not None for y in rows["label"]),
        has_image_path=IMAGE_PATH in rows,
        has_examples=has_examples,
        rounds=[
            {"round": str(r), "count": _count(counts[r]), "strategy": strategies[r] or "–"}
            for r in sorted(counts)
        ],
        class_counts=_class_counts(rows, metadata.get("class_names")),
    )


# ----- rendering -----


@functools.cache
def template_environment():
    """
    The one Jinja environment of the three card templates (built once): `StrictUndefined`, so a fact missing from
    the card data is an error instead of a blank; `trim_blocks` and `lstrip_blocks`, so that `{% if %}` lines leave
    nothing behind.

    Returns:
        `jinja2.Environment`: loads `model_card.md`, `surrogate_card.md` and `dataset_card.md` from the package.

    Example:

    ```python
    >>> sorted(template_environment().list_templates())
    ['dataset_card.md', 'model_card.md', 'surrogate_card.md']
    ```
    """
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader(__package__, "templates"),
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        undefined=jinja2.StrictUndefined,
        autoescape=False,
    )


def render_model_card(facts: ModelCardFacts) -> str:
    """
    Render the fused model's card.

    Args:
        facts ([`ModelCardFacts`]): From [`collect_model_card_facts`].

    Returns:
        `str`: the card (YAML front matter, then markdown), ending with one newline.

    Example:

    ```python
    >>> card = render_model_card(collect_model_card_facts("runs/fashion-mnist-resnet/prunefuse"))
    >>> card.splitlines()[0]
    '---'
    ```
    """
    from huggingface_hub import EvalResult, ModelCardData

    eval_results = None
    if facts.final_accuracy and facts.dataset_hub_id:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=facts.dataset_hub_id,
                dataset_name=facts.dataset_label,
                metric_type="accuracy",
                metric_value=float(facts.final_accuracy),
            )
        ]
    datasets = [d for d in (facts.dataset_hub_id, facts.subset_repo_id) if d]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=facts.base_model,
        datasets=datasets or None,
        tags=list(TAGS),
        model_name=facts.title if eval_results else None,
        eval_results=eval_results,
    )
    return _render(MODEL_CARD_TEMPLATE, card_data, facts)


def render_surrogate_card(facts: SurrogateCardFacts) -> str:
    """
    Render the surrogate's card.

    Args:
        facts ([`SurrogateCardFacts`]): From [`collect_surrogate_card_facts`].

    Returns:
        `str`: the card (YAML front matter, then markdown), ending with one newline.

    Example:

    ```python
    >>> facts = collect_surrogate_card_facts("runs/fashion-mnist-resnet/prunefuse", "me/fmnist-surrogate")
    >>> "pruning_plan.json" in render_surrogate_card(facts)
    True
    ```
    """
    from huggingface_hub import ModelCardData

    card_data = ModelCardData(library_name="transformers", pipeline_tag="image-classification",
                              tags=[*TAGS, "pruned", "surrogate"], base_model=facts.base_model)  # fmt: skip
    return _render(SURROGATE_CARD_TEMPLATE, card_data, facts)


def render_dataset_card(facts: SubsetCardFacts) -> str:
    """
    Render the selected subset's dataset card; its `configs` make `datasets.load_dataset(repo)` read the
    selection (and `load_dataset(repo, "examples")` the images, when the subset has them).

    Args:
        facts ([`SubsetCardFacts`]): From [`collect_subset_card_facts`].

    Returns:
        `str`: the card (YAML front matter, then markdown), ending with one newline.

    Example:

    ```python
    >>> card = render_dataset_card(collect_subset_card_facts(metadata, selection, repo_id="me/fmnist-subset"))
    >>> "config_name: default" in card
    True
    ```
    """
    from huggingface_hub import DatasetCardData

    configs = [{"config_name": "default", "data_files": [{"split": "train", "path": SELECTION_NAME}],
                "default": True}]  # fmt: skip
    if facts.has_examples:
        configs.append({"config_name": SUBSET_EXAMPLES_DIR,
                        "data_files": [{"split": "train", "path": f"{SUBSET_EXAMPLES_DIR}/*.parquet"}]})  # fmt: skip
    card_data = DatasetCardData(
        pretty_name=facts.title,
        task_categories=["image-classification"],
        tags=[tag for tag in TAGS if tag != "image-classification"],
        source_datasets=[facts.source_hub_id] if facts.source_hub_id else None,
        configs=configs,
    )
    return _render(DATASET_CARD_TEMPLATE, card_data, facts)


def write_model_card(
    run_dir: str | os.PathLike,
    directory: str | os.PathLike | None = None,
    *,
    progress: dict | None = None,
    **repo_ids,
) -> Path:
    """
    Write the fused model's card into a checkpoint folder (atomically).

    Args:
        run_dir (`str` or `os.PathLike`): The run directory.
        directory (`str` or `os.PathLike`, *optional*): The checkpoint folder the card describes; defaults to
            `run_dir/fused`.
        progress (`dict`, *optional*): The run's state; read from `state.json` when not given.
        repo_ids: `model_repo_id`, `subset_repo_id`, `surrogate_repo_id` and `endpoint`, as in
            [`collect_model_card_facts`].

    Returns:
        `Path`: the written `README.md`.

    Raises:
        `FileNotFoundError`: the run has no `state.json` or the checkpoint no `config.json`.

    Example:

    ```python
    >>> write_model_card("runs/fashion-mnist-resnet/prunefuse", model_repo_id="me/fmnist-prunefuse")
    PosixPath('runs/fashion-mnist-resnet/prunefuse/fused/README.md')
    ```
    """
    from ..utils.run_directory import RunDirectory

    directory = Path(directory) if directory is not None else Path(run_dir) / FUSED_DIR
    facts = collect_model_card_facts(run_dir, progress=progress, checkpoint_dir=directory, **repo_ids)
    return RunDirectory(directory).write_text(MODEL_CARD_NAME, render_model_card(facts))


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


def _render(template_name: str, card_data, facts) -> str:
    values = {f.name: getattr(facts, f.name) for f in fields(facts)}
    text = template_environment().get_template(template_name).render(
        card_data=card_data.to_yaml(), paper_url=PAPER_URL, metadata_name=SUBSET_METADATA_NAME,
        selection_name=SELECTION_NAME, examples_dir=SUBSET_EXAMPLES_DIR, plan_name=PRUNING_PLAN_NAME, **values,
    )  # fmt: skip
    # Sections that vanished leave runs of blank lines behind.
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


# ----- facts from the run -----


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
    return [] if all(_PLACEHOLDER_LABEL.fullmatch(label) for label in labels) else labels


def _listing(labels: list[str]) -> str | None:
    if not labels:
        return None
    shown = ", ".join(labels[:_MAX_LISTED_LABELS])
    return shown + (", ..." if len(labels) > _MAX_LISTED_LABELS else "")


def _dataset_link(name: str, endpoint: str) -> tuple[str | None, str]:
    """(Hub id, markdown) of a dataset: a link on the endpoint, else only a local folder's name."""
    hub_id = FASHION_MNIST_HUB_ID if name == FASHION_MNIST else name if is_hub_id(name) else None
    if name == FASHION_MNIST:
        return (
            hub_id,
            f"Fashion-MNIST (built-in `{FASHION_MNIST}`, the same data as [{hub_id}]({endpoint}/datasets/{hub_id}))",
        )
    if hub_id:
        return hub_id, f"[{hub_id}]({endpoint}/datasets/{hub_id})"
    # A path of this machine means nothing where the card is read, and may say more than it should.
    return None, f"the local dataset folder `{_shown_name(name)}`"


def _shown_name(name: str) -> str:
    return name if name == FASHION_MNIST or is_hub_id(name) else Path(os.path.expanduser(name)).name or name


def _training_data(data: dict | None, endpoint: str) -> tuple[str | None, str | None, str | None]:
    if data is None:
        return None, None, None
    hub_id, shown = _dataset_link(data["dataset_name"], endpoint)
    details = [f"split `{data['train_split']}`"]
    if data.get("dataset_config_name"):
        details.append(f"config `{data['dataset_config_name']}`")
    if data.get("dataset_revision"):
        details.append(f"revision `{data['dataset_revision']}`")
    if data.get("max_pool_size"):
        details.append(f"a seeded random pool of {_count(data['max_pool_size'])} examples")
    return hub_id, shown, ", ".join(details)


def _evaluation(data: dict | None, config: dict) -> str:
    if data is not None and data.get("eval_split"):
        evaluation = f"the `{data['eval_split']}` split"
        if data.get("max_eval_samples"):
            evaluation += f" ({_count(data['max_eval_samples'])} seeded random examples)"
        return evaluation
    eval_set = config.get("eval_set") or {}
    if eval_set.get("num_rows"):
        return f"an evaluation set of {_count(eval_set['num_rows'])} examples"
    return "the run's evaluation set"


def _summary(config: dict, pool_size: str | None) -> str:
    pool = f"a pool of {pool_size} images" if pool_size else "the pool"
    pruned = (config.get("pruning_ratio") or 0) > 0
    if config.get("strategy") == "random":
        selection = f"the training examples were a seeded random draw from {pool}"
    elif pruned:
        selection = (
            f"the training examples were chosen from {pool} by a pruned copy of the model (the *surrogate*) "
            f"with the `{config.get('strategy')}` strategy"
        )
    else:
        selection = (
            f"the training examples were chosen from {pool} by the full-size model itself (dense-selector "
            f"active learning) with the `{config.get('strategy')}` strategy"
        )
    if config.get("fusion"):
        surrogate = (
            "the trained surrogate" if config.get("strategy") != "random" else "a surrogate trained on them"
        )
        training = f"{surrogate} was then fused back into the full-size model before its final training"
    else:
        training = "the full-size model was then trained on them from its initialization"
    if config.get("distill_alpha"):
        training += ", distilling from the surrogate"
    return f"{selection}; {training}"


def _overrides(overrides: dict | None) -> str | None:
    if not overrides:
        return None
    return ", ".join(f"`{name}: {_yaml_scalar(value)}`" for name, value in overrides.items())


def _yaml_scalar(value) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def _query_sizes(config: dict) -> list[int]:
    sizes, rounds = config.get("query_size") or [], config.get("num_rounds") or 0
    if isinstance(sizes, int):
        sizes = [sizes]
    return list(sizes) if len(sizes) == rounds else list(sizes) * rounds


def _round_sizes(initial, query_sizes: list[int]) -> str | None:
    if initial is None:
        return None
    totals, total = [initial], initial
    for size in query_sizes:
        total += size
        totals.append(total)
    steps = ", ".join(f"+{_count(s)}" for s in query_sizes)
    return f"{_count(initial)} random, then {steps} (labeled set: {', '.join(_count(t) for t in totals)})"


def _fusion(config: dict) -> str:
    if not config.get("fusion"):
        return "none: a fresh dense model was trained on the selected data"
    start = (
        "the dense initialization θ0"
        if config.get("fusion_init") == "dense_init"
        else "a fresh initialization"
    )
    norm = "copied" if config.get("copy_norm_stats") else "kept from the dense model"
    return f"trained surrogate written into {start} at its kept indices; normalization statistics {norm}"


def _distillation(config: dict) -> str:
    alpha = config.get("distill_alpha") or 0
    if not alpha:
        return "none (plain cross-entropy)"
    return f"from the trained surrogate, α = {alpha}, τ = {config.get('distill_temperature')}"


def _rounds(records: list[dict]) -> list[dict[str, str]] | None:
    rows = []
    for record in records:
        surrogate, dense, selection = (
            record.get("surrogate") or {},
            record.get("dense") or {},
            record.get("selection"),
        )
        rows.append(
            {
                "round": str(record["round"]),
                "labeled": _count((surrogate or dense).get("labeled")) or "–",
                "surrogate_accuracy": _accuracy(surrogate.get("accuracy")) or "–",
                "dense_accuracy": _accuracy(dense.get("accuracy")) or "–",
                "selected": _count(selection["query_size"]) if selection else "–",
            }
        )
    has_accuracy = any(r["surrogate_accuracy"] != "–" or r["dense_accuracy"] != "–" for r in rows)
    return rows if has_accuracy else None


def _costs(metrics: dict) -> list[dict[str, str]] | None:
    selection = metrics["selection"]
    rows = []
    if selection["dense_flops"]:
        rows.append({"purpose": "selection (surrogate trainings that fed a selection, and pool scoring)",
                     "seconds": f"{selection['seconds']:.1f} s",
                     "flops": f"{_human(selection['flops'])} (dense-selector active learning: "
                              f"{_human(selection['dense_flops'])})"})  # fmt: skip
    elif metrics["final_training"]["seconds"]:
        rows.append({"purpose": "selection", "seconds": "–", "flops": "none (random draw)"})
    for key, purpose in (
        ("fusion_teacher", "fusion teacher (surrogate trainings that only fed fusion or distillation)"),
        ("final_training", "final training (the fused or dense model)"),
    ):
        part = metrics.get(key) or {}
        if part.get("seconds"):
            rows.append(
                {"purpose": purpose, "seconds": f"{part['seconds']:.1f} s", "flops": _human(part["flops"])}
            )
    return rows or None


def _class_counts(rows: dict, class_names: list[str] | None) -> list[dict[str, str]] | None:
    labels = rows.get("label")
    if not labels or all(y is None for y in labels):
        return None
    names = rows.get(SELECTION_LABEL_NAME) or [None] * len(labels)
    counts: dict[int, int] = {}
    shown: dict[int, str] = {}
    for label, name in zip(labels, names):
        if label is None:
            continue
        counts[label] = counts.get(label, 0) + 1
        shown[label] = name or (
            class_names[label] if class_names and label < len(class_names) else str(label)
        )
    total = sum(counts.values())
    return [
        {"name": shown[y], "count": _count(counts[y]), "share": f"{counts[y] / total:.1%}"}
        for y in sorted(counts)
    ]


def _quickstart(source: str, num_channels: int, labels: list[str]) -> str:
    example = f'  # a class name, e.g. "{labels[0]}"' if labels else ""
    if num_channels != 1:
        return (
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("image-classification", model="{source}")\n'
            f'print(classifier("image.png")[0]["label"]){example}'
        )
    # `pipeline()` converts every image to RGB, which a one-channel model cannot take.
    return (
        "import torch\nfrom PIL import Image\n"
        "from transformers import AutoImageProcessor, AutoModelForImageClassification\n\n"
        f'processor = AutoImageProcessor.from_pretrained("{source}")\n'
        f'model = AutoModelForImageClassification.from_pretrained("{source}").eval()\n'
        "# The model reads one-channel images: convert to grayscale first (pipeline() would feed RGB).\n"
        'image = Image.open("image.png").convert("L")\n'
        "with torch.no_grad():\n"
        '    logits = model(**processor(images=image, return_tensors="pt")).logits\n'
        f"print(model.config.id2label[logits.argmax(-1).item()]){example}"
    )


def _shareable(value) -> tuple:
    """`value` with absolute local paths cut to their last part (the card is published), and whether any was."""
    if isinstance(value, dict):
        items = {k: _shareable(v) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(s for _, s in items.values())
    if isinstance(value, (list, tuple)):
        items = [_shareable(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")) and Path(value).name:
        return Path(value).name, True
    return value, False


def _yaml(value) -> str:
    import yaml

    class RecipeDumper(yaml.SafeDumper):
        """Mappings as blocks (one field a line, as recipes are written), lists inline (`[64, 128, 256]`)."""

        def represent_list(self, data):
            return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

    RecipeDumper.add_representer(list, RecipeDumper.represent_list)
    return yaml.dump(value, Dumper=RecipeDumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=100).strip()  # fmt: skip


# ----- number formatting -----


def _count(value) -> str | None:
    return None if value is None else f"{int(value):,}"


def _number(value) -> str | None:
    if value is None:
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


def _accuracy(value) -> str | None:
    return None if value is None else f"{value:.4f}"


def _ratio(part, whole) -> str | None:
    return f"{part / whole:.3f}" if part is not None and whole else None


def _human(value) -> str | None:
    if value is None:
        return None
    for threshold, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return f"{value:g}"
