"""Turn a folder of training / evaluation runs into the paper's results tables.

Every run directory holds a ``log.txt`` that starts with the yacs config dump and, once
evaluation is done, contains a machine-readable line written by the trainer::

    RESULT {"trainer": "PromptKD", "dataset": "ImageNet", "seed": 1, "protocol": "base2novel",
            "base": 80.83, "novel": 74.66, "hm": 77.62, "accuracy": 78.1, ...}

(on one line; the last such line of a log counts). This module finds those logs, groups the
runs by (protocol, method, dataset) and seed, and reports mean ± std over seeds:

* base-to-novel: base, novel and HM per dataset plus the average over the 11 datasets;
* cross-dataset / domain generalisation: accuracy per dataset plus the average over the 10
  cross-dataset targets;
* a method × dataset comparison (the paper's Table 1) when several methods are present;
* every expected seed without a finished run, and every unfinished or failed run.

Command line::

    python -m promptkd.results RUNS_DIR [RUNS_DIR ...] [--seeds 1 2 3] [--out PREFIX]
                               [--plot] [--protocol base2novel|cross] [--newest-log]

Plain Python (tabulate, and matplotlib for ``--plot``); no Dassl, no torch.
"""
from __future__ import annotations

import argparse
import csv
import io
import json
import logging
import math
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tabulate import tabulate

from .errors import run_cli
from .io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

# --------------------------------------------------------------------------------------------
# Datasets, methods, protocols
# --------------------------------------------------------------------------------------------

#: The 11 base-to-novel datasets (Dassl registered names), in the paper's column order.
BASE2NOVEL_DATASETS = (
    "ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
    "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101",
)
#: Cross-dataset: the source, then the 10 targets averaged in the paper.
CROSS_SOURCE = "ImageNet"
CROSS_TARGETS = BASE2NOVEL_DATASETS[1:]
#: Domain generalisation target sets (ImageNet source).
DG_DATASETS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
DATASET_ORDER = BASE2NOVEL_DATASETS + DG_DATASETS

#: Names printed in the tables (the paper's names where they differ from the registered ones).
DISPLAY_NAMES = {
    "OxfordFlowers": "Flowers102",
    "DescribableTextures": "DTD",
    "ImageNetV2": "ImageNet-V2",
    "ImageNetSketch": "ImageNet-Sketch",
    "ImageNetA": "ImageNet-A",
    "ImageNetR": "ImageNet-R",
}

# Lower-case, separator-free spellings (registered names, CoOp config file names, paper
# names) -> registered name.
_DATASET_ALIASES = {name.lower(): name for name in DATASET_ORDER}
_DATASET_ALIASES.update({
    "oxfordpets": "OxfordPets", "stanfordcars": "StanfordCars", "oxfordflowers": "OxfordFlowers",
    "flowers102": "OxfordFlowers", "flowers": "OxfordFlowers", "fgvcaircraft": "FGVCAircraft",
    "fgvc": "FGVCAircraft", "dtd": "DescribableTextures", "imagenetv2": "ImageNetV2",
    "imagenetsketch": "ImageNetSketch", "imageneta": "ImageNetA", "imagenetr": "ImageNetR",
})

# CoOp-family trainer names, to recognise them in paths and to unify their spelling.
KNOWN_TRAINERS = ("PromptKD", "PromptKDTeacher", "PromptSRC", "CoOp", "CoCoOp", "MaPLe",
                  "IVLP", "VPT", "ZeroshotCLIP", "ZeroshotCLIP2")
_TRAINER_ALIASES = {t.lower(): t for t in KNOWN_TRAINERS}
_TRAINER_ALIASES.update({"zsclip": "ZeroshotCLIP", "clip": "ZeroshotCLIP"})

BASE2NOVEL, CROSS = "base2novel", "cross"
PROTOCOLS = (BASE2NOVEL, CROSS)
_PROTOCOL_ALIASES = {
    "base2novel": BASE2NOVEL, "base2new": BASE2NOVEL, "b2n": BASE2NOVEL,
    "cross": CROSS, "xd": CROSS, "crossdataset": CROSS, "dg": CROSS,
    "domaingeneralization": CROSS, "domaingeneralisation": CROSS,
}

METRICS = ("base", "novel", "hm", "accuracy")

RESULT_MARKER = "RESULT {"
TRACEBACK_MARKER = "Traceback (most recent call last)"
LOG_NAME = "log.txt"
_ROTATED_RE = re.compile(r"^log\.txt-(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})$")
_SEED_DIR_RE = re.compile(r"seed[_-]?(\d+)", re.IGNORECASE)
_EPOCH_RE = re.compile(r"epoch \[(\d+)/(\d+)\]")
_CFG_LINE_RE = re.compile(r"^( *)([A-Z][A-Z0-9_]*):(?: (.*))?$")
_ARG_LINE_RE = re.compile(r"^([a-z][a-z0-9_]*):(?: (.*))?$")


