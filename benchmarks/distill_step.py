"""Benchmark: PromptKD with pre-stored class vectors against the published re-encoding path.

For full-size random-weight architectures (ViT-L/14 teacher with deep visual prompts, ViT-B/16
student with deep visual prompts and a projector to the teacher's class-vector width), and for
each requested number of classes C, four settings are measured:

  train/ours       teacher image forward (no grad) + student forward/backward + SGD step,
                   scored against stored class vectors (a fixed [C, D] tensor)
  train/published  the same, plus re-encoding all C class prompts through the teacher's
                   prompted text encoder (no grad) at every step, as the published code does
  infer/ours       student + projector + stored class vectors, per test image
  infer/published  teacher image encoder + teacher text encoder for all C classes (once per
                   test batch) + student, per test image, as the published test path does

For each: median wall time over `--repeats` timed runs after `--warmup` untimed runs, FLOPs
counted once with torch's FlopCounterMode outside the timing (that run comes first, so with
`--warmup 0` it is the only run before timing), and peak memory (CUDA: peak allocated above what
was allocated before the setting; CPU: peak RSS above the RSS before the setting, read from
/proc/self/status after resetting the kernel's high-water mark). The timed runs go in rounds,
one run of every setting per round, so a change in machine load hits all settings alike; the
mean CPU use of other processes during the runs is reported. The table ends with the
published/ours ratios of time and FLOPs and "time ratio as % of FLOP ratio" (goal: >= 90%).
`--settings part/text-encode part/teacher-image part/student-train` time the pieces alone.

Method students (TRAINER.PROMPTKD.STUDENT = a prompt-learning method, docs/students.md), opt-in:

  train/student:<Method>  the same teacher forward (no grad) on the stored class vectors, then the
                   method (CoOp, CoCoOp, IVLP, MaPLe, PromptSRC, ... : every registered
                   prompt-learning trainer with prompts, built by its own build_method from its
                   TRAINER.<NODE> defaults, prompt depths clamped to the towers) on a random
                   student-architecture CLIP with its text tower: its own text features of the C
                   classes once per step (per image for image-conditioned CoCoOp), its own
                   regularisers if it has any, the forward KL, backward and an SGD step
  `--settings students` measures all of them (needs Dassl); `train/student:CoOp` names one.

    python -m benchmarks.distill_step                       # C = 100 and 1000, batch 8, fp32
    python -m benchmarks.distill_step --classes 100 --repeats 1 --json out.json
    python -m benchmarks.distill_step --tiny --classes 10   # seconds: tiny random CLIPs
    python -m benchmarks.distill_step --classes 100 --settings train/ours students
    # OpenCLIP teachers / students (`open_clip:<architecture>`); a teacher of another input size
    # gets the student's batch resized for it, as in stage 2:
    python -m benchmarks.distill_step --teacher open_clip:ViT-H-14-quickgelu --settings train/ours

Weights are random: FLOPs and time do not depend on the values. The teacher's text tower is
built only when a setting re-encodes classes (train/published, infer/published, part/text-encode).
"""
from __future__ import annotations

import argparse
import contextlib
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.common import (ARCHITECTURES, MiB, OtherLoad, PeakMemory, count_flops, emit, machine_info, sync,
                               tiny_architecture)
from promptkd.backbones import Preprocess, clip, text_tower, to_half  # (clip without its warnings)
from promptkd.image_inputs import TowerInput
from promptkd.encoders import PromptedTextEncoder
from promptkd.losses import kd_loss
from promptkd.student import PromptKDStudent, TeacherImageScorer
from promptkd.demo.tiny import TINY_STUDENT, TINY_TEACHER

SETTINGS = ("train/ours", "train/published", "infer/ours", "infer/published")
# Optional parts, to see where the time goes (--settings ... part/text-encode ...).
PARTS = ("part/text-encode", "part/teacher-image", "part/student-train")
# Method students: STUDENT_PREFIX + a registered prompt-learning trainer; STUDENTS = all of them.
STUDENT_PREFIX = "train/student:"
STUDENTS = "students"
TEXT_SETTINGS = ("train/published", "infer/published", "part/text-encode")
OPEN_CLIP_PREFIX = "open_clip:"
GOAL_PERCENT = 90.0


# ----------------------------------------------------------------------------------------------
# Models and the four settings

