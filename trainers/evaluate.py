"""Evaluation on Dassl's trainer: base / novel / HM (or accuracy), gathered across ranks.

`EvaluationMixin.test` scores every test image against all classes of the dataset
(`model_inference`), gathers the ranks' shards in order under torchrun, and reports base /
novel / HM (base-to-novel) or accuracy; `log_report` prints the `RESULT` line and writes
`result.json`. It goes before Dassl's `TrainerX` in a trainer's bases (`trainers/base.py`).
"""
from __future__ import annotations

import json
import logging

import torch
from tabulate import tabulate
from tqdm import tqdm

from promptkd import distributed as dist_
from promptkd import records
from promptkd.errors import DataError
from promptkd.evaluation import predictions, report_from_predictions

logger = logging.getLogger("promptkd")


class EvaluationMixin:
    """test() and its report (overriding Dassl's)."""

    @torch.no_grad()
    def test(self, split=None):
        """Evaluate on the test images of all classes; log a table and a RESULT line.

        split "base-selection" (best_base_test rule) evaluates base classes only and logs
        nothing but the figure. Returns base accuracy (base2novel) or accuracy (cross).
        """
        self.set_model_mode("eval")
        protocol = records.protocol(self.cfg)
        selection_only = split == "base-selection"
        preds, labels, indices = [], [], []
        self.unreadable_seen = 0
        for batch in tqdm(self.eval_loader, desc="evaluate", leave=False, dynamic_ncols=True,
                          disable=None if dist_.is_main() else True):
            batch = self.screen_batch(batch, "test")
            if batch is None:
                continue
            label, index = batch["label"], batch["index"]
            if selection_only:
                keep = label < self.num_base
                if not keep.any():
                    continue
                batch = {"img": batch["img"][keep]}
                label, index = label[keep], index[keep]
            with self.autocast():  # the towers; the logits are fp32 (promptkd.precision)
                logits = self.model_inference(batch["img"].to(self.device, non_blocking=True))
            preds.append(predictions(logits, self.num_base).cpu())  # what the report needs, not the logits
            labels.append(label)
            indices.append(index)
        if self.cfg.DATALOADER.SKIP_UNREADABLE:  # after the pass: the ranks' shards differ in length
            self.check_unreadable_share(dist_.sum_over_ranks(self.unreadable_seen)[0], self.eval_loader, "test",
                                        so_far=False)
        self.report_unreadable("evaluation")
        # Under torchrun each rank scored its own shard: every rank gets all of them, in order.
        preds, labels = dist_.gather_in_order(indices, preds, labels)
        if len(labels) == 0:
            raise DataError(f"No test image of {self.cfg.DATASET.NAME} could be evaluated: all "
                            f"{len(self.eval_loader.dataset)} were skipped as unreadable. Check them with "
                            f"`promptkd check --root {self.cfg.DATASET.ROOT} {self.cfg.DATASET.NAME}`.")
        report = report_from_predictions(preds, labels, protocol, self.num_base)
        if selection_only:
            logger.info("base-class test accuracy (for model selection): %.2f", report["base"])
            return report["base"]
        self.log_report(report)
        return report["base"] if protocol == "base2novel" else report["accuracy"]

    def log_report(self, report: dict):
        protocol = records.protocol(self.cfg)
        keys = ["base", "novel", "hm", "accuracy"] if protocol == "base2novel" else ["accuracy"]
        rows = [[k, f"{report[k]:.2f}"] for k in keys]
        logger.info("Results on %s (%s, %d test images, selection %s):\n%s", self.cfg.DATASET.NAME, protocol,
                    report["n"], self.cfg.TEST.MODEL_SELECTION, tabulate(rows, headers=["metric", "%"], tablefmt="github"))
        for k in keys:
            self.write_scalar(f"test/{k}", report[k], self.epoch)
        line = {"trainer": self.cfg.TRAINER.NAME, "dataset": self.cfg.DATASET.NAME, "seed": self.cfg.SEED,
                "protocol": protocol, **{k: round(report[k], 4) for k in keys},
                "selection": self.cfg.TEST.MODEL_SELECTION, "backbone": self.cfg.MODEL.BACKBONE.NAME}
        logger.info("RESULT %s", json.dumps(line))
        self.last_report = report
        if getattr(self, "tracker", None) is not None:  # LOG.WANDB (trainers/tracking.py)
            self.tracker.log({f"test/{k}": report[k] for k in keys}, epoch=self.model_epoch)
            self.tracker.report(self, {k: line[k] for k in keys})
        if self.run_record is not None:
            records.write_result(self.cfg, self.run_record, {k: line[k] for k in keys}, split="test",
                                 n_images=report["n"], classes=len(self.all_classnames), base_classes=self.num_base,
                                 epoch=self.model_epoch, checkpoint=self.checkpoint)
