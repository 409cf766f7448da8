"""Weights & Biases tracking (LOG.WANDB, trainers/tracking.py), for real with WANDB_MODE=offline:
the offline run folder exists and its transaction log holds the logged metrics and the config;
a resumed run continues the same W&B run; without wandb the setting on is a clear error."""
import glob
import json
import os
import re
import sys
import time

import pytest

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")
pytest.importorskip("wandb", reason="wandb not installed (pip install -e .[test] installs it)")

from promptkd import records  # noqa: E402
from promptkd.errors import ConfigError, UserError  # noqa: E402
from promptkd.trainers.tracking import RUN_ID_FILE  # noqa: E402
from tests.trainer_kit import make_trainer, teacher_args  # noqa: E402  (data_root: a conftest.py fixture)


def wandb_records(path):
    """The protobuf records of a `.wandb` file: wandb's LevelDB-style log (7-byte file header
    `:W&B` + magic + version, then 32 KiB blocks of chunks: crc32, length, type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = open(path, "rb").read()
    assert data[:4] == b":W&B"
    pos, block, parts, out = 7, 32768, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        length, kind = int.from_bytes(data[pos + 4:pos + 6], "little"), data[pos + 6]
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0:
            continue
        parts += chunk
        if kind in (1, 4):  # FULL, LAST
            record = pb.Record()
            record.ParseFromString(parts)
            out.append(record)
            parts = b""
    return out


def closed_log(path, timeout=120.0):
    """The records of a run's `.wandb` file once wandb has closed it (its `exit` record is there).

    `run.finish()` returns before the file is complete: wandb's service process (wandb-core)
    buffers the log in 32 KiB blocks and writes the rest when it closes the run's stream, a moment
    later. Read at once, the file can hold only its 7-byte header (seen here: 0 history records,
    then all of them a second later), which made this file fail on most runs under xdist. The
    user loses nothing: the service finishes the file on its own, also when the training process
    exits (or is SIGKILLed) right after `finish()`. So the test waits for the exit record."""
    deadline, records = time.monotonic() + timeout, []
    while True:
        try:
            records = wandb_records(path)
        except Exception:  # noqa: BLE001  (a block being written: read again)
            records = []
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert any(r.WhichOneof("record_type") == "exit" for r in records), \
        f"{path}: no exit record {timeout:g} s after run.finish() ({os.path.getsize(path)} bytes)"
    return records


def logged(folder):
    """{"history": [{key: value}], "config": {key: value}, "summary": {key: value}} of an offline run."""
    files = glob.glob(os.path.join(folder, "run-*.wandb"))
    assert len(files) == 1, os.listdir(folder)
    out = {"history": [], "config": {}, "summary": {}}
    for r in closed_log(files[0]):
        kind = r.WhichOneof("record_type")
        if kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind in ("config", "run"):  # the config comes with the run record, updates as config records
            items = r.config.update if kind == "config" else r.run.config.update
            out["config"].update({i.key: json.loads(i.value_json) for i in items})
        elif kind == "summary":
            out["summary"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.summary.update})
    return out


def args(data_root, clip_files, out, *extra, epochs=2):
    return teacher_args(data_root, clip_files, out, "LOG.WANDB.ENABLED", "True", "LOG.WANDB.TAGS", "['tiny', 'ci']",
                        *extra, epochs=epochs)


@pytest.fixture
def offline(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wb"))
    monkeypatch.setenv("WANDB_SILENT", "true")
    (tmp_path / "wb").mkdir()
    return tmp_path / "wb" / "wandb"


def test_an_offline_run_holds_losses_lr_metrics_and_config(data_root, clip_files, tmp_path, offline):
    out = str(tmp_path / "run")
    trainer = make_trainer(args(data_root, clip_files, out))
    trainer.run_record = records.start_run(trainer.cfg, eval_only=False)  # as `promptkd train` sets it
    trainer.train()
    run_id = open(os.path.join(out, RUN_ID_FILE)).read().strip()
    folders = glob.glob(str(offline / f"offline-run-*-{run_id}"))
    assert len(folders) == 1
    got = logged(folders[0])
    steps = [h for h in got["history"] if "train/ce" in h]
    assert len(steps) == 2 * trainer.num_batches and {h["epoch"] for h in steps} == {1, 2}
    assert [h["iteration"] for h in steps] == list(range(2 * trainer.num_batches))
    epochs = [h for h in got["history"] if "lr" in h]
    assert [h["epoch"] for h in epochs] == [1, 2] and epochs[0]["lr"] == pytest.approx(trainer.cfg.OPTIM.WARMUP_CONS_LR)  # a constant warm-up epoch
    report = trainer.last_report
    tests = [h for h in got["history"] if "test/hm" in h]
    assert len(tests) == 1 and tests[0]["test/hm"] == pytest.approx(report["hm"])
    for k in ("base", "novel", "hm"):
        assert got["summary"][f"final/{k}"] == pytest.approx(round(report[k], 4))
    table = next(h for h in got["history"] if "results/path" in h)  # the base / novel / HM table, a media file
    with open(os.path.join(folders[0], "files", table["results/path"])) as f:
        saved = json.load(f)
    row = dict(zip(saved["columns"], saved["data"][0]))
    assert row["hm"] == pytest.approx(round(report["hm"], 4)) and row["dataset"] == "DescribableTextures"
    config = got["config"]
    assert config["OPTIM"]["MAX_EPOCH"] == 2 and config["LOG"]["WANDB"]["ENABLED"] is True
    assert config["DATASET"]["NAME"] == "DescribableTextures" and config["LOG"]["WANDB"]["TAGS"] == ["tiny", "ci"]
    assert config["run_record"]["trainer"] == "PromptKDTeacher"
    assert config["run_record"]["run_id"] == trainer.run_record["run_id"]


def test_a_resumed_run_continues_the_same_wandb_run(data_root, clip_files, tmp_path, offline):
    out = str(tmp_path / "run")
    cut = make_trainer(args(data_root, clip_files, out))
    after_epoch = cut.after_epoch

    def crash():
        after_epoch()
        raise KeyboardInterrupt("killed after epoch 1")
    cut.after_epoch = crash
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    first = open(os.path.join(out, RUN_ID_FILE)).read().strip()
    cut.finish_tracking()  # what the killed process's exit does
    resumed = make_trainer(args(data_root, clip_files, out))
    resumed.train()
    assert open(os.path.join(out, RUN_ID_FILE)).read().strip() == first
    folders = glob.glob(str(offline / "offline-run-*"))
    # wandb names a folder offline-run-<second>-<run id>, plus "-1", "-2" ... when the resumed
    # process starts in the same second as the killed one (a fast machine)
    assert folders and all(re.fullmatch(rf"offline-run-\d{{8}}_\d{{6}}-{first}(-\d+)?", os.path.basename(f))
                           for f in folders), folders
    epochs = sorted(h["epoch"] for f in folders for h in logged(f)["history"] if "lr" in h)
    assert epochs == [1, 2]
    # training from scratch in a fresh folder is a new W&B run
    fresh = make_trainer(args(data_root, clip_files, str(tmp_path / "other"), epochs=1))
    fresh.train()
    assert open(tmp_path / "other" / RUN_ID_FILE).read().strip() != first


def test_missing_wandb_with_the_setting_on_says_what_to_install(data_root, clip_files, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb -> ImportError
    with pytest.raises(UserError, match=r'pip install "promptkd-dassl\[tracking\]"'):
        make_trainer(args(data_root, clip_files, str(tmp_path / "run")))
    with pytest.raises(ConfigError, match="LOG.WANDB.MODE"):
        make_trainer(args(data_root, clip_files, str(tmp_path / "run"), "LOG.WANDB.MODE", "offlne"))
