"""Pruning a traced model to given widths and recording the kept dense indices (`pruning/widths.py`)."""

import copy

import torch
from torch import nn

from prunefuse_hf.pruning.widths import PrunedIndexRecorder, is_grouped_conv, output_width, prune_to_widths


def test_grouped_convolutions_are_told_from_plain_and_depthwise_ones():
    assert is_grouped_conv(nn.Conv2d(8, 8, 3, groups=2))
    assert not is_grouped_conv(nn.Conv2d(8, 8, 3))
    assert not is_grouped_conv(nn.Conv2d(8, 8, 3, groups=8))  # depthwise
    assert not is_grouped_conv(nn.Linear(8, 8))
    assert (output_width(nn.Conv2d(3, 5, 1)), output_width(nn.Linear(3, 7))) == (5, 7)


def test_removals_are_replayed_in_order_against_the_dense_size():
    model = nn.Sequential(nn.Linear(4, 8), nn.Linear(8, 2))
    recorder = PrunedIndexRecorder(model)
    # Positions refer to the tensor as it is when each group is pruned: first 1 and 3 of 8, then 0 of the 6 left.
    recorder.removals[("0", "out")] += [[1, 3], [0]]
    recorder.removals[("1", "in")] += [[1, 3], [0]]
    dense = model.state_dict()
    surrogate = {"0.weight": torch.empty(5, 4), "0.bias": torch.empty(5), "1.weight": torch.empty(2, 5)}
    surrogate["1.bias"] = torch.empty(2)
    kept = recorder.kept_indices(dense, surrogate)
    assert kept == {
        "0.weight": {0: [2, 4, 5, 6, 7]},
        "0.bias": {0: [2, 4, 5, 6, 7]},
        "1.weight": {1: [2, 4, 5, 6, 7]},
    }


def test_pruned_tensors_are_the_dense_ones_at_the_recorded_indices():
    torch.manual_seed(0)
    dense = nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, groups=2), nn.Conv2d(8, 5, 1)
    ).eval()
    working = copy.deepcopy(dense)
    recorder = PrunedIndexRecorder(working)
    prune_to_widths(
        working,
        recorder,
        {"0": 4, "3": 4, "4": 5},
        {"input": torch.randn(1, 3, 12, 12)},
        ignored_layers=[working[4]],
    )
    assert (working[0].out_channels, working[3].out_channels, working[4].out_channels) == (4, 4, 5)
    kept = recorder.kept_indices(dense.state_dict(), working.state_dict())
    for name, tensor in working.state_dict().items():
        index = tuple(
            torch.as_tensor(kept.get(name, {}).get(dim, range(size))).view(
                [-1 if d == dim else 1 for d in range(tensor.ndim)]
            )
            for dim, size in enumerate(dense.state_dict()[name].shape)
        )
        assert torch.equal(dense.state_dict()[name][index], tensor), name
    # The grouped convolution keeps the same positions in both groups of 4.
    out = kept["3.weight"][0]
    assert [i % 4 for i in out[:2]] == [i % 4 for i in out[2:]]
