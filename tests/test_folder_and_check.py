"""ImageFolder (a user's own folder tree) and `promptkd check`, on fake data."""
import json
import os
import os.path as osp

import pytest

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the dataset tests)")

from dassl.data.datasets import build_dataset  # noqa: E402

import promptkd.datasets  # noqa: E402,F401
from promptkd import cli  # noqa: E402
from promptkd.datasets import check  # noqa: E402
from promptkd.errors import ConfigError  # noqa: E402
from tests.cli import promptkd  # noqa: E402
from tests.fake_data import MAKERS, _folder_per_class, make_all  # noqa: E402
from tests.dataset_kit import EXPECTED_CLASSNAMES, make_cfg  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
FOLDERS = ["sea_lion", "cat", "dog", "bird", "eel"]  # sorted: bird cat dog eel sea_lion


def folder_cfg(root, name, **kwargs):
    cfg = make_cfg(root, "folder", **kwargs)
    cfg.DATASET.FOLDER.DIR = name
    return cfg


def test_class_folders_split_by_ratio_and_seed(tmp_path):
    _folder_per_class(str(tmp_path / "mine"), FOLDERS, per_class=10)
    ds = build_dataset(folder_cfg(tmp_path, "mine"))
    assert ds.classnames == ["bird", "cat", "dog", "eel", "sea lion"]  # labels by sorted folder name
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (25, 10, 15)  # 50/20/30 per class
    split = tmp_path / "mine" / "split_ImageFolder_split50-20-30_seed1.json"
    stored = json.loads(split.read_text())
    assert {k: len(v) for k, v in stored.items()} == {"train": 25, "val": 10, "test": 15}
    assert stored["train"][0][0].count("/") == 1  # relative to the dataset folder, as CoOp's
    again = build_dataset(folder_cfg(tmp_path, "mine"))  # read back from the JSON
    assert [d.impath for d in again.test] == [d.impath for d in ds.test]
    other = folder_cfg(tmp_path, "mine")
    other.DATASET.FOLDER.SPLIT_SEED = 2
    assert [d.impath for d in build_dataset(other).test] != [d.impath for d in ds.test]
    base = build_dataset(folder_cfg(tmp_path, "mine", subsample="base", shots=2))
    assert base.classnames == ["bird", "cat", "dog"] and len(base.train_x) == 6
    new = build_dataset(folder_cfg(tmp_path, "mine", subsample="new"))
    assert new.classnames == ["eel", "sea lion"]


def test_train_test_folders_classnames_file_and_errors(tmp_path):
    for split, n in (("train", 5), ("test", 2)):
        _folder_per_class(str(tmp_path / "mine" / split), ["n001", "n002", "n003"], per_class=n)
    (tmp_path / "mine" / "classnames.txt").write_text("n001 red fox\nn002 grey wolf\n")
    ds = build_dataset(folder_cfg(tmp_path, "mine"))
    assert ds.classnames == ["red fox", "grey wolf", "n003"]
    assert len(ds.test) == 6 and len(ds.train_x) + len(ds.val) == 15 and len(ds.val) == 3  # 20% of train
    assert all("/test/" in d.impath for d in ds.test)
    (tmp_path / "mine" / "classnames.txt").write_text("n009 nothing\n")
    for f in tmp_path.glob("mine/split_*.json"):
        f.unlink()
    with pytest.raises(ConfigError, match="n009"):
        build_dataset(folder_cfg(tmp_path, "mine"))
    with pytest.raises(ConfigError, match="DATASET.FOLDER.DIR"):
        build_dataset(folder_cfg(tmp_path, ""))


def test_folder_dataset_through_teacher_and_student_runs(tmp_path, clip_files):
    from tests.trainer_kit import make_trainer, student_args, teacher_args
    _folder_per_class(str(tmp_path / "data" / "pets"), FOLDERS, per_class=10)
    data, folder_yaml = str(tmp_path / "data"), osp.join(REPO, "configs/datasets/folder.yaml")

    def as_folder(args):
        args[args.index("--dataset-config-file") + 1] = folder_yaml
        return args + ["DATASET.FOLDER.DIR", "pets"]
    teacher = make_trainer(as_folder(teacher_args(data, clip_files, str(tmp_path / "t"), epochs=1)))
    teacher.train()
    assert teacher.all_classnames == ["bird", "cat", "dog", "eel", "sea lion"]
    assert teacher.dm.dataset.classnames == ["bird", "cat", "dog"]  # base classes, 4-shot
    assert {"base", "novel", "hm"} <= set(teacher.last_report)
    assert os.path.isfile(tmp_path / "data" / "pets" / "split_fewshot" / "shot_4-seed_1.pkl")
    student = make_trainer(as_folder(student_args(data, clip_files, str(tmp_path / "s"), str(tmp_path / "t" / "export"),
                                                  epochs=1)))
    student.train()
    assert {"base", "novel", "hm"} <= set(student.last_report)


