"""The user-facing scripts, run as a new user runs them (bash, env vars, KEY VALUE overrides),
on fake data with tiny CLIPs: base-to-novel, cross-dataset and domain generalisation."""
import json
import os
import subprocess
import sys

import pytest

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the script tests)")

from tests.fake_data import make_dtd, make_imagenet, make_imagenet_a  # noqa: E402
from tests.pyserver import python_server  # noqa: E402
from tests.script_kit import results, run  # noqa: E402

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "16", "OPTIM.MAX_EPOCH", "2"]


@pytest.fixture(scope="module")
def env(tmp_path_factory, clip_files):
    root = tmp_path_factory.mktemp("scripts")
    data = root / "data"
    make_dtd(str(data), n_classes=5, per_class=10)
    make_imagenet(str(data), n_classes=5, per_class=6)
    make_imagenet_a(str(data), n_classes=3, per_class=3)
    # PYTHON forks this process (tests/pyserver.py); one test below runs the real interpreter
    return {**os.environ, "DATA": str(data), "OUTPUT": str(root / "output"), "PYTHON": python_server(str(root))}


def teacher_opts(clip_files, *extra):
    """TEACHER_OPTS for a teacher a stage-2 script trains first (no spaces inside values)."""
    return " ".join(["INPUT.SIZE", "(32,32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
                     "DATALOADER.TEST.BATCH_SIZE", "16", "OPTIM.MAX_EPOCH", "2", "MODEL.BACKBONE.NAME",
                     clip_files["teacher"], "DATASET.NUM_SHOTS", "4", "TRAINER.PROMPTSRC.PREC", "fp32", *extra])


def test_base2new_one_command_trains_the_missing_teacher_first(env, clip_files):
    env = {**env, "TEACHER_OPTS": teacher_opts(clip_files, "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2",
                                               "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2")}
    student = TINY + ["MODEL.BACKBONE.NAME", clip_files["student"], "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2",
                      "TRAINER.PROMPTKD.PREC", "fp32"]
    out = run("base2new_train.sh", "dtd", "1", *student, env=env)
    assert sum("training the teacher first" in line for line in out.splitlines()) == 1
    teacher, r = results(out)
    assert teacher["trainer"] == "PromptKDTeacher" and r["trainer"] == "PromptKD" and {"base", "novel", "hm"} <= set(r)
    assert "TRAINER.PROMPTKD.KD_WEIGHT auto -> 200 for DescribableTextures" in open(
        os.path.join(env["OUTPUT"], "base2new/promptkd/dtd/seed1/log.txt")).read()
    # the teacher of seed 1 now exists: an explicit teacher run is not needed and not repeated
    out = run("teacher_train.sh", "dtd", "1", *env["TEACHER_OPTS"].split(), env=env)
    assert "Resumed from" in out and results(out)[-1]["trainer"] == "PromptKDTeacher"
    table = subprocess.run([sys.executable, "-m", "promptkd", "results", os.path.join(env["OUTPUT"], "base2new"),
                            "--seeds", "1"], cwd=ROOT, capture_output=True, text=True)
    assert table.returncode == 0 and "DTD" in table.stdout and "PromptKD" in table.stdout
    missing = subprocess.run(["bash", os.path.join(ROOT, "scripts/promptkd/base2new_train.sh"), "dtd", "1", *student],
                             env={**env, "TEACHER_DIR": "/nonexistent/export", "PYTHON": sys.executable},
                             capture_output=True, text=True)  # the real interpreter, as a user runs it
    assert missing.returncode == 2 and "error: No class-vector file at /nonexistent/export" in missing.stderr
    assert "Traceback" not in missing.stderr


def test_cross_dataset_and_domain_generalisation_scripts(env, clip_files):
    env = {**env, "TEACHER_OPTS": teacher_opts(clip_files),
           "XD_TEACHER_OPTS": " ".join(["INPUT.SIZE", "(32,32)", "MODEL.BACKBONE.NAME", clip_files["teacher"],
                                        "DATALOADER.NUM_WORKERS", "0", "TEST.NO_TEST", "True"])}
    student = TINY + ["MODEL.BACKBONE.NAME", clip_files["student"], "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2",
                      "TRAINER.PROMPTKD.PREC", "fp32"]
    for dataset, name in (("dtd", "DescribableTextures"), ("imagenet", "ImageNet"), ("imagenet_a", "ImageNetA")):
        out = run("xd_train.sh", dataset, "1", *student, env=env)
        # the ImageNet teacher is trained once, by the first command that needs it
        assert ("training it first" in out) == (dataset == "dtd")
        if dataset == "dtd":
            assert results(out)[0]["trainer"] == "PromptKDTeacher" and results(out)[0]["protocol"] == "cross"
        r = results(out)[-1]
        assert (r["trainer"], r["dataset"], r["protocol"]) == ("PromptKD", name, "cross")
    assert os.path.isfile(os.path.join(env["OUTPUT"], "cross/promptkd_teacher/imagenet/seed1/export/class_vectors_ImageNetA.pt"))


