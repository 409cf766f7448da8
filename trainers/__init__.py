"""Dassl trainers of this plugin (thin: they wire configs and data to the `promptkd` core).

    train.py             `promptkd train`: the config merge, then a trainer's train / evaluate
    plugin.py            PromptKD inside a host codebase: registration and config keys
    config.py            config keys added to Dassl's defaults (extend_cfg)
    base.py              PromptTrainer: config checks, loaders, precision, optimiser/LR, epoch loop
    checkpointing.py     its checkpoint format, pointer file and exact resume (CheckpointMixin)
    evaluate.py          its base / novel / HM evaluation, gathered across ranks (EvaluationMixin)
    names.py             trainer / dataset / backbone names checked first, closest match suggested
    data.py              checked image reading (unreadable images) and test transforms
    prompt_learning.py   the one trainer of every prompt-learning method (promptkd.prompt_method)
    baseline_trainers.py  ZeroshotCLIP, CoOp, CoCoOp, IVLP, MaPLe, PromptSRC registered through it
    promptkd_teacher.py  PromptKDTeacher, stage 1: PromptSRC-style teacher + class-vector export
    promptkd.py          PromptKD, stage 2: label-free distillation from stored class vectors
    students.py          PromptKD's students: the paper's or any registered prompt-learning method
    host_methods.py      a host codebase's own trainers as PromptKD students
    host_teacher.py      a finished run of a host codebase's trainer as PromptKD's teacher
    predictor_export.py  writes a finished run's predictor.pt (for promptkd.deploy.predict / export_model)
    rank_loaders.py      the per-rank training / evaluation loaders under torchrun
    pool_loader.py       PromptKD's unlabelled pool (TRAINER.PROMPTKD.POOL): the images distilled on
    view_loader.py       PromptKD's train loader: views a pure function of (view seed, epoch, image)
    cache_filler.py      the teacher cache's side of a run: its identity, filling views
    cache_command.py     `promptkd cache ...`: the teacher-embedding cache
    run_logging.py       where the trainers' log lines go (our train.py, a host's)
    tracking.py          Weights & Biases tracking of a run (LOG.WANDB)
    demo_driver.py       `promptkd demo`: the offline demo's driver

Importing a module registers nothing: `plugin.register()` puts the trainers in Dassl's
TRAINER_REGISTRY where their names are free (our train.py and a host's `plugin.extend_cfg` call it).
"""
