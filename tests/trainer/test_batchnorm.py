"""BatchNorm over the global batch: two processes holding half a batch each compute what one process computes."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import run_in_processes
from prunefuse_hf.trainer.batchnorm import GlobalBatchNorm, synced_batchnorm


def _half_batches(output):
    """Runs in each process: normalize this process's half of one batch, backward, record everything."""
    from accelerate import PartialState

    state = PartialState(cpu=True)
    torch.manual_seed(0)
    inputs, weights = torch.randn(8, 3, 2, 2), torch.randn(8, 3, 2, 2)
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(3))
    with synced_batchnorm(model):
        layer_type = type(model[0]).__name__
        part = inputs.chunk(state.num_processes)[state.process_index].clone().requires_grad_(True)
        output_values = model(part)
        (output_values * weights.chunk(state.num_processes)[state.process_index]).sum().backward()
        result = {"type": layer_type, "y": output_values.detach().tolist(), "x_grad": part.grad.tolist(),
                  "w_grad": model[0].weight.grad.tolist()}  # fmt: skip
    result["restored"] = type(model[0]).__name__
    result["running_mean"] = model[0].running_mean.tolist()
    result["running_var"] = model[0].running_var.tolist()
    Path(f"{output}-{state.num_processes}-{state.process_index}.json").write_text(json.dumps(result))


@pytest.mark.distributed
def test_two_half_batches_normalize_and_backpropagate_like_the_whole_batch(tmp_path):
    run_in_processes(_half_batches, str(tmp_path / "r"), num_processes=1)
    run_in_processes(_half_batches, str(tmp_path / "r"), num_processes=2)
    one = json.loads((tmp_path / "r-1-0.json").read_text())
    halves = [json.loads((tmp_path / f"r-2-{rank}.json").read_text()) for rank in (0, 1)]
    assert one["type"] == "BatchNorm2d" and halves[0]["type"] == "GlobalBatchNorm"
    assert all(h["restored"] == "BatchNorm2d" for h in halves)  # plain layers are back after training
    for key in ("y", "x_grad"):
        np.testing.assert_allclose(np.concatenate([h[key] for h in halves]), one[key], atol=1e-5)
    np.testing.assert_allclose(np.add(halves[0]["w_grad"], halves[1]["w_grad"]), one["w_grad"], atol=1e-5)
    for key in ("running_mean", "running_var"):
        np.testing.assert_allclose(halves[0][key], one[key], atol=1e-6)
        np.testing.assert_allclose(halves[1][key], one[key], atol=1e-6)


def test_one_process_and_eval_mode_are_plain_batchnorm():
    layer, plain = GlobalBatchNorm(4), torch.nn.BatchNorm2d(4)
    x = torch.randn(6, 4, 3, 3)
    assert torch.allclose(layer(x), plain(x)) and torch.allclose(layer.running_mean, plain.running_mean)
    layer.eval(), plain.eval()
    assert torch.allclose(layer(x), plain(x))
    model = torch.nn.Sequential(torch.nn.BatchNorm2d(4))
    with synced_batchnorm(model):
        assert isinstance(model[0], torch.nn.BatchNorm2d) and not isinstance(model[0], GlobalBatchNorm)
