"""Run records (promptkd.records): train.py writes run.json when a run starts and result.json
when it has evaluated; promptkd.results reads them, and gives the same tables as from the log
an earlier version would have left.

The writer's pieces (atomic write, the rank-0 gate, the code version) are tested alone; the
runs go through train.py's main() in this process, on the fake DTD with tiny CLIPs.
"""
import importlib.metadata
import json
import logging
import os
import subprocess
import sys

import pytest

from promptkd import cli, distributed, records
from promptkd import results as R


def test_atomic_write_json_replaces_whole_files_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "sub" / "run.json"
    records.atomic_write_json(path, {"format": 1, "a": [1, 2]})
    records.atomic_write_json(path, {"format": 1, "a": "new"})
    assert json.loads(path.read_text()) == {"format": 1, "a": "new"}
    with pytest.raises(ValueError):  # a value JSON cannot hold (a circular reference): the old file stays
        loop = []
        loop.append(loop)
        records.atomic_write_json(path, {"a": loop})
    assert json.loads(path.read_text()) == {"format": 1, "a": "new"}
    assert os.listdir(path.parent) == ["run.json"]


def cfg_of(tmp_path, **opts):
    from yacs.config import CfgNode
    cfg = CfgNode({"OUTPUT_DIR": str(tmp_path), "SEED": 2, "TRAINER": {"NAME": "CoOp", "MODAL": "cross"},
                   "DATASET": {"NAME": "ImageNet", "SUBSAMPLE_CLASSES": "all", "NUM_SHOTS": 16},
                   "MODEL": {"BACKBONE": {"NAME": "ViT-B/16"}}, "TEST": {"MODEL_SELECTION": "last_epoch"},
                   "INPUT": {"SIZE": (224, 224)}})
    cfg.merge_from_list([x for kv in opts.items() for x in kv])
    return cfg


def test_only_rank_0_writes(tmp_path, monkeypatch):
    """Under torchrun every rank runs the same code: the others get the record but write nothing."""
    monkeypatch.setattr(distributed, "rank", lambda: 1)
    run = records.start_run(cfg_of(tmp_path))
    records.write_result(cfg_of(tmp_path), run, {"accuracy": 50.0})
    assert run["trainer"] == "CoOp" and os.listdir(tmp_path) == []
    monkeypatch.setattr(distributed, "rank", lambda: 0)
    run = records.start_run(cfg_of(tmp_path))
    result = records.write_result(cfg_of(tmp_path), run, {"accuracy": 50.0}, epoch=5)
    assert sorted(os.listdir(tmp_path)) == ["result.json", "run.json"]
    assert json.loads((tmp_path / "result.json").read_text()) == result
    assert (result["run_id"], result["protocol"], result["seed"], result["epoch"]) == (run["run_id"], "cross", 2, 5)
    # the whole config as plain JSON; few-shot training read from DATASET.NUM_SHOTS
    saved = json.loads((tmp_path / "run.json").read_text())
    assert saved["config"]["INPUT"]["SIZE"] == [224, 224] and saved["config"]["TRAINER"]["NAME"] == "CoOp"
    assert (saved["num_shots"], saved["few_shot"], saved["train_classes"]) == (16, True, "all")


def test_a_new_run_sets_the_previous_records_aside(tmp_path):
    first = records.start_run(cfg_of(tmp_path))
    records.write_result(cfg_of(tmp_path), first, {"accuracy": 50.0})
    second = records.start_run(cfg_of(tmp_path, SEED=3))
    aside = sorted(n for n in os.listdir(tmp_path) if n not in ("run.json", "result.json"))
    assert [n.split("-")[0] for n in aside] == ["result.json", "run.json"] and (tmp_path / "run.json").exists()
    assert json.loads((tmp_path / aside[1]).read_text())["run_id"] == first["run_id"] != second["run_id"]
    assert R.parse_log(tmp_path / "run.json").status == "unfinished"  # the old result is not this run's


def test_code_version_without_git(monkeypatch):
    def no_git(*args, **kwargs):
        raise FileNotFoundError("git")
    monkeypatch.setattr(subprocess, "run", no_git)
    try:
        installed = importlib.metadata.version("promptkd")
    except importlib.metadata.PackageNotFoundError:
        installed = None
    assert records.code_version() == installed  # the package's version, or None; never an error


def test_code_version_is_git_describe_in_a_checkout():
    if not (records.REPO / ".git").exists():
        pytest.skip("not a git checkout")
    described = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=records.REPO,
                               capture_output=True, text=True).stdout.strip()
    assert records.code_version() == described != ""


