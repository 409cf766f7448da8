"""Export a trained run as one self-contained classifier file (ONNX or TorchScript), or a model folder.

    promptkd export RUN_DIR OUT --format onnx|torchscript
    promptkd export RUN_DIR DIR --format hf          a model folder (promptkd.deploy.hub): config.json,
                                                     model.safetensors, README.md model card

The file maps a preprocessed image batch (float32 [batch, 3, H, W], any batch size) to logits
over the run's classes: the prompted image tower, the projector (PromptKD students) and the
class vectors are baked in. The class names, the preprocessing (resize, crop, mean / std,
interpolation) and the model's provenance are stored in the file as JSON: ONNX
`metadata_props["promptkd"]`, TorchScript extra file `promptkd.json`
(`read_metadata(path)` reads either). The export is checked against the eager model on two
batch sizes before the file is moved into place.
"""
from __future__ import annotations

import argparse
import json
import logging
import warnings

import numpy as np
import torch

from ..errors import ConfigError, UserError
from ..extras import require, require_torch
from ..io import atomic_write
from .hub import load_predictor
from .predictor import Predictor, add_run_arguments

logger = logging.getLogger("promptkd")

FORMATS = ("onnx", "torchscript", "hf")
METADATA_KEY = "promptkd"
TORCHSCRIPT_EXTRA = "promptkd.json"
ONNX_OPSET = 18  # the oldest opset torch's exporter writes
ONNX_MIN_TORCH = "2.7"  # torch 2.5 and 2.6 fail to convert the projector's BatchNorm1d (onnxscript 0.7)
ONNX_ALTERNATIVE = ", or use --format torchscript"
TOLERANCE = 1e-5  # max |exported - eager| relative to max |eager| allowed by the built-in check


def example_input(predictor: Predictor, batch: int) -> torch.Tensor:
    h, w = predictor.record.preprocess["crop"]
    generator = torch.Generator().manual_seed(0)
    return torch.randn(batch, 3, h, w, generator=generator)


def export_torchscript(predictor: Predictor, path: str) -> None:
    model = predictor.model.float().cpu().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit's deprecation notice and tracer hints
        traced = torch.jit.trace(model, example_input(predictor, 2), check_trace=False)
        torch.jit.save(traced, path, _extra_files={TORCHSCRIPT_EXTRA: json.dumps(predictor.metadata())})


def export_onnx(predictor: Predictor, path: str, opset: int = ONNX_OPSET) -> None:
    """torch's `torch.export`-based ONNX exporter (`dynamo=True`, which needs `onnxscript`)
    with a symbolic batch size, written as one file (no external data)."""
    onnx = require("onnx", "export", "ONNX export (--format onnx)", ONNX_ALTERNATIVE)
    require("onnxscript", "export", "ONNX export (--format onnx)", ONNX_ALTERNATIVE)  # torch's exporter imports it
    require_torch(ONNX_MIN_TORCH, "ONNX export (--format onnx, torch's dynamo exporter)", ONNX_ALTERNATIVE)

    model = predictor.model.float().cpu().eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = torch.export.Dim("batch", min=1)
        torch.onnx.export(model, (example_input(predictor, 2),), path, dynamo=True, opset_version=opset,
                          input_names=["images"], output_names=["logits"], dynamic_shapes=({0: batch},),
                          external_data=False, verbose=False)
    proto = onnx.load(path)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(predictor.metadata())
    onnx.checker.check_model(proto)
    onnx.save(proto, path)


def read_metadata(path: str) -> dict:
    """The JSON metadata of an exported file (either format)."""
    if path.endswith(".onnx"):
        onnx = require("onnx", "export", f"Reading {path}")
        proto = onnx.load(path, load_external_data=False)
        return json.loads({p.key: p.value for p in proto.metadata_props}[METADATA_KEY])
    files = {TORCHSCRIPT_EXTRA: ""}
    torch.jit.load(path, map_location="cpu", _extra_files=files)
    return json.loads(files[TORCHSCRIPT_EXTRA])


