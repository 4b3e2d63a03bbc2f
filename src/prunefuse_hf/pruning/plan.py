"""`PruningPlan`: which entries of the dense model each surrogate tensor came from.

The plan is what makes fusion exact: for every parameter and buffer it lists, per pruned dimension,
the dense indices that were kept. Channel groups that Torch-Pruning couples (a conv's output, the
BatchNorm after it, the next conv's input, a residual path) share one list, so the JSON stores each
distinct list once and tensors refer to it by number.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field

import torch

from ..constants import PRUNING_PATH_CONFIG, PRUNING_PLAN_NAME
from ..utils.io import atomic_write

# Version 2 adds the general path (`pruning_path`, `pruning_history`, `trace_inputs`, `attention_outputs_dense`);
# a version-1 plan is a config-path plan and still reads.
PLAN_FORMAT_VERSION = 2
READABLE_PLAN_VERSIONS = (1, 2)


# Config fields that do not describe the architecture: transformers internals (`_name_or_path`, ...), the version
# and dtype a checkpoint was saved with, the class that last saved it, the class names (a run replaces them; their
# count stays as `num_labels`), what the first training step sets (`problem_type`) and output switches.
_NOT_ARCHITECTURE = (
    "transformers_version",
    "torch_dtype",
    "dtype",
    "architectures",
    "id2label",
    "label2id",
    "problem_type",
    "output_hidden_states",
    "output_attentions",
    "return_dict",
    # LeViT: derived from key_dim and hidden_sizes, and its modeling code appends to it each time a model is built.
    "down_ops",
)


def architecture_fields(config) -> dict:
    """The fields of a model config that define its architecture, as a plain dict.

    Everything `config.to_dict()` holds except where and how it was saved, the class names and run-time
    switches (see `config_hash`); the number of classes is kept as `num_labels`.

    Args:
        config ([`~transformers.PretrainedConfig`]): A model config.

    Returns:
        `dict`: JSON-serializable fields.
    """
    values = _architecture_only(config.to_dict())
    values["num_labels"] = config.num_labels
    return values


def _architecture_only(values: dict) -> dict:
    values = {
        key: value
        for key, value in values.items()
        if not key.startswith("_") and key not in _NOT_ARCHITECTURE
    }
    # Sub-configs (CLIP's and SigLIP's vision and text towers) carry the same run-time fields (dtype, names).
    return {
        key: _architecture_only(value) if isinstance(value, dict) and "model_type" in value else value
        for key, value in values.items()
    }


def config_hash(config) -> str:
    """A stable hash of a model config's architecture: it identifies the architecture, not the weights.

    Left out: the checkpoint path, the transformers version and dtype, `architectures`, the class names
    (`id2label`/`label2id`; their count is kept as `num_labels`), `problem_type` (set by the first training
    step) and output switches. So a config hashes the same before and after `save_pretrained`/`from_pretrained`,
    after training and after a run gives it the dataset's class names; two checkpoints of the same architecture
    with other weights (another seed, another fine-tune) hash the same too.

    Args:
        config ([`~transformers.PretrainedConfig`]): A model config.

    Returns:
        `str`: 16 hexadecimal characters (a SHA-256 prefix).

    Example:

    ```python
    >>> from transformers import ResNetConfig
    >>> config_hash(ResNetConfig(id2label={0: "cat", 1: "dog"})) == config_hash(ResNetConfig(num_labels=2))
    True
    ```
    """
    return hashlib.sha256(
        json.dumps(architecture_fields(config), sort_keys=True, default=str).encode()
    ).hexdigest()[:16]


@dataclass
class PruningPlan:
    """
    Kept indices of every pruned dimension of every tensor of a dense model: what makes fusion exact. Saved as JSON
    (`pruning_plan.json`) next to the surrogate checkpoint, never as a pickle; coupled tensors share one list.

    Args:
        pruning_ratio (`float`): The uniform ratio the surrogate was pruned with.
        importance (`str`): The importance criterion (`"l2"`: group L2 magnitude).
        model_type (`str`): The dense config's `model_type` (e.g. `"resnet"`).
        dense_config (`dict`): The dense model's config (enough to rebuild its architecture).
        surrogate_config (`dict`): The surrogate's (narrowed) config.
        dense_shapes (`dict[str, list[int]]`): Shape of every tensor in the dense `state_dict`.
        kept_indices (`dict[str, dict[int, list[int]]]`): `tensor name -> {dim: kept dense indices}` for the pruned
            dimensions only.
        dense_name_or_path (`str`, *optional*): The dense model's Hub id or path when it came from one.
        pruning_path (`str`, *optional*, defaults to `"config"`): `"config"`: the surrogate has a narrowed config
            and reloads with `AutoModelForImageClassification`; `"replay"` (the general path): its config is the
            dense one and `load_surrogate` rebuilds it by replaying `pruning_history`.
        pruning_history (`list`, *optional*): Torch-Pruning's history, `[root module, output side, indices]` per
            group (general path only).
        trace_inputs (`dict`, *optional*): Shapes of the inputs the replay traces with (general path only).
        attention_outputs_dense (`bool`, *optional*): The general path's fallback kept attention outputs dense.
        dense_config_hash (`str`, *optional*): `config_hash` of the dense config: fusion refuses a dense model of
            another architecture.
        model_class (`str`, *optional*): The dense model's class name (e.g. `"SegformerForSemanticSegmentation"`):
            which class a surrogate is rebuilt and reloaded as, where the `model_type` alone does not say it.

    Example:

    ```python
    >>> from transformers import ResNetConfig, ResNetForImageClassification
    >>> from prunefuse_hf import PruningPlan, prune_model
    >>> dense = ResNetForImageClassification(ResNetConfig(embedding_size=16, hidden_sizes=[16, 32], depths=[1, 1]))
    >>> surrogate, plan = prune_model(dense, 0.5)
    >>> plan.save_pretrained("surrogate")
    'surrogate/pruning_plan.json'
    >>> name = "resnet.embedder.embedder.convolution.weight"
    >>> dense.state_dict()[name][PruningPlan.from_pretrained("surrogate").index(name)].shape
    torch.Size([8, 3, 7, 7])
    ```
    """

    pruning_ratio: float
    importance: str
    model_type: str
    dense_config: dict
    surrogate_config: dict
    dense_shapes: dict[str, list[int]]
    kept_indices: dict[str, dict[int, list[int]]] = field(default_factory=dict)
    dense_name_or_path: str | None = None
    dense_config_hash: str | None = None
    pruning_path: str = PRUNING_PATH_CONFIG
    pruning_history: list | None = None
    trace_inputs: dict | None = None
    attention_outputs_dense: bool = False
    model_class: str | None = None

    # -- shapes and indexing -------------------------------------------------------------------

    def surrogate_shape(self, name: str) -> list[int]:
        shape = list(self.dense_shapes[name])
        for dim, kept in self.kept_indices.get(name, {}).items():
            shape[dim] = len(kept)
        return shape

    def index(self, name: str, device: torch.device | str | None = None) -> tuple:
        """Outer-product index selecting the kept entries of dense tensor `name`.

        Each pruned dimension gets an index tensor shaped to broadcast along its own axis only, so
        `dense[plan.index(name)]` has the surrogate's shape and `dense[plan.index(name)] = s` writes
        a surrogate tensor back in place.
        """
        shape = self.dense_shapes[name]
        kept = self.kept_indices.get(name, {})
        if not kept:
            return (...,) if shape else ()
        index = []
        for dim, size in enumerate(shape):
            positions = torch.as_tensor(kept[dim]) if dim in kept else torch.arange(size)
            view = [1] * len(shape)
            view[dim] = -1
            index.append(positions.to(device).view(view))
        return tuple(index)

    @property
    def num_pruned_tensors(self) -> int:
        return len(self.kept_indices)

    # -- validation ----------------------------------------------------------------------------

    def check_models(self, dense, surrogate) -> None:
        """Check that `dense` is the architecture this plan was made from and that both models have its shapes.

        Args:
            dense ([`~transformers.PreTrainedModel`]): The dense model fusion writes into.
            surrogate (`nn.Module`): The surrogate fusion reads from.

        Raises:
            `ValueError`: the dense config is another architecture (see `check_dense_identity`), or a tensor is
                missing, unexpected or has another shape (the message names the first one).
        """
        self.check_dense_identity(dense)
        self._check_state(dense.state_dict(), "dense", lambda name: list(self.dense_shapes[name]))
        self._check_state(surrogate.state_dict(), "surrogate", self.surrogate_shape)

    def dense_model_config(self):
        """The dense model's config, rebuilt from `dense_config` with the installed transformers."""
        from transformers import CONFIG_MAPPING

        return CONFIG_MAPPING[self.model_type].from_dict(dict(self.dense_config))

    def check_dense_identity(self, dense) -> None:
        """Refuse a dense model whose config hash differs from the one the plan was made from.

        The hash identifies the architecture, not the weights (see `config_hash`): another checkpoint of the same
        architecture (another seed) is accepted, and fusing into it writes the surrogate into those weights.

        Args:
            dense ([`~transformers.PreTrainedModel`]): The dense model fusion writes into.

        Raises:
            `ValueError`: naming the plan's dense model (`dense_name_or_path`, `dense_config_hash`), the given one
                (`_name_or_path`, its hash), the fields that differ, and the fix.
        """
        given = config_hash(dense.config)
        if given == self.dense_config_hash:
            return
        planned_config = self.dense_model_config()
        # A plan written under another transformers version (new config fields) or by an older prunefuse-hf
        # (other hashed fields) stores another hash for the same architecture; its recorded config decides.
        if config_hash(planned_config) == given:
            return
        planned, actual = architecture_fields(planned_config), architecture_fields(dense.config)
        differences = [
            f"{key}: plan {planned.get(key)!r}, given {actual.get(key)!r}"
            for key in sorted(set(planned) | set(actual))
            if planned.get(key) != actual.get(key)
        ]
        given_name = getattr(dense.config, "_name_or_path", None) or getattr(dense, "name_or_path", None)
        raise ValueError(
            f"The dense model is not the architecture this pruning plan was made from: the plan's dense model is "
            f"{_describe(self.dense_name_or_path)} (config hash {self.dense_config_hash or config_hash(planned_config)}), "
            f"the given one is {_describe(given_name)} (config hash {given}); they differ in "
            f"{'; '.join(differences[:4])}{' ...' if len(differences) > 4 else ''}. The hash identifies the "
            "architecture, not the weights (another seed of the same architecture is accepted). Pass the dense model "
            "the surrogate was pruned from (a PruneFuse run keeps it in RUN_DIR/dense_init, `prunefuse-hf prune` in "
            "OUTPUT_DIR/dense_init or its --model), or prune this dense model again with `prune_model` for a plan "
            "that matches it."
        )

    def _check_state(self, state: dict, role: str, expected_shape) -> None:
        hint = (
            "the plan was made for another model; pass the dense model the surrogate was pruned from "
            "and that surrogate (or re-run `prune_model`)"
        )
        missing = sorted(set(self.dense_shapes) - set(state))
        extra = sorted(set(state) - set(self.dense_shapes))
        if missing or extra:
            raise ValueError(
                f"The {role} model does not match the pruning plan: tensors missing {missing[:5]}, "
                f"unexpected {extra[:5]}; {hint}."
            )
        for name, tensor in state.items():
            if list(tensor.shape) != expected_shape(name):
                raise ValueError(
                    f"The {role} tensor '{name}' has shape {list(tensor.shape)} but the pruning plan "
                    f"expects {expected_shape(name)}; {hint}."
                )

    # -- (de)serialisation ---------------------------------------------------------------------

    def to_dict(self) -> dict:
        # Coupled tensors share one kept list; store each distinct list once.
        groups: list[list[int]] = []
        group_ids: dict[tuple, int] = {}
        tensors = {}
        for name, shape in self.dense_shapes.items():
            pruned = {}
            for dim, kept in sorted(self.kept_indices.get(name, {}).items()):
                key = tuple(int(i) for i in kept)
                if key not in group_ids:
                    group_ids[key] = len(groups)
                    groups.append(list(key))
                pruned[str(dim)] = group_ids[key]
            tensors[name] = {"dense_shape": list(shape), "pruned_dims": pruned}
        return {
            "format_version": PLAN_FORMAT_VERSION,
            "pruning_ratio": self.pruning_ratio,
            "importance": self.importance,
            "model_type": self.model_type,
            "dense_name_or_path": self.dense_name_or_path,
            "dense_config_hash": self.dense_config_hash,
            "pruning_path": self.pruning_path,
            "pruning_history": self.pruning_history,
            "trace_inputs": self.trace_inputs,
            "attention_outputs_dense": self.attention_outputs_dense,
            "model_class": self.model_class,
            "dense_config": self.dense_config,
            "surrogate_config": self.surrogate_config,
            "kept_index_groups": groups,
            "tensors": tensors,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        version = data.get("format_version")
        if version not in READABLE_PLAN_VERSIONS:
            raise ValueError(
                f"Unsupported pruning plan format_version {version!r}; this prunefuse-hf reads versions "
                f"{', '.join(map(str, READABLE_PLAN_VERSIONS))}. Re-create the plan with `prune_model`."
            )
        groups = data["kept_index_groups"]
        return cls(
            pruning_ratio=data["pruning_ratio"],
            importance=data["importance"],
            model_type=data["model_type"],
            dense_config=data["dense_config"],
            surrogate_config=data["surrogate_config"],
            dense_shapes={name: t["dense_shape"] for name, t in data["tensors"].items()},
            kept_indices={
                name: {int(dim): groups[g] for dim, g in t["pruned_dims"].items()}
                for name, t in data["tensors"].items()
                if t["pruned_dims"]
            },
            dense_name_or_path=data.get("dense_name_or_path"),
            dense_config_hash=data.get("dense_config_hash"),
            pruning_path=data.get("pruning_path", PRUNING_PATH_CONFIG),
            pruning_history=data.get("pruning_history"),
            trace_inputs=data.get("trace_inputs"),
            attention_outputs_dense=bool(data.get("attention_outputs_dense", False)),
            model_class=data.get("model_class"),
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `pruning_plan.json` into `save_directory` (next to the surrogate checkpoint).

        The file is written to a temporary name and renamed, so a crash never leaves half a plan.
        """
        path = os.path.join(save_directory, PRUNING_PLAN_NAME)
        atomic_write(path, lambda f: json.dump(self.to_dict(), f))
        return path

    @classmethod
    def from_pretrained(cls, directory: str | os.PathLike) -> PruningPlan:
        """Load the plan saved by `save_pretrained` from a directory (or the JSON file itself)."""
        path = os.fspath(directory)
        if os.path.isdir(path):
            path = os.path.join(path, PRUNING_PLAN_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"No {PRUNING_PLAN_NAME} at {path}. A surrogate directory written by prunefuse-hf holds one "
                "next to its weights; create it with `prune_model(...)` then `plan.save_pretrained(dir)`."
            )
        with open(path) as f:
            return cls.from_dict(json.load(f))


def _describe(name_or_path: str | None) -> str:
    return repr(name_or_path) if name_or_path else "an unnamed model (built from a config)"
