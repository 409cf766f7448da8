"""PromptKD core: plain-PyTorch building blocks that need no Dassl.

    backbones      load an un-forked OpenAI CLIP by name or file; weight fingerprints
    encoders       prompted image / text encoders that walk stock CLIP blocks (IVLP prompts)
    student        the distilled student: prompted image encoder + projector
    class_vectors  the teacher's pre-stored class vectors and image side (files + checks)
    losses         KD and PromptSRC losses, Gaussian prompt aggregation
    checkpoints    atomic save, learnable-only state, readers for the published checkpoints
    schedule       warm-up + cosine LR schedule from torch's own schedulers
    tiny           random-weight tiny CLIP checkpoints (tests)
    toyworld       the demo's generated colour x shape world (images and captions)
    pretrain       contrastive pretraining of tiny CLIPs on it, cached (the demo's backbones)
    demo           python -m promptkd.demo pretrain (used by scripts/promptkd/demo.sh)
    results        the results-table command (python -m promptkd.results)

The Dassl trainers in `trainers/` wire these to configs and data loaders.
"""
