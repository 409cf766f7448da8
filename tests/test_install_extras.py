"""A light core with extras: what a user who installs only the core gets.

pyproject.toml's core dependencies are what training, evaluation and prediction need; export
(ONNX), shards, plots, tracking and the hub are extras, and a missing one is an error that
names its `pip install` line (promptkd/extras.py). The core-only user is simulated in a fresh
interpreter in which the extras' modules cannot be imported (tests/core_only.py).
"""
import ast
import json
import os
import re
import subprocess
import sys

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the test extra installs tomli
    import tomli as tomllib

import pytest

from promptkd import extras
from promptkd.errors import UserError
from promptkd.extras import EXTRAS, MissingExtraError, TorchTooOldError
from tests import source_kit

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CODE = ("promptkd", "trainers", "datasets")


def _project():
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        return tomllib.load(f)["project"]


def _names(requirements):
    """Distribution names of requirement strings, normalised as import names (huggingface_hub)."""
    return {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower().replace("-", "_") for r in requirements}


def test_the_extras_of_pyproject_are_those_the_code_names():
    project = _project()
    optional = project["optional-dependencies"]
    for extra, modules in EXTRAS.items():
        assert _names(optional[extra]) == set(modules), extra
    every = [r for extra in EXTRAS for r in optional[extra]]
    assert sorted(optional["all"]) == sorted(every)
    assert set(every) <= set(optional["test"]), "the tests run every optional part: the test extra installs all"
    core = _names(project["dependencies"])
    assert not core & {m for modules in EXTRAS.values() for m in modules}, "an extra's package is in the core"


def test_a_missing_extra_names_its_pip_line():
    with pytest.raises(MissingExtraError) as err:
        extras.require("promptkd_no_such_module", "export", "ONNX export", ", or use --format torchscript")
    message = str(err.value)
    assert 'pip install "promptkd-dassl[export]"' in message and 'pip install -e ".[export]"' in message
    assert message.startswith("ONNX export needs the optional package promptkd_no_such_module")
    assert message.endswith(", or use --format torchscript.")
    # a user error (reported as `error: ...` without a traceback) that callers may also catch as ImportError
    assert isinstance(err.value, UserError) and isinstance(err.value, ImportError)
    assert extras.require("json", "export", "x") is json
    with pytest.raises(ValueError, match="unknown extra 'exports'"):
        extras.install_hint("exports")


def test_a_feature_that_needs_a_newer_torch_names_both_versions(monkeypatch):
    import torch

    monkeypatch.setattr(torch, "__version__", "2.4.1+cu121")
    assert extras.torch_at_least("2.4") and not extras.torch_at_least("2.6")
    with pytest.raises(TorchTooOldError, match=r"ONNX export needs torch >= 2\.6; this environment has torch 2\.4\.1"):
        extras.require_torch("2.6", "ONNX export")
    extras.require_torch("2.4.1", "anything")
    assert extras.version_tuple("2.11.0+cu130") == (2, 11, 0) and extras.version_tuple("2.6.0a0") == (2, 6, 0)


def test_onnx_export_on_a_torch_older_than_its_exporter_needs_is_refused(monkeypatch, tmp_path):
    """torch 2.5 and 2.6 fail inside the exporter (an AttributeError converting the projector's
    BatchNorm1d); 2.4 has no dynamo exporter at all. Refused before anything is traced."""
    pytest.importorskip("onnxscript", reason="the export extra is not installed")
    import torch

    from promptkd.deploy import export_model

    monkeypatch.setattr(torch, "__version__", "2.6.0+cu124")
    with pytest.raises(TorchTooOldError, match=r"needs torch >= 2\.7; this environment has torch 2\.6\.0\+cu124\. "
                       r"Upgrade torch .*, or use --format torchscript\.$"):
        export_model.export_onnx(None, str(tmp_path / "m.onnx"))  # no model needed: refused first
    assert export_model.ONNX_MIN_TORCH == "2.7" and os.listdir(tmp_path) == []