def _norm(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def canonical_dataset(name: str | None) -> str | None:
    """Registered Dassl name for any common spelling ("oxford_flowers", "DTD", ...)."""
    if not name:
        return None
    return _DATASET_ALIASES.get(_norm(name), name)


def canonical_trainer(name: str | None) -> str | None:
    if not name:
        return None
    return _TRAINER_ALIASES.get(name.lower(), name)


def canonical_protocol(name: str | None) -> str | None:
    if not name:
        return None
    return _PROTOCOL_ALIASES.get(_norm(name), name)


def display_name(dataset: str) -> str:
    return DISPLAY_NAMES.get(dataset, dataset)


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N); 0 when both are 0."""
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def _dataset_sort_key(dataset: str):
    if dataset in DATASET_ORDER:
        return (0, DATASET_ORDER.index(dataset), "")
    return (1, 0, dataset)


# --------------------------------------------------------------------------------------------
# Finding and parsing logs
# --------------------------------------------------------------------------------------------

def _pick_log(names: Sequence[str], folder: Path, newest: bool) -> Path:
    """The log of the latest run among ``log.txt`` and rotated ``log.txt-<time>`` files."""
    if newest:
        return max((folder / n for n in names), key=lambda p: p.stat().st_mtime)
    if LOG_NAME in names:
        current = folder / LOG_NAME
        newer = [n for n in names if n != LOG_NAME
                 and (folder / n).stat().st_mtime > current.stat().st_mtime + 1]
        if newer:
            logger.warning(
                "%s: using log.txt as the latest run, but %s was modified after it (stock Dassl "
                "setup_logger writes a re-run to log.txt-<time>; use --newest-log if so)",
                folder, ", ".join(sorted(newer)))
        return current
    stamped = sorted(names, key=lambda n: (m.group(1) if (m := _ROTATED_RE.match(n)) else "",
                                           (folder / n).stat().st_mtime))
    return folder / stamped[-1]


def find_runs(dirs: Iterable[str | os.PathLike], newest: bool = False) -> list[Path]:
    """One log file per run directory found under ``dirs``.

    A run directory is any directory holding ``log.txt`` or rotated ``log.txt-<time>`` files.
    ``log.txt`` is the latest run; rotated logs are older runs and are ignored, unless there is
    no ``log.txt`` (then the newest rotated one by the timestamp in its name is used). With
    ``newest=True`` the most recently modified of all of them is used instead (stock Dassl
    keeps the first run in ``log.txt`` and writes re-runs to ``log.txt-<time>``).
    """
    seen: set[Path] = set()
    logs: list[Path] = []
    for root in dirs:
        for folder, subdirs, files in os.walk(root):
            subdirs.sort()
            names = sorted(f for f in files if f == LOG_NAME or f.startswith(LOG_NAME + "-"))
            folder_path = Path(folder)
            if not names or folder_path.resolve() in seen:
                continue
            seen.add(folder_path.resolve())
            logs.append(_pick_log(names, folder_path, newest))
    return logs


@dataclass
class Run:
    """One run directory, as read from its log."""

    log_path: Path
    status: str                      # "ok" | "unfinished" | "failed"
    protocol: str | None = None      # "base2novel" | "cross"
    trainer: str | None = None
    dataset: str | None = None       # Dassl registered name
    seed: int | None = None
    metrics: dict[str, float] = field(default_factory=dict)   # base, novel, hm, accuracy
    selection: str | None = None     # last_epoch | best_base_test
    backbone: str | None = None
    mtime: float = 0.0
    detail: str = ""                 # why a run is unfinished / failed
    result: dict | None = None       # the last RESULT record as written

    @property
    def run_dir(self) -> Path:
        return self.log_path.parent


def parse_config_dump(lines: Sequence[str]) -> tuple[dict[str, str], dict[str, str]]:
    """The yacs config dump (flattened to dotted keys) and Dassl's argument dump of a log.

    The config is read from the ``** Config **`` banner (or the first upper-case top-level
    key) up to the first line that is not a ``KEY: value`` line.
    """
    config: dict[str, str] = {}
    args: dict[str, str] = {}
    stack: list[tuple[int, str]] = []   # (indent, key) of the enclosing nodes
    started = False
    for raw in lines:
        line = raw.rstrip("\n")
        if not started:
            if "** Config **" in line:
                started = True
                continue
            arg = _ARG_LINE_RE.match(line)
            if arg:
                args.setdefault(arg.group(1), (arg.group(2) or "").strip())
                continue
            if not _CFG_LINE_RE.match(line) or line.startswith(" "):
                continue
            started = True
        if not line.strip() or set(line.strip()) == {"*"}:
            continue
        match = _CFG_LINE_RE.match(line)
        if not match:
            if config:
                break
            continue
        indent, key, value = len(match.group(1)), match.group(2), match.group(3)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        full_key = ".".join([k for _, k in stack] + [key])
        if value is None:            # a node: its children follow, indented
            stack.append((indent, key))
        else:
            config.setdefault(full_key, value.strip())
    return config, args


def infer_from_path(path: Path) -> dict:
    """Protocol, trainer, dataset and seed guessed from the run directory's path components,
    e.g. ``output/base2new/promptkd/imagenet/seed1``."""
    found: dict = {}
    for part in path.parts:
        if (m := _SEED_DIR_RE.fullmatch(part)):
            found["seed"] = int(m.group(1))
        elif _norm(part) in _DATASET_ALIASES:
            found["dataset"] = _DATASET_ALIASES[_norm(part)]
        elif part.lower() in _TRAINER_ALIASES:
            found["trainer"] = _TRAINER_ALIASES[part.lower()]
        elif _norm(part) in _PROTOCOL_ALIASES:
            found["protocol"] = _PROTOCOL_ALIASES[_norm(part)]
    return found


def _parse_result(line: str) -> dict | None:
    text = line[line.index(RESULT_MARKER) + len("RESULT "):].strip()
    try:
        record, _ = json.JSONDecoder().raw_decode(text)
    except json.JSONDecodeError:
        return None
    return record if isinstance(record, dict) else None


def _as_int(value) -> int | None:
    try:
        return int(str(value).strip())
    except (TypeError, ValueError):
        return None


def parse_log(path: str | os.PathLike) -> Run:
    """Read one log: its last RESULT record, or why there is none (unfinished / failed).

    Identity fields come from the RESULT record, else the config dump, else the path.
    """
    path = Path(path)
    with open(path, encoding="utf-8", errors="replace") as handle:
        lines = handle.readlines()

    result, result_line, traceback_line, last_epoch = None, -1, -1, None
    for i, line in enumerate(lines):
        if RESULT_MARKER in line:
            record = _parse_result(line)
            if record is None:
                logger.warning("%s:%d: unreadable RESULT line ignored", path, i + 1)
            else:
                result, result_line = record, i
        if TRACEBACK_MARKER in line:
            traceback_line = i
        if (m := _EPOCH_RE.search(line)):
            last_epoch = m
    config, args = parse_config_dump(lines[:5000])
    from_path = infer_from_path(path.parent)

    if traceback_line > result_line:
        status = "failed"
        tail = [ln.strip() for ln in lines[traceback_line + 1:] if ln.strip()]
        detail = (tail[-1] if tail else "traceback")[:160]
        if result is not None:
            detail += " (after a RESULT line)"
        result = None
    elif result is None:
        status = "unfinished"
        detail = "no RESULT line"
        if last_epoch:
            detail += f", last seen at epoch {last_epoch.group(1)}/{last_epoch.group(2)}"
    else:
        status, detail = "ok", ""

    record = result or {}
    # train.py's --dataset-config-file, e.g. configs/datasets/oxford_flowers.yaml
    dataset_arg = Path(args["dataset_config_file"]).stem if args.get("dataset_config_file") \
        else None

    def pick(record_key, config_key, arg_value=None):
        """The first non-empty value of: RESULT record, config dump, arguments, path."""
        for value in (record.get(record_key), config.get(config_key), arg_value,
                      from_path.get(record_key)):
            if value not in (None, ""):
                return value
        return None

    metrics = {}
    for name in METRICS:
        value = record.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            metrics[name] = float(value)
    if "hm" not in metrics and "base" in metrics and "novel" in metrics:
        metrics["hm"] = harmonic_mean(metrics["base"], metrics["novel"])

    return Run(
        log_path=path,
        status=status,
        protocol=canonical_protocol(pick("protocol", "TRAINER.MODAL")),
        trainer=canonical_trainer(pick("trainer", "TRAINER.NAME", args.get("trainer"))),
        dataset=canonical_dataset(pick("dataset", "DATASET.NAME", dataset_arg)),
        seed=_as_int(pick("seed", "SEED", args.get("seed"))),
        metrics=metrics,
        selection=pick("selection", "TEST.MODEL_SELECTION"),
        backbone=pick("backbone", "MODEL.BACKBONE.NAME"),
        mtime=path.stat().st_mtime,
        detail=detail,
        result=result,
    )


# --------------------------------------------------------------------------------------------
# Aggregation
# --------------------------------------------------------------------------------------------

@dataclass
class Stat:
    """Mean ± std over seeds; std is the sample std (ddof=1) for n > 1 and 0 for n = 1."""

    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values: Sequence[float]) -> "Stat":
        n = len(values)
        if n == 0:
            return cls(None, None, 0)
        mean = sum(values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
        return cls(mean, std, n)


@dataclass
class Group:
    """The runs of one (protocol, method, dataset), one per seed."""

    protocol: str
    method: str
    dataset: str
    expected_seeds: tuple[int, ...]
    runs: dict[int, Run] = field(default_factory=dict)     # seed -> run used
    stats: dict[str, Stat] = field(default_factory=dict)   # metric -> Stat over seeds

    @property
    def n(self) -> int:
        return len(self.runs)

    @property
    def complete(self) -> bool:
        return self.n == len(self.expected_seeds)

    @property
    def missing_seeds(self) -> list[int]:
        return [s for s in self.expected_seeds if s not in self.runs]

    @property
    def hm_of_means(self) -> float | None:
        """The paper's convention: HM of the mean base and the mean novel accuracy."""
        base, novel = self.stats.get("base"), self.stats.get("novel")
        if not base or not novel or base.mean is None or novel.mean is None:
            return None
        return harmonic_mean(base.mean, novel.mean)


