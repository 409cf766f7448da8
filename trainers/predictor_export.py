"""Writing a run's `predictor.pt` (see `promptkd.deploy.predictor`) from a trainer's config.

Trainers call `save_predictor(cfg, record)` once their model is final; the record's test
transform comes from the run's own INPUT settings (`preprocess_from_cfg`), i.e. exactly what
Dassl's evaluation applied.
"""
from __future__ import annotations

import logging
import os

from promptkd.deploy.predictor import PREDICTOR_FILE, PredictorRecord, preprocess_settings

logger = logging.getLogger("promptkd")


def export_folder(cfg) -> str:
    return cfg.TRAINER.EXPORT_DIR or os.path.join(cfg.OUTPUT_DIR, "export")


def preprocess_from_cfg(cfg) -> dict:
    """The run's test transform (`promptkd.trainers.data.test_transform`): resize (INPUT.RESIZE_MODE),
    centre crop INPUT.SIZE, normalise."""
    normalise = "normalize" in cfg.INPUT.TRANSFORMS
    return preprocess_settings(tuple(cfg.INPUT.SIZE), cfg.INPUT.INTERPOLATION,
                               cfg.INPUT.PIXEL_MEAN if normalise else None, cfg.INPUT.PIXEL_STD if normalise else None,
                               cfg.INPUT.RESIZE_MODE)


def save_predictor(cfg, record: PredictorRecord) -> str:
    path = os.path.join(export_folder(cfg), PREDICTOR_FILE)
    record.save(path)
    logger.info("Predictor (%d classes, backbone %s) written to %s: `promptkd predict %s IMAGES`",
                len(record.classnames), record.backbone, path, export_folder(cfg))
    return path
