"""A Label Studio ML backend that serves a run's latest trained surrogate as pre-annotations: `Choices` for image
classification, the task's own for another task (object detection's `RectangleLabels` boxes, semantic segmentation's
`BrushLabels` masks, from the task's `label_studio_predictions`).

It speaks the protocol of label-studio-ml-backend, as Label Studio 1.23 calls it (`label_studio/ml/api_connector.py`):
`GET /health` (`{"status": "UP", "model_class": ...}`), `POST /setup` (answers the `model_version`: Label Studio
records it and skips tasks that already hold a prediction of that version), `POST /predict` with
`{"tasks": [...], "label_config": ..., ...}` answered with `{"results": [{"result": [...], "score": s,
"model_version": v}, ...]}`, one entry per task in the same order, and `POST /webhook` (Label Studio's webhooks:
each one is passed on to `on_webhook`, e.g. to wake a running [`label_studio_loop`]).

Predictions come from `RUN/surrogate/` (loaded once, again whenever the run trains a new one), in batches, for any
task of the project: the ones PruneFuse pushed and the ones imported by hand. A task's image is read from its data
(the key the project's `<Image value="$...">` names): a `data:` URI, a `/data/local-files/?d=...` path under the
server's document root, another path the server serves (`/data/upload/...`, fetched with the API token), or an
`http(s)` URL. `model_version` names the run round: `<run>-surrogate-round<k>`, as the pre-annotations `push` sends.
"""

from __future__ import annotations

import base64
import json
import os
import threading
import xml.etree.ElementTree as ET
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote

from transformers.utils import logging

from ..constants import (
    LABEL_STUDIO_DOCUMENT_ROOT_ENV,
    LABEL_STUDIO_LOCAL_FILES_URL,
    LABEL_STUDIO_TOKEN_ENV,
    STATE_NAME,
    SURROGATE_DIR,
)
from .label_studio_api import LabelStudioClient, project_record
from .labels import LabelError
from .queries import surrogate_model_version

logger = logging.get_logger(__name__)

_CLASSIFICATION = (None, "image-classification")
_BATCH_SIZE = 32


