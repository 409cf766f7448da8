"""One command for a GPU: the CUDA test tier, then the figures of what users train, in one folder.

    python -m benchmarks.gpu_report --out OUT             # one GPU: about 4 min on an H100 (+ the tier)
    python -m benchmarks.gpu_report --out OUT --smoke     # tiny shapes on the CPU: the suite's rehearsal

`scripts/gpu_check.sh OUT [--wheelhouse DIR]` installs the project from an offline wheelhouse
first (docs/gpu.md). Writes OUT/gpu_report.md (one table), OUT/gpu_report.json (the same rows
and the machine), OUT/tier.xml and OUT/tier.log (the tier's JUnit report and output).

1. The CUDA tier (`pytest -m cuda tests/gpu`, PROMPTKD_REQUIRE_DASSL=1): its verdict comes from
   the JUnit report. It fails when no test ran (everything skipped: no GPU, no Dassl) or any
   failed; the command then exits 1 (after writing the figures).
2. With full-size random weights (nothing is downloaded; time and memory do not depend on the
   values), each in the PREC the shipped configs train with (read from configs/trainers: fp16),
   some also in amp and bf16:
   * the ViT-L/14 teacher step (PromptSRC losses, depth-9 prompts, batch 8) at 100 / 500 / 1000
     classes, GRAD_CHECKPOINT off and both: s/step, peak memory above the model and absolute;
   * the published code's step on the same GPU: the student step plus re-encoding every class
     prompt through the teacher's prompted text tower (no grad) at each step;
   * the PromptKD student step (ViT-B/16 student, ViT-L/14 teacher) online and from a teacher
     cache on disk, at batch 8 / 32 / 128: images/s and memory;
   * the data loader: decode + the configs' train transform, images/s with its worker count, for
     INPUT.DECODER pil and torchvision, and which one keeps up with the fastest student step;
   * evaluation (student + class vectors, no grad): images/s;
   * the exported student (ONNX): images/s with the execution provider onnxruntime really used.

On the CPU peak memory is not measured (n/a). Fp32 matmuls use TF32 (as a run with
TRAIN.DETERMINISTIC False does); cuDNN benchmark mode is on.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET

import torch
import torch.nn.functional as F

from benchmarks.common import ARCHITECTURES, REPO, machine_info, tiny_architecture
from promptkd.backbones import clip
from promptkd.encoders import PromptedTextEncoder
from promptkd.losses import kd_loss
from promptkd.precision import Precision, configure_matmul
from promptkd.student import PromptKDStudent, TeacherImageScorer, teacher_logits
from promptkd.teacher import IVLPTeacher
from promptkd.demo.tiny import TINY_STUDENT, TINY_TEACHER

TEACHER_CONFIG = "configs/trainers/PromptKDTeacher/vit_l14_c2_ep20_batch8_4+4ctx.yaml"
STUDENT_CONFIG = "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml"
GiB = 2**30


# --- 1. the tier ------------------------------------------------------------------------------

def tier_verdict(junit_path: str, returncode: int) -> dict:
    """Counts from pytest's JUnit report; `ok` only when tests ran, none failed and pytest said 0."""
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    try:
        root = ET.parse(junit_path).getroot()
        suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
        for suite in suites:
            for key in counts:
                counts[key] += int(suite.get(key, 0))
    except (OSError, ET.ParseError) as err:
        return {**counts, "passed": 0, "returncode": returncode, "ok": False,
                "why": f"no JUnit report ({err}): pytest did not run the tier"}
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    why = ("no test ran (all skipped: no GPU, or Dassl missing)" if passed == 0 and not counts["failures"] + counts["errors"]
           else f"{counts['failures']} failed, {counts['errors']} errors" if counts["failures"] + counts["errors"]
           else f"pytest exited {returncode}" if returncode != 0 else "")
    return {**counts, "passed": passed, "returncode": returncode, "ok": not why, "why": why}


