"""A run's Label Studio project on a running server, through its REST API (plain HTTP, no SDK).

`push_query` creates the run's project (or finds it again: `RUN/label_studio.json`), sets PruneFuse's labeling
config, and imports the open query's tasks with their pool indices and the surrogate's predictions. Images show
in a stock Label Studio: as `data:` URIs (every pool), or, when the server serves local files
(`LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`, `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=<root>`) and the
pool's image files lie under that root, as `/data/local-files/?d=<path>` references with a local-files storage
added to the project (not synced: it only lets the server read that folder). `pull_export` downloads the
project's JSON export (the only one with ground truth and skips), keeps the open round's tasks, names the
annotators by e-mail and writes it beside the query for `ingest_labels`.

The endpoints are Label Studio 1.x's documented API (https://labelstud.io/api), checked against 1.23.2.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import quote

from transformers.utils import logging

from ..constants import (
    IMAGE_PATH,
    LABEL_STUDIO_CONFIG,
    LABEL_STUDIO_DOCUMENT_ROOT_ENV,
    LABEL_STUDIO_EXPORT,
    LABEL_STUDIO_LOCAL_FILES_URL,
    LABEL_STUDIO_PROJECT,
    LABEL_STUDIO_TASKS,
    LABEL_STUDIO_TOKEN_ENV,
    LABEL_STUDIO_URL_ENV,
    POOL_INDEX,
)
from ..utils.io import atomic_write
from .edits import StoredAnswers, describe_edits, label_edits
from .labels import LabelError
from .queries import open_query, query_directory, read_run_state

logger = logging.get_logger(__name__)

_IMPORT_CHUNK = 200  # tasks per import request: data: URIs make tasks large


class LabelStudioUnreachable(LabelError):
    """The server did not answer (refused connection, timeout) or answered that it is unavailable (502, 503, 504):
    worth trying again later, unlike a refused token or request."""


class LabelStudioClient:
    """
    Authenticated HTTP calls to a Label Studio server; every failure is a `LabelError` naming the call.

    Args:
        url (`str`, *optional*): The server, e.g. `http://localhost:8080`; defaults to `$LABEL_STUDIO_URL`.
        token (`str`, *optional*): An API token (Account & Settings); defaults to `$LABEL_STUDIO_API_KEY`. A
            personal access token (a JWT) is exchanged for a short-lived access token at `/api/token/refresh/`
            (again when that expires); a legacy token is sent as is.
        timeout (`float`, *optional*, defaults to 120): Seconds per request.

    Raises:
        LabelError: no URL or no token.

    Example:

    ```python
    >>> client = LabelStudioClient("http://localhost:8080", token="...")
    >>> client.get("/api/version")["release"]
    '1.23.2'
    ```
    """

    def __init__(self, url: str | None = None, token: str | None = None, timeout: float = 120.0):
        import requests

        url = url or os.environ.get(LABEL_STUDIO_URL_ENV)
        token = token or os.environ.get(LABEL_STUDIO_TOKEN_ENV)
        if not url:
            raise LabelError(f"No Label Studio address: pass url (CLI: --url) or set {LABEL_STUDIO_URL_ENV}.")
        if not token:
            raise LabelError(
                f"No Label Studio token: set {LABEL_STUDIO_TOKEN_ENV} to the token shown in Label Studio under "
                "Account & Settings (the token never goes on the command line)."
            )
        self.url = url.rstrip("/")
        self.timeout = timeout
        self._requests = requests
        self.session = requests.Session()
        # Personal access tokens are JWTs (three base64 parts); legacy tokens are plain strings.
        self._refresh_token = token if token.startswith("eyJ") and token.count(".") == 2 else None
        self.session.headers["Authorization"] = f"Token {token}"
        if self._refresh_token:
            self._refresh()

    def _refresh(self) -> None:
        answer = self._send("POST", "/api/token/refresh/", json={"refresh": self._refresh_token}, auth=False)
        if answer.status_code != 200:
            raise LabelError(
                f"Label Studio at {self.url} refused the personal access token ({answer.status_code}: "
                f"{answer.text[:200]}). Create a new one under Account & Settings and set {LABEL_STUDIO_TOKEN_ENV}."
            )
        self.session.headers["Authorization"] = f"Bearer {answer.json()['access']}"

    def _send(self, method: str, path: str, auth: bool = True, **kwargs):
        try:
            if not auth:
                return self._requests.request(method, self.url + path, timeout=self.timeout, **kwargs)
            return self.session.request(method, self.url + path, timeout=self.timeout, **kwargs)
        except self._requests.RequestException as error:
            raise LabelStudioUnreachable(
                f"Label Studio at {self.url} cannot be reached ({type(error).__name__}: {error}). Start it (README, "
                f"'Label with people') or pass the right address (CLI: --url, or {LABEL_STUDIO_URL_ENV})."
            ) from error

    def request(self, method: str, path: str, **kwargs):
        response = self._send(method, path, **kwargs)
        if response.status_code == 401 and self._refresh_token:  # the access token expired (after 5 minutes)
            self._refresh()
            response = self._send(method, path, **kwargs)
        if response.status_code == 401:
            raise LabelError(
                f"Label Studio at {self.url} refused the token ({response.text[:200]}). Set {LABEL_STUDIO_TOKEN_ENV} "
                "to your token from Account & Settings; a legacy token needs the server started with "
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN=true."
            )
        if response.status_code in (502, 503, 504):
            raise LabelStudioUnreachable(
                f"Label Studio at {self.url} is unavailable ({method} {path} answered {response.status_code})."
            )
        if response.status_code >= 400:
            raise LabelError(
                f"Label Studio {method} {path} answered {response.status_code}: {response.text[:300]}"
            )
        return response

    def get(self, path: str, **kwargs):
        return self.request("GET", path, **kwargs).json()

    def post(self, path: str, payload, **kwargs):
        return self.request("POST", path, json=payload, **kwargs).json()

    def tasks(self, project: int, **params) -> list[dict]:
        """Every task of a project (paged); `params` are more query parameters (`fields`, `include`)."""
        tasks, page = [], 1
        while True:
            answer = self.get(
                "/api/tasks", params={"project": project, "page": page, "page_size": 500, **params}
            )
            tasks += answer["tasks"]
            if not answer["tasks"] or len(tasks) >= answer["total"]:
                return tasks
            page += 1

    def users(self) -> dict[int, str]:
        """`{user id: e-mail}` of the organization's users."""
        answer = self.get("/api/users")
        users = answer["results"] if isinstance(answer, dict) else answer
        return {user["id"]: user.get("email") or user.get("username") for user in users}


