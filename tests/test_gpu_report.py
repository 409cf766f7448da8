"""The GPU report and the one prepared GPU command, rehearsed on the CPU (tiny shapes).

The CUDA tier's verdict comes from its JUnit report: a tier that ran no test (all skipped, as
on this CPU) or in which a test failed fails the command, which still writes its figures."""
import json
import os
import subprocess
import sys

import pytest

from benchmarks.gpu_report import tier_verdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: every row item 2 of issue 37 names (the measurement column's text)
ROWS = ["teacher step", "published step (re-encodes the class texts)", "student step, online teacher",
        "student step, cached teacher", "data loader, INPUT.DECODER pil (", "data loader, INPUT.DECODER torchvision (",
        "evaluation (student, no grad)", "exported student (ONNX)"]


def junit(path, tests, failures=0, errors=0, skipped=0):
    with open(path, "w") as f:
        f.write(f'<?xml version="1.0"?><testsuites><testsuite name="pytest" tests="{tests}" failures="{failures}" '
                f'errors="{errors}" skipped="{skipped}"></testsuite></testsuites>')
    return path


def test_tier_verdict_needs_tests_that_ran_and_passed(tmp_path):
    ok = tier_verdict(junit(tmp_path / "a.xml", 12, skipped=2), 0)
    assert ok["ok"] and ok["passed"] == 10 and ok["why"] == ""
    none = tier_verdict(junit(tmp_path / "b.xml", 11, skipped=11), 0)  # pytest says 0: "11 skipped"
    assert not none["ok"] and "no test ran" in none["why"]
    failed = tier_verdict(junit(tmp_path / "c.xml", 12, failures=1), 1)
    assert not failed["ok"] and "1 failed" in failed["why"]
    missing = tier_verdict(str(tmp_path / "none.xml"), 4)  # a usage error (e.g. Dassl missing) writes none
    assert not missing["ok"] and "no JUnit report" in missing["why"]
    assert not tier_verdict(junit(tmp_path / "d.xml", 3), 2)["ok"]  # pytest's own exit code counts too


@pytest.mark.slow
def test_the_prepared_gpu_command_rehearsed_on_the_cpu(tmp_path):
    """`scripts/gpu_check.sh OUT --smoke`: the tier runs and skips everything here (no GPU), so
    the command exits 1 and says so; the table and JSON hold every row, in one folder."""
    out = tmp_path / "gpu check"  # a space: the script quotes its paths
    env = {**os.environ, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(["bash", os.path.join(ROOT, "scripts", "gpu_check.sh"), str(out), "--smoke"], cwd=str(tmp_path),
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "the CUDA tier did not pass (no test ran" in proc.stderr
    assert {"gpu_report.md", "gpu_report.json", "tier.xml", "tier.log"} <= set(os.listdir(out))
    report = json.loads((out / "gpu_report.json").read_text())
    assert report["tier"]["passed"] == 0 and report["tier"]["skipped"] > 0 and not report["tier"]["ok"]
    table = (out / "gpu_report.md").read_text()
    assert "CUDA tier: FAILED: 0 passed" in table
    for row in ROWS:
        assert f"| {row}" in table, row
    rows = report["rows"]
    teacher = {(r["classes"], r["grad_checkpoint"]) for r in rows if r["what"] == "teacher step" and r["prec"] == "fp16"}
    assert teacher == {(c, m) for c in (4, 6, 8) for m in ("off", "both")}  # the full run: 100 / 500 / 1000
    for name in ("online", "cached"):
        assert sorted(r["batch"] for r in rows if r["what"] == f"student step, {name} teacher" and r["prec"] == "fp16") \
            == [2, 3, 4]  # the full run: 8 / 32 / 128
    precs = {r["prec"] for r in rows if r["what"].startswith(("teacher", "student"))}
    assert {"fp16", "bf16", "amp (ran as bf16)"} <= precs  # amp is bf16 autocast on a CPU, and says so
    loaders = [r for r in rows if r["what"].startswith("data loader")]
    assert [r["decoder"] for r in loaders] == ["pil", "torchvision"]
    assert all(r["workers"] >= 1 and r["images_per_s"] > 0 for r in loaders)
    assert "a GPU run needs INPUT.DECODER" in loaders[-1]["verdict"] and loaders[-1]["verdict"] in table
    export = next(r for r in rows if r["what"].startswith("exported student"))
    assert "skipped" in export or export["provider"] == "CPUExecutionProvider"  # the provider that ran
    assert report["shipped_prec"] == {"teacher": "fp16", "student": "fp16"}