def test_the_code_imports_the_extras_only_through_require():
    """No module imports onnx, webdataset, matplotlib, wandb... itself (at module level or in a
    function): a missing extra would be a bare ImportError instead of the pip line. (The hub
    extra's modules are also open-clip-torch's dependencies, so they are always installed.)"""
    guarded = {m for extra in ("export", "shards", "plots", "tracking") for m in EXTRAS[extra]} | {"braceexpand"}
    found = []
    for folder in CODE:
        for _, path in source_kit.modules(folder, folder):  # subpackages too
            name = os.path.relpath(path, os.path.join(ROOT, folder))
            with open(path, encoding="utf-8") as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                         else [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
                found += [f"{folder}/{name}:{node.lineno} {n}" for n in names if n.split(".")[0] in guarded]
    assert not found, found


@pytest.mark.slow
def test_core_only_trains_evaluates_predicts_and_names_the_missing_extras(clip_files, tmp_path):
    """In an interpreter without the extras' modules: a teacher and a student train and are
    evaluated, the student predicts and exports to TorchScript; `export --format onnx` and
    `results --plot` and the demo refuse naming the extra to install, before any work."""
    pytest.importorskip("dassl", reason="Dassl not installed (see README)")
    from tests.fake_data import make_dtd

    data, out = tmp_path / "data", tmp_path / "runs"
    make_dtd(str(data), n_classes=5, per_class=10)
    images = data / "dtd" / "images" / "banded"
    cfg = os.path.join(ROOT, "configs")
    tiny = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
            "DATALOADER.TEST.BATCH_SIZE", "16", "OPTIM.MAX_EPOCH", "1"]
    teacher = ["train", "--root", data, "--seed", "1", "--trainer", "PromptKDTeacher",
               "--dataset-config-file", f"{cfg}/datasets/dtd.yaml",
               "--config-file", f"{cfg}/trainers/PromptKDTeacher/vit_l14_c2_ep20_batch8_4+4ctx.yaml",
               "--output-dir", out / "teacher", "MODEL.BACKBONE.NAME", clip_files["teacher"], *tiny,
               "TRAINER.PROMPTSRC.PREC", "fp32", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base",
               "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"]
    student = ["train", "--root", data, "--seed", "1", "--trainer", "PromptKD",
               "--dataset-config-file", f"{cfg}/datasets/dtd.yaml",
               "--config-file", f"{cfg}/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml",
               "--output-dir", out / "student", "MODEL.BACKBONE.NAME", clip_files["student"], *tiny,
               "TRAINER.PROMPTKD.PREC", "fp32", "DATASET.NUM_SHOTS", "0",
               "TRAINER.PROMPTKD.TEACHER_DIR", out / "teacher" / "export", "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2"]
    commands = [teacher, student,
                ["predict", out / "student", images, "--topk", "1", "--out", tmp_path / "pred.csv"],
                ["export", out / "student", tmp_path / "s.pt", "--format", "torchscript"],
                ["export", out / "student", tmp_path / "s.onnx", "--format", "onnx"],
                ["results", out, "--seeds", "1", "--out", tmp_path / "table", "--plot"],
                ["demo", tmp_path / "demo"]]
    argv = [sys.executable, "-m", "tests.core_only", str(tmp_path / "result.json")]
    for command in commands:
        argv += [*map(str, command), "--then"]
    proc = subprocess.run(argv[:-1], capture_output=True, text=True, timeout=600, cwd=ROOT,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(tmp_path / "result.json", encoding="utf-8") as f:
        result = json.load(f)
    codes = [(r["argv"][0], r["code"], r["error"]) for r in result["results"]]
    assert [c[1] for c in codes[:4]] == [0, 0, 0, 0], codes
    assert os.path.isfile(out / "student" / "export" / "predictor.pt") and os.path.getsize(tmp_path / "s.pt") > 0
    with open(tmp_path / "pred.csv", encoding="utf-8") as f:
        assert len(f.read().splitlines()) == 1 + 10  # a header and the 10 images of the class
    (_, onnx_code, onnx_error), (_, plot_code, plot_error), (_, demo_code, demo_error) = codes[4:]
    assert onnx_code == 2 and 'pip install "promptkd-dassl[export]"' in onnx_error, onnx_error
    assert "use --format torchscript" in onnx_error and not os.path.exists(tmp_path / "s.onnx")
    assert plot_code == 2 and 'pip install "promptkd-dassl[plots]"' in plot_error, plot_error
    assert not os.path.exists(tmp_path / "table.csv"), "--plot without matplotlib refuses before any work"
    assert demo_code == 2 and "The demo (its results plot) needs" in demo_error and "[plots]" in demo_error
    assert not os.path.exists(tmp_path / "demo"), "the demo refuses before it trains"
    assert result["loaded"] == []  # nothing took a blocked module out of sys.modules and imported it
