"""Turn a folder of training / evaluation runs into the paper's results tables.

    promptkd results RUNS_DIR [RUNS_DIR ...] [--seeds 1 2 3] [--out PREFIX]
                               [--plot] [--protocol base2novel|cross] [--newest-log]

A run is read from its records (`run.json`, `result.json`: promptkd.records); a run of an
earlier version from its log's last `RESULT {json}` line, or, when it has none, from the yacs
config dump atop the log, else its folder names (`.../base2new/promptkd/imagenet/seed1`). A
traceback in the log marks a run failed. Runs are grouped by (protocol, method, dataset) and
reported as mean ± std over seeds (base / novel / HM, or accuracy), with the average over the 11
base-to-novel datasets or the 10 cross-dataset targets, a method x dataset comparison, and every
expected seed without a finished run. Writes PREFIX.md, PREFIX.csv (and PREFIX.png); no torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import pandas as pd

from promptkd.records import RESULT_FILE, RUN_FILE, read_json

from .errors import run_cli
from .io import atomic_write, atomic_write_text

logger = logging.getLogger(__name__)

#: The 11 base-to-novel datasets (Dassl registered names), in the paper's column order.
BASE2NOVEL_DATASETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                       "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101")
CROSS_SOURCE, CROSS_TARGETS = "ImageNet", BASE2NOVEL_DATASETS[1:]  # the source; the 10 averaged targets
DG_DATASETS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
DATASET_ORDER = BASE2NOVEL_DATASETS + DG_DATASETS
DISPLAY_NAMES = {"OxfordFlowers": "Flowers102", "DescribableTextures": "DTD", "ImageNetV2": "ImageNet-V2",
                 "ImageNetSketch": "ImageNet-Sketch", "ImageNetA": "ImageNet-A", "ImageNetR": "ImageNet-R"}
BASE2NOVEL, CROSS = "base2novel", "cross"
PROTOCOLS, METRICS, KEYS = (BASE2NOVEL, CROSS), ("base", "novel", "hm", "accuracy"), ["protocol", "method", "dataset"]
# Spellings in folder names and config dumps (lower case, no separators) -> the name used.
_DATASETS = {**{d.lower(): d for d in DATASET_ORDER}, "dtd": "DescribableTextures", "fgvc": "FGVCAircraft",
             "flowers102": "OxfordFlowers", "flowers": "OxfordFlowers"}
_TRAINERS = {**{t.lower(): t for t in ("PromptKD", "PromptKDTeacher", "PromptSRC", "CoOp", "CoCoOp", "MaPLe",
                                       "IVLP", "VPT", "ZeroshotCLIP", "ZeroshotCLIP2")},
             "zsclip": "ZeroshotCLIP", "clip": "ZeroshotCLIP"}
_PROTOCOLS = {"base2novel": BASE2NOVEL, "base2new": BASE2NOVEL, "b2n": BASE2NOVEL, "cross": CROSS, "xd": CROSS,
              "crossdataset": CROSS, "dg": CROSS, "domaingeneralization": CROSS, "domaingeneralisation": CROSS}
LOG_NAME, RESULT_MARKER, TRACEBACK = "log.txt", "RESULT {", "Traceback (most recent call last)"
_ROTATED_RE = re.compile(r"^log\.txt-(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})$")
_EPOCH_RE = re.compile(r"epoch \[(\d+)/(\d+)\]")
_CFG_LINE_RE = re.compile(r"^( *)([A-Z][A-Z0-9_]*):(?: (.*))?$")
_ARG_LINE_RE = re.compile(r"^([a-z][a-z0-9_]*):(?: (.*))?$")
STD_CAPTION = ("mean ± std over seeds; std is the sample standard deviation (ddof=1), 0 for a single seed. "
               "'(k/n seeds)' marks a mean over fewer seeds than expected.")


def _norm(text) -> str:
    return re.sub(r"[^a-z0-9]", "", str(text).lower())


def display_name(dataset: str) -> str:
    return DISPLAY_NAMES.get(dataset, dataset)


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N); 0 when both are 0; NaN when either is unknown."""
    if pd.isna(base) or pd.isna(novel):
        return math.nan
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def _order(dataset) -> tuple:
    return (0, DATASET_ORDER.index(dataset), "") if dataset in DATASET_ORDER else (1, 0, str(dataset))


