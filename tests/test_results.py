"""Tests for promptkd.results: synthetic run folders with realistic Dassl-style logs."""
import csv
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from promptkd import cli, records
from promptkd import results as R
from tests.results_kit import b2n_metrics, config_dump, result_line, training_lines, write_run, write_run_record

REPO = Path(__file__).resolve().parents[1]


def run_cli(capsys, *argv):
    code = cli.main(["results", *map(str, argv)])
    return code, capsys.readouterr().out


def report_of(root, seeds=(1, 2, 3), **kwargs):
    return R.aggregate([R.parse_log(p) for p in R.find_runs([root])], seeds=seeds, **kwargs)


# --------------------------------------------------------------------------------------------

def test_mean_std_and_hm_conventions(tmp_path):
    for seed, (base, novel) in zip((1, 2, 3), [(80, 70), (81, 72), (82, 74)]):
        write_run(tmp_path, "PromptKD", "ImageNet", seed, metrics=b2n_metrics(base, novel))
    report = report_of(tmp_path)
    group = report.group("base2novel", "PromptKD", "ImageNet")
    assert group.n == 3 and group.complete
    assert group.base_mean == pytest.approx(81.0)
    assert group.base_std == pytest.approx(1.0)        # sample std, ddof=1
    assert group.novel_mean == pytest.approx(72.0)
    assert group.novel_std == pytest.approx(2.0)
    # paper convention: HM(81, 72) = 2*81*72/153
    assert group.hm_of_means == pytest.approx(76.2353, abs=1e-4)
    # mean ± std of per-seed HM (74.67, 76.24, 77.79 as written, rounded to 2 decimals)
    assert group.hm_mean == pytest.approx(76.2333, abs=1e-3)
    assert group.hm_std == pytest.approx(1.5608, abs=1e-3)

    table = R.format_tables(report)[0]
    row = next(r for r in table.rows if r[1] == "ImageNet")
    assert row[2:] == ["81.00 ± 1.00", "72.00 ± 2.00", "76.24", "76.23 ± 1.56", "3/3", ""]
    assert "ddof=1" in table.caption and "HM of the averaged" not in row


def test_single_seed_has_zero_std(tmp_path):
    write_run(tmp_path, "PromptKD", "EuroSAT", 1, metrics=b2n_metrics(97.5, 82.0))
    group = report_of(tmp_path, seeds=(1,)).group("base2novel", "PromptKD", "EuroSAT")
    assert (group.base_n, group.base_std) == (1, 0.0)


def test_last_result_line_counts_and_prefix_is_ignored(tmp_path):
    path = write_run(tmp_path, "PromptKD", "Caltech101", 1, metrics=b2n_metrics(90, 80))
    with open(path, "a") as handle:
        handle.write("more eval\n" + result_line("PromptKD", "Caltech101", 1, "base2novel",
                                                 prefix="12:00 ", **b2n_metrics(98.9, 96.6)))
    run = R.parse_log(path)
    assert run.status == "ok" and run.metrics["base"] == 98.9 and run.metrics["novel"] == 96.6


def test_log_txt_wins_over_rotated_logs(tmp_path):
    new = write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 75.0))
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(10.0, 10.0),
              name="log.txt-2026-01-01-12-00-00", mtime=new.stat().st_mtime - 100)
    logs = R.find_runs([tmp_path])
    assert logs == [new]
    group = report_of(tmp_path, seeds=(1,)).group("base2novel", "PromptKD", "ImageNet")
    assert group.base_mean == 80.0 and group.n == 1


def test_only_rotated_logs_newest_timestamp_in_name_wins(tmp_path):
    older = write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(10.0, 10.0),
                      name="log.txt-2025-12-31-23-59-59", mtime=2_000_000_000)
    newer = write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 75.0),
                      name="log.txt-2026-01-01-00-00-00", mtime=1_000_000_000)
    assert R.find_runs([tmp_path]) == [newer]
    # --newest-log: the most recently modified file (stock Dassl writes re-runs there)
    assert R.find_runs([tmp_path], newest=True) == [older]


