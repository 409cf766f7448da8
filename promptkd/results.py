"""`promptkd results`: the paper's results tables from a folder of training / evaluation runs.

    promptkd results RUNS_DIR [RUNS_DIR ...] [--seeds 1 2 3] [--out PREFIX] [--plot]
                     [--protocol base2novel|cross|few_shot] [--newest-log]

A run is what its records say (`run.json`, `result.json`: promptkd.records) or, for a run of an
earlier version, its log's last `RESULT {json}` line; a log with neither is listed as unidentified,
a traceback in the log marks a run failed. pandas groups the runs by (protocol, method, dataset,
shots): mean ± std over seeds (base / novel / HM, or accuracy), the average over the 11 base-to-novel
datasets or the 10 cross-dataset targets, a method x dataset comparison, accuracy against labelled
shots for the few-shot protocol, and every expected seed without a finished run. Writes PREFIX.md,
PREFIX.csv (and PREFIX.png); no torch.
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import re
from collections import namedtuple
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from .errors import MissingFileError, UserError
from .extras import require
from .io import atomic_write, atomic_write_text
from .records import RESULT_FILE, RUN_FILE, read_json

logger = logging.getLogger(__name__)

#: The 11 base-to-novel datasets (Dassl registered names), in the paper's column order.
BASE2NOVEL_DATASETS = ("ImageNet", "Caltech101", "OxfordPets", "StanfordCars", "OxfordFlowers", "Food101",
                       "FGVCAircraft", "SUN397", "DescribableTextures", "EuroSAT", "UCF101")
CROSS_SOURCE, CROSS_TARGETS = "ImageNet", BASE2NOVEL_DATASETS[1:]  # the source; the 10 averaged targets
DG_DATASETS = ("ImageNetV2", "ImageNetSketch", "ImageNetA", "ImageNetR")
DATASET_ORDER = BASE2NOVEL_DATASETS + DG_DATASETS
DISPLAY_NAMES = {"OxfordFlowers": "Flowers102", "DescribableTextures": "DTD", "ImageNetV2": "ImageNet-V2",
                 "ImageNetSketch": "ImageNet-Sketch", "ImageNetA": "ImageNet-A", "ImageNetR": "ImageNet-R"}
BASE2NOVEL, CROSS, FEW_SHOT = "base2novel", "cross", "few_shot"
PROTOCOLS, METRICS = (BASE2NOVEL, CROSS, FEW_SHOT), ("base", "novel", "hm", "accuracy")
# A group: one table cell, the mean ± std over its seeds. shots: the labelled shots per class behind
# a few-shot run (run.json's labelled_shots; for a PromptKD student, its teacher's); 0 elsewhere.
KEYS = ["protocol", "method", "dataset", "shots"]
Issue = namedtuple("Issue", KEYS + ["seed", "status", "detail", "log_path"])  # a seed or run in no mean
ISSUE_ORDER = ("invalid", "failed", "unfinished", "missing", "duplicate", "ignored", "unidentified")
Table = namedtuple("Table", "title headers rows caption notes", defaults=("", ()))
LOG_NAME, TRACEBACK = "log.txt", "Traceback (most recent call last)"
_RESULT_RE, _EPOCH_RE = re.compile(r"RESULT (\{.*)"), re.compile(r"epoch \[(\d+)/(\d+)\]")
_ROTATED_RE = re.compile(r"^log\.txt-(\d{4}-\d{2}-\d{2}-\d{2}-\d{2}-\d{2})$")
STD_CAPTION = ("mean ± std over seeds; std is the sample standard deviation (ddof=1), 0 for a single seed. "
               "'(k/n seeds)' marks a mean over fewer seeds than expected.")


def display_name(dataset: str) -> str:
    return DISPLAY_NAMES.get(dataset, dataset)


def harmonic_mean(base: float, novel: float) -> float:
    """HM = 2·B·N / (B + N); 0 when both are 0; NaN when either is unknown."""
    if pd.isna(base) or pd.isna(novel):
        return math.nan
    return 0.0 if base + novel == 0 else 2.0 * base * novel / (base + novel)


def _method_order(label: str) -> tuple:
    """Sort key of method labels: by name, a distilled student ("PromptKD→CoOp (sym-KL)") right
    after the method it was distilled into ("CoOp"), which was trained with labels."""
    student = label.split("→", 1)[1] if "→" in label else None
    return ((student or label).split(" (")[0].split(" [")[0], student is not None, label)


def _order(dataset) -> tuple:
    """Sort key: the benchmark datasets in the paper's order, then any other by name."""
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