# --- finding and reading runs ----------------------------------------------------------------

def _pick_log(names, folder: Path, newest: bool) -> Path:
    """`log.txt` (the latest run; a warning if a rotated log is newer), else the newest rotated
    `log.txt-<time>` by the time in its name; with `newest`, the most recently modified."""
    mtime = {n: (folder / n).stat().st_mtime for n in names}
    if newest:
        return folder / max(names, key=mtime.get)
    if LOG_NAME in names:
        if newer := sorted(n for n in names if mtime[n] > mtime[LOG_NAME] + 1):
            logger.warning("%s: using log.txt as the latest run, but %s was modified after it (stock Dassl "
                           "setup_logger writes a re-run to log.txt-<time>; use --newest-log if so)",
                           folder, ", ".join(newer))
        return folder / LOG_NAME
    return folder / max(names, key=lambda n: ((m.group(1) if (m := _ROTATED_RE.match(n)) else ""), mtime[n]))


def find_runs(dirs, newest: bool = False) -> list[Path]:
    """One file per run folder under `dirs`: its log (see `_pick_log`), else its run.json."""
    found, seen = [], set()
    for root in dirs:
        for folder, subdirs, files in os.walk(root):
            subdirs.sort()
            logs = sorted(f for f in files if f == LOG_NAME or f.startswith(LOG_NAME + "-"))
            if (logs or RUN_FILE in files) and Path(folder).resolve() not in seen:
                seen.add(Path(folder).resolve())
                found.append(_pick_log(logs, Path(folder), newest) if logs else Path(folder) / RUN_FILE)
    return found


@dataclass
class Run:
    log_path: Path                   # the run's log, or its run.json when it has none
    status: str                      # ok | unfinished | failed
    protocol: str | None = None
    trainer: str | None = None
    dataset: str | None = None       # Dassl registered name
    seed: int | None = None
    metrics: dict = field(default_factory=dict)
    selection: str | None = None     # last_epoch | best_base_test
    backbone: str | None = None
    mtime: float = 0.0
    detail: str = ""                 # why a run is unfinished / failed


def parse_config_dump(lines) -> tuple[dict, dict]:
    """A log's yacs config dump (dotted keys) and Dassl's argument dump, as strings. The dump runs
    from the `** Config **` banner (or the first upper-case top-level key) to the first other line."""
    config, args, stack, started = {}, {}, [], False
    for line in (raw.rstrip("\n") for raw in lines):
        match = _CFG_LINE_RE.match(line)
        if not started and not ("** Config **" in line or (match and not line.startswith(" "))):
            if arg := _ARG_LINE_RE.match(line):
                args.setdefault(arg.group(1), (arg.group(2) or "").strip())
            continue
        started = True
        if not match:
            if config and line.strip() and set(line.strip()) != {"*"}:
                break
            continue
        indent, key, value = len(match.group(1)), match.group(2), match.group(3)
        stack = [(i, k) for i, k in stack if i < indent]
        if value is None:  # a node: its children follow, indented
            stack.append((indent, key))
        else:
            config.setdefault(".".join([k for _, k in stack] + [key]), value.strip())
    return config, args


def infer_from_path(path: Path) -> dict:
    """Protocol, trainer, dataset and seed from folder names, e.g. output/base2new/promptkd/imagenet/seed1."""
    found = {}
    for part in path.parts:
        if m := re.fullmatch(r"seed[_-]?(\d+)", part, re.IGNORECASE):
            found["seed"] = m.group(1)
        elif _norm(part) in _DATASETS:
            found["dataset"] = part
        elif part.lower() in _TRAINERS:
            found["trainer"] = part
        elif _norm(part) in _PROTOCOLS:
            found["protocol"] = part
    return found


