"""The fused model's card: facts collected from a finished run, rendered with the packaged template.

As in setfit, the card is a Jinja template (`templates/model_card.md`) filled from the run's facts
(`state.json`: recipe, config, costs, per-round records); optional sections disappear when there is
nothing to say. The loop writes the card into `fused/README.md` at the end of every run; `push` reuses it
with the Hub repo ids filled in.
"""

from __future__ import annotations

import json
import os
import platform
import re
from dataclasses import fields
from importlib import resources
from pathlib import Path

from .arguments import DataArguments
from .constants import FASHION_MNIST, FASHION_MNIST_HUB_ID, FUSED_DIR, STATE_NAME
from .report import build_metrics

MODEL_CARD_TEMPLATE = "model_card.md"
MODEL_CARD_NAME = "README.md"
DEFAULT_ENDPOINT = "https://huggingface.co"
# Keys that may hold credentials: never written to a card, a repo or the run directory.
SECRET_KEY = re.compile(r"token|password|secret|api_key", re.IGNORECASE)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
TAGS = ["prunefuse", "active-learning", "data-selection", "pruning", "image-classification"]
CITATION = """@misc{kousar2026prunefuse,
  title         = {PruneFuse: Efficient Data Selection via Weight Pruning and Network Fusion},
  author        = {Kousar, Humaira and Bhatti, Hasnain Irshad and Moon, Jaekyun},
  year          = {2026},
  eprint        = {2603.26138},
  archivePrefix = {arXiv},
  primaryClass  = {cs.LG}
}"""


def redact_secrets(value):
    """A copy of `value` (nested dicts and lists) without the keys that may hold credentials (`*token*`, ...)."""
    if isinstance(value, dict):
        return {k: redact_secrets(v) for k, v in value.items() if not SECRET_KEY.search(str(k))}
    if isinstance(value, (list, tuple)):
        return [redact_secrets(v) for v in value]
    return value


def run_data_arguments(recipe: dict | None) -> dict | None:
    """The run's data arguments (recipe values over `DataArguments` defaults), or `None` without a recipe."""
    if recipe is None:
        return None
    return {f.name: recipe.get(f.name, f.default) for f in fields(DataArguments)}


def is_hub_id(name: str | None) -> bool:
    """Whether `name` reads as a Hub repo id rather than a local path."""
    if not name or name.startswith((".", "/", "~")) or os.path.exists(name):
        return False
    return bool(_HUB_ID.match(name))


