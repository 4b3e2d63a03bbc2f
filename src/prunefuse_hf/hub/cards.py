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
import os
import re
from dataclasses import fields
from pathlib import Path

from ..constants import (
    FUSED_DIR,
    MODEL_CARD_NAME,
    PRUNING_PLAN_NAME,
    SELECTION_NAME,
    SUBSET_EXAMPLES_DIR,
    SUBSET_METADATA_NAME,
)
from ..utils.run_directory import RunDirectory
from . import card_text
from .card_data import (
    ModelCardFacts,
    SubsetCardFacts,
    SurrogateCardFacts,
)
from .card_facts import collect_model_card_facts

MODEL_CARD_TEMPLATE = "model_card.md"
SURROGATE_CARD_TEMPLATE = "surrogate_card.md"
DATASET_CARD_TEMPLATE = "dataset_card.md"
PAPER_URL = "https://arxiv.org/abs/2603.26138"
TAGS = ["prunefuse", "active-learning", "data-selection", "pruning"]


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
    if facts.final_metric and facts.dataset_hub_id:
        eval_results = [
            EvalResult(
                task_type=facts.task,
                dataset_type=facts.dataset_hub_id,
                dataset_name=facts.dataset_label,
                metric_type=facts.metric,
                metric_name=facts.metric_name,
                metric_value=float(facts.final_metric),
            )
        ]
    datasets = [d for d in (facts.dataset_hub_id, facts.subset_repo_id) if d]
    card_data = ModelCardData(
        library_name="transformers",
        pipeline_tag=facts.task,
        base_model=facts.base_model,
        datasets=datasets or None,
        tags=[*TAGS, facts.task],
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

    card_data = ModelCardData(library_name="transformers", pipeline_tag=facts.task,
                              tags=[*TAGS, facts.task, "pruned", "surrogate"], base_model=facts.base_model)  # fmt: skip
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
        task_categories=[facts.task],
        tags=list(TAGS),
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

    directory = Path(directory) if directory is not None else Path(run_dir) / FUSED_DIR
    facts = collect_model_card_facts(run_dir, progress=progress, checkpoint_dir=directory, **repo_ids)
    return RunDirectory(directory).write_text(MODEL_CARD_NAME, render_model_card(facts))


def _render(template_name: str, card_data, facts) -> str:
    values = {f.name: getattr(facts, f.name) for f in fields(facts)}
    text = template_environment().get_template(template_name).render(
        card_data=card_data.to_yaml(), paper_url=PAPER_URL, metadata_name=SUBSET_METADATA_NAME,
        selection_name=SELECTION_NAME, examples_dir=SUBSET_EXAMPLES_DIR, plan_name=PRUNING_PLAN_NAME,
        task_names=card_text.model_kind(values.get("task", "image-classification")), **values,
    )  # fmt: skip
    # Sections that vanished leave runs of blank lines behind.
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"
