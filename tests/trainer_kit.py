"""Helpers of the trainer tests: our train.py's command lines for tiny runs on a fake DTD.

`teacher_args` / `student_args` / `baseline_args` give the argument lists of train.py for the
shipped configs at tiny sizes (32 px, batches of 4, fp32, prompt depth 2: the tiny CLIPs have
2-3 layers); `make_trainer` builds the Dassl trainer exactly as train.py does. The baselines are
taken from the plugin's registry (`promptkd.trainers.plugin`), as timm's tests take its models
from `timm.list_models()`: a newly registered method is tested by the grid with no change here.
`eval_logits` / `predictor_logits` are the two sides of "the exported predictor gives the
trainer's own evaluation".

The session fixtures `data_root` and `teacher_run` built from these live in tests/conftest.py.
(Test files do not import from each other; what they share lives in helper modules like this.)
"""
from __future__ import annotations

import glob
import os
import re

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from promptkd.trainers import train  # noqa: E402  (registers datasets and trainers)
from dassl.engine import build_trainer  # noqa: E402
from dassl.utils import set_random_seed  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEACHER_CFG = os.path.join(ROOT, "configs/trainers/PromptKDTeacher/vit_l14_c2_ep20_batch8_4+4ctx.yaml")
STUDENT_CFG = os.path.join(ROOT, "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml")
DTD_CFG = os.path.join(ROOT, "configs/datasets/dtd.yaml")
TINY = ["INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4",
        "DATALOADER.TEST.BATCH_SIZE", "16", "PREC_KEY", "fp32"]


def teacher_args(data_root, weights, out, *extra, epochs=2):
    opts = [o if o != "PREC_KEY" else "TRAINER.PROMPTSRC.PREC" for o in TINY]
    return ["--root", data_root, "--seed", "1", "--trainer", "PromptKDTeacher", "--dataset-config-file", DTD_CFG,
            "--config-file", TEACHER_CFG, "--output-dir", out, "MODEL.BACKBONE.NAME", weights["teacher"], *opts,
            "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base",
            "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2", *extra]


