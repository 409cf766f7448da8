"""Train or evaluate a trainer of this plugin on a CoOp-format dataset.

Same command line as CoOp / MaPLe / PromptSRC:

    python train.py --root DATA --seed 1 --trainer PromptKD \
        --dataset-config-file configs/datasets/imagenet.yaml \
        --config-file configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml \
        --output-dir output/x [--eval-only --model-dir D --load-epoch N] [KEY VALUE ...]

Differences from CoOp's train.py, on purpose: `--seed 0` is honoured; a re-run moves the
previous `log.txt` aside (to `log.txt-<time>`) so `log.txt` is always the latest run; a user
mistake (bad key or value, missing file, mismatched class vectors, ...) ends with
`error: <message>` and exit code 2, no traceback (`--debug` or PROMPTKD_DEBUG=1 shows it).
"""
import argparse
import logging
import os
import sys
import time
import warnings


warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from dassl.config import get_cfg_default  # noqa: E402
from dassl.engine import build_trainer  # noqa: E402
from dassl.utils import collect_env_info, set_random_seed, setup_logger  # noqa: E402

# wilds (imported by dassl.data) disables logging below WARNING for the whole process.
logging.disable(logging.NOTSET)

import datasets  # noqa: E402,F401  (registers the dataset loaders)
import trainers.promptkd  # noqa: E402,F401  (registers PromptKD)
import trainers.baselines  # noqa: E402,F401  (registers the baselines)
import trainers.promptkd_teacher  # noqa: E402,F401  (registers PromptKDTeacher)
from promptkd.errors import ConfigError, MissingFileError, run_cli  # noqa: E402
from trainers.config import extend_cfg  # noqa: E402
from promptkd import determinism, distributed, records  # noqa: E402

logger = logging.getLogger("promptkd")


class _StdoutHandler(logging.Handler):
    """Writes to whatever sys.stdout is now (Dassl's logger tees it into log.txt)."""

    def emit(self, record):
        sys.stdout.write(self.format(record) + "\n")
        sys.stdout.flush()


