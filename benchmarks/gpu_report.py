"""One command for a GPU: the CUDA test tier, then the figures docs/gpu.md needs.

    python -m benchmarks.gpu_report --json gpu_report.json      # on one GPU (about 8 min on an H100)
    python -m benchmarks.gpu_report --smoke --device cpu         # tiny shapes, seconds (the test suite)

Full-size random weights (nothing is downloaded; time and memory do not depend on the values):

1. `python -m pytest -q -m cuda` (tests/gpu): pass / fail counts;
2. the ViT-L/14 teacher step (PromptSRC losses, deep prompts) at 100 and 500 classes, batch 8,
   PREC fp16 (pure-half backbone) and bf16 (autocast), GRAD_CHECKPOINT off and both: s/step and
   torch.cuda.max_memory_allocated (`benchmarks/teacher_memory.py`'s model and step);
3. the student step (ViT-B/16 student, ViT-L/14 teacher) online vs from a teacher cache at batch
   8, 32 and 128: images/s (`benchmarks/teacher_cache.py`'s bench);
4. evaluation (student + class vectors, no grad): images/s;
5. the exported student (ONNX, CUDA execution provider if installed): images/s
   (`benchmarks/export_speed.py`'s predictor and runner).

Prints one Markdown table and writes JSON (`--json`).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from types import SimpleNamespace

import torch

from benchmarks import export_speed as es
from benchmarks import teacher_cache as tc
from benchmarks import teacher_memory as tm
from benchmarks.common import REPO


def timed(fn, device: torch.device, warmup: int, repeats: int) -> dict:
    """Median seconds per call over `repeats` after `warmup`, and the CUDA peak allocation."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - start)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None
    return {"seconds": sorted(times)[len(times) // 2], "max_memory_allocated": peak}


def run_tier(device: torch.device) -> dict:
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", "-p", "no:cacheprovider"], cwd=REPO,
                          capture_output=True, text=True)
    tail = (proc.stdout.strip().splitlines() or [""])[-1]
    return {"returncode": proc.returncode, "summary": tail, "ran_on": str(device)}


def teacher_steps(args, device) -> list[dict]:
    rows = []
    for classes in args.teacher_classes:
        for prec in ("fp16", "bf16"):
            for mode in ("off", "both"):
                ns = SimpleNamespace(tiny=args.smoke, model="ViT-L/14", seed=0, precision=prec, depth=9, n_ctx=4,
                                     classes=classes, mode=mode, batch=args.teacher_batch, device=str(device))
                model, optim, images, labels, _ = tm.build(ns, device)
                autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=prec == "bf16")

                def step():
                    with autocast:
                        out = model(images)
                    loss = torch.nn.functional.cross_entropy(out["logits"], labels) + sum(
                        model.extra_losses(out, labels).values())
                    optim.zero_grad(set_to_none=True)
                    loss.backward()
                    optim.step()
                model.train()
                r = timed(step, device, args.warmup, args.repeats)
                rows.append({"what": "teacher step", "classes": classes, "batch": args.teacher_batch, "prec": prec,
                             "grad_checkpoint": mode, "s_per_step": r["seconds"],
                             "max_memory_allocated": r["max_memory_allocated"]})
                del model, optim
                if device.type == "cuda":
                    torch.cuda.empty_cache()
    return rows


def student_steps(args, device, folder) -> list[dict]:
    rows = []
    for batch in args.student_batches:
        ns = SimpleNamespace(tiny=args.smoke, teacher="ViT-L/14", student="ViT-B/16", seed=0, depth=9, n_ctx=4,
                             batch=batch, write_batch=batch, classes=args.eval_classes,
                             cache_images=max(4 * batch, 64), dtype="fp16", warmup=args.warmup,
                             repeats=args.repeats, shard_size=4096)
        bench = tc.Bench(ns, os.path.join(folder, f"cache-{batch}"))
        bench.teacher.to(device)
        bench.student.to(device)  # in place: the optimiser keeps the same parameters
        bench.images, bench.vectors = bench.images.to(device), bench.vectors.to(device)
        lookup = bench.read.lookup
        bench.read.lookup = lambda e, i: lookup(e, i).to(device)  # the trainer moves cached rows to its device
        for name, fn in (("online", bench.step_online), ("cached", bench.step_cached)):
            r = timed(fn, device, args.warmup, args.repeats)
            rows.append({"what": f"student step {name}", "batch": batch, "prec": "fp32", "images_per_s": batch / r["seconds"],
                         "max_memory_allocated": r["max_memory_allocated"]})
        if batch == max(args.student_batches):
            student = bench.student.eval()

            def evaluate():
                with torch.no_grad():
                    student(bench.images, bench.vectors)
            r = timed(evaluate, device, args.warmup, args.repeats)
            rows.append({"what": "evaluation", "batch": batch, "classes": args.eval_classes,
                         "images_per_s": batch / r["seconds"], "max_memory_allocated": r["max_memory_allocated"]})
        del bench
    return rows