@dataclass
class Average:
    """Average over a fixed dataset list (11 base-to-novel sets, or 10 cross targets)."""

    protocol: str
    method: str
    label: str
    values: dict[str, float] | None     # metric -> mean over datasets; None if not computed
    missing: list[str]                  # datasets without any finished seed
    short: list[str]                    # datasets with fewer seeds than expected

    @property
    def hm_of_means(self) -> float | None:
        if not self.values or "base" not in self.values or "novel" not in self.values:
            return None
        return harmonic_mean(self.values["base"], self.values["novel"])


@dataclass
class Issue:
    """A seed without a usable run, or a run that was not used."""

    protocol: str | None
    method: str | None
    dataset: str | None
    seed: int | None
    status: str     # missing | unfinished | failed | duplicate | ignored | unidentified
    detail: str = ""
    log_path: Path | None = None


@dataclass
class Report:
    groups: list[Group]
    averages: list[Average]
    issues: list[Issue]
    expected_seeds: tuple[int, ...]

    def group(self, protocol: str, method: str, dataset: str) -> Group | None:
        for g in self.groups:
            if (g.protocol, g.method, g.dataset) == (protocol, method, dataset):
                return g
        return None

    def average(self, protocol: str, method: str) -> Average | None:
        for a in self.averages:
            if (a.protocol, a.method) == (protocol, method):
                return a
        return None

    def methods(self, protocol: str) -> list[str]:
        return sorted({g.method for g in self.groups if g.protocol == protocol})


