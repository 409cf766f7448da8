"""PromptKD core: plain-PyTorch building blocks that need no Dassl.

The method:

    backbones      the one backbone factory (OpenAI CLIP names / files, open_clip:...), its
                   preprocessing, weight fingerprints
    openclip_backbones  the OpenCLIP family behind it: local weights, image-tower-only builds
    openai_clip    the installed OpenAI `clip` package, even where a host's clip/ shadows the name
    encoders       prompted image / text encoders that walk stock CLIP blocks (IVLP prompts)
    image_inputs   re-fit a batch to another tower's input size and normalisation
    prompt_method  the interface every prompt-learning method implements (docs/NEW_METHOD.md)
    teacher        the stage-1 teacher (IVLP prompts, PromptSRC-style), published teachers' reader
    baselines      ZeroshotCLIP, CoOp, CoCoOp, MaPLe on the shared encoders
    templates      text templates
    student        the distilled student: prompted image encoder + projector
    class_vectors  the teacher's pre-stored class vectors and image side (files + checks)
    targets        where a student's targets come from: one interface for every teacher source
    losses         KD and PromptSRC losses, Gaussian prompt aggregation

Training:

    views          training views as a pure function of (view seed, epoch, image); the sampler
    decode         the faster training-image path (INPUT.DECODER torchvision): decode_jpeg, transforms v2
    teacher_cache  stored teacher image embeddings per view (sharded, resumable, checked)
    pools          the unlabelled pool of stage 2: sources, budgets, content hashes, leakage
    precision      the run's precision mode (fp32, fp16, amp, bf16) and fp32 scoring
    determinism    TRAIN.DETERMINISTIC: bit-reproducible GPU kernels, or the fastest ones
    rng            the random state a checkpoint keeps (exact resume)
    checkpoints    atomic save, learnable-only state, readers for the published checkpoints
    schedule       warm-up + cosine LR schedule from torch's own schedulers
    distributed    torchrun process group, rank-0 helpers, sharded evaluation, DDP wrapper
    evaluation     base / novel / HM accuracy reports

Records, files, commands:

    records        run.json / result.json, the records every train.py run writes
    results        the results-table command (promptkd results), from those records
    io             every file read or written: guarded loaders, one atomic writer
    errors         user errors and how every command-line entry point reports them
    extras         the optional parts (pyproject's extras) and the torch features some need
    cli            `promptkd VERB` (`python -m promptkd`, __main__)
    moved          old import paths of moved modules and old names (a FutureWarning, one release)

By role:

    deploy/        using a trained run: predictor, predict, export_model, hub, push, convert
    demo/          the offline demo's kit: toyworld, pretrain, weights, tiny, forked, demo_weights/

The Dassl trainers in `trainers/` wire these to configs and data loaders.

The public API is `__all__` below (each name is imported when first used, so `import promptkd`
stays light); everything else is reached through its module.
"""
from __future__ import annotations

import importlib

from .moved import install as _install_moved

_install_moved()  # old paths of modules moved into deploy/ and demo/ import, with a FutureWarning

#: public name -> the module that defines it
_API = {
    # backbones
    "load_backbone": "backbones", "load_image_tower": "backbones", "Preprocess": "backbones",
    # the method
    "IVLPTeacher": "teacher", "PromptKDStudent": "student", "Projector": "student",
    "ClassVectors": "class_vectors", "ImageSide": "class_vectors",
    "kd_loss": "losses", "distill_loss": "losses", "GaussianPromptAggregator": "losses",
    "TeacherCache": "teacher_cache", "Precision": "precision",
    # a trained run
    "from_pretrained": "deploy.hub", "save_pretrained": "deploy.hub",
    "Predictor": "deploy.predictor", "ImageClassifier": "deploy.predictor",
    # errors
    "UserError": "errors", "ConfigError": "errors", "MissingFileError": "errors", "CheckpointError": "errors",
    "DataError": "errors",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(f"{__name__}.{_API[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(__all__))