def push_query(
    run_dir: str | os.PathLike,
    *,
    url: str | None = None,
    token: str | None = None,
    document_root: str | os.PathLike | None = None,
    title: str | None = None,
) -> dict:
    """
    Send the run's open query to Label Studio: the project (created on the first call, its labeling config
    kept up to date), a local-files storage when image files are served, and the round's tasks (tasks already
    imported for that round are not imported twice).

    Args:
        run_dir (`str` or `os.PathLike`): A run waiting for labels (annotation: human).
        url, token (`str`, *optional*): The server and API token (default: `$LABEL_STUDIO_URL`,
            `$LABEL_STUDIO_API_KEY`).
        document_root (`str` or `os.PathLike`, *optional*): The server's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`
            (default: that environment variable). Images whose files lie under it are referenced as local files
            (the tasks stay small); others travel as `data:` URIs.
        title (`str`, *optional*): The project title (default: `PruneFuse <run folder name>`).

    Returns:
        `dict`: `project` (id), `project_url`, `round`, `imported`, `already` (tasks of the round already in the
        project) and `local_files` (how many images are served as local files).

    Raises:
        LabelError: the run has no open query, or Label Studio refused a call (the message names it).

    Example:

    ```python
    >>> push_query("runs/annotated", url="http://localhost:8080")["imported"]
    12
    ```
    """
    run_dir = Path(run_dir)
    round_, directory, tasks = _open_round(run_dir)
    config = (directory / LABEL_STUDIO_CONFIG).read_text(encoding="utf-8")
    client = LabelStudioClient(url, token)
    project = _project(client, run_dir, title or f"PruneFuse {run_dir.resolve().name}", config)
    root = document_root or os.environ.get(LABEL_STUDIO_DOCUMENT_ROOT_ENV)
    served = _serve_local_files(client, project, tasks, Path(root).resolve() if root else None)
    present = {(task["data"].get("round"), task["data"].get(POOL_INDEX)) for task in client.tasks(project)}
    new = [task for task in tasks if (round_, task["data"][POOL_INDEX]) not in present]
    for start in range(0, len(new), _IMPORT_CHUNK):
        client.post(f"/api/projects/{project}/import", new[start : start + _IMPORT_CHUNK])
    logger.info(
        f"Label Studio project {project}: imported {len(new)} tasks of round {round_} ({len(tasks) - len(new)} "
        f"were already there; {served} images served as local files)."
    )
    return {
        "project": project,
        "project_url": f"{client.url}/projects/{project}",
        "round": round_,
        "imported": len(new),
        "already": len(tasks) - len(new),
        "local_files": served,
    }