def _short_backbone(backbone: str | None, among: set) -> str:
    """A checkpoint path as its file name stem ("/w/teacher.pt" -> "teacher") when that tells
    it apart from the others; a CLIP name ("ViT-B/16") or an ambiguous path as it is."""
    if not backbone:
        return "?"

    def stem(b):
        return Path(b).stem if b and b.endswith((".pt", ".pth", ".bin", ".ckpt", ".tar")) else b
    stems = [stem(b) for b in among]
    return stem(backbone) if len(set(stems)) == len(stems) else backbone


def _method_labels(runs: Sequence[Run]) -> dict[int, str]:
    """Method label per run: the trainer name, plus backbone / model selection when a trainer
    was run with several of them (so that they are never averaged together)."""
    variants: dict[str, set] = defaultdict(set)
    for run in runs:
        if run.trainer and run.status == "ok":
            variants[run.trainer].add((run.backbone, run.selection))
    labels = {}
    for i, run in enumerate(runs):
        if not run.trainer:
            continue
        kinds = variants.get(run.trainer, set())
        extra = []
        backbones = {b for b, _ in kinds}
        if len(backbones) > 1:
            extra.append(_short_backbone(run.backbone, backbones))
        if len({s for _, s in kinds}) > 1:
            extra.append(run.selection or "?")
        labels[i] = f"{run.trainer} ({', '.join(extra)})" if extra else run.trainer
    return labels


def _unify_trainer_spelling(runs: Sequence[Run]) -> None:
    """Use the spelling of finished runs for runs whose trainer came from a path."""
    spelled = {r.trainer.lower(): r.trainer for r in runs if r.trainer and r.status == "ok"}
    for run in runs:
        if run.trainer and run.trainer.lower() in spelled:
            run.trainer = spelled[run.trainer.lower()]


def _average(protocol: str, method: str, groups: dict, datasets: Sequence[str],
             label: str, metrics: Sequence[str]) -> Average:
    present = {d: groups.get((protocol, method, d)) for d in datasets}
    missing = [d for d, g in present.items() if g is None or g.n == 0]
    short = [d for d, g in present.items() if g is not None and 0 < g.n and not g.complete]
    values = None
    if not missing:
        values = {}
        for metric in metrics:
            means = [present[d].stats[metric].mean for d in datasets]
            if all(m is not None for m in means):
                values[metric] = sum(means) / len(means)
    return Average(protocol, method, label, values, missing, short)


