"""Smoke runs of benchmarks/distill_step.py, teacher_memory.py and ddp_scaling.py on tiny CLIPs: sane figures, JSON."""
import json
import os
import subprocess
import sys

import pytest
import torch

pytestmark = pytest.mark.slow

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_benchmark():
    from benchmarks import distill_step

    return distill_step


def test_tiny_benchmark_reports_all_settings(tmp_path, capsys):
    bench = load_benchmark()
    out = tmp_path / "bench.json"
    bench.main(["--tiny", "--classes", "10", "--repeats", "1", "--warmup", "0", "--device", "cpu", "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())

    settings = report["results"]["10"]
    assert set(settings) == set(bench.SETTINGS)
    for name, r in settings.items():
        assert r["seconds"] > 0, name
        assert r["flops"] > 0, name
        assert len(r["raw_seconds_per_call"]) == 1
        assert name in printed
    # The published-style paths do strictly more work than ours.
    for kind in ("train", "infer"):
        assert settings[f"{kind}/published"]["flops"] > settings[f"{kind}/ours"]["flops"]
    comparisons = {r["comparison"]: r for r in report["ratios"]}
    assert set(comparisons) == {"train per step", "infer per image"}
    for r in comparisons.values():
        assert r["flop_ratio"] > 1 and r["time_ratio"] > 0 and r["time_ratio_pct_of_flop_ratio"] > 0
    assert "time ratio as % of FLOP ratio" in printed
    assert report["config"]["student_dim"] != report["config"]["class_dim"]  # projector really derived
    assert report["machine"]["torch"]


def test_tiny_benchmark_measures_every_method_student(tmp_path, capsys):
    """--settings students: one train/student:<Method> row per registered prompt-learning method
    with prompts (a method added later is picked up), each a full step with a text tower, so
    more FLOPs than the paper's student on stored class vectors."""
    pytest.importorskip("dassl")
    from promptkd.trainers.students import method_students

    bench = load_benchmark()
    out = tmp_path / "students.json"
    bench.main(["--tiny", "--classes", "6", "--repeats", "1", "--warmup", "0", "--device", "cpu",
                "--settings", "train/ours", "students", "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    settings = report["results"]["6"]
    measured = {n[len(bench.STUDENT_PREFIX):] for n in settings if n.startswith(bench.STUDENT_PREFIX)}
    skipped = {n[len(bench.STUDENT_PREFIX):] for n in report["config"]["students_skipped"]}
    assert measured | skipped == set(method_students()) and not measured & skipped
    assert skipped == {"ZeroshotCLIP"}  # nothing to learn
    for name in measured:
        r = settings[bench.STUDENT_PREFIX + name]
        assert r["seconds"] > 0 and r["unit"] == "step"
        assert r["flops"] > settings["train/ours"]["flops"], name  # its own text tower, every step
        assert f"train/student:{name}" in printed
    # CoCoOp encodes its class prompts per image: the most FLOPs of all
    assert max(measured, key=lambda n: settings[bench.STUDENT_PREFIX + n]["flops"]) == "CoCoOp"
    assert report["config"]["students"]["train/student:PromptSRC"]["regularisers"] is True
    assert {r["student"] for r in report["student_ratios"]} == measured


def test_tiny_teacher_memory_benchmark(tmp_path, capsys):
    """benchmarks/teacher_memory.py end to end on a tiny CLIP: one subprocess per run, figures
    for every (classes, mode), the same loss with and without checkpointing, a slope per mode."""
    from benchmarks import teacher_memory as bench

    out = tmp_path / "memory.json"
    bench.main(["--tiny", "--classes", "3", "6", "--batch", "2", "--modes", "off", "both", "--device", "cpu",
                "--threads", "1", "--json", str(out)])
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert [(r["classes"], r["mode"]) for r in report["results"]] == [(3, "off"), (3, "both"), (6, "off"), (6, "both")]
    for r in report["results"]:
        assert r["seconds"] > 0 and r["peak_above_model_bytes"] > 0 and r["model_bytes"] > 0
        assert r["checkpointing"] == {"text": r["mode"] == "both", "image": r["mode"] == "both"}
    assert all(row["loss_equals_off"] for row in report["summary"]["rows"])
    assert set(report["summary"]["slopes"]) == {"off", "both"}
    assert report["summary"]["goal"]["classes"] == 6
    assert "peak above model" in printed and "per class" in printed and "goal at 6 classes" in printed
def test_open_clip_teacher_of_another_input_size(tmp_path, monkeypatch):
    """An open_clip architecture as teacher (256 px) for a 224 px student: image tower only."""
    import open_clip

    bench = load_benchmark()
    monkeypatch.setattr(open_clip.model, "_build_text_tower", lambda *a, **k: (_ for _ in ()).throw(
        AssertionError("the benchmark built a text tower that no setting needs")))
    args = bench.parse_args(["--teacher", "open_clip:ViT-B-32-256", "--student", "ViT-B/16", "--classes", "5",
                             "--batch", "2", "--depth", "1", "--settings", "part/teacher-image", "--device", "cpu"])
    models = bench.build_models(args, torch.device("cpu"))
    assert models.text_encoder is None and models.class_dim == 512
    assert models.teacher.input_adapter.size == (256, 256) and models.resolution == 224
    r = bench.measure(bench.Bench(models, args, 5, torch.device("cpu")), ["part/teacher-image"],
                      torch.device("cpu"), warmup=0, repeats=1)["part/teacher-image"]
    assert r["flops"] > 2 * 2 * 88e6 * 64  # 2 images x 64 patches x ~88M weights x 2 FLOPs at least


def test_tiny_ddp_scaling_benchmark(tmp_path):
    """benchmarks/ddp_scaling.py end to end: torchrun launches of 1 and 2 CPU processes (gloo)
    on tiny CLIPs, a table and JSON with one run per process count."""
    out = tmp_path / "ddp.json"
    proc = subprocess.run([sys.executable, "-m", "benchmarks.ddp_scaling", "--tiny",
                           "--steps", "1", "--warmup", "0", "--procs", "1", "2", "--device", "cpu",
                           "--json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    assert [r["procs"] for r in report["runs"]] == [1, 2]
    for r in report["runs"]:
        assert r["step_seconds"] > 0 and r["images_per_s"] > 0 and len(r["cpu_seconds_per_rank"]) == r["procs"]
    assert "efficiency" in report["table"] and report["machine"]["torch"]


# benchmarks/gpu_report.py and its one prepared command (scripts/gpu_check.sh): tests/test_gpu_report.py.