def test_results_use_a_result_only_with_its_run(tmp_path):
    folder = tmp_path / "runs" / "a"
    records.atomic_write_json(folder / "run.json", {"format": 1, "run_id": "x1", "trainer": "CoOp", "seed": 0,
                                                   "dataset": "ImageNet", "protocol": "base2novel"})
    records.atomic_write_json(folder / "result.json", {"format": 1, "run_id": "x0", "metrics": {"base": 80.0}})
    run = R.parse_log(R.find_runs([tmp_path])[0])
    assert (run.status, run.metrics) == ("unfinished", {})
    assert run.detail.startswith("no result.json of this run (result.json holds run 'x0', run.json 'x1'")
    records.atomic_write_json(folder / "result.json", {"format": 1, "run_id": "x1",
                                                      "metrics": {"base": 80.0, "novel": 70.0}})
    run = R.parse_log(R.find_runs([tmp_path])[0])
    assert (run.status, run.trainer, run.dataset, run.seed) == ("ok", "CoOp", "ImageNet", 0)  # seed 0 is a seed
    assert run.metrics["hm"] == pytest.approx(R.harmonic_mean(80.0, 70.0))
    (folder / "log.txt").write_text("epoch [1/2]\nTraceback (most recent call last):\nRuntimeError: boom\n")
    assert (R.parse_log(folder / "log.txt").status, R.parse_log(folder / "log.txt").detail) == \
        ("failed", "RuntimeError: boom (after result.json)")


def test_a_damaged_record_is_an_error_naming_it(tmp_path):
    """A cut-short result.json is not read as "no result" (which would list a finished run as
    unfinished without a word): promptkd.results stops, naming the file and how to rewrite it."""
    from promptkd.errors import DataError
    folder = tmp_path / "runs" / "a"
    records.atomic_write_json(folder / "run.json", {"format": 1, "run_id": "x1", "trainer": "CoOp", "seed": 1,
                                                   "dataset": "ImageNet", "protocol": "base2novel"})
    (folder / "result.json").write_text('{"format": 1, "run_id": "x1", "metr')
    with pytest.raises(DataError, match=r"result\.json.*--eval-only --model-dir"):
        R.parse_log(R.find_runs([tmp_path])[0])


# --- train.py runs ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def kit(clip_files, tmp_path_factory):
    """train.py, the trainer-test helpers, a fake DTD and a finished teacher export."""
    pytest.importorskip("dassl", reason="Dassl not installed")
    from promptkd.trainers import train
    from tests import trainer_kit as T
    from tests.fake_data import make_dtd
    root = tmp_path_factory.mktemp("records")
    make_dtd(str(root / "data"), n_classes=5, per_class=10)
    T.make_trainer(T.teacher_args(str(root / "data"), clip_files, str(root / "teacher"))).train()
    return {"train": train, "T": T, "data": str(root / "data"), "export": str(root / "teacher" / "export"),
            "root": root}


class Messages(logging.Handler):
    def __init__(self):
        super().__init__()
        self.lines = []

    def emit(self, record):
        self.lines.append(record.getMessage())


def run_train(kit, args):
    """train.py's main() in this process, without its log file (Dassl's stdout tee) and env dump;
    returns the RESULT records it logged."""
    logger, messages = logging.getLogger("promptkd"), Messages()
    level = logger.level
    logger.setLevel(logging.INFO)
    logger.addHandler(messages)
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(kit["train"], "setup_logging", lambda output_dir: None)
            mp.setattr(kit["train"], "collect_env_info", lambda: "")
            kit["train"].main(kit["train"].parse_args(args))
    finally:
        logger.removeHandler(messages)
        logger.setLevel(level)
    return [json.loads(line[len("RESULT "):]) for line in messages.lines if line.startswith("RESULT ")]


def test_run_json_is_there_when_the_run_fails_after_setup(kit, clip_files, tmp_path):
    from promptkd.errors import MissingFileError
    out = tmp_path / "run"
    args = kit["T"].student_args(kit["data"], clip_files, str(out), str(tmp_path / "no-export"))
    with pytest.raises(MissingFileError):  # no class vectors: found out while the model is built
        run_train(kit, args)
    run = json.loads((out / "run.json").read_text())
    assert run["format"] == 1 and run["teacher"] is None and run["eval_only"] is False
    assert (run["trainer"], run["dataset"], run["protocol"], run["seed"]) == \
        ("PromptKD", "DescribableTextures", "base2novel", 1)
    assert run["config"]["TRAINER"]["PROMPTKD"]["TEACHER_DIR"] == str(tmp_path / "no-export")
    assert not (out / "result.json").exists()
    assert (R.parse_log(out / "run.json").status, R.parse_log(out / "run.json").detail) == \
        ("unfinished", "no result.json")


@pytest.fixture(scope="module")
def trained(kit, clip_files):
    """A 1-epoch PromptKD run through train.py: (output folder, its RESULT line, its arguments)."""
    out = kit["root"] / "student"
    args = kit["T"].student_args(kit["data"], clip_files, str(out), kit["export"], epochs=1)
    (logged,) = run_train(kit, args)
    return out, logged, args


