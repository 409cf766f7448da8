"""Contrastive (CLIP) pretraining of tiny CLIPs from scratch on the toy world, on a CPU.

    path = ensure_pretrained(folder, "teacher")      # trains once, then reuses the file

builds a stock `clip.model.CLIP` (the real BPE vocabulary, context 77, patch 8 on 32 px),
trains it on image / caption pairs drawn from `promptkd.demo.toyworld` (captions of all 36 classes
in the caption forms of its `Recipe`, "a photo of a red circle.") and writes it as an
OpenAI-format state dict (fp16, like the released files), so it loads through
`promptkd.backbones.load_clip` exactly like real weights.

Training: a batch of images with random labels, one caption each; the distinct captions of
the batch are encoded once; the loss is CLIP's symmetric contrastive loss in which every
caption that describes an image is its positive (image -> captions and caption -> images,
soft targets); AdamW without weight decay,
linear warm-up then cosine decay, learnable temperature clamped at 100. In probes of this
world, image -> caption alone, or weight decay 0.1, stalled with one attribute learnt. Text is encoded on the shortest prefix that holds every caption's end token:
with CLIP's causal mask the end-token feature does not depend on later positions, so this is
exactly `encode_text` at a fraction of the cost (tested).

Deterministic: fixed seeds, a fixed number of CPU threads while training, and
`torch.use_deterministic_algorithms`. A file is reused only when the sidecar JSON next to it
holds the same key, a hash of the world (version, classes, image size), the model sizes,
the recipe (caption forms included) and the torch version; otherwise it is trained again.
Both files are written atomically.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from . import toyworld
from ..backbones import OPENAI_MEAN, OPENAI_STD, clip  # CLIP's mean / std: the demo configs use them too
from ..errors import CheckpointError, ConfigError, UserError
from ..io import atomic_save, atomic_write_json, load_json, load_torch
from .tiny import TinySpec

logger = logging.getLogger(__name__)
PRETRAIN_STREAM = 7  # numpy seed prefix of pretraining images (the dataset on disk uses another)


@dataclass(frozen=True)
class Recipe:
    steps: int
    batch_size: int = 128
    lr: float = 5e-4
    warmup_steps: int = 30
    seed: int = 0
    threads: int = 2
    #: the caption forms this model sees ("{}" = "red circle"); a model pretrained on fewer
    #: forms than zero-shot prompts use reads those prompts less well (see PRESETS)
    captions: tuple[str, ...] = toyworld.CAPTION_TEMPLATES


@dataclass(frozen=True)
class Model:
    """A demo backbone: its sizes and how it is pretrained."""
    spec: TinySpec
    recipe: Recipe


TEACHER_SPEC = TinySpec(embed_dim=64, vision_layers=4, vision_width=64, text_width=64, text_layers=2)
STUDENT_SPEC = TinySpec(embed_dim=32, vision_layers=2, vision_width=64, text_width=64, text_layers=2)

#: The student's one caption form. Zero-shot prompts ("a photo of a red circle.") are not
#: among its captions, so its zero-shot accuracy is far below what its image features allow.
STUDENT_CAPTIONS = ("a {}.",)

# full (the demo), both 800 steps of 128 images:
# * teacher: image tower 4 layers of width 64, embedding 64, text tower 2 layers; captions in
#   all four forms, so it reads "a photo of a {}." as well as its features allow;
# * student: image tower 2 layers, embedding 32 (half the teacher's depth and width of
#   output), the same text tower; captions in one form only ("a red circle."). Its image
#   features learn colour and shape (pretraining on one form is, if anything, easier), but its
#   text tower has never seen "a photo of a ...": zero-shot with that prompt it is little better
#   than colour alone. PromptKD never runs the student's text tower.
# fast (the test suite): the same sizes with the teacher's image tower at the student's depth,
# 150 and 100 steps (both have learnt colour, not yet shape).
# One thread each: on a busy 2-core machine a second thread costs more than it gains.
PRESETS: dict[str, dict[str, Model]] = {
    "full": {"teacher": Model(TEACHER_SPEC, Recipe(steps=800, lr=1e-3, seed=1, threads=1)),
             "student": Model(STUDENT_SPEC, Recipe(steps=800, lr=1e-3, seed=2, threads=1, captions=STUDENT_CAPTIONS))},
    "fast": {"teacher": Model(dataclasses.replace(TEACHER_SPEC, vision_layers=2), Recipe(steps=150, lr=1e-3, seed=1, threads=1)),
             "student": Model(STUDENT_SPEC, Recipe(steps=100, lr=1e-3, seed=2, threads=1, captions=STUDENT_CAPTIONS))},
}


def build_clip(spec: TinySpec, seed: int) -> clip.model.CLIP:
    """A freshly initialised stock CLIP of these sizes (fp32)."""
    torch.manual_seed(seed)
    return clip.model.CLIP(
        embed_dim=spec.embed_dim, image_resolution=spec.image_resolution, vision_layers=spec.vision_layers,
        vision_width=spec.vision_width, vision_patch_size=spec.vision_patch_size,
        context_length=spec.context_length, vocab_size=spec.vocab_size,
        transformer_width=spec.text_width, transformer_heads=max(1, spec.text_width // 64),
        transformer_layers=spec.text_layers)


def encode_text_prefix(model: clip.model.CLIP, tokens: torch.Tensor,
                       token_embedding: torch.Tensor | None = None) -> torch.Tensor:
    """`model.encode_text(tokens)`, computed on the first L positions only (L = last end
    token + 1). Equal to the full computation because the text transformer is causal.
    `token_embedding` (rows of the model's table, in increasing token order) replaces the
    model's table; `tokens` then index its rows (`restricted_vocabulary`)."""
    length = int(tokens.argmax(dim=-1).max()) + 1
    weight = model.token_embedding.weight if token_embedding is None else token_embedding
    x = F.embedding(tokens[:, :length], weight) + model.positional_embedding[:length]
    mask = model.build_attention_mask()[:length, :length]
    x = x.permute(1, 0, 2)
    for block in model.transformer.resblocks:
        y = block.ln_1(x)
        x = x + block.attn(y, y, y, need_weights=False, attn_mask=mask)[0]
        x = x + block.mlp(block.ln_2(x))
    x = model.ln_final(x.permute(1, 0, 2))
    return x[torch.arange(x.shape[0]), tokens.argmax(dim=-1)] @ model.text_projection


def contrastive_loss(image_features, text_features, positive, logit_scale):
    """Symmetric CLIP loss; `positive[i, j]` says caption j describes image i (several may):
    image -> captions and caption -> images, each with uniform soft targets on its positives."""
    image_features = F.normalize(image_features, dim=-1)
    text_features = F.normalize(text_features, dim=-1)
    logits = logit_scale.exp() * image_features @ text_features.t()
    positive = positive.float()
    to_text = -(positive / positive.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    to_image = -(positive / positive.sum(0, keepdim=True) * logits.log_softmax(0)).sum(0).mean()
    return (to_text + to_image) / 2


@contextmanager
def _deterministic(threads: int):
    threads_before = torch.get_num_threads()
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    torch.set_flush_denormal(True)  # denormal numbers slow CPU maths down a lot
    try:
        yield
    finally:
        torch.set_flush_denormal(False)  # torch's default
        torch.set_num_threads(threads_before)
        torch.use_deterministic_algorithms(deterministic_before)


def caption_table(captions: tuple[str, ...] = toyworld.CAPTION_TEMPLATES) -> tuple[torch.Tensor, torch.Tensor]:
    """Every pretraining caption, class-major (row = label x len(captions) + form): tokens
    [K, 77] and the label each describes."""
    texts = [form.format(name) for name in toyworld.CLASSNAMES for form in captions]
    labels = torch.arange(toyworld.NUM_CLASSES).repeat_interleave(len(captions))
    return clip.tokenize(texts), labels


def restricted_vocabulary(tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(the sorted token ids that `tokens` use, `tokens` as indices into them). The end token
    (the largest id) stays the largest, so `argmax` still finds it."""
    vocabulary = torch.unique(tokens)
    return vocabulary, torch.searchsorted(vocabulary, tokens)


def pretrain(spec: TinySpec, recipe: Recipe, log_every: int = 50, name: str = "pretrain") -> tuple[dict, dict]:
    """Train a tiny CLIP from scratch; returns (OpenAI-format fp16 state dict, stats). `name`
    prefixes the progress lines (two models may be pretrained side by side)."""
    if recipe.steps < 1 or recipe.batch_size < 2:
        raise ConfigError(f"Pretraining needs steps >= 1 and batch_size >= 2, got {recipe}.")
    if spec.image_resolution != toyworld.IMAGE_SIZE:
        raise ConfigError(f"The toy world's images are {toyworld.IMAGE_SIZE} px; the model expects "
                          f"{spec.image_resolution} px.")
    bad = [form for form in recipe.captions if not isinstance(form, str) or form.count("{}") != 1]
    if not recipe.captions or bad:
        raise ConfigError(f"Recipe.captions needs at least one caption form, each with one '{{}}' for the "
                          f"class name (\"a photo of a {{}}.\"); got {recipe.captions!r}.")
    with _deterministic(recipe.threads):
        model = build_clip(spec, recipe.seed).float().train()
        rng = np.random.default_rng([PRETRAIN_STREAM, recipe.seed])
        tokens, caption_labels = caption_table(recipe.captions)
        n_forms = len(recipe.captions)
        # Only the rows of the token embedding that the captions use get a gradient; the
        # others' gradient is zero, and AdamW without weight decay leaves a parameter with an
        # all-zero gradient history exactly where it is. So train just those rows (a gather of
        # the table; the captions re-indexed into it) and put them back at the end: the same
        # numbers, without a dense gradient and AdamW update of all 49,408 rows every step.
        vocabulary, tokens = restricted_vocabulary(tokens)
        table = model.token_embedding.weight
        used_rows = torch.nn.Parameter(table.detach()[vocabulary].clone())
        parameters = [used_rows if p is table else p for p in model.parameters()]
        optimiser = torch.optim.AdamW(parameters, lr=recipe.lr, betas=(0.9, 0.98), eps=1e-6,
                                      weight_decay=0.0)

        def factor(step):  # linear warm-up, then cosine to 0
            if step < recipe.warmup_steps:
                return (step + 1) / recipe.warmup_steps
            progress = (step - recipe.warmup_steps) / max(1, recipe.steps - recipe.warmup_steps)
            return 0.5 * (1 + math.cos(math.pi * progress))

        schedule = torch.optim.lr_scheduler.LambdaLR(optimiser, factor)
        start, losses = time.perf_counter(), []
        for step in range(recipe.steps):
            labels = rng.integers(0, toyworld.NUM_CLASSES, recipe.batch_size)
            rows = labels * n_forms + rng.integers(0, n_forms, recipe.batch_size)
            images = toyworld.to_tensor(toyworld.draw(rng, labels), OPENAI_MEAN, OPENAI_STD)
            rows = torch.from_numpy(np.unique(rows))
            image_features = model.encode_image(images)
            text_features = encode_text_prefix(model, tokens[rows], used_rows)
            positive = torch.from_numpy(labels)[:, None] == caption_labels[rows][None, :]  # same class
            loss = contrastive_loss(image_features, text_features, positive, model.logit_scale)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, math.log(100))
            losses.append(loss.item())
            if log_every and ((step + 1) % log_every == 0 or step + 1 == recipe.steps):
                logger.info("%s: step %d/%d loss %.3f (%.0f s)", name, step + 1, recipe.steps,
                            np.mean(losses[-log_every:]), time.perf_counter() - start)
        with torch.no_grad():
            table[vocabulary] = used_rows
        stats = {"final_loss": float(np.mean(losses[-20:])), "seconds": round(time.perf_counter() - start, 1)}
    clip.model.convert_weights(model)  # fp16, like OpenAI's released files
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return state, stats


@torch.no_grad()
def zero_shot_accuracy(model, n_per_class: int = 20, seed: int = 99,
                       prompt: str = toyworld.CAPTION_TEMPLATES[0]) -> tuple[float, float, float]:
    """(base, novel, HM) zero-shot accuracy of `model` with `prompt` ("a photo of a {}.") on
    fresh images, each half against its own classes as in base-to-novel evaluation. For logs
    and probes."""
    model = model.float().eval()
    rng = np.random.default_rng([PRETRAIN_STREAM + 1, seed])
    half = toyworld.NUM_CLASSES // 2
    text = F.normalize(model.encode_text(clip.tokenize([prompt.format(c) for c in toyworld.CLASSNAMES])), dim=-1)
    accs = []
    for classes in (range(half), range(half, toyworld.NUM_CLASSES)):
        labels = np.repeat(np.array(list(classes)), n_per_class)
        images = toyworld.to_tensor(toyworld.draw(rng, labels), OPENAI_MEAN, OPENAI_STD)
        feats = F.normalize(model.encode_image(images), dim=-1)
        pred = (feats @ text[list(classes)].t()).argmax(1).numpy() + classes[0]
        accs.append(100.0 * float((pred == labels).mean()))
    base, novel = accs
    return base, novel, 0.0 if base + novel == 0 else 2 * base * novel / (base + novel)


def cache_key(model: Model) -> str:
    world = {"version": toyworld.VERSION, "classes": toyworld.CLASSNAMES, "size": toyworld.IMAGE_SIZE}
    text = json.dumps({"world": world, "spec": dataclasses.asdict(model.spec),
                       "recipe": dataclasses.asdict(model.recipe), "torch": torch.__version__},
                      sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def shipped_key(model: Model) -> str:
    """`cache_key` without the torch version: shipped weights are files, valid under any torch."""
    world = {"version": toyworld.VERSION, "classes": toyworld.CLASSNAMES, "size": toyworld.IMAGE_SIZE}
    text = json.dumps({"world": world, "spec": dataclasses.asdict(model.spec),
                       "recipe": dataclasses.asdict(model.recipe)}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


# ----------------------------------------------------------------------------------------
# Shipped weights: the full preset's two CLIPs in a small form, in the repository
# ----------------------------------------------------------------------------------------
#: where `promptkd demo-weights ship` writes them
SHIPPED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_weights")
SHIPPED_FORMAT = "promptkd-demo-weights/1"
SHIPPED_PRESETS = ("full",)


def kept_vocabulary(model: Model) -> torch.Tensor:
    """The token rows a small form keeps: every token of the world's caption forms (the
    zero-shot prompt and the prompt initialisations of the demo configs among them) and of the
    model's own captions. The rest of the table is the model's initialisation."""
    tokens = torch.cat([caption_table(toyworld.CAPTION_TEMPLATES)[0], caption_table(model.recipe.captions)[0]])
    return torch.unique(tokens)


def pack(state: dict, model: Model) -> dict:
    """The small form of a pretrained state dict: every tensor but the token embedding (fp16, as
    written), and the embedding's rows of `kept_vocabulary`. Pretraining changes no other row
    (only the rows its captions use have a gradient), so `unpack` rebuilds the table from the
    model's seeded initialisation."""
    vocabulary = kept_vocabulary(model)
    return {"format": SHIPPED_FORMAT, "key": shipped_key(model),
            "vocabulary": vocabulary, "token_rows": state["token_embedding.weight"][vocabulary].clone(),
            "state": {k: v for k, v in state.items() if k != "token_embedding.weight"}}


def unpack(packed: dict, model: Model) -> dict:
    """The OpenAI-format state dict of a small form (`pack`): the seeded initial token
    embedding (as `pretrain` starts from it), with the kept rows put back."""
    if packed.get("format") != SHIPPED_FORMAT or packed.get("key") != shipped_key(model):
        raise ConfigError(f"These shipped weights are not of this model and recipe (format {packed.get('format')!r}, "
                          f"key {packed.get('key')!r}, expected {shipped_key(model)!r}).")
    with _deterministic(model.recipe.threads):
        table = build_clip(model.spec, model.recipe.seed).token_embedding.weight.detach().clone()
    table[packed["vocabulary"]] = packed["token_rows"]
    state = dict(packed["state"])
    state["token_embedding.weight"] = table
    return {k: state[k] for k in _state_order(model)}


def _state_order(model: Model) -> list[str]:
    return list(clip.model.CLIP(
        embed_dim=model.spec.embed_dim, image_resolution=model.spec.image_resolution,
        vision_layers=model.spec.vision_layers, vision_width=model.spec.vision_width,
        vision_patch_size=model.spec.vision_patch_size, context_length=model.spec.context_length,
        vocab_size=1, transformer_width=model.spec.text_width,
        transformer_heads=max(1, model.spec.text_width // 64),
        transformer_layers=model.spec.text_layers).state_dict())


def state_digest(state: dict) -> str:
    """sha256 over the names, dtypes, shapes and bytes of a state dict's tensors."""
    digest = hashlib.sha256()
    for name, tensor in state.items():
        tensor = tensor.detach().contiguous().cpu()
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def shipped_paths(role: str, folder: str | None = None) -> tuple[str, str]:
    """(small form, sidecar) of `role` in `folder` (default `SHIPPED_DIR`)."""
    folder = SHIPPED_DIR if folder is None else folder
    return os.path.join(folder, f"{role}.pt"), os.path.join(folder, f"{role}.json")


def ship(folder: str, preset: str = "full", out_dir: str | None = None) -> list[str]:
    """Write the small forms of `folder`'s pretrained files of `preset` (which must hold that
    preset's current recipe) to `out_dir`, each with its sidecar. Returns the paths written."""
    written = []
    for role, model in PRESETS[preset].items():
        path, sidecar = os.path.join(folder, f"{role}.pt"), os.path.join(folder, f"{role}.json")
        fix = f"Pretrain it again: promptkd demo-weights pretrain {folder} --preset {preset} --from-scratch."
        info = load_json(sidecar, what="pretraining sidecar", fix=fix, error=CheckpointError) \
            if os.path.isfile(sidecar) else {}
        if not os.path.isfile(path) or info.get("key") != cache_key(model) or info.get("shipped"):
            raise ConfigError(f"{path} is not the {preset} {role} pretrained from scratch with this recipe and "
                              f"torch: run promptkd demo-weights pretrain {folder} --preset {preset} --from-scratch first.")
        state = load_torch(path, what="pretrained CLIP state dict", fix=fix)
        info = {**info, "key": shipped_key(model), "digest": state_digest(state)}
        ship_path, ship_sidecar = shipped_paths(role, out_dir)
        atomic_save(pack(state, model), ship_path)
        _write_json_atomic(info, ship_sidecar)
        written += [ship_path, ship_sidecar]
    return written


def _write_json_atomic(obj, path: str) -> None:
    atomic_write_json(path, obj, indent=2)


#: what to do when the shipped small forms cannot be read
SHIPPED_FIX = ("Restore them from the repository (`git checkout -- promptkd/demo/demo_weights`), or write them again "
               "with `promptkd demo-weights ship FOLDER` from a from-scratch pretraining.")


def ensure_pretrained(folder: str, role: str, preset: str = "full", from_scratch: bool = False) -> tuple[str, dict]:
    """`folder/<role>.pt` pretrained with the preset's model and recipe: reused if a file with
    the same key is there, else unpacked from the weights shipped in `SHIPPED_DIR` (the full
    preset; unless `from_scratch`), else trained. Returns (path, info from the sidecar JSON)."""
    if preset not in PRESETS:
        raise ConfigError(f"Unknown demo preset {preset!r}; use one of {sorted(PRESETS)}.")
    if role not in PRESETS[preset]:
        raise ConfigError(f"Unknown demo backbone {role!r}; use one of {sorted(PRESETS[preset])}.")
    model = PRESETS[preset][role]
    folder = os.path.abspath(os.path.expanduser(folder))
    os.makedirs(folder, exist_ok=True)
    path, sidecar = os.path.join(folder, f"{role}.pt"), os.path.join(folder, f"{role}.json")
    key = cache_key(model)
    if os.path.isfile(path) and os.path.isfile(sidecar):
        try:  # a damaged sidecar is replaced with the file
            info = load_json(sidecar, what="pretraining sidecar")
        except UserError:
            info = {}
        if info.get("key") == key and not (from_scratch and info.get("shipped")):
            logger.info("%s: reusing %s (key %s)", role, path, key)
            return path, info
        logger.info("%s: %s was pretrained with other settings%s; replacing it", role, path,
                    " or shipped" if from_scratch else "")
    shipped = None if from_scratch else _shipped(role, model)
    if shipped is not None:
        state, info = shipped
        info = {**info, "key": key, "shipped": True}
        if os.path.exists(sidecar):
            os.remove(sidecar)
        atomic_save(state, path)
        _write_json_atomic(info, sidecar)
        logger.info("%s: wrote %s from the shipped weights (%s; promptkd demo-weights pretrain "
                    "--from-scratch pretrains instead)", role, path, shipped_paths(role)[0])
        return path, info
    logger.info("%s: pretraining %s", role, model)
    cpu_start = time.process_time()
    state, stats = pretrain(model.spec, model.recipe, name=role)
    stats["cpu_seconds"] = round(time.process_time() - cpu_start, 1)
    stats["made_on"] = made_on()
    built = clip.model.build_model(state)
    probes = {}  # zero-shot with the standard prompt, and with each caption form it was trained on
    for prompt in dict.fromkeys((toyworld.CAPTION_TEMPLATES[0],) + tuple(model.recipe.captions)):
        base, novel, hm = zero_shot_accuracy(built, prompt=prompt)
        probes[prompt] = {"base": round(base, 2), "novel": round(novel, 2), "hm": round(hm, 2)}
    info = {"key": key, "role": role, "preset": preset, "spec": dataclasses.asdict(model.spec),
            "recipe": dataclasses.asdict(model.recipe), "parameters": sum(v.numel() for v in state.values()),
            "zero_shot_probe": probes[toyworld.CAPTION_TEMPLATES[0]], "zero_shot_probe_by_prompt": probes,
            **stats}
    info = json.loads(json.dumps(info))  # as a later call reads it back (tuples become lists)
    if os.path.exists(sidecar):
        os.remove(sidecar)  # the old key must not survive next to a new file
    atomic_save(state, path)
    _write_json_atomic(info, sidecar)
    logger.info("%s: wrote %s (%.0f s; zero-shot probe HM %s)", role, path, stats["seconds"],
                ", ".join(f"{v['hm']:.1f} with {k!r}" for k, v in probes.items()))
    return path, info


def made_on() -> dict:
    """What pretraining's numbers depend on besides the recipe: torch and the CPU kernels."""
    import platform

    processor = platform.processor()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            processor = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), processor)
    except OSError:
        pass
    return {"torch": torch.__version__, "cpu": processor, "cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "kernel_env": {k: os.environ[k] for k in ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR")
                           if k in os.environ}}


def _shipped(role: str, model: Model) -> tuple[dict, dict] | None:
    """(state dict, sidecar info) of the shipped weights of this model, or None if there are none
    for it (another recipe, or not shipped)."""
    path, sidecar = shipped_paths(role)
    if not (os.path.isfile(path) and os.path.isfile(sidecar)):
        return None
    info = load_json(sidecar, what="shipped demo weights sidecar", fix=SHIPPED_FIX, error=CheckpointError)
    if info.get("key") != shipped_key(model):
        return None
    packed = load_torch(path, what="shipped demo weights file", fix=SHIPPED_FIX)
    if not isinstance(packed, dict):
        raise CheckpointError(f"{path} is not a shipped demo weights file. {SHIPPED_FIX}")
    return unpack(packed, model), info