def test_warns_when_a_rotated_log_is_newer_than_log_txt(tmp_path, caplog):
    first = write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(70.0, 60.0),
                      mtime=1_000_000_000)
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 75.0),
              name="log.txt-2026-01-01-12-00-00", mtime=1_000_000_600)
    with caplog.at_level("WARNING", logger="promptkd.results"):
        assert R.find_runs([tmp_path]) == [first]
    assert "--newest-log" in caplog.text


def test_duplicate_seed_in_two_dirs_keeps_newest(tmp_path):
    old = write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(70.0, 60.0),
                    subdir="base2new_old", mtime=1_000_000_000)
    new = write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 75.0),
                    subdir="base2new", mtime=1_000_000_500)
    report = report_of(tmp_path, seeds=(1,))
    group = report.group("base2novel", "PromptKD", "ImageNet")
    assert report.used.log_path.tolist() == [new] and group.base_mean == 80.0
    dup = [i for i in report.issues if i.status == "duplicate"]
    assert len(dup) == 1 and dup[0].log_path == old and str(new) in dup[0].detail


def test_missing_seed_reported_and_mean_marked(tmp_path, capsys):
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 74.0))
    write_run(tmp_path, "PromptKD", "ImageNet", 2, metrics=b2n_metrics(81.0, 75.0))
    report = report_of(tmp_path)
    group = report.group("base2novel", "PromptKD", "ImageNet")
    assert group.n == 2 and group.missing == [3] and not group.complete
    assert [(i.seed, i.status) for i in report.issues] == [(3, "missing")]
    code, out = run_cli(capsys, tmp_path)
    assert code == 0
    assert "80.50 ± 0.71 (2/3 seeds)" in out
    assert "| missing" in out and "no run found" in out


def test_unfinished_and_failed_runs_listed(tmp_path, capsys):
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 74.0))
    failed = write_run(tmp_path, "PromptKD", "ImageNet", 2, metrics=b2n_metrics(1.0, 1.0),
                       status="failed")
    unfinished = write_run(tmp_path, "PromptKD", "ImageNet", 3, status="unfinished")
    # an unfinished run that has not logged an epoch yet: identity from its run.json
    bare = tmp_path / "base2new" / "promptkd" / "dtd" / "seed2" / "log.txt"
    bare.parent.mkdir(parents=True)
    write_run_record(bare.parent, "PromptKD", "DescribableTextures", 2)
    bare.write_text("Setting fixed seed: 2\nLoading trainer: PromptKD\n")

    bare_run = R.parse_log(bare)
    assert (bare_run.status, bare_run.trainer, bare_run.dataset, bare_run.seed,
            bare_run.protocol) == ("unfinished", "PromptKD", "DescribableTextures", 2,
                                   "base2novel")
    failed_run = R.parse_log(failed)
    assert failed_run.status == "failed" and "CUDA out of memory" in failed_run.detail

    report = report_of(tmp_path)
    group = report.group("base2novel", "PromptKD", "ImageNet")
    assert group.n == 1 and group.base_mean == 80.0   # the failed run is not used
    statuses = {(i.dataset, i.seed): (i.status, i.log_path) for i in report.issues}
    assert statuses[("ImageNet", 2)] == ("failed", failed)
    assert statuses[("ImageNet", 3)] == ("unfinished", unfinished)
    assert statuses[("DescribableTextures", 2)] == ("unfinished", bare)
    assert statuses[("DescribableTextures", 1)][0] == "missing"

    # a crashed re-run next to a finished run of the same seed: listed, the finished one used
    rerun = write_run(tmp_path, "PromptKD", "ImageNet", 1, status="unfinished", subdir="rerun")
    report = report_of(tmp_path)
    assert report.group("base2novel", "PromptKD", "ImageNet").n == 1
    issue = next(i for i in report.issues if i.log_path == rerun)
    assert issue.status == "unfinished" and "finished run" in issue.detail
    rerun.unlink()

    code, out = run_cli(capsys, tmp_path)
    assert code == 0
    assert str(failed) in out and str(unfinished) in out and str(bare) in out
    assert "last seen at epoch 7/20" in out


