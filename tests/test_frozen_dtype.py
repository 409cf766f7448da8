"""Frozen towers in autocast's compute dtype under PREC amp / bf16 (issue 37 item 13).

Under autocast an fp32 weight is cast down at every call (and again when activation
checkpointing recomputes a block): for a ViT-L/14 forward about 0.6 GB of copies. The frozen
towers are now held in the compute dtype (`Precision.cast_frozen` -> `backbones.to_compute_dtype`)
with what must stay fp32 kept fp32: LayerNorms (fp32 weights, fp32 compute), embeddings, the
residual stream (`encoders.stream_dtype`), the prompts (trainable fp32 masters) and the scoring.

On the CPU, PREC amp runs as bf16 autocast (promptkd.precision), so bf16 is what runs here; a
GPU's amp takes the same code with fp16.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from promptkd.backbones import load_backbone, load_clip, mixed_dtype_ops
from promptkd.encoders import PromptedImageEncoder, PromptedTextEncoder
from promptkd.precision import Precision

NAMES = ["a cat", "golden_retriever", "space shuttle"]
CPU = torch.device("cpu")


class WeightCasts(TorchDispatchMode):
    """Counts the copies (`_to_copy`, `copy_`) whose source is one of `params` (by storage)."""

    def __init__(self, params):
        super().__init__()
        self.ptrs = {p.data_ptr() for p in params}
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if name in ("_to_copy", "copy_", "_autocast_to_reduced_precision"):
            src = args[1] if name == "copy_" else args[0]
            if isinstance(src, torch.Tensor) and src.data_ptr() in self.ptrs:
                self.count += 1
        return func(*args, **(kwargs or {}))


def images(size, n=2, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def towers(model, seed=0):
    torch.manual_seed(seed)
    return PromptedImageEncoder(model, 2, 2), PromptedTextEncoder(model, 4, 2)


def step(precision, img, txt, size):
    """One training-like pass under autocast: prompted image and text features with activation
    checkpointing, fp32 scoring, backward into the prompts. Returns (logits, prompt grads, casts)."""
    img.grad_checkpoint = txt.grad_checkpoint = True
    # the weights (matrices, biases, norms); the embeddings' small per-call casts to the stream's
    # dtype (positions, class token) are the encoders' own and as before
    frozen = [p for m in (img.visual, txt) for n, p in m.named_parameters()
              if not n.startswith("prompts") and "embedding" not in n]
    with WeightCasts(frozen) as casts:
        with precision.autocast():
            f, t = img(images(size)), txt.encode(NAMES)
        from promptkd.precision import class_logits, normalise
        logits = class_logits(normalise(f), normalise(t), 20.0)
        logits.sum().backward()
    grads = [p.grad.clone() for p in (*img.prompts, *txt.prompts)]
    return logits.detach(), grads, casts.count


def check_tower(load, size):
    """The same tower in today's form (fp32 weights under autocast) and cast to bf16: dtypes,
    weight casts counted, logits and prompt gradients compared."""
    precision = Precision.resolve("bf16", CPU)
    reference, model = load(), load()
    precision.cast_frozen(model)
    # matrices in the compute dtype; norms, embeddings stay fp32
    lin = [m for m in model.modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]
    assert lin and all(m.weight.dtype == torch.bfloat16 for m in lin)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(m.weight.dtype == torch.float32 for m in norms)
    assert model.positional_embedding.dtype == model.visual.class_embedding.dtype == torch.float32
    assert model.token_embedding.weight.dtype == torch.float32

    ref_logits, ref_grads, ref_casts = step(precision, *towers(reference), size)
    img, txt = towers(model)
    assert all(p.dtype == torch.float32 for p in (*img.prompts, *txt.prompts))  # fp32 masters
    with mixed_dtype_ops() as found, precision.autocast(), torch.no_grad():
        img(images(size)), txt.encode(NAMES)
    assert found == []  # one dtype per matmul / norm / attention op
    logits, grads, casts = step(precision, img, txt, size)
    assert ref_casts > 0  # the counter sees autocast's copies of fp32 weights (the defect)
    assert casts == 0  # none of a weight now, in the forward nor in checkpoint recomputation
    # Autocast's cast of an fp32 weight is the one rounding to_compute_dtype does once, and
    # everything else (fp32 stream, norms, scoring) is the same: the logits agree to fp32
    # round-off (the same ops on the same values; 1e-5 relative leaves room for a kernel that
    # picks another blocking for a contiguous weight than for a fresh cast copy).
    torch.testing.assert_close(logits, ref_logits, rtol=1e-5, atol=1e-5)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-4, atol=1e-6)
    return logits, ref_logits


def test_openai_tower_in_compute_dtype(clip_files):
    size = load_clip(clip_files["teacher"]).visual.input_resolution
    check_tower(lambda: load_clip(clip_files["teacher"]), size)


def test_open_clip_tower_in_compute_dtype(tmp_path):
    pytest.importorskip("open_clip")
    from promptkd.demo.tiny import write_tiny_open_clip
    name = write_tiny_open_clip(str(tmp_path), "tiny-oc-teacher", seed=3)  # LayerScale, plain LayerNorm
    model = load_backbone(name)[0]
    check_tower(lambda: load_backbone(name)[0], model.visual.image_size[0])


def test_text_stream_stays_fp32_under_autocast(clip_files):
    """The text tower's stream between blocks is fp32 under autocast (low-precision matrices,
    fp32 sums), as with fp32 weights, though its projection is bf16 now; outside autocast it
    follows the weights (PREC fp16's pure-fp16 tower). (The image tower's stream is what its
    patch embedding gives under autocast, the compute dtype, with or without this change.)"""
    model = load_clip(clip_files["teacher"])
    Precision.resolve("bf16", CPU).cast_frozen(model)
    _, txt = towers(model)
    seen = []
    hook = model.transformer.resblocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].dtype))
    with Precision.resolve("bf16", CPU).autocast(), torch.no_grad():
        assert txt.dtype == torch.float32
        txt.encode(NAMES)
    hook.remove()
    assert model.text_projection.dtype == txt.dtype == torch.bfloat16 and seen == [torch.float32]


def test_fp16_and_fp32_modes_unchanged(clip_files):
    """PREC fp16 still halves the towers (the published mode), fp32 leaves them alone."""
    half, full = load_clip(clip_files["teacher"]), load_clip(clip_files["teacher"])
    Precision.resolve("fp16", CPU).cast_frozen(half)
    Precision.resolve("fp32", CPU).cast_frozen(full)
    assert half.visual.conv1.weight.dtype == torch.float16 and full.visual.conv1.weight.dtype == torch.float32
    assert Precision.resolve("amp", CPU).frozen_dtype == torch.bfloat16  # amp runs as bf16 on a CPU


def test_trainers_hold_their_frozen_towers_in_the_compute_dtype(data_root, clip_files, teacher_run, tmp_path):
    """PREC bf16 through the trainers: the PromptKD student's tower and the PromptSRC teacher's
    CLIP are bf16 (matrices) while training, the learnable parts fp32; the teacher's export still
    encodes its class vectors with the fp32 weights (re-read, then cast down again)."""
    from tests.trainer_kit import make_trainer, student_args, teacher_args
    s = make_trainer(student_args(data_root, clip_files, str(tmp_path / "s"), teacher_run["export"],
                                  "TRAINER.PROMPTKD.PREC", "bf16", epochs=1))
    s.train()
    assert s.model.image_encoder.visual.conv1.weight.dtype == torch.bfloat16
    assert all(p.dtype == torch.float32 for p in s.model.parameters() if p.requires_grad)
    t = make_trainer(teacher_args(data_root, clip_files, str(tmp_path / "t"), "TRAINER.PROMPTSRC.PREC", "bf16",
                                  epochs=1))
    t.train()
    assert t.model.clip.visual.conv1.weight.dtype == torch.bfloat16  # cast down again after the export
    assert t.model.clip.ln_final.weight.dtype == torch.float32
    with t.fp32_backbone():
        assert t.model.clip.visual.conv1.weight.dtype == torch.float32
    assert t.model.clip.visual.conv1.weight.dtype == torch.bfloat16
