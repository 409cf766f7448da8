"""Model folders in the Hugging Face layout: a trained student or teacher, shareable without pickles.

    save_pretrained(predictor | record | RUN_DIR, DIR)    writes DIR/config.json, model.safetensors, README.md
    from_pretrained(DIR | "hf-hub:owner/name")           -> Predictor (the image classifier)
    teacher_export(DIR)                                  -> (ClassVectors, ImageSide): stage 2's TEACHER_DIR

The folder holds what a run's `predictor.pt` holds (`promptkd.deploy.predictor`), split the way
open_clip / timm / `huggingface_hub.ModelHubMixin` do it:

* `config.json`: the method, the backbone by reference (a CLIP name or file, or an
  `open_clip:` name) and the fingerprint of its weights, the prompt settings, the test
  preprocessing, the class names, the logit scale and the teacher the class vectors come from;
* `model.safetensors`: only what the run learned (the visual prompts, a student's projector with
  its BatchNorm statistics) plus the class vectors. The CLIP backbone is never copied: it is
  loaded by name and checked against the fingerprint, so a wrong backbone is refused;
* `README.md`: the model card (metrics from the run's `result.json`, dataset, protocol, teacher,
  config, the command that made it, the fingerprint, a licence note on the backbone).

safetensors files hold tensors only; reading one runs no pickle. A repo id is looked up in the
local Hugging Face cache only (`snapshot_download(local_files_only=True)`): nothing is downloaded
here (`hf download OWNER/NAME` fetches it; `promptkd push` uploads a folder).
"""
from __future__ import annotations

import json
import logging
import math
import os
import shlex

import torch

from ..errors import CheckpointError, ConfigError, MissingFileError, UserError
from ..extras import require
from ..io import atomic_write, atomic_write_json, atomic_write_text, load_json

logger = logging.getLogger("promptkd")

CONFIG_FILE, WEIGHTS_FILE, CARD_FILE = "config.json", "model.safetensors", "README.md"
FORMAT, FORMAT_VERSION = "promptkd-hf", 1
HUB_PREFIX = "hf-hub:"
PROMPT_KEY, PROJECTOR_PREFIX, VECTORS_KEY = "image_prompts.{}", "projector.", "class_vectors"
#: backbone references a folder may name (published ones live in a pickled checkpoint: convert them)
PORTABLE_BACKBONES = ("clip", "open_clip")
HOW_TO_MAKE = ("Write one with `promptkd export RUN_DIR DIR --format hf` (a published checkpoint: "
               "`promptkd convert CHECKPOINT DIR --backbone NAME --trust-pickled`).")


def _safetensors():
    return require("safetensors.torch", "hub", "Model folders")


# --- writing ---------------------------------------------------------------------------------

def _as_record(model):
    """A `PredictorRecord`, and the run folder it came from (for the card), of what was given."""
    from .predictor import Predictor, PredictorRecord, find_record

    if isinstance(model, Predictor):
        return model.record, _run_folder(model.path)
    if isinstance(model, PredictorRecord):
        return model, None
    if isinstance(model, (str, os.PathLike)):
        path = find_record(os.fspath(model))
        return PredictorRecord.load(path), _run_folder(path)
    raise TypeError(f"save_pretrained takes a Predictor, a PredictorRecord or a run folder, not {type(model).__name__}.")


def _run_folder(record_path: str | None) -> str | None:
    """The run folder of a predictor.pt: the folder holding run.json, its own or the one above."""
    if not record_path:
        return None
    here = os.path.dirname(os.path.abspath(record_path))
    for folder in (here, os.path.dirname(here)):
        if os.path.isfile(os.path.join(folder, "run.json")) or os.path.isfile(os.path.join(folder, "result.json")):
            return folder
    return None