def run_tier(out: str, timeout: float) -> dict:
    junit, log = os.path.join(out, "tier.xml"), os.path.join(out, "tier.log")
    if os.path.exists(junit):
        os.remove(junit)
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-n", "0", "-p", "no:cacheprovider",
           f"--junitxml={junit}", "tests/gpu"]
    env = {**os.environ, "PROMPTKD_REQUIRE_DASSL": "1"}
    start = time.perf_counter()
    try:
        proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        code, text = proc.returncode, proc.stdout + proc.stderr
    except subprocess.TimeoutExpired as err:
        code, text = 124, f"{err.stdout or ''}{err.stderr or ''}\nthe tier ran past {timeout:.0f} s"
    with open(log, "w") as f:
        f.write(text)
    verdict = tier_verdict(junit, code)
    lines = [line for line in text.strip().splitlines() if line.strip()]
    return {**verdict, "summary": lines[-1] if lines else "", "seconds": round(time.perf_counter() - start, 1),
            "command": " ".join(cmd[1:])}


# --- measuring ----------------------------------------------------------------------------------

def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fn, device, warmup: int, repeats: int) -> dict:
    """Median s/call over `repeats` after `warmup`; on a GPU the peak allocation during the
    timed calls above what was allocated before them (the model, its gradients and optimiser
    state after the warm-up), and absolute."""
    for _ in range(warmup):
        fn()
    sync(device)
    base = None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    out = {"s_per_step": sorted(times)[len(times) // 2]}
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device)
        out.update(mem_above_model=peak - base, mem_absolute=peak)
    return out


def free(device):
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def shipped_prec(path: str) -> str:
    import yaml
    with open(os.path.join(REPO, path)) as f:
        cfg = yaml.safe_load(f)
    return next(str(node["PREC"]) for node in cfg["TRAINER"].values() if isinstance(node, dict) and "PREC" in node)


def label(name: str, smoke: bool) -> str:
    return f"tiny ({name} shape)" if smoke else name


def prec_label(asked: str, precision: Precision) -> str:
    """PREC as asked, and what it ran as where they differ (amp is bf16 autocast on a CPU)."""
    return asked if asked == precision.prec else f"{asked} (ran as {precision.prec})"


def arch(name: str, smoke: bool) -> dict:
    return tiny_architecture(TINY_TEACHER if name == "ViT-L/14" else TINY_STUDENT) if smoke else ARCHITECTURES[name]


def random_clip(name, smoke, device, precision: Precision):
    """A random-weight CLIP built on the device, its frozen weights in the mode's dtype (fp16; amp /
    bf16: autocast's compute dtype, as the trainers hold them, `Precision.cast_frozen`)."""
    torch.manual_seed(0)
    with torch.device(device):
        model = clip.model.CLIP(**arch(name, smoke)).float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return precision.cast_frozen(model)


def stepper(precision: Precision, optimizer):
    """backward + step as the trainer does it (GradScaler under amp on a GPU)."""
    def step(loss):
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            loss.backward()
            optimizer.step()
    return step


# --- 2. the rows ------------------------------------------------------------------------------

def teacher_rows(args, device, prec: str, classes: list[int], modes: list[str], t_clip=None) -> list[dict]:
    precision = Precision.resolve(prec, device)
    t_clip = t_clip or random_clip("ViT-L/14", args.smoke, device, precision)
    rows, g = [], torch.Generator().manual_seed(1)
    a = arch("ViT-L/14", args.smoke)
    depth_v, depth_t = min(9, a["vision_layers"]), min(9, a["transformer_layers"])
    r, dim = a["image_resolution"], a["embed_dim"]
    images = torch.randn(args.teacher_batch, 3, r, r, generator=g).to(device)
    for c in classes:
        labels = torch.randint(0, c, (args.teacher_batch,), generator=g).to(device)
        model = IVLPTeacher(t_clip, [f"class number {i}" for i in range(c)], 4, depth_t, "a photo of a", 4, depth_v,
                            regularise=True).to(device)
        model.zs_text = F.normalize(torch.randn(c, dim, generator=g), dim=-1).to(device)  # frozen features' stand-in
        optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.0025, momentum=0.9)
        backward = stepper(precision, optimizer)
        model.train()
        for mode in modes:
            model.set_grad_checkpoint(mode == "both", mode == "both")

            def step():
                with precision.autocast():
                    out = model(images)
                with torch.autocast(device.type, enabled=False):
                    loss = F.cross_entropy(out["logits"].float(), labels) + sum(model.extra_losses(out, labels).values())
                backward(loss)
            r_ = measure(step, device, args.warmup, args.repeats)
            rows.append({"what": "teacher step", "model": label("ViT-L/14", args.smoke), "classes": c,
                         "batch": args.teacher_batch, "prec": prec_label(prec, precision), "grad_checkpoint": mode,
                         "images_per_s": args.teacher_batch / r_["s_per_step"], **r_})
        del model, optimizer
        free(device)
    return rows


