"""Check datasets before a long run: every image the splits list exists and decodes.

    promptkd check --root DATA DATASET [DATASET ...] [--workers N] [--set KEY VALUE]

DATASET is a config name (``dtd``, ``imagenet``, ... as in ``configs/datasets/<name>.yaml``),
a registered name (``DescribableTextures``), a dataset YAML file, or the name of a folder under
DATA (read as an ImageFolder, ``configs/datasets/folder.yaml``). Each dataset is built by its
own loader exactly as training builds it (all classes, no few-shot subset; a split JSON that
does not exist yet is written, as the first training run would), then every listed image is
opened and fully decoded (PIL ``load()``, so truncated files are caught). Printed per dataset
and split: classes, images, missing and unreadable files, then the paths of the bad files; the
last line names each dataset with a problem and what it is (no images found, cannot be loaded,
N images missing, N unreadable). Exit code 0 only if every image of every dataset reads; 1
otherwise (2 for a usage error).
"""
from __future__ import annotations

import argparse
import logging
import os
import os.path as osp
import random
import sys
from concurrent.futures import ProcessPoolExecutor

from PIL import Image
from tabulate import tabulate
from tqdm import tqdm

CONFIG_DIR = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "datasets")
SPLITS = ("train", "val", "test")
report_log = logging.getLogger("promptkd.datasets.check")  # the command's report (stdout)

logger = logging.getLogger("promptkd")


def decode(path: str):
    """None if the image opens and decodes fully, else the reason."""
    try:
        with Image.open(path) as image:
            image.load()
            image.convert("RGB")
        return None
    except Exception as err:  # PIL raises OSError, SyntaxError, ValueError, ... on bad files
        return f"{type(err).__name__}: {err}"


def dataset_configs() -> dict:
    """Config name -> YAML path of the shipped dataset configs."""
    return {f[:-5]: osp.join(CONFIG_DIR, f) for f in sorted(os.listdir(CONFIG_DIR)) if f.endswith(".yaml")}


def make_cfg(root: str, dataset: str, overrides: list, seed: int):
    """The config a training run would build for `dataset` (all classes, no few-shot)."""
    from promptkd.errors import ConfigError
    from dassl.config import get_cfg_default

    from promptkd.datasets.config import extend_data_cfg

    cfg = get_cfg_default()
    extend_data_cfg(cfg)
    configs = dataset_configs()
    by_registered = {}
    for name, path in configs.items():
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip().startswith("NAME:"):
                    by_registered[line.split(":", 1)[1].strip().strip("\"'")] = path
    extra = []
    if dataset in configs:
        path = configs[dataset]
    elif dataset in by_registered:  # ImageFolder then needs --set DATASET.FOLDER.DIR NAME
        path = by_registered[dataset]
    elif dataset.endswith((".yaml", ".yml")) and osp.isfile(dataset):
        path = dataset
    elif osp.isdir(osp.join(root, dataset)):
        path, extra = configs["folder"], ["DATASET.FOLDER.DIR", dataset]
    else:
        raise ConfigError(f"Unknown dataset '{dataset}': use a config name ({', '.join(configs)}), a registered "
                          f"name, a dataset YAML file, or the name of a folder under {root}.")
    cfg.merge_from_file(path)
    cfg.merge_from_list(extra + list(overrides) + ["DATASET.ROOT", root, "DATASET.NUM_SHOTS", "0",
                                                   "DATASET.SUBSAMPLE_CLASSES", "all", "SEED", str(seed)])
    return cfg