def test_unknown_dataset_is_named(env):
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts/promptkd/base2new_train.sh"), "imagenet21k", "1"],
                          env=env, capture_output=True, text=True)
    assert proc.returncode == 2 and "unknown dataset 'imagenet21k'" in proc.stderr


def test_baseline_scripts_and_comparison_table(env, clip_files):
    tiny = TINY + ["MODEL.BACKBONE.NAME", clip_files["teacher"], "DATASET.NUM_SHOTS", "4"]
    out = run("../coop/base2new_train.sh", "dtd", "1", *tiny, "TRAINER.COOP.PREC", "fp32", env=env)
    assert results(out)[-1]["trainer"] == "CoOp"
    out = run("../zsclip/base2new_train.sh", "dtd", "1", *tiny, "TRAINER.ZEROSHOT.PREC", "fp32", env=env)
    assert results(out)[-1]["trainer"] == "ZeroshotCLIP"
    out = run("../maple/xd_train.sh", "imagenet", "1", *tiny, "TRAINER.MAPLE.PROMPT_DEPTH", "2", env=env)
    out = run("../maple/xd_train.sh", "dtd", "1", *tiny, "TRAINER.MAPLE.PROMPT_DEPTH", "2", env=env)
    r = results(out)[-1]
    assert (r["trainer"], r["dataset"], r["protocol"]) == ("MaPLe", "DescribableTextures", "cross")
    table = subprocess.run([sys.executable, "-m", "promptkd", "results", os.path.join(env["OUTPUT"], "base2new"),
                            "--seeds", "1", "--plot"], cwd=ROOT, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "CoOp" in table.stdout and "ZeroshotCLIP" in table.stdout
    assert os.path.getsize(os.path.join(env["OUTPUT"], "base2new", "results.png")) > 0


def test_scripts_and_plain_train_py_distil_at_the_same_kd_weight(tmp_path, monkeypatch):
    """The scripts pass no KD_WEIGHT: train.py resolves the config's auto, so a script run and a
    plain `python train.py` with the shipped config agree (DTD 200, ImageNet 1000), and a
    KD_WEIGHT given to a script wins. PYTHON is a stub that records the train.py command lines."""
    from promptkd.trainers import train
    from promptkd.trainers.config import kd_weight
    record, stub = tmp_path / "calls.jsonl", tmp_path / "python"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    teacher = tmp_path / "teacher_run"
    (teacher / "export").mkdir(parents=True)
    for name in ("ImageNet", "DescribableTextures"):
        (teacher / "export" / f"class_vectors_{name}.pt").write_text("")
    environ = {**os.environ, "PYTHON": str(stub), "DATA": str(tmp_path), "OUTPUT": str(tmp_path / "out"),
               "TEACHER_DIR": str(teacher / "export"), "TEACHER_RUN": str(teacher)}

    def script_args(script, dataset, *extra):
        record.unlink(missing_ok=True)
        proc = subprocess.run(["bash", os.path.join(ROOT, "scripts/promptkd", script), dataset, "1", *extra],
                              env=environ, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, proc.stderr
        calls = [json.loads(line) for line in record.read_text().splitlines()]
        assert len(calls) == 1 and calls[0][:3] == ["-m", "promptkd", "train"]
        return calls[0][3:]

    monkeypatch.chdir(ROOT)  # the scripts' config paths are relative to the repository
    weight = lambda argv: kd_weight(train.setup_cfg(train.parse_args(argv)))[0]  # noqa: E731
    for dataset, expected in (("dtd", 200.0), ("imagenet", 1000.0)):
        plain = weight(["--root", str(tmp_path), "--trainer", "PromptKD", "--dataset-config-file",
                        f"configs/datasets/{dataset}.yaml", "--config-file",
                        "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml"])
        assert plain == expected
        for script in ("base2new_train.sh", "xd_train.sh"):
            argv = script_args(script, dataset)
            assert "TRAINER.PROMPTKD.KD_WEIGHT" not in argv  # nothing computed in bash
            assert weight(argv) == plain, (script, dataset)
            assert weight(script_args(script, dataset, "TRAINER.PROMPTKD.KD_WEIGHT", "500")) == 500.0


def test_few_shot_scripts_and_accuracy_against_shots(env, clip_files):
    """The few-shot protocol: a baseline (CoOp) and the PromptKD pipeline (a K-shot teacher of all
    classes, then a student on the unlabelled pool) at K = 1 and 2, then `promptkd results` shows
    accuracy against shots as a table and a plot; each run's record says protocol and shots."""
    output = os.path.join(env["OUTPUT"], "fs")
    env = {**env, "OUTPUT": output, "TEACHER_OPTS": teacher_opts(clip_files, "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2",
                                                                 "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2")}
    student = TINY + ["MODEL.BACKBONE.NAME", clip_files["student"], "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2",
                      "TRAINER.PROMPTKD.PREC", "fp32"]
    coop = TINY + ["MODEL.BACKBONE.NAME", clip_files["teacher"], "TRAINER.COOP.PREC", "fp32"]
    for shots in ("1", "2"):
        out = run("../coop/few_shot.sh", "dtd", "1", shots, *coop, env=env)
        assert (results(out)[-1]["trainer"], results(out)[-1]["protocol"]) == ("CoOp", "few_shot")
        out = run("few_shot.sh", "dtd", "1", shots, *student, env=env)
        assert sum(f"training the {shots}-shot teacher first" in line for line in out.splitlines()) == 1
        teacher, r = results(out)
        assert (teacher["trainer"], teacher["protocol"], r["trainer"], r["protocol"]) == \
            ("PromptKDTeacher", "few_shot", "PromptKD", "few_shot") and "accuracy" in r
        for method in ("coop", "promptkd_teacher", "promptkd"):
            record = json.load(open(os.path.join(output, "few_shot", method, "dtd", f"shots{shots}", "seed1", "run.json")))
            assert (record["protocol"], record["labelled_shots"]) == ("few_shot", int(shots)), method
            assert record["train_classes"] == "all"
        assert record["num_shots"] == 0 and record["teacher_data"]["num_shots"] == int(shots)  # the student
    table = subprocess.run([sys.executable, "-m", "promptkd", "results", os.path.join(output, "few_shot"),
                            "--seeds", "1", "--plot"], cwd=ROOT, capture_output=True, text=True)
    assert table.returncode == 0, table.stderr
    assert "## Few-shot: accuracy against shots" in table.stdout
    header = next(line for line in table.stdout.splitlines() if line.startswith("| Method") and "-shot" in line)
    assert [c.strip() for c in header.strip("|").split("|")] == ["Method", "Dataset", "1-shot", "2-shot"]
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:2] for line in table.stdout.splitlines()
            if line.startswith("| ") and "DTD" in line}
    assert {("CoOp", "DTD"), ("PromptKD", "DTD"), ("PromptKDTeacher", "DTD")} <= rows
    assert os.path.getsize(os.path.join(output, "few_shot", "results.png")) > 0
    # a few-shot student refuses a teacher of another protocol, naming it and the script that trains one
    run("teacher_train.sh", "dtd", "1", *env["TEACHER_OPTS"].split(), env=env)
    b2n_teacher = os.path.join(output, "base2new/promptkd_teacher/dtd/seed1/export")
    bad = subprocess.run(["bash", os.path.join(ROOT, "scripts/promptkd/few_shot.sh"), "dtd", "1", "3", *student],
                         env={**env, "TEACHER_DIR": b2n_teacher}, capture_output=True, text=True)
    assert bad.returncode == 2 and f"the teacher at {b2n_teacher} was trained under protocol base2novel" in bad.stderr
    assert "scripts/promptkd/few_shot.sh DATASET SEED K trains one" in bad.stderr
    bad = subprocess.run(["bash", os.path.join(ROOT, "scripts/coop/few_shot.sh"), "dtd", "1", "0"],
                         env=env, capture_output=True, text=True)
    assert bad.returncode == 2 and "SHOTS is '0'" in bad.stderr


