"""OpenCLIP backbones (`open_clip:<architecture>/<pretrained tag or weight file>`), offline.

The family behind `promptkd.backbones.load_backbone` for names such as
`open_clip:ViT-H-14-quickgelu/dfn5b` or `open_clip:ViT-B-32-quickgelu/~/weights/b32.bin`:

* a pretrained tag is looked up in the local Hugging Face cache (or, for tags that open_clip
  fetches from a URL, in the weights folder); nothing is ever downloaded during a run, and a
  missing file raises a `MissingFileError` saying what to download and where it goes;
* an architecture open_clip does not know is read from `<architecture>.json` (an open_clip
  model config) next to the weight file;
* the full model is built by `open_clip.create_model` from the local file; stage 2 builds only
  the image tower, with open_clip's own tower builder, so no text transformer is made;
* the preprocessing (input size, mean / std, interpolation) comes from the architecture and
  the tag, as in `open_clip.create_model`.

`open_clip` is imported on first use only (it takes seconds to import).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

from .errors import ConfigError, MissingFileError
from .io import load_json

logger = logging.getLogger("promptkd")

PREFIX = "open_clip:"
NAME_FORMAT = "open_clip:<architecture>/<pretrained tag or weight file>, e.g. open_clip:ViT-H-14-quickgelu/dfn5b"
_WEIGHT_SUFFIXES = (".bin", ".pt", ".pth", ".safetensors", ".tar")


def _open_clip():
    import open_clip  # noqa: PLC0415  (slow import, only when an open_clip backbone is used)
    return open_clip


@dataclass(frozen=True)
class OpenClipSource:
    """A resolved open_clip backbone name: architecture, its config, the local weight file."""

    name: str  # as given (normalised: a file path made absolute)
    arch: str
    path: str  # the weight file
    model_cfg: dict
    builtin: bool  # an architecture open_clip knows (else read from <arch>.json next to the weights)
    preprocess: dict  # open_clip PreprocessCfg fields: size, mean, std, interpolation, resize_mode


def is_open_clip_name(name: str) -> bool:
    return isinstance(name, str) and name.startswith(PREFIX)


def split_name(name: str) -> tuple[str, str]:
    body = name[len(PREFIX):]
    arch, _, source = body.partition("/")
    if not arch or not source:
        raise ConfigError(f"Backbone name '{name}' is not of the form {NAME_FORMAT}.")
    return arch, source


def normalise_name(name: str) -> str:
    """The name with a weight-file path made absolute (what an export records)."""
    arch, source = split_name(name)
    path = os.path.expanduser(source)
    if os.path.isfile(path):
        return f"{PREFIX}{arch}/{os.path.abspath(path)}"
    return name


def _model_config(arch: str, weight_file: str | None) -> tuple[dict, bool]:
    """(open_clip model config of `arch`, whether it is one of open_clip's built-in ones)."""
    oc = _open_clip()
    cfg = oc.get_model_config(arch)
    if cfg is not None:
        return cfg, True
    if weight_file:
        local = os.path.join(os.path.dirname(os.path.abspath(weight_file)), f"{arch}.json")
        if os.path.isfile(local):
            fix = f"Put open_clip's model config of {arch} (JSON) there, next to the weights file."
            cfg = load_json(local, what="open_clip model config", fix=fix, error=ConfigError)
            if not {"embed_dim", "vision_cfg", "text_cfg"} <= set(cfg):
                raise ConfigError(f"{local} is not an open_clip model config (needs embed_dim, vision_cfg, text_cfg). "
                                  + fix)
            return cfg, False
    near = [m for m in oc.list_models() if arch.lower().split("-")[0] in m.lower()][:12]
    where = f" and there is no open_clip model config {arch}.json next to {weight_file}" if weight_file else ""
    raise ConfigError(f"open_clip does not know the architecture '{arch}'{where}. Known architectures "
                      f"include {near or oc.list_models()[:12]} (open_clip.list_models() lists all).")


def _hf_candidates(hf_hub: str) -> tuple[str, list[str]]:
    """(repo id, file names open_clip would fetch for this hf_hub entry, preferred first)."""
    from open_clip.constants import HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME  # noqa: PLC0415

    repo, filename = os.path.split(hf_hub)
    if not filename:
        return repo, [HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME]
    names = [filename]
    if filename.endswith((".bin", ".pth")):
        names.insert(0, filename[:-4] + ".safetensors")
    return repo, names


def _cached_tag_file(arch: str, tag: str, pcfg: dict, weights_dir: str | None) -> str:
    """The local file of a pretrained tag (Hugging Face cache or weights folder), or an error."""
    tried, hints = [], []
    if pcfg.get("file"):
        return pcfg["file"]
    if pcfg.get("hf_hub"):
        from huggingface_hub import try_to_load_from_cache  # noqa: PLC0415
        from huggingface_hub.constants import HF_HUB_CACHE  # noqa: PLC0415

        repo, names = _hf_candidates(pcfg["hf_hub"])
        caches = [None] + ([os.path.expanduser(weights_dir)] if weights_dir else [])
        for cache in caches:
            for filename in names:
                found = try_to_load_from_cache(repo, filename, cache_dir=cache)
                if isinstance(found, str) and os.path.isfile(found):
                    return found
        tried.append(f"the Hugging Face cache ({HF_HUB_CACHE}" + (f", {weights_dir}" if weights_dir else "") + ")")
        hints.append(f"`huggingface-cli download {repo} {names[-1]}` (Hugging Face repo {repo}, file {names[-1]}; "
                     "it lands in the Hugging Face cache, or set HF_HUB_CACHE / MODEL.WEIGHTS_DIR to the cache "
                     "folder that holds it)")
    if pcfg.get("url"):
        filename = os.path.basename(pcfg["url"])
        folders = [os.path.expanduser(weights_dir)] if weights_dir else []
        folders.append(os.path.expanduser("~/.cache/clip"))
        for folder in folders:
            if os.path.isfile(os.path.join(folder, filename)):
                return os.path.join(folder, filename)
        tried.append(" and ".join(os.path.join(f, filename) for f in folders))
        hints.append(f"{pcfg['url']} into {folders[0]}")
    raise MissingFileError(
        f"The open_clip weights for {arch}/{tag} are not on this machine (looked in {'; '.join(tried)}); runs "
        f"never download. Download {' or '.join(hints)}, or give the file itself: "
        f"MODEL.BACKBONE.NAME open_clip:{arch}/<path to the weight file>.")


def resolve(name: str, weights_dir: str | None = None) -> OpenClipSource:
    """Parse `open_clip:<arch>/<tag or file>` and find its local weight file and config."""
    oc = _open_clip()
    from open_clip.transform import PreprocessCfg, merge_preprocess_dict  # noqa: PLC0415

    arch, source = split_name(name)
    file = os.path.expanduser(source)
    pcfg = {}
    if os.path.isfile(file):
        path = os.path.abspath(file)
        cfg, builtin = _model_config(arch, path)
    elif source.endswith(_WEIGHT_SUFFIXES) or os.sep in source:
        raise MissingFileError(f"No weight file at {file} (from backbone name '{name}'); give the path "
                               f"of an open_clip or OpenAI checkpoint of {arch}.")
    else:
        cfg, builtin = _model_config(arch, None)
        pcfg = oc.get_pretrained_cfg(arch, source) or {}
        if not pcfg:
            raise ConfigError(f"'{source}' is neither a pretrained tag of open_clip's {arch} nor a file. Tags of "
                              f"{arch}: {oc.list_pretrained_tags_by_model(arch) or 'none'}.")
        if bool(pcfg.get("quick_gelu", False)) != bool(cfg.get("quick_gelu", False)):
            want = "QuickGELU" if pcfg.get("quick_gelu") else "GELU"
            other = arch[: -len("-quickgelu")] if arch.endswith("-quickgelu") else f"{arch}-quickgelu"
            raise ConfigError(f"The {arch}/{source} weights were trained with {want}, but architecture {arch} "
                              f"uses the other activation; use open_clip:{other}/{source}.")
        path = _cached_tag_file(arch, source, pcfg, weights_dir)
    pp = merge_preprocess_dict(PreprocessCfg(), cfg.get("preprocess_cfg", {}))
    pp = merge_preprocess_dict(pp, pcfg)
    pp["size"] = cfg["vision_cfg"].get("image_size", pp["size"])
    return OpenClipSource(name=normalise_name(name), arch=arch, path=path, model_cfg=cfg, builtin=builtin, preprocess=pp)


def text_support(model_cfg: dict) -> str | None:
    """None if our text encoders can run this architecture's text tower offline, else why not."""
    text = model_cfg.get("text_cfg", {})
    if text.get("hf_model_name"):
        return f"its text tower is the Hugging Face model {text['hf_model_name']}"
    if text.get("hf_tokenizer_name"):
        return f"its tokenizer is the Hugging Face tokenizer {text['hf_tokenizer_name']} (downloaded files)"
    if text.get("tokenizer_kwargs") or text.get("tokenizer_mode"):
        return "it uses a non-default tokenizer"
    if text.get("pool_type", "argmax") != "argmax" or text.get("embed_cls") or text.get("no_causal_mask"):
        return "its text tower does not pool at the end-of-text token under a causal mask"
    return None


def _check_text(src: OpenClipSource) -> None:
    why = text_support(src.model_cfg)
    if why:
        raise ConfigError(f"{src.name}: {why}, which this plugin cannot encode (CLIP BPE tokens, end-of-text "
                          "pooling). This model can be a PromptKD student (image tower only), not a teacher or a "
                          "prompt-learning backbone.")


def _load_error(src: OpenClipSource, err: Exception) -> ConfigError:
    first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
    return ConfigError(f"Could not load open_clip {src.arch} weights from {src.path}: {first[:500]} Is the file "
                       f"a checkpoint of {src.arch} (complete, not truncated)?")


def load_model(name: str, weights_dir: str | None = None) -> tuple[torch.nn.Module, dict]:
    """The full open_clip model (fp32, CPU, eval) and its preprocessing config."""
    src = resolve(name, weights_dir)
    _check_text(src)
    oc = _open_clip()
    try:
        if src.builtin:
            model = oc.create_model(src.arch, pretrained=src.path)
        else:  # an architecture from <arch>.json: open_clip's model classes and checkpoint reader
            cfg = {k: v for k, v in src.model_cfg.items() if k not in ("preprocess_cfg", "custom_text")}
            custom = src.model_cfg.get("custom_text") or "hf_model_name" in cfg["text_cfg"]
            model = (oc.CustomTextCLIP if custom else oc.CLIP)(**cfg)
            oc.load_checkpoint(model, src.path)
    except (RuntimeError, KeyError, ValueError, OSError) as err:
        raise _load_error(src, err) from err
    return model.float().eval(), src.preprocess


def load_image_tower(name: str, weights_dir: str | None = None) -> tuple[torch.nn.Module, torch.Tensor, dict]:
    """Only the image tower (open_clip's own builder; no text tower is built), its logit scale
    and preprocessing config. fp32, CPU, eval."""
    src = resolve(name, weights_dir)
    from open_clip import model as oc_model  # noqa: PLC0415
    from open_clip.factory import load_state_dict  # noqa: PLC0415

    cfg = src.model_cfg
    build = getattr(oc_model, "_build_vision_tower", None)
    if build is None:
        raise ConfigError("This open-clip-torch version has no open_clip.model._build_vision_tower; install the "
                          "version in requirements.txt.")
    visual = build(cfg["embed_dim"], cfg["vision_cfg"], cfg.get("quick_gelu", False))
    try:
        state = load_state_dict(src.path)
        own = {k[len("visual."):]: v for k, v in state.items() if k.startswith("visual.")}
        visual.load_state_dict(own)
    except (RuntimeError, KeyError, ValueError, OSError, StopIteration) as err:
        raise _load_error(src, err) from err
    if "logit_scale" not in state:
        raise _load_error(src, KeyError("no logit_scale in the checkpoint"))
    return visual.float().eval(), state["logit_scale"].detach().float().reshape(()).clone(), src.preprocess
