"""`promptkd train` (and `python train.py`): train or evaluate a trainer on a CoOp-format dataset.

Same command line as CoOp / MaPLe / PromptSRC's train.py:

    promptkd train --root DATA --seed 1 --trainer PromptKD \
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
import warnings

import yaml
from yacs.config import CfgNode as CN

warnings.filterwarnings("ignore", message="pkg_resources is deprecated")

from dassl.config import get_cfg_default  # noqa: E402
from dassl.engine import build_trainer  # noqa: E402
from dassl.utils import collect_env_info, set_random_seed  # noqa: E402

# wilds (imported by dassl.data) disables logging below WARNING for the whole process.
logging.disable(logging.NOTSET)

from promptkd.errors import ConfigError, MissingFileError, add_debug_argument  # noqa: E402
from promptkd.trainers.config import AUTO_NUMBER_KEYS, extend_cfg, kd_weight, resolve_protocol  # noqa: E402
from promptkd.trainers.names import check_names, closest_matches  # noqa: E402
from promptkd.trainers.plugin import register  # noqa: E402
from promptkd.trainers.run_logging import setup_logging  # noqa: E402
from promptkd import determinism, distributed, records  # noqa: E402

logger = logging.getLogger("promptkd")


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


# --- merging YAML files and KEY VALUE options ---------------------------------------------
# yacs's own messages ("Non-existent key", "Type mismatch (<class 'float'> vs. ...)") name
# no fix; every key and value is checked here first, so a refusal names the file or the
# command line, the key, the value and the closest existing key (difflib).

KEYS_HINT = "Dassl's keys are in dassl/config/defaults.py, the ones this plugin adds in trainers/config.py"


def _all_keys(node, prefix=""):
    for k, v in node.items():
        yield prefix + k
        if isinstance(v, CN):
            yield from _all_keys(v, f"{prefix}{k}.")


def _unknown_key(cfg, source: str, key: str) -> ConfigError:
    known = list(_all_keys(cfg))
    leaf = key.rsplit(".", 1)[-1]
    options = closest_matches(key, known)
    options += [k for k in known if k.rsplit(".", 1)[-1] == leaf and k not in options]  # PROMPTKD.KD_WEIGHT
    hint = (f"Did you mean {' or '.join(options[:3])}?" if options else "No key is close to it.")
    return ConfigError(f"{source}: unknown config key {key}. {hint} ({KEYS_HINT}.)")


def _node(cfg, source: str, key: str):
    """What `key` holds in `cfg` (a value or a group), or a ConfigError naming the closest keys."""
    node = cfg
    for part in key.split("."):
        if not isinstance(node, CN) or part not in node:
            raise _unknown_key(cfg, source, key)
        node = node[part]
    return node


def _leaf(cfg, source: str, key: str):
    """The current value of `key`, or a ConfigError for a key that does not exist / is a group."""
    node = _node(cfg, source, key)
    if isinstance(node, CN):
        some = ", ".join(f"{key}.{k}" for k in list(node)[:3])
        raise ConfigError(f"{source}: {key} is a group of keys, not a key: set the keys in it ({some}, ...).")
    return node


def _coerce(key: str, value, current):
    """`value` (decoded as yacs decodes it) in the type of the key, where the intent is clear:
    a number for an `auto`-or-number key is kept as its string, an int for a float key is a
    float, a number for a string key is its string, true / false for a bool key."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    if key in AUTO_NUMBER_KEYS and number:
        return str(value)
    if isinstance(current, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(current) is int and isinstance(value, float) and value.is_integer():  # 25.0 for an int key
        return int(value)
    if isinstance(current, str) and number:
        return str(value)
    if isinstance(current, bool) and isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    return value


def _set(cfg, source: str, key: str, raw):
    current = _leaf(cfg, source, key)
    value = _coerce(key, CN._decode_cfg_value(raw), current)
    try:  # yacs decodes a string again: give it the string's literal
        cfg.merge_from_list([key, repr(value) if isinstance(value, str) else value])
    except ValueError:  # yacs: the type differs from the key's
        shown = raw if isinstance(raw, str) else repr(raw)
        raise ConfigError(f"{source}: {key} {shown}: the key takes {_a(current)} (e.g. {current!r}), not "
                          f"{_a(value)}.") from None
    except (KeyError, AssertionError) as err:  # yacs: a renamed / deprecated key
        raise ConfigError(f"{source}: {key}: {err.args[0] if err.args else err}") from None


def _a(value) -> str:
    name = {"str": "string", "int": "integer", "bool": "boolean (True or False)", "CfgNode": "group of keys"}.get(
        type(value).__name__, type(value).__name__)
    return ("an " if name[0] in "aeiou" else "a ") + name


def _file_items(cfg, source: str, node, prefix=""):
    """(full key, value) of every leaf a YAML mapping sets (groups are walked into)."""
    for k, v in node.items():
        key = prefix + str(k)
        if isinstance(v, dict) and isinstance(_node(cfg, source, key), CN):
            yield from _file_items(cfg, source, v, key + ".")
        else:
            yield key, v


def merge_file(cfg, path: str):
    if not os.path.isfile(path):
        raise MissingFileError(f"config file {path} does not exist.")
    try:
        with open(path, encoding="utf-8") as f:
            loaded = yaml.safe_load(f)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {err}") from None
    if loaded is None:
        return
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path} must hold a mapping of config keys (KEY: value), not a {type(loaded).__name__}.")
    for key, value in list(_file_items(cfg, path, loaded)):
        _set(cfg, path, key, value)