def run_exported(path: str, images: torch.Tensor, providers=("CPUExecutionProvider",)) -> np.ndarray:
    """Logits of an exported file (onnxruntime for .onnx with `providers`, torch.jit otherwise)."""
    if path.endswith(".onnx"):
        ort = require("onnxruntime", "export", f"Running {path}")
        session = ort.InferenceSession(path, providers=list(providers))
        return session.run(None, {session.get_inputs()[0].name: images.numpy()})[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(path, map_location="cpu")
    with torch.no_grad():
        return module(images).numpy()


def max_difference(predictor: Predictor, path: str, batches=(1, 3)) -> float:
    """Largest |exported - eager| / max |eager| over random inputs of the given batch sizes."""
    worst = 0.0
    for b in batches:
        images = example_input(predictor, b)
        with torch.no_grad():
            eager = predictor.model.cpu()(images).numpy()
        got = run_exported(path, images)
        if got.shape != eager.shape:
            raise RuntimeError(f"The exported model gives shape {got.shape} for batch {b}, expected {eager.shape}.")
        worst = max(worst, float(np.abs(got - eager).max() / max(np.abs(eager).max(), 1e-12)))
    return worst


def export(predictor: Predictor, out: str, fmt: str) -> float:
    """Write `out` (atomically) and return its checked max relative difference to eager."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format must be one of {', '.join(FORMATS)}, got '{fmt}'.")
    if fmt == "hf":
        return export_folder(predictor, out)
    checked = {}

    def write(tmp: str) -> None:  # the file is checked before it is moved into place
        (export_onnx if fmt == "onnx" else export_torchscript)(predictor, tmp)
        checked["diff"] = diff = max_difference(predictor, tmp)
        if diff > TOLERANCE:
            raise RuntimeError(f"The {fmt} export differs from the eager model by {diff:.2e} (relative), more "
                               f"than {TOLERANCE:.0e}; not written.")

    atomic_write(out, write, to_path=True, suffix=".onnx" if fmt == "onnx" else ".pt")
    return checked["diff"]


def export_folder(predictor: Predictor, out: str, weights_dir: str | None = None) -> float:
    """`--format hf`: write the model folder, read it back (`hub.from_pretrained`, safetensors, the
    backbone rebuilt and its fingerprint checked) and return its max relative difference to eager."""
    from . import hub

    hub.save_pretrained(predictor, out)
    again = hub.from_pretrained(out, weights_dir or predictor.record.weights_dir or None)
    worst = 0.0
    for b in (1, 3):
        images = example_input(predictor, b)
        with torch.no_grad():
            eager, got = predictor.model.cpu()(images), again.model.cpu()(images)
        worst = max(worst, float((got - eager).abs().max() / eager.abs().max().clamp_min(1e-12)))
    if worst > TOLERANCE:
        raise RuntimeError(f"The model folder {out} gives logits that differ from the run's by {worst:.2e} "
                           f"(relative), more than {TOLERANCE:.0e}.")
    return worst


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `export` verb's options."""
    parser.description, parser.formatter_class = __doc__, argparse.RawDescriptionHelpFormatter
    add_run_arguments(parser)  # run_dir first, then this command's own
    parser.add_argument("out", help="file to write (e.g. student.onnx, student.pt), or the folder of --format hf")
    parser.add_argument("--format", required=True, choices=FORMATS)


def run(args: argparse.Namespace) -> int:
    """`promptkd export`: one checked classifier file."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.format == "onnx" and not args.out.endswith(".onnx"):
        raise UserError(f"An ONNX file must end in .onnx (got {args.out}).")
    predictor = load_predictor(args.run_dir, args.weights_dir or None, args.trust_pickled)
    if args.format == "hf":
        diff = export_folder(predictor, args.out, args.weights_dir or None)
        print(f"wrote the model folder {args.out} ({len(predictor.classnames)} classes; config.json, model.safetensors, "
              f"README.md; max relative difference to the run's model {diff:.1e}); `promptkd push {args.out} "
              "OWNER/NAME` uploads it")
        return 0
    diff = export(predictor, args.out, args.format)
    print(f"wrote {args.out} ({args.format}, {len(predictor.classnames)} classes, input "
          f"[batch, 3, {', '.join(map(str, predictor.record.preprocess['crop']))}]; max relative difference to "
          f"the eager model {diff:.1e})")
    return 0
