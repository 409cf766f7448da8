"""Build a stock CLIP backbone from its name: the one factory for every CLIP family.

    load_backbone(name, weights_dir)     -> (CLIP model, Preprocess)        stage 1, baselines
    load_image_tower(name, weights_dir)  -> (image tower, logit scale, Preprocess)   stage 2
    backbone_preprocess(name)            -> Preprocess (input_options: the INPUT.* that match)

`name` is an OpenAI name (`ViT-B/16`) or checkpoint path, loaded through the `clip` package's
own `clip.load` (a user's `ViT-B-16.pt` JIT archive and a plain state-dict file take the same
path), or `open_clip:<architecture>/<pretrained tag or file>` for OpenCLIP models
(`promptkd/openclip_backbones.py`: local files and the Hugging Face cache only). `Preprocess`
is the model's own input size, mean / std and interpolation. Models come back in fp32 on the
CPU in eval mode; callers move and cast them (`to_half`). Also: weight fingerprints, the
backbone reference an export records, and the tokenizer of a model.
"""
from __future__ import annotations

import functools
import hashlib
import os
import urllib.error
import warnings
from dataclasses import dataclass

import torch

from . import openclip_backbones
from .errors import CheckpointError, ConfigError, MissingFileError
from .io import load_torch

from .openai_clip import load as _load_openai_clip

# The installed OpenAI `clip` package, even where a host codebase's clip/ folder shadows the name.
clip = _load_openai_clip()
_clip_impl = clip.clip  # the module holding _MODELS, load, build_model

DEFAULT_WEIGHTS_DIR = os.path.expanduser("~/.cache/clip")
#: OpenAI CLIP's input normalisation (the values of every CLIP prompt-learning config)
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


#: How test images can be fitted to a model's input size (open_clip's `resize_mode` values we run).
RESIZE_MODES = ("shortest", "squash")


@dataclass(frozen=True)
class Preprocess:
    """How a model wants its images: (height, width), per-channel mean / std, interpolation,
    and how a test image is fitted to the size (open_clip's `resize_mode`): "shortest" (resize
    the shorter side, centre-crop; OpenAI CLIP) or "squash" (resize the whole image to the
    size, e.g. DFN5B's ViT-H/14)."""

    size: tuple
    mean: tuple
    std: tuple
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    @classmethod
    def of(cls, size, mean=OPENAI_MEAN, std=OPENAI_STD, interpolation="bicubic",
           resize_mode="shortest") -> "Preprocess":
        size = (size, size) if isinstance(size, int) else tuple(int(s) for s in size)
        return cls(size, tuple(float(m) for m in mean), tuple(float(s) for s in std), str(interpolation),
                   str(resize_mode))


def openai_preprocess(visual: torch.nn.Module) -> Preprocess:
    """OpenAI CLIP: square input of the tower's resolution, CLIP mean / std, bicubic."""
    return Preprocess.of(visual.input_resolution)


def load_backbone(name: str, weights_dir: str | None = None) -> tuple[torch.nn.Module, Preprocess]:
    """The whole CLIP model `name` (OpenAI name / path, or `open_clip:...`) and its preprocessing."""
    if openclip_backbones.is_open_clip_name(name):
        model, pp = openclip_backbones.load_model(name, weights_dir)
        return model, Preprocess.of(pp["size"], pp["mean"], pp["std"], pp["interpolation"], pp["resize_mode"])
    model = load_clip(name, weights_dir)
    return model, openai_preprocess(model.visual)


def load_image_tower(name: str, weights_dir: str | None = None) -> tuple[torch.nn.Module, torch.Tensor, Preprocess]:
    """Only the image tower of `name` (no text transformer is built), its logit scale and
    preprocessing. Stage 2 runs the teacher's and the student's image towers only."""
    if openclip_backbones.is_open_clip_name(name):
        visual, scale, pp = openclip_backbones.load_image_tower(name, weights_dir)
        return visual, scale, Preprocess.of(pp["size"], pp["mean"], pp["std"], pp["interpolation"], pp["resize_mode"])
    visual, scale = visual_from_state_dict(read_clip_state(name, weights_dir))
    return visual, scale, openai_preprocess(visual)


def backbone_preprocess(name: str, weights_dir: str | None = None) -> Preprocess:
    """The preprocessing of backbone `name` without building its text tower (open_clip: from its
    configs; OpenAI: from the image tower's resolution)."""
    if openclip_backbones.is_open_clip_name(name):
        pp = openclip_backbones.resolve(name, weights_dir).preprocess
        return Preprocess.of(pp["size"], pp["mean"], pp["std"], pp["interpolation"], pp["resize_mode"])
    return load_image_tower(name, weights_dir)[2]