def aggregate(runs: Sequence[Run], seeds: Sequence[int] = (1, 2, 3),
              protocol: str | None = None) -> Report:
    """Group runs by (protocol, method, dataset) and seed and compute mean ± std over seeds.

    Only runs with a seed in ``seeds`` are used; when several finished runs share a seed the
    one whose log was modified last is used. Everything left out is reported as an Issue.
    """
    expected = tuple(seeds)
    runs = [r for r in runs if protocol is None or r.protocol in (None, protocol)]
    _unify_trainer_spelling(runs)
    labels = _method_labels(runs)
    issues: list[Issue] = []
    candidates: dict[tuple, dict[int, list[Run]]] = defaultdict(lambda: defaultdict(list))
    problem_keys: set[tuple] = set()

    for i, run in enumerate(runs):
        method = labels.get(i)
        key = (run.protocol, method, run.dataset)
        if None in key or run.protocol not in PROTOCOLS:
            what = f"unknown protocol {run.protocol}" if run.protocol else "unknown protocol"
            if run.protocol in PROTOCOLS:
                what = "trainer or dataset unknown"
            issues.append(Issue(*key, run.seed, "unidentified" if run.status == "ok"
                                else run.status, "; ".join(filter(None, [run.detail, what])),
                                run.log_path))
            continue
        if run.status != "ok":
            issues.append(Issue(*key, run.seed, run.status, run.detail, run.log_path))
            problem_keys.add(key + (run.seed,))
            candidates[key]   # the group exists (shown with its missing seeds) even if empty
            continue
        if run.seed not in expected:
            why = "seed unknown" if run.seed is None else f"seed {run.seed} not in --seeds"
            issues.append(Issue(*key, run.seed, "ignored", why, run.log_path))
            continue
        candidates[key][run.seed].append(run)

    groups: dict[tuple, Group] = {}
    for key, by_seed in candidates.items():
        group = Group(*key, expected_seeds=expected)
        for seed, same_seed in sorted(by_seed.items()):
            same_seed.sort(key=lambda r: r.mtime, reverse=True)
            group.runs[seed] = same_seed[0]
            for older in same_seed[1:]:
                issues.append(Issue(*key, seed, "duplicate",
                                    f"older than {same_seed[0].log_path}; not used",
                                    older.log_path))
                logger.info("%s / %s seed %s: %d runs, using the newest log %s", key[1],
                            key[2], seed, len(same_seed), same_seed[0].log_path)
        for metric in METRICS:
            group.stats[metric] = Stat.of([r.metrics[metric] for r in group.runs.values()
                                           if metric in r.metrics])
        for seed in group.missing_seeds:
            if key + (seed,) not in problem_keys:
                issues.append(Issue(*key, seed, "missing", "no run found"))
        groups[key] = group

    for issue in issues:   # a failed re-run next to a finished run of the same seed
        group = groups.get((issue.protocol, issue.method, issue.dataset))
        if issue.status in ("failed", "unfinished") and group and issue.seed in group.runs:
            issue.detail += f"; the finished run {group.runs[issue.seed].log_path} is used"

    averages = []  # only for methods run on at least one of the benchmark's datasets
    for proto, method in sorted({(k[0], k[1]) for k in groups}):
        present = {k[2] for k in groups if k[:2] == (proto, method)}
        if not present & set(BASE2NOVEL_DATASETS + DG_DATASETS):
            continue
        if proto == BASE2NOVEL:
            averages.append(_average(proto, method, groups, BASE2NOVEL_DATASETS,
                                     "Average (11)", METRICS))
        elif proto == CROSS:
            averages.append(_average(proto, method, groups, CROSS_TARGETS,
                                     "Average (10 targets)", ("accuracy",)))

    ordered = sorted(groups.values(), key=lambda g: (g.protocol, g.method,
                                                     _dataset_sort_key(g.dataset)))
    status_order = ["failed", "unfinished", "missing", "duplicate", "ignored", "unidentified"]
    issues.sort(key=lambda x: (str(x.protocol), str(x.method),
                               _dataset_sort_key(x.dataset or "~"), x.seed or 0,
                               status_order.index(x.status)))
    return Report(ordered, averages, issues, expected)


# --------------------------------------------------------------------------------------------
# Tables
# --------------------------------------------------------------------------------------------

@dataclass
class Table:
    title: str
    headers: list[str]
    rows: list[list[str]]
    caption: str = ""
    notes: list[str] = field(default_factory=list)

    def render(self, fmt: str = "github") -> str:
        parts = [f"## {self.title}", ""]
        if self.caption:
            parts += [self.caption, ""]
        parts.append(tabulate(self.rows, headers=self.headers, tablefmt=fmt,
                              disable_numparse=True))
        if self.notes:
            parts += [""] + [f"- {note}" for note in self.notes]
        return "\n".join(parts)


