"""Run folders as training leaves them, for the tests of `promptkd results` (test_results.py) and
of its writers (test_io.py): a Dassl-style log.txt (the printed arguments and yacs config, epoch
lines, the RESULT line) of a finished or failed run of an earlier version, or the run.json of an
unfinished run of this one, at output/<protocol>/<trainer>/<dataset>/seed<seed>/.
"""
import json
import os
from pathlib import Path

from promptkd import records
from promptkd import results as R

B2N_DIRS = {  # registered name -> CoOp config / output directory name
    "ImageNet": "imagenet", "Caltech101": "caltech101", "OxfordPets": "oxford_pets",
    "StanfordCars": "stanford_cars", "OxfordFlowers": "oxford_flowers", "Food101": "food101",
    "FGVCAircraft": "fgvc_aircraft", "SUN397": "sun397", "DescribableTextures": "dtd",
    "EuroSAT": "eurosat", "UCF101": "ucf101",
}
DG_DIRS = {"ImageNetV2": "imagenetv2", "ImageNetSketch": "imagenet_sketch",
           "ImageNetA": "imagenet_a", "ImageNetR": "imagenet_r"}


def config_dump(trainer, dataset, seed, modal, selection="last_epoch", backbone="ViT-B/16"):
    """What Dassl's train.py prints first: the arguments, then the yacs config."""
    return f"""Setting fixed seed: {seed}
***************
** Arguments **
***************
backbone: 
config_file: configs/trainers/{trainer}/vit_b16_c2_ep20_batch8_4+4ctx.yaml
dataset_config_file: configs/datasets/{B2N_DIRS.get(dataset, DG_DIRS.get(dataset))}.yaml
eval_only: False
head: 
opts: ['TRAINER.MODAL', '{modal}']
output_dir: output/{trainer}/{dataset}/seed{seed}
root: /data
seed: {seed}
trainer: {trainer}
************
** Config **
************
DATALOADER:
  NUM_WORKERS: 8
  TEST:
    BATCH_SIZE: 100
    SAMPLER: SequentialSampler
  TRAIN_X:
    BATCH_SIZE: 8
DATASET:
  ALL_AS_UNLABELED: False
  NAME: {dataset}
  NUM_SHOTS: 0
  ROOT: /data
  SUBSAMPLE_CLASSES: all
INPUT:
  TRANSFORMS: ['random_resized_crop', 'random_flip', 'normalize']
MODEL:
  BACKBONE:
    NAME: {backbone}
    PRETRAINED: True
  HEAD:
    NAME: 
OPTIM:
  LR: 0.005
  NAME: sgd
OUTPUT_DIR: output/{trainer}/{dataset}/seed{seed}
SEED: {seed}
TEST:
  MODEL_SELECTION: {selection}
TRAINER:
  MODAL: {modal}
  NAME: {trainer}
  PROMPTKD:
    KD_WEIGHT: 1000.0
    TEACHER_NAME: ViT-L/14
USE_CUDA: False
VERSION: 1
Collecting env info ...
** System info **
PyTorch version: 2.4.0
OS: Ubuntu 22.04 LTS
Loading trainer: {trainer}
Loading dataset: {dataset}
"""


def training_lines(epochs=3, upto=None):
    upto = epochs if upto is None else upto
    return "".join(f"epoch [{e}/{epochs}] batch [20/40] time 0.120 (0.130) data 0.001 loss "
                   f"{1.0 / e:.4f} lr 5.0000e-03 eta 0:00:{10 * (epochs - e):02d}\n"
                   for e in range(1, upto + 1))


def result_line(trainer, dataset, seed, protocol, prefix="", selection="last_epoch", **metrics):
    record = {"trainer": trainer, "dataset": dataset, "seed": seed, "protocol": protocol,
              **metrics, "selection": selection, "backbone": "ViT-B/16"}
    return f"{prefix}RESULT {json.dumps(record)}\n"


def b2n_metrics(base, novel):
    return {"base": base, "novel": novel, "hm": round(R.harmonic_mean(base, novel), 2),
            "accuracy": round((base + novel) / 2, 2)}


def write_run_record(folder, trainer, dataset, seed, protocol="base2novel", selection="last_epoch"):
    """The run.json this version writes when a run starts (promptkd.records.run_record's identity)."""
    records.atomic_write_json(Path(folder) / "run.json", {
        "format": 1, "kind": "run", "run_id": f"{trainer}-{dataset}-{seed}", "trainer": trainer, "dataset": dataset,
        "protocol": protocol, "seed": seed, "backbone": "ViT-B/16", "selection": selection})


def write_run(root, trainer, dataset, seed, protocol="base2novel", metrics=None, *,
              name="log.txt", subdir=None, status="ok", selection="last_epoch", mtime=None):
    """A run directory output/<protocol>/<trainer>/<dataset>/seed<seed>/log.txt; an unfinished
    run as this version leaves it (run.json, a log without a result), a finished or failed one as
    an earlier version did (a log with a RESULT line, no records)."""
    proto_dir = "base2new" if protocol == "base2novel" else "cross"
    folder = Path(root) / (subdir or proto_dir) / trainer.lower() / \
        B2N_DIRS.get(dataset, DG_DIRS.get(dataset, dataset)) / f"seed{seed}"
    folder.mkdir(parents=True, exist_ok=True)
    text = config_dump(trainer, dataset, seed, protocol, selection)
    if status == "unfinished":
        write_run_record(folder, trainer, dataset, seed, protocol, selection)
        text += training_lines(epochs=20, upto=7)
    else:
        text += training_lines() + "Evaluate on the *test* set\n=> result\n"
        text += result_line(trainer, dataset, seed, protocol, selection=selection,
                            prefix="[2026-01-02 10:00:00] INFO ", **(metrics or {}))
        if status == "failed":
            text += ("Traceback (most recent call last):\n  File \"train.py\", line 1, in "
                     "<module>\nRuntimeError: CUDA out of memory\n")
    path = folder / name
    path.write_text(text)
    if mtime is not None:
        os.utime(path, (mtime, mtime))
    return path