def check_dataset(cfg, workers: int = 1, progress: bool = True) -> dict:
    """{"name", "rows": per split (classes, images, missing, unreadable), "missing", "unreadable"}."""
    from dassl.data.datasets import build_dataset

    from promptkd.datasets.common import collect_missing_images

    random.seed(cfg.SEED)  # a split built from a raw layout uses the seeded `random`, as in training
    with collect_missing_images() as missing:
        dataset = build_dataset(cfg)
    splits = {"train": dataset.train_x, "val": dataset.val or [], "test": dataset.test}
    paths = sorted({d.impath for items in splits.values() for d in items} - set(missing))
    bar = dict(desc=f"decode {cfg.DATASET.NAME}", unit="img", total=len(paths), disable=None if progress else True,
               dynamic_ncols=True, leave=False)
    if workers > 1 and len(paths) > 1:
        with ProcessPoolExecutor(workers) as pool:
            reasons = list(tqdm(pool.map(decode, paths, chunksize=64), **bar))
    else:
        reasons = [decode(p) for p in tqdm(paths, **bar)]
    unreadable = {p: r for p, r in zip(paths, reasons) if r is not None}
    missing = set(missing)
    rows = []
    for name in SPLITS:
        items = splits[name]
        rows.append([name, len({d.label for d in items}), len(items), sum(d.impath in missing for d in items),
                     sum(d.impath in unreadable for d in items)])
    return {"name": cfg.DATASET.NAME, "folder": getattr(dataset, "dataset_dir", ""), "rows": rows,
            "classes": len(dataset.classnames), "missing": sorted(missing), "unreadable": unreadable}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `check` verb's options."""
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    parser.add_argument("--root", required=True, help="the folder holding the datasets (train.py's --root)")
    parser.add_argument("datasets", nargs="+", help="config names, registered names, YAML files or folder names")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="processes decoding images (default: min(8, CPUs))")
    parser.add_argument("--seed", type=int, default=1, help="seed for a split built from a raw layout (default 1)")
    parser.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "VALUE"),
                        help="a config override, e.g. --set DATASET.FOLDER.SPLIT_SEED 2")


def run(args: argparse.Namespace) -> int:
    """`promptkd check`: exit code 0 when every dataset's images are all there and readable, else 1."""
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import dassl.data  # noqa: F401  (imports wilds, which disables logging below WARNING)

    logging.disable(logging.NOTSET)
    import promptkd.datasets

    promptkd.datasets.register()  # our loaders, where no other holds the name
    from promptkd.datasets.common import NoImagesError
    from promptkd.errors import MissingFileError

    root = osp.abspath(osp.expanduser(args.root))
    if not osp.isdir(root):
        raise MissingFileError(f"--root {root} is not a folder.")
    overrides = [v for pair in args.set for v in pair]
    cfgs = [make_cfg(root, name, overrides, args.seed) for name in args.datasets]  # usage errors first
    # The report goes to stdout through a logger of its own (message only), for this call.
    out = logging.StreamHandler(sys.stdout)
    out.setFormatter(logging.Formatter("%(message)s"))
    report_log.addHandler(out)
    report_log.setLevel(logging.INFO)
    report_log.propagate = False
    try:
        problems = []  # (dataset, what happened), for the closing summary
        for name, cfg in zip(args.datasets, cfgs):
            try:
                report = check_dataset(cfg, args.workers)
            except NoImagesError as err:  # an empty dataset folder
                if args.debug:
                    raise
                report_log.info("\n%s: no images found: %s", name, err)
                problems.append((name, "no images found"))
                continue
            except Exception as err:  # a loader's own error: missing folder or annotation file, ...
                if args.debug:
                    raise
                report_log.info("\n%s: cannot be loaded: %s", name, err)
                problems.append((name, "cannot be loaded"))
                continue
            status = outcome(report)
            if status != ALL_READ:
                problems.append((name, status))
            report_log.info("%s", render(report, status))
        report_log.info("\n%s", summary(problems))
    finally:
        report_log.removeHandler(out)
    return 1 if problems else 0


ALL_READ = "all images read"


def _count(n: int, what: str) -> str:
    return f"{n} {what}" if n == 1 else f"{n} {what.replace('image', 'images')}"


def outcome(report: dict) -> str:
    """What happened to one dataset: all read, or how many images are missing / unreadable."""
    parts = []
    if report["missing"]:
        parts.append(_count(len(report["missing"]), "image missing"))
    if report["unreadable"]:
        parts.append(_count(len(report["unreadable"]), "image unreadable"))
    return ", ".join(parts) or ALL_READ


def summary(problems: list) -> str:
    """The closing line: every dataset read, or what went wrong with which."""
    if not problems:
        return "all datasets read"
    return "problems (details above): " + "; ".join(f"{name}: {what}" for name, what in problems)


def render(report: dict, status: str) -> str:
    """One dataset's report: header, per-split table, then the bad files."""
    lines = [f"\n{report['name']} ({report['folder']}): {report['classes']} classes, {status}",
             tabulate(report["rows"], headers=["split", "classes", "images", "missing", "unreadable"],
                      tablefmt="github")]
    lines += [f"missing: {path}" for path in report["missing"]]
    lines += [f"unreadable: {path} ({reason})" for path, reason in sorted(report["unreadable"].items())]
    return "\n".join(lines)
