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
    tiny           random-weight tiny CLIP checkpoints (tests)
    toyworld       the demo's generated colour x shape world (images and captions)
    pretrain       contrastive pretraining of tiny CLIPs on it, cached (the demo's backbones)
    demo           promptkd demo-weights pretrain (used by scripts/promptkd/demo.sh)
    records        run.json / result.json, the records every train.py run writes
    results        the results-table command (promptkd results), from those records
    predictor      a run's predictor.pt record -> a stand-alone image classifier
    predict        classify images with a run (promptkd predict)
    export_model   one ONNX / TorchScript classifier file (promptkd export)

The Dassl trainers in `trainers/` wire these to configs and data loaders.
"""