def test_old_log_without_result_or_record_is_listed_unidentified(tmp_path, capsys):
    """Neither the config dump atop an old log nor its folder names say what a run was."""
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 74.0))
    old = tmp_path / "base2new" / "promptkd" / "dtd" / "seed2" / "log.txt"
    old.parent.mkdir(parents=True)
    old.write_text(config_dump("PromptKD", "DescribableTextures", 2, "base2novel") + training_lines(20, 7))
    run = R.parse_log(old)
    assert (run.status, run.trainer, run.dataset, run.seed, run.protocol) == ("unfinished", None, None, None, None)
    (issue,) = [i for i in report_of(tmp_path, seeds=(1,)).issues if i.log_path == old]
    assert issue.status == "unfinished" and "no run.json and no RESULT line" in issue.detail
    code, out = run_cli(capsys, tmp_path, "--seeds", "1")
    assert code == 0 and str(old) in out

def _all_b2n(root, trainer="PromptKD", skip=(), offset=0.0):
    expected = {}
    for k, dataset in enumerate(R.BASE2NOVEL_DATASETS):
        if dataset in skip:
            continue
        base, novel = 70.0 + k + offset, 60.0 + k
        for seed in (1, 2, 3):
            write_run(root, trainer, dataset, seed,
                      metrics=b2n_metrics(base + seed - 2, novel - seed + 2))
        expected[dataset] = (base, novel)
    return expected


def test_average_of_11_when_complete(tmp_path):
    _all_b2n(tmp_path)
    avg = report_of(tmp_path).average("base2novel", "PromptKD")
    # bases 70..80 (mean 75), novels 60..70 (mean 65); HM of the averages
    assert avg.base == pytest.approx(75.0)
    assert avg.novel == pytest.approx(65.0)
    assert avg.hm_of_means == pytest.approx(2 * 75 * 65 / 140)
    assert avg.missing == [] and avg.short == []
    table = R.format_tables(report_of(tmp_path))[0]
    row = next(r for r in table.rows if r[1] == "Average (11)")
    assert row[2:5] == ["75.00", "65.00", "69.64"]
    # paper display names
    assert {"Flowers102", "DTD"} <= {r[1] for r in table.rows}


def test_average_of_11_refused_when_datasets_missing(tmp_path, capsys):
    _all_b2n(tmp_path, skip=("EuroSAT", "UCF101"))
    avg = report_of(tmp_path).average("base2novel", "PromptKD")
    assert math.isnan(avg.base) and avg.missing == ["EuroSAT", "UCF101"]
    code, out = run_cli(capsys, tmp_path)
    assert code == 0
    assert "not computed, missing: EuroSAT, UCF101" in out


def test_cross_table_and_10_target_average(tmp_path, capsys):
    targets = {d: 60.0 + i for i, d in enumerate(R.CROSS_TARGETS)}   # 60..69, mean 64.5
    for seed in (1, 2, 3):
        write_run(tmp_path, "PromptKD", "ImageNet", seed, "cross", {"accuracy": 77.0 + seed})
        for dataset, acc in targets.items():
            write_run(tmp_path, "PromptKD", dataset, seed, "cross", {"accuracy": acc})
        for dataset in R.DG_DATASETS:
            write_run(tmp_path, "PromptKD", dataset, seed, "cross", {"accuracy": 50.0})
    report = report_of(tmp_path)
    assert report.average("cross", "PromptKD").accuracy == pytest.approx(64.5)
    table = next(t for t in R.format_tables(report) if t.title.startswith("Cross"))
    assert table.headers[:3] == ["Method", "ImageNet", "Caltech101"]
    assert table.headers[12:] == ["Average (10)", "ImageNet-V2", "ImageNet-Sketch",
                                  "ImageNet-A", "ImageNet-R"]
    assert table.rows[0][1] == "79.00 ± 1.00" and table.rows[0][12] == "64.50"

    # one target gone: no average, and the note says which
    for seed in (1, 2, 3):
        (tmp_path / "cross" / "promptkd" / "eurosat" / f"seed{seed}" / "log.txt").unlink()
    code, out = run_cli(capsys, tmp_path, "--protocol", "cross")
    assert code == 0
    assert "Average (10) not computed, missing: EuroSAT" in out
    assert "Base-to-novel" not in out


