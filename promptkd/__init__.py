"""PromptKD core: plain-PyTorch building blocks that need no Dassl.

    backbones      the one backbone factory (OpenAI CLIP names / files, open_clip:...), its
                   preprocessing, weight fingerprints
    openclip_backbones  the OpenCLIP family behind it: local weights, image-tower-only builds
    encoders       prompted image / text encoders that walk stock CLIP blocks (IVLP prompts)
    image_inputs   re-fit a batch to another tower's input size and normalisation
    student        the distilled student: prompted image encoder + projector
    class_vectors  the teacher's pre-stored class vectors and image side (files + checks)
    views          training views as a pure function of (view seed, epoch, image); the sampler
    teacher_cache  stored teacher image embeddings per view (sharded, resumable, checked)
    losses         KD and PromptSRC losses, Gaussian prompt aggregation
    checkpoints    atomic save, learnable-only state, readers for the published checkpoints
    schedule       warm-up + cosine LR schedule from torch's own schedulers
    distributed    torchrun process group, rank-0 helpers, sharded evaluation, DDP wrapper
    records        run.json / result.json, the records every train.py run writes
    results        the results-table command (promptkd results), from those records

    deploy/        using a trained run: predictor, predict, export_model, hub, push, convert
    demo/          the offline demo's kit: toyworld, pretrain, weights, tiny, forked, demo_weights/

The Dassl trainers in `trainers/` wire these to configs and data loaders.
"""

from .moved import install as _install_moved

_install_moved()  # old paths of modules moved into deploy/ and demo/ import, with a FutureWarning