def parse_log(path) -> Run:
    """A run folder's records (else its log's last RESULT line), and its status from the log."""
    path = Path(path)
    lines = [] if path.name == RUN_FILE else path.read_text(encoding="utf-8", errors="replace").splitlines()
    result, at, traceback_at, epoch = None, -1, -1, None
    for i, line in enumerate(lines):
        if RESULT_MARKER in line:
            try:
                result, at = json.JSONDecoder().raw_decode(line[line.index(RESULT_MARKER) + 7:])[0], i
            except json.JSONDecodeError:
                logger.warning("%s:%d: unreadable RESULT line ignored", path, i + 1)
        traceback_at, epoch = i if TRACEBACK in line else traceback_at, _EPOCH_RE.search(line) or epoch
    if run := read_json(path.parent / RUN_FILE):  # this version's records: what the run was, what it scored
        record = read_json(path.parent / RESULT_FILE) or {}
        result = {**record, **record.get("metrics", {})} if record.get("run_id") == run.get("run_id") else None
        identity = run
    elif not (identity := result):  # an earlier version's run without a RESULT line
        config, args = parse_config_dump(lines[:5000])
        dataset_file = args.get("dataset_config_file") and Path(args["dataset_config_file"]).stem
        identity = {**infer_from_path(path.parent), **{k: v for k, v in (
            ("protocol", config.get("TRAINER.MODAL")), ("trainer", config.get("TRAINER.NAME") or args.get("trainer")),
            ("dataset", config.get("DATASET.NAME") or dataset_file), ("seed", config.get("SEED") or args.get("seed")),
            ("selection", config.get("TEST.MODEL_SELECTION")), ("backbone", config.get("MODEL.BACKBONE.NAME"))) if v}}
    status, detail = "ok", ""
    if traceback_at > at:
        tail = [ln.strip() for ln in lines[traceback_at + 1:] if ln.strip()]
        status, detail = "failed", (tail[-1] if tail else "traceback")[:160]
        detail += f" (after {'result.json' if run else 'a RESULT line'})" if result is not None else ""
        result = None
    elif result is None:
        status, detail = "unfinished", f"no {'result.json' if run else 'RESULT line'}" + (
            f", last seen at epoch {epoch.group(1)}/{epoch.group(2)}" if epoch else "")
    metrics = {k: float(v) for k, v in (result or {}).items()
               if k in METRICS and isinstance(v, (int, float)) and not isinstance(v, bool)}
    if "hm" not in metrics and {"base", "novel"} <= set(metrics):
        metrics["hm"] = harmonic_mean(metrics["base"], metrics["novel"])
    seed, trainer, dataset = str(identity.get("seed")).strip(), *(identity.get(k) or "" for k in ("trainer", "dataset"))
    return Run(path, status, _PROTOCOLS.get(_norm(identity.get("protocol")), identity.get("protocol")),
               _TRAINERS.get(trainer.lower(), trainer) or None, _DATASETS.get(_norm(dataset), dataset) or None,
               int(seed) if seed.lstrip("-").isdigit() else None, metrics, identity.get("selection"),
               identity.get("backbone"), path.stat().st_mtime, detail)


# --- aggregation ------------------------------------------------------------------------------