# --- promptkd.datasets.check ---------------------------------------------------------------------------

def run_check(args, capsys):
    code = cli.main(["check", *args])
    return code, capsys.readouterr().out


def test_check_passes_on_the_15_coop_datasets(tmp_path, capsys):
    make_all(str(tmp_path))
    code, out = run_check(["--root", str(tmp_path), *MAKERS, "--workers", "1"], capsys)
    assert code == 0, out
    assert out.count("all images read") == 15 and "all datasets read" in out
    for key, names in EXPECTED_CLASSNAMES.items():
        assert f"): {len(names)} classes" in out


def test_check_reports_truncated_and_missing_images(tmp_path, capsys):
    MAKERS["dtd"](str(tmp_path), n_classes=5, per_class=10)
    _folder_per_class(str(tmp_path / "mine"), FOLDERS, per_class=6)
    code, out = run_check(["--root", str(tmp_path), "dtd", "mine", "--workers", "1"], capsys)
    assert code == 0 and out.count("all images read") == 2
    jpeg = tmp_path / "dtd" / "images" / "bubbly" / "bubbly_0003.jpg"
    jpeg.write_bytes(jpeg.read_bytes()[:300])  # a truncated JPEG: opens, fails to decode
    gone = tmp_path / "mine" / "eel" / "eel_0002.jpg"
    gone.unlink()  # listed by the split JSON written above, now missing
    proc = promptkd("check", ["--root", tmp_path, "DescribableTextures", "mine", "--workers", "2"], cwd=REPO)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f"unreadable: {jpeg}" in proc.stdout and f"missing: {gone}" in proc.stdout
    # each header and the closing line say which problem, missing and unreadable apart
    assert "5 classes, 1 image unreadable\n" in proc.stdout and "5 classes, 1 image missing\n" in proc.stdout
    assert proc.stdout.rstrip().endswith(
        "problems (details above): DescribableTextures: 1 image unreadable; mine: 1 image missing")


def test_check_says_no_images_found_for_an_empty_dataset_folder(tmp_path, capsys):
    """An empty folder is "no images found" (not "missing or unreadable"), for a CoOp loader
    and for ImageFolder, and no split JSON is written from it (adding the images later works)."""
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    (tmp_path / "mine").mkdir()
    code, out = run_check(["--root", str(tmp_path), "dtd", "mine", "caltech101", "--workers", "1"], capsys)
    assert code == 1
    assert f"dtd: no images found: DescribableTextures: no images found in {tmp_path / 'dtd' / 'images'}" in out
    assert f"mine: no images found: ImageFolder: no images found in {tmp_path / 'mine'}" in out
    assert out.rstrip().endswith("problems (details above): dtd: no images found; mine: no images found; "
                                 "caltech101: cannot be loaded")
    assert "missing or unreadable" not in out
    assert not list(tmp_path.glob("dtd/split_*.json"))
    MAKERS["dtd"](str(tmp_path), n_classes=5, per_class=10)  # the images arrive
    code, out = run_check(["--root", str(tmp_path), "dtd", "--workers", "1"], capsys)
    assert code == 0 and "all datasets read" in out


def test_empty_dataset_folder_stops_training_with_a_user_error(tmp_path):
    """Without the check, Dassl fails on an empty train split with a bare "max() arg is an empty sequence"."""
    from promptkd.datasets.common import NoImagesError
    (tmp_path / "dtd" / "images").mkdir(parents=True)
    with pytest.raises(NoImagesError, match="DescribableTextures: no images found in .*DATASETS.md#describable"):
        build_dataset(make_cfg(tmp_path, "dtd"))


def test_check_usage_errors(tmp_path, capsys):
    from promptkd.errors import run_cli
    args = ["--root", str(tmp_path), "no_such_set"]
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: cli.main(["check", *args]), args)
    assert exit_info.value.code == 2 and "error: Unknown dataset 'no_such_set'" in capsys.readouterr().err


def test_check_reports_a_dataset_that_is_not_there(tmp_path, capsys):
    code, out = run_check(["--root", str(tmp_path), "caltech101", "--workers", "1"], capsys)
    assert code == 1 and "cannot be loaded" in out and "caltech-101" in out
