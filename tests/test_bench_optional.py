"""The benchmarks' optional rows (issue 37 follow-ups): the ONNX rows import onnxruntime through
promptkd.extras.require and say "needs torch >= 2.7" on an older torch instead of crashing; the
GPU report's loader verdict names the decoder a GPU run needs."""
import pytest
import torch

from benchmarks import export_speed
from benchmarks.gpu_report import loader_verdict


def test_onnx_rows_say_what_they_need_on_an_old_torch(monkeypatch):
    monkeypatch.setattr(torch, "__version__", "2.6.0")
    assert export_speed.onnx_unavailable() == "needs torch >= 2.7 (this is 2.6.0)"


def test_onnx_rows_name_the_missing_extra(monkeypatch):
    import builtins
    real = builtins.__import__

    def no_onnxruntime(name, *args, **kwargs):
        if name.startswith("onnxruntime"):
            raise ImportError("No module named 'onnxruntime'")
        return real(name, *args, **kwargs)

    monkeypatch.setitem(__import__("sys").modules, "onnxruntime", None)
    monkeypatch.setattr(builtins, "__import__", no_onnxruntime)
    why = export_speed.onnx_unavailable()
    if why and why.startswith("needs torch"):
        pytest.skip("this torch is older than the ONNX exporter needs")
    assert "onnxruntime" in why and "export" in why and "pip install" in why


def rows(pil, tv):
    return [{"decoder": "pil", "images_per_s": pil}, {"decoder": "torchvision", "images_per_s": tv}]


def test_loader_verdict_names_the_decoder_a_gpu_run_needs():
    assert "needs INPUT.DECODER pil" in loader_verdict(rows(3000, 5000), 2500, 16)
    assert "needs INPUT.DECODER torchvision" in loader_verdict(rows(2000, 5000), 2500, 16)
    far = loader_verdict(rows(2000, 4000), 8000, 16)  # 250 images/s per worker -> 32 workers
    assert "neither" in far and "about 32 CPU workers" in far
    assert loader_verdict(rows(1, 2), None, 1) == "no student step measured to compare with"
