"""Benchmark: peak memory and time of one teacher training step, activation checkpointing off / on.

The stage-1 teacher (`IVLPTeacher`: deep prompts in both towers, PromptSRC's regularisers on)
on a full-size random-weight CLIP (default ViT-L/14, prompt depth 9, batch 8), for each
requested number of training classes C and each GRAD_CHECKPOINT mode (off | text | image |
both). Each (C, mode) runs in its own subprocess, so that its memory high-water mark is clean:

  CPU   peak RSS of the step (VmHWM, reset after building) above the RSS after building the
        model, optimiser and inputs ("above the model"); ru_maxrss is reported too
  CUDA  torch.cuda.max_memory_allocated during the step above what was allocated before it

The frozen template-ensemble text features of the regulariser are random unit vectors here
(computing them is a one-off, chunked, no-grad encoding, not part of a step). Printed: time
per step, peak memory, both relative to `off`, and the per-class memory slope of each mode
(least squares over the class counts), plus an extrapolation to `--estimate-classes`.

    python -m benchmarks.teacher_memory                        # C = 25 and 100, off and both, fp32
    python -m benchmarks.teacher_memory --classes 100 --modes off text image both --json out.json
    python -m benchmarks.teacher_memory --device cuda --precision fp16 --classes 100 500
    python -m benchmarks.teacher_memory --tiny --classes 4 8 --batch 2   # seconds: tiny CLIPs

Goal (issue 11): at 100 classes, batch 8, fp32 on CPU, `both` needs <= 1/4 of the memory of
`off` and <= 1.5x its time per step.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import torch
import torch.nn.functional as F


from benchmarks.common import (REPO, ARCHITECTURES, OtherLoad, emit, machine_info, read_status_kib, release_free_memory,
                               reset_peak_rss, tiny_architecture)

from promptkd.backbones import clip
from promptkd.teacher import IVLPTeacher
from promptkd.demo.tiny import TINY_TEACHER

MODES = ("off", "text", "image", "both")
GOAL_MEMORY_FRACTION = 0.25
GOAL_TIME_RATIO = 1.5
GiB, MiB = 2**30, 2**20


# ----------------------------------------------------------------------------------------------
# One (classes, mode) run, in a fresh process

def build(args, device: torch.device):
    arch = tiny_architecture(TINY_TEACHER) if args.tiny else ARCHITECTURES[args.model]
    torch.manual_seed(args.seed)
    clip_model = clip.model.CLIP(**arch).float().eval()
    if args.precision == "fp16":  # PREC fp16: frozen backbone in half, prompts fp32
        clip.model.convert_weights(clip_model)
    depth_v, depth_t = min(args.depth, arch["vision_layers"]), min(args.depth, arch["transformer_layers"])
    classnames = [f"class number {i}" for i in range(args.classes)]
    model = IVLPTeacher(clip_model, classnames, args.n_ctx, depth_t, "a photo of a", args.n_ctx, depth_v,
                        regularise=True).to(device)
    g = torch.Generator().manual_seed(args.seed + 1)
    # Stand-in for the frozen template-ensemble features (their values do not change the cost).
    model.zs_text = F.normalize(torch.randn(args.classes, clip_model.text_projection.shape[1], generator=g),
                                dim=-1).to(device)
    text, image = args.mode in ("text", "both"), args.mode in ("image", "both")
    on = model.set_grad_checkpoint(text, image)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(params, lr=0.0025, momentum=0.9, weight_decay=5e-4)
    r = arch["image_resolution"]
    images = torch.randn(args.batch, 3, r, r, generator=g).to(device)
    labels = torch.randint(0, args.classes, (args.batch,), generator=g).to(device)
    info = {"depth_vision": depth_v, "depth_text": depth_t, "checkpointing": on,
            "backbone_params": sum(p.numel() for p in clip_model.parameters()),
            "backbone_bytes": sum(p.numel() * p.element_size() for p in clip_model.parameters())}
    return model, optimizer, images, labels, info


def train_step(model, optimizer, images, labels) -> float:
    model.train()
    optimizer.zero_grad(set_to_none=True)
    out = model(images)
    loss = F.cross_entropy(out["logits"], labels) + sum(model.extra_losses(out, labels).values())
    loss.backward()
    optimizer.step()
    return float(loss.item())


def worker(args) -> dict:
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, optimizer, images, labels, info = build(args, device)
    release_free_memory(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        kind = "CUDA max_memory_allocated during the step above the allocation before it"
    else:
        reset = reset_peak_rss()
        base = (read_status_kib("VmRSS") or 0) * 1024
        kind = ("CPU peak RSS (VmHWM reset after building) above the RSS after building" if reset
                else "CPU lifetime peak RSS above the RSS after building (VmHWM could not be reset: "
                     "includes building)")
    seconds, cpu_seconds, losses, loads = [], [], [], []
    for _ in range(args.steps):
        with OtherLoad() as load:
            start, cpu_start = time.perf_counter(), time.process_time()
            losses.append(train_step(model, optimizer, images, labels))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            seconds.append(time.perf_counter() - start)
            cpu_seconds.append(time.process_time() - cpu_start)
        loads.append(load.cores)
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = (read_status_kib("VmHWM") or 0) * 1024 - base
    known = [x for x in loads if x is not None]
    return {"classes": args.classes, "mode": args.mode, "batch": args.batch, "precision": args.precision,
            "seconds": statistics.median(seconds), "raw_seconds": seconds,
            "cpu_seconds": statistics.median(cpu_seconds), "losses": losses,
            "peak_above_model_bytes": peak, "model_bytes": base, "memory_kind": kind,
            "ru_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin"
                                                                                     else 1024),
            "other_load_cores": statistics.mean(known) if known else None,
            "loadavg": os.getloadavg(), **info}


def run_in_subprocess(args, classes: int, mode: str) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", __spec__.name, "--worker", out, "--classes", str(classes), "--modes", mode,
               "--batch", str(args.batch), "--precision", args.precision, "--device", args.device,
               "--model", args.model, "--depth", str(args.depth), "--n-ctx", str(args.n_ctx),
               "--steps", str(args.steps), "--seed", str(args.seed)]
        cmd += ["--tiny"] if args.tiny else []
        cmd += ["--threads", str(args.threads)] if args.threads else []
        env = dict(os.environ)
        if args.malloc_mmap_threshold:  # glibc: every allocation above it is its own mapping, freed at once
            env["MALLOC_MMAP_THRESHOLD_"] = str(args.malloc_mmap_threshold)
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            raise RuntimeError(f"benchmark run (classes {classes}, mode {mode}) failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


# ----------------------------------------------------------------------------------------------
# Report

def slope(points: list[tuple[int, float]]):
    """Least-squares (slope, intercept) of bytes against classes; None with < 2 class counts."""
    xs = [x for x, _ in points]
    if len(set(xs)) < 2:
        return None
    mx, my = statistics.mean(xs), statistics.mean(y for _, y in points)
    b = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x in xs)
    return b, my - b * mx


def summarise(results: list[dict], estimate_classes: int) -> dict:
    by = {(r["classes"], r["mode"]): r for r in results}
    rows = []
    for r in results:
        off = by.get((r["classes"], "off"))
        rows.append({**{k: r[k] for k in ("classes", "mode", "seconds", "cpu_seconds", "peak_above_model_bytes",
                                          "other_load_cores")},
                     "memory_vs_off": r["peak_above_model_bytes"] / off["peak_above_model_bytes"] if off else None,
                     "time_vs_off": r["seconds"] / off["seconds"] if off else None,
                     "loss_equals_off": abs(r["losses"][0] - off["losses"][0]) <= 1e-5 * max(1.0, abs(off["losses"][0]))
                     if off else None})
    slopes = {}
    for mode in dict.fromkeys(r["mode"] for r in results):
        fit = slope([(r["classes"], r["peak_above_model_bytes"]) for r in results if r["mode"] == mode])
        if fit:
            b, a = fit
            slopes[mode] = {"bytes_per_class": b, "intercept_bytes": a,
                            "estimate_bytes": a + b * estimate_classes}
    goal = None
    largest = max(r["classes"] for r in results)
    if (largest, "off") in by and (largest, "both") in by:
        off, on = by[(largest, "off")], by[(largest, "both")]
        mem = on["peak_above_model_bytes"] / off["peak_above_model_bytes"]
        t = on["seconds"] / off["seconds"]
        cpu = on["cpu_seconds"] / off["cpu_seconds"] if off["cpu_seconds"] > 0 else None
        goal = {"classes": largest, "memory_fraction": mem, "time_ratio": t, "cpu_time_ratio": cpu,
                "met": mem <= GOAL_MEMORY_FRACTION and t <= GOAL_TIME_RATIO}
    return {"rows": rows, "slopes": slopes, "goal": goal, "estimate_classes": estimate_classes}


def _gb(b) -> str:
    return "n/a" if b is None else (f"{b / GiB:.2f} GB" if abs(b) >= GiB / 10 else f"{b / MiB:.0f} MiB")


def render(report: dict) -> str:
    from tabulate import tabulate

    m, cfg, s = report["machine"], report["config"], report["summary"]
    first = report["results"][0]
    lines = [f"machine: {m['cpu']} ({m['logical_cpus']} logical CPUs), torch {m['torch']}, device {m['device']}"
             + (f" ({m['gpu']})" if "gpu" in m else "") + (f", RAM {m['ram_gib']} GiB" if "ram_gib" in m else "")
             + f"; load average before: {' '.join(f'{x:.2f}' for x in report['loadavg_before'])}",
             f"model: {cfg['model']} random weights ({first['backbone_params'] / 1e6:.0f}M parameters, "
             f"{_gb(first['backbone_bytes'])}), prompts depth {first['depth_vision']} vision / {first['depth_text']} "
             f"text, {cfg['n_ctx']} tokens; PromptSRC losses on; batch {cfg['batch']}; {cfg['precision']}; "
             f"median of {cfg['steps']} step(s) per run, each run in its own process", ""]
    table = [[r["classes"], r["mode"], f"{r['seconds']:.2f} s", f"{r['cpu_seconds']:.1f} s",
              _gb(r["peak_above_model_bytes"]),
              "" if r["memory_vs_off"] is None else f"{r['memory_vs_off']:.2f}",
              "" if r["time_vs_off"] is None else f"{r['time_vs_off']:.2f}x",
              "" if r["loss_equals_off"] is None else ("yes" if r["loss_equals_off"] else "NO"),
              "n/a" if r["other_load_cores"] is None else f"{r['other_load_cores']:.2f}"]
             for r in s["rows"]]
    lines.append(tabulate(table, headers=["classes", "checkpointing", "time / step", "CPU time", "peak above model",
                                          "memory vs off", "time vs off", "same loss", "other load"],
                          tablefmt="github", disable_numparse=True))
    if s["slopes"]:
        lines.append("")
        lines.append(tabulate([[mode, f"{v['bytes_per_class'] / MiB:.1f} MiB", _gb(v["intercept_bytes"]),
                                _gb(v["estimate_bytes"])] for mode, v in s["slopes"].items()],
                              headers=["checkpointing", "per class", "at 0 classes",
                                       f"extrapolated to {s['estimate_classes']} classes"],
                              tablefmt="github", disable_numparse=True))
    if s["goal"]:
        g = s["goal"]
        lines.append("")
        lines.append(f"goal at {g['classes']} classes: both/off memory {g['memory_fraction']:.2f} (<= "
                     f"{GOAL_MEMORY_FRACTION}), time {g['time_ratio']:.2f}x (<= {GOAL_TIME_RATIO}x): "
                     + ("met" if g["met"] else "NOT met")
                     + ("" if g["cpu_time_ratio"] is None else f"; CPU-time ratio {g['cpu_time_ratio']:.2f}x"))
    lines.append("")
    if cfg["malloc_mmap_threshold"]:
        lines.append(f"glibc MALLOC_MMAP_THRESHOLD_={cfg['malloc_mmap_threshold']} in the runs (freed tensors leave "
                     "the RSS at once)")
    lines.append(f"peak above model: {first['memory_kind']}; model RSS after building "
                 f"{_gb(first['model_bytes'])} (all runs); other load: mean CPU cores used by other processes "
                 "during the step (a shared machine inflates wall times)")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------

def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--classes", type=int, nargs="+", default=[25, 100], help="numbers of training classes C")
    p.add_argument("--batch", type=int, default=8, help="training batch size")
    p.add_argument("--modes", nargs="+", choices=MODES, default=["off", "both"],
                   help="GRAD_CHECKPOINT modes to measure")
    p.add_argument("--precision", choices=["fp32", "fp16"], default="fp32",
                   help="fp16: frozen backbone in half, prompts fp32 (PREC fp16; meant for a GPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("--model", choices=sorted(ARCHITECTURES), default="ViT-L/14")
    p.add_argument("--depth", type=int, default=9, help="prompt depth, both towers (clamped to the layers)")
    p.add_argument("--n-ctx", type=int, default=4, help="prompt tokens per layer")
    p.add_argument("--steps", type=int, default=1, help="training steps per run (median time reported)")
    p.add_argument("--estimate-classes", type=int, default=500, help="extrapolate the memory to this many classes")
    p.add_argument("--malloc-mmap-threshold", type=int, default=0, metavar="BYTES",
                   help="CPU: set glibc's MALLOC_MMAP_THRESHOLD_ in the runs (e.g. 1048576), so that freed "
                        "tensors leave the RSS at once and its peak follows the live tensors, as CUDA's "
                        "max_memory_allocated does; 0 (default): glibc's own, which keeps freed memory")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true", help="tiny random CLIP (promptkd.demo.tiny) for a smoke run")
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON")
    p.add_argument("--worker", default=None, metavar="PATH", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if min(args.classes) < 1 or args.batch < 1 or args.steps < 1:
        p.error("--classes, --batch and --steps must be >= 1.")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        p.error("--device cuda but CUDA is not available; use --device cpu.")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:  # one (classes, mode) run; the parent reads the JSON
        args.classes, args.mode = args.classes[0], args.modes[0]
        with open(args.worker, "w") as f:
            json.dump(worker(args), f)
        return {}
    loadavg = os.getloadavg()
    results = [run_in_subprocess(args, c, mode) for c in args.classes for mode in args.modes]
    report = {"machine": machine_info(torch.device(args.device)), "loadavg_before": loadavg,
              "config": {"model": "tiny" if args.tiny else args.model, "batch": args.batch, "precision": args.precision,
                         "malloc_mmap_threshold": args.malloc_mmap_threshold,
                         "n_ctx": args.n_ctx, "steps": args.steps, "classes": args.classes, "modes": args.modes},
              "results": results, "summary": summarise(results, args.estimate_classes)}
    emit(report, render(report), args.json)
    return report


if __name__ == "__main__":
    main()