class LabelStudioBackend:
    """
    The predictions of a run's latest trained surrogate for Label Studio tasks, and the HTTP server Label Studio
    connects to as an ML backend (Settings → Model → Connect model).

    Args:
        run_dir (`str` or `os.PathLike`): A run whose method trains a surrogate (usually one with `annotation: human`).
        task ([`~prunefuse_hf.tasks.Task`], *optional*): The run's task when it is not image classification
            (`prunefuse_hf.tasks.get_task("object-detection")`; the CLI passes it): its `label_studio_predictions`
            make the predictions.
        url (`str`, *optional*): The Label Studio server, to fetch images it serves (`/data/upload/...`); default:
            the run's project address (`label_studio.json`), else `$LABEL_STUDIO_URL`.
        token (`str`, *optional*): Its API token (default `$LABEL_STUDIO_API_KEY`).
        document_root (`str` or `os.PathLike`, *optional*): The server's `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`
            (default: that variable): `/data/local-files/?d=...` images are read from it directly.
        batch_size (`int`, *optional*, defaults to 32): Images per forward pass.
        on_webhook (`Callable[[dict], None]`, *optional*): Called with every webhook payload Label Studio sends to
            `/webhook` (e.g. a running loop's wake-up).

    Raises:
        LabelError: `run_dir` holds no PruneFuse run, a run of another task than `task` (or than image classification
            without it), or a run of a task without Label Studio predictions.

    Example:

    ```python
    >>> backend = LabelStudioBackend("runs/my-pool")
    >>> backend.predict([{"id": 1, "data": {"image": "data:image/png;base64,..."}}])[0]["result"][0]["value"]
    {'choices': ['cross']}
    >>> server = backend.serve("127.0.0.1", 9090)   # in a thread; server.shutdown() stops it
    ```
    """

    def __init__(self, run_dir, *, task=None, url=None, token=None, document_root=None,
                 batch_size: int = _BATCH_SIZE, on_webhook: Callable[[dict], None] | None = None):  # fmt: skip
        self.run_dir = Path(run_dir)
        state_path = self.run_dir / STATE_NAME
        if not state_path.is_file():
            raise LabelError(
                f"{self.run_dir} holds no PruneFuse run ({STATE_NAME} is missing): pass the output_dir of a run with "
                "annotation: human (start it with `prunefuse-hf label-studio loop --config RECIPE.yaml` or "
                "`prunefuse-hf run`)."
            )
        state = json.loads(state_path.read_text(encoding="utf-8"))
        settings = state.get("settings") or {}
        name = state.get("task") or settings.get("task")
        if name in _CLASSIFICATION and state.get("metric", "accuracy") != "accuracy":
            name = state.get("metric")  # a run written before the state named its task
        if name not in _CLASSIFICATION and (task is None or task.name != name):
            given = f"task {task.name!r} was given" if task is not None else "no task was given"
            raise LabelError(
                f"{self.run_dir} is a {name} run and {given}: pass the run's task "
                f"(LabelStudioBackend(run_dir, task=prunefuse_hf.tasks.get_task({name!r})); `prunefuse-hf "
                "label-studio backend` does)."
            )
        if name not in _CLASSIFICATION and task.label_studio_predictions is None:
            raise LabelError(
                f"{self.run_dir} is a {name} run: the ML backend has no {task.label_studio_tag or name} predictions "
                "for it. Use the pre-annotations `label-studio push` sends with each query instead."
            )
        self.task = None if name in _CLASSIFICATION else task
        self.settings = settings
        if settings.get("pruning_ratio") == 0:
            raise LabelError(
                f"{self.run_dir} selects without a surrogate (method {settings.get('method')!r}, pruning_ratio 0), "
                "so the ML backend has no model to serve. Use the guesses `label-studio push` sends with each query, "
                "or serve a run whose method trains a surrogate (prunefuse, prunefuse_distilled, svp)."
            )
        self.class_names = list(state.get("class_names") or [])
        self.url = url
        self.token = token
        self.document_root = document_root or os.environ.get(LABEL_STUDIO_DOCUMENT_ROOT_ENV)
        self.batch_size = batch_size
        self.on_webhook = on_webhook
        self._lock = threading.Lock()
        self._model = None  # (model_version, model, processor, num_channels)
        self._client = None

    # ----- the model -----------------------------------------------------------------------------

    def model_version(self) -> str | None:
        """`<run>-surrogate-round<k>` for the latest round whose surrogate is trained, or `None` before the first."""
        state = json.loads((self.run_dir / STATE_NAME).read_text(encoding="utf-8"))
        trained = [int(k) for k, record in (state.get("rounds") or {}).items() if "surrogate" in record]
        if not trained or not (self.run_dir / SURROGATE_DIR / "config.json").is_file():
            return None
        return surrogate_model_version(self.run_dir, max(trained))

    def load(self):
        """
        The surrogate of the current model version, loaded once and again whenever the run trained a new one.

        Returns:
            `tuple | None`: `(model_version, model, image processor, num_channels)`, or `None` before the run has a
            trained surrogate.
        """
        version = self.model_version()
        if version is None:
            return None
        with self._lock:
            if self._model is None or self._model[0] != version:
                from ..data.image_processor import model_num_channels, pretrained_image_processor
                from ..pruning.replay import load_surrogate

                directory = self.run_dir / SURROGATE_DIR
                model = load_surrogate(directory).eval()
                processor = pretrained_image_processor(directory)
                if processor is None:
                    raise LabelError(
                        f"{directory} holds no image processor: the run saves one with every surrogate."
                    )
                self._model = (version, model, processor, model_num_channels(model.config))
                logger.info(f"Serving the surrogate {version} from {directory}.")
            return self._model

    def predict(self, tasks: list[dict], label_config: str | None = None) -> list[dict]:
        """
        The surrogate's guess for each task, as Label Studio predictions: its class and probability (image
        classification), or the task's (object detection: its boxes in percent of the image, with their classes and
        scores; semantic segmentation: its mask as RLE brush strokes, one per class).

        Args:
            tasks (`list[dict]`): Label Studio tasks (their `data` holds the image).
            label_config (`str`, *optional*): The project's labeling config: the control tag of the task
                (`Choices`, `RectangleLabels`, `BrushLabels`) and the `Image` tag it names are used (default:
                PruneFuse's, `label` on `image`).

        Returns:
            `list[dict]`: one per task, in order: `{"result": [...], "score", "model_version"}`; a task whose image
            cannot be read gets an empty `result` (the reason is logged). Empty before the run has a trained
            surrogate.
        """
        import torch

        loaded = self.load()
        if loaded is None:
            logger.info(
                f"{self.run_dir} has no trained surrogate yet: no predictions until its first round trains."
            )
            return []
        version, model, processor, channels = loaded
        from_name, to_name, key = _tags(label_config, self.task.label_studio_tag if self.task else "Choices")
        images = [self._image(task, key, channels) for task in tasks]
        results = [{"result": [], "score": 0.0, "model_version": version} for _ in tasks]
        readable = [k for k, image in enumerate(images) if image is not None]
        names = self.class_names or [model.config.id2label[k] for k in range(model.config.num_labels)]
        if self.task is not None:
            found = self.task.label_studio_predictions(model, processor, [images[k] for k in readable],
                                                       class_names=names, model_version=version,
                                                       num_channels=channels, settings=self.settings,
                                                       batch_size=self.batch_size)  # fmt: skip
            for k, prediction in zip(readable, found):
                # The project's own tag names: a labeling config other than PruneFuse's still shows the guess.
                for result in prediction["result"]:
                    result["from_name"] = from_name or result["from_name"]
                    result["to_name"] = to_name or result["to_name"]
                results[k] = {"score": 0.0, **prediction, "model_version": version}
            return results
        for start in range(0, len(readable), self.batch_size):
            batch = readable[start : start + self.batch_size]
            inputs = processor(images=[images[k] for k in batch], return_tensors="pt")
            with torch.no_grad():
                probs = model(pixel_values=inputs["pixel_values"]).logits.softmax(-1)
            scores, classes = probs.max(-1)
            for k, score, label in zip(batch, scores.tolist(), classes.tolist()):
                results[k]["score"] = round(float(score), 4)
                results[k]["result"] = [{"from_name": from_name, "to_name": to_name, "type": "choices",
                                         "value": {"choices": [names[label]]}, "score": round(float(score), 4)}]  # fmt: skip
        return results

    def _image(self, task: dict, key: str, channels: int):
        from ..data.images import open_image, to_model_mode

        value = (task.get("data") or {}).get(key)
        try:
            raw = self._image_bytes(value)
            return None if raw is None else to_model_mode(open_image(raw), channels)
        except Exception as error:  # one bad image must not cost the other tasks their predictions
            logger.warning(
                f"Label Studio task {task.get('id')}: its image {str(value)[:80]!r} cannot be read ({error})."
            )
            return None

    def _image_bytes(self, value) -> bytes | None:
        """The bytes of a task's image reference (see the module's docstring)."""
        if not isinstance(value, str) or not value:
            return None
        if value.startswith("data:"):
            return base64.b64decode(value.split(",", 1)[1])
        if value.startswith(LABEL_STUDIO_LOCAL_FILES_URL) and self.document_root:
            path = Path(self.document_root) / unquote(value[len(LABEL_STUDIO_LOCAL_FILES_URL) :])
            if path.is_file():
                return path.read_bytes()
        if value.startswith(("http://", "https://")):
            import requests

            answer = requests.get(value, timeout=60)
            answer.raise_for_status()
            return answer.content
        if value.startswith("/"):  # served by Label Studio (uploads, local files): fetched with the API token
            if self._client is None:
                # The project may have been created after the backend started (the loop's first push).
                url = self.url or (project_record(self.run_dir) or {}).get("url")
                self._client = LabelStudioClient(url, self.token, timeout=60)
            return self._client.request("GET", value).content
        return None

    # ----- the HTTP server -------------------------------------------------------------------------

    def serve(self, host: str = "127.0.0.1", port: int = 9090) -> ThreadingHTTPServer:
        """
        Start the ML backend's HTTP server on a thread of its own and return it (`shutdown()` stops it).

        Raises:
            OSError: the port cannot be used (the message names it).
        """
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, status: int, payload) -> None:
                body = json.dumps(payload).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self):
                if self.path.rstrip("/") in ("", "/health"):
                    self._answer(200, {"status": "UP", "model_class": "PruneFuseSurrogate"})
                elif self.path.rstrip("/") == "/versions":
                    version = backend.model_version()
                    self._answer(200, {"versions": [version] if version else []})
                else:
                    self._answer(404, {"error": f"no such endpoint: GET {self.path}"})

            def do_POST(self):
                try:
                    request = json.loads(
                        self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}"
                    )
                except ValueError as error:
                    self._answer(400, {"error": f"the body is not JSON ({error})"})
                    return
                endpoint = self.path.rstrip("/")
                try:
                    if endpoint == "/setup":
                        self._answer(200, {"model_version": backend.model_version() or "prunefuse-untrained"})
                    elif endpoint == "/predict":
                        results = backend.predict(request.get("tasks") or [], request.get("label_config"))
                        self._answer(200, {"results": results, "model_version": backend.model_version()})
                    elif endpoint == "/webhook":
                        if backend.on_webhook is not None:
                            backend.on_webhook(request)
                        self._answer(200, {"status": "ok"})
                    elif endpoint in ("/train", "/validate"):
                        self._answer(200, {"status": "ok"})  # PruneFuse trains in its run, not on request
                    else:
                        self._answer(404, {"error": f"no such endpoint: POST {self.path}"})
                except Exception as error:  # noqa: BLE001 (answered, and logged: the server keeps serving)
                    logger.error(f"ML backend {endpoint} failed: {type(error).__name__}: {error}")
                    self._answer(500, {"error": f"{type(error).__name__}: {error}"})

            def log_message(self, format, *args):
                logger.info(f"{self.address_string()} {format % args}")

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as error:
            raise OSError(
                f"The ML backend cannot listen on {host}:{port} ({error}): choose another --port."
            ) from error
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server