@pytest.mark.parametrize("method", sorted(m for m in os.listdir(os.path.join(ROOT, "scripts"))
                                          if m not in ("promptkd", "zsclip")
                                          and os.path.isfile(os.path.join(ROOT, "scripts", m, "base2new_train.sh"))))
def test_every_baseline_has_a_few_shot_script(method, tmp_path):
    """Every trained baseline has scripts/<method>/few_shot.sh; it runs `promptkd train` on K shots
    of all classes under the few-shot protocol with a config that exists (PYTHON records argv)."""
    record, stub = tmp_path / "calls.jsonl", tmp_path / "python"
    stub.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"open({str(record)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    stub.chmod(0o755)
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", method, "few_shot.sh"), "dtd", "2", "8"],
                          env={**os.environ, "PYTHON": str(stub), "OUTPUT": str(tmp_path / "out")},
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    (argv,) = [json.loads(line) for line in record.read_text().splitlines()]
    pairs = dict(zip(argv[3::1], argv[4::1]))
    assert argv[:3] == ["-m", "promptkd", "train"] and os.path.isfile(os.path.join(ROOT, pairs["--config-file"]))
    assert pairs["--output-dir"].endswith(f"few_shot/{pairs['--trainer'].lower()}/dtd/shots8/seed2")
    assert (pairs["DATASET.NUM_SHOTS"], pairs["DATASET.SUBSAMPLE_CLASSES"], pairs["TRAINER.PROTOCOL"]) == \
        ("8", "all", "few_shot")