def test_comparison_table_for_several_methods(tmp_path):
    _all_b2n(tmp_path, "PromptKD", offset=10.0)
    _all_b2n(tmp_path, "CoOp", skip=("ImageNet",))
    tables = R.format_tables(report_of(tmp_path))
    comparison = next(t for t in tables if t.title.startswith("Comparison"))
    assert comparison.headers[0] == "Method" and comparison.headers[-1] == "Average (11)"
    rows = {r[0]: r for r in comparison.rows}
    assert rows["CoOp"][1] == "—" and rows["CoOp"][-1] == "—"
    assert rows["PromptKD"][-1] == f"{R.harmonic_mean(85.0, 65.0):.2f}"
    assert any("CoOp: Average (11) not computed, missing: ImageNet" in n
               for n in comparison.notes)


def test_different_model_selection_is_not_averaged_together(tmp_path):
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 74.0))
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(82.0, 73.0),
              subdir="paper", selection="best_base_test")
    report = report_of(tmp_path, seeds=(1,))
    assert report.methods("base2novel") == ["PromptKD (best_base_test)",
                                            "PromptKD (last_epoch)"]
    assert not any(i.status == "duplicate" for i in report.issues)


def test_csv_markdown_and_plot_written(tmp_path, capsys):
    runs = tmp_path / "runs"
    for seed, (base, novel) in zip((1, 2, 3), [(80, 70), (81, 72), (82, 74)]):
        write_run(runs, "PromptKD", "ImageNet", seed, metrics=b2n_metrics(base, novel))
        write_run(runs, "PromptKD", "DescribableTextures", seed,
                  metrics=b2n_metrics(85.0, 71.0))
    prefix = tmp_path / "out" / "table1"
    code, out = run_cli(capsys, runs, "--out", prefix, "--plot")
    assert code == 0 and "Written:" in out

    with open(prefix.with_suffix(".csv"), newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["dataset"] for r in rows] == ["ImageNet", "DescribableTextures"]
    imagenet = rows[0]
    assert (imagenet["protocol"], imagenet["method"], imagenet["n_seeds"]) == \
        ("base2novel", "PromptKD", "3")
    assert float(imagenet["base_mean"]) == pytest.approx(81.0)
    assert float(imagenet["base_std"]) == pytest.approx(1.0)
    assert float(imagenet["novel_std"]) == pytest.approx(2.0)
    assert float(imagenet["hm_of_means"]) == pytest.approx(76.2353, abs=1e-4)
    assert imagenet["seeds"] == "1 2 3" and imagenet["base_n"] == "3"

    markdown = prefix.with_suffix(".md").read_text()
    assert markdown.startswith("# Results")
    cells = [[c.strip() for c in line.strip().strip("|").split("|")]
             for line in markdown.splitlines() if line.startswith("|")]
    assert cells[0] == ["Method", "Dataset", "Base", "Novel", "HM", "HM (seeds)", "Seeds",
                        "Note"]
    assert ["PromptKD", "ImageNet", "81.00 ± 1.00", "72.00 ± 2.00", "76.24", "76.23 ± 1.56",
            "3/3", ""] in cells
    assert "## Missing / unfinished" in markdown

    png = prefix.with_suffix(".png")
    assert png.stat().st_size > 1000 and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_default_prefix_is_in_runs_dir(tmp_path, capsys):
    write_run(tmp_path, "PromptKD", "ImageNet", 1, metrics=b2n_metrics(80.0, 74.0))
    code, _ = run_cli(capsys, tmp_path, "--seeds", "1")
    assert code == 0
    assert (tmp_path / "results.csv").exists() and (tmp_path / "results.md").exists()