def _method_labels(runs) -> dict[int, str]:
    """Method label per run: the trainer, plus backbone / model selection when a trainer was run
    with several (never averaged together); a backbone file by its stem when that is unique."""
    variants = {}
    for run in runs:
        if run.trainer and run.status == "ok":
            variants.setdefault(run.trainer, set()).add((run.backbone, run.selection))

    def stem(b):
        return Path(b).stem if b and b.endswith((".pt", ".pth", ".bin", ".ckpt", ".tar")) else b
    labels = {}
    for i, run in enumerate(runs):
        if run.trainer:
            backbones, selections = ({v[k] for v in variants.get(run.trainer, ())} for k in (0, 1))
            backbone = stem(run.backbone) if len({stem(b) for b in backbones}) == len(backbones) else run.backbone
            extra = [backbone or "?"] * (len(backbones) > 1) + [run.selection or "?"] * (len(selections) > 1)
            labels[i] = f"{run.trainer} ({', '.join(extra)})" if extra else run.trainer
    return labels


@dataclass
class Report:
    groups: pd.DataFrame    # (protocol, method, dataset) -> n, seeds, missing, complete, <m>_mean/_std/_n, hm_of_means
    averages: pd.DataFrame  # (protocol, method) -> label, <m> (mean over the datasets), hm_of_means, missing, short
    issues: list            # (protocol, method, dataset, seed, status, detail, log_path) of seeds / runs not used
    expected_seeds: tuple
    used: pd.DataFrame      # the runs behind the means, one per (protocol, method, dataset, seed)

    def group(self, protocol, method, dataset) -> pd.Series | None:
        key = (protocol, method, dataset)
        return self.groups.loc[key] if key in self.groups.index else None

    def average(self, protocol, method) -> pd.Series | None:
        return self.averages.loc[(protocol, method)] if (protocol, method) in self.averages.index else None

    def methods(self, protocol) -> list[str]:
        return sorted({m for p, m, _ in self.groups.index if p == protocol})


def aggregate(runs, seeds=(1, 2, 3), protocol: str | None = None) -> Report:
    """Mean ± std over seeds per (protocol, method, dataset) of the finished runs with a seed in
    `seeds` (of several runs of one seed, the newest log's); every other run or seed is an issue."""
    expected, runs = tuple(seeds), [r for r in runs if protocol is None or r.protocol in (None, protocol)]
    spelled = {r.trainer.lower(): r.trainer for r in runs if r.trainer and r.status == "ok"}
    for run in runs:  # a trainer named from a folder, spelt as its finished runs spell it
        run.trainer = spelled.get(str(run.trainer).lower(), run.trainer)
    labels, cols = _method_labels(runs), KEYS + ["seed", "status", "detail", "log_path"]
    df = pd.DataFrame([(r.protocol, labels.get(i), r.dataset, r.seed, r.status, r.detail, r.log_path, r.mtime)
                       for i, r in enumerate(runs)], columns=cols + ["mtime"], dtype=object)
    df = df.join(pd.DataFrame([r.metrics for r in runs], columns=list(METRICS), index=df.index, dtype=float))
    known = df[KEYS].notna().all(axis=1) & df.protocol.isin(PROTOCOLS)
    ok, key = known & (df.status == "ok"), KEYS + ["seed"]
    unknown = df[~known].assign(status=lambda f: f.status.where(f.status != "ok", "unidentified"), detail=lambda f: [
        "; ".join(filter(None, [d, "trainer or dataset unknown" if p in PROTOCOLS else f"unknown protocol {p or ''}"
                                .strip()])) for d, p in zip(f.detail, f.protocol)])
    ignored = df[ok & ~df.seed.isin(expected)].assign(status="ignored", detail=lambda f: [
        "seed unknown" if s is None else f"seed {s} not in --seeds" for s in f.seed])
    used = df[ok & df.seed.isin(expected)].sort_values("mtime", ascending=False, kind="stable")
    newest = used.drop_duplicates(key).set_index(key).log_path
    duplicates = used[used.duplicated(key)].assign(status="duplicate", detail=lambda f: [
        f"older than {newest[tuple(k)]}; not used" for k in f[key].values])
    used, problems = used.drop_duplicates(key), df[known & ~ok]
    problems = problems.assign(detail=[d + (f"; the finished run {newest[k]} is used" if k in newest.index else "")
                                       for d, k in zip(problems.detail, map(tuple, problems[key].values))])

    index = pd.MultiIndex.from_frame(pd.concat([used, problems])[KEYS].drop_duplicates())
    stats = used.groupby(KEYS)[list(METRICS)].agg(["mean", "std", "count"]).reindex(index)
    groups = pd.DataFrame({"seeds": used.groupby(KEYS).seed.agg(sorted)}).reindex(index)
    groups["seeds"] = [s if isinstance(s, list) else [] for s in groups.seeds]
    groups = groups.assign(n=groups.seeds.apply(len), missing=[[s for s in expected if s not in have]
                                                               for have in groups.seeds])
    groups["complete"] = groups.n == len(expected)
    for m in METRICS:
        n = stats[(m, "count")].fillna(0).astype(int)
        groups[f"{m}_mean"], groups[f"{m}_std"], groups[f"{m}_n"] = stats[(m, "mean")], stats[(m, "std")].where(
            n != 1, 0.0), n  # pandas' std is the sample std (ddof=1); 0 for one seed
    groups["hm_of_means"] = list(map(harmonic_mean, groups.base_mean, groups.novel_mean))
    groups = groups.iloc[sorted(range(len(index)), key=lambda i: (*index[i][:2], _order(index[i][2])))]
    bad = set(map(tuple, problems[key].values))
    missing = pd.DataFrame([(*k, s, "missing", "no run found", None) for k, g in groups.iterrows()
                            for s in g.missing if (*k, s) not in bad], columns=cols, dtype=object)
    order = ["failed", "unfinished", "missing", "duplicate", "ignored", "unidentified"]
    issues = pd.concat([f[cols].astype(object) for f in (unknown, problems, ignored, duplicates, missing) if len(f)]
                       or [missing])
    issues = sorted(issues.where(issues.notna(), None).itertuples(index=False), key=lambda x: (
        str(x.protocol), str(x.method), _order(x.dataset or "~"), x.seed or 0, order.index(x.status)))
    return Report(groups, _averages(groups, expected), issues, expected, used)