def merge_opts(cfg, opts):
    source = "command-line options"
    opts = list(opts or [])
    for i in range(0, len(opts), 2):
        key = opts[i]
        if key.startswith("-"):
            raise ConfigError(f"{source}: '{key}' is a train.py option, but it comes after the first KEY VALUE pair, "
                              "where every word is read as KEY VALUE: put train.py's --options before the KEY VALUE "
                              "pairs.")
        _leaf(cfg, source, key)
        if i + 1 == len(opts):
            raise ConfigError(f"{source}: {key} has no value; options are KEY VALUE pairs.")
        _set(cfg, source, key, opts[i + 1])


def setup_cfg(args):
    register()  # our trainers and loaders in Dassl's registries (where a name is free: promptkd.trainers.plugin)
    cfg = get_cfg_default()
    extend_cfg(cfg)
    for path in (args.dataset_config_file, args.config_file):
        if path:
            merge_file(cfg, path)
    reset_cfg(cfg, args)
    merge_opts(cfg, args.opts)
    resolve_protocol(cfg)  # TRAINER.MODAL, the published name, becomes TRAINER.PROTOCOL (a FutureWarning)
    check_names(cfg)  # trainer, dataset and backbone, before Dassl looks them up
    kd_weight(cfg)  # a bad TRAINER.PROMPTKD.KD_WEIGHT stops here, before anything is built
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
    logger.info("Arguments: %s", " ".join(getattr(args, "argv", None) or sys.argv[1:]))
    logger.info("Config:\n%s", cfg)
    logger.info("Environment:\n%s", collect_env_info())

    records.start_run(cfg, eval_only=args.eval_only)  # run.json, before anything else can fail
    trainer = build_trainer(cfg)  # a PromptTrainer adds its teacher and fields to that record (trainers/base.py)
    if args.eval_only:
        trainer.run_eval_only(args.model_dir, epoch=args.load_epoch)
    elif not args.no_train:
        trainer.train()
    distributed.finish()  # every rank gets here before any tears the process group down


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """CoOp's train.py options (also the teacher-cache writer's: it takes a student run's command line)."""
    parser.description = __doc__
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
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
    parser.add_argument("opts", default=None, nargs=argparse.REMAINDER, help="modify config options using the command-line")


def parse_args(argv=None) -> argparse.Namespace:
    """train.py's arguments as `promptkd train` parses them (for code that runs main() itself)."""
    parser = argparse.ArgumentParser(prog="promptkd train")
    add_arguments(parser)
    add_debug_argument(parser)
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """The `train` verb: main() of the parsed arguments; the log names the command line."""
    main(args)
    return 0