# One run folder: its log (or its run.json when it has none), status ok | unfinished | failed, its
# identity (dataset: the Dassl registered name; selection: last_epoch | best_base_test), metrics
# {base, novel, hm, accuracy}, the log's mtime and why a run is unfinished / failed (detail).
# pool: the unlabelled pool of a distilled run (`_pool_label`), pool_images its image count,
# pool_selection how labels chose the images (None: they did not); None for a run with no pool.
Run = namedtuple("Run", "log_path status protocol trainer dataset seed metrics selection backbone mtime detail shots "
                 "pool pool_images pool_selection",
                 defaults=(None, None, None, None, {}, None, None, 0.0, "", 0, None, None, None))
DEFAULT_POOL = "train"  # the published protocol: all train images of all classes


def _pool_label(pool) -> str | None:
    """run.json's pool as a short name: its sources joined by '+' (a folder or shard pattern by its
    last path part), then the budget: 'train', 'train_base', 'train+folder:extra (budget 1000)'."""
    if not isinstance(pool, dict) or not pool.get("sources"):
        return None
    names = [f"{s.partition(':')[0]}:{Path(s.partition(':')[2]).name}" if ":" in s else s for s in pool["sources"]]
    budget = pool.get("budget") or {}
    extra = (f" (budget {budget['requested']})" if budget.get("requested") else
             f" ({budget['per_class']}/class)" if budget.get("per_class") else "")
    return "+".join(names) + extra


#: what each protocol's mean needs of a run's metrics
REQUIRED_METRICS = {BASE2NOVEL: ("base", "novel"), CROSS: ("accuracy",), FEW_SHOT: ("accuracy",)}
#: run.json's fields that name a table cell: strings (or absent)
NAME_FIELDS = ("protocol", "trainer", "dataset", "objective_label", "selection", "backbone")


def _identity_problem(identity: dict, where) -> str:
    """Why a record's identity cannot name a table cell ("" if it can): a name that is not a
    string, a pool that is not an object."""
    for key in NAME_FIELDS:
        value = identity.get(key)
        if value is not None and not isinstance(value, str):
            return f"{where}: {key} is {json.dumps(value)[:60]}, not a string"
    pool = identity.get("pool")
    if pool is not None and not (isinstance(pool, dict) and isinstance(pool.get("sources"), list)
                                 and all(isinstance(x, str) for x in pool["sources"])):
        return f"{where}: pool is {json.dumps(pool)[:60]}, not a pool record (an object with a list of sources)"
    return ""


