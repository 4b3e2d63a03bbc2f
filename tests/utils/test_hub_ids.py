"""Hub model ids that the Hub cannot serve: refused at once, or read from the local cache without retries."""

import socket
import time

import huggingface_hub
import pytest

from prunefuse_hf.utils.hub_ids import check_hub_model, hub_offline_reason, hub_reachable, in_hub_cache


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture
def closed_port():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _endpoint(monkeypatch, url):
    for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", url)


def _cache_model(cache, repo_id):
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot / "config.json").write_text('{"model_type": "resnet"}')


def test_a_closed_endpoint_is_unreachable_at_once_and_a_listening_one_is_reachable(monkeypatch, closed_port):
    _endpoint(monkeypatch, f"http://127.0.0.1:{closed_port}")
    start = time.perf_counter()
    assert hub_offline_reason() == f"the Hub (http://127.0.0.1:{closed_port}) cannot be reached"
    assert time.perf_counter() - start < 1.0
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        _endpoint(monkeypatch, f"http://127.0.0.1:{server.getsockname()[1]}")
        assert hub_reachable()


@pytest.mark.parametrize("variable", ["HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"])
def test_offline_mode_is_named_without_any_connection(monkeypatch, variable):
    def no_network(*args, **kwargs):
        raise AssertionError("offline mode must not open a connection")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setenv(variable, "1")
    assert hub_offline_reason() == f"the Hub is offline ({variable} is set)"


@pytest.mark.parametrize("offline", [True, False], ids=["HF_HUB_OFFLINE", "closed port"])
def test_an_uncached_hub_id_is_refused_naming_the_field_the_id_and_the_fixes(
    monkeypatch, hub_cache, closed_port, offline
):
    _endpoint(monkeypatch, f"http://127.0.0.1:{closed_port}")
    if offline:
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ValueError) as error:
        check_hub_model("model_name_or_path", "microsoft/resnet-18")
    assert time.perf_counter() - start < 1.0
    message = str(error.value)
    assert message.startswith("model_name_or_path 'microsoft/resnet-18' is a Hub model id")
    assert "local checkpoint directory" in message and "model_config: {model_type: resnet" in message
    assert ("unset HF_HUB_OFFLINE" if offline else f"127.0.0.1:{closed_port}) cannot be reached") in message
    assert "\n" not in message


def test_a_cached_hub_id_is_read_from_the_cache_only_when_the_hub_cannot_be_reached(
    monkeypatch, hub_cache, closed_port
):
    _cache_model(hub_cache, "someone/cached-model")
    assert in_hub_cache("someone/cached-model") and not in_hub_cache("someone/other")
    _endpoint(monkeypatch, f"http://127.0.0.1:{closed_port}")
    assert check_hub_model("model", "someone/cached-model") is True


def test_local_paths_and_configs_need_no_hub(monkeypatch, tmp_path):
    def no_network(*args, **kwargs):
        raise AssertionError("a local path must not probe the Hub")

    monkeypatch.setattr(socket, "create_connection", no_network)
    (tmp_path / "checkpoint").mkdir()
    for name in (str(tmp_path / "checkpoint"), tmp_path / "checkpoint", "./missing", None):
        assert check_hub_model("model", name) is False