def state_tensors(record) -> dict[str, torch.Tensor]:
    """The tensors a folder stores: prompts, projector (students), class vectors; contiguous CPU fp32
    (BatchNorm's batch counter stays int64)."""
    tensors = {PROMPT_KEY.format(i): p.detach().to("cpu", torch.float32).contiguous()
               for i, p in enumerate(record.weights["prompts"])}
    for k, v in (record.weights.get("projector") or {}).items():
        v = v.detach().cpu()
        tensors[PROJECTOR_PREFIX + k] = (v if not v.is_floating_point() else v.float()).contiguous().clone()
    tensors[VECTORS_KEY] = record.class_vectors.detach().to("cpu", torch.float32).contiguous()
    return tensors


def role(record) -> str:
    return "student" if record.weights.get("projector") is not None else "teacher"


def model_config(record, run: dict | None = None, result: dict | None = None) -> dict:
    """config.json: everything but the tensors."""
    prompts = record.weights["prompts"]
    projector = record.weights.get("projector")
    config = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "library_name": "promptkd",
        "method": record.method, "role": role(record), "dataset": record.dataset,
        "backbone": dict(record.backbone), "fingerprint": record.fingerprint,
        "prompts": {"depth_vision": len(prompts), "n_ctx_vision": int(prompts[0].shape[0]) if prompts else 0,
                    "width": int(prompts[0].shape[1]) if prompts else None},
        "projector": None if projector is None else {"in_dim": int(projector["0.weight"].shape[1]),
                                                     "out_dim": int(projector["0.weight"].shape[0])},
        "class_vectors": {"count": int(record.class_vectors.shape[0]), "width": int(record.class_vectors.shape[1])},
        "logit_scale": float(record.logit_scale), "preprocess": record.preprocess,
        "classnames": list(record.classnames), "teacher": _plain(record.teacher),
    }
    if run or result:
        config["run"] = {"run_id": (result or run or {}).get("run_id"), "protocol": (result or run or {}).get("protocol"),
                         "seed": (result or run or {}).get("seed"), "metrics": (result or {}).get("metrics"),
                         "code_version": (run or {}).get("code_version")}
    return config


def _plain(value):
    from ..records import plain
    return plain(value)


def save_pretrained(model, folder: str, *, run_dir: str | None = None, source: dict | None = None) -> str:
    """Write the model folder `folder` from a Predictor, a PredictorRecord or a run / export folder
    (`run_dir`: where its run.json / result.json are, for the card; found next to predictor.pt by
    default; `source`: where the weights came from, e.g. a converted checkpoint). Each file is written
    atomically, config.json last. Returns `folder`."""
    record, found = _as_record(model)
    run_dir = run_dir or found
    if record.backbone.get("kind") not in PORTABLE_BACKBONES:
        raise UserError(f"The model's backbone is {record.backbone}: its weights are in a published checkpoint, a "
                        "pickled file that a model folder cannot reference. Convert it: `promptkd convert CHECKPOINT "
                        "DIR --backbone NAME --trust-pickled` (NAME: the stock CLIP it was trained from).")
    from ..records import RESULT_FILE, RUN_FILE, read_json

    run = read_json(os.path.join(run_dir, RUN_FILE)) if run_dir else None
    result = read_json(os.path.join(run_dir, RESULT_FILE)) if run_dir else None
    st = _safetensors()
    data = st.save(state_tensors(record), metadata={"format": f"{FORMAT}/{FORMAT_VERSION}", "role": role(record)})
    os.makedirs(folder, exist_ok=True)
    atomic_write(os.path.join(folder, WEIGHTS_FILE), lambda f: f.write(data))
    config = model_config(record, run, result)
    if source:
        config["source"] = _plain(source)
    atomic_write_text(os.path.join(folder, CARD_FILE), model_card(config, run, result))
    atomic_write_json(os.path.join(folder, CONFIG_FILE), config, indent=1)
    logger.info("Model folder %s: %s %s (%d classes), backbone %s (fingerprint %s)", folder, config["role"],
                record.method, len(record.classnames), record.backbone.get("name"), record.fingerprint)
    return folder


# --- the model card ----------------------------------------------------------------------------

