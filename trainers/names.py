"""The names Dassl looks up, checked against this plugin's before Dassl sees them.

`check_names(cfg)` (train.py, once the config is merged) refuses, with a `ConfigError` that
names the key and the closest known name (difflib):

* TRAINER.NAME (`--trainer`): one of this plugin's trainers (Dassl's TRAINER_REGISTRY keeps
  Dassl's own ~30 trainers too; they do not run on this plugin's configs);
* DATASET.NAME (set by `--dataset-config-file`): one of this plugin's dataset loaders (a
  config stem such as `dtd` is pointed at its registered name);
* MODEL.BACKBONE.NAME: what `promptkd.backbones` loads, an OpenAI CLIP name, a checkpoint
  file, or `open_clip:<architecture>/<pretrained tag or file>` (the open_clip part is checked
  when the model is loaded: its architectures and tags come from open_clip itself).
"""
from __future__ import annotations

import difflib
import os
import os.path as osp

import yaml
from dassl.data.datasets import DATASET_REGISTRY
from dassl.engine import TRAINER_REGISTRY

from promptkd import openclip_backbones
from promptkd.backbones import clip
from promptkd.errors import ConfigError, MissingFileError

DATASET_CONFIGS = osp.join(osp.dirname(osp.dirname(osp.abspath(__file__))), "configs", "datasets")
WEIGHT_SUFFIXES = (".pt", ".pth", ".bin", ".tar", ".safetensors", ".ckpt")


def ours(registry, package: str) -> list[str]:
    """The names in a Dassl registry whose object is defined in this project's `package`
    (promptkd.trainers or promptkd.datasets)."""
    return sorted(n for n in registry.registered_names()
                  if registry.get(n).__module__.startswith(package + "."))


def closest(name: str, known, n: int = 3) -> list[str]:
    """The known names closest to `name`, best first: case-insensitive, difflib's ratio >= 0.6,
    and only those about as close as the best one (a clear winner is named alone)."""
    return closest_matches(name, known, n, lower=True)


def closest_matches(name: str, known, n: int = 3, lower: bool = False, margin: float = 0.05) -> list[str]:
    """`difflib.get_close_matches(name, known, n, 0.6)`, cut to the matches within `margin` of
    the best ratio (shared with train.py's unknown-key hint)."""
    fold = (lambda t: t.lower()) if lower else (lambda t: t)
    by_form = {}
    for k in known:
        by_form.setdefault(fold(k), k)
    matches = difflib.get_close_matches(fold(name), list(by_form), n=n, cutoff=0.6)
    if not matches:
        return []
    ratio = [difflib.SequenceMatcher(None, fold(name), m).ratio() for m in matches]
    return [by_form[m] for m, r in zip(matches, ratio) if r >= ratio[0] - margin]


def did_you_mean(options: list[str]) -> str:
    return f" Did you mean {' or '.join(repr(o) for o in options)}?" if options else ""


def dataset_config_names() -> dict:
    """Config stem (dtd) -> the DATASET.NAME its configs/datasets YAML sets (DescribableTextures)."""
    names = {}
    if osp.isdir(DATASET_CONFIGS):
        for f in sorted(os.listdir(DATASET_CONFIGS)):
            if f.endswith(".yaml"):
                with open(osp.join(DATASET_CONFIGS, f), encoding="utf-8") as fh:
                    name = ((yaml.safe_load(fh) or {}).get("DATASET") or {}).get("NAME")
                if name:
                    names[f[:-5]] = name
    return names


def check_trainer(name: str) -> None:
    known = ours(TRAINER_REGISTRY, "promptkd.trainers")
    if name in known:
        return
    if not name:
        raise ConfigError(f"No trainer given: pass --trainer NAME (one of {', '.join(known)}).")
    raise ConfigError(f"Unknown trainer '{name}' (--trainer / TRAINER.NAME).{did_you_mean(closest(name, known))} "
                      f"This plugin's trainers: {', '.join(known)}.")


def check_dataset(name: str) -> None:
    known = ours(DATASET_REGISTRY, "promptkd.datasets")
    if name in known:
        return
    stems = dataset_config_names()
    if not name:
        raise ConfigError("No dataset given (DATASET.NAME is empty): pass --dataset-config-file "
                          f"configs/datasets/<name>.yaml, one of {', '.join(stems)}.")
    options = closest(name, known)
    stem = next((s for s in stems if s.lower() == name.lower()), None) or next(iter(closest(name, stems, 1)), None)
    if stem and stems[stem] in known and stems[stem] not in options:
        options.insert(0, stems[stem])  # a config stem (dtd) for its registered name
    raise ConfigError(f"Unknown dataset '{name}' (DATASET.NAME).{did_you_mean(options)} This plugin's datasets: "
                      f"{', '.join(known)} (configs/datasets/<name>.yaml sets DATASET.NAME for each).")


def check_backbone(name: str) -> None:
    models = clip.available_models()
    form = (f"an OpenAI CLIP name ({', '.join(models)}), the path of a CLIP checkpoint file, or "
            f"{openclip_backbones.NAME_FORMAT}")
    if not name:
        raise ConfigError(f"MODEL.BACKBONE.NAME is empty: give {form}.")
    if openclip_backbones.is_open_clip_name(name):
        openclip_backbones.split_name(name)  # the form; architecture and tag are checked on loading
        return
    if name in models or osp.isfile(osp.expanduser(name)):
        return
    prefix, sep, rest = name.partition(":")
    if sep and closest(prefix, [openclip_backbones.PREFIX[:-1]]):  # openclip:..., open-clip:...
        raise ConfigError(f"Unknown backbone '{name}' (MODEL.BACKBONE.NAME): open_clip backbones are "
                          f"written '{openclip_backbones.PREFIX}{rest}' ({openclip_backbones.NAME_FORMAT}).")
    if name.lower().endswith(WEIGHT_SUFFIXES) or name.startswith(("/", "./", "../", "~")):
        raise MissingFileError(f"MODEL.BACKBONE.NAME {name}: there is no file there. Give {form}.")
    raise ConfigError(f"Unknown CLIP backbone '{name}' (MODEL.BACKBONE.NAME).{did_you_mean(closest(name, models))} "
                      f"Use {form}.")


def check_names(cfg) -> None:
    """Trainer, dataset and backbone names of `cfg`, before Dassl looks any of them up."""
    check_trainer(cfg.TRAINER.NAME)
    check_dataset(cfg.DATASET.NAME)
    check_backbone(cfg.MODEL.BACKBONE.NAME)
