"""Pushing a finished run to the Hub: the fused model, the selected subset and the surrogate.

Local save and push are separate steps: the run directory already holds the fused checkpoint (with its
card) and the surrogate (with `pruning_plan.json`); a push stages each repo's files in a temporary folder
(hard links to the run's files, plus cards that name the repos) and sends it with `upload_folder`. The run
directory is only read, so a push that fails changes nothing locally and can simply be run again; pushing
the same run twice updates the repos.

The Hub address and the token come from `huggingface_hub` (`HF_ENDPOINT`, `HF_TOKEN` or the stored login)
unless given. The token is never written anywhere nor put in a message.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging

from ..constants import (
    FUSED_DIR,
    LABEL_STUDIO_CONFIG,
    LABEL_STUDIO_TASKS,
    MODEL_CARD_NAME,
    QUERY_CSV,
    QUERY_DATASET_DIR,
    STATE_NAME,
    SURROGATE_DIR,
)
from .card_facts import collect_model_card_facts, collect_surrogate_card_facts
from .cards import render_model_card, render_surrogate_card
from .subset import save_subset

logger = logging.get_logger(__name__)


class PushError(ValueError):
    """A push to the Hub failed; the run directory is unchanged and the same push can be retried."""


@dataclass
class PushResult:
    """Where a push went: the repo ids (as created on the Hub) and their commit URLs."""

    model_repo_id: str
    subset_repo_id: str | None = None
    surrogate_repo_id: str | None = None
    commit_urls: dict | None = None


def push_run(
    run_dir: str | os.PathLike,
    model_repo_id: str,
    *,
    subset_repo_id: str | None = None,
    surrogate_repo_id: str | None = None,
    private: bool | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    include_examples: bool = False,
    commit_message: str = "Upload PruneFuse run",
) -> PushResult:
    """
    Push a finished run: the fused model (with its card) and, when asked, the subset and the surrogate.

    Args:
        run_dir (`str` or `os.PathLike`): A finished run directory (`state.json`, `selection.parquet`, `fused/`,
            `surrogate/`).
        model_repo_id (`str`): Model repo for the fused model (`ORG/NAME`, or `NAME` in your namespace).
        subset_repo_id (`str`, *optional*): Dataset repo for the selected subset (see [`~prunefuse_hf.hub.subset`]).
        surrogate_repo_id (`str`, *optional*): Model repo for the trained surrogate and its `pruning_plan.json`.
        private (`bool`, *optional*): Create the repos as private. An existing public repo is refused (naming it)
            before anything is uploaded: the upload would be public.
        revision (`str`, *optional*): Branch to push to (created from `main` when missing).
        token (`str`, *optional*): Hub token; defaults to `HF_TOKEN` or the stored login.
        endpoint (`str`, *optional*): Hub address; defaults to `HF_ENDPOINT` or huggingface.co.
        include_examples (`bool`, *optional*, defaults to `False`): Also push the selected images and labels
            as the subset repo's `examples` config.
        commit_message (`str`, *optional*): Message of the commits.

    Returns:
        [`PushResult`]: the repo ids and commit URLs.

    Raises:
        `PushError`: the Hub refused or could not be reached, or `private` asks for a repo that exists and is
            public; the message names the recipe field and value the Hub refused. The run directory is unchanged.
        `ValueError`: `run_dir` is not a finished run.

    Example:

    ```python
    >>> from prunefuse_hf import push_run
    >>> result = push_run("runs/fashion-mnist-resnet/prunefuse", "me/fmnist-prunefuse",
    ...                   subset_repo_id="me/fmnist-prunefuse-subset")
    >>> result.commit_urls["model"]
    'https://huggingface.co/me/fmnist-prunefuse/commit/...'
    ```
    """
    from huggingface_hub import HfApi

    run_dir = Path(run_dir)
    _check_finished_run(run_dir)
    api = HfApi(endpoint=endpoint, token=token)
    result = PushResult(model_repo_id=model_repo_id, commit_urls={})
    with tempfile.TemporaryDirectory(prefix="prunefuse-push-") as staging:
        staging = Path(staging)
        # Repo ids as the Hub resolves them (a bare NAME lands in the token's namespace).
        model_repo_id = result.model_repo_id = _create(api, model_repo_id, "model", private, revision,
                                                       field="hub_model_id")  # fmt: skip
        if subset_repo_id:
            subset_repo_id = result.subset_repo_id = _create(
                api, subset_repo_id, "dataset", private, revision, field="hub_subset_id"
            )
        if surrogate_repo_id:
            surrogate_repo_id = result.surrogate_repo_id = _create(
                api, surrogate_repo_id, "model", private, revision, field="hub_surrogate_id"
            )
        links = dict(subset_repo_id=subset_repo_id, endpoint=api.endpoint)

        # The subset first: the model card links to it.
        if subset_repo_id:
            folder = save_subset(run_dir, staging / "subset", repo_id=subset_repo_id, model_repo_id=model_repo_id,
                                 include_examples=include_examples, endpoint=api.endpoint)  # fmt: skip
            result.commit_urls["subset"] = _upload(
                api, folder, subset_repo_id, "dataset", revision, commit_message
            )
        if surrogate_repo_id:
            folder = _stage(run_dir / SURROGATE_DIR, staging / "surrogate")
            facts = collect_surrogate_card_facts(
                run_dir, surrogate_repo_id, model_repo_id=model_repo_id, **links
            )
            (folder / MODEL_CARD_NAME).write_text(render_surrogate_card(facts))
            result.commit_urls["surrogate"] = _upload(
                api, folder, surrogate_repo_id, "model", revision, commit_message
            )
        folder = _stage(run_dir / FUSED_DIR, staging / "fused")
        facts = collect_model_card_facts(run_dir, model_repo_id=model_repo_id, surrogate_repo_id=surrogate_repo_id,
                                         **links)  # fmt: skip
        (folder / MODEL_CARD_NAME).write_text(render_model_card(facts))
        result.commit_urls["model"] = _upload(api, folder, model_repo_id, "model", revision, commit_message)
    return result


def push_query_batch(
    directory: str | os.PathLike,
    repo_id: str,
    round: int,
    *,
    private: bool | None = None,
    token: str | None = None,
    commit_message: str | None = None,
) -> str:
    """
    Push one round's query batch (from [`~prunefuse_hf.annotation.write_query_batch`]) to a dataset repo for
    annotators: the images as config `round_K` (`datasets.load_dataset(repo, "round_K")`), and the labeling
    files (`labels.csv`, the Label Studio tasks and config) under `round_K/`.

    Args:
        directory (`str` or `os.PathLike`): The query batch folder (`RUN/queries/round_K`).
        repo_id (`str`): The dataset repo (created when missing).
        round (`int`): The round the batch is labeled in (names the config).
        private (`bool`, *optional*): Create the repo as private.
        token (`str`, *optional*): Hub token; defaults to `HF_TOKEN` or the stored login.
        commit_message (`str`, *optional*): Message of the commits.

    Returns:
        `str`: the URL of the commit that added the labeling files. The Hub address is `HF_ENDPOINT`'s (as for
        `datasets.Dataset.push_to_hub`, which sends the images).

    Raises:
        `PushError`: the Hub refused or could not be reached (the query folder is unchanged).

    Example:

    ```python
    >>> from prunefuse_hf.hub import push_query_batch
    >>> push_query_batch("runs/annotated/queries/round_2", "me/fmnist-queries", 2)
    ```
    """
    import datasets
    from huggingface_hub import HfApi

    directory = Path(directory)
    api = HfApi(token=token)
    config_name = f"round_{int(round)}"
    message = commit_message or f"Query batch of round {int(round)}"
    query = datasets.load_from_disk(str(directory / QUERY_DATASET_DIR))
    repo_id = _create(api, repo_id, "dataset", private, None, field="hub_query_id")

    def push_images():
        query.push_to_hub(
            repo_id, config_name=config_name, split="train", token=token, commit_message=message
        )

    _hub_call(push_images, f"pushing the images of {directory} to the dataset repo {repo_id}", api.endpoint)

    def upload_files():
        return api.upload_folder(repo_id=repo_id, repo_type="dataset", folder_path=directory, path_in_repo=config_name,
                                 allow_patterns=[QUERY_CSV, LABEL_STUDIO_TASKS, LABEL_STUDIO_CONFIG],
                                 commit_message=message)  # fmt: skip

    info = _hub_call(upload_files, f"uploading the labeling files of {directory} to {repo_id}", api.endpoint)
    logger.info("Pushed the query batch of round %d to %s", int(round), info.commit_url)
    return info.commit_url


# ----- helpers -----


def _check_finished_run(run_dir: Path) -> None:
    missing = [p for p in (STATE_NAME, f"{FUSED_DIR}/config.json") if not (run_dir / p).is_file()]
    if missing:
        raise ValueError(
            f"{run_dir} is not a finished PruneFuse run ({', '.join(missing)} missing): run it to the end first "
            "(`prunefuse-hf run ... --resume`)."
        )


# The recipe field (and CLI option) of each value a push sends, named when the Hub refuses the value.
_FIELD_OPTIONS = {"hub_model_id": "--model_repo_id", "hub_subset_id": "--subset_repo_id",
                  "hub_surrogate_id": "--surrogate_repo_id", "hub_query_id": None, "hub_revision": "--revision"}  # fmt: skip


def _field(field: str, value) -> str:
    option = _FIELD_OPTIONS.get(field)
    return f"{field}{f' (prunefuse-hf push {option})' if option else ''} = {value!r}"


def _create(
    api, repo_id: str, repo_type: str, private: bool | None, revision: str | None, *, field: str
) -> str:
    def create():
        return api.create_repo(repo_id, repo_type=repo_type, private=private, exist_ok=True).repo_id

    created = _hub_call(
        create, f"creating the {repo_type} repo {repo_id}", api.endpoint, field=_field(field, repo_id)
    )
    if private:
        info = _hub_call(lambda: api.repo_info(created, repo_type=repo_type), f"reading the {repo_type} repo "
                         f"{created}", api.endpoint, field=_field(field, repo_id))  # fmt: skip
        if not info.private:
            raise PushError(
                f"The {repo_type} repo {created} ({_field(field, repo_id)}) already exists and is public, but the push "
                "asks for a private repo (--private / hub_private_repo: true): uploading would publish the files. "
                "Make the repo private first (its Settings on the Hub, or `huggingface_hub.HfApi()."
                f"update_repo_settings({created!r}, private=True{_type_arg(repo_type)})`), push to another repo id, "
                "or push without --private to publish it. Nothing was uploaded."
            )
    if revision:

        def branch():
            api.create_branch(created, repo_type=repo_type, branch=revision, exist_ok=True)

        _hub_call(branch, f"creating the branch {revision} of {created}", api.endpoint,
                  field=_field("hub_revision", revision))  # fmt: skip
    return created


def _type_arg(repo_type: str) -> str:
    return "" if repo_type == "model" else f", repo_type={repo_type!r}"


def _upload(api, folder: Path, repo_id: str, repo_type: str, revision: str | None, message: str) -> str:
    def upload():
        return api.upload_folder(repo_id=repo_id, repo_type=repo_type, folder_path=folder, revision=revision,
                                 commit_message=message)  # fmt: skip

    info = _hub_call(upload, f"uploading {folder.name} to the {repo_type} repo {repo_id}", api.endpoint)
    logger.info("Pushed %s to %s", folder.name, info.commit_url)
    return info.commit_url


def _hub_call(function, what: str, endpoint: str, field: str | None = None):
    import httpx2
    from huggingface_hub.errors import HfHubHTTPError

    try:
        return function()
    except HfHubHTTPError as error:
        status = error.response.status_code if error.response is not None else None
        hint = ""
        if status in (401, 403):
            hint = (" The token was refused: set HF_TOKEN (or `hf auth login`) to a token with write access to "
                    "this namespace.")  # fmt: skip
        elif status is not None and status >= 500:
            hint = " The Hub had a server error; try again later."
        elif status is not None and field:
            # A 4xx about the request's content: the value the recipe (or command line) gave is what was refused.
            hint = (f" The Hub refused {field}: fix that value in the recipe (or on the command line), e.g. an "
                    "ORG/NAME of letters, digits, '-', '_' and '.', in a namespace the token can write to.")  # fmt: skip
        if field and status in (401, 403):
            hint += f" The value sent: {field}."
        reason = str(error).splitlines()[0] if str(error) else f"HTTP {status}"
        raise PushError(f"Push failed while {what} on {endpoint} ({reason}).{hint} {_retry_hint()}") from None
    except (httpx2.HTTPError, OSError) as error:
        raise PushError(
            f"Push failed while {what}: could not reach {endpoint} ({type(error).__name__}: {error}). Check the "
            f"network and HF_ENDPOINT. {_retry_hint()}"
        ) from None


def _retry_hint() -> str:
    return "The run directory was not changed; run the same push again to retry."


def _stage(source: Path, target: Path) -> Path:
    """A copy of `source` made of hard links (copies across file systems), so no weights are rewritten.

    The card is left out: it is written fresh into the staging folder (writing through a hard link would
    change the run directory's file).
    """
    target.mkdir(parents=True)
    for path in sorted(source.rglob("*")):
        if path.is_dir() or path.name.startswith(".") or path.name == MODEL_CARD_NAME:
            continue
        destination = target / path.relative_to(source)
        destination.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(path, destination)
        except OSError:
            shutil.copy2(path, destination)
    return target
