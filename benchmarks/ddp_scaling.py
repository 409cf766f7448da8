"""Benchmark: images/s of a PromptKD distillation step with 1, 2, ... processes (torchrun + DDP).

The step is `benchmarks/distill_step.py`'s "train/ours" (teacher image tower without grad,
student forward / backward through DistributedDataParallel, SGD step, stored class vectors),
at the same batch *per process* (as training does: DATALOADER.TRAIN_X.BATCH_SIZE is per
process). For each process count N it launches

    python -m torch.distributed.run --standalone --nproc_per_node N -m benchmarks.ddp_scaling --worker ...

times `--steps` steps after `--warmup` untimed ones (a barrier before and after), and reports
the global images/s (N x batch x steps / slowest rank's time), the speed-up over one process
and the scaling efficiency (images/s with N / (N x images/s with 1)).

    python -m benchmarks.ddp_scaling --procs 1 2 4 8 --device cuda        # a GPU node: one GPU per process
    python -m benchmarks.ddp_scaling --procs 1 2 --tiny --device cpu      # seconds, tiny CLIPs
    python -m benchmarks.ddp_scaling --procs 1 2 --device cpu --teacher ViT-B/16 --batch 4 --steps 3

On CPU each process gets `--threads` threads (default 1), so N processes use N cores: a CPU
run measures the gradient all-reduce (gloo) and launch overheads on the cores at hand, not the
GPU scaling the distributed mode is for.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import torch


from benchmarks import distill_step  # the models and the step
from benchmarks.common import REPO, emit
from promptkd import distributed


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--procs", type=int, nargs="+", default=[1, 2], help="process counts to measure")
    p.add_argument("--batch", type=int, default=8, help="batch per process")
    p.add_argument("--classes", type=int, default=100, help="number of stored class vectors")
    p.add_argument("--steps", type=int, default=5, help="timed steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=1, help="CPU threads per process (CPU runs)")
    p.add_argument("--precision", choices=["fp32", "fp16", "bf16"], default="fp32")
    p.add_argument("--teacher", choices=sorted(distill_step.ARCHITECTURES), default="ViT-L/14")
    p.add_argument("--student", choices=sorted(distill_step.ARCHITECTURES), default="ViT-B/16")
    p.add_argument("--depth", type=int, default=9)
    p.add_argument("--n-ctx", type=int, default=4)
    p.add_argument("--tiny", action="store_true", help="tiny random CLIPs (promptkd.demo.tiny)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, metavar="PATH", help="write the figures as JSON")
    p.add_argument("--worker", default=None, metavar="PATH", help=argparse.SUPPRESS)  # set by the launcher
    args = p.parse_args(argv)
    if args.batch < 2:
        p.error("--batch must be >= 2 (the projector's BatchNorm needs more than one sample).")
    if args.steps < 1 or args.warmup < 0 or min(args.procs) < 1:
        p.error("--steps and --procs must be >= 1, --warmup >= 0.")
    return args


def bench_args(args) -> argparse.Namespace:
    """The settings distill_step's model builder and step read."""
    return argparse.Namespace(tiny=args.tiny, teacher=args.teacher, student=args.student, seed=args.seed,
                              depth=args.depth, n_ctx=args.n_ctx, precision=args.precision, batch=args.batch,
                              test_batch=None, text_chunk=256, lr=0.005, kd_weight=1000.0,
                              settings=("train/ours",))  # our step only: no teacher text tower


def worker(args) -> None:
    """One rank: time the distillation step through DDP; rank 0 writes the figures."""
    cuda = args.device == "cuda"
    distributed.init(use_cuda=cuda)
    if not cuda:
        torch.set_num_threads(args.threads)
    device = distributed.device(cuda)
    b = bench_args(args)
    models = distill_step.build_models(b, device)
    models.student = distributed.wrap(models.student)  # the training forward goes through DDP
    bench = distill_step.Bench(models, b, args.classes, device)

    def sync():
        if cuda:
            torch.cuda.synchronize()
        distributed.barrier()

    for _ in range(args.warmup):
        bench.train_ours()
    sync()
    start = time.perf_counter()
    cpu_start = time.process_time()
    for _ in range(args.steps):
        bench.train_ours()
    sync()
    elapsed, cpu = time.perf_counter() - start, time.process_time() - cpu_start
    times = distributed.all_gather_objects((elapsed, cpu))
    if distributed.is_main():
        world = distributed.world_size()
        slowest = max(t for t, _ in times)
        with open(args.worker, "w") as f:
            json.dump({"procs": world, "seconds": slowest, "step_seconds": slowest / args.steps,
                       "images_per_s": world * args.batch * args.steps / slowest,
                       "cpu_seconds_per_rank": [c for _, c in times],
                       "backend": "nccl" if cuda else "gloo"}, f)


def launch(args, procs: int, argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
                   "-m", __spec__.name, *argv, "--worker", out]
        env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
        proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=REPO)
        if proc.returncode != 0:
            raise SystemExit(f"error: the {procs}-process run failed:\n{proc.stderr[-3000:]}")
        with open(out) as f:
            return json.load(f)


def render(report: dict) -> str:
    from tabulate import tabulate
    rows = []
    for r in report["runs"]:
        rows.append([r["procs"], report["config"]["batch"], r["procs"] * report["config"]["batch"],
                     f"{r['step_seconds']:.3f}", f"{r['images_per_s']:.2f}", f"{r['speedup']:.2f}x",
                     f"{100 * r['efficiency']:.0f}%"])
    c, m = report["config"], report["machine"]
    head = (f"PromptKD distillation step under DDP ({c['teacher']} teacher, {c['student']} student, "
            f"{c['classes']} classes, {c['precision']}, {m['device']}, backend {report['runs'][0]['backend']}, "
            f"{c['threads']} thread(s) per process on CPU; load average before: {m['load_before']})")
    table = tabulate(rows, headers=["processes", "batch / process", "global batch", "s / step", "images/s",
                                    "speed-up", "efficiency"], tablefmt="github", disable_numparse=True)
    return head + "\n" + table


def main(argv=None) -> dict:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker:
        worker(args)
        return {}
    if distributed.launched_by_torchrun():
        raise SystemExit("error: run this benchmark with python, not torchrun: it launches torchrun itself.")
    if args.device == "cuda" and torch.cuda.device_count() < max(args.procs):
        raise SystemExit(f"error: --procs {max(args.procs)} needs as many GPUs; "
                         f"{torch.cuda.device_count()} are visible.")
    machine = {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU ({os.cpu_count()} cores)",
               "torch": torch.__version__, "load_before": " ".join(f"{x:.2f}" for x in os.getloadavg())}
    runs = [launch(args, n, argv) for n in args.procs]
    base = next((r for r in runs if r["procs"] == 1), None)
    for r in runs:
        r["speedup"] = r["images_per_s"] / base["images_per_s"] if base else float("nan")
        r["efficiency"] = r["speedup"] / r["procs"] if base else float("nan")
    config = {"teacher": "tiny" if args.tiny else args.teacher, "student": "tiny" if args.tiny else args.student,
              "classes": args.classes, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
              "precision": args.precision, "threads": args.threads}
    machine["load_after"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    report = {"config": config, "machine": machine, "runs": runs}
    emit(report, render(report), args.json)
    print(f"load average after: {machine['load_after']}")
    return report


if __name__ == "__main__":
    main()
