"""Hub repo ids in recipes: telling an id from a local path, and checking an id before a run starts."""

from __future__ import annotations

import os
import re
import socket
import sys
from urllib.parse import urlparse

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


# ----- reaching the Hub -----

_OFFLINE_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline_reason(timeout: float = 1.0) -> str | None:
    """
    Why the Hub cannot be reached, or `None` when it can: offline mode says so at once; otherwise one short TCP
    connection to the endpoint decides (no retries, no long DNS wait), so a caller can refuse in a second what the
    Hub clients would only give up on after about 25 s of retries.

    Args:
        timeout (`float`, *optional*, defaults to 1.0): Seconds the connection may take.

    Returns:
        `str` or `None`: e.g. `"the Hub is offline (HF_HUB_OFFLINE is set)"`.
    """
    from huggingface_hub import constants

    datasets_config = getattr(sys.modules.get("datasets"), "config", None)
    set_names = [name for name in _OFFLINE_ENV if os.environ.get(name, "").upper() in _TRUE]
    if set_names or constants.HF_HUB_OFFLINE or getattr(datasets_config, "HF_HUB_OFFLINE", False):
        return f"the Hub is offline ({' and '.join(set_names or ['HF_HUB_OFFLINE'])} is set)"
    url = urlparse(constants.ENDPOINT)
    port = url.port or (80 if url.scheme == "http" else 443)
    try:
        with socket.create_connection((url.hostname, port), timeout=timeout):
            return None
    except OSError:
        return f"the Hub ({constants.ENDPOINT}) cannot be reached"


def hub_reachable(timeout: float = 1.0) -> bool:
    """Whether the Hub can be reached now (see [`hub_offline_reason`])."""
    return hub_offline_reason(timeout) is None


def in_hub_cache(repo_id: str, filename: str = "config.json") -> bool:
    """Whether `filename` of the Hub model `repo_id` (main branch) is in the local Hugging Face cache."""
    from huggingface_hub import try_to_load_from_cache

    try:
        return isinstance(try_to_load_from_cache(repo_id, filename), str)
    except ValueError:  # an id the cache layout cannot hold
        return False


def check_hub_model(field: str, name: str | os.PathLike | None) -> bool:
    """
    Refuse, in about a second and before any work, a model that can only come from a Hub that cannot be reached.

    A `name` that is a Hub id (not a local path), not in the local Hugging Face cache, while the Hub is offline
    (`HF_HUB_OFFLINE`) or does not answer a short connection, is refused in one line naming the field, the id and
    the fixes; otherwise the Hub clients would retry for about 25 s and end with a long message of their own.

    Args:
        field (`str`): The field or argument holding the model (`model_name_or_path`, `--model`, `model`), named in
            the error.
        name (`str` or `os.PathLike`, *optional*): A Hub id, a local path, or `None` (nothing to check).

    Returns:
        `bool`: whether the model must be read from the local cache only (`local_files_only=True`): a cached Hub id
        while the Hub cannot be reached, so the clients do not retry before falling back to the cache.

    Raises:
        ValueError: The model can be neither downloaded nor read from the cache.

    Example:

    ```python
    >>> import os
    >>> from prunefuse_hf.utils import check_hub_model
    >>> os.environ["HF_HUB_OFFLINE"] = "1"
    >>> check_hub_model("model_name_or_path", "someone/not-cached")
    Traceback (most recent call last):
        ...
    ValueError: model_name_or_path 'someone/not-cached' is a Hub model id that is neither a local directory nor in the local Hugging Face cache, and the Hub is offline (HF_HUB_OFFLINE is set). ...
    ```
    """
    if name is None:
        return False
    name = os.fspath(name)
    if not is_hub_id(name):
        return False
    reason = hub_offline_reason()
    if reason is None:
        return False
    if in_hub_cache(name):
        return True
    online = (
        "unset HF_HUB_OFFLINE"
        if "offline" in reason
        else "connect to the Hub (or set HF_ENDPOINT to a mirror)"
    )
    raise ValueError(
        f"{field} {name!r} is a Hub model id that is neither a local directory nor in the local Hugging Face "
        f"cache, and {reason}. Give a local checkpoint directory (written by save_pretrained), build the model "
        "from a config instead (recipe: `model_config: {model_type: resnet, ...}`; Python: a PretrainedConfig or "
        f"a dict with model_type), or {online}."
    )