def collect_model_card_facts(
    run_dir: str | os.PathLike,
    *,
    progress: dict | None = None,
    model_repo_id: str | None = None,
    subset_repo_id: str | None = None,
    surrogate_repo_id: str | None = None,
    endpoint: str = DEFAULT_ENDPOINT,
) -> dict:
    """
    Everything the model card says, as plain JSON-serialisable values (numbers already formatted).

    Args:
        run_dir (`str` or `os.PathLike`): A finished run directory (`state.json` and `fused/`).
        progress (`dict`, *optional*): The run's state; read from `state.json` when not given.
        model_repo_id, subset_repo_id, surrogate_repo_id (`str`, *optional*): Hub repos the card links to.
        endpoint (`str`, *optional*): Hub address used in links.

    Returns:
        `dict`: the template's variables (see `templates/model_card.md`).
    """
    run_dir = Path(run_dir)
    if progress is None:
        with open(run_dir / STATE_NAME) as f:
            progress = json.load(f)
    metrics = build_metrics(progress)
    with open(run_dir / FUSED_DIR / "config.json") as f:
        model_config = json.load(f)
    config, costs, final = metrics["config"], metrics["costs"], metrics["final"]
    recipe = redact_secrets(progress.get("recipe"))
    data = run_data_arguments(recipe)
    pool_size = progress.get("pool", {}).get("num_examples")
    labeled = final.get("labeled")

    model_source = None if recipe is None or recipe.get("model_config") else recipe.get("model_name_or_path")
    base_model = model_source if is_hub_id(model_source) else None
    dataset_hub_id, dataset_name, dataset_details, eval_description = _dataset_facts(data)

    dense, surrogate = costs.get("dense", {}), costs.get("surrogate", {})
    selection = metrics["selection"]
    initial = config.get("initial_labeled_size")
    query_sizes = _query_sizes(config)
    labels = [
        label for _, label in sorted((model_config.get("id2label") or {}).items(), key=lambda kv: int(kv[0]))
    ]
    if all(re.fullmatch(r"LABEL_\d+", label) for label in labels):
        labels = []
    name = (model_repo_id or "").split("/")[-1] or f"PruneFuse {model_config.get('model_type', 'model')}"

    facts = {
        "title": name,
        "model_repo_id": model_repo_id,
        "architecture": (model_config.get("architectures") or ["AutoModelForImageClassification"])[0],
        "model_type": model_config.get("model_type"),
        "num_labels": len(model_config.get("id2label") or {}) or None,
        "labels": ", ".join(labels[:20]) + (", ..." if len(labels) > 20 else "") if labels else None,
        "seed": config.get("seed"),
        "base_model": base_model,
        "base_model_url": f"{endpoint}/{base_model}" if base_model else None,
        "base_model_path": model_source if model_source and not base_model else None,
        "dataset_hub_id": dataset_hub_id,
        "dataset_name": dataset_name,
        "dataset_label": "Fashion-MNIST"
        if data and data["dataset_name"] == FASHION_MNIST
        else dataset_hub_id,
        "dataset_details": dataset_details,
        "eval_description": eval_description,
        "subset_repo_id": subset_repo_id,
        "subset_repo_url": f"{endpoint}/datasets/{subset_repo_id}" if subset_repo_id else None,
        "surrogate_repo_id": surrogate_repo_id,
        "surrogate_repo_url": f"{endpoint}/{surrogate_repo_id}" if surrogate_repo_id else None,
        "pool_size": _count(pool_size),
        "labeled": _count(labeled),
        "labeled_fraction": f"{labeled / pool_size:.1%}" if labeled and pool_size else None,
        "pruning_ratio": config.get("pruning_ratio"),
        "importance": config.get("importance"),
        "dense_params": _human(dense.get("params")),
        "surrogate_params": _human(surrogate.get("params")),
        "params_ratio": _ratio(surrogate.get("params"), dense.get("params")),
        "dense_macs": _human(dense.get("macs")),
        "surrogate_macs": _human(surrogate.get("macs")),
        "macs_ratio": _ratio(surrogate.get("macs"), dense.get("macs")),
        "image_size": "×".join(map(str, costs["image_size"])) + " pixels"
        if costs.get("image_size")
        else None,
        "strategy": config.get("strategy"),
        "num_rounds": config.get("num_rounds"),
        "round_sizes": _round_sizes(initial, query_sizes),
        "surrogate_init": config.get("surrogate_init"),
        "sync_every": config.get("sync_every") or None,
        "fusion": _fusion(config),
        "distillation": _distillation(config),
        "rounds": _rounds(metrics["rounds"]),
        "final_accuracy": _accuracy(final.get("accuracy")),
        "final_accuracy_at_start": _accuracy(final.get("accuracy_at_start")),
        "final_epochs": _number(final.get("epochs")),
        "selection_seconds": f"{selection['seconds']:.1f} s" if selection.get("dense_flops") else None,
        "selection_flops": _human(selection.get("flops")) if selection.get("dense_flops") else None,
        "selection_dense_flops": _human(selection.get("dense_flops")),
        "selection_flops_ratio": _ratio(selection.get("flops"), selection.get("dense_flops")),
        "quickstart": _quickstart(model_repo_id, model_config, costs, run_dir),
        "recipe": _yaml(recipe) if recipe else None,
        "versions": framework_versions(),
        "citation": CITATION,
    }
    return facts


def card_data(facts: dict):
    """The card's YAML front matter as a `huggingface_hub.ModelCardData`."""
    from huggingface_hub import EvalResult, ModelCardData

    datasets = [d for d in (facts["dataset_hub_id"], facts["subset_repo_id"]) if d]
    eval_results = None
    if facts["final_accuracy"] and facts["dataset_hub_id"]:
        eval_results = [
            EvalResult(
                task_type="image-classification",
                dataset_type=facts["dataset_hub_id"],
                dataset_name=facts["dataset_label"],
                metric_type="accuracy",
                metric_value=float(facts["final_accuracy"]),
            )
        ]
    return ModelCardData(
        library_name="transformers",
        pipeline_tag="image-classification",
        base_model=facts["base_model"],
        datasets=datasets or None,
        tags=list(TAGS),
        model_name=facts["title"] if eval_results else None,
        eval_results=eval_results,
    )


def render_model_card(facts: dict) -> str:
    """Render the packaged template with `facts` (from [`collect_model_card_facts`]).

    Returns:
        `str`: the card (YAML front matter + markdown), ending with one newline.
    """
    import jinja2

    template = _template(MODEL_CARD_TEMPLATE)
    environment = jinja2.Environment(
        trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True, undefined=jinja2.StrictUndefined
    )
    text = environment.from_string(template).render(card_data=card_data(facts).to_yaml(), **facts)
    # Sections that vanished leave runs of blank lines behind.
    return re.sub(r"\n{3,}", "\n\n", text).strip() + "\n"


def write_model_card(run_dir: str | os.PathLike, *, progress: dict | None = None, **repo_ids) -> Path:
    """Write the fused model's card to `RUN_DIR/fused/README.md` (atomically); returns its path.

    Args:
        run_dir: The run directory.
        progress: The run's state (read from `state.json` when not given).
        repo_ids: `model_repo_id`, `subset_repo_id`, `surrogate_repo_id`, `endpoint` for the links.
    """
    from .rundir import RunDirectory

    text = render_model_card(collect_model_card_facts(run_dir, progress=progress, **repo_ids))
    return RunDirectory(run_dir).write_text(Path(FUSED_DIR) / MODEL_CARD_NAME, text)