class StudentBench:
    """ViT-L/14 teacher image side (deep prompts) + ViT-B/16 PromptKD student, one PREC."""

    def __init__(self, args, device, prec, folder, t_clip=None):
        from promptkd.teacher_cache import TeacherCache
        self.device, self.precision = device, Precision.resolve(prec, device)
        self.t_clip = t_clip or random_clip("ViT-L/14", args.smoke, device, self.precision)
        s_clip = random_clip("ViT-B/16", args.smoke, device, self.precision)
        ta, sa = arch("ViT-L/14", args.smoke), arch("ViT-B/16", args.smoke)
        g = torch.Generator().manual_seed(2)
        prompts = [torch.randn(4, ta["vision_width"], generator=g) * 0.02 for _ in range(min(9, ta["vision_layers"]))]
        self.scale = torch.tensor(4.6052)
        self.teacher = TeacherImageScorer(self.t_clip.visual, self.scale, prompts).to(device)
        self.student = PromptKDStudent(s_clip.visual, self.scale, class_dim=ta["embed_dim"], n_ctx=4,
                                       depth=min(9, sa["vision_layers"])).to(device)
        self.optimizer = torch.optim.SGD([p for p in self.student.parameters() if p.requires_grad], lr=0.005,
                                         momentum=0.9)
        self.backward = stepper(self.precision, self.optimizer)
        self.resolution, self.dim = ta["image_resolution"], ta["embed_dim"]
        n = 4 * max(args.student_batches)
        cache = TeacherCache.create(os.path.join(folder, f"cache-{prec}"), {"bench": prec}, n, 1, self.dim, "fp16")
        cache.add([0] * n, list(range(n)), F.normalize(torch.randn(n, self.dim, generator=g), dim=-1))
        self.cache = TeacherCache.open(cache.directory, {"bench": prec}, 1)
        self.n_cached, self.step_no = n, 0
        self.g = g

    def batch(self, b, classes):
        self.images = torch.randn(b, 3, self.resolution, self.resolution, generator=self.g).to(self.device)
        self.vectors = F.normalize(torch.randn(classes, self.dim, generator=self.g), dim=-1).to(self.device)

    def _step(self, t_logits):
        self.student.train()
        with self.precision.autocast():
            s_logits = self.student(self.images, self.vectors)
        self.backward(kd_loss(s_logits, t_logits, 1.0, 1000.0))

    def online(self):
        with self.precision.autocast():
            e = self.teacher.embed(self.images)
        self._step(teacher_logits(e, self.scale, self.vectors))

    def cached(self):
        b = len(self.images)
        start = self.step_no * b % (self.n_cached - b + 1)
        self.step_no += 1
        idx = list(range(start, start + b))
        e = self.cache.lookup([0] * b, idx).to(self.device, non_blocking=True)  # as the trainer reads it
        self._step(teacher_logits(e, self.scale, self.vectors))

    def published(self, encoder, tokens):
        """The published step: every class prompt through the teacher's prompted text tower
        (no grad, 256 prompts per call), then the online step on those class features."""
        with torch.no_grad(), self.precision.autocast():
            feats = torch.cat([encoder(tokens[i:i + 256]).float() for i in range(0, len(tokens), 256)])
        self.vectors = F.normalize(feats, dim=-1)
        self.online()

    def evaluate(self):
        self.student.eval()
        with torch.no_grad(), self.precision.autocast():
            self.student(self.images, self.vectors)