def input_options(pp: Preprocess) -> list[str]:
    """The INPUT.* config options (KEY VALUE ..., no spaces inside a value) that match `pp`."""
    def seq(values, brackets="[]"):
        return brackets[0] + ",".join(repr(v) for v in values) + brackets[1]
    return ["INPUT.SIZE", seq(pp.size, "()"), "INPUT.PIXEL_MEAN", seq(pp.mean), "INPUT.PIXEL_STD", seq(pp.std),
            "INPUT.INTERPOLATION", pp.interpolation, "INPUT.RESIZE_MODE", pp.resize_mode]


def backbone_reference(name: str) -> dict:
    """What an export records to rebuild this backbone: its name, a file path made absolute."""
    if openclip_backbones.is_open_clip_name(name):
        return {"kind": "open_clip", "name": openclip_backbones.normalise_name(name)}
    if name in clip.available_models():
        return {"kind": "clip", "name": name}
    return {"kind": "clip", "name": os.path.abspath(os.path.expanduser(name))}


def is_open_clip(module: torch.nn.Module) -> bool:
    return type(module).__module__.startswith("open_clip")


def to_half(module: torch.nn.Module) -> torch.nn.Module:
    """Frozen backbone weights in fp16 (the published pure-fp16 mode), as each library does it,
    with every op's operands in one dtype (`mixed_dtype_ops` finds the exceptions).

    OpenAI CLIP: `clip.model.convert_weights` (linears, convs, attention, projections in fp16;
    its `LayerNorm` keeps fp32 weights and computes in fp32 on an fp32 copy of its input).
    open_clip: `convert_weights_to_lp` does the same for the matrices, but towers built without a
    `cast_dtype` hold plain `LayerNorm`s, which would run fp16 input against fp32 weights (a
    mixed-dtype kernel some devices refuse). They become open_clip's `LayerNormFp32` (fp32
    weights, fp32 compute, output in the input's dtype): what `open_clip.create_model(...,
    precision="fp16")` builds and what OpenAI's `LayerNorm` does. LayerScale and timm trunks are
    halved whole."""
    if is_open_clip(module):
        from open_clip.model import convert_weights_to_lp  # noqa: PLC0415
        from open_clip.transformer import LayerNormFp32, LayerScale  # noqa: PLC0415
        convert_weights_to_lp(module, torch.float16)  # linears, convs, attention, projections
        for m in module.modules():  # which leaves LayerScale (it would promote blocks to fp32) and timm trunks
            if isinstance(m, LayerScale):
                m.gamma.data = m.gamma.data.half()
            elif type(m).__name__ == "TimmModel":
                m.half()
        for m in module.modules():  # fp32 LayerNorms compute in fp32 (the timm trunk's are fp16 now)
            if isinstance(m, torch.nn.LayerNorm) and not isinstance(m, LayerNormFp32) and (
                    m.weight is None or m.weight.dtype == torch.float32):
                m.__class__ = LayerNormFp32
    else:
        clip.model.convert_weights(module)
    return module


def to_compute_dtype(module: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Frozen backbone matrices in autocast's compute dtype (PREC amp / bf16), so autocast finds
    them already cast instead of copying every weight down at every call (and again when
    activation checkpointing recomputes a block).

    Only what autocast would cast is converted: linears, convolutions, attention projections and
    the `proj` / `text_projection` matrices (what `convert_weights` / `convert_weights_to_lp`
    convert). LayerNorms, LayerScale, embeddings (token, class, positions) stay fp32 and the
    encoders feed the towers fp32 under autocast (`encoders.stream_dtype`), as with fp32 weights:
    the text tower's residual stream stays fp32, the image tower's is what its patch embedding
    gives under autocast (as before), and the norms compute in fp32 (open_clip's plain LayerNorms
    become `LayerNormFp32`, as in `to_half`). Inside autocast this computes what the fp32 weights
    did: autocast's own cast of a weight is the same rounding, done once here (tests/test_frozen_dtype.py)."""
    if is_open_clip(module):
        from open_clip.model import convert_weights_to_lp  # noqa: PLC0415
        from open_clip.transformer import LayerNormFp32  # noqa: PLC0415
        convert_weights_to_lp(module, dtype)
        for m in module.modules():
            if isinstance(m, torch.nn.LayerNorm) and not isinstance(m, LayerNormFp32):
                m.__class__ = LayerNormFp32
        return module

    def convert(m):  # clip.model.convert_weights, in `dtype`
        tensors = []
        if isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Linear)):
            tensors += [m.weight, m.bias]
        if isinstance(m, torch.nn.MultiheadAttention):
            tensors += [getattr(m, a) for a in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight",
                                                "in_proj_bias", "bias_k", "bias_v")]
        tensors += [getattr(m, a, None) for a in ("text_projection", "proj")]
        for t in tensors:
            if isinstance(t, torch.Tensor):
                t.data = t.data.to(dtype)

    module.apply(convert)
    return module