STD_CAPTION = ("mean ± std over seeds; std is the sample standard deviation (ddof=1), "
               "0 for a single seed. '(k/n seeds)' marks a mean over fewer seeds than expected.")


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.2f}"


def _cell(stat: Stat | None, expected: int) -> str:
    if stat is None or stat.n == 0:
        return "—"
    text = f"{stat.mean:.2f} ± {stat.std:.2f}"
    return text + (f" ({stat.n}/{expected} seeds)" if stat.n < expected else "")


def _short_note(avg: Average, expected: int, report: Report) -> str:
    parts = [f"{display_name(d)} {report.group(avg.protocol, avg.method, d).n}/{expected}"
             for d in avg.short]
    return f"{avg.method} {avg.label}: datasets with fewer seeds: {', '.join(parts)}"


def _base2novel_table(report: Report) -> Table | None:
    methods = report.methods(BASE2NOVEL)
    if not methods:
        return None
    expected = len(report.expected_seeds)
    rows = []
    for method in methods:
        for g in (g for g in report.groups if (g.protocol, g.method) == (BASE2NOVEL, method)):
            mark = "" if g.complete else f" ({g.n}/{expected} seeds)"
            rows.append([method, display_name(g.dataset), _cell(g.stats["base"], expected),
                         _cell(g.stats["novel"], expected),
                         _num(g.hm_of_means) + (mark if g.n else ""),
                         _cell(g.stats["hm"], expected), f"{g.n}/{expected}", ""])
        avg = report.average(BASE2NOVEL, method)
        if avg is None:  # none of the 11 benchmark datasets (e.g. the demo's toy data)
            pass
        elif avg.values is None:
            missing = ", ".join(display_name(d) for d in avg.missing)
            rows.append([method, avg.label, "—", "—", "—", "—", "",
                         f"not computed, missing: {missing}"])
        else:
            short = ", ".join(f"{display_name(d)} "
                              f"{report.group(BASE2NOVEL, method, d).n}/{expected}"
                              for d in avg.short)
            rows.append([method, avg.label, _num(avg.values.get("base")),
                         _num(avg.values.get("novel")), _num(avg.hm_of_means),
                         _num(avg.values.get("hm")), "",
                         f"fewer seeds: {short}" if short else ""])
    caption = ("Base / Novel / 'HM (seeds)': " + STD_CAPTION + " HM = 2·B·N/(B+N) of the mean "
               "base and mean novel accuracy (the paper's convention); 'HM (seeds)' is the mean "
               "± std of the per-seed HM. Average (11): mean over the 11 datasets of the "
               "per-dataset means, its HM is the HM of the averaged base and novel; it is only "
               "computed when all 11 datasets have results.")
    return Table("Base-to-novel", ["Method", "Dataset", "Base", "Novel", "HM",
                                   "HM (seeds)", "Seeds", "Note"], rows, caption)


def _cross_columns(report: Report) -> list[str]:
    present = {g.dataset for g in report.groups if g.protocol == CROSS}
    order = [CROSS_SOURCE, *CROSS_TARGETS, "__avg__", *DG_DATASETS]
    extra = sorted(present - set(order))
    return [d for d in order if d in present or d == "__avg__"] + extra


def _cross_table(report: Report) -> Table | None:
    methods = report.methods(CROSS)
    if not methods:
        return None
    expected = len(report.expected_seeds)
    columns = _cross_columns(report)
    headers = ["Method"] + ["Average (10)" if d == "__avg__" else display_name(d)
                            for d in columns]
    rows, notes = [], []
    for method in methods:
        avg = report.average(CROSS, method)
        row = [method]
        for d in columns:
            if d == "__avg__":
                row.append(_num(avg.values.get("accuracy")) if avg and avg.values else "—")
            else:
                group = report.group(CROSS, method, d)
                row.append(_cell(group.stats["accuracy"] if group else None, expected))
        rows.append(row)
        if avg is None:
            continue
        if avg.values is None:
            notes.append(f"{method}: Average (10) not computed, missing: "
                         + ", ".join(display_name(d) for d in avg.missing))
        elif avg.short:
            notes.append(_short_note(avg, expected, report))
    caption = ("Accuracy, " + STD_CAPTION + " Source ImageNet, the 10 cross-dataset targets, "
               "their average (only when all 10 are present), then domain generalisation.")
    return Table("Cross-dataset and domain generalisation", headers, rows, caption, notes)


