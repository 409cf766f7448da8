"""PromptKD as a plugin inside a host codebase, end to end through the host's own train.py.

The host is tests/host_codebase: a small CoOp-family checkout written for these tests (its own
`clip` package shadowing the installed one, CoOp-format loaders under CoOp's names, a CoOp whose
model returns the loss while training and logits otherwise, config keys of other types than
ours) with the two documented plugin lines in its train.py. Every run is a real
`python train.py ...` with the host's root as working directory, so that, as in a real checkout,
the host's root is sys.path[0] and its `clip`, `datasets` and `trainers` shadow installed
packages of those names; a fork of this process (tests/cli.py) could not show that. The host is
copied to a temporary folder first, so nothing is written into the repository.
"""
import json
import os
import re
import shutil
import subprocess
import sys

import pytest

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from tests.fake_data import make_oxford_pets  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FIXTURE = os.path.join(ROOT, "tests", "host_codebase")
CONFIGS = os.path.join(ROOT, "configs")
TEACHER_YAML = os.path.join(CONFIGS, "trainers", "PromptKDTeacher", "demo_tiny.yaml")
STUDENT_YAML = os.path.join(CONFIGS, "trainers", "PromptKD", "demo_tiny.yaml")
HOST_PETS = os.path.join("configs", "datasets", "oxford_pets.yaml")
HOST_COOP = os.path.join("configs", "trainers", "CoOp", "tiny_ep2.yaml")
HOST_COOP_WARMUP = os.path.join("configs", "trainers", "CoOp", "tiny_ep2_warmup.yaml")
ACCURACY = re.compile(r"^\* accuracy: ([0-9.]+)%$", re.M)
# The host's loaders print this when they keep the base half (ours log "SUBSAMPLE BASE CLASSES: 3 of 5"):
# the run's dataset was served by the host's loader.
HOST_LOADER_BASE = "SUBSAMPLE BASE CLASSES!"


@pytest.fixture(scope="module")
def host(tmp_path_factory):
    """A copy of the fixture host (its root becomes sys.path[0] of its train.py)."""
    root = tmp_path_factory.mktemp("checkout") / "host"
    shutil.copytree(FIXTURE, root, ignore=shutil.ignore_patterns("__pycache__"))
    return root


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    make_oxford_pets(str(root), n_classes=5, per_class=9)  # base = 3 breeds, new = 2
    return str(root)


def run_host(host, argv, timeout=300, **env):
    """`python train.py ARGV` in the host's root; stdout and stderr together in `.out`."""
    proc = subprocess.run([sys.executable, "train.py", *map(str, argv)], cwd=host, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
                                                "PYTHONDONTWRITEBYTECODE": "1", **env})
    proc.out = proc.stdout + proc.stderr
    return proc


def ok(proc):
    assert proc.returncode == 0, proc.out[-4000:]
    return proc


def accuracies(proc):
    return [float(a) for a in ACCURACY.findall(proc.stdout)]


def result_lines(out):
    """The RESULT records of a run's log.txt."""
    with open(os.path.join(out, "log.txt"), encoding="utf-8") as f:
        return [json.loads(line.split("RESULT ", 1)[1]) for line in f if "RESULT {" in line]


def coop_args(data, clip_file, out, config=HOST_COOP, flags=()):
    """The host's CoOp on the 4-shot base breeds (`flags`: more options before the KEY VALUE pairs)."""
    return ["--root", data, "--seed", "1", "--trainer", "CoOp", "--dataset-config-file", HOST_PETS,
            "--config-file", config, "--output-dir", out, *flags, "MODEL.BACKBONE.NAME", clip_file,
            "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base"]