def _averages(groups: pd.DataFrame, expected: tuple) -> pd.DataFrame:
    """Per (protocol, method) that ran a benchmark dataset: the mean over the 11 base-to-novel
    datasets (or the 10 cross-dataset targets) of the per-dataset means, when none is missing."""
    rows = []
    for (proto, method), sub in groups.groupby(level=[0, 1]):
        sub = sub.droplevel([0, 1])
        if set(sub.index) & set(DATASET_ORDER):
            datasets, label, metrics = ((BASE2NOVEL_DATASETS, "Average (11)", METRICS) if proto == BASE2NOVEL
                                        else (CROSS_TARGETS, "Average (10 targets)", ("accuracy",)))
            sub = sub.reindex(list(datasets))
            missing = [d for d, n in sub.n.items() if not n > 0]
            rows.append({"protocol": proto, "method": method, "label": label, "missing": missing,
                         "short": [d for d, n in sub.n.items() if 0 < n < len(expected)], **{
                             m: math.nan if missing or sub[f"{m}_mean"].isna().any() else sub[f"{m}_mean"].mean()
                             for m in metrics}})
    averages = pd.DataFrame(rows, columns=["protocol", "method", "label", "missing", "short", *METRICS])
    averages["hm_of_means"] = list(map(harmonic_mean, averages.base, averages.novel))
    return averages.set_index(["protocol", "method"])


# --- tables and files -------------------------------------------------------------------------

class Table(NamedTuple):
    title: str
    headers: list
    rows: list
    caption: str = ""
    notes: list = []

    def render(self) -> str:
        table = pd.DataFrame(self.rows, columns=self.headers).to_markdown(index=False, tablefmt="github",
                                                                          disable_numparse=True)
        return "\n\n".join([f"## {self.title}"] + [self.caption] * bool(self.caption) + [table] +
                           ["\n".join(f"- {note}" for note in self.notes)] * bool(self.notes))


