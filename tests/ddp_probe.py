"""Test helper, run under torchrun: `python -m torch.distributed.run ... tests/ddp_probe.py
PROBE_DIR <train.py arguments>`. Runs train.py's main() unchanged, then each rank writes
PROBE_DIR/rank<R>.pt: its learnable state, the evaluation predictions it computed (after the
gather), its report and its training sampler's last epoch.

PROBE_KILL_AFTER_EPOCH=N: rank 0 SIGKILLs itself once epoch N is done (its checkpoint written);
torchrun then stops the other ranks, as when a job is killed.
"""
import gc
import os
import signal
import sys

import torch

from promptkd.trainers import train  # noqa: E402
import promptkd.trainers.evaluate as evaluate  # noqa: E402
from promptkd import distributed  # noqa: E402
from promptkd.checkpoints import learnable_state_dict  # noqa: E402

record = {"evals": []}
report = evaluate.report_from_predictions


def recording_report(preds, labels, *args, **kwargs):
    record["evals"].append({"predictions": preds.clone(), "labels": labels.clone()})
    return report(preds, labels, *args, **kwargs)


build = train.build_trainer


def recording_build(cfg):
    trainer = record["trainer"] = build(cfg)
    kill = int(os.environ.get("PROBE_KILL_AFTER_EPOCH", "0"))
    after_epoch = trainer.after_epoch

    def killing_after_epoch():
        after_epoch()
        if trainer.epoch + 1 == kill and distributed.rank() == 0:
            os.kill(os.getpid(), signal.SIGKILL)
    trainer.after_epoch = killing_after_epoch
    return trainer


evaluate.report_from_predictions = recording_report
train.build_trainer = recording_build

if __name__ == "__main__":
    probe_dir = sys.argv[1]
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])  # main() ends the group
    train.main(train.parse_args(sys.argv[2:]))
    trainer = record["trainer"]
    sampler = trainer.train_loader_x.sampler
    torch.save({"state": learnable_state_dict(trainer.model), "evals": record["evals"],
                "report": getattr(trainer, "last_report", None), "world": world,
                "sampler": type(sampler).__name__, "sampler_epoch": getattr(sampler, "epoch", None)},
               os.path.join(probe_dir, f"rank{rank}.pt"))
    # Free the trainer (its DDP wrapper holds the group's last reference) here, as a real run frees
    # it when main() returns: left to the interpreter's exit, gloo's threads can outlive it and abort
    # the process ("terminate called without an active exception", seen with torch 2.4).
    del trainer, sampler
    record.clear()
    gc.collect()