def student_rows(args, device, prec, folder, batches, with_published: bool, with_eval: bool) -> list[dict]:
    bench, rows = StudentBench(args, device, prec, folder), []
    p = prec_label(prec, bench.precision)
    pair = f"{label('ViT-B/16', args.smoke)} <- {label('ViT-L/14', args.smoke)}"
    for b in batches:
        bench.batch(b, args.eval_classes)
        for name, fn in (("student step, online teacher", bench.online), ("student step, cached teacher", bench.cached)):
            r = measure(fn, device, args.warmup, args.repeats)
            rows.append({"what": name, "model": pair, "classes": args.eval_classes, "batch": b,
                         "prec": p, "images_per_s": b / r["s_per_step"], **r})
    if with_published:
        a = arch("ViT-L/14", args.smoke)
        encoder = PromptedTextEncoder(bench.t_clip, 4, min(9, a["transformer_layers"]), "a photo of a").to(device)
        for c in args.published_classes:
            bench.batch(args.teacher_batch, c)
            tokens = encoder.tokenize([f"class number {i}" for i in range(c)]).to(device)
            r = measure(lambda: bench.published(encoder, tokens), device, args.warmup, args.repeats)
            rows.append({"what": "published step (re-encodes the class texts)", "model": pair,
                         "classes": c, "batch": args.teacher_batch, "prec": p,
                         "images_per_s": args.teacher_batch / r["s_per_step"], **r})
            bench.batch(args.teacher_batch, c)
            r = measure(bench.online, device, args.warmup, args.repeats)
            rows.append({"what": "  same batch, stored class vectors (ours, online)", "model": pair,
                         "classes": c, "batch": args.teacher_batch, "prec": p,
                         "images_per_s": args.teacher_batch / r["s_per_step"], **r})
    if with_eval:
        b = max(batches)
        bench.batch(b, args.eval_classes)
        r = measure(bench.evaluate, device, args.warmup, args.repeats)
        rows.append({"what": "evaluation (student, no grad)", "model": label("ViT-B/16", args.smoke), "classes": args.eval_classes,
                     "batch": b, "prec": p, "images_per_s": b / r["s_per_step"], **r})
    del bench
    free(device)
    return rows


