"""The facts a card shows, typed (as setfit's card data), and how each is written as card text: numbers, YAML
values, the summary, rounds, costs, class counts and the quickstart."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from ..constants import (
    FASHION_MNIST,
    FASHION_MNIST_HUB_ID,
    SELECTION_LABEL_NAME,
)
from ..utils.hub_ids import is_hub_id

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
        pruning_path (`str`, *optional*): `"replay"` when the surrogate takes the general path (its config is the
            dense one; `prunefuse_hf.load_surrogate` rebuilds it), otherwise a narrowed-config checkpoint.
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
    pruning_path: str | None = None
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


def _listing(labels: list[str]) -> str | None:
    if not labels:
        return None
    shown = ", ".join(labels[:_MAX_LISTED_LABELS])
    return shown + (", ..." if len(labels) > _MAX_LISTED_LABELS else "")


def _yaml_scalar(value) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


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
