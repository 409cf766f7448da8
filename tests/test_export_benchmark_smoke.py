"""Smoke run of benchmarks/export_speed.py on a tiny tower: three runners, sane figures, JSON."""
import json
import os
import sys

import pytest

pytestmark = pytest.mark.slow



def test_tiny_export_benchmark(tmp_path, capsys):
    from benchmarks import export_speed as module

    out = tmp_path / "bench.json"
    assert module.main(["--tiny", "--classes", "10", "--batch", "3", "--repeats", "1", "--device", "cpu",
                        "--json", str(out)]) == 0
    report, printed = json.loads(out.read_text()), capsys.readouterr().out
    assert set(report["results"]) == {"eager", "torchscript", "onnx"}
    for name, r in report["results"].items():
        assert r["images_per_s"] > 0 and r["max_abs_diff_to_eager"] <= 1e-4, name
        assert f"\n{name} " in printed
    assert report["machine"]["load_before"] and report["config"]["tower"] == "tiny"