def _metrics_table(result: dict | None) -> str:
    if not result or not result.get("metrics"):
        return "No evaluation was recorded with this model (no result.json in its run folder)."
    m = result["metrics"]
    keys = [k for k in ("base", "novel", "hm", "accuracy") if k in m]
    if result.get("protocol") == "base2novel":
        keys = [k for k in ("base", "novel", "hm") if k in m]
    names = {"base": "Base", "novel": "Novel", "hm": "HM", "accuracy": "Accuracy"}
    head = "| " + " | ".join(names[k] for k in keys) + " |"
    return "\n".join([head, "|" + "---|" * len(keys), "| " + " | ".join(f"{m[k]:.2f}" for k in keys) + " |",
                      "", f"Top-1 accuracy (%) on the {result.get('split', 'test')} split, "
                      f"{result.get('n_images', '?')} images, {result.get('classes', '?')} classes"
                      + (f" ({result['base_classes']} base)" if result.get("base_classes") else "")
                      + f"; model selection {result.get('selection')}, epoch {result.get('epoch')}."])


def _command(run: dict | None) -> str:
    if not run or not run.get("command"):
        return "Not recorded (no run.json in the run folder)."
    argv = list(run["command"])
    argv[0] = os.path.basename(argv[0])
    return "```bash\n" + " ".join(shlex.quote(str(a)) for a in argv) + "\n```"


def _licence_note(backbone: dict) -> str:
    name = backbone.get("name", "")
    if backbone.get("kind") == "open_clip":
        which = (f"the OpenCLIP model `{name}`, whose pretrained weights carry the licence of their own model card "
                 "(open_clip's code is MIT; the weights' licences differ per pretraining set)")
    else:
        which = (f"OpenAI CLIP `{name}` (code and weights released by OpenAI under the MIT licence; see the "
                 "openai/CLIP repository and its model card for the intended uses)")
    return (f"This folder holds no backbone weights: the backbone is {which}. It is loaded from your own copy and "
            "checked against the fingerprint above. The prompts, projector and class vectors here were learned "
            "on top of it; their use is bound by the backbone's terms and by the dataset's licence.")


def model_card(config: dict, run: dict | None, result: dict | None) -> str:
    teacher = config.get("teacher") or {}
    t_backbone = (teacher.get("backbone") or {}).get("name") or (teacher.get("backbone") or {}).get("path")
    tags = ["promptkd", "clip", "prompt-learning", "knowledge-distillation", "image-classification"]
    front = "---\n" + "\n".join(["library_name: promptkd", "pipeline_tag: image-classification",
                                 "tags:", *[f"- {t}" for t in tags], "license: other"]) + "\n---\n"
    cfg = (run or {}).get("config")
    cfg_text = ("<details><summary>Full config (yacs)</summary>\n\n```json\n" + json.dumps(cfg, indent=1)
                + "\n```\n</details>") if cfg else "Not recorded (no run.json)."
    prompts = config["prompts"]
    lines = [
        front,
        f"# {config['method']} {config['role']} on {config['dataset']}",
        "",
        f"A {'PromptKD student' if config['role'] == 'student' else 'prompt-learned CLIP (usable as a PromptKD teacher)'}"
        f" saved by PromptKD for Dassl (unsupervised prompt distillation for CLIP, CVPR 2024) as a model folder: "
        f"`{CONFIG_FILE}`, `{WEIGHTS_FILE}` (learned tensors and class vectors only) and this card.",
        "",
        "## Results",
        "",
        _metrics_table(result),
        "",
        "## Model",
        "",
        f"- Method: {config['method']} ({config['role']}); dataset: {config['dataset']}, "
        f"{config['class_vectors']['count']} classes; protocol: {(result or run or {}).get('protocol', 'not recorded')}",
        f"- Backbone: `{config['backbone'].get('name')}` ({config['backbone'].get('kind')}), weight fingerprint "
        f"`{config['fingerprint']}`",
        f"- Visual prompts: depth {prompts['depth_vision']}, {prompts['n_ctx_vision']} tokens"
        + (f"; projector {config['projector']['in_dim']} -> {config['projector']['out_dim']}" if config["projector"] else ""),
        f"- Class vectors from the teacher: {teacher.get('method', 'not recorded')} on `{t_backbone}` "
        f"(fingerprint `{teacher.get('fingerprint')}`)",
        f"- Test preprocessing: {json.dumps(config['preprocess'])}",
        f"- Code version: {(run or {}).get('code_version')}, run id {(result or run or {}).get('run_id')}"
        + (f"; source: {json.dumps(config['source'])}" if config.get("source") else ""),
        "",
        "## Use",
        "",
        "```python",
        "from promptkd.deploy.hub import from_pretrained",
        "predictor = from_pretrained(\"PATH_OR_hf-hub:OWNER/NAME\", weights_dir=\"FOLDER_WITH_CLIP_FILES\")",
        "logits = predictor.logits(images)  # preprocessed [B, 3, H, W] -> [B, classes]",
        "```",
        "",
        "`promptkd predict FOLDER IMAGES` classifies image files"
        + ("; as a stage-2 teacher: `TRAINER.PROMPTKD.TEACHER_DIR FOLDER`." if config["role"] == "teacher" else "."),
        "",
        "## Reproduce",
        "",
        _command(run),
        "",
        cfg_text,
        "",
        "## Licence",
        "",
        _licence_note(config["backbone"]),
        "",
    ]
    return "\n".join(lines)


