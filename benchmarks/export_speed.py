"""Benchmark: images/s of the student classifier, eager vs its TorchScript and ONNX exports.

A full-size random-weight PromptKD student (ViT-B/16 image tower, depth-9 visual prompts of 4
tokens, the 512 -> 768 projector, `--classes` class vectors of width 768) is built as
`promptkd.deploy.predictor.ImageClassifier`, exported with `promptkd.deploy.export_model` (the same code as
`promptkd export`), and each of

  eager        the PyTorch module under torch.no_grad()
  torchscript  the traced file, loaded with torch.jit.load
  onnx         the ONNX file in onnxruntime (CPUExecutionProvider, or CUDA where available)

classifies `--repeats` batches of `--batch` preprocessed images after one warm-up batch
(median images/s). Also printed: the max |exported - eager| logit difference, the machine,
threads, and the load average before and after (other processes slow wall times down).

    python -m benchmarks.export_speed                  # ViT-B/16, batch 16, 1000 classes
    python -m benchmarks.export_speed --tiny           # seconds: a tiny tower (smoke run)

Weights are random: speed does not depend on the values. Run heavy sizes under
`flock /tmp/promptkd-bench.lock`.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time

import numpy as np
import torch


from promptkd.deploy import export_model
from promptkd.errors import UserError
from promptkd.extras import require, torch_at_least
from promptkd.backbones import clip
from promptkd.deploy.predictor import ImageClassifier, Predictor, PredictorRecord, preprocess_settings
from promptkd.student import Projector

# clip.model.VisionTransformer arguments (heads = width // 64 as in clip) and the class width.
TOWERS = {
    "ViT-B/16": dict(input_resolution=224, patch_size=16, width=768, layers=12, heads=12, output_dim=512),
    "tiny": dict(input_resolution=32, patch_size=8, width=64, layers=2, heads=1, output_dim=64),
}
CLASS_DIM = {"ViT-B/16": 768, "tiny": 96}


def build_predictor(tower: str, n_classes: int, depth: int, n_ctx: int = 4) -> Predictor:
    torch.manual_seed(0)
    visual = clip.model.VisionTransformer(**TOWERS[tower]).float().eval()
    width, out_dim, class_dim = TOWERS[tower]["width"], TOWERS[tower]["output_dim"], CLASS_DIM[tower]
    prompts = [torch.randn(n_ctx, width) * 0.02 for _ in range(depth)]
    projector = Projector(out_dim, class_dim).state_dict()
    vectors = torch.nn.functional.normalize(torch.randn(n_classes, class_dim), dim=-1)
    model = ImageClassifier(visual, prompts, projector, vectors, logit_scale=4.6052)
    size = TOWERS[tower]["input_resolution"]
    record = PredictorRecord(method="PromptKD", dataset="benchmark", backbone={"kind": "random", "name": tower},
                             fingerprint="", weights={"prompts": prompts, "projector": projector},
                             classnames=[f"class {i}" for i in range(n_classes)], class_vectors=vectors,
                             logit_scale=4.6052, preprocess=preprocess_settings((size, size)))
    return Predictor(record, model)


def runner(kind: str, predictor: Predictor, path: str, threads: int, device: str):
    if kind == "eager":
        model = predictor.model.to(device)

        def run(x):
            with torch.no_grad():
                out = model(x.to(device))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                return out.cpu().numpy()
        return run
    if kind == "torchscript":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = torch.jit.load(path, map_location=device)

        def run(x):
            with torch.no_grad():
                out = module(x.to(device))
                if device.startswith("cuda"):
                    torch.cuda.synchronize()
                return out.cpu().numpy()
        return run
    ort = require("onnxruntime", "export", "the benchmark's onnx row")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.startswith("cuda") else ["CPUExecutionProvider"]
    session = ort.InferenceSession(path, options, providers=providers)
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def onnx_unavailable() -> str | None:
    """Why the onnx row cannot run here (the export extra missing, a torch older than the ONNX
    exporter needs), or None."""
    if not torch_at_least(export_model.ONNX_MIN_TORCH):
        return f"needs torch >= {export_model.ONNX_MIN_TORCH} (this is {torch.__version__})"
    try:
        for module in ("onnxscript", "onnxruntime"):
            require(module, "export", "the benchmark's onnx row")
    except UserError as err:
        return str(err)
    return None


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="a tiny tower (smoke run)")
    parser.add_argument("--classes", type=int, default=1000)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--depth", type=int, default=9, help="visual prompt depth (9 base-to-novel)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--json", default="", help="also write the figures here")
    args = parser.parse_args(argv)
    tower = "tiny" if args.tiny else "ViT-B/16"
    threads = torch.get_num_threads()
    load_before = os.getloadavg()
    predictor = build_predictor(tower, args.classes, min(args.depth, TOWERS[tower]["layers"]))
    size = TOWERS[tower]["input_resolution"]
    images = torch.randn(args.batch, 3, size, size, generator=torch.Generator().manual_seed(1))
    results = {}
    skipped = onnx_unavailable()
    kinds = ("eager", "torchscript") if skipped else ("eager", "torchscript", "onnx")
    with tempfile.TemporaryDirectory() as tmp:
        paths = {"eager": "", "torchscript": os.path.join(tmp, "student.pt"), "onnx": os.path.join(tmp, "student.onnx")}
        export_seconds = {}
        for kind in kinds[1:]:
            t = time.perf_counter()
            export_model.export(predictor, paths[kind], kind)
            export_seconds[kind] = time.perf_counter() - t
        reference = None
        for kind in kinds:
            run = runner(kind, predictor, paths[kind], threads, args.device)
            out = run(images)  # warm-up (and the logits to compare)
            reference = out if reference is None else reference
            seconds, cpu = [], []
            for _ in range(args.repeats):
                t, c = time.perf_counter(), time.process_time()
                run(images)
                seconds.append(time.perf_counter() - t)
                cpu.append(time.process_time() - c)
            median = statistics.median(seconds)
            results[kind] = {"images_per_s": args.batch / median, "seconds_per_batch": median,
                             "cpu_s_per_batch": statistics.median(cpu),
                             "max_abs_diff_to_eager": float(np.abs(out - reference).max()),
                             "export_seconds": export_seconds.get(kind),
                             "file_mb": os.path.getsize(paths[kind]) / 2**20 if paths[kind] else None}
    load_after = os.getloadavg()
    machine = {"cpu": platform.processor() or platform.machine(), "cpus": os.cpu_count(), "torch_threads": threads,
               "torch": torch.__version__, "device": args.device, "load_before": load_before, "load_after": load_after,
               "gpu": torch.cuda.get_device_name() if args.device.startswith("cuda") else None}
    if not skipped:
        machine["onnxruntime"] = require("onnxruntime", "export", "the benchmark's onnx row").__version__
    print(f"{tower} student (depth {predictor.model.image_encoder.depth}, {args.classes} classes), batch {args.batch}, "
          f"fp32, {args.device}, {threads} threads, load average {load_before[0]:.2f} -> {load_after[0]:.2f}")
    print(f"{'':12s} {'images/s':>9s} {'s/batch':>8s} {'CPU s/batch':>11s} {'max |diff|':>10s} {'file MB':>8s}")
    if skipped:
        results["onnx"] = {"skipped": skipped}
    for kind, r in results.items():
        if "skipped" in r:
            print(f"{kind:12s} skipped: {r['skipped']}")
            continue
        mb = f"{r['file_mb']:.0f}" if r["file_mb"] else "-"
        print(f"{kind:12s} {r['images_per_s']:9.2f} {r['seconds_per_batch']:8.3f} {r['cpu_s_per_batch']:11.3f} "
              f"{r['max_abs_diff_to_eager']:10.1e} {mb:>8s}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"config": vars(args) | {"tower": tower}, "machine": machine, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