def setup_logging(output_dir: str) -> None:
    log = os.path.join(output_dir, "log.txt")
    if os.path.isfile(log):
        stamp = time.strftime("%Y-%m-%d-%H-%M-%S", time.localtime(os.path.getmtime(log)))
        os.replace(log, f"{log}-{stamp}")
    setup_logger(output_dir)
    root = logging.getLogger()
    root.handlers = [h for h in root.handlers if not isinstance(h, _StdoutHandler)]
    handler = _StdoutHandler()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def quiet_logging() -> None:
    """Ranks other than 0 under torchrun: no log file, warnings and errors only (on stderr,
    prefixed with the rank); Dassl's prints are dropped."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter(f"[rank {distributed.rank()}] %(levelname)s %(message)s"))
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(logging.WARNING)
    sys.stdout = open(os.devnull, "w")


def reset_cfg(cfg, args):
    if args.root:
        cfg.DATASET.ROOT = args.root
    if args.output_dir:
        cfg.OUTPUT_DIR = args.output_dir
    if args.resume:
        cfg.RESUME = args.resume
    if args.seed is not None:
        cfg.SEED = args.seed
    if args.source_domains:
        cfg.DATASET.SOURCE_DOMAINS = args.source_domains
    if args.target_domains:
        cfg.DATASET.TARGET_DOMAINS = args.target_domains
    if args.transforms:
        cfg.INPUT.TRANSFORMS = args.transforms
    if args.trainer:
        cfg.TRAINER.NAME = args.trainer
    if args.backbone:
        cfg.MODEL.BACKBONE.NAME = args.backbone
    if args.head:
        cfg.MODEL.HEAD.NAME = args.head


def _merge(cfg, source: str, merge):
    try:
        merge()
    except (KeyError, AssertionError) as err:  # yacs: unknown key (file / command line), odd list
        message = err.args[0] if err.args else str(err)
        hint = ("Check the key's spelling; the keys this plugin adds are in trainers/config.py."
                if "xistent" in message else "Options are KEY VALUE pairs.")
        raise ConfigError(f"{source}: {message}. {hint}") from None
    except ValueError as err:
        raise ConfigError(f"{source}: {err}. Give the value in the key's type "
                          "(e.g. 200.0 for a float key).") from None


def _ints_as_floats(cfg, opts):
    """`KEY 200` for a float key means 200.0 (yacs would refuse the int)."""
    opts = list(opts or [])
    for i in range(0, len(opts) - 1, 2):
        node = cfg
        for part in opts[i].split("."):
            node = node.get(part) if hasattr(node, "get") else None
        if isinstance(node, float) and opts[i + 1].lstrip("+-").isdigit():
            opts[i + 1] += ".0"
    return opts


def setup_cfg(args):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for path in (args.dataset_config_file, args.config_file):
        if path:
            if not os.path.isfile(path):
                raise MissingFileError(f"config file {path} does not exist.")
            _merge(cfg, path, lambda p=path: cfg.merge_from_file(p))
    reset_cfg(cfg, args)
    _merge(cfg, "command-line options", lambda: cfg.merge_from_list(_ints_as_floats(cfg, args.opts)))
    cfg.freeze()
    return cfg


def main(args):
    cfg = setup_cfg(args)
    distributed.init(cfg.USE_CUDA)  # under torchrun: process group + this process's GPU; else nothing
    if cfg.SEED >= 0:
        set_random_seed(cfg.SEED)
    if distributed.is_main():
        setup_logging(cfg.OUTPUT_DIR)
    else:
        quiet_logging()
    determinism.configure(cfg.TRAIN.DETERMINISTIC, cfg.USE_CUDA)  # cuDNN benchmark only when not deterministic
    logger.info("Arguments: %s", " ".join(sys.argv[1:]))
    logger.info("Config:\n%s", cfg)
    logger.info("Environment:\n%s", collect_env_info())

    run = records.start_run(cfg, eval_only=args.eval_only)  # run.json, before anything else can fail
    trainer = build_trainer(cfg)
    teacher = getattr(trainer, "teacher_identity", lambda: None)()  # a stock Dassl trainer has none
    trainer.run_record = records.update_run(cfg, run, teacher=teacher)  # result.json: PromptTrainer.log_report
    if args.eval_only:
        trainer.run_eval_only(args.model_dir, epoch=args.load_epoch)
    elif not args.no_train:
        trainer.train()
    distributed.finish()  # every rank gets here before any tears the process group down


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", type=str, default="", help="path to dataset")
    parser.add_argument("--output-dir", type=str, default="", help="output directory")
    parser.add_argument("--resume", type=str, default="", help="checkpoint directory (from which the training resumes)")
    parser.add_argument("--seed", type=int, default=None, help="only non-negative values enable a fixed seed")
    parser.add_argument("--source-domains", type=str, nargs="+", help="source domains for DA/DG")
    parser.add_argument("--target-domains", type=str, nargs="+", help="target domains for DA/DG")
    parser.add_argument("--transforms", type=str, nargs="+", help="data augmentation methods")
    parser.add_argument("--config-file", type=str, default="", help="path to config file")
    parser.add_argument("--dataset-config-file", type=str, default="", help="path to config file for dataset setup")
    parser.add_argument("--trainer", type=str, default="", help="name of trainer")
    parser.add_argument("--backbone", type=str, default="", help="name of CNN backbone")
    parser.add_argument("--head", type=str, default="", help="name of head")
    parser.add_argument("--eval-only", action="store_true", help="evaluation only")
    parser.add_argument("--model-dir", type=str, default="", help="load model from this directory for eval-only mode")
    parser.add_argument("--load-epoch", type=int, help="load model weights at this epoch for evaluation")
    parser.add_argument("--no-train", action="store_true", help="do not call trainer.train()")
    parser.add_argument("--debug", action="store_true",
                        help="show the Python traceback of a user error (also PROMPTKD_DEBUG=1)")
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")
    return parser.parse_args(argv)


if __name__ == "__main__":
    run_cli(lambda: main(parse_args()))