def test_exit_code_2_without_logs(tmp_path, capsys):
    (tmp_path / "empty" / "sub").mkdir(parents=True)
    for folder in ("empty", "does-not-exist"):
        with pytest.raises(SystemExit) as exit:  # the `promptkd` command: error: ..., exit code 2
            cli.console(["results", str(tmp_path / folder)])
        assert exit.value.code == 2
        assert ("no log.txt found" if folder == "empty" else "is not a directory") in capsys.readouterr().err


def test_module_entry_point(tmp_path):
    (tmp_path / "empty").mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO))
    proc = subprocess.run([sys.executable, "-m", "promptkd", "results", str(tmp_path / "empty")],
                          capture_output=True, text=True, env=env, cwd=tmp_path)
    assert proc.returncode == 2 and "no log.txt found" in proc.stderr


def test_no_benchmark_average_for_methods_off_the_benchmark(tmp_path, capsys):
    write_run(tmp_path, "PromptKD", "ToyShapes", 1, metrics=b2n_metrics(100.0, 26.0))
    write_run(tmp_path, "CoOp", "ImageNet", 1, metrics=b2n_metrics(70.0, 60.0))
    code, out = run_cli(capsys, str(tmp_path), "--seeds", "1")
    assert code == 0
    avg_rows = [line for line in out.splitlines() if line.startswith("| ") and "| Average (11) |" in line]
    assert len(avg_rows) == 1 and avg_rows[0].startswith("| CoOp ")
    assert "CoOp: Average (11) not computed" in out and "PromptKD: Average (11)" not in out


def test_backbone_files_label_methods_by_file_stem():
    runs = [R.Run(Path(f"/r/{i}/log.txt"), "ok", trainer="ZeroshotCLIP", backbone=b)
            for i, b in enumerate(["/w/teacher.pt", "/w/student.pt"])]
    assert sorted(R._method_labels(runs).values()) == ["ZeroshotCLIP (student)", "ZeroshotCLIP (teacher)"]
    named = [R.Run(Path(f"/r/{i}/log.txt"), "ok", trainer="CoOp", backbone=b)
             for i, b in enumerate(["ViT-B/16", "ViT-L/14"])]
    assert sorted(R._method_labels(named).values()) == ["CoOp (ViT-B/16)", "CoOp (ViT-L/14)"]
    same_stem = [R.Run(Path(f"/r/{i}/log.txt"), "ok", trainer="CoOp", backbone=b)
                 for i, b in enumerate(["/a/model.pt", "/b/model.pt"])]
    assert sorted(R._method_labels(same_stem).values()) == ["CoOp (/a/model.pt)", "CoOp (/b/model.pt)"]


def test_plot_of_one_dataset_puts_methods_side_by_side(tmp_path):
    for trainer in ("PromptKD", "CoOp", "ZeroshotCLIP"):
        write_run(tmp_path, trainer, "ToyShapes", 1, metrics=b2n_metrics(60.0, 50.0))
    report = R.aggregate([R.parse_log(p) for p in R.find_runs([tmp_path])], seeds=(1,))
    png = tmp_path / "plot.png"
    assert R.plot(report, png)
    from PIL import Image
    with Image.open(png) as image:  # one panel, not one per method
        assert image.size[1] < 3.2 * 120 * 1.5


def write_few_shot(root, trainer, dataset, seed, shots, accuracy, **record):
    """A finished few-shot run as this version records it: run.json with labelled_shots, result.json."""
    folder = Path(root) / "few_shot" / trainer.lower() / dataset / f"shots{shots}" / f"seed{seed}"
    folder.mkdir(parents=True)
    run = {"format": 1, "kind": "run", "run_id": f"{trainer}-{dataset}-{shots}-{seed}", "trainer": trainer,
           "dataset": dataset, "protocol": "few_shot", "seed": seed, "backbone": "ViT-B/16",
           "selection": "last_epoch", "labelled_shots": shots, **record}
    records.atomic_write_json(folder / "run.json", run)
    records.atomic_write_json(folder / "result.json", {"format": 1, "kind": "result", "run_id": run["run_id"],
                                                        "metrics": {"accuracy": accuracy}})