def _comparison_table(report: Report, protocol: str) -> Table | None:
    methods = report.methods(protocol)
    if len(methods) < 2:
        return None
    expected = len(report.expected_seeds)
    if protocol == BASE2NOVEL:
        datasets = sorted({g.dataset for g in report.groups if g.protocol == protocol},
                          key=_dataset_sort_key)
        avg_label, what = "Average (11)", "HM of the mean base and mean novel accuracy"
    else:
        datasets = [d for d in _cross_columns(report) if d != "__avg__"]
        avg_label, what = "Average (10)", "mean accuracy"
    rows, notes = [], []
    for method in methods:
        row = [method]
        for d in datasets:
            g = report.group(protocol, method, d)
            if g is None or g.n == 0:
                row.append("—")
                continue
            value = g.hm_of_means if protocol == BASE2NOVEL else g.stats["accuracy"].mean
            row.append(_num(value) + ("" if g.complete else f" ({g.n}/{expected})"))
        avg = report.average(protocol, method)
        if avg is None:
            row.append("—")
        elif avg.values is None:
            row.append("—")
            notes.append(f"{method}: {avg_label} not computed, missing: "
                         + ", ".join(display_name(d) for d in avg.missing))
        else:
            row.append(_num(avg.hm_of_means if protocol == BASE2NOVEL
                            else avg.values.get("accuracy")))
        rows.append(row)
    title = "Comparison, " + ("base-to-novel HM" if protocol == BASE2NOVEL else "cross-dataset")
    caption = f"Per method and dataset: {what} over seeds; '(k/n)' = fewer seeds than expected."
    return Table(title, ["Method"] + [display_name(d) for d in datasets] + [avg_label],
                 rows, caption, notes)


def _issues_table(report: Report) -> Table:
    seeds = " ".join(str(s) for s in report.expected_seeds)
    rows = [[i.protocol or "?", i.method or "?", display_name(i.dataset) if i.dataset else "?",
             "?" if i.seed is None else str(i.seed), i.status, i.detail,
             str(i.log_path) if i.log_path else ""] for i in report.issues]
    table = Table("Missing / unfinished", ["Protocol", "Method", "Dataset", "Seed", "Status",
                                           "Detail", "Log"], rows,
                  f"Expected seeds: {seeds}. Failed / unfinished / duplicate / ignored runs "
                  "are not used in any mean.")
    if not rows:
        table.rows = [["—", "—", "—", "—", "none", "all expected seeds finished", ""]]
    return table


def format_tables(report: Report) -> list[Table]:
    """All tables of a report, in print order."""
    tables = [_base2novel_table(report), _comparison_table(report, BASE2NOVEL),
              _cross_table(report), _comparison_table(report, CROSS), _issues_table(report)]
    return [t for t in tables if t is not None]


def render(tables: Sequence[Table]) -> str:
    return "# Results\n\n" + "\n\n".join(t.render() for t in tables) + "\n"


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------

CSV_FIELDS = (["protocol", "method", "dataset", "kind", "n_seeds", "expected_seeds", "seeds"]
              + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")]
              + ["hm_of_means"])


def csv_rows(report: Report) -> list[dict]:
    """One row per (protocol, method, dataset), plus computed averages (kind=average)."""
    expected = " ".join(map(str, report.expected_seeds))
    rows = []
    for g in report.groups:
        row = {"protocol": g.protocol, "method": g.method, "dataset": g.dataset,
               "kind": "dataset", "n_seeds": g.n, "expected_seeds": expected,
               "seeds": " ".join(map(str, sorted(g.runs))), "hm_of_means": g.hm_of_means}
        for metric, stat in g.stats.items():
            row.update({f"{metric}_mean": stat.mean, f"{metric}_std": stat.std,
                        f"{metric}_n": stat.n})
        rows.append(row)
    for avg in report.averages:
        if avg.values is not None:
            row = {"protocol": avg.protocol, "method": avg.method, "dataset": avg.label,
                   "kind": "average", "expected_seeds": expected,
                   "hm_of_means": avg.hm_of_means}
            row.update({f"{m}_mean": v for m, v in avg.values.items()})
            rows.append(row)
    for row in rows:
        for key, value in row.items():
            if isinstance(value, float):
                row[key] = f"{value:.4f}"
    return rows


def write_csv(report: Report, path: str | os.PathLike) -> None:
    handle = io.StringIO(newline="")
    writer = csv.DictWriter(handle, fieldnames=CSV_FIELDS, restval="")
    writer.writeheader()
    writer.writerows(csv_rows(report))
    atomic_write_text(path, handle.getvalue())


