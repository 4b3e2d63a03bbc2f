"""How each fact of a card is written as card text: numbers, YAML values, links, the summary, rounds, costs and
class counts. `card_facts` calls these while it collects a run's facts; what a task's models are called, their
metric, loss and quickstart snippet come from the task's `CardText` (`prunefuse_hf.tasks`)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from ..constants import (
    FASHION_MNIST,
    FASHION_MNIST_HUB_ID,
    SELECTION_LABEL_NAME,
)
from ..utils.hub_ids import is_hub_id

# transformers' names for classes without names (`id2label` left at its default).
PLACEHOLDER_LABEL = re.compile(r"LABEL_\d+")

_MAX_LISTED_LABELS = 20


def listing(labels: list[str]) -> str | None:
    if not labels:
        return None
    shown = ", ".join(labels[:_MAX_LISTED_LABELS])
    return shown + (", ..." if len(labels) > _MAX_LISTED_LABELS else "")


def _yaml_scalar(value) -> str:
    return json.dumps(value) if isinstance(value, bool) or value is None else str(value)


def shareable(value) -> tuple:
    """`value` with absolute local paths cut to their last part (the card is published), and whether any was."""
    if isinstance(value, dict):
        items = {k: shareable(v) for k, v in value.items()}
        return {k: v for k, (v, _) in items.items()}, any(s for _, s in items.values())
    if isinstance(value, (list, tuple)):
        items = [shareable(v) for v in value]
        return [v for v, _ in items], any(s for _, s in items)
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("~")) and Path(value).name:
        return Path(value).name, True
    return value, False


def yaml(value) -> str:
    import yaml

    class RecipeDumper(yaml.SafeDumper):
        """Mappings as blocks (one field a line, as recipes are written), lists inline (`[64, 128, 256]`)."""

        def represent_list(self, data):
            return self.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)

    RecipeDumper.add_representer(list, RecipeDumper.represent_list)
    return yaml.dump(value, Dumper=RecipeDumper, sort_keys=False, allow_unicode=True, default_flow_style=False,
                     width=100).strip()  # fmt: skip


def count(value) -> str | None:
    return None if value is None else f"{int(value):,}"


def number(value) -> str | None:
    if value is None:
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


def accuracy(value) -> str | None:
    return None if value is None else f"{value:.4f}"


def ratio(part, whole) -> str | None:
    return f"{part / whole:.3f}" if part is not None and whole else None


def human(value) -> str | None:
    if value is None:
        return None
    for threshold, suffix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= threshold:
            return f"{value / threshold:.2f}{suffix}"
    return f"{value:g}"


def dataset_link(name: str, endpoint: str) -> tuple[str | None, str]:
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
    return None, f"the local dataset folder `{shown_name(name)}`"


def shown_name(name: str) -> str:
    return name if name == FASHION_MNIST or is_hub_id(name) else Path(os.path.expanduser(name)).name or name


def training_data(data: dict | None, endpoint: str) -> tuple[str | None, str | None, str | None]:
    if data is None:
        return None, None, None
    hub_id, shown = dataset_link(data["dataset_name"], endpoint)
    details = [f"split `{data['train_split']}`"]
    if data.get("dataset_config_name"):
        details.append(f"config `{data['dataset_config_name']}`")
    if data.get("dataset_revision"):
        details.append(f"revision `{data['dataset_revision']}`")
    if data.get("max_pool_size"):
        details.append(f"a seeded random pool of {count(data['max_pool_size'])} examples")
    return hub_id, shown, ", ".join(details)


def evaluation(data: dict | None, config: dict) -> str:
    if data is not None and data.get("eval_split"):
        evaluation = f"the `{data['eval_split']}` split"
        if data.get("max_eval_samples"):
            evaluation += f" ({count(data['max_eval_samples'])} seeded random examples)"
        return evaluation
    eval_set = config.get("eval_set") or {}
    if eval_set.get("num_rows"):
        return f"an evaluation set of {count(eval_set['num_rows'])} examples"
    return "the run's evaluation set"


def summary(config: dict, pool_size: str | None) -> str:
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


def method_description(description: str | None, distills: bool) -> str | None:
    """A method's description for a run whose models may distill from the surrogate or not (`Task.distills`):
    detectors and segmenters train with their own loss, never with distillation from the surrogate."""
    if description is None or distills:
        return description
    return description.replace("trains with distillation", "trains with its own loss")


def user_overrides(overrides: dict | None, distills: bool) -> dict | None:
    """The method's settings the user changed: without `distill_alpha: 0`, which every run of a task that does not
    distill sets itself (see `trainer.annotated_run`)."""
    if not overrides or distills:
        return overrides
    return {name: value for name, value in overrides.items() if not (name == "distill_alpha" and not value)}


def overrides(overrides: dict | None) -> str | None:
    if not overrides:
        return None
    return ", ".join(f"`{name}: {_yaml_scalar(value)}`" for name, value in overrides.items())


def query_sizes(config: dict) -> list[int]:
    sizes, rounds = config.get("query_size") or [], config.get("num_rounds") or 0
    if isinstance(sizes, int):
        sizes = [sizes]
    return list(sizes) if len(sizes) == rounds else list(sizes) * rounds


def round_sizes(initial, query_sizes: list[int]) -> str | None:
    if initial is None:
        return None
    totals, total = [initial], initial
    for size in query_sizes:
        total += size
        totals.append(total)
    steps = ", ".join(f"+{count(s)}" for s in query_sizes)
    return f"{count(initial)} random, then {steps} (labeled set: {', '.join(count(t) for t in totals)})"


def fusion(config: dict) -> str:
    if not config.get("fusion"):
        return "none: a fresh dense model was trained on the selected data"
    start = (
        "the dense initialization θ0"
        if config.get("fusion_init") == "dense_init"
        else "a fresh initialization"
    )
    norm = "copied" if config.get("copy_norm_stats") else "kept from the dense model"
    return f"trained surrogate written into {start} at its kept indices; normalization statistics {norm}"


def distillation(config: dict, loss: str = "plain cross-entropy") -> str:
    """The final training's distillation, or `none ({loss})` (the task's `CardText.loss`)."""
    alpha = config.get("distill_alpha") or 0
    if not alpha:
        return f"none ({loss})"
    return f"from the trained surrogate, α = {alpha}, τ = {config.get('distill_temperature')}"


def rounds(records: list[dict], metric: str = "accuracy") -> list[dict[str, str]] | None:
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
                "labeled": count((surrogate or dense).get("labeled")) or "–",
                "surrogate_metric": accuracy(surrogate.get(metric)) or "–",
                "dense_metric": accuracy(dense.get(metric)) or "–",
                "selected": count(selection["query_size"]) if selection else "–",
            }
        )
    evaluated = any(r["surrogate_metric"] != "–" or r["dense_metric"] != "–" for r in rows)
    return rows if evaluated else None


def costs(metrics: dict) -> list[dict[str, str]] | None:
    selection = metrics["selection"]
    rows = []
    if selection["dense_flops"]:
        rows.append({"purpose": "selection (surrogate trainings that fed a selection, and pool scoring)",
                     "seconds": f"{selection['seconds']:.1f} s",
                     "flops": f"{human(selection['flops'])} (dense-selector active learning: "
                              f"{human(selection['dense_flops'])})"})  # fmt: skip
    elif metrics["final_training"]["seconds"]:
        rows.append({"purpose": "selection", "seconds": "–", "flops": "none (random draw)"})
    for key, purpose in (
        ("fusion_teacher", "fusion teacher (surrogate trainings that only fed fusion or distillation)"),
        ("final_training", "final training (the fused or dense model)"),
    ):
        part = metrics.get(key) or {}
        if part.get("seconds"):
            rows.append(
                {"purpose": purpose, "seconds": f"{part['seconds']:.1f} s", "flops": human(part["flops"])}
            )
    return rows or None


def class_counts(rows: dict, class_names: list[str] | None) -> list[dict[str, str]] | None:
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
        {"name": shown[y], "count": count(counts[y]), "share": f"{counts[y] / total:.1%}"}
        for y in sorted(counts)
    ]
