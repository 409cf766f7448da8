"""Run records: two small JSON files every training / evaluation run writes in its output folder,
so that `promptkd results` reads what a run was and what it scored instead of
parsing logs.

* `run.json`, when the run starts (before the data and the model are built, so a run that
  fails later still has one): the run's identity (trainer, dataset, protocol, seed, backbone,
  model selection rule), how it trains (class subset, shots), the teacher it distils from
  (the class-vector export's backbone and weight fingerprint; added once the model is built),
  the code version, the command line and the whole config.
* `result.json`, each time the run has evaluated (the last one counts): the same identity,
  the metrics, the evaluated split and classes, the epoch of the evaluated weights and the
  checkpoint they came from.

Both carry `"format": 1` and the same `run_id`; both are written atomically (temp file +
rename), by rank 0 only under torchrun. A re-run in the same folder first moves the previous
run's files to `run.json-<time>` / `result.json-<time>`. Plain Python (no Dassl); torch is
imported only to ask the process's rank.
"""
from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from .errors import ConfigError
from .io import atomic_write_text, load_json

FORMAT = 1
RUN_FILE, RESULT_FILE = "run.json", "result.json"
#: What identifies a run; in both files.
IDENTITY = ("trainer", "dataset", "protocol", "seed", "backbone", "selection")
REPO = Path(__file__).resolve().parents[1]


def atomic_write_json(path, obj) -> None:
    """`obj` as JSON in `path`, atomically (a reader sees the old file or the new one)."""
    atomic_write_text(os.fspath(path), json.dumps(obj, indent=1, default=str) + "\n",
                      fix="Free some space and run the same command again.")


def read_json(path) -> dict | None:
    """A record file's content, or None when there is none; a damaged one is an error naming it."""
    if not os.path.exists(path):
        return None
    return load_json(os.fspath(path), what="run record (run.json / result.json)",
                     fix="Run the same command again to rewrite it (a finished run: --eval-only --model-dir "
                         "RUN_DIR rewrites result.json), or delete it to have the run listed as unfinished.")


def plain(value):
    """A yacs CfgNode (a dict subclass) or any nesting of dicts, lists and tuples as plain JSON types."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value if value is None or isinstance(value, (bool, int, float, str)) else str(value)


def code_version() -> str | None:
    """`git describe --always --dirty` of this checkout; else the installed package's version."""
    if (REPO / ".git").exists():
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True,
                                 text=True, timeout=20)
            if out.returncode == 0 and out.stdout.strip():
                return out.stdout.strip()
        except (OSError, subprocess.SubprocessError):  # no git, or it hangs
            pass
    try:
        return importlib.metadata.version("promptkd")
    except importlib.metadata.PackageNotFoundError:
        return None


def _is_main() -> bool:
    from promptkd import distributed  # torch: imported here, so that reading records needs none
    return distributed.is_main()


def _world_size() -> int:
    from promptkd import distributed
    return distributed.world_size()


def _now() -> str:
    return datetime.datetime.now().astimezone().isoformat(timespec="seconds")


#: TRAINER.PROTOCOL's default, where a config sets neither it nor its old name TRAINER.MODAL
DEFAULT_PROTOCOL = "base2novel"


def protocol(cfg) -> str:
    """The run's evaluation protocol: TRAINER.PROTOCOL, or TRAINER.MODAL, its published name.

    MODAL "" is unset. A MODAL that is set wins over PROTOCOL's default (a published config, or a
    host codebase that keeps the published key); the two set to different values are an error."""
    node = cfg.TRAINER
    current, old = node.get("PROTOCOL", "") or DEFAULT_PROTOCOL, node.get("MODAL", "")
    if not old or old == current:
        return current
    if current == DEFAULT_PROTOCOL:
        return old
    raise ConfigError(f"TRAINER.PROTOCOL {current} and TRAINER.MODAL {old} disagree: TRAINER.MODAL is the old "
                      "name of TRAINER.PROTOCOL; set only TRAINER.PROTOCOL (or both to the same value).")


def run_record(cfg, **fields) -> dict:
    data = cfg.DATASET
    return {"format": FORMAT, "kind": "run", "run_id": uuid.uuid4().hex[:16], "started": _now(),
            "trainer": cfg.TRAINER.NAME, "dataset": data.NAME, "protocol": protocol(cfg), "seed": cfg.SEED,
            "backbone": cfg.MODEL.BACKBONE.NAME, "selection": cfg.TEST.MODEL_SELECTION,
            "train_classes": data.SUBSAMPLE_CLASSES, "num_shots": data.NUM_SHOTS, "few_shot": data.NUM_SHOTS > 0,
            # labelled images per class behind the run (None: not a K-shot run; PromptKD: its teacher's K)
            "labelled_shots": data.NUM_SHOTS if data.NUM_SHOTS > 0 else None,
            "teacher": None, "processes": _world_size(), "code_version": code_version(),
            "command": list(sys.argv), **plain(fields), "config": plain(cfg)}


def _set_aside(folder: str) -> None:
    """A previous run's records -> `<name>-<time>` (the time its run.json was written)."""
    files = [os.path.join(folder, n) for n in (RUN_FILE, RESULT_FILE)]
    existing = [p for p in files if os.path.isfile(p)]
    if existing:
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(os.path.getmtime(existing[0])))
        for path in existing:
            os.replace(path, f"{path}-{stamp}")


_STARTED: dict = {}  # OUTPUT_DIR (absolute) -> the record this process started there


def start_run(cfg, **fields) -> dict:
    """Write `run.json` in cfg.OUTPUT_DIR (rank 0), with `fields` (e.g. eval_only), and return it."""
    record = run_record(cfg, **fields)
    if _is_main():
        _set_aside(cfg.OUTPUT_DIR)
        atomic_write_json(os.path.join(cfg.OUTPUT_DIR, RUN_FILE), record)
    _STARTED[os.path.abspath(cfg.OUTPUT_DIR)] = record
    return record


def started_run(cfg) -> dict | None:
    """The record `start_run` began in cfg.OUTPUT_DIR in this process (our train.py does before
    it builds a trainer), or None (a host codebase's train.py built the trainer)."""
    return _STARTED.get(os.path.abspath(cfg.OUTPUT_DIR))


def update_run(cfg, record: dict, **fields) -> dict:
    """Add `fields` (e.g. the teacher once it is known) to the record, rewrite run.json, return it."""
    record.update(plain(fields))
    if _is_main():
        atomic_write_json(os.path.join(cfg.OUTPUT_DIR, RUN_FILE), record)
    return record


def write_result(cfg, run: dict, metrics: dict, **fields) -> dict:
    """Write `result.json` (rank 0): the run's identity, `metrics` and `fields`."""
    record = {"format": FORMAT, "kind": "result", "run_id": run["run_id"], "finished": _now(),
              **{k: run[k] for k in IDENTITY}, "eval_only": run.get("eval_only"), "metrics": metrics,
              **plain(fields)}
    if _is_main():
        atomic_write_json(os.path.join(cfg.OUTPUT_DIR, RESULT_FILE), record)
    return record


def teacher_identity(teacher: dict, vectors_path: str) -> dict:
    """What a class-vector export says of its teacher: backbone, weight fingerprint, method,
    prompt settings (not the vectors)."""
    return {"class_vectors": os.path.abspath(vectors_path), **plain(teacher)}