def test_few_shot_accuracy_against_shots_table_csv_and_plot(tmp_path, capsys):
    for d, dataset in enumerate(R.BASE2NOVEL_DATASETS):  # CoOp: all 11 at K = 1 and 2, two seeds
        for shots in (1, 2):
            for seed in (1, 2):
                write_few_shot(tmp_path, "CoOp", dataset, seed, shots, 50.0 + d + 10 * shots + seed)
    write_few_shot(tmp_path, "PromptKD", "EuroSAT", 1, 4, 90.0, num_shots=0)  # a student: its teacher's K
    write_few_shot(tmp_path, "PromptKD", "EuroSAT", 2, None, 91.0, num_shots=0)  # K unknown: in no mean
    report = report_of(tmp_path, seeds=(1, 2))
    assert report.shots() == [1, 2, 4]
    assert report.group("few_shot", "CoOp", "EuroSAT", 2).accuracy_mean == pytest.approx(50 + 9 + 20 + 1.5)
    assert report.average("few_shot", "CoOp", 1).accuracy == pytest.approx(50 + 5 + 10 + 1.5)  # mean d = 5
    assert [(i.method, i.seed, i.status) for i in report.issues if i.status != "missing"] == \
        [("PromptKD", 2, "unidentified")]
    assert "labelled shots unknown" in next(i.detail for i in report.issues if i.seed == 2 and i.method == "PromptKD")
    code, out = run_cli(capsys, tmp_path, "--seeds", "1", "2", "--plot", "--protocol", "few_shot")
    assert code == 0 and "## Few-shot: accuracy against shots" in out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.splitlines() if line.startswith("| ")]
    assert ["Method", "Dataset", "1-shot", "2-shot", "4-shot"] in cells
    assert ["CoOp", "EuroSAT", "70.50 ± 0.71", "80.50 ± 0.71", "—"] in cells
    assert ["CoOp", "Average (11)", "66.50", "76.50", "—"] in cells
    assert ["PromptKD", "EuroSAT", "—", "—", "90.00 ± 0.00 (1/2 seeds)"] in cells
    assert not any(c[:2] == ["PromptKD", "Average (11)"] for c in cells)  # 10 datasets missing: no row of dashes
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    coop = [r for r in rows if r["method"] == "CoOp" and r["dataset"] == "EuroSAT"]
    assert [(r["shots"], r["accuracy_mean"]) for r in coop] == [("1", "70.5000"), ("2", "80.5000")]
    assert [r["shots"] for r in rows if r["kind"] == "average"] == ["1", "2"]
    assert (tmp_path / "results.png").stat().st_size > 1000
    # outside the few-shot protocol the shots column stays empty
    write_run(tmp_path / "b2n", "CoOp", "ImageNet", 1, metrics=b2n_metrics(80.0, 70.0))
    run_cli(capsys, tmp_path / "b2n", "--seeds", "1")
    with open(tmp_path / "b2n" / "results.csv", newline="") as handle:
        assert [r["shots"] for r in csv.DictReader(handle)] == [""]


def test_distilled_students_are_listed_beside_the_method_trained_with_labels(tmp_path):
    for trainer in ("MaPLe", "PromptKD→MaPLe (sym-KL)", "CoOp", "PromptKD", "PromptKD→CoOp"):
        write_run(tmp_path, trainer, "ImageNet", 1, metrics=b2n_metrics(70.0, 60.0))
    report = report_of(tmp_path, seeds=(1,))
    order = ["CoOp", "PromptKD→CoOp", "MaPLe", "PromptKD→MaPLe (sym-KL)", "PromptKD"]
    assert report.methods("base2novel") == order
    comparison = next(t for t in R.format_tables(report) if t.title == "Comparison, base-to-novel HM")
    assert [row[0] for row in comparison.rows] == order