def test_records_of_a_training_run(kit, trained):
    from promptkd.class_vectors import ClassVectors, class_vectors_file
    out, logged, _ = trained
    run, result = (json.loads((out / name).read_text()) for name in ("run.json", "result.json"))
    assert run["format"] == result["format"] == 1 and run["run_id"] == result["run_id"]
    for record in (run, result):
        assert {k: record[k] for k in records.IDENTITY} == {k: logged[k] for k in records.IDENTITY}
    assert (run["train_classes"], run["num_shots"], run["few_shot"], run["processes"]) == ("all", 0, False, 1)
    assert run["config"]["OPTIM"]["MAX_EPOCH"] == 1 and run["config"]["INPUT"]["SIZE"] == [32, 32]
    vectors_path = class_vectors_file(kit["export"], "DescribableTextures")
    teacher = ClassVectors.load(vectors_path).teacher
    assert run["teacher"]["fingerprint"] == teacher["fingerprint"] and len(teacher["fingerprint"]) == 16
    assert run["teacher"]["class_vectors"] == vectors_path and run["teacher"]["method"] == "PromptKDTeacher"
    assert "code_version" in run and run["command"] == sys.argv
    assert result["metrics"] == {k: logged[k] for k in ("base", "novel", "hm", "accuracy")}
    assert (result["split"], result["n_images"], result["classes"], result["base_classes"]) == ("test", 15, 5, 3)
    assert (result["epoch"], result["eval_only"], result["selection"]) == (1, False, "last_epoch")
    assert result["checkpoint"] == str(out / "VLPromptLearner" / "model.pth.tar-1")


def test_results_table_from_records_equals_the_one_from_an_old_log(kit, trained, tmp_path, capsys):
    """The run's records, and the same run as an earlier version left it (a log ending with the
    RESULT line, no records): the same tables, CSV and Markdown, but for the unlabelled pool,
    which only the records hold."""
    out, logged, _ = trained
    new, old = tmp_path / "new" / "seed1", tmp_path / "old" / "seed1"
    for folder in (new, old):
        folder.mkdir(parents=True)
    for name in ("run.json", "result.json"):
        (new / name).write_bytes((out / name).read_bytes())
    (old / "log.txt").write_text("epoch [1/1] kd_loss 0.1\n[2026-01-02 10:00:00] RESULT " + json.dumps(logged) + "\n")
    outputs = {}
    for tag, folder in (("new", new), ("old", old)):
        assert cli.main(["results", str(folder), "--seeds", "1", "--out", str(tmp_path / tag)]) == 0
        outputs[tag] = [(tmp_path / f"{tag}{ext}").read_bytes() for ext in (".md", ".csv")]
    capsys.readouterr()
    pools = b"## Unlabelled pools"
    md, rest = outputs["new"][0].split(pools)
    images = json.loads((out / "run.json").read_text())["pool"]["images"]  # the fake DTD's train split
    rows = [[c.strip() for c in line.strip(b"|").split(b"|")] for line in rest.split(b"## ")[0].splitlines()
            if line.startswith(b"| base2novel")]
    assert rows == [[b"base2novel", b"PromptKD", b"DTD", b"train", str(images).encode(), b"no"]] and images > 0
    without_pools = md + b"## " + rest.split(b"## ", 1)[1]
    assert pools not in outputs["old"][0] and without_pools == outputs["old"][0]
    csvs = {tag: [line.rsplit(b",", 4) for line in outputs[tag][1].split(b"\r\n")] for tag in outputs}
    assert [row[0] for row in csvs["new"]] == [row[0] for row in csvs["old"]]
    assert csvs["new"][0][1:] == [b"pool", b"pool_images_min", b"pool_images_max", b"pool_selection"]
    assert csvs["new"][1][1:] == [b"train", str(images).encode(), str(images).encode(), b""] and csvs["old"][1][1:] == [b""] * 4
    assert b"| PromptKD | DTD " in outputs["new"][0] and b"all expected seeds finished" in outputs["new"][0]


def test_eval_only_run_records_what_it_evaluated(kit, trained):
    """--eval-only in the training run's folder: the training run's records are kept aside, and
    result.json names the checkpoint and epoch that were evaluated."""
    out, logged, args = trained
    first = json.loads((out / "run.json").read_text())
    (again,) = run_train(kit, ["--eval-only", "--model-dir", str(out), *args])
    aside = sorted(n for n in os.listdir(out) if n.startswith(("run.json-", "result.json-")))
    assert [n.split("-")[0] for n in aside] == ["result.json", "run.json"]
    assert json.loads((out / aside[1]).read_text())["run_id"] == first["run_id"]
    run, result = (json.loads((out / name).read_text()) for name in ("run.json", "result.json"))
    assert run["eval_only"] is True and result["eval_only"] is True and result["run_id"] == run["run_id"]
    assert (result["epoch"], result["checkpoint"]) == (1, str(out / "VLPromptLearner" / "model.pth.tar-1"))
    assert result["metrics"] == {k: again[k] for k in ("base", "novel", "hm", "accuracy")}
