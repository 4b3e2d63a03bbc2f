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

from .constants import PRUNING_PLAN_NAME

PLAN_FORMAT_VERSION = 1


def config_hash(config) -> str:
    """A stable hash of a model config's architecture fields (the transformers version and the
    checkpoint path are left out, so a reloaded config hashes the same)."""
    values = config.to_dict()
    for volatile in ("transformers_version", "_name_or_path", "torch_dtype", "dtype"):
        values.pop(volatile, None)
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass
class PruningPlan:
    """Kept indices of every pruned dimension of every tensor of a dense model.

    Args:
        pruning_ratio: The uniform ratio the surrogate was pruned with.
        importance: The importance criterion (`"l2"`: group L2 magnitude).
        model_type: The dense config's `model_type` (e.g. `"resnet"`).
        dense_config: The dense model's config as a dict (enough to rebuild its architecture).
        surrogate_config: The surrogate's (narrowed) config as a dict.
        dense_shapes: Shape of every tensor in the dense `state_dict`.
        kept_indices: `tensor name -> {dim: kept dense indices}` for the pruned dimensions only.
        dense_name_or_path: The dense model's Hub id or path when it came from one.
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
        """Raise a `ValueError` naming the first tensor whose shape does not match this plan."""
        self._check_state(dense.state_dict(), "dense", lambda name: list(self.dense_shapes[name]))
        self._check_state(surrogate.state_dict(), "surrogate", self.surrogate_shape)

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
            "dense_config": self.dense_config,
            "surrogate_config": self.surrogate_config,
            "kept_index_groups": groups,
            "tensors": tensors,
        }

    @classmethod
    def from_dict(cls, data: dict) -> PruningPlan:
        version = data.get("format_version")
        if version != PLAN_FORMAT_VERSION:
            raise ValueError(
                f"Unsupported pruning plan format_version {version!r}; this prunefuse-hf reads version "
                f"{PLAN_FORMAT_VERSION}. Re-create the plan with `prune_model`."
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
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> str:
        """Write `pruning_plan.json` into `save_directory` (next to the surrogate checkpoint).

        The file is written to a temporary name and renamed, so a crash never leaves half a plan.
        """
        os.makedirs(save_directory, exist_ok=True)
        path = os.path.join(save_directory, PRUNING_PLAN_NAME)
        tmp_path = f"{path}.tmp"
        with open(tmp_path, "w") as f:
            json.dump(self.to_dict(), f)
        os.replace(tmp_path, path)
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
