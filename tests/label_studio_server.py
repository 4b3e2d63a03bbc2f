"""A real Label Studio server for the tests, started from the virtualenv that `scripts/setup.sh` installs.

Label Studio is installed into its own virtualenv (`.label-studio-venv/`, or `$LABEL_STUDIO_VENV`) with a
migrated data directory (`data-template/`). A test session copies that directory (a fresh start would spend
about 40 s on migrations), starts `label-studio start` bound to 127.0.0.1 on a free port with an admin whose
legacy API token is known, serves local files from a document root, and stops the server at the end. When
the virtualenv is missing, `label_studio_binary()` says why, for `pytest.skip`.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests

REPO_ROOT = Path(__file__).resolve().parents[1]
ADMIN_EMAIL = "admin@example.com"
ADMIN_TOKEN = "prunefuse-test-token-0123456789"  # a legacy token: any string longer than 5 characters


def label_studio_venv() -> Path:
    return Path(os.environ.get("LABEL_STUDIO_VENV") or REPO_ROOT / ".label-studio-venv")


def label_studio_binary() -> tuple[Path | None, str]:
    """The `label-studio` executable, or None and the reason it is not there."""
    binary = label_studio_venv() / "bin" / "label-studio"
    if not binary.is_file():
        return None, (
            f"Label Studio is not installed ({binary} is missing): `make setup` (scripts/setup.sh) installs it into "
            "its own virtualenv, unless PRUNEFUSE_SKIP_LABEL_STUDIO=1 or the install failed (see its output)."
        )
    if not (label_studio_venv() / ".prunefuse-setup").is_file():
        # setup.sh writes its stamp only after the install and `label-studio init` succeeded.
        return None, (
            f"Label Studio's set-up did not finish in {label_studio_venv()} (its pip install or `label-studio init` "
            f"failed: see the set-up's output and {label_studio_venv() / 'init.log'}); rerun `make setup`."
        )
    return binary, ""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    """
    One Label Studio process: `start()` returns once `/api/version` answers, `stop()` terminates it.

    Args:
        binary (`Path`): The `label-studio` executable.
        data_dir (`Path`): Its data directory (copied from the template when that exists).
        document_root (`Path`): `LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`: image folders under it can be served.
    """

    def __init__(self, binary: Path, data_dir: Path, document_root: Path):
        self.binary, self.data_dir, self.document_root = binary, Path(data_dir), Path(document_root)
        self.port = _free_port()  # Label Studio moves to the next port when one is busy: poll this one only
        self.url = f"http://127.0.0.1:{self.port}"
        self.token = ADMIN_TOKEN
        self.process = None
        self.session = requests.Session()
        self.session.headers["Authorization"] = f"Token {ADMIN_TOKEN}"

    def start(self, timeout: float = 120.0) -> float:
        template = label_studio_venv() / "data-template"
        if template.is_dir() and not self.data_dir.exists():
            shutil.copytree(template, self.data_dir, symlinks=True)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.document_root.mkdir(parents=True, exist_ok=True)
        env = {
            **os.environ,
            "LABEL_STUDIO_BASE_DATA_DIR": str(self.data_dir),
            "LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED": "true",
            "LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
            "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
            "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
            # Lets the loop's webhook call back to 127.0.0.1 (Label Studio blocks local addresses by default).
            "SSRF_PROTECTION_ENABLED": "false",
            # Lets the project connect to the ML backend the tests start on 127.0.0.1.
            "ML_BLOCK_LOCAL_IP": "false",
            "LATEST_VERSION_CHECK": "false",
            "COLLECT_ANALYTICS": "false",
        }
        command = [str(self.binary), "start", "--no-browser", "--internal-host", "127.0.0.1",
                   "--port", str(self.port), "--username", ADMIN_EMAIL, "--password", "prunefuse-test-pass",
                   "--user-token", ADMIN_TOKEN, "--enable-legacy-api-token"]  # fmt: skip
        self.log = open(self.data_dir / "server.log", "wb")
        started = time.monotonic()
        self.process = subprocess.Popen(command, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        stdin=subprocess.DEVNULL, start_new_session=True)  # fmt: skip
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"label-studio exited with {self.process.returncode}; see {self.data_dir / 'server.log'}"
                )
            try:
                if requests.get(self.url + "/api/version", timeout=2).status_code == 200:
                    return time.monotonic() - started
            except requests.RequestException:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(
            f"label-studio did not answer within {timeout} s; see {self.data_dir / 'server.log'}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None
        if getattr(self, "log", None):
            self.log.close()

    def personal_access_token(self) -> str:
        """The admin's personal access token (a JWT; Label Studio issues one per user, so it is kept)."""
        if not getattr(self, "_pat", None):
            answer = self.session.post(self.url + "/api/token/")
            answer.raise_for_status()
            self._pat = answer.json()["token"]
        return self._pat

    # ----- what annotators do in the browser, through the same API -----

    def user(self, email: str) -> int:
        """The id of a user of the organization (created when missing)."""
        for user in self.session.get(self.url + "/api/users").json():
            if user["email"] == email:
                return user["id"]
        answer = self.session.post(self.url + "/api/users", json={"email": email, "username": email})
        answer.raise_for_status()
        return answer.json()["id"]

    def tasks(self, project: int) -> list[dict]:
        answer = self.session.get(self.url + "/api/tasks", params={"project": project, "page_size": 1000})
        answer.raise_for_status()
        return answer.json()["tasks"]

    def round_tasks(self, project: int, round_: int) -> list[dict]:
        """The project's tasks of one query round, sorted by pool index."""
        tasks = [task for task in self.tasks(project) if task["data"]["round"] == round_]
        return sorted(tasks, key=lambda task: task["data"]["pool_index"])

    def wait_for_round(self, run_dir: Path, round_: int, count: int, timeout: float = 120.0) -> list[dict]:
        """The round's tasks of the run's project (`label_studio.json` in `run_dir`) once all `count` are in,
        sorted by pool index."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            path = Path(run_dir) / "label_studio.json"
            if path.is_file():
                tasks = self.round_tasks(json.loads(path.read_text())["project"], round_)
                if len(tasks) == count:
                    return tasks
            time.sleep(0.1)
        raise TimeoutError(f"the {count} tasks of round {round_} never appeared in {timeout} s")

    def annotate(self, task: int, user: int, label: str | None, ground_truth: bool = False) -> int:
        """Submit `label` for a task as `user` (the admin token may act for any user); `None` skips the task."""
        payload = {"completed_by": user, "ground_truth": ground_truth, "lead_time": 1.0}
        if label is None:
            answer = self.session.post(f"{self.url}/api/tasks/{task}/annotations?was_cancelled=1",
                                       json={**payload, "result": [], "was_cancelled": True})  # fmt: skip
        else:
            result = [
                {"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}
            ]
            answer = self.session.post(
                f"{self.url}/api/tasks/{task}/annotations", json={**payload, "result": result}
            )
        answer.raise_for_status()
        return answer.json()["id"]