def pull_export(run_dir: str | os.PathLike, *, url: str | None = None, token: str | None = None,
                report: Callable[[str], None] | None = None, answers: StoredAnswers | None = None) -> Path:  # fmt: skip
    """
    Download the run's Label Studio project as a JSON export, keep the tasks of the open round, name each
    annotation's annotator by e-mail, and write it to `RUN/queries/round_K/label_studio_export.json`.

    Labels of earlier rounds that were changed in Label Studio after they were pulled (an answer edited, deleted,
    or a new answer that differs from the stored label: a class, or an image's boxes) are reported (see
    [`label_edits`]): the stored labels stay, and the message says so and what to do.

    Args:
        run_dir (`str` or `os.PathLike`): A run whose query was sent with [`push_query`].
        url, token (`str`, *optional*): The server and API token (default: the project's recorded address,
            `$LABEL_STUDIO_API_KEY`).
        report (`Callable[[str], None]`, *optional*): Receives the message about edited labels, if any (default:
            this module's logger, as a warning).
        answers ([`StoredAnswers`], *optional*): How the run's task stores and compares answers (its
            `stored_answers`, e.g. object detection's boxes); default: image classification's class labels.

    Returns:
        `Path`: the export file, ready for [`ingest_labels`].

    Raises:
        LabelError: the run has no open query or no Label Studio project, or Label Studio refused a call.
    """
    run_dir = Path(run_dir)
    round_, directory, _ = _open_round(run_dir)
    record = project_record(run_dir)
    if record is None:
        raise LabelError(
            f"{run_dir} has no Label Studio project yet ({LABEL_STUDIO_PROJECT} is missing): send the query first "
            f"with `prunefuse-hf label-studio push {run_dir}`."
        )
    client = LabelStudioClient(url or record["url"], token)
    # Every task, answered or not: a task of an earlier round whose answers were all deleted is noticed too.
    exported = client.request(
        "GET",
        f"/api/projects/{record['project']}/export",
        params={"exportType": "JSON", "download_all_tasks": "true", "download_resources": "false"},
    ).json()
    users = client.users()
    for task in exported:
        for annotation in task.get("annotations") or []:
            who = annotation.get("completed_by")
            if isinstance(who, int):
                annotation["completed_by"] = {"id": who, "email": users.get(who, str(who))}
    edits = label_edits(run_dir, exported, users, answers=answers)
    if edits:
        (report or logger.warning)(describe_edits(run_dir, edits, answers))
    # The round's own tasks: those imported by hand (for the ML backend's guesses) carry no pool index.
    tasks = [
        task
        for task in exported
        if POOL_INDEX in task.get("data", {}) and task["data"].get("round", round_) == round_
    ]
    path = directory / LABEL_STUDIO_EXPORT
    atomic_write(path, lambda f: json.dump(tasks, f))
    answered = sum(bool(task.get("annotations")) for task in tasks)
    logger.info(f"Pulled {answered} answered tasks of round {round_} from Label Studio into {path}.")
    return path


def _open_round(run_dir: Path) -> tuple[int, Path, list[dict]]:
    read_run_state(run_dir)
    query = open_query(run_dir)
    if query is None:
        raise LabelError(
            f"{run_dir} has no query waiting for labels: run it (annotation: human) until it writes one."
        )
    round_ = query[0]
    directory = query_directory(run_dir, round_)
    with open(directory / LABEL_STUDIO_TASKS, encoding="utf-8") as f:
        return round_, directory, json.load(f)


def project_record(run_dir: Path) -> dict | None:
    """The run's Label Studio project as recorded by [`push_query`] (`url`, `project`), or `None`."""
    path = run_dir / LABEL_STUDIO_PROJECT
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def _project(client: LabelStudioClient, run_dir: Path, title: str, config: str) -> int:
    """The run's project on this server (created once, recorded in RUN/label_studio.json), with `config`."""
    record = project_record(run_dir)
    if record and record["url"] == client.url:
        try:
            project = client.get(f"/api/projects/{record['project']}")
        except LabelStudioUnreachable:
            raise  # the project may well be there: never make a second one
        except LabelError:
            project = None  # deleted on the server: make a new one
        if project is not None:
            if project.get("label_config", "").strip() != config.strip():
                client.request("PATCH", f"/api/projects/{project['id']}", json={"label_config": config})
            return project["id"]
    project = client.post("/api/projects", {"title": title, "label_config": config})["id"]
    atomic_write(
        run_dir / LABEL_STUDIO_PROJECT,
        lambda f: f.write(json.dumps({"url": client.url, "project": project}) + "\n"),
    )
    logger.info(f"Created Label Studio project {project} ({title!r}) at {client.url}.")
    return project


def _serve_local_files(client: LabelStudioClient, project: int, tasks: list[dict], root: Path | None) -> int:
    """Point the images under `root` at Label Studio's local-file serving, and let the project read their folder
    (a local-files storage; no sync: the tasks are imported with their pool indices instead)."""
    if root is None:
        return 0
    folders = set()
    for task in tasks:
        path = task["data"].get(IMAGE_PATH)
        if not path or not Path(path).resolve().is_relative_to(root):
            continue
        relative = Path(path).resolve().relative_to(root).as_posix()
        task["data"]["image"] = LABEL_STUDIO_LOCAL_FILES_URL + quote(relative)
        folders.add(str(Path(path).resolve().parent))
    if not folders:
        return 0
    folder = os.path.commonpath(sorted(folders))
    storages = client.get("/api/storages/localfiles", params={"project": project})
    if not any(Path(folder).is_relative_to(storage["path"]) for storage in storages):
        client.post(
            "/api/storages/localfiles",
            {"project": project, "path": folder, "use_blob_urls": False, "title": "PruneFuse pool"},
        )
    return sum(task["data"]["image"].startswith(LABEL_STUDIO_LOCAL_FILES_URL) for task in tasks)