def _metrics_problem(metrics: dict, protocol, where) -> str:
    """Why a run's metrics cannot enter a mean ("" if they can): every metric it holds is a finite
    number of percent in [0, 100] (not a string, a bool, NaN), and it holds what its protocol's table
    needs (base and novel; accuracy). A run dropped from one column but kept in another would make
    the columns means over different seeds, and HM of their means wrong."""
    for key in METRICS:
        if key not in metrics:
            continue
        value = metrics[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return f"{where}: metric {key} is {json.dumps(value)[:40]}, not a number"
        if not math.isfinite(value) or not 0 <= value <= 100:
            return f"{where}: metric {key} is {value}, not an accuracy in percent (0 to 100)"
    missing = [k for k in REQUIRED_METRICS.get(protocol, ()) if k not in metrics]
    if missing:
        return f"{where}: no metric {' or '.join(missing)} (a {protocol} run records {', '.join(REQUIRED_METRICS[protocol])})"
    return ""


def parse_log(path) -> Run:
    """A run folder's identity and metrics from its records (else from its log's last RESULT
    line); failed when its log has a traceback after the result, unfinished without a result."""
    path = Path(path)
    lines = [] if path.name == RUN_FILE else path.read_text(encoding="utf-8", errors="replace").splitlines()
    result, result_at, traceback_at, epoch = None, -1, -1, None
    for i, line in enumerate(lines):
        try:
            if found := _RESULT_RE.search(line):  # the JSON object after "RESULT "
                result, result_at = json.JSONDecoder().raw_decode(found[1])[0], i
        except json.JSONDecodeError:
            logger.warning("%s:%d: unreadable RESULT line ignored", path, i + 1)
        traceback_at, epoch = i if TRACEBACK in line else traceback_at, _EPOCH_RE.search(line) or epoch
    if result is not None and not isinstance(result, dict):
        logger.warning("%s:%d: RESULT line is not a JSON object; ignored", path, result_at + 1)
        result = None
    identity, source, problem = result or {}, "RESULT line", ""
    metrics_where = f"{path.name}:{result_at + 1} (RESULT line)"
    if (run := read_json(path.parent / RUN_FILE)) is not None:  # this version's records: what the run was, what it scored
        record = read_json(path.parent / RESULT_FILE)
        identity, source, result, metrics_where = run, "result.json", None, str(path.parent / RESULT_FILE)
        if record is not None and record.get("run_id") != run.get("run_id"):
            source = (f"result.json of this run (result.json holds run {record.get('run_id')!r}, run.json "
                      f"{run.get('run_id')!r}: a re-run's result is missing, or the files were mixed)")
        elif record is not None:
            result = record.get("metrics")
            if not isinstance(result, dict):  # `"metrics": null`, a list, a number: not a result
                problem = (f"{metrics_where}: metrics is {json.dumps(result)[:60]}, not an object of metrics "
                           "(a finished run writes {\"base\": ..., \"novel\": ..., ...})")
                result = None
    if why := _identity_problem(identity, path.parent / RUN_FILE if run is not None else metrics_where):
        problem = problem or why  # listed under what of its identity is readable
        identity = {k: v for k, v in identity.items() if k != "pool" and (k not in NAME_FIELDS or isinstance(v, str))}
    status, detail = "ok", ""
    if problem:
        status, detail, result = "invalid", problem, None
        logger.warning("%s: not used in any mean: %s", path.parent, problem)
    elif traceback_at > result_at:
        tail = [ln.strip() for ln in lines[traceback_at + 1:] if ln.strip()]
        status, detail = "failed", (tail[-1] if tail else "traceback")[:160]
        detail += "" if result is None else f" (after {'result.json' if run else 'a RESULT line'})"
        result = None
    elif result is None:
        status, detail = "unfinished", f"no {source}" + (f", last seen at epoch {epoch[1]}/{epoch[2]}" if epoch else "")
    elif problem := _metrics_problem(result, identity.get("protocol"), metrics_where):
        status, detail, result = "invalid", problem, None
        logger.warning("%s: not used in any mean: %s", path.parent, problem)
    metrics = {k: float(v) for k, v in (result or {}).items() if k in METRICS}
    if "hm" not in metrics and {"base", "novel"} <= set(metrics):
        metrics["hm"] = harmonic_mean(metrics["base"], metrics["novel"])
    seed = str(identity.get("seed"))
    # A PromptKD run off the paper's recipe is named by what it distilled into what, and how
    # (run.json's objective_label, e.g. "PromptKD→CoOp (sym-KL)"), so it is never averaged with the paper's.
    # A pool other than the published one makes it a method of its own too: "PromptKD [pool train_base]".
    pool = _pool_label(identity.get("pool"))
    trainer = identity.get("objective_label") or identity.get("trainer")
    identity = {**identity, "trainer": f"{trainer} [pool {pool}]" if trainer and pool not in (None, DEFAULT_POOL)
                else trainer}
    images = (identity.get("pool") or {}).get("images") if pool else None
    shots = identity.get("labelled_shots", identity.get("num_shots")) if identity.get("protocol") == FEW_SHOT else 0
    if identity.get("protocol") == FEW_SHOT and not (type(shots) is int and shots > 0):
        shots = None  # a few-shot run without its K: listed, in no mean
    return Run(path, status, *(identity.get(k) or None for k in ("protocol", "trainer", "dataset")),
               int(seed) if seed.lstrip("-").isdigit() else None, metrics, identity.get("selection"),
               identity.get("backbone"), path.stat().st_mtime, detail, shots, pool,
               images if type(images) is int else None, (identity.get("pool") or {}).get("labels_used_for_selection"))


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
    groups: pd.DataFrame    # (protocol, method, dataset) -> seeds, n, missing, complete, <m>_mean/_std/_n, hm_of_means
    averages: pd.DataFrame  # (protocol, method) -> label, <m> (mean over the datasets), hm_of_means, missing, short
    issues: list            # an Issue per seed / run in no mean
    expected_seeds: tuple
    used: pd.DataFrame      # the runs behind the means, one per (protocol, method, dataset, seed)

    def group(self, protocol, method, dataset, shots=0) -> pd.Series | None:
        key = (protocol, method, dataset, shots)
        return self.groups.loc[key] if key in self.groups.index else None

    def average(self, protocol, method, shots=0) -> pd.Series | None:
        key = (protocol, method, shots)
        return self.averages.loc[key] if key in self.averages.index else None

    def methods(self, protocol) -> list[str]:
        return sorted({m for p, m, *_ in self.groups.index if p == protocol}, key=_method_order)

    def shots(self, protocol=FEW_SHOT) -> list[int]:
        return sorted({k for p, *_, k in self.groups.index if p == protocol})


def _not_used(run, newest: pd.Series, expected: tuple) -> tuple[str, str]:
    """(status, detail) of a run in no mean; `newest` maps (*KEYS, seed) to the log that is used."""
    key = (run.protocol, run.method, run.dataset, run.shots, run.seed)
    if not run.known:
        if all(v is None for v in (run.protocol, run.method, run.dataset)):
            why = "not identified: no run.json and no RESULT line"
        elif run.protocol not in PROTOCOLS:
            why = f"unknown protocol {run.protocol}"
        else:
            why = "labelled shots unknown (no labelled_shots or num_shots in run.json)" if run.shots is None else \
                "trainer or dataset unknown"
        return "unidentified" if run.status == "ok" else run.status, "; ".join(filter(None, [run.detail, why]))
    if run.status != "ok":  # failed / unfinished
        return run.status, run.detail + (f"; the finished run {newest[key]} is used" if key in newest.index else "")
    if run.seed not in expected:
        return "ignored", "seed unknown" if run.seed is None else f"seed {run.seed} not in --seeds"
    return "duplicate", f"older than {newest[key]}; not used"


def aggregate(runs, seeds=(1, 2, 3), protocol: str | None = None) -> Report:
    """Mean ± std over seeds per (protocol, method, dataset) of the finished runs with a seed in
    `seeds` (of several runs of one seed, the newest log's); every other run or seed is an issue."""
    expected, runs = tuple(seeds), [r for r in runs if protocol is None or r.protocol in (None, protocol)]
    labels, key = _method_labels(runs), KEYS + ["seed"]
    df = pd.DataFrame([(r.protocol, labels.get(i), r.dataset, r.shots, r.seed, r.status, r.detail, r.log_path, r.mtime)
                       for i, r in enumerate(runs)], columns=[*Issue._fields, "mtime"], dtype=object)
    df = df.join(pd.DataFrame([r.metrics for r in runs], columns=list(METRICS), index=df.index, dtype=float))
    df["pool"], df["pool_selection"] = [r.pool for r in runs], [r.pool_selection for r in runs]
    df["pool_images"] = pd.Series([r.pool_images for r in runs], index=df.index, dtype=float)
    df = df.sort_values("mtime", ascending=False, kind="stable")  # newest first
    df["known"] = df[KEYS].notna().all(axis=1) & df.protocol.isin(PROTOCOLS)
    use = df.known & (df.status == "ok") & df.seed.isin(expected)
    # of several runs of one seed, the newest (a boolean mask: pandas 2 made `use` object by assigning into it)
    use &= ~df[use].duplicated(key).reindex(df.index, fill_value=False).astype(bool)
    used, problems = df[use], df[df.known & (df.status != "ok")]  # problems: failed / unfinished
    newest = used.set_index(key).log_path

    shown = sorted(set(pd.concat([used, problems])[KEYS].itertuples(index=False, name=None)),
                   key=lambda k: (k[0], k[1], _order(k[2]), k[3]))  # with the groups of failed / unfinished runs
    stats = {f"{m}_{name}": (m, how) for m in METRICS
             for name, how in [("mean", "mean"), ("std", "std"), ("n", "count")]}
    groups = used.groupby(KEYS).agg(seeds=("seed", sorted), **stats,  # base_mean, base_std, base_n, ...
                                    pool=("pool", "first"), pool_selection=("pool_selection", "first"),
                                    pool_images_min=("pool_images", "min"), pool_images_max=("pool_images", "max"))
    groups = groups.reindex(pd.MultiIndex.from_frame(pd.DataFrame(shown, columns=KEYS)))
    groups["seeds"] = [s if isinstance(s, list) else [] for s in groups.seeds]
    groups["n"], groups["missing"] = groups.seeds.map(len), [[s for s in expected if s not in g] for g in groups.seeds]
    groups["complete"] = groups.n == len(expected)
    for m in METRICS:  # pandas' std is the sample std (ddof=1); 0 for one seed
        groups[f"{m}_n"] = groups[f"{m}_n"].fillna(0).astype(int)
        groups[f"{m}_std"] = groups[f"{m}_std"].where(groups[f"{m}_n"] != 1, 0.0)
    groups["hm_of_means"] = list(map(harmonic_mean, groups.base_mean, groups.novel_mean))

    listed = set(problems[key].itertuples(index=False, name=None))
    issues = [Issue(*k, seed, "missing", "no run found", None)
              for k, seeds_missing in groups.missing.items() for seed in seeds_missing if (*k, seed) not in listed]
    issues += [Issue(r.protocol, r.method, r.dataset, r.shots, r.seed, *_not_used(r, newest, expected), r.log_path)
               for r in df[~use].itertuples()]
    issues.sort(key=lambda i: (str(i.protocol), str(i.method), _order(i.dataset or "~"), i.shots or 0, i.seed or 0,
                               ISSUE_ORDER.index(i.status)))
    return Report(groups, _averages(groups, expected), issues, expected, used)


def _averages(groups: pd.DataFrame, expected: tuple) -> pd.DataFrame:
    """Per (protocol, method, shots) that ran a benchmark dataset: the mean over the 11 datasets
    (base-to-novel, few-shot) or the 10 cross-dataset targets of the per-dataset means, NaN when
    one is missing."""
    rows, level = [], ["protocol", "method", "shots"]
    for (protocol, method, shots), sub in groups.groupby(level=level):
        if not set(sub.index.get_level_values("dataset")) & set(DATASET_ORDER):
            continue  # off the benchmark (the demo's toy data): no average
        b2n, eleven = protocol == BASE2NOVEL, protocol != CROSS
        sub = sub.droplevel(level).reindex(list(BASE2NOVEL_DATASETS if eleven else CROSS_TARGETS))
        n = sub.n.fillna(0)
        rows.append({"protocol": protocol, "method": method, "shots": shots,
                     "label": "Average (11)" if eleven else "Average (10 targets)",
                     "missing": list(n.index[n == 0]), "short": list(n.index[(n > 0) & (n < len(expected))]),
                     **{m: sub[f"{m}_mean"].mean(skipna=False) for m in (METRICS if b2n else ["accuracy"])}})
    averages = pd.DataFrame(rows, columns=[*level, "label", "missing", "short", *METRICS])
    averages["hm_of_means"] = list(map(harmonic_mean, averages.base, averages.novel))
    return averages.set_index(level)


# --- tables and files -------------------------------------------------------------------------

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
        for (dataset, _), g in report.groups.xs((BASE2NOVEL, method)).iterrows():
            rows.append([method, display_name(dataset), _cell(g, "base", e), _cell(g, "novel", e),
                         _cell(g, "hm", e, column="hm_of_means"), _cell(g, "hm", e), f"{g.n}/{e}", ""])
        if (avg := report.average(BASE2NOVEL, method)) is not None and avg.missing:
            rows.append([method, avg.label, "—", "—", "—", "—", "", "not computed, missing: " + ", ".join(
                map(display_name, avg.missing))])
        elif avg is not None:
            short = _short(report, BASE2NOVEL, method, avg)
            rows.append([method, avg.label, *map(_num, (avg.base, avg.novel, avg.hm_of_means, avg.hm)), "",
                         short and f"fewer seeds: {short}"])
    caption = ("Base / Novel / 'HM (seeds)': " + STD_CAPTION + " HM = 2·B·N/(B+N) of the mean base and mean novel "
               "accuracy (the paper's convention); 'HM (seeds)' is the mean ± std of the per-seed HM. Average (11): "
               "mean over the 11 datasets of the per-dataset means, its HM is the HM of the averaged base and novel; "
               "it is only computed when all 11 datasets have results.")
    return rows and Table("Base-to-novel", ["Method", "Dataset", "Base", "Novel", "HM", "HM (seeds)", "Seeds", "Note"],
                          rows, caption)


def _matrix(report: Report, protocol, cell, avg_key, avg_label, title, caption, avg_last=True, short=False):
    """Methods x the datasets of `protocol` (`cell(group)`) and the average's `avg_key`: last, or
    for the cross-dataset table between the 10 targets and domain generalisation."""
    if not (averages := {m: report.average(protocol, m) for m in report.methods(protocol)}):
        return None
    present = {d for p, _, d, _ in report.groups.index if p == protocol}
    columns = sorted(present, key=_order) + ["__avg__"]
    if not avg_last:
        order = [CROSS_SOURCE, *CROSS_TARGETS, "__avg__", *DG_DATASETS]
        columns = [d for d in order if d in present or d == "__avg__"] + sorted(present - set(order))
    cells = pd.DataFrame([(m, d, ("—" if a is None or a.missing else _num(a[avg_key])) if d == "__avg__" else
                           cell(report.group(protocol, m, d))) for m, a in averages.items() for d in columns],
                         columns=["Method", "dataset", "cell"])
    table = cells.pivot_table(index="Method", columns="dataset", values="cell", aggfunc="first")[columns]
    table = table.reindex(list(averages))  # the methods' order, not pandas' alphabetical one
    notes = [f"{m}: {avg_label} not computed, missing: " + ", ".join(map(display_name, a.missing)) if a.missing else
             f"{m} {a.label}: datasets with fewer seeds: {_short(report, protocol, m, a)}"
             for m, a in averages.items() if a is not None and (a.missing or (short and a.short))]
    return Table(title, ["Method"] + [avg_label if d == "__avg__" else display_name(d) for d in columns],
                 table.reset_index().values.tolist(), caption, notes)


def _few_shot_table(report: Report, e: int) -> Table | None:
    """Accuracy against labelled shots: a row per method and dataset (then the method's Average
    (11) when all 11 datasets have results at a number of shots), a column per number of shots."""
    if not (shots := report.shots()):
        return None
    rows = []
    for method in report.methods(FEW_SHOT):
        datasets = sorted({d for p, m, d, _ in report.groups.index if (p, m) == (FEW_SHOT, method)}, key=_order)
        rows += [[method, display_name(d), *(_cell(report.group(FEW_SHOT, method, d, k), "accuracy", e) for k in shots)]
                 for d in datasets]
        averages = [report.average(FEW_SHOT, method, k) for k in shots]
        if any(a is not None and not a.missing for a in averages):  # else no row of dashes
            rows.append([method, "Average (11)", *("—" if a is None or a.missing else _num(a.accuracy) for a in averages)])
    caption = ("Few-shot protocol (all classes, K labelled shots per class; a PromptKD student's K is its teacher's): "
               "accuracy over all classes, " + STD_CAPTION + " Average (11): mean over the 11 datasets of the "
               "per-dataset means, only where all 11 have results at that K.")
    return Table("Few-shot: accuracy against shots", ["Method", "Dataset", *(f"{k}-shot" for k in shots)], rows,
                 caption)


def _pool_table(report: Report) -> Table | None:
    """The unlabelled pool behind each group of distilled runs: sources, images per seed, selection."""
    done = report.groups[report.groups.pool.notna()]
    if done.empty:
        return None

    def images(g):
        low, high = (f"{int(v):,}" if pd.notna(v) else "?" for v in (g.pool_images_min, g.pool_images_max))
        return low if low == high else f"{low}–{high}"
    rows = [[p, m, display_name(d) + (f" ({k}-shot)" if p == FEW_SHOT else ""), g.pool, images(g),
             g.pool_selection if isinstance(g.pool_selection, str) else "no"] for (p, m, d, k), g in done.iterrows()]
    caption = ("The unlabelled images each distilled student learnt from (run.json's pool): its sources, their image "
               "count (a range where seeds differ) and whether labels chose them. A pool other than the published "
               f"one ({DEFAULT_POOL}: all train images of all classes) is named in the method, e.g. "
               "'PromptKD [pool train_base]', and never averaged with it.")
    return Table("Unlabelled pools", ["Protocol", "Method", "Dataset", "Pool", "Images", "Labels chose the images"],
                 rows, caption)


def format_tables(report: Report) -> list[Table]:
    """All tables of a report, in print order."""
    e, several = len(report.expected_seeds), {p: len(report.methods(p)) > 1 for p in PROTOCOLS}
    compare = "Per method and dataset: {} over seeds; '(k/n)' = fewer seeds than expected."
    issues = [[i.protocol or "?", i.method or "?", (display_name(i.dataset) if i.dataset else "?") + (
               f" ({i.shots}-shot)" if i.protocol == FEW_SHOT and i.shots is not None else ""),
               "?" if i.seed is None else str(i.seed), i.status, i.detail, str(i.log_path or "")]
              for i in report.issues]
    return [t for t in [
        _base2novel_table(report, e),
        several[BASE2NOVEL] and _matrix(
            report, BASE2NOVEL, lambda g: _cell(g, "hm", e, " ({}/{})", "hm_of_means"), "hm_of_means", "Average (11)",
            "Comparison, base-to-novel HM", compare.format("HM of the mean base and mean novel accuracy")),
        _matrix(report, CROSS, lambda g: _cell(g, "accuracy", e), "accuracy", "Average (10)",
                "Cross-dataset and domain generalisation", "Accuracy, " + STD_CAPTION + " Source ImageNet, the 10 "
                "cross-dataset targets, their average (only when all 10 are present), then domain generalisation.",
                avg_last=False, short=True),
        several[CROSS] and _matrix(
            report, CROSS, lambda g: _cell(g, "accuracy", e, " ({}/{})", "accuracy_mean"), "accuracy", "Average (10)",
            "Comparison, cross-dataset", compare.format("mean accuracy")),
        _few_shot_table(report, e),
        _pool_table(report),
        Table("Missing / unfinished", ["Protocol", "Method", "Dataset", "Seed", "Status", "Detail", "Log"],
              issues or [["—", "—", "—", "—", "none", "all expected seeds finished", ""]],
              f"Expected seeds: {' '.join(map(str, report.expected_seeds))}. Failed / unfinished / duplicate / "
              "ignored runs are not used in any mean.")] if t]


def render(tables) -> str:
    """The tables as one Markdown document: title, caption, table, notes."""
    parts = [[f"## {t.title}", t.caption, pd.DataFrame(t.rows, columns=t.headers).to_markdown(
        index=False, tablefmt="github", disable_numparse=True), "\n".join(f"- {n}" for n in t.notes)] for t in tables]
    return "# Results\n\n" + "\n\n".join("\n\n".join(filter(None, part)) for part in parts) + "\n"


CSV_FIELDS = (["protocol", "method", "dataset", "shots", "kind", "n_seeds", "expected_seeds", "seeds"]
              + [f"{m}_{s}" for m in METRICS for s in ("mean", "std", "n")] + ["hm_of_means"]
              + ["pool", "pool_images_min", "pool_images_max", "pool_selection"])


def write_csv(report: Report, path) -> None:
    """One row per (protocol, method, dataset, shots), then the computed averages (kind=average);
    shots is empty outside the few-shot protocol."""
    groups = report.groups.reset_index().assign(kind="dataset", n_seeds=lambda f: f.n,
                                                seeds=lambda f: [" ".join(map(str, s)) for s in f.seeds])
    averages = report.averages[[not m for m in report.averages.missing]].reset_index().assign(kind="average")
    table = pd.concat([groups, averages.rename(columns={"label": "dataset", **{m: f"{m}_mean" for m in METRICS}})])
    table = table.reindex(columns=CSV_FIELDS).assign(expected_seeds=" ".join(map(str, report.expected_seeds)))
    table["shots"] = table.shots.where(table.protocol == FEW_SHOT)
    table = table.astype({k: "Int64" for k in ["shots", "n_seeds", "pool_images_min", "pool_images_max"]
                          + [f"{m}_n" for m in METRICS]})
    atomic_write_text(path, table.to_csv(index=False, float_format="%.4f", lineterminator="\r\n"))


def plot(report: Report, path) -> bool:
    """Bars (base / novel / HM, or accuracy) with std error bars, one panel per protocol and method,
    datasets at the same places in a protocol's panels; a protocol with a single dataset gets one
    panel with the methods side by side. Few-shot runs: accuracy against shots, a line per method
    with std error bars, a panel per dataset (and one for Average (11) where computed), four to a
    row. False when there is nothing to plot."""
    FigureCanvasAgg = require("matplotlib.backends.backend_agg", "plots", "The plot (--plot)").FigureCanvasAgg
    Figure = require("matplotlib.figure", "plots", "The plot (--plot)").Figure

    done = report.groups[report.groups.n > 0].reset_index().assign(hm_mean=lambda f: f.hm_of_means)
    few, done = done[done.protocol == FEW_SHOT], done[done.protocol != FEW_SHOT]
    columns = {p: sorted(set(g.dataset), key=_order) for p, g in done.groupby("protocol")}
    panels = sorted({(p, None if len(columns[p]) == 1 else m) for p, m in zip(done.protocol, done.method)},
                    key=lambda pm: (PROTOCOLS.index(pm[0]), pm[1] or ""))
    lines = _few_shot_lines(report, few)
    if not panels and not lines:
        return False
    width = max([len(columns[p]) if m else done[done.protocol == p].method.nunique() for p, m in panels] or [0])
    per_row = 4
    line_rows = -(-len(lines) // per_row)
    fig = Figure(figsize=(max(8.0, 0.9 * width + 3, 3.2 * min(len(lines), per_row)), 3.2 * (len(panels) + line_rows)))
    FigureCanvasAgg(fig)
    grid = fig.add_gridspec(len(panels) + line_rows, per_row)
    for index, (protocol, method) in enumerate(panels):
        series = {"base": "Base", "novel": "Novel", "hm": "HM"} if protocol == BASE2NOVEL else {"accuracy": "Accuracy"}
        rows = done[(done.protocol == protocol) & ((done.method == method) if method else True)]
        rows = rows.set_index("dataset").reindex(columns[protocol]) if method else rows.set_index("method").sort_index()
        bars = {s: rows[[f"{m}_{s}" for m in series]].set_axis(list(series.values()), axis=1)
                for s in ("mean", "std")}  # NaN: no bar (a dataset the panel lacks)
        ax = fig.add_subplot(grid[index, :])
        bars["mean"].plot.bar(ax=ax, yerr=bars["std"], capsize=2, width=0.8)
        ax.set_xticklabels([display_name(d) for d in rows.index], rotation=30, ha="right", fontsize=8)
        ax.set(xlabel="", ylabel="accuracy (%)", ylim=(0, 100), xlim=(-0.6, len(rows) - 0.4))
        name = f"{method}, {protocol}" if method else f"{display_name(columns[protocol][0])}, {protocol}"
        ax.set_title(f"{name} (mean ± std over seeds)", fontsize=10)
        ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    for index, (title, curves) in enumerate(lines):
        ax = fig.add_subplot(grid[len(panels) + index // per_row, index % per_row])
        for method, (shots, mean, std) in curves.items():
            ax.errorbar(shots, mean, yerr=std, marker="o", capsize=2, label=method)
        ax.set_xscale("log", base=2)
        ax.set_xticks(report.shots(), [str(k) for k in report.shots()])
        ax.set(xlabel="labelled shots per class", ylabel="accuracy (%)", ylim=(0, 100))
        ax.set_title(f"{title}, few-shot", fontsize=10)
        ax.legend(fontsize=7)
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=120))
    return True


def _few_shot_lines(report: Report, few: pd.DataFrame) -> list:
    """[(panel title, {method: (shots, mean, std)})]: a panel per dataset, then Average (11)."""
    panels = [(display_name(d), {m: (list(g.shots), list(g.accuracy_mean), list(g.accuracy_std))
                                 for m, g in rows.sort_values("shots").groupby("method")})
              for d, rows in sorted(few.groupby("dataset"), key=lambda dr: _order(dr[0]))]
    averages = report.averages.reset_index()
    averages = averages[(averages.protocol == FEW_SHOT) & averages.accuracy.notna()].sort_values("shots")
    if len(averages):
        panels.append(("Average (11)", {m: (list(g.shots), list(g.accuracy), [0.0] * len(g))
                                        for m, g in averages.groupby("method")}))
    return panels


# --- the verb ---------------------------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `results` verb's options."""
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("runs_dirs", nargs="+", metavar="RUNS_DIR",
                        help="directories searched recursively for runs (run.json, log.txt)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3],
                        help="expected seeds; runs with other seeds are ignored (default 1 2 3)")
    parser.add_argument("--out", metavar="PREFIX",
                        help="write PREFIX.csv, PREFIX.md (and PREFIX.png); default RUNS_DIR/results")
    parser.add_argument("--plot", action="store_true", help="also write PREFIX.png")
    parser.add_argument("--protocol", choices=PROTOCOLS, help="only this protocol")
    parser.add_argument("--newest-log", action="store_true",
                        help="per run directory use the most recently modified of log.txt and log.txt-<time> "
                             "(stock Dassl writes re-runs to log.txt-<time>) instead of log.txt")


def run(args: argparse.Namespace) -> int:
    """`promptkd results`: print the tables, write them as CSV and Markdown (and with --plot the plot)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.plot:  # before any work
        require("matplotlib", "plots", "The plot (--plot)", ", or leave out --plot")
    where = ", ".join(args.runs_dirs)
    if bad := [d for d in args.runs_dirs if not Path(d).is_dir()]:
        raise MissingFileError(f"{bad[0]} is not a directory: give the folders the runs wrote to (--output-dir).")
    if not (found := find_runs(args.runs_dirs, newest=args.newest_log)):
        raise UserError(f"no log.txt found (and no run.json) under {where}: give the folders the runs wrote to.")
    report = aggregate([parse_log(p) for p in found], args.seeds, args.protocol)
    if report.groups.empty and not report.issues:
        raise UserError(f"no {args.protocol} run found under {where}; without --protocol all are shown.")
    text = render(format_tables(report))
    prefix = Path(args.out) if args.out else Path(args.runs_dirs[0]) / "results"
    prefix.parent.mkdir(parents=True, exist_ok=True)
    csv_path, md_path, png_path = (prefix.with_name(prefix.name + ext) for ext in (".csv", ".md", ".png"))
    write_csv(report, csv_path)
    atomic_write_text(md_path, text)
    written = [csv_path, md_path] + ([png_path] if args.plot and plot(report, png_path) else [])
    if args.plot and png_path not in written:
        logger.warning("nothing to plot: no finished run")
    print(text + "\nWritten: " + ", ".join(map(str, written)))
    return 0