def _tags(label_config: str | None, control: str = "Choices") -> tuple[str, str, str]:
    """(name of the `control` tag, Image name, the task data key of the image) of a labeling config; PruneFuse's by
    default (`label` on `image`)."""
    found = ("label", "image", "image")
    if not label_config:
        return found
    try:
        root = ET.fromstring(label_config)
    except ET.ParseError:
        return found
    images = {tag.get("name"): (tag.get("value") or "").lstrip("$") for tag in root.iter("Image")}
    for tag in root.iter(control):
        if tag.get("toName") in images:
            return tag.get("name"), tag.get("toName"), images[tag.get("toName")] or "image"
    return found


def serve_label_studio_backend(run_dir, *, host: str = "127.0.0.1", port: int = 9090, task=None, url=None,
                               token=None, document_root=None, wake_url: str | None = None,
                               report: Callable[[str], None] | None = None) -> None:  # fmt: skip
    """
    Serve a run's surrogate as a Label Studio ML backend until interrupted (Ctrl-C).

    Args:
        run_dir (`str` or `os.PathLike`): The run (see [`LabelStudioBackend`]).
        host, port: Where the backend listens; Label Studio connects to `http://<host>:<port>`.
        task, url, token, document_root: See [`LabelStudioBackend`].
        wake_url (`str`, *optional*): Every webhook Label Studio sends to `/webhook` is passed on (a POST) to this
            address: a running loop's webhook receiver (`label-studio loop --webhook_port P` listens on
            `http://127.0.0.1:P/`), which wakes at once instead of at its next poll.
        report (`Callable[[str], None]`, *optional*): Receives the start message (default: the logger).

    Raises:
        LabelError: the run cannot be served (named, with the fix), before anything listens.
        OSError: the port is taken.

    Example:

    ```python
    >>> from prunefuse_hf import serve_label_studio_backend
    >>> serve_label_studio_backend("runs/my-pool", port=9090, wake_url="http://127.0.0.1:9091/")  # until Ctrl-C
    ```
    """
    say = report or logger.info
    token = token or os.environ.get(LABEL_STUDIO_TOKEN_ENV)

    def wake(payload: dict) -> None:
        if wake_url is None:
            return
        import requests

        try:
            requests.post(wake_url, json={"action": payload.get("action")}, timeout=5)
        except requests.RequestException as error:
            logger.warning(f"The loop at {wake_url} did not take the webhook ({error}); it will poll.")

    backend = LabelStudioBackend(
        run_dir, task=task, url=url, token=token, document_root=document_root, on_webhook=wake
    )
    version = backend.model_version()
    if version is not None:
        backend.load()  # before Label Studio's first call: its /setup and /health time out after seconds
    server = backend.serve(host, port)
    shown = version or "none: no surrogate trained yet, predictions start once the first round trains"
    say(
        f"ML backend for {backend.run_dir} at http://{host}:{port} (model_version {shown}). In Label Studio: the "
        f"project's Settings -> Model -> Connect model, URL http://{host}:{port}."
    )
    try:
        threading.Event().wait()
    finally:
        server.shutdown()
        server.server_close()