def write_distilled(root, folder, dataset, seed, metrics, pool, trainer="PromptKD"):
    """A finished base-to-novel student as this version records it: run.json with its pool, result.json."""
    path = Path(root) / folder / dataset / f"seed{seed}"
    path.mkdir(parents=True)
    run = {"format": 1, "kind": "run", "run_id": f"{folder}-{dataset}-{seed}", "trainer": trainer,
           "objective_label": None, "dataset": dataset, "protocol": "base2novel", "seed": seed,
           "backbone": "ViT-B/16", "selection": "last_epoch", "pool": pool}
    records.atomic_write_json(path / "run.json", run)
    records.atomic_write_json(path / "result.json", {"format": 1, "kind": "result", "run_id": run["run_id"],
                                                      "metrics": metrics})


def pool_record(sources, images, budget=None, labels_used=None):
    return {"sources": sources, "images": images, "images_by_source": {}, "budget": budget,
            "labels_used_for_selection": labels_used, "streamed_shards": None, "streamed_listed_images": None,
            "leakage_check": {"checked": False}}


def test_each_pool_is_a_method_of_its_own_and_the_pools_table_counts_its_images(tmp_path, capsys):
    """run.json's pool in the tables: the published pool (train) keeps the method's name; any other
    pool is named in the method and never averaged with it; the pools table gives each group's
    sources, image count (a range where seeds differ) and whether labels chose the images."""
    for seed in (1, 2):
        write_distilled(tmp_path, "default", "EuroSAT", seed, b2n_metrics(90.0, 80.0), pool_record(["train"], 1200))
        write_distilled(tmp_path, "base", "EuroSAT", seed, b2n_metrics(91.0, 70.0 + seed),
                        pool_record(["train_base"], 600 + seed, labels_used="class subset: base classes only"))
        write_distilled(tmp_path, "budget", "EuroSAT", seed, b2n_metrics(85.0, 75.0),
                        pool_record(["train", "folder:/data/extra"], 500,
                                    budget={"images": 500, "requested": 500, "seed": 0}))
    write_run(tmp_path, "CoOp", "EuroSAT", 1, metrics=b2n_metrics(80.0, 60.0))  # no pool: not in that table
    report = report_of(tmp_path, seeds=(1, 2))
    other, base = "PromptKD [pool train+folder:extra (budget 500)]", "PromptKD [pool train_base]"
    assert report.methods("base2novel") == ["CoOp", "PromptKD", other, base]
    assert report.group("base2novel", "PromptKD", "EuroSAT").novel_mean == 80.0  # no other pool averaged in
    assert report.group("base2novel", base, "EuroSAT").novel_mean == 71.5
    code, out = run_cli(capsys, tmp_path, "--seeds", "1", "2")
    assert code == 0 and "## Unlabelled pools" in out
    cells = [[c.strip() for c in line.strip("|").split("|")] for line in out.split("## Unlabelled pools")[1]
             .split("## ")[0].splitlines() if line.startswith("| ")]
    assert cells == [["Protocol", "Method", "Dataset", "Pool", "Images", "Labels chose the images"],
                     ["base2novel", "PromptKD", "EuroSAT", "train", "1,200", "no"],
                     ["base2novel", other, "EuroSAT", "train+folder:extra (budget 500)", "500", "no"],
                     ["base2novel", base, "EuroSAT", "train_base", "601–602", "class subset: base classes only"]]
    with open(tmp_path / "results.csv", newline="") as handle:
        rows = {r["method"]: r for r in csv.DictReader(handle) if r["kind"] == "dataset"}
    assert (rows[base]["pool"], rows[base]["pool_images_min"], rows[base]["pool_images_max"]) == \
        ("train_base", "601", "602")
    assert rows["CoOp"]["pool"] == "" and rows["PromptKD"]["pool_selection"] == ""
