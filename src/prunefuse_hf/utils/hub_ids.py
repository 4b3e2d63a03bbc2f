"""Hub repo ids in recipes: telling an id from a local path, and checking an id before a run starts."""

from __future__ import annotations

import os
import re

from huggingface_hub.constants import REPO_TYPES
from huggingface_hub.utils import validate_repo_id

# "name" or "owner/name": what reads as a Hub repo id when no such local path exists.
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")
_HUB_ID_HINT = "use ORG/NAME with letters, digits, '-', '_' and '.'"


def is_hub_id(name: str | None) -> bool:
    """
    Whether `name` reads as a Hub repo id rather than a local path (an existing path never is one).

    Args:
        name (`str`, *optional*): A model or dataset name from a recipe.

    Returns:
        `bool`

    Example:

    ```python
    >>> from prunefuse_hf.utils import is_hub_id
    >>> is_hub_id("microsoft/resnet-50"), is_hub_id("/data/pool"), is_hub_id("./pool")
    (True, False, False)
    ```
    """
    if not name or name.startswith((".", "/", "~")) or os.path.exists(name):
        return False
    return bool(_HUB_ID.match(name))


def validate_hub_id(field: str, value: str | None, repo_type: str = "model") -> None:
    """
    Check a Hub repo id given in a recipe field before a run starts, rather than when the push fails at its end.

    The id is checked with `huggingface_hub.utils.validate_repo_id` (the library's own rules: 1 to 96
    characters, letters, digits, '-', '_' and '.', no '--' or '..', not ending in '.git'), plus: at most one
    "/" and ASCII characters only (the library's pattern accepts any Unicode letter; the Hub does not).

    Args:
        field (`str`):
            The recipe field holding the id (`hub_model_id`, `hub_subset_id`, `hub_surrogate_id`, `dataset_name`),
            named in the error.
        value (`str`, *optional*):
            The repo id; `None` (no repo) passes.
        repo_type (`str`, *optional*, defaults to `"model"`):
            `"model"`, `"dataset"` or `"space"`, named in the error.

    Raises:
        ValueError: If the id is not valid, naming the field, the value (as a repr, so that spaces show) and the
            rule; or if `repo_type` is unknown.

    Example:

    ```python
    >>> from prunefuse_hf.utils import validate_hub_id
    >>> validate_hub_id("hub_model_id", "me/fmnist-prunefuse")
    >>> validate_hub_id("hub_model_id", "me/ fmnist-prunefuse")
    Traceback (most recent call last):
        ...
    ValueError: hub_model_id 'me/ fmnist-prunefuse' is not a valid Hub model repo id (...); use ORG/NAME with letters, digits, '-', '_' and '.'
    ```
    """
    if repo_type is None or repo_type not in REPO_TYPES:
        raise ValueError(f"repo_type={repo_type!r} is not one of 'model', 'dataset', 'space'.")
    if value is None:
        return
    if isinstance(value, str) and value.count("/") > 1:
        reason = "it has more than one '/'"
    elif isinstance(value, str) and not value.isascii():
        reason = "it has non-ASCII characters"
    else:
        try:
            validate_repo_id(value)
            return
        except ValueError as error:  # HFValidationError
            reason = str(error).rstrip(".")
    raise ValueError(
        f"{field} {value!r} is not a valid Hub {repo_type} repo id ({reason}); {_HUB_ID_HINT}"
    ) from None


WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin")


def has_weights(path: str) -> bool:
    """Whether `path` is a directory holding model weights (safetensors, sharded or `pytorch_model.bin`)."""
    return os.path.isdir(path) and any(os.path.exists(os.path.join(path, f)) for f in WEIGHT_FILES)