def plot(report: Report, path: str | os.PathLike) -> bool:
    """Grouped bars (base / novel / HM, or accuracy for cross) per dataset, one panel per
    protocol and method, with std error bars; a protocol with a single dataset gets one panel
    with a bar group per method. Returns False when there is nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    finished = [g for g in report.groups if g.n]
    # the same dataset positions in every panel of a protocol, so panels line up
    columns = {p: sorted({g.dataset for g in finished if g.protocol == p}, key=_dataset_sort_key)
               for p in {g.protocol for g in finished}}
    # one panel per protocol and method; a protocol with a single dataset (the demo): one
    # panel with the methods side by side
    panels = sorted({(g.protocol, None if len(columns[g.protocol]) == 1 else g.method)
                     for g in finished},
                    key=lambda pm: (PROTOCOLS.index(pm[0]) if pm[0] in PROTOCOLS else 9,
                                    pm[1] or ""))
    if not panels:
        return False
    n_columns = [len(columns[p]) if m else len({g.method for g in finished if g.protocol == p})
                 for p, m in panels]
    width = max(8.0, 0.9 * max(n_columns) + 3)
    fig = Figure(figsize=(width, 3.2 * len(panels)))
    FigureCanvasAgg(fig)
    for index, (protocol, method) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, index + 1)
        if method is None:
            groups = sorted((g for g in finished if g.protocol == protocol), key=lambda g: g.method)
            datasets = [g.method for g in groups]
            xs_of = {g.method: i for i, g in enumerate(groups)}
            title = f"{display_name(columns[protocol][0])}, {protocol} (mean ± std over seeds)"
            key_of = (lambda g: g.method)
        else:
            datasets = columns[protocol]
            groups = [g for g in finished if (g.protocol, g.method) == (protocol, method)]
            xs_of = {g.dataset: datasets.index(g.dataset) for g in groups}
            title = f"{method}, {protocol} (mean ± std over seeds)"
            key_of = (lambda g: g.dataset)
        series = (("base", "Base"), ("novel", "Novel"), ("hm", "HM")) \
            if protocol == BASE2NOVEL else (("accuracy", "Accuracy"),)
        bar = 0.8 / len(series)
        for k, (metric, label) in enumerate(series):
            heights = [(g.hm_of_means if metric == "hm" else g.stats[metric].mean) or 0.0
                       for g in groups]
            errors = [g.stats[metric].std or 0.0 for g in groups]
            xs = [xs_of[key_of(g)] + (k - (len(series) - 1) / 2) * bar for g in groups]
            ax.bar(xs, heights, bar, yerr=errors, capsize=2, label=label)
        ax.set_xticks(range(len(datasets)))
        ax.set_xticklabels([display_name(d) for d in datasets], rotation=30, ha="right",
                           fontsize=8)
        ax.set_xlim(-0.6, len(datasets) - 0.4)
        ax.set_ylabel("accuracy (%)")
        ax.set_ylim(0, 100)
        ax.set_title(title, fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return True


# --------------------------------------------------------------------------------------------
# Command line
# --------------------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m promptkd.results",
        description="Collect the RESULT lines of run logs into mean ± std tables.")
    parser.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR",
                        help="directories searched recursively for log.txt files")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                        help="expected seeds; runs with other seeds are ignored (default 1 2 3)")
    parser.add_argument("--out", metavar="PREFIX",
                        help="write PREFIX.csv, PREFIX.md (and PREFIX.png); "
                             "default RUNS_DIR/results")
    parser.add_argument("--plot", action="store_true", help="also write PREFIX.png")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="only this protocol")
    parser.add_argument("--newest-log", action="store_true",
                        help="per run directory use the most recently modified of log.txt and "
                             "log.txt-<time> (stock Dassl writes re-runs to log.txt-<time>) "
                             "instead of log.txt")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    for folder in args.runs_dirs:
        if not Path(folder).is_dir():
            sys.stderr.write(f"error: {folder} is not a directory\n")
            return 2
    logs = find_runs(args.runs_dirs, newest=args.newest_log)
    if not logs:
        sys.stderr.write("error: no log.txt found under " + ", ".join(args.runs_dirs) + "\n")
        return 2

    runs = [parse_log(path) for path in logs]
    report = aggregate(runs, seeds=args.seeds, protocol=args.protocol)
    if not report.groups and not report.issues:
        sys.stderr.write(f"error: no {args.protocol} run found\n")
        return 2
    text = render(format_tables(report))

    prefix = Path(args.out) if args.out else Path(args.runs_dirs[0]) / "results"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    outputs = [prefix.with_name(prefix.name + ".csv"), prefix.with_name(prefix.name + ".md")]
    write_csv(report, outputs[0])
    atomic_write_text(outputs[1], text)
    if args.plot:
        png = prefix.with_name(prefix.name + ".png")
        if plot(report, png):
            outputs.append(png)
        else:
            logger.warning("nothing to plot: no finished run")
    print(text + "\nWritten: " + ", ".join(str(p) for p in outputs))
    return 0


if __name__ == "__main__":
    run_cli(main)