def write_jpegs(folder: str, n: int, size: tuple) -> list[str]:
    """`n` JPEGs of `size` (w, h) with smooth content (about the size of a photo's file)."""
    import numpy as np
    from PIL import Image
    rng = np.random.default_rng(0)
    os.makedirs(folder, exist_ok=True)
    paths = []
    for i in range(n):
        small = rng.integers(0, 256, (size[1] // 16, size[0] // 16, 3), dtype=np.uint8)
        image = Image.fromarray(small).resize(size, Image.BICUBIC)
        path = os.path.join(folder, f"{i:05d}.jpg")
        image.save(path, quality=90)
        paths.append(path)
    return paths


def train_transform(resolution: int):
    """The student config's train transform, built by Dassl from INPUT.* as in training (falls
    back to the same torchvision pipeline where Dassl is missing)."""
    try:
        from dassl.config import get_cfg_default
        from dassl.data.transforms import build_transform

        from promptkd.trainers.config import extend_cfg
        cfg = get_cfg_default()
        extend_cfg(cfg)
        cfg.merge_from_file(os.path.join(REPO, STUDENT_CONFIG))
        cfg.INPUT.SIZE = (resolution, resolution)
        return build_transform(cfg, is_train=True), "Dassl build_transform of " + STUDENT_CONFIG
    except ImportError:
        from torchvision import transforms as T
        return T.Compose([T.RandomResizedCrop(resolution, interpolation=T.InterpolationMode.BICUBIC),
                          T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize((0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711))]), \
            "torchvision (Dassl not installed)"


class JpegFolder(torch.utils.data.Dataset):
    def __init__(self, paths, transform):
        self.paths, self.transform = paths, transform

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        from PIL import Image
        with Image.open(self.paths[i]) as image:
            return self.transform(image.convert("RGB"))


class TensorJpegFolder(JpegFolder):
    """INPUT.DECODER torchvision: decode_jpeg + the transforms v2 doing what `transform` does."""

    def __init__(self, paths, transform):
        from promptkd.decode import tensor_transform
        super().__init__(paths, tensor_transform(transform))

    def __getitem__(self, i):
        from promptkd.decode import read_tensor
        return self.transform(read_tensor(self.paths[i]))


def loader_verdict(rows: list[dict], need: float | None, workers: int) -> str:
    """Which INPUT.DECODER a GPU run needs: the first (pil, then torchvision) whose loader keeps up
    with the fastest student step measured (the cached teacher's), at this worker count."""
    if need is None:
        return "no student step measured to compare with"
    rate = {r["decoder"]: r["images_per_s"] for r in rows}
    for decoder in ("pil", "torchvision"):
        if rate[decoder] >= need:
            return (f"a GPU run needs INPUT.DECODER {decoder}: {rate[decoder]:.0f} images/s with {workers} workers "
                    f"feed the fastest student step ({need:.0f} images/s)")
    per_worker = rate["torchvision"] / max(workers, 1)
    return (f"neither decoder feeds the fastest student step ({need:.0f} images/s) with {workers} workers: a GPU "
            f"run needs INPUT.DECODER torchvision and about {-(-need // per_worker):.0f} CPU workers "
            f"({per_worker:.0f} images/s each), or caps at {rate['torchvision']:.0f} images/s")


def loader_rows(args, device, folder, measured=()) -> list[dict]:
    import yaml
    with open(os.path.join(REPO, STUDENT_CONFIG)) as f:
        workers = int(yaml.safe_load(f)["DATALOADER"]["NUM_WORKERS"])
    workers = min(workers, os.cpu_count() or 1) if not args.smoke else 1
    resolution = arch("ViT-B/16", args.smoke)["image_resolution"]
    paths = write_jpegs(os.path.join(folder, "jpegs"), args.loader_images, (500, 375))
    transform, how = train_transform(resolution)
    size = sum(os.path.getsize(p) for p in paths) / len(paths)
    rows = []
    for decoder, dataset in (("pil", JpegFolder(paths, transform)), ("torchvision", TensorJpegFolder(paths, transform))):
        loader = torch.utils.data.DataLoader(dataset, batch_size=args.loader_batch, shuffle=True,
                                             num_workers=workers, persistent_workers=workers > 0, drop_last=True,
                                             pin_memory=device.type == "cuda")
        for batch in loader:  # warm-up: forks the workers, fills the page cache
            break
        start, n = time.perf_counter(), 0
        for _ in range(args.loader_epochs):
            for batch in loader:
                batch.to(device, non_blocking=True)
                n += len(batch)
        sync(device)
        seconds = time.perf_counter() - start
        del loader  # its workers end
        rows.append({"what": f"data loader, INPUT.DECODER {decoder} ({workers} workers)",
                     "model": f"500x375 JPEG ~{size / 1024:.0f} KB -> {resolution}", "batch": args.loader_batch,
                     "prec": "", "images_per_s": n / seconds, "s_per_step": seconds / max(n, 1) * args.loader_batch,
                     "workers": workers, "decoder": decoder, "note": how if decoder == "pil" else
                     "decode_jpeg + transforms v2 doing what " + how.split(" of ")[0] + " builds"})
    steps = [r["images_per_s"] for r in measured if r.get("what", "").startswith("student step") and "skipped" not in r]
    verdict = loader_verdict(rows, max(steps) if steps else None, workers)
    for r in rows:
        r["verdict"] = verdict
    rows[-1]["note"] += "; " + verdict
    return rows


def exported_rows(args, device, folder) -> list[dict]:
    from benchmarks import export_speed as es
    why = es.onnx_unavailable()  # the export extra (through promptkd.extras.require), torch >= 2.7
    if why:
        return [{"what": "exported student (ONNX)", "skipped": why}]
    from promptkd.deploy.export_model import export_onnx
    from promptkd.extras import require
    ort = require("onnxruntime", "export", "the GPU report's ONNX row")
    predictor = es.build_predictor("tiny" if args.smoke else "ViT-B/16", args.eval_classes, depth=2 if args.smoke else 9)
    path = os.path.join(folder, "student.onnx")
    export_onnx(predictor, path)
    wanted = (["CUDAExecutionProvider"] if device.type == "cuda" else []) + ["CPUExecutionProvider"]
    available = ort.get_available_providers()
    session = ort.InferenceSession(path, providers=[p for p in wanted if p in available])
    used = session.get_providers()  # what onnxruntime really runs (the CPU build has no CUDA provider)
    name = session.get_inputs()[0].name
    size = predictor.record.preprocess["crop"][0]
    x = torch.randn(args.export_batch, 3, size, size).numpy()
    r = measure(lambda: session.run(None, {name: x}), torch.device("cpu"), args.warmup, args.repeats)  # returns numpy
    return [{"what": "exported student (ONNX)", "model": label("ViT-B/16", args.smoke), "classes": args.eval_classes,
             "batch": args.export_batch, "prec": "fp32", "images_per_s": args.export_batch / r["s_per_step"],
             "s_per_step": r["s_per_step"], "provider": used[0], "note": f"onnxruntime {ort.__version__}, providers "
             f"{', '.join(used)} (available: {', '.join(available)})"}]


# --- the report ---------------------------------------------------------------------------------

def _gib(b):
    return "n/a" if b is None else f"{b / GiB:.2f}"


def render(report: dict) -> str:
    m, tier = report["machine"], report["tier"]
    where = m.get("gpu", m["device"])
    lines = [f"GPU report on {where} (torch {m['torch']}, CUDA {m.get('cuda') or '-'}, {m['cpu']}, "
             f"{m['logical_cpus']} CPUs){' -- smoke: tiny shapes, not figures' if report['smoke'] else ''}",
             f"shipped PREC: teacher {report['shipped_prec']['teacher']}, student {report['shipped_prec']['student']}; "
             f"fp32 matmuls {report['matmul_precision'] or 'as torch defaults'}",
             "CUDA tier: " + ("not run (--no-tier)" if tier.get("skipped_run") else
                              f"{'PASSED' if tier['ok'] else 'FAILED'}: {tier['passed']} passed, {tier['failures']} "
                              f"failed, {tier['errors']} errors, {tier['skipped']} skipped"
                              + (f" ({tier['why']})" if tier.get("why") else "") + f", {tier.get('seconds', 0)} s"),
             "",
             "| measurement | model | classes | batch | PREC | GRAD_CHECKPOINT | s/step | images/s | "
             "GiB above model | GiB absolute | notes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['what']} | | | | | | | | | | skipped: {r['skipped']} |")
            continue
        note = r.get("note", "") if "provider" not in r else f"ran on {r['provider']}; {r.get('note', '')}"
        lines.append(f"| {r['what']} | {r.get('model', '')} | {r.get('classes', '')} | {r.get('batch', '')} | "
                     f"{r.get('prec', '')} | {r.get('grad_checkpoint', '')} | {r['s_per_step']:.4f} | "
                     f"{r['images_per_s']:.1f} | {_gib(r.get('mem_above_model'))} | {_gib(r.get('mem_absolute'))} | "
                     f"{note} |")
    lines.append("")
    lines.append(f"Median of {report['repeats']} timed calls after {report['warmup']} warm-up; memory: "
                 "torch.cuda.max_memory_allocated during the timed calls, above the allocation before them (model, "
                 "gradients, optimiser state) and absolute. Sections took " +
                 ", ".join(f"{k} {v:.0f} s" for k, v in report["seconds"].items()) + ".")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for gpu_report.md / .json and the tier's report")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat: checks the command end to end")
    p.add_argument("--no-tier", action="store_true", help="do not run the CUDA test tier")
    p.add_argument("--tier-timeout", type=float, default=300.0, help="seconds the tier may take")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    s = args.smoke
    args.warmup = (1 if s else 2) if args.warmup is None else args.warmup
    args.repeats = (1 if s else 5) if args.repeats is None else args.repeats
    args.teacher_classes = [4, 6, 8] if s else [100, 500, 1000]
    args.published_classes = [4] if s else [100, 1000]
    args.teacher_batch = 2 if s else 8
    args.student_batches = [2, 3, 4] if s else [8, 32, 128]
    args.eval_classes = 5 if s else 1000
    args.export_batch = 2 if s else 128
    args.loader_images, args.loader_batch, args.loader_epochs = (8, 4, 1) if s else (512, 64, 2)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
        torch.backends.cudnn.benchmark = True
    os.makedirs(args.out, exist_ok=True)
    seconds = {}
    start = time.perf_counter()
    tier = {"skipped_run": True, "ok": True} if args.no_tier else run_tier(args.out, args.tier_timeout)
    seconds["tier"] = time.perf_counter() - start
    matmul = configure_matmul(device, deterministic=False)  # as training with TRAIN.DETERMINISTIC False
    shipped = {"teacher": shipped_prec(TEACHER_CONFIG), "student": shipped_prec(STUDENT_CONFIG)}
    others = [p for p in ("amp", "bf16") if p != shipped["teacher"]]
    rows = []
    with tempfile.TemporaryDirectory(prefix="promptkd-gpu-report-") as folder:
        for name, fn in (
                ("teacher", lambda: teacher_rows(args, device, shipped["teacher"], args.teacher_classes, ["off", "both"])
                 + [r for p in others for r in teacher_rows(args, device, p, args.teacher_classes[:1], ["off"])]),
                ("student", lambda: student_rows(args, device, shipped["student"], folder, args.student_batches,
                                                 with_published=True, with_eval=True)
                 + [r for p in others for r in student_rows(args, device, p, folder, args.student_batches[1:2],
                                                            with_published=False, with_eval=False)]),
                ("loader", lambda: loader_rows(args, device, folder, rows)),
                ("export", lambda: exported_rows(args, device, folder))):
            t0 = time.perf_counter()
            rows += fn()
            seconds[name] = time.perf_counter() - t0
    report = {"machine": {**machine_info(device), "python": platform.python_version(), "loadavg": os.getloadavg()},
              "smoke": args.smoke, "tier": tier, "shipped_prec": shipped, "matmul_precision": matmul,
              "warmup": args.warmup, "repeats": args.repeats, "rows": rows, "seconds": seconds}
    text = render(report)
    print(text)
    with open(os.path.join(args.out, "gpu_report.md"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(args.out, "gpu_report.json"), "w") as f:
        json.dump({**report, "table": text}, f, indent=1)
    if not tier["ok"]:
        print(f"error: the CUDA tier did not pass ({tier.get('why')}); see {os.path.join(args.out, 'tier.log')}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