def framework_versions() -> dict[str, str]:
    import datasets
    import huggingface_hub
    import torch
    import transformers

    from . import __version__

    return {
        "prunefuse-hf": __version__,
        "Transformers": transformers.__version__,
        "PyTorch": torch.__version__,
        "Datasets": datasets.__version__,
        "huggingface_hub": huggingface_hub.__version__,
        "Python": platform.python_version(),
    }


def _template(name: str) -> str:
    return resources.files(__package__).joinpath("templates", name).read_text()


# ----- formatting -----


def _dataset_facts(data: dict | None) -> tuple[str | None, str | None, str | None, str]:
    if data is None:
        return None, None, None, "the run's evaluation set"
    name = data["dataset_name"]
    hub_id = FASHION_MNIST_HUB_ID if name == FASHION_MNIST else name if is_hub_id(name) else None
    shown = f"[{hub_id}]({DEFAULT_ENDPOINT}/datasets/{hub_id})" if hub_id else f"`{name}`"
    if name == FASHION_MNIST:
        shown = f"Fashion-MNIST (built-in `{FASHION_MNIST}`, the same data as {shown})"
    details = [f"split `{data['train_split']}`"]
    if data.get("dataset_config_name"):
        details.append(f"config `{data['dataset_config_name']}`")
    if data.get("dataset_revision"):
        details.append(f"revision `{data['dataset_revision']}`")
    if data.get("max_pool_size"):
        details.append(f"a seeded random pool of {_count(data['max_pool_size'])} examples")
    evaluation = "the run's evaluation set"
    if data.get("eval_split"):
        evaluation = f"the `{data['eval_split']}` split"
        if data.get("max_eval_samples"):
            evaluation += f" ({_count(data['max_eval_samples'])} seeded random examples)"
    return hub_id, shown, ", ".join(details), evaluation


def _query_sizes(config: dict) -> list[int]:
    sizes, rounds = config.get("query_size") or [], config.get("num_rounds") or 0
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
        return "none: a fresh dense model was trained on the selected data (SVP-style)"
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


def _rounds(records: list[dict]) -> list[dict] | None:
    rows = []
    for record in records:
        surrogate, dense, selection = (
            record.get("surrogate") or {},
            record.get("dense") or {},
            record.get("selection"),
        )
        rows.append(
            {
                "round": record["round"],
                "labeled": _count((surrogate or dense).get("labeled")),
                "surrogate_accuracy": _accuracy(surrogate.get("accuracy")) or "–",
                "dense_accuracy": _accuracy(dense.get("accuracy")) or "–",
                "selected": _count(selection["query_size"]) if selection else "–",
            }
        )
    has_accuracy = any(r["surrogate_accuracy"] != "–" or r["dense_accuracy"] != "–" for r in rows)
    return rows if has_accuracy else None


def _quickstart(repo_id: str | None, model_config: dict, costs: dict, run_dir: Path) -> str:
    source = repo_id or "path/to/run/fused"
    if (run_dir / FUSED_DIR / "preprocessor_config.json").is_file():
        return (
            "from transformers import pipeline\n\n"
            f'classifier = pipeline("image-classification", model="{source}")\n'
            'classifier("image.png")'
        )
    channels = model_config.get("num_channels", 3)
    height, width = costs.get("image_size") or [224, 224]
    mode, described = ("L", "grayscale") if channels == 1 else ("RGB", "RGB")
    return (
        "import numpy as np\nimport torch\nfrom PIL import Image\n"
        "from transformers import AutoModelForImageClassification\n\n"
        f'model = AutoModelForImageClassification.from_pretrained("{source}").eval()\n'
        f"# The run fed {described} images of {height}×{width} pixels, scaled to [-1, 1].\n"
        f'image = Image.open("image.png").convert("{mode}").resize(({width}, {height}))\n'
        "pixels = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255)\n"
        + (
            f"pixel_values = ((pixels - 0.5) / 0.5).reshape(1, 1, {height}, {width})\n"
            if channels == 1
            else "pixel_values = ((pixels - 0.5) / 0.5).permute(2, 0, 1).unsqueeze(0)\n"
        )  # fmt: skip
        + "with torch.no_grad():\n"
        "    predicted = model(pixel_values=pixel_values).logits.argmax(-1).item()\n"
        "print(model.config.id2label[predicted])"
    )


def _yaml(value) -> str:
    import yaml

    return yaml.safe_dump(
        value, sort_keys=False, allow_unicode=True, default_flow_style=None, width=100
    ).strip()


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