TINY = ["DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "32"]


def teacher_args(data, clip_files, out):
    """Our stage 1 on the tiny teacher CLIP, 4-shot base breeds, with the demo's settings."""
    return ["--root", data, "--seed", "1", "--trainer", "PromptKDTeacher", "--dataset-config-file", HOST_PETS,
            "--config-file", TEACHER_YAML, "--output-dir", out, "MODEL.BACKBONE.NAME", clip_files["teacher"],
            *TINY, "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base"]


def student_args(data, clip_files, out, teacher_dir, *extra):
    """Our stage 2 on the tiny student CLIP, label-free on every training image."""
    return ["--root", data, "--seed", "1", "--trainer", "PromptKD", "--dataset-config-file", HOST_PETS,
            "--config-file", STUDENT_YAML, "--output-dir", out, "MODEL.BACKBONE.NAME", clip_files["student"],
            *TINY, "OPTIM.MAX_EPOCH", "1", "DATASET.NUM_SHOTS", "0", "TRAINER.PROMPTKD.TEACHER_DIR", teacher_dir,
            *extra]


# --- the host alone, and the host's CoOp beside our trainers ---------------------------------

@pytest.mark.slow
def test_the_fixture_host_alone_trains_its_coop(host, data, clip_files, tmp_path):
    """Without the plugin lines the fixture is a working host: its CoOp trains through its own
    clip package and loaders and Dassl prints the accuracy (so the tests below test the plugin)."""
    out = tmp_path / "coop"
    proc = ok(run_host(host, coop_args(data, clip_files["teacher"], out), HOST_WITHOUT_PLUGIN="1"))
    assert len(accuracies(proc)) == 1 and HOST_LOADER_BASE in proc.stdout
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()
    assert not (out / "run.json").exists()  # nothing of ours ran


@pytest.fixture(scope="module")
def host_coop_run(host, data, clip_files, tmp_path_factory):
    """The host's CoOp, 2 epochs on the 4-shot base breeds, with the plugin lines in train.py."""
    out = tmp_path_factory.mktemp("host_coop") / "coop" / "oxford_pets" / "seed1"
    return out, run_host(host, coop_args(data, clip_files["teacher"], out))


@pytest.mark.slow
def test_the_host_coop_trains_and_evaluates_beside_the_plugin(host_coop_run):
    """With the plugin lines the host's CoOp (registered under the name our baseline has) still
    trains on the host's loader and Dassl evaluates it."""
    out, proc = host_coop_run
    ok(proc)
    assert len(accuracies(proc)) == 1 and HOST_LOADER_BASE in proc.stdout
    assert (out / "prompt_learner" / "model.pth.tar-2").is_file()


PROBE = r"""
import glob, json, os, sys
import train  # the host's train.py: its datasets, trainers and the plugin import
from dassl.config import get_cfg_default
cfg = get_cfg_default()
train.extend_cfg(cfg)
report = {"types": {key: type(cfg.TRAINER.PROMPTSRC[key]).__name__
                    for key in ("TEXT_LOSS_WEIGHT", "IMAGE_LOSS_WEIGHT", "GPA_MEAN", "GPA_STD")},
          "values": [cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT, cfg.TRAINER.COOP.N_CTX, cfg.TRAINER.COOP.PREC],
          "merge_errors": {}}
from dassl.data.datasets import DATASET_REGISTRY
from dassl.engine import TRAINER_REGISTRY
report["registered"] = {registry: {name: reg.get(name).__module__ for name in reg.registered_names()}
                        for registry, reg in (("trainers", TRAINER_REGISTRY), ("datasets", DATASET_REGISTRY))}
for path in sorted(glob.glob(os.path.join(sys.argv[1], "**", "*.yaml"), recursive=True)):
    try:
        cfg.clone().merge_from_file(path)
    except Exception as err:
        report["merge_errors"][os.path.relpath(path, sys.argv[1])] = f"{type(err).__name__}: {err}"
try:
    from promptkd.backbones import load_clip
    model = load_clip(sys.argv[2])  # our backbone loading, with the host's clip on sys.path[0]
    import inspect
    report["our_clip"] = inspect.getfile(type(model))
except Exception as err:
    report["our_clip"] = f"{type(err).__name__}: {err}"
import clip
report["import_clip"] = clip.__file__
import torch
try:
    clip.build_model(torch.load(sys.argv[2], map_location="cpu"))
    report["host_build_model"] = "built without design_details"
except TypeError as err:
    report["host_build_model"] = f"TypeError: {err}"
print("PROBE " + json.dumps(report))
"""


@pytest.fixture(scope="module")
def probe(host, clip_files):
    """One host process (root = sys.path[0], as `python train.py` has it) that imports the
    host's train.py with the plugin line, runs its extend_cfg, merges each of our YAML files
    into a copy of that config with plain yacs, loads a CLIP through our backbones, then
    imports `clip`."""
    proc = subprocess.run([sys.executable, "-c", PROBE, CONFIGS, clip_files["teacher"]], cwd=host,
                          capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONDONTWRITEBYTECODE": "1"})
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return json.loads(proc.stdout.split("PROBE ", 1)[1])


@pytest.mark.slow
def test_the_host_names_stay_the_host_and_ours_fill_the_free_ones(probe):
    trainers, datasets = probe["registered"]["trainers"], probe["registered"]["datasets"]
    assert trainers["CoOp"] == "trainers.coop"  # the host's
    assert trainers["PromptKDTeacher"].startswith("promptkd.") and trainers["PromptKD"].startswith("promptkd.")
    assert trainers["PKD.CoOp"].startswith("promptkd.")  # our baseline, under the documented prefix
    assert {datasets[n] for n in ("OxfordPets", "Caltech101", "DescribableTextures")} == \
        {"datasets.oxford_pets", "datasets.caltech101", "datasets.dtd"}  # the host's loaders
    assert datasets["StanfordCars"].startswith("promptkd.") and datasets["ImageFolder"].startswith("promptkd.")


@pytest.mark.slow
def test_our_yaml_files_merge_into_the_host_config_and_its_keys_keep_their_types(probe):
    assert probe["merge_errors"] == {}
    assert probe["types"] == {"TEXT_LOSS_WEIGHT": "int", "IMAGE_LOSS_WEIGHT": "int", "GPA_MEAN": "int",
                              "GPA_STD": "int"}
    assert probe["values"] == [25, 16, "fp16"]  # the host's defaults, not ours


@pytest.mark.slow
def test_import_clip_in_the_host_stays_the_host_clip_and_ours_loads_beside_it(host, probe):
    assert probe["import_clip"] == str(host / "clip" / "__init__.py")
    assert "design_details" in probe["host_build_model"] and probe["host_build_model"].startswith("TypeError")
    # our backbone is the installed package's model, not the host's modified one
    assert os.path.isfile(probe["our_clip"]) and not probe["our_clip"].startswith(str(host) + os.sep), \
        probe["our_clip"]


# --- our teacher and student through the host's train.py -------------------------------------

@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return tmp_path_factory.mktemp("runs")


@pytest.fixture(scope="module")
def teacher_run(host, data, clip_files, runs):
    out = runs / "base2new" / "teacher" / "oxford_pets" / "seed1"
    return out, run_host(host, teacher_args(data, clip_files, out))


@pytest.fixture(scope="module")
def student_run(host, data, clip_files, runs, teacher_run):
    out = runs / "base2new" / "promptkd" / "oxford_pets" / "seed1"
    return out, run_host(host, student_args(data, clip_files, out, teacher_run[0] / "export"))


@pytest.mark.slow
def test_our_teacher_then_our_student_through_the_host_train_py(teacher_run, student_run):
    """Stage 1 on the host's loader (base breeds), its export, stage 2 from that export: each
    prints our RESULT line and writes run.json / result.json, as under our own train.py."""
    for (out, proc), trainer in ((teacher_run, "PromptKDTeacher"), (student_run, "PromptKD")):
        ok(proc)
        assert "RESULT {" in proc.out, f"{trainer}: no RESULT line on the console"
        (result,) = result_lines(out)
        assert {"base", "novel", "hm"} <= set(result) and result["trainer"] == trainer
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
        finished = json.loads((out / "result.json").read_text(encoding="utf-8"))
        assert (run["trainer"], run["dataset"]) == (trainer, "OxfordPets") and finished["run_id"] == run["run_id"]
    assert HOST_LOADER_BASE in teacher_run[1].stdout  # the host's loader served our teacher
    assert (teacher_run[0] / "export").is_dir()


@pytest.mark.slow
def test_promptkd_results_lists_the_runs_made_through_the_host(teacher_run, student_run, runs, tmp_path):
    from tests.cli import promptkd

    for _, proc in (teacher_run, student_run):
        ok(proc)
    proc = promptkd("results", [runs / "base2new", "--seeds", "1", "--out", tmp_path / "table"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    for row in ("| PromptKDTeacher ", "| PromptKD "):
        assert row in table, (row, table)


# --- the host's CoOp as student and as teacher -------------------------------------------------

@pytest.mark.slow
def test_the_host_coop_distils_as_a_student(host, data, clip_files, runs, teacher_run, tmp_path):
    """TRAINER.PROMPTKD.STUDENT CoOp is the host's CoOp (ours cannot register under that name):
    its own build_model (through the host's clip) makes the student, which learns its context
    label-free from our teacher's export. Its optimiser and scheduler are the host's (Dassl's
    warm-up scheduler, so the host's train.py asks for the opt-in fix)."""
    from tests.cli import promptkd

    ok(teacher_run[1])
    out = runs / "base2new" / "promptkd_to_coop" / "oxford_pets" / "seed1"
    proc = ok(run_host(host, student_args(data, clip_files, out, teacher_run[0] / "export",
                                          "TRAINER.PROMPTKD.STUDENT", "CoOp", "TRAINER.COOP.N_CTX", "4",
                                          "TRAINER.COOP.PREC", "fp32"), HOST_FIX_DASSL_WARMUP="1"))
    # printed by the host's load_clip_to_cpu: the host's trainer built the student
    assert f"Loading CLIP (backbone: {clip_files['student']})" in proc.stdout
    assert "RESULT {" in proc.out
    (result,) = result_lines(out)
    assert {"base", "novel", "hm"} <= set(result)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert (run["student"], run["labels_used"]) == ("CoOp", False) and (out / "result.json").is_file()
    table = promptkd("results", [out, "--seeds", "1", "--out", tmp_path / "table"])
    assert table.returncode == 0, table.stderr[-2000:]
    assert "PromptKD→CoOp" in (tmp_path / "table.md").read_text(encoding="utf-8")


@pytest.mark.slow
def test_a_finished_host_coop_run_is_a_teacher(host, data, clip_files, runs, host_coop_run, tmp_path):
    """TRAINER.PROMPTKD.TEACHER_DIR = the output folder of the host's CoOp run (trained on the
    base breeds, its Dassl checkpoints only), TEACHER_TRAINER its registered name, TEACHER_CONFIG
    the YAML it was trained with: our student distils from it without a conversion by hand."""
    ok(host_coop_run[1])
    out = runs / "base2new" / "promptkd_from_coop" / "oxford_pets" / "seed1"
    proc = ok(run_host(host, student_args(
        data, clip_files, out, host_coop_run[0], "TRAINER.PROMPTKD.TEACHER_TRAINER", "CoOp",
        "TRAINER.PROMPTKD.TEACHER_CONFIG", host / HOST_COOP, "TRAINER.PROMPTKD.TEACHER_BACKBONE", clip_files["teacher"])))
    assert "RESULT {" in proc.out
    (result,) = result_lines(out)
    assert {"base", "novel", "hm"} <= set(result)
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert "trainers.coop.CoOp" in json.dumps(run["teacher"])  # the host's class was the teacher


# --- Dassl's warm-up scheduler on current torch ----------------------------------------------

def torch_scheduler_takes_verbose() -> bool:
    """Whether this torch's LRScheduler still takes Dassl's `verbose` argument (older releases)."""
    import inspect

    from torch.optim.lr_scheduler import LRScheduler
    return "verbose" in inspect.signature(LRScheduler.__init__).parameters


@pytest.mark.slow
def test_dassl_warmup_fails_on_current_torch_and_the_opt_in_fix_runs_the_host(host, data, clip_files, tmp_path):
    """The hosts' configs warm up for one epoch. On current torch Dassl's warm-up scheduler
    passes `verbose` to LRScheduler.__init__, which no longer takes it; the plugin's
    fix_dassl_warmup_scheduler(), called by the host's train.py only when it asks for it,
    lets the host's CoOp warm up and train (on an older torch it has nothing to fix)."""
    if not torch_scheduler_takes_verbose():
        broken = run_host(host, coop_args(data, clip_files["teacher"], tmp_path / "plain", HOST_COOP_WARMUP),
                          HOST_WITHOUT_PLUGIN="1")
        assert broken.returncode != 0 and "LRScheduler.__init__() takes" in broken.out, broken.out[-2000:]
    fixed = ok(run_host(host, coop_args(data, clip_files["teacher"], tmp_path / "fixed", HOST_COOP_WARMUP),
                        HOST_FIX_DASSL_WARMUP="1"))
    assert len(accuracies(fixed)) == 1
    # the warm-up epoch runs at WARMUP_CONS_LR, then the cosine schedule from OPTIM.LR
    assert "lr 1.0000e-05" in fixed.stdout