# --- reading ---------------------------------------------------------------------------------

def is_model_folder(path: str) -> bool:
    """True if `path` is a folder with a config.json of this format."""
    config = os.path.join(path, CONFIG_FILE)
    if not os.path.isfile(config):
        return False
    try:
        with open(config, encoding="utf-8") as f:
            return json.load(f).get("format") == FORMAT
    except (OSError, ValueError, AttributeError):
        return False


def resolve(path_or_repo: str, revision: str | None = None, cache_dir: str | None = None) -> str:
    """A local model folder: `path_or_repo` itself, or the snapshot of repo `hf-hub:OWNER/NAME` (or
    `OWNER/NAME` where no such local path exists) in the local Hugging Face cache; never downloads."""
    path = os.fspath(path_or_repo)
    repo = path[len(HUB_PREFIX):] if path.startswith(HUB_PREFIX) else None
    if repo is None:
        if os.path.isdir(path):
            return path
        if os.path.exists(path) or path.count("/") != 1 or path.startswith((".", "/", "~")):
            raise MissingFileError(f"{path} is not a model folder (no such folder). {HOW_TO_MAKE}")
        repo = path
    require("huggingface_hub", "hub", f"Reading the model {repo} from the Hugging Face cache")
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import LocalEntryNotFoundError

    try:
        return snapshot_download(repo, revision=revision, cache_dir=cache_dir, local_files_only=True)
    except LocalEntryNotFoundError:
        raise MissingFileError(f"The model {repo} is not in the local Hugging Face cache (HF_HUB_CACHE, default "
                               f"~/.cache/huggingface/hub), and nothing is downloaded here: fetch it first with "
                               f"`hf download {repo}` (or huggingface_hub.snapshot_download), or give a local "
                               "folder.") from None


#: config.json: key -> (its types, what it holds); checked before any tensor is read
CONFIG_KEYS = {
    "method": (str, "the method that trained it"), "dataset": (str, "the dataset name"),
    "backbone": (dict, "the backbone reference"), "fingerprint": (str, "the backbone's weight fingerprint"),
    "prompts": (dict, "the prompt settings"), "projector": ((dict, type(None)), "the projector's sizes, or null"),
    "class_vectors": (dict, "the class vectors' count and width"), "logit_scale": ((int, float), "a number"),
    "preprocess": (dict, "the test preprocessing"), "classnames": (list, "the class names"),
    "teacher": ((dict, type(None)), "the teacher's identity"),
}


def _is_int(value) -> bool:
    return type(value) is int