def _num(value) -> str:
    return "—" if value is None or pd.isna(value) else f"{value:.2f}"


def _cell(g, metric: str, expected: int, mark=" ({}/{} seeds)", column=None) -> str:
    """mean ± std of `metric` in group `g` (or its `column` alone), marked when over fewer seeds than expected."""
    if not (n := 0 if g is None else int(g[f"{metric}_n"] if column is None else g.n)):
        return "—"
    text = f"{g[metric + '_mean']:.2f} ± {g[metric + '_std']:.2f}" if column is None else _num(g[column])
    return text + (mark.format(n, expected) if n < expected else "")


def _short(report: Report, protocol, method, avg) -> str:
    return ", ".join(f"{display_name(d)} {report.group(protocol, method, d).n}/{len(report.expected_seeds)}"
                     for d in avg.short)


def _base2novel_table(report: Report, e: int) -> Table | None:
    rows = []
    for method in report.methods(BASE2NOVEL):
        mine = report.groups[[k[:2] == (BASE2NOVEL, method) for k in report.groups.index]]
        for (_, _, dataset), g in mine.iterrows():
            rows.append([method, display_name(dataset), _cell(g, "base", e), _cell(g, "novel", e),
                         _cell(g, "hm", e, column="hm_of_means"), _cell(g, "hm", e), f"{g.n}/{e}", ""])
        if (avg := report.average(BASE2NOVEL, method)) is not None:  # none off the 11 datasets (the demo's toy data)
            short = _short(report, BASE2NOVEL, method, avg)
            rows.append([method, avg.label, "—", "—", "—", "—", "", "not computed, missing: " + ", ".join(
                map(display_name, avg.missing))] if avg.missing else [method, avg.label, *map(
                    _num, (avg.base, avg.novel, avg.hm_of_means, avg.hm)), "", short and f"fewer seeds: {short}"])
    caption = ("Base / Novel / 'HM (seeds)': " + STD_CAPTION + " HM = 2·B·N/(B+N) of the mean base and mean novel "
               "accuracy (the paper's convention); 'HM (seeds)' is the mean ± std of the per-seed HM. Average (11): "
               "mean over the 11 datasets of the per-dataset means, its HM is the HM of the averaged base and novel; "
               "it is only computed when all 11 datasets have results.")
    return rows and Table("Base-to-novel", ["Method", "Dataset", "Base", "Novel", "HM", "HM (seeds)", "Seeds", "Note"],
                          rows, caption)


def _columns(report: Report, protocol: str) -> list[str]:
    """The datasets of `protocol` in the paper's order; '__avg__' where the cross table puts its average."""
    present = {d for p, _, d in report.groups.index if p == protocol}
    order = [CROSS_SOURCE, *CROSS_TARGETS, "__avg__", *DG_DATASETS]
    return sorted(present, key=_order) if protocol == BASE2NOVEL else \
        [d for d in order if d in present or d == "__avg__"] + sorted(present - set(order))


def _matrix(report: Report, protocol, columns, cell, avg_key, avg_label, title, caption, short=False):
    """Methods x `columns` of `protocol`: `cell(group)`, and in '__avg__' the average's `avg_key`."""
    averages = {m: report.average(protocol, m) for m in report.methods(protocol)}
    cells = pd.DataFrame([(m, d, ("—" if a is None or a.missing else _num(a[avg_key])) if d == "__avg__" else
                           cell(report.group(protocol, m, d))) for m, a in averages.items() for d in columns],
                         columns=["method", "dataset", "cell"])
    notes = [f"{m}: {avg_label} not computed, missing: " + ", ".join(map(display_name, a.missing)) if a.missing else
             f"{m} {a.label}: datasets with fewer seeds: {_short(report, protocol, m, a)}"
             for m, a in averages.items() if a is not None and (a.missing or (short and a.short))]
    return averages and Table(title, ["Method"] + [avg_label if d == "__avg__" else display_name(d) for d in columns],
                              cells.pivot(index="method", columns="dataset", values="cell")[columns].reset_index()
                              .values.tolist(), caption, notes)