def student_args(data_root, weights, out, teacher_dir, *extra, epochs=3):
    opts = [o if o != "PREC_KEY" else "TRAINER.PROMPTKD.PREC" for o in TINY]
    return ["--root", data_root, "--seed", "1", "--trainer", "PromptKD", "--dataset-config-file", DTD_CFG,
            "--config-file", STUDENT_CFG, "--output-dir", out, "MODEL.BACKBONE.NAME", weights["student"], *opts,
            "OPTIM.MAX_EPOCH", str(epochs), "DATASET.NUM_SHOTS", "0", "TRAINER.PROMPTKD.TEACHER_DIR", teacher_dir,
            "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "2", "TRAINER.PROMPTKD.KD_WEIGHT", "100", *extra]


def make_trainer(args):
    cfg = train.setup_cfg(train.parse_args(args))
    set_random_seed(cfg.SEED)
    return build_trainer(cfg)


def learnable(trainer):
    from promptkd.checkpoints import learnable_state_dict
    return learnable_state_dict(trainer.model)


def whole_and_resumed(args_for, crash_after_epoch):
    """Train once straight through, and once interrupted after an epoch then re-run."""
    whole = make_trainer(args_for("whole"))
    whole.train()
    cut = make_trainer(args_for("cut"))
    after_epoch = cut.after_epoch

    def crash():
        after_epoch()
        if cut.epoch + 1 == crash_after_epoch:
            raise KeyboardInterrupt(f"killed after epoch {crash_after_epoch}")
    cut.after_epoch = crash
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = make_trainer(args_for("cut"))
    resumed.train()
    a, b = learnable(whole), learnable(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    return whole, resumed


# --- the baselines, from the registry ------------------------------------------------------------

#: PromptKD's own two stages: tested by test_trainers.py, not by the baseline grid.
OWN_STAGES = ("PromptKDTeacher", "PromptKD")
#: Prompt depths are cut to this for the tiny CLIPs (2 layers in the student, 3 in the teacher).
TINY_PROMPT_DEPTH = "2"


def method_config(name: str, root: str = ROOT) -> str:
    """The shipped config a baseline is tested with, relative to configs/trainers: the one its
    base-to-novel script trains by default (scripts/<method>/base2new_train.sh runs
    `_baseline.sh <name> "${CONFIG:-<config>}"`); for a method without a script, the first of
    configs/trainers/<name>/*.yaml in sorted order, the demo and cross-dataset variants aside."""
    folder = os.path.join(root, "configs", "trainers", name)
    by_script = re.compile(r'_baseline\.sh"?\s+' + re.escape(name) + r'\s+"\$\{CONFIG:-([^}]+)\}"')
    for script in sorted(glob.glob(os.path.join(root, "scripts", "*", "base2new_train.sh"))):
        with open(script, encoding="utf-8") as f:
            match = by_script.search(f.read())
        if match:
            found = [match.group(1) + ".yaml"]
            break
    else:
        found = sorted(f for f in os.listdir(folder) if f.endswith(".yaml") and not f.startswith("demo_")
                       and not f.endswith("_cross_datasets.yaml")) if os.path.isdir(folder) else []
    if not found or not os.path.isfile(os.path.join(folder, found[0])):
        raise AssertionError(f"The registered trainer {name} has no config in {folder} (or its base2new_train.sh "
                             "names one that is not there): ship one (a method is tested with its shipped config).")
    return f"{name}/{found[0]}"


def registered_baselines(root: str = ROOT) -> dict:
    """{registered name: (config file under configs/trainers, TRAINER.<NODE>, tiny options)} for
    every trainer the plugin registers (promptkd.trainers.plugin.trainer_classes, registered in
    Dassl's TRAINER_REGISTRY by plugin.register()), PromptKD's own two stages aside. The tiny
    options cut every PROMPT_DEPTH* key of the method's node to TINY_PROMPT_DEPTH."""
    from dassl.engine import TRAINER_REGISTRY

    from promptkd.trainers import plugin
    names = plugin.register()["trainers"]
    defaults = plugin.our_keys()
    found = {}
    for cls in plugin.trainer_classes():
        if cls.__name__ in OWN_STAGES:
            continue
        name = names[cls.__name__]
        assert TRAINER_REGISTRY.get(name) is cls, (name, cls)
        node = cls.CFG_NODE
        depths = sorted(k for k in defaults.TRAINER[node] if k.startswith("PROMPT_DEPTH"))
        found[name] = (method_config(cls.__name__, root), node,
                       [o for k in depths for o in (f"TRAINER.{node}.{k}", TINY_PROMPT_DEPTH)])
    return found


BASELINES = registered_baselines()


def baseline_args(name, data_root, weights, out, *extra):
    cfg, node, opts = BASELINES[name]
    return ["--root", data_root, "--seed", "1", "--trainer", name, "--dataset-config-file", DTD_CFG,
            "--config-file", os.path.join(ROOT, "configs/trainers", cfg), "--output-dir", out,
            "MODEL.BACKBONE.NAME", weights["teacher"], "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", "OPTIM.MAX_EPOCH", "2",
            "OPTIM.LR", "0.01", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base",
            f"TRAINER.{node}.PREC", "fp32", *opts, *extra]


# --- the trainer's evaluation and the exported predictor ------------------------------------------

def eval_logits(trainer):
    """(impaths, logits) of the trainer's own evaluation loader and model_inference."""
    trainer.set_model_mode("eval")
    if hasattr(trainer.model, "prepare_eval"):
        trainer.model.prepare_eval(trainer.all_classnames)
    paths, logits = [], []
    with torch.no_grad():
        for batch in trainer.eval_loader:
            paths += list(batch["impath"])
            logits.append(trainer.model_inference(batch["img"]).float())
    return paths, torch.cat(logits)


def predictor_logits(predictor, paths):
    from promptkd.deploy import predict
    rows = {}
    for path, row, error in predict.predict(predictor, paths, batch_size=7, progress=False):
        assert error is None
        rows[path] = row
    return torch.stack([rows[p] for p in paths])