def _check_config(config: dict, path: str) -> None:
    """Every key read from config.json is there and of its type (a hand-edited or foreign file is
    named, never a KeyError / TypeError)."""
    def bad(key, why):
        return CheckpointError(f"{path}: {key} {why}. The folder's config.json was edited or comes from elsewhere; "
                               f"{HOW_TO_MAKE}")
    for key, (types, what) in CONFIG_KEYS.items():
        if key not in config and key != "teacher":
            raise bad(key, f"is missing (it holds {what})")
        value = config.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise bad(key, f"is {json.dumps(value)[:80]}, not {what}")
    if not math.isfinite(config["logit_scale"]):
        raise bad("logit_scale", f"is {config['logit_scale']}, not a finite number")
    prompts, vectors, projector = config["prompts"], config["class_vectors"], config["projector"]
    if not (_is_int(prompts.get("depth_vision")) and prompts["depth_vision"] >= 0):
        raise bad("prompts.depth_vision", f"is {prompts.get('depth_vision')!r}, not a prompt depth (an integer >= 0)")
    if prompts["depth_vision"] and not (_is_int(prompts.get("n_ctx_vision")) and _is_int(prompts.get("width"))):
        raise bad("prompts", f"is {prompts}: n_ctx_vision and width must be integers")
    if not (_is_int(vectors.get("count")) and _is_int(vectors.get("width"))):
        raise bad("class_vectors", f"is {vectors}: count and width must be integers")
    if projector is not None and not (_is_int(projector.get("in_dim")) and _is_int(projector.get("out_dim"))):
        raise bad("projector", f"is {projector}: in_dim and out_dim must be integers")
    if not all(isinstance(c, str) for c in config["classnames"]):
        raise bad("classnames", "holds entries that are not strings")
    if not isinstance(config["backbone"].get("name") or config["backbone"].get("path"), str):
        raise bad("backbone", f"is {config['backbone']}: it names no backbone (name)")


def _account_for_tensors(config: dict, tensors: dict, folder: str):
    """(prompts, projector state or None, class vectors) of model.safetensors: every tensor in the
    file is one config.json describes, with the shape it describes. A tensor too many (prompts of
    more layers, a projector the config has not) or too few is an error naming them: a file that
    does not match its config would classify with a model that matches neither."""
    from ..student import Projector

    weights_path = os.path.join(folder, WEIGHTS_FILE)
    prompts_cfg, vectors_cfg, projector_cfg = config["prompts"], config["class_vectors"], config["projector"]
    depth = prompts_cfg["depth_vision"]
    expected = {PROMPT_KEY.format(i): (prompts_cfg.get("n_ctx_vision"), prompts_cfg.get("width")) for i in range(depth)}
    expected[VECTORS_KEY] = (vectors_cfg["count"], vectors_cfg["width"])
    if projector_cfg is not None:
        layout = Projector(projector_cfg["in_dim"], projector_cfg["out_dim"]).state_dict()
        expected.update({PROJECTOR_PREFIX + k: tuple(v.shape) for k, v in layout.items()})
    extra, missing = sorted(set(tensors) - set(expected)), sorted(set(expected) - set(tensors))
    if extra or missing:
        parts = ([f"tensors config.json does not describe: {', '.join(extra[:8])}" + (" ..." if len(extra) > 8 else "")]
                 if extra else []) + ([f"no tensor {', '.join(missing[:8])}" + (" ..." if len(missing) > 8 else "")]
                                      if missing else [])
        raise CheckpointError(
            f"{weights_path} does not match {os.path.join(folder, CONFIG_FILE)} (prompt depth {depth}, "
            f"{'a projector' if projector_cfg else 'no projector'}, {vectors_cfg['count']} class vectors): it holds "
            f"{'; and '.join(parts)}. The two files come from different models (or one was edited); write the folder "
            f"again, both files together. {HOW_TO_MAKE}")
    for key, shape in expected.items():
        tensor = tensors[key]
        if tuple(tensor.shape) != tuple(shape):
            raise CheckpointError(f"{weights_path}: tensor {key} has shape {list(tensor.shape)}, but config.json "
                                  f"describes {list(shape)}. The two files come from different models (or one was "
                                  f"edited). {HOW_TO_MAKE}")
        if key != PROJECTOR_PREFIX + "1.num_batches_tracked" and not tensor.is_floating_point():
            raise CheckpointError(f"{weights_path}: tensor {key} is {tensor.dtype}, not a floating-point tensor. "
                                  f"{HOW_TO_MAKE}")
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise CheckpointError(f"{weights_path}: tensor {key} holds NaN or infinite values. {HOW_TO_MAKE}")
    if len(config["classnames"]) != vectors_cfg["count"]:
        raise CheckpointError(f"{folder}: config.json lists {len(config['classnames'])} class names for "
                              f"{vectors_cfg['count']} class vectors. {HOW_TO_MAKE}")
    if projector_cfg is not None and projector_cfg["out_dim"] != vectors_cfg["width"]:
        raise CheckpointError(f"{folder}: the projector maps to width {projector_cfg['out_dim']}, but the class vectors "
                              f"have width {vectors_cfg['width']}. {HOW_TO_MAKE}")
    prompts = [tensors[PROMPT_KEY.format(i)] for i in range(depth)]
    projector = {k[len(PROJECTOR_PREFIX):]: v for k, v in tensors.items() if k.startswith(PROJECTOR_PREFIX)}
    return prompts, projector or None, tensors[VECTORS_KEY]


