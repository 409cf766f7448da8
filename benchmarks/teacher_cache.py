"""Benchmark: a PromptKD step with the online teacher against one reading the teacher cache,
and the cache writer's throughput.

Full-size random-weight towers (ViT-L/14 teacher image side with deep visual prompts, ViT-B/16
student with deep visual prompts and projector), stored class vectors, batch `--batch`:

  step/online   teacher image forward (no grad) + student forward/backward + SGD step
  step/cached   embeddings read from a real cache folder (`promptkd.teacher_cache`, the
                format training reads) + the same student step
  write/teacher the cache writer's work per batch of `--write-batch` views: teacher image
                forward (no grad) + `TeacherCache.add` (shards written as they fill)
  teacher/online-batch  the teacher forward alone at the training batch (its cost per
                image inside an online step)

Then the total teacher cost of a `--epochs`-epoch distillation for each view bank K in
`--banks` (TRAINER.PROMPTKD.VIEWS_PER_IMAGE; 0 = a fresh view every epoch): the teacher forwards,
counted by drawing each sampled image's view of every epoch with the training rule
(`promptkd.views.view_number`) and counting the distinct ones, times `--images` (ImageNet's
1,281,167 by default), and their seconds at the writer's measured s/view; and the cache size
on disk per format (fp32, fp16, int8, topk at `--topk` of `--imagenet-classes`), from the bytes
per view of shards written here, at that scale. `--cost-only` times only the writer.

Median wall time (and process CPU time, steadier on a shared machine) over `--repeats` runs
after `--warmup`, in rounds (one run of each setting per round, so machine load hits all
alike); FLOPs counted once (torch FlopCounterMode); peak RSS of the process; load average
before and after.

    python -m benchmarks.teacher_cache                      # ViT-L/14 -> ViT-B/16, batch 8, CPU
    python -m benchmarks.teacher_cache --tiny --repeats 1   # seconds: tiny random CLIPs
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import torch
import torch.nn.functional as F

from benchmarks.common import ARCHITECTURES, count_flops, machine_info, read_status_kib, tiny_architecture
from promptkd.backbones import clip
from promptkd.losses import kd_loss
from promptkd.student import PromptKDStudent, TeacherImageScorer, teacher_logits
from promptkd.teacher_cache import FORMATS, TeacherCache, topk_spec
from promptkd.views import view_number
from promptkd.demo.tiny import TINY_STUDENT, TINY_TEACHER

SETTINGS = ("step/online", "step/cached", "write/teacher", "teacher/online-batch")
GOAL = 2.5


def visual_tower(arch: dict) -> torch.nn.Module:
    w = arch["vision_width"]
    return clip.model.VisionTransformer(input_resolution=arch["image_resolution"], patch_size=arch["vision_patch_size"],
                                        width=w, layers=arch["vision_layers"], heads=w // 64,
                                        output_dim=arch["embed_dim"]).float().eval()


class Bench:
    def __init__(self, args, folder: str):
        t_arch = tiny_architecture(TINY_TEACHER) if args.tiny else ARCHITECTURES[args.teacher]
        s_arch = tiny_architecture(TINY_STUDENT) if args.tiny else ARCHITECTURES[args.student]
        torch.manual_seed(args.seed)
        t_visual, s_visual = visual_tower(t_arch), visual_tower(s_arch)
        depth_t, depth_s = min(args.depth, t_arch["vision_layers"]), min(args.depth, s_arch["vision_layers"])
        prompts = [torch.randn(args.n_ctx, t_arch["vision_width"]) * 0.02 for _ in range(depth_t)]
        scale = torch.tensor(4.6052)
        self.teacher = TeacherImageScorer(t_visual, scale, prompts)
        dim = t_arch["embed_dim"]
        self.student = PromptKDStudent(s_visual, scale, class_dim=dim, n_ctx=args.n_ctx, depth=depth_s)
        self.optim = torch.optim.SGD([p for p in self.student.parameters() if p.requires_grad], lr=0.005, momentum=0.9)
        r = t_arch["image_resolution"]
        self.batch, self.write_batch = args.batch, args.write_batch
        self.images = torch.randn(args.batch, 3, r, r)
        self.write_images = torch.randn(args.write_batch, 3, r, r)
        self.vectors = F.normalize(torch.randn(args.classes, dim), dim=-1)
        self.scale = scale
        # A real cache to read from: `n_images` images, one epoch, fp16 (the default storage).
        n = args.cache_images
        self.read = TeacherCache.create(os.path.join(folder, "read"), {"bench": True}, n, 1, dim, args.dtype)
        for start in range(0, n, 256):
            idx = list(range(start, min(n, start + 256)))
            self.read.add([0] * len(idx), idx, F.normalize(torch.randn(len(idx), dim), dim=-1))
        self.read = TeacherCache.open(self.read.directory, {"bench": True}, 1)
        self.order = torch.randperm(n)
        self.step_no = 0
        # The writer's cache: as many views as the timed and warm-up batches need.
        views = args.write_batch * (args.warmup + args.repeats + 2)
        self.write = TeacherCache.create(os.path.join(folder, "write"), {"bench": True}, views, 1, dim,
                                         args.dtype, shard_size=args.shard_size)
        self.write_no = 0
        self.names = {"teacher": "tiny teacher" if args.tiny else args.teacher,
                      "student": "tiny student" if args.tiny else args.student}

    def _student_step(self, t_logits):
        self.student.train()
        self.optim.zero_grad(set_to_none=True)
        loss = kd_loss(self.student(self.images, self.vectors), t_logits, 1.0, 1000.0)
        loss.backward()
        self.optim.step()

    def step_online(self):
        self._student_step(teacher_logits(self.teacher.embed(self.images), self.scale, self.vectors))

    def step_cached(self):
        k = self.step_no * self.batch % (len(self.order) - self.batch + 1)
        idx = self.order[k:k + self.batch]
        self.step_no += 1
        e = self.read.lookup(torch.zeros_like(idx), idx)
        self._student_step(teacher_logits(e, self.scale, self.vectors))

    def write_teacher(self):
        start = self.write_no * self.write_batch % self.write.n_images
        self.write_no += 1
        e = self.teacher.embed(self.write_images)
        idx = list(range(start, start + self.write_batch))
        self.write.add([0] * len(idx), idx, e)

    def teacher_online_batch(self):
        self.teacher.embed(self.images)

    def setting(self, name):
        return {"step/online": (self.step_online, 1), "step/cached": (self.step_cached, 1),
                "write/teacher": (self.write_teacher, self.write_batch),
                "teacher/online-batch": (self.teacher_online_batch, self.batch)}[name]


def loadavg() -> str:
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "n/a"


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", choices=sorted(ARCHITECTURES), default="ViT-L/14")
    p.add_argument("--student", choices=sorted(ARCHITECTURES), default="ViT-B/16")
    p.add_argument("--batch", type=int, default=8, help="training batch")
    p.add_argument("--write-batch", type=int, default=32, help="the cache writer's teacher batch")
    p.add_argument("--classes", type=int, default=100)
    p.add_argument("--depth", type=int, default=9)
    p.add_argument("--n-ctx", type=int, default=4)
    p.add_argument("--dtype", choices=["fp16", "fp32"], default="fp16")
    p.add_argument("--cache-images", type=int, default=4096, help="images in the cache the cached step reads")
    p.add_argument("--shard-size", type=int, default=4096)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiny", action="store_true")
    p.add_argument("--json", default=None)
    p.add_argument("--cost-only", action="store_true", help="time only the writer; then the total cost")
    p.add_argument("--epochs", type=int, default=20, help="epochs of the distillation whose teacher cost is reported")
    p.add_argument("--banks", default="0,1,2,4,8", help="views per image K to report (0 = fresh views)")
    p.add_argument("--images", type=int, default=1281167, help="train images the totals are scaled to (ImageNet)")
    p.add_argument("--imagenet-classes", type=int, default=1000, help="classes of the topk format's size")
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--sample-images", type=int, default=2000, help="images whose drawn views are counted")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    load_before = loadavg()
    with tempfile.TemporaryDirectory(prefix="promptkd-cache-bench-") as folder:
        bench = Bench(args, folder)
        flops = {}
        for name in ("step/online", "step/cached", "teacher/online-batch"):
            fn, _ = bench.setting(name)
            flops[name] = count_flops(fn)
        settings = ("write/teacher",) if args.cost_only else SETTINGS
        if args.cost_only:
            flops = {}
        times = {name: [] for name in settings}
        cpu = {name: [] for name in settings}
        for round_no in range(args.warmup + args.repeats):
            for name in settings:
                fn, _ = bench.setting(name)
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                if round_no >= args.warmup:
                    times[name].append(time.perf_counter() - start)
                    cpu[name].append(time.process_time() - start_cpu)
        with torch.no_grad():  # a read alone, to see its share of the cached step
            idx = bench.order[:args.batch]
            start = time.perf_counter()
            for _ in range(20):
                bench.read.lookup(torch.zeros_like(idx), idx)
            read_s = (time.perf_counter() - start) / 20
    med = {k: statistics.median(v) for k, v in times.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    per_view_bytes = bench.read.width * (2 if args.dtype == "fp16" else 4)
    write_s = med["write/teacher"] / args.write_batch
    cost = total_cost(args, bench.read.width, write_s)
    report = {
        "machine": machine_info(torch.device("cpu")), "loadavg_before": load_before, "loadavg_after": loadavg(),
        "peak_rss_gib": round((read_status_kib("VmHWM") or 0) / 2**20, 2),
        "config": {**vars(args), **bench.names},
        "seconds": med, "raw_seconds": times, "cpu_seconds": med_cpu, "raw_cpu_seconds": cpu, "flops": flops,
        "cache_read_seconds_per_batch": read_s,
        "write_views_per_s": args.write_batch / med["write/teacher"],
        "write_s_per_image": write_s,
        "bytes_per_view": per_view_bytes,
        "total_cost": cost,
    }
    lines = [f"{report['config']['teacher']} -> {report['config']['student']}, batch {args.batch}, "
             f"{args.classes} classes, {args.dtype} cache; {report['machine']['cpu']}, "
             f"{report['machine']['torch_threads']} threads; load {load_before} -> {report['loadavg_after']}"]
    if not args.cost_only:
        report.update({
            "step_speedup": med["step/online"] / med["step/cached"],
            "step_speedup_cpu_time": med_cpu["step/online"] / med_cpu["step/cached"],
            "step_speedup_per_round": [a / b for a, b in zip(times["step/online"], times["step/cached"])],
            "flop_bound": flops["step/online"] / flops["step/cached"],
            "online_teacher_s_per_image": med["teacher/online-batch"] / args.batch})
        lines += [
            f"step/online  {med['step/online']:.3f} s  ({flops['step/online'] / 1e9:.0f} GFLOP)",
            f"step/cached  {med['step/cached']:.3f} s  ({flops['step/cached'] / 1e9:.0f} GFLOP; "
            f"cache read {read_s * 1e3:.2f} ms of it)",
            f"speed-up     {report['step_speedup']:.2f}x wall (per round: "
            + ", ".join(f"{x:.2f}x" for x in report["step_speedup_per_round"])
            + f"), {report['step_speedup_cpu_time']:.2f}x process CPU time  (FLOP bound {report['flop_bound']:.2f}x, "
            f"goal >= {GOAL}x)",
            f"cache writer {report['write_views_per_s']:.2f} views/s at batch {args.write_batch} "
            f"({report['write_s_per_image']:.3f} s/view) vs online teacher {report['online_teacher_s_per_image']:.3f} "
            f"s/image at batch {args.batch}",
            f"storage      {per_view_bytes} B per view; peak RSS {report['peak_rss_gib']} GiB"]
    else:
        lines.append(f"cache writer {report['write_views_per_s']:.2f} views/s at batch {args.write_batch} "
                     f"({write_s:.3f} s/view); peak RSS {report['peak_rss_gib']} GiB")
    lines.append(f"total teacher cost of a {args.epochs}-epoch distillation of {args.images:,} images "
                 f"(forwards counted on {cost['sampled_images']} images with the view rule, scaled; seconds at "
                 f"{write_s:.3f} s/view on this machine):")
    lines.append("  K   views/image  teacher forwards   teacher time   vs K=0   " +
                 "   ".join(f"{fmt} cache" for fmt in cost["bytes_per_view"]))
    for row in cost["banks"]:
        lines.append(f"  {row['K']:<3} {row['views_per_image']:<12} {row['teacher_forwards']:<18,} "
                     f"{row['teacher_seconds'] / 3600:>9.1f} h   {row['reduction']:>5.1f}x   "
                     + "   ".join(f"{row['cache_bytes'][fmt] / 1e9:>8.2f} GB" for fmt in cost["bytes_per_view"]))
    lines.append("  bytes per view (shards written here): " + ", ".join(
        f"{fmt} {b:.1f} B" for fmt, b in cost["bytes_per_view"].items()))
    print("\n".join(lines))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=1)
    return report


def measured_bytes_per_view(width: int, classes: int, k: int, rows: int = 1024) -> dict:
    """Bytes per view of each format, from the size of a shard of `rows` views written to disk
    (headers included) by the cache code itself."""
    out = {}
    vectors = F.normalize(torch.randn(classes, width), dim=-1)
    scale = torch.tensor(4.6052)
    with tempfile.TemporaryDirectory(prefix="promptkd-cache-size-") as folder:
        for fmt in ("fp32", "fp16", "int8", "topk"):
            assert fmt in FORMATS
            identity = {"bench": True}
            if fmt == "topk":
                identity["topk_scoring"] = topk_spec(k, classes, 1.0, "bench")
            cache = TeacherCache.create(os.path.join(folder, fmt), identity, rows, 1, width, fmt, shard_size=rows)
            cache.scorer = lambda e: teacher_logits(torch.from_numpy(e), scale, vectors).numpy()
            cache.add([0] * rows, list(range(rows)), F.normalize(torch.randn(rows, width), dim=-1))
            size = os.path.getsize(os.path.join(cache.directory, cache.shard_name(0, 0)))
            out[fmt if fmt != "topk" else f"topk{k}"] = size / rows
    return out


def total_cost(args, width: int, write_s: float) -> dict:
    """Teacher forwards and seconds of an `args.epochs`-epoch distillation per view bank K, and
    the cache size of each format, at `args.images` images."""
    sample = min(args.sample_images, args.images)
    per_view = measured_bytes_per_view(width, args.imagenet_classes, args.topk)
    rows = []
    for k in [int(x) for x in args.banks.split(",")]:
        # count the distinct views the rule draws over the epochs (K = 0: one per epoch)
        drawn = sum(len({view_number(args.seed, e, i, k) for e in range(args.epochs)}) for i in range(sample))
        forwards = round(drawn / sample * args.images)
        rows.append({"K": k, "views_per_image": drawn / sample, "teacher_forwards": forwards,
                     "teacher_seconds": forwards * write_s,
                     "cache_bytes": {fmt: forwards * b for fmt, b in per_view.items()}})
    base = next((r["teacher_forwards"] for r in rows if r["K"] == 0), args.epochs * args.images)
    for r in rows:
        r["reduction"] = base / r["teacher_forwards"]
    return {"epochs": args.epochs, "images": args.images, "sampled_images": sample, "write_s_per_view": write_s,
            "bytes_per_view": per_view, "banks": rows}


if __name__ == "__main__":
    main()