@dataclass
class Models:
    teacher: TeacherImageScorer
    text_encoder: PromptedTextEncoder | None  # None when no setting re-encodes classes
    student: PromptKDStudent
    class_dim: int
    resolution: int
    depths: dict
    names: dict
    student_clip: torch.nn.Module | None = None  # a whole student CLIP, for method students only


def _random_backbone(name: str, tiny_arch: dict | None, need_text: bool, seed: int) -> dict:
    """A random-weight backbone: an OpenAI architecture of ARCHITECTURES (or a tiny one) built with
    the clip package, or `open_clip:<architecture>` built with open_clip (only the image tower
    when no text is needed). Returns its image tower, the whole CLIP (or None), logit scale and
    input preprocessing."""
    torch.manual_seed(seed)
    if name.startswith(OPEN_CLIP_PREFIX):
        import open_clip  # noqa: PLC0415
        from open_clip.model import _build_vision_tower  # noqa: PLC0415  (image tower alone, as stage 2 does)

        arch = name[len(OPEN_CLIP_PREFIX):]
        cfg = open_clip.get_model_config(arch)
        if cfg is None:
            raise SystemExit(f"open_clip does not know the architecture '{arch}' (open_clip.list_models()).")
        if need_text:
            model = open_clip.create_model(arch, pretrained=None).float().eval()
            visual = model.visual
        else:
            model, visual = None, _build_vision_tower(cfg["embed_dim"], cfg["vision_cfg"], cfg.get("quick_gelu", False))
        scale = torch.tensor(math.log(1 / 0.07))
        return {"visual": visual.float().eval(), "clip": model, "logit_scale": scale,
                "preprocess": Preprocess.of(cfg["vision_cfg"].get("image_size", 224))}
    arch = tiny_arch or ARCHITECTURES[name]
    if need_text:
        model = clip.model.CLIP(**arch).float().eval()
        visual, scale = model.visual, model.logit_scale.detach().clone()
    else:
        width = arch["vision_width"]
        model = None
        visual = clip.model.VisionTransformer(
            input_resolution=arch["image_resolution"], patch_size=arch["vision_patch_size"], width=width,
            layers=arch["vision_layers"], heads=width // 64, output_dim=arch["embed_dim"]).float().eval()
        scale = torch.tensor(math.log(1 / 0.07))
    return {"visual": visual, "clip": model, "logit_scale": scale, "preprocess": Preprocess.of(arch["image_resolution"])}


def build_models(args, device: torch.device) -> Models:
    tiny = {"teacher": tiny_architecture(TINY_TEACHER), "student": tiny_architecture(TINY_STUDENT)} if args.tiny else {}
    names = {"teacher": "tiny teacher", "student": "tiny student"} if args.tiny else \
        {"teacher": args.teacher, "student": args.student}
    # The teacher's text tower is built only where a setting re-encodes classes with it.
    need_text = any(s in args.settings for s in TEXT_SETTINGS)
    t = _random_backbone(names["teacher"], tiny.get("teacher"), need_text, args.seed)
    s = _random_backbone(names["student"], tiny.get("student"), False, args.seed + 1)
    # The student's batch, re-fitted to the teacher's input size if they differ (as in stage 2).
    fit = TowerInput(s["preprocess"], t["preprocess"])

    # Depths are clamped to the number of layers (tiny models have 2-3).
    def layers(visual):
        return len(visual.transformer.resblocks)
    text_layers = len(text_tower(t["clip"]).transformer.resblocks) if t["clip"] is not None else 0
    depths = {"teacher_vision": min(args.depth, layers(t["visual"])),
              "teacher_text": min(args.depth, text_layers),
              "student_vision": min(args.depth, layers(s["visual"]))}
    t_visual_width = t["visual"].class_embedding.shape[0]
    teacher_prompts = [torch.randn(args.n_ctx, t_visual_width) * 0.02 for _ in range(depths["teacher_vision"])]
    teacher = TeacherImageScorer(t["visual"], t["logit_scale"], teacher_prompts,
                                 input_adapter=None if fit.identity else fit)
    text_encoder = None
    if t["clip"] is not None:
        text_encoder = PromptedTextEncoder(t["clip"], args.n_ctx, depths["teacher_text"], "a photo of a")
        for p in text_encoder.parameters():
            p.requires_grad_(False)
        text_encoder.eval()
    class_dim = teacher.image_encoder.output_dim
    student = PromptKDStudent(s["visual"], torch.tensor(t["logit_scale"].item()),
                              class_dim=class_dim, n_ctx=args.n_ctx, depth=depths["student_vision"])
    if args.precision == "fp16":  # GPU only: frozen backbones in half precision, as CLIP ships
        to_half(t["clip"] if t["clip"] is not None else t["visual"])
        to_half(s["visual"])
    teacher.to(device)
    if text_encoder is not None:
        text_encoder.to(device)
    student.to(device)
    student_clip = None
    if any(n.startswith(STUDENT_PREFIX) for n in args.settings):  # method students: text tower too
        student_clip = _random_backbone(names["student"], tiny.get("student"), True, args.seed + 2)["clip"]
        if args.precision == "fp16":
            to_half(student_clip)
        student_clip.to(device)
    return Models(teacher, text_encoder, student, class_dim, s["preprocess"].size[0], depths, names, student_clip)


def student_settings() -> list[str]:
    """train/student:<Method> for every registered prompt-learning trainer (imports Dassl)."""
    from promptkd.trainers.plugin import register  # noqa: PLC0415
    from promptkd.trainers.students import method_students  # noqa: PLC0415

    register()  # the methods in Dassl's TRAINER_REGISTRY

    return [STUDENT_PREFIX + n for n in method_students()]


def student_cfg(clip_model, depth: int):
    """Dassl's default config with this plugin's keys: each method's TRAINER.<NODE> defaults, with
    every prompt depth clamped to `depth` and to the student CLIP's towers."""
    from dassl.config import get_cfg_default  # noqa: PLC0415

    from promptkd.trainers.config import extend_cfg  # noqa: PLC0415

    cfg = get_cfg_default()
    extend_cfg(cfg)
    towers = min(len(clip_model.visual.transformer.resblocks), len(text_tower(clip_model).transformer.resblocks))
    for node in cfg.TRAINER.values():
        for key in [k for k in node if "PROMPT_DEPTH" in k and isinstance(node[k], int)]:
            node[key] = min(node[key], depth, towers)
    return cfg


@dataclass
class MethodStudent:
    method: torch.nn.Module
    optimizer: torch.optim.Optimizer
    node: str
    settings: dict  # its TRAINER.<NODE> keys as built
    primed: bool = False


def build_students(models: Models, args, classnames: list[str], device: torch.device) -> tuple[dict, dict]:
    """({setting: MethodStudent}, {setting: why skipped}) for the requested method students. One
    without prompts (ZeroshotCLIP) is skipped when it came from `--settings students`."""
    from promptkd.errors import ConfigError  # noqa: PLC0415
    from promptkd.trainers.students import build_method_student  # noqa: PLC0415

    cfg = student_cfg(models.student_clip, args.depth)
    built, skipped = {}, {}
    for name in [n for n in args.settings if n.startswith(STUDENT_PREFIX)]:
        torch.manual_seed(args.seed + 3)
        try:
            method, cls = build_method_student(name[len(STUDENT_PREFIX):], cfg, models.student_clip, classnames,
                                               regularisers=True)
        except ConfigError as e:
            if name not in args.explicit_settings:
                skipped[name] = str(e)
                continue
            raise SystemExit(f"--settings {name}: {e}") from e
        method.to(device)
        trainable = [p for p in method.parameters() if p.requires_grad]
        optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=0.9, weight_decay=5e-4)
        node = dict(cfg.TRAINER[cls.CFG_NODE])
        node["regularisers"] = bool(getattr(method, "regularise", False))
        node["image_conditioned"] = bool(method.image_conditioned)
        built[name] = MethodStudent(method, optimizer, cls.CFG_NODE, node)
    return built, skipped


