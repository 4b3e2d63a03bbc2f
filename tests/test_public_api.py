"""The front door: everything a README example imports comes from `prunefuse_hf`, documented in the HF format."""

import inspect

import pytest

import prunefuse_hf

FRONT_DOOR = ["PruneFuseTrainer", "PruneFuseConfig", "DistillationTrainer", "DataPool", "prune_model",
              "fuse_into_dense", "PruningPlan", "score_pool", "get_strategy", "load_subset", "push_run",
              "load_image_dataset", "read_labels", "LabelStore"]  # fmt: skip


def test_the_names_users_need_import_from_the_package():
    assert set(FRONT_DOOR) <= set(prunefuse_hf.__all__)
    for name in prunefuse_hf.__all__:
        assert getattr(prunefuse_hf, name) is not None


@pytest.mark.parametrize("name", prunefuse_hf.__all__)
def test_every_exported_name_has_an_hf_format_docstring_with_an_example(name):
    doc = inspect.getdoc(getattr(prunefuse_hf, name)) or ""
    assert "Args:" in doc or "Parameters:" in doc, name
    assert "Example:" in doc and ">>> " in doc, name