def format_tables(report: Report) -> list[Table]:
    """All tables of a report, in print order."""
    e, several = len(report.expected_seeds), {p: len(report.methods(p)) > 1 for p in PROTOCOLS}
    hm, acc = (lambda g: _cell(g, "hm", e, " ({}/{})", "hm_of_means")), \
        (lambda g: _cell(g, "accuracy", e, " ({}/{})", "accuracy_mean"))
    compare = "Per method and dataset: {} over seeds; '(k/n)' = fewer seeds than expected."
    rows = [[i.protocol or "?", i.method or "?", display_name(i.dataset) if i.dataset else "?",
             "?" if i.seed is None else str(i.seed), i.status, i.detail, str(i.log_path or "")] for i in report.issues]
    return [t for t in [
        _base2novel_table(report, e),
        several[BASE2NOVEL] and _matrix(report, BASE2NOVEL, _columns(report, BASE2NOVEL) + ["__avg__"], hm,
                                        "hm_of_means", "Average (11)", "Comparison, base-to-novel HM",
                                        compare.format("HM of the mean base and mean novel accuracy")),
        _matrix(report, CROSS, _columns(report, CROSS), lambda g: _cell(g, "accuracy", e), "accuracy", "Average (10)",
                "Cross-dataset and domain generalisation", "Accuracy, " + STD_CAPTION + " Source ImageNet, the 10 "
                "cross-dataset targets, their average (only when all 10 are present), then domain generalisation.",
                short=True),
        several[CROSS] and _matrix(report, CROSS, [d for d in _columns(report, CROSS) if d != "__avg__"] + ["__avg__"],
                                   acc, "accuracy", "Average (10)", "Comparison, cross-dataset",
                                   compare.format("mean accuracy")),
        Table("Missing / unfinished", ["Protocol", "Method", "Dataset", "Seed", "Status", "Detail", "Log"],
              rows or [["—", "—", "—", "—", "none", "all expected seeds finished", ""]],
              f"Expected seeds: {' '.join(map(str, report.expected_seeds))}. Failed / unfinished / duplicate / "
              "ignored runs are not used in any mean.")] if t]


def render(tables) -> str:
    return "# Results\n\n" + "\n\n".join(t.render() for t in tables) + "\n"