#: aten ops whose kernels take all their floating-point operands in one dtype (on some devices
#: only): what `mixed_dtype_ops` watches. Elementwise ops promote types everywhere.
SAME_DTYPE_OPS = ("mm", "addmm", "bmm", "baddbmm", "matmul", "linear", "convolution", "cudnn_convolution",
                  "native_layer_norm", "layer_norm", "native_batch_norm", "_native_batch_norm_legit",
                  "_native_batch_norm_legit_no_training", "native_group_norm",
                  "_scaled_dot_product_flash_attention", "_scaled_dot_product_efficient_attention",
                  "_scaled_dot_product_cudnn_attention", "_scaled_dot_product_flash_attention_for_cpu",
                  "scaled_dot_product_attention", "_native_multi_head_attention")


class mixed_dtype_ops:  # noqa: N801  (a context manager used like a function)
    """Records the ops of `SAME_DTYPE_OPS` that get floating-point operands of several dtypes
    while it is active: `with mixed_dtype_ops() as found: model(x)`; `found` is a list of
    (op name, dtypes). A device-agnostic check of what a GPU kernel would refuse, run on the CPU
    (whose kernels accept some mixtures, e.g. fp16 input with fp32 LayerNorm weights)."""

    def __enter__(self) -> list:
        from torch.utils._python_dispatch import TorchDispatchMode  # noqa: PLC0415

        found = self.found = []

        class _Watch(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                name = func.overloadpacket.__name__
                if name in SAME_DTYPE_OPS:
                    flat = [a for a in (*args, *(kwargs or {}).values()) for a in (a if isinstance(a, (list, tuple))
                                                                                    else (a,))]
                    dtypes = {a.dtype for a in flat if isinstance(a, torch.Tensor) and a.is_floating_point()}
                    if len(dtypes) > 1:
                        found.append((name, tuple(sorted(str(d) for d in dtypes))))
                return func(*args, **(kwargs or {}))

        self.mode = _Watch()
        self.mode.__enter__()
        return found

    def __exit__(self, *exc):
        return self.mode.__exit__(*exc)


def text_tower(model: torch.nn.Module) -> torch.nn.Module:
    """The module holding the text transformer: the model (OpenAI, open_clip CLIP) or `model.text`."""
    text = getattr(model, "text", None)
    return text if text is not None and hasattr(text, "token_embedding") else model


def tokenizer(model: torch.nn.Module):
    """`texts -> LongTensor [N, context]` for this model: CLIP's BPE with its context length.

    The open_clip architectures whose text we encode use the same BPE tokenizer as OpenAI's
    (`openclip_backbones.text_support`), so only the context length differs."""
    context = text_tower(model).positional_embedding.shape[0]
    return clip.tokenize if context == 77 else functools.partial(clip.tokenize, context_length=context)


def clip_file_name(name: str) -> str:
    """The file name OpenAI publishes a named model under (ViT-B/16 -> ViT-B-16.pt)."""
    return os.path.basename(_clip_impl._MODELS[name])


def resolve_weights_dir(weights_dir: str | None) -> str:
    return os.path.abspath(os.path.expanduser(weights_dir)) if weights_dir else DEFAULT_WEIGHTS_DIR


def load_clip(name: str, weights_dir: str | None = None, allow_download: bool = True) -> torch.nn.Module:
    """Return the stock CLIP model `name` (an OpenAI name or a checkpoint path), fp32, CPU, eval.

    A named model is looked up as `<weights_dir>/<file name>`; if it is missing, the clip
    package may download it (when `allow_download`). Any failure names the file and the URL.
    """
    if name in clip.available_models():
        root = resolve_weights_dir(weights_dir)
        path = os.path.join(root, clip_file_name(name))
        if not os.path.isfile(path):
            hint = (
                f"CLIP weights for '{name}' not found at {path}. Download {_clip_impl._MODELS[name]} "
                f"and put it there (or set MODEL.WEIGHTS_DIR to the folder that holds "
                f"{clip_file_name(name)}, or give MODEL.BACKBONE.NAME as a path to the file)."
            )
            if not allow_download:
                raise MissingFileError(hint)
            try:
                model, _ = clip.load(name, device="cpu", jit=False, download_root=root)
            except (urllib.error.URLError, OSError, RuntimeError) as err:
                raise MissingFileError(f"{hint} The download failed: {err}") from None
            return model.float().eval()
    elif os.path.isfile(os.path.expanduser(name)):
        path = os.path.expanduser(name)
    else:
        raise ConfigError(
            f"Unknown CLIP backbone '{name}': use one of {clip.available_models()} "
            "or a path to a CLIP checkpoint file (JIT archive or state dict)."
        )
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            model, _ = clip.load(path, device="cpu", jit=False)
    except Exception as err:  # a truncated file or something that is not CLIP
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise CheckpointError(f"Could not load a CLIP model from {path}: {reason}. {clip_file_fix(name)}") from err
    return model.float().eval()


def clip_from_state_dict(state_dict: dict) -> torch.nn.Module:
    """Build a stock CLIP from a state dict (sizes inferred by the clip package), fp32, eval."""
    return _clip_impl.build_model({k: v.clone() for k, v in state_dict.items()}).float().eval()


def read_clip_state(name: str, weights_dir: str | None = None) -> dict:
    """The state dict of a CLIP file (named or a path), read as `clip.load` reads it."""
    path = name
    if name in clip.available_models():
        path = os.path.join(resolve_weights_dir(weights_dir), clip_file_name(name))
        if not os.path.isfile(path):
            load_clip(name, weights_dir, allow_download=True)  # downloads, or explains
    elif not os.path.isfile(os.path.expanduser(name)):
        load_clip(name, weights_dir)  # raises the unknown-backbone error
    path = os.path.expanduser(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit.load's deprecation notice
            return torch.jit.load(path, map_location="cpu").state_dict()
    except RuntimeError:
        pass  # not a JIT archive: a plain state dict, or a damaged file
    state = load_torch(path, what="CLIP weights file", fix=clip_file_fix(name))
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} is not a CLIP weights file (a JIT archive or a state dict of tensors). "
                              + clip_file_fix(name))
    return state


