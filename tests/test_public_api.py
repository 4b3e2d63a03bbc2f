"""The front door: everything a README example imports comes from `prunefuse_hf`, documented in the HF format."""

import doctest
import importlib
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


# Examples that build everything they use run as doctests; the others need a run or a Hub repo (they are shown
# in the README's flows, which the trainer and Hub tests cover).
SELF_CONTAINED_EXAMPLES = [
    "prunefuse_hf.PruningPlan",
    "prunefuse_hf.DistillationTrainer",
    "prunefuse_hf.score_pool",
    "prunefuse_hf.keep_freed_memory",
    "prunefuse_hf.data.preprocessing.ImagePreprocessor",
    "prunefuse_hf.data.loading.validate_image_dataset",
    "prunefuse_hf.data.labels.resolve_class_names",
    "prunefuse_hf.data.labels.align_eval_labels",
    "prunefuse_hf.annotation.oracle.oracle_labels",
    "prunefuse_hf.data.validation.check_batchnorm_batch_sizes",
    "prunefuse_hf.data.validation.check_labeling_budget",
    "prunefuse_hf.data.images.path_of",
    "prunefuse_hf.tasks.task.CardText",
    "prunefuse_hf.tasks.detection_synthetic.drawn_items",
    "prunefuse_hf.utils.run_metrics.budget_accuracies",
    "prunefuse_hf.trainer.step_models.task_metrics",
    "prunefuse_hf.trainer.features.distillation_rows",
]


@pytest.mark.parametrize("qualified_name", SELF_CONTAINED_EXAMPLES)
def test_self_contained_examples_run(qualified_name, tmp_path, monkeypatch):
    module_name, name = qualified_name.rsplit(".", 1)
    obj = getattr(importlib.import_module(module_name), name)
    monkeypatch.chdir(tmp_path)  # examples that save write here
    # Markdown fences end an example's expected output, as a blank line does for doctest.
    doc = "\n".join(
        "" if line.strip().startswith("```") else line for line in inspect.getdoc(obj).splitlines()
    )
    test = doctest.DocTestParser().get_doctest(doc, {name: obj}, qualified_name, None, 0)
    assert test.examples, qualified_name
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    runner.run(test)
    assert runner.failures == 0, qualified_name


def _modules_after(code: str) -> set[str]:
    """The modules a fresh interpreter has imported after running `code`."""
    import json
    import subprocess
    import sys

    probe = f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def test_importing_the_package_imports_no_training_stack():
    # Names load on first use (lazy_loader), so `import prunefuse_hf` costs what Python's start costs.
    modules = _modules_after("import prunefuse_hf")
    assert not {"torch", "transformers", "datasets"} & modules
    # ...and a name still resolves to the class it always was.
    modules = _modules_after(
        "from prunefuse_hf import PruningPlan; assert PruningPlan.__module__.endswith('plan')"
    )
    assert "torch" in modules


@pytest.mark.parametrize("package", ["annotation", "data", "hub", "pruning", "selection", "trainer", "utils"])
def test_every_subpackage_exports_a_complete_sorted_all(package):
    module = importlib.import_module(f"prunefuse_hf.{package}")
    assert module.__all__ == sorted(module.__all__)
    for name in module.__all__:
        assert getattr(module, name) is not None, f"prunefuse_hf.{package}.{name}"
    assert prunefuse_hf.__all__ == sorted(prunefuse_hf.__all__)


def _modules_with_an_all() -> list[str]:
    import ast
    import pathlib

    root = pathlib.Path(prunefuse_hf.__file__).parent
    return sorted(
        ".".join(("prunefuse_hf", *path.relative_to(root).with_suffix("").parts))
        for path in root.rglob("*.py")
        if path.name != "__init__.py"
        and any(
            isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "__all__" for t in node.targets)
            for node in ast.parse(path.read_text()).body
        )
    )


@pytest.mark.parametrize("module_name", _modules_with_an_all())
def test_a_module_that_lists_its_names_lists_every_public_class_and_function_sorted(module_name):
    module = importlib.import_module(module_name)
    assert module.__all__ == sorted(module.__all__)
    defined = {
        name
        for name, obj in vars(module).items()
        if not name.startswith("_")
        and (inspect.isclass(obj) or inspect.isfunction(obj))
        and obj.__module__ == module_name
    }
    assert defined <= set(module.__all__), sorted(defined - set(module.__all__))


def test_no_module_imports_a_private_name_of_another():
    # "Rooms with doors": a name another module imports is public where it lives; `_name` means "this module only".
    import ast
    import pathlib

    root = pathlib.Path(prunefuse_hf.__file__).parent
    crossings = []
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and (
                node.level or (node.module or "").startswith("prunefuse_hf")
            ):
                crossings += [
                    f"{path.relative_to(root)}:{node.lineno}: {alias.name}"
                    for alias in node.names
                    if alias.name.startswith("_") and not alias.name.startswith("__")
                ]
    assert not crossings, crossings