class Bench:
    """The four settings for one number of classes, as zero-argument callables."""

    def __init__(self, models: Models, args, n_classes: int, device: torch.device):
        self.m = models
        self.device = device
        self.batch = args.batch
        self.test_batch = args.test_batch or args.batch
        self.chunk = args.text_chunk
        g = torch.Generator().manual_seed(args.seed + n_classes)
        r = models.resolution
        self.images = torch.randn(self.batch, 3, r, r, generator=g).to(device)
        self.test_images = torch.randn(self.test_batch, 3, r, r, generator=g).to(device)
        # "Stored" class vectors: a fixed, L2-normalised [C, D] tensor (values do not matter).
        self.vectors = F.normalize(torch.randn(n_classes, models.class_dim, generator=g), dim=-1).to(device)
        classnames = [f"class number {i}" for i in range(n_classes)]
        self.tokens = models.text_encoder.tokenize(classnames).to(device) if models.text_encoder else None
        self.students, self.skipped_students = ({}, {}) if models.student_clip is None else \
            build_students(models, args, classnames, device)
        trainable = [p for p in models.student.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(trainable, lr=args.lr, momentum=0.9, weight_decay=5e-4)
        self.temperature, self.kd_weight = 1.0, args.kd_weight
        if args.precision == "fp32":
            self.autocast = contextlib.nullcontext
        else:
            dtype = torch.float16 if args.precision == "fp16" else torch.bfloat16
            self.autocast = lambda: torch.autocast(device_type=device.type, dtype=dtype)
        self.scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None

    @torch.no_grad()
    def encode_classes(self) -> torch.Tensor:
        """The published path: every class prompt through the prompted teacher text encoder."""
        with self.autocast():
            feats = [self.m.text_encoder(self.tokens[i:i + self.chunk]).float()
                     for i in range(0, len(self.tokens), self.chunk)]
        return F.normalize(torch.cat(feats), dim=-1)

    def _train_step(self, vectors: torch.Tensor) -> None:
        self.m.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            t_logits = self.m.teacher(self.images, vectors)  # no grad inside
            s_logits = self.m.student(self.images, vectors)
            loss = kd_loss(s_logits, t_logits, self.temperature, self.kd_weight)
        self._backward_and_step(loss)

    def _backward_and_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        optimizer = optimizer or self.optimizer
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            loss.backward()
            optimizer.step()

    def train_ours(self) -> None:
        self._train_step(self.vectors)

    def train_published(self) -> None:
        self._train_step(self.encode_classes())

    @torch.no_grad()
    def infer_ours(self) -> torch.Tensor:
        self.m.student.eval()
        with self.autocast():
            return self.m.student(self.test_images, self.vectors)

    @torch.no_grad()
    def infer_published(self) -> torch.Tensor:
        self.m.student.eval()
        vectors = self.encode_classes()
        with self.autocast():
            self.m.teacher(self.test_images, vectors)  # computed and discarded, as published
            return self.m.student(self.test_images, vectors)

    # Parts of a training step, each alone.
    def part_text_encode(self) -> None:
        self.encode_classes()

    def part_teacher_image(self) -> None:
        with self.autocast():
            self.m.teacher(self.images, self.vectors)

    def train_method_student(self, student: MethodStudent) -> None:
        """A method student's step: the teacher on the stored class vectors (no grad), the method's
        own text features of the same classes (once per step), its regularisers, KL, SGD."""
        method = student.method
        method.train()
        student.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            t_logits = self.m.teacher(self.images, self.vectors)
            out = method(self.images)
            extra = method.extra_losses(out, None) if getattr(method, "regularise", False) else {}
        # Scored in fp32 outside autocast, as the trainer does.
        loss = kd_loss(out["logits"].float(), t_logits.float(), self.temperature, self.kd_weight)
        loss = loss + sum(v.float() for v in extra.values())
        self._backward_and_step(loss, student.optimizer)

    def part_student_train(self) -> None:
        self.m.student.train()
        self.optimizer.zero_grad(set_to_none=True)
        with self.autocast():
            s_logits = self.m.student(self.images, self.vectors)
            loss = kd_loss(s_logits, self._teacher_logits, self.temperature, self.kd_weight)
        self._backward_and_step(loss)

    def setting(self, name: str):
        """(callable, items per call, unit) of a setting."""
        if name == "part/student-train" and not hasattr(self, "_teacher_logits"):
            with self.autocast():  # once, outside the FLOP count and the timing
                self._teacher_logits = self.m.teacher(self.images, self.vectors)
        if name.startswith(STUDENT_PREFIX):
            student = self.students[name]
            if not student.primed:  # once, outside the FLOP count and the timing: a method builds
                self.train_method_student(student)  # one-off state at its first step (PromptSRC's
                student.primed = True  # frozen template-ensemble text features)
            return (lambda: self.train_method_student(student)), 1, "step"
        return {"train/ours": (self.train_ours, 1, "step"),
                "train/published": (self.train_published, 1, "step"),
                "infer/ours": (self.infer_ours, self.test_batch, "image"),
                "infer/published": (self.infer_published, self.test_batch, "image"),
                "part/text-encode": (self.part_text_encode, 1, "call"),
                "part/teacher-image": (self.part_teacher_image, 1, "call"),
                "part/student-train": (self.part_student_train, 1, "step")}[name]


def measure(bench: "Bench", names: list[str], device: torch.device, warmup: int, repeats: int) -> dict:
    """FLOPs once per setting (untimed); then warm-up; then `repeats` rounds that run every
    setting once each, interleaved, so that a change in machine load hits all settings alike."""
    calls = {n: bench.setting(n) for n in names}
    flops = {n: count_flops(calls[n][0]) for n in names}
    for n in names:
        for _ in range(warmup):
            calls[n][0]()
    times = {n: [] for n in names}
    cpu_times = {n: [] for n in names}
    others = {n: [] for n in names}
    peaks = {n: [] for n in names}
    for _ in range(repeats):
        for n in names:
            fn = calls[n][0]
            with PeakMemory(device) as mem:
                sync(device)
                with OtherLoad() as load:
                    start, cpu_start = time.perf_counter(), time.process_time()
                    fn()
                    sync(device)
                    times[n].append(time.perf_counter() - start)
                    cpu_times[n].append(time.process_time() - cpu_start)
            others[n].append(load.cores)
            peaks[n].append(mem)
    out = {}
    for n in names:
        per = calls[n][1]
        seconds = statistics.median(times[n]) / per
        known = [m.peak_bytes for m in peaks[n] if m.peak_bytes is not None]
        loads = [x for x in others[n] if x is not None]
        out[n] = {"seconds": seconds, "flops": flops[n] / per, "per_call": per, "unit": calls[n][2],
                  "min_seconds": min(times[n]) / per,
                  "cpu_seconds": statistics.median(cpu_times[n]) / per,
                  "raw_seconds_per_call": times[n], "raw_cpu_seconds_per_call": cpu_times[n],
                  "gflops_per_second": flops[n] / per / seconds / 1e9 if seconds > 0 else None,
                  "peak_mem_bytes": max(known) if known else None,
                  "peak_mem_absolute_bytes": max(m.absolute_bytes or 0 for m in peaks[n]),
                  "memory_kind": peaks[n][0].kind,
                  "other_load_cores": statistics.mean(loads) if loads else None,
                  "other_load_cores_per_run": others[n]}
    return out


# ----------------------------------------------------------------------------------------------
# Report

def _fmt_time(s: float) -> str:
    return f"{s * 1e3:.1f} ms" if s < 1 else f"{s:.2f} s"


def _fmt_mem(b) -> str:
    return "n/a" if b is None else f"{b / MiB:.0f} MiB"


def ratios(results: dict) -> list[dict]:
    out = []
    for c, settings in results.items():
        for kind, unit in (("train", "step"), ("infer", "image")):
            ours, pub = settings.get(f"{kind}/ours"), settings.get(f"{kind}/published")
            if not ours or not pub:
                continue
            t_ratio = pub["seconds"] / ours["seconds"]
            f_ratio = pub["flops"] / ours["flops"]
            pct = 100.0 * t_ratio / f_ratio
            out.append({"classes": c, "comparison": f"{kind} per {unit}", "time_ratio": t_ratio,
                        "flop_ratio": f_ratio, "time_ratio_pct_of_flop_ratio": pct,
                        "goal_met": pct >= GOAL_PERCENT,
                        # Less sensitive to other jobs on a shared machine (noise only adds time):
                        "min_time_ratio_pct_of_flop_ratio": 100.0 * pub["min_seconds"] / ours["min_seconds"] / f_ratio,
                        "cpu_time_ratio_pct_of_flop_ratio": 100.0 * pub["cpu_seconds"] / ours["cpu_seconds"] / f_ratio
                        if ours["cpu_seconds"] > 0 else None})
    return out


def student_ratios(results: dict) -> list[dict]:
    """Each method student's step against the paper's (train/ours), where both were measured."""
    out = []
    for c, settings in results.items():
        ours = settings.get("train/ours")
        for name, r in settings.items():
            if name.startswith(STUDENT_PREFIX) and ours:
                out.append({"classes": c, "student": name[len(STUDENT_PREFIX):],
                            "time_ratio": r["seconds"] / ours["seconds"], "flop_ratio": r["flops"] / ours["flops"]})
    return out


def render(report: dict) -> str:
    from tabulate import tabulate

    m, cfg = report["machine"], report["config"]
    lines = [
        f"machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, "
        f"{m['torch_threads']} threads, device {m['device']}" + (f" ({m['gpu']})" if "gpu" in m else "")
        + (f", RAM {m['ram_gib']} GiB" if "ram_gib" in m else ""),
        f"models: teacher {cfg['teacher']} (vision prompts depth {cfg['depths']['teacher_vision']}, "
        f"text prompts depth {cfg['depths']['teacher_text']}, {cfg['n_ctx']} tokens), student {cfg['student']} "
        f"(vision prompts depth {cfg['depths']['student_vision']}, projector {cfg['student_dim']}->"
        f"{cfg['class_dim']}); random weights; {cfg['precision']}; train batch {cfg['batch']}, test batch "
        f"{cfg['test_batch']}; text re-encoding in chunks of {cfg['text_chunk']}",
        f"timing: median of {cfg['repeats']} run(s) after {cfg['warmup']} warm-up, settings interleaved "
        "per round; FLOPs counted once "
        "(FlopCounterMode, matmul/conv/attention; 1 multiply-add = 2 FLOPs)",
        "",
    ]
    rows = []
    for c, settings in report["results"].items():
        for name, r in settings.items():
            unit = r.get("unit", "step")
            rows.append([c, name, unit, _fmt_time(r["seconds"]), _fmt_time(r["min_seconds"]),
                         _fmt_time(r["cpu_seconds"]), f"{r['flops'] / 1e9:,.1f}",
                         f"{r['gflops_per_second']:.1f}" if r["gflops_per_second"] else "n/a",
                         _fmt_mem(r["peak_mem_bytes"]), len(r["raw_seconds_per_call"]),
                         "n/a" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f}"])
    lines.append(tabulate(rows, headers=["classes", "setting", "per", "time", "min time", "CPU time", "GFLOPs",
                                         "GFLOP/s",
                                         "peak mem", "runs", "other load"], tablefmt="github",
                          disable_numparse=True))

    def pct(x):
        return "n/a" if x is None else f"{x:.0f}%"

    rrows = [[r["classes"], r["comparison"], f"{r['time_ratio']:.2f}x", f"{r['flop_ratio']:.2f}x",
              pct(r["time_ratio_pct_of_flop_ratio"]), "yes" if r["goal_met"] else "no",
              pct(r["min_time_ratio_pct_of_flop_ratio"]), pct(r["cpu_time_ratio_pct_of_flop_ratio"])]
             for r in report["ratios"]]
    if rrows:  # only where both the published and our settings were measured
        lines.append("")
        lines.append(tabulate(rrows, headers=["classes", "published / ours", "time ratio", "FLOP ratio",
                                              "time ratio as % of FLOP ratio", f">= {GOAL_PERCENT:.0f}%",
                                              "same, min times", "same, CPU times"],
                              tablefmt="github", disable_numparse=True))
    if report.get("student_ratios"):
        lines.append("")
        lines.append(tabulate([[r["classes"], r["student"], f"{r['time_ratio']:.2f}x", f"{r['flop_ratio']:.2f}x"]
                               for r in report["student_ratios"]],
                              headers=["classes", "method student", "time / train/ours", "FLOPs / train/ours"],
                              tablefmt="github", disable_numparse=True))
    for name, why in report["config"].get("students_skipped", {}).items():
        lines.append(f"{name}: skipped ({why})")
    kinds = {r["memory_kind"] for s in report["results"].values() for r in s.values()}
    lines.append("")
    lines.append("peak mem: " + "; ".join(sorted(kinds)))
    lines.append("time: median wall time; min time: fastest run; GFLOP/s from the median; CPU time: this "
                 "process's user+system CPU time (median)")
    lines.append("other load: mean CPU cores used by other processes during the timed runs "
                 "(a shared machine inflates wall times)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[100, 1000], help="numbers of classes C")
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--test-batch", type=int, default=None,
                   help="test batch size for the inference settings (default: --batch; the published "
                        "configs test with 100, which spreads the per-batch re-encoding over more images)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per setting (median reported)")
    p.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--teacher", default="ViT-L/14",
                   help=f"{' or '.join(sorted(ARCHITECTURES))}, or open_clip:<architecture> (e.g. "
                        "open_clip:ViT-H-14-quickgelu; random weights)")
    p.add_argument("--student", default="ViT-B/16", help="as --teacher")
    p.add_argument("--depth", type=int, default=9, help="prompt depth (vision and text; clamped to layers)")
    p.add_argument("--n-ctx", type=int, default=4, help="prompt tokens per layer")
    p.add_argument("--text-chunk", type=int, default=256, help="class prompts per text-encoder call")
    p.add_argument("--lr", type=float, default=0.005)
    p.add_argument("--kd-weight", type=float, default=1000.0)
    p.add_argument("--settings", nargs="+", default=list(SETTINGS), metavar="SETTING",
                   help=f"settings to measure: {', '.join(SETTINGS + PARTS)}, {STUDENT_PREFIX}<Method> or "
                        f"'{STUDENTS}' (every method student; the part/* ones time pieces of a training step)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny random CLIPs (promptkd.demo.tiny) for a smoke run")
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON")
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be >= 2 (the projector's BatchNorm needs more than one sample).")
    for role in ("teacher", "student"):
        name = getattr(args, role)
        if name not in ARCHITECTURES and not name.startswith(OPEN_CLIP_PREFIX):
            p.error(f"--{role} {name}: use one of {sorted(ARCHITECTURES)} or open_clip:<architecture>.")
    if args.repeats < 1 or args.warmup < 0 or args.text_chunk < 1:
        p.error("--repeats and --text-chunk must be >= 1, --warmup >= 0.")
    args.explicit_settings = [n for n in args.settings if n != STUDENTS]
    known, registered = set(SETTINGS + PARTS), []
    if any(n == STUDENTS or n.startswith(STUDENT_PREFIX) for n in args.settings):
        if args.student.startswith(OPEN_CLIP_PREFIX):
            p.error(f"--settings {STUDENT_PREFIX}*: method students are built on an OpenAI architecture "
                    f"({' or '.join(sorted(ARCHITECTURES))}), not --student {args.student}.")
        registered = student_settings()
        known |= set(registered)
    unknown = [n for n in args.explicit_settings if n not in known]
    if unknown:
        p.error(f"--settings {' '.join(unknown)}: not a setting; use {', '.join(sorted(known))} or '{STUDENTS}'.")
    expanded = []
    for n in args.settings:
        for m in (registered if n == STUDENTS else [n]):
            if m not in expanded:
                expanded.append(m)
    args.settings = expanded
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cpu" and args.precision == "fp16":
        raise SystemExit("--precision fp16 needs a GPU; on CPU use fp32 or bf16 (autocast).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but CUDA is not available; use --device cpu.")
    if args.threads:
        torch.set_num_threads(args.threads)
    models = build_models(args, device)
    report = {
        "machine": machine_info(device),
        "config": {"teacher": models.names["teacher"], "student": models.names["student"],
                   "depths": models.depths, "n_ctx": args.n_ctx, "class_dim": models.class_dim,
                   "student_dim": models.student.image_encoder.output_dim, "precision": args.precision,
                   "batch": args.batch, "test_batch": args.test_batch or args.batch,
                   "text_chunk": args.text_chunk, "repeats": args.repeats, "warmup": args.warmup,
                   "classes": args.classes, "tiny": args.tiny},
        "results": {},
    }
    for c in args.classes:
        bench = Bench(models, args, c, device)
        names = [s for s in SETTINGS + PARTS if s in args.settings] + list(bench.students)
        report["results"][str(c)] = measure(bench, names, device, args.warmup, args.repeats)
        report["config"]["students"] = {n: st.settings for n, st in bench.students.items()}
        report["config"]["students_skipped"] = bench.skipped_students
        del bench
    report["ratios"] = ratios(report["results"])
    report["student_ratios"] = student_ratios(report["results"])
    emit(report, render(report), args.json)
    return report


if __name__ == "__main__":
    main()