def read_folder(folder: str):
    """(PredictorRecord, config) of a model folder, checked; the tensors are read with safetensors
    (no pickle)."""
    from .predictor import PredictorRecord

    config_path, weights_path = os.path.join(folder, CONFIG_FILE), os.path.join(folder, WEIGHTS_FILE)
    config = load_json(config_path, what="model folder config", fix=HOW_TO_MAKE, error=CheckpointError)
    if not isinstance(config, dict) or config.get("format") != FORMAT:
        found = config.get("format") if isinstance(config, dict) else f"a JSON {type(config).__name__}"
        raise CheckpointError(f"{config_path} is not a PromptKD model folder config (format {found!r}, "
                              f"expected {FORMAT!r}). {HOW_TO_MAKE}")
    if config.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(f"{config_path} has format version {config.get('format_version')}; this code reads "
                              f"version {FORMAT_VERSION}. {HOW_TO_MAKE}")
    _check_config(config, config_path)
    if not os.path.isfile(weights_path):
        raise MissingFileError(f"{weights_path} is missing: the model folder is incomplete. {HOW_TO_MAKE}")
    try:
        tensors = _safetensors().load_file(weights_path)
    except Exception as err:  # a truncated or foreign file: safetensors' own error
        raise CheckpointError(f"{weights_path} is not a readable safetensors file ({err}). {HOW_TO_MAKE}") from None
    prompts, projector, vectors = _account_for_tensors(config, tensors, folder)
    record = PredictorRecord(method=config["method"], dataset=config["dataset"], backbone=dict(config["backbone"]),
                             fingerprint=config["fingerprint"], weights={"prompts": prompts,
                                                                         "projector": projector or None},
                             classnames=list(config["classnames"]), class_vectors=vectors,
                             logit_scale=float(config["logit_scale"]), preprocess=config["preprocess"],
                             teacher=dict(config.get("teacher") or {}))
    return record, config


def check_backbone(visual, record, where: str) -> None:
    """Refuse an image tower whose weights are not the ones the model was trained on, naming both."""
    from ..class_vectors import visual_fingerprint

    found = visual_fingerprint(visual)
    if found != record.fingerprint:
        raise ConfigError(f"Wrong backbone: the model was trained on {record.backbone.get('name')} with weight "
                          f"fingerprint {record.fingerprint}, but the weights at {where} have fingerprint {found}. "
                          "Give the backbone it was trained on (weights_dir / --weights-dir: the folder holding that "
                          "CLIP file).")


