"""The teacher's export: pre-stored class vectors and the image side stage 2 needs.

A teacher is encoded once, when it is final. Two files (plain tensors, strings and numbers;
`torch.load(weights_only=True)` reads them) go into its export folder:

* `class_vectors_<Dataset>.pt`: L2-normalised prompted text features of *all* the dataset's
  classes in label order, with the class names, dataset, teacher backbone and weight
  fingerprint, prompt settings, logit scale and a format version.
* `image_side.pt`: the teacher's visual prompts and logit scale; the backbone is referenced
  (a CLIP name/path, an `open_clip:` name, or a published checkpoint), not copied.

Stage 2 checks both against the dataset and against each other before it trains.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field

import torch

from .backbones import Preprocess, fingerprint, load_image_tower, openai_preprocess, visual_from_state_dict
from .checkpoints import split_published_teacher
from .errors import ConfigError
from .io import atomic_save, load_torch

FORMAT_VERSION = 1
IMAGE_SIDE_FILE = "image_side.pt"
#: how an export file is written again (stage 2 passes its own, longer hint)
EXPORT_HINT = ("Write it again from the teacher run: `bash scripts/promptkd/export_class_vectors.sh TEACHER_RUN "
               "DATASET` (`python train.py --trainer PromptKDTeacher ... --eval-only --model-dir TEACHER_RUN`).")


def class_vectors_file(export_dir: str, dataset: str) -> str:
    return os.path.join(export_dir, f"class_vectors_{dataset}.pt")


VOCABULARY_PREFIX = "vocabulary:"


def clip_text_key(name: str) -> str:
    """A class name as CLIP's tokenizers see it: '_' read as a space (as the prompts write class
    names), text fixed and HTML entities unescaped (`basic_clean`: ftfy, html.unescape), runs of
    whitespace joined and the ends trimmed (`whitespace_clean`), lower-cased (OpenAI CLIP's and
    open_clip's tokenizers both lower-case). Two names with the same key are one class to CLIP."""
    import html

    text = name.replace("_", " ")
    try:
        import ftfy  # CLIP's own dependency
        text = ftfy.fix_text(text)
    except ImportError:
        pass
    return " ".join(html.unescape(html.unescape(text)).split()).lower()


def indistinct_names(names) -> list[list[str]]:
    """Groups of names (in order) that CLIP's tokenizer cannot tell apart (`clip_text_key`)."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(clip_text_key(name), []).append(name)
    return [group for group in groups.values() if len(group) > 1]


def indistinct_message(groups: list[list[str]]) -> str:
    shown = "; ".join(" / ".join(repr(n) for n in group) for group in groups[:5])
    return (f"{len(groups)} group(s) of names that CLIP's tokenizer cannot tell apart ({shown}"
            f"{'; ...' if len(groups) > 5 else ''}): it lower-cases, reads '_' as a space and joins whitespace, so "
            "each group would be one class twice, its probability split between two rows")


def read_vocabulary(path: str) -> list[str]:
    """Class names of a vocabulary file: one per line; blank lines and `#` comments skipped.
    Names CLIP cannot tell apart (the same but for case, '_' or spaces) are refused like exact
    duplicates."""
    try:
        with open(path, encoding="utf-8") as f:
            names = [line.strip() for line in f if line.strip() and not line.lstrip().startswith("#")]
    except UnicodeDecodeError as err:
        raise ConfigError(f"The vocabulary {path} is not UTF-8 text ({err.reason} at byte {err.start}): save it as "
                          "UTF-8, one class name per line.") from None
    except OSError as err:
        raise ConfigError(f"Cannot read the vocabulary {path}: {err.strerror}. Give a text file with one class "
                          "name per line.") from None
    if not names:
        raise ConfigError(f"The vocabulary {path} holds no class names: write one name per line.")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ConfigError(f"The vocabulary {path} names {len(duplicates)} classes more than once "
                          f"({', '.join(duplicates[:5])}): keep each name once.")
    groups = indistinct_names(names)
    if groups:
        raise ConfigError(f"The vocabulary {path} holds {indistinct_message(groups)}. Keep one name of each group.")
    return names


def vocabulary_dataset(path: str) -> str:
    """The `dataset` a vocabulary's class vectors carry: vocabulary:<file stem>."""
    return VOCABULARY_PREFIX + os.path.splitext(os.path.basename(path))[0]


def vocabulary_vectors_file(export_dir: str, names_file: str) -> str:
    return os.path.join(export_dir, f"class_vectors_vocab_{os.path.splitext(os.path.basename(names_file))[0]}.pt")


def _read(path: str, kind: str, what: str, how_to_make: str) -> dict:
    """Load an export file of `kind`; a missing, damaged or foreign file says which command
    produces it."""
    how_to_make = how_to_make or EXPORT_HINT
    data = load_torch(path, what=f"{what} file", fix=how_to_make)
    if not isinstance(data, dict) or data.get("kind") != kind:
        found = data.get("kind") if isinstance(data, dict) else None
        raise ConfigError(f"{path} is not a {kind} file (written by PromptKDTeacher's export)"
                          + (f": it is a {found} file" if isinstance(found, str) else "") + f". {how_to_make}")
    if data.get("format_version") != FORMAT_VERSION:
        raise ConfigError(
            f"{path} has format version {data.get('format_version')}; this code reads version "
            f"{FORMAT_VERSION}. Re-export it with this version's PromptKDTeacher (--eval-only)."
        )
    return data


@dataclass
class ClassVectors:
    vectors: torch.Tensor  # [C, D] fp32, unit rows, label order
    classnames: list[str]
    dataset: str
    teacher: dict = field(default_factory=dict)  # backbone, fingerprint, method, prompts, logit_scale

    @property
    def width(self) -> int:
        return self.vectors.shape[1]

    def save(self, path: str) -> None:
        data = {"kind": "class_vectors", "format_version": FORMAT_VERSION,
                **asdict(self), "vectors": self.vectors.detach().to("cpu", torch.float32).contiguous()}
        atomic_save(data, path)

    @classmethod
    def load(cls, path: str, how_to_make: str = "") -> "ClassVectors":
        data = _read(path, "class_vectors", "class-vector", how_to_make)
        return cls(vectors=data["vectors"], classnames=list(data["classnames"]),
                   dataset=data["dataset"], teacher=dict(data["teacher"]))

    def check_dataset(self, dataset: str, classnames: list[str], source: str = "class vectors") -> None:
        """Refuse vectors made for other classes: names, order and count must match."""
        problems = []
        if dataset != self.dataset:
            problems.append(f"they were made for dataset {self.dataset}, this run uses {dataset}")
        if len(classnames) != len(self.classnames):
            problems.append(f"{len(self.classnames)} classes stored, the dataset has {len(classnames)}")
        else:
            diff = [(i, a, b) for i, (a, b) in enumerate(zip(self.classnames, classnames)) if a != b]
            if diff:
                shown = "; ".join(f"label {i}: stored '{a}' vs dataset '{b}'" for i, a, b in diff[:5])
                problems.append(f"{len(diff)} class names differ ({shown})")
        if problems:
            raise ConfigError(f"The {source} do not match the dataset: " + "; ".join(problems) + ".")


@dataclass
class ImageSide:
    """What stage 2 needs of the teacher's image tower."""

    backbone: dict  # {"kind": "clip" | "open_clip", "name": ...} | {"kind": "published", "path": ...}
    fingerprint: str  # of the teacher's image tower weights (see `visual_fingerprint`)
    prompts: list  # [depth] tensors [n_ctx, width]
    logit_scale: float
    width: int  # class-vector width the teacher scores against
    method: str = "PromptKDTeacher"

    def save(self, path: str) -> None:
        data = {"kind": "image_side", "format_version": FORMAT_VERSION, **asdict(self),
                "prompts": [p.detach().to("cpu", torch.float32).contiguous() for p in self.prompts]}
        atomic_save(data, path)

    @classmethod
    def load(cls, path: str, how_to_make: str = "") -> "ImageSide":
        data = _read(path, "image_side", "teacher image-side", how_to_make)
        return cls(backbone=dict(data["backbone"]), fingerprint=data["fingerprint"],
                   prompts=list(data["prompts"]), logit_scale=float(data["logit_scale"]),
                   width=int(data["width"]), method=data.get("method", ""))

    def load_visual(self, weights_dir: str | None = None, trusted: bool = False):
        """Build the referenced teacher image tower; refuse weights with another fingerprint."""
        return self.load_tower(weights_dir, trusted)[0]

    def load_tower(self, weights_dir: str | None = None, trusted: bool = False) -> tuple[torch.nn.Module, Preprocess]:
        """(teacher image tower, its preprocessing); weights with another fingerprint are refused."""
        if self.backbone["kind"] in ("clip", "open_clip"):
            visual, _, preprocess = load_image_tower(self.backbone["name"], weights_dir)
            where = self.backbone["name"]
        elif self.backbone["kind"] == "published":
            state = split_published_teacher(self.backbone["path"], trusted)["clip_state"]
            visual, _ = visual_from_state_dict(state)
            preprocess = openai_preprocess(visual)
            where = self.backbone["path"]
        else:
            raise ConfigError(f"Unknown teacher backbone reference {self.backbone}.")
        found = visual_fingerprint(visual)
        if found != self.fingerprint:
            raise ConfigError(
                f"The teacher weights at {where} have fingerprint {found}, but the teacher was "
                f"exported with {self.fingerprint}: these are not the weights it was trained on."
            )
        return visual, preprocess


def visual_fingerprint(visual: torch.nn.Module) -> str:
    """Fingerprint of an image tower (the teacher part stage 2 runs)."""
    return fingerprint(visual)


def check_pair(vectors: ClassVectors, side: ImageSide, vectors_path: str, side_path: str) -> None:
    """Class vectors and image side must come from the same teacher."""
    problems = []
    if vectors.width != side.width:
        problems.append(f"width {vectors.width} vs {side.width}")
    if vectors.teacher.get("fingerprint") != side.fingerprint:
        problems.append(f"teacher fingerprint {vectors.teacher.get('fingerprint')} vs {side.fingerprint}")
    if problems:
        raise ConfigError(f"{vectors_path} and {side_path} come from different teachers: " + ", ".join(problems) + ".")