def exported_student(args, device, folder) -> list[dict]:
    try:
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as err:
        return [{"what": "exported student (onnx)", "skipped": f"{err}"}]
    from promptkd.export_model import export_onnx
    predictor = es.build_predictor("tiny" if args.smoke else "ViT-B/16", args.eval_classes, depth=2 if args.smoke else 9)
    path = os.path.join(folder, "student.onnx")
    export_onnx(predictor, path)
    run = es.runner("onnx", predictor, path, threads=os.cpu_count() or 1, device=str(device))
    size = predictor.record.preprocess["crop"][0]
    x = torch.randn(args.export_batch, 3, size, size)
    r = timed(lambda: run(x), torch.device("cpu"), args.warmup, args.repeats)  # onnxruntime returns numpy: synced
    return [{"what": "exported student (onnx)", "batch": args.export_batch, "images_per_s": args.export_batch / r["seconds"],
             "providers": "CUDA" if device.type == "cuda" else "CPU"}]


def machine(device) -> dict:
    info = {"torch": torch.__version__, "python": platform.python_version(), "device": str(device),
            "cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "loadavg": os.getloadavg()}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _gib(b):
    return "" if b is None else f"{b / 2**30:.2f} GiB"


def render(report: dict) -> str:
    lines = [f"GPU report on {report['machine'].get('gpu', report['machine']['device'])} "
             f"(torch {report['machine']['torch']}){' (smoke: tiny shapes)' if report['smoke'] else ''}",
             f"CUDA tier: {report['tier'].get('summary', report['tier'].get('skipped'))}", "",
             "| measurement | classes | batch | PREC | GRAD_CHECKPOINT | s/step | images/s | max_memory_allocated |",
             "|---|---|---|---|---|---|---|---|"]
    for r in report["rows"]:
        if "skipped" in r:
            lines.append(f"| {r['what']} | | | | | | skipped: {r['skipped']} | |")
            continue
        s = f"{r['s_per_step']:.3f}" if "s_per_step" in r else ""
        ips = f"{r['images_per_s']:.1f}" if "images_per_s" in r else ""
        lines.append(f"| {r['what']} | {r.get('classes', '')} | {r.get('batch', '')} | {r.get('prec', '')} | "
                     f"{r.get('grad_checkpoint', '')} | {s} | {ips} | {_gib(r.get('max_memory_allocated'))} |")
    return "\n".join(lines)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--smoke", action="store_true", help="tiny shapes, one repeat, no tier: checks the script runs")
    p.add_argument("--json", default="", help="write the report here")
    p.add_argument("--no-tier", action="store_true", help="do not run the CUDA test tier first")
    p.add_argument("--warmup", type=int, default=None)
    p.add_argument("--repeats", type=int, default=None)
    args = p.parse_args(argv)
    small = args.smoke
    args.warmup = (0 if small else 2) if args.warmup is None else args.warmup
    args.repeats = (1 if small else 5) if args.repeats is None else args.repeats
    args.teacher_classes = [4, 6] if small else [100, 500]
    args.teacher_batch = 2 if small else 8
    args.student_batches = [2, 4] if small else [8, 32, 128]
    args.eval_classes = 5 if small else 1000
    args.export_batch = 2 if small else 128
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    device = torch.device(args.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    tier = {"skipped": "--smoke / --no-tier"} if args.smoke or args.no_tier else run_tier(device)
    with tempfile.TemporaryDirectory() as folder:
        rows = teacher_steps(args, device) + student_steps(args, device, folder) + exported_student(args, device, folder)
    report = {"machine": machine(device), "smoke": args.smoke, "tier": tier, "rows": rows}
    print(render(report))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


if __name__ == "__main__":
    main()