def from_pretrained(path_or_repo: str, weights_dir: str | None = None, *, backbone: str | None = None,
                    revision: str | None = None, cache_dir: str | None = None):
    """The `Predictor` of a model folder (a local path, or `hf-hub:OWNER/NAME` from the local HF
    cache). `backbone`: load these weights (a CLIP name or file) instead of the one config.json
    names; either way their fingerprint must be the recorded one."""
    from ..backbones import load_image_tower
    from .predictor import ImageClassifier, Predictor

    folder = resolve(path_or_repo, revision, cache_dir)
    record, _ = read_folder(folder)
    name = backbone or record.backbone["name"]
    visual = load_image_tower(name, weights_dir)[0]
    check_backbone(visual, record, name if not weights_dir else f"{name} (weights dir {weights_dir})")
    _check_fit(visual, record, folder, name)
    model = ImageClassifier(visual, record.weights["prompts"], record.weights.get("projector"),
                            record.class_vectors, record.logit_scale)
    return Predictor(record, model, os.path.join(folder, CONFIG_FILE))


def _check_fit(visual, record, folder: str, name: str) -> None:
    """The folder's prompts and projector fit the backbone's image tower (its width and output
    width); a folder made for another backbone is named, not a shape error inside torch."""
    prompts, projector = record.weights["prompts"], record.weights.get("projector")
    width = getattr(getattr(visual, "class_embedding", None), "shape", [None])[0]
    if prompts and width is not None and prompts[0].shape[-1] != width:
        raise CheckpointError(f"{folder}: its visual prompts have width {prompts[0].shape[-1]}, but the backbone "
                              f"{name} has width {width}: the folder was made for another backbone. {HOW_TO_MAKE}")
    out_dim = getattr(visual, "output_dim", None)
    if projector is not None and out_dim is not None and projector["0.weight"].shape[1] != out_dim:
        raise CheckpointError(f"{folder}: its projector takes features of width {projector['0.weight'].shape[1]}, "
                              f"but the backbone {name} gives {out_dim}: the folder was made for another backbone. "
                              f"{HOW_TO_MAKE}")


def load_predictor(path: str, weights_dir: str | None = None, trusted: bool = False):
    """The `Predictor` of a run / export folder / predictor.pt, or of a model folder (or `hf-hub:` repo):
    what `promptkd predict` and `promptkd export` read."""
    from .predictor import Predictor

    if names_model_folder(os.fspath(path)):
        return from_pretrained(os.fspath(path), weights_dir)
    return Predictor.from_run(path, weights_dir, trusted)


def teacher_export(path_or_repo: str, revision: str | None = None, cache_dir: str | None = None):
    """(ClassVectors, ImageSide, folder) of a teacher's model folder: what stage 2 reads from a
    teacher export (TRAINER.PROMPTKD.TEACHER_DIR may name such a folder or `hf-hub:OWNER/NAME`)."""
    from ..class_vectors import ClassVectors, ImageSide

    folder = resolve(path_or_repo, revision, cache_dir)
    record, config = read_folder(folder)
    if record.weights.get("projector") is not None:
        raise ConfigError(f"{folder} is a PromptKD student ({record.method}), not a teacher: its scores go through a "
                          "projector, so it cannot give a student class vectors and an image side. Give a teacher's "
                          "model folder (or its export folder) as TRAINER.PROMPTKD.TEACHER_DIR.")
    vectors = ClassVectors(vectors=record.class_vectors, classnames=list(record.classnames), dataset=record.dataset,
                           teacher=dict(record.teacher))
    side = ImageSide(backbone=dict(record.backbone), fingerprint=record.fingerprint,
                     prompts=list(record.weights["prompts"]), logit_scale=float(record.logit_scale),
                     width=int(record.class_vectors.shape[1]), method=record.method)
    return vectors, side, folder


def names_model_folder(path: str) -> bool:
    """True when `path` (a TEACHER_DIR, a run folder argument) names a model folder or an `hf-hub:` repo
    rather than an export / run folder."""
    return bool(path) and (path.startswith(HUB_PREFIX) or is_model_folder(path))