def clip_file_fix(name: str) -> str:
    """How a damaged CLIP weights file (named model or path) is written again."""
    if name in clip.available_models():
        return f"Download {_clip_impl._MODELS[name]} again and put it in place of the damaged file."
    return ("Put a complete copy of the file there (the demo's tiny CLIPs: delete it and its .json sidecar, then "
            "`promptkd demo-weights pretrain FOLDER` writes them again).")


def visual_from_state_dict(state: dict) -> tuple[torch.nn.Module, torch.Tensor]:
    """Build only CLIP's ViT image tower (`clip.model.VisionTransformer`) from `visual.*` keys.

    Stage 2 needs the teacher's and the student's image towers only; this never constructs a
    text transformer. Returns (visual module fp32 eval, logit_scale tensor).
    """
    if "visual.proj" not in state:
        raise ConfigError("Stage 2 needs a ViT CLIP (no 'visual.proj' in the weights: a ResNet CLIP?).")
    width = state["visual.conv1.weight"].shape[0]
    patch = state["visual.conv1.weight"].shape[-1]
    layers = len({k.split(".")[3] for k in state if k.startswith("visual.transformer.resblocks.")})
    grid = round((state["visual.positional_embedding"].shape[0] - 1) ** 0.5)
    visual = clip.model.VisionTransformer(
        input_resolution=patch * grid, patch_size=patch, width=width, layers=layers,
        heads=width // 64, output_dim=state["visual.proj"].shape[1],
    )
    visual.load_state_dict({k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")})
    return visual.float().eval(), state["logit_scale"].detach().float().clone()


def fingerprint(module: torch.nn.Module) -> str:
    """SHA-256 over the module's state dict (names + fp32 values), as 16 hex digits.

    Identifies the exact weights a teacher used, independently of file format or dtype.
    """
    h = hashlib.sha256()
    for key, tensor in sorted(module.state_dict().items()):
        h.update(key.encode())
        h.update(tensor.detach().to("cpu", torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def is_vit(model: torch.nn.Module) -> bool:
    """True for a ViT CLIP (or a ViT image tower) whose blocks our prompted encoders walk."""
    return hasattr(getattr(model, "visual", model), "transformer")


def embed_dim(clip_model: torch.nn.Module) -> int:
    """Width of the joint image-text space (e.g. 512 for ViT-B/16, 768 for ViT-L/14)."""
    proj = text_tower(clip_model).text_projection
    return proj.out_features if isinstance(proj, torch.nn.Linear) else proj.shape[1]