CSV_FIELDS = (["protocol", "method", "dataset", "kind", "n_seeds", "expected_seeds", "seeds"]
              + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")] + ["hm_of_means"])


def write_csv(report: Report, path) -> None:
    """One row per (protocol, method, dataset), then the computed averages (kind=average)."""
    groups = report.groups.reset_index().assign(kind="dataset", n_seeds=lambda f: f.n,
                                                seeds=lambda f: [" ".join(map(str, s)) for s in f.seeds])
    averages = report.averages[[not m for m in report.averages.missing]].reset_index().assign(kind="average")
    table = pd.concat([groups, averages.rename(columns={"label": "dataset", **{m: f"{m}_mean" for m in METRICS}})])
    table = table.reindex(columns=CSV_FIELDS).assign(expected_seeds=" ".join(map(str, report.expected_seeds)))
    ints = ["n_seeds"] + [f"{m}_n" for m in METRICS]
    atomic_write_text(path, table.astype({k: "Int64" for k in ints}).to_csv(
        index=False, float_format="%.4f", lineterminator="\r\n"))


def plot(report: Report, path) -> bool:
    """Bars (base / novel / HM, or accuracy) with std error bars, one panel per protocol and method,
    datasets at the same places in a protocol's panels; a protocol with a single dataset gets one
    panel with the methods side by side. False when there is nothing to plot."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    done = report.groups[report.groups.n > 0].reset_index().assign(hm_mean=lambda f: f.hm_of_means)
    columns = {p: sorted(set(g.dataset), key=_order) for p, g in done.groupby("protocol")}
    panels = sorted({(p, None if len(columns[p]) == 1 else m) for p, m in zip(done.protocol, done.method)},
                    key=lambda pm: (PROTOCOLS.index(pm[0]), pm[1] or ""))
    if not panels:
        return False
    width = max(len(columns[p]) if m else done[done.protocol == p].method.nunique() for p, m in panels)
    fig = Figure(figsize=(max(8.0, 0.9 * width + 3), 3.2 * len(panels)))
    FigureCanvasAgg(fig)
    for index, (protocol, method) in enumerate(panels):
        series = {"base": "Base", "novel": "Novel", "hm": "HM"} if protocol == BASE2NOVEL else {"accuracy": "Accuracy"}
        rows = done[(done.protocol == protocol) & ((done.method == method) if method else True)]
        rows = rows.set_index("dataset").reindex(columns[protocol]) if method else rows.set_index("method").sort_index()
        bars = {s: rows[[f"{m}_{s}" for m in series]].set_axis(list(series.values()), axis=1)
                for s in ("mean", "std")}  # NaN: no bar (a dataset the panel lacks)
        ax = fig.add_subplot(len(panels), 1, index + 1)
        bars["mean"].plot.bar(ax=ax, yerr=bars["std"], capsize=2, width=0.8)
        ax.set_xticklabels([display_name(d) for d in rows.index], rotation=30, ha="right", fontsize=8)
        ax.set(xlabel="", ylabel="accuracy (%)", ylim=(0, 100), xlim=(-0.6, len(rows) - 0.4))
        name = f"{method}, {protocol}" if method else f"{display_name(columns[protocol][0])}, {protocol}"
        ax.set_title(f"{name} (mean ± std over seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return True


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="promptkd results",
                                     description="Collect the runs' records (or RESULT lines) into mean ± std tables.")
    parser.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR",
                        help="directories searched recursively for runs (run.json, log.txt)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                        help="expected seeds; runs with other seeds are ignored (default 1 2 3)")
    parser.add_argument("--out", metavar="PREFIX", help="write PREFIX.csv, PREFIX.md (and PREFIX.png); "
                                                        "default RUNS_DIR/results")
    parser.add_argument("--plot", action="store_true", help="also write PREFIX.png")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="only this protocol")
    parser.add_argument("--newest-log", action="store_true",
                        help="per run directory use the most recently modified of log.txt and log.txt-<time> "
                             "(stock Dassl writes re-runs to log.txt-<time>) instead of log.txt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    error = None
    if bad := [d for d in args.runs_dirs if not Path(d).is_dir()]:
        error = f"{bad[0]} is not a directory"
    elif not (found := find_runs(args.runs_dirs, newest=args.newest_log)):
        error = f"no log.txt found (and no run.json) under {', '.join(args.runs_dirs)}"
    elif (report := aggregate([parse_log(p) for p in found], args.seeds, args.protocol)).groups.empty \
            and not report.issues:
        error = f"no {args.protocol} run found"
    if error:
        sys.stderr.write(f"error: {error}\n")
        return 2
    text = render(format_tables(report))
    prefix = Path(args.out) if args.out else Path(args.runs_dirs[0]) / "results"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    outputs = [prefix.with_name(prefix.name + ext) for ext in (".csv", ".md", ".png")]
    write_csv(report, outputs[0])
    atomic_write_text(outputs[1], text)
    plotted = args.plot and plot(report, outputs[2])
    if args.plot and not plotted:
        logger.warning("nothing to plot: no finished run")
    print(text + "\nWritten: " + ", ".join(str(p) for p in outputs[:3 if plotted else 2]))
    return 0


if __name__ == "__main__":
    run_cli(main)
