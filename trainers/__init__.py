"""Dassl trainers of this plugin (thin: they wire configs and data to the `promptkd` core).

    config.py            config keys added to Dassl's defaults (extend_cfg)
    base.py              shared plumbing: precision, optimiser/LR, checkpoints, base/novel eval
    promptkd_teacher.py  PromptKDTeacher, stage 1: PromptSRC-style teacher + class-vector export
    promptkd.py          PromptKD, stage 2: label-free distillation from stored class vectors
    predictor_export.py  writes a finished run's predictor.pt (for promptkd.predict / export_model)
    distributed.py       the per-rank training / evaluation loaders under torchrun
    view_data.py         PromptKD's train loader: views a pure function of (view seed, epoch, image)
    teacher_cache.py     `python -m trainers.teacher_cache write ...`: the teacher-embedding cache

Importing a trainer module registers it in Dassl's TRAINER_REGISTRY (train.py does this).
"""
