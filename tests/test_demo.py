"""The offline demo: the generated ToyShapes dataset, the tiny-weights helper and
scripts/promptkd/demo.sh end to end (with fewer epochs)."""
import hashlib
import json
import os
import os.path as osp
import pickle
import subprocess
import sys

import pytest

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the demo tests)")

from dassl.config import get_cfg_default  # noqa: E402
from dassl.data.datasets import build_dataset  # noqa: E402

import datasets  # noqa: E402,F401  (registers ToyShapes)
from datasets import toy  # noqa: E402
from trainers.config import extend_cfg  # noqa: E402

REPO = osp.dirname(osp.dirname(osp.abspath(__file__)))
N_PER_CLASS = sum(n for _, n in toy.SPLIT_SIZES)


def tree_digest(folder):
    """{relative path: sha256} of every file under `folder`."""
    out = {}
    for dirpath, _, files in os.walk(folder):
        for name in files:
            path = osp.join(dirpath, name)
            with open(path, "rb") as f:
                out[osp.relpath(path, folder)] = hashlib.sha256(f.read()).hexdigest()
    return out


@pytest.fixture(scope="module")
def toy_root(tmp_path_factory):
    """A data root holding a generated toy_shapes folder (generated once for the module)."""
    root = tmp_path_factory.mktemp("toy_data")
    toy.ensure_toy_shapes(str(root / "toy_shapes"))
    return root


def make_cfg(root, subsample="all", shots=0, seed=1):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.merge_from_file(osp.join(REPO, "configs", "datasets", "toy_shapes.yaml"))
    cfg.DATASET.ROOT = str(root)
    cfg.DATASET.SUBSAMPLE_CLASSES = subsample
    cfg.DATASET.NUM_SHOTS = shots
    cfg.SEED = seed
    cfg.VERBOSE = False
    return cfg


# ----------------------------------------------------------------------------------------
# generation
# ----------------------------------------------------------------------------------------
def test_generation_writes_real_images_per_class(toy_root):
    from PIL import Image

    image_dir = toy_root / "toy_shapes" / "images"
    folders = sorted(os.listdir(image_dir))
    assert folders == [toy.class_folder(i) for i in range(10)]
    assert len(set(toy.CLASSNAMES)) == 10 and toy.CLASSNAMES[0] == "red circle"
    for folder in folders:
        names = sorted(os.listdir(image_dir / folder))
        assert len(names) == N_PER_CLASS
        assert sum(n.startswith("train_") for n in names) == 40
        assert sum(n.startswith("val_") for n in names) == 10
        assert sum(n.startswith("test_") for n in names) == 20
    with Image.open(image_dir / folders[3] / "test_007.png") as img:
        assert img.format == "PNG" and img.size == (32, 32) and img.mode == "RGB"
    manifest = json.loads((toy_root / "toy_shapes" / toy.MANIFEST).read_text())
    assert manifest["classnames"] == list(toy.CLASSNAMES)
    # no temporary folder is left next to the dataset
    assert sorted(os.listdir(toy_root)) == ["toy_shapes"]


def test_generation_is_deterministic(toy_root, tmp_path):
    other = tmp_path / "elsewhere" / "toy_shapes"
    toy.ensure_toy_shapes(str(other))
    one = "images/" + toy.class_folder(7) + "/train_013.png"
    assert (toy_root / "toy_shapes" / one).read_bytes() == (other / one).read_bytes()
    assert tree_digest(toy_root / "toy_shapes" / "images") == tree_digest(other / "images")
    # a second call reuses what is there
    before = os.stat(other / one).st_mtime_ns
    toy.ensure_toy_shapes(str(other))
    assert os.stat(other / one).st_mtime_ns == before


def test_interrupted_generation_leaves_nothing(tmp_path, monkeypatch):
    def boom(folder):
        os.makedirs(osp.join(folder, "images", "00_red_circle"))
        raise KeyboardInterrupt

    monkeypatch.setattr(toy, "_write_images", boom)
    with pytest.raises(KeyboardInterrupt):
        toy.ensure_toy_shapes(str(tmp_path / "toy_shapes"))
    assert os.listdir(tmp_path) == []


def test_foreign_folder_is_not_overwritten(tmp_path):
    (tmp_path / "toy_shapes" / "images").mkdir(parents=True)
    with pytest.raises(FileExistsError, match="not generated"):
        toy.ensure_toy_shapes(str(tmp_path / "toy_shapes"))


# ----------------------------------------------------------------------------------------
# the Dassl dataset
# ----------------------------------------------------------------------------------------
def test_dataset_all_classes_and_split_json(toy_root):
    ds = build_dataset(make_cfg(toy_root))
    assert type(ds).__name__ == "ToyShapes"
    assert ds.classnames == list(toy.CLASSNAMES)
    assert (len(ds.train_x), len(ds.val), len(ds.test)) == (400, 100, 200)
    assert sorted({d.label for d in ds.test}) == list(range(10))
    split_path = toy_root / "toy_shapes" / "split_zhou_ToyShapes.json"
    split = json.loads(split_path.read_text())
    assert split["test"][0] == [toy.class_folder(0) + "/test_000.png", 0, "red circle"]
    # read back through the JSON path: the same data
    again = build_dataset(make_cfg(toy_root))
    assert [(d.impath, d.label, d.classname) for d in again.test] == \
        [(d.impath, d.label, d.classname) for d in ds.test]


@pytest.mark.parametrize("subsample, names", [("base", toy.CLASSNAMES[:5]), ("new", toy.CLASSNAMES[5:])])
def test_dataset_base_and_new_classes(toy_root, subsample, names):
    ds = build_dataset(make_cfg(toy_root, subsample=subsample))
    assert ds.classnames == list(names)
    assert sorted({d.label for d in ds.train_x}) == list(range(5))
    assert len(ds.train_x) == 200 and len(ds.test) == 100
    assert all(d.classname == names[d.label] for d in ds.test)


def test_dataset_few_shot_is_cached(toy_root):
    ds = build_dataset(make_cfg(toy_root, subsample="base", shots=16, seed=3))
    assert len(ds.train_x) == 5 * 16 and len(ds.val) == 5 * 4
    cache = toy_root / "toy_shapes" / "split_fewshot" / "shot_16-seed_3.pkl"
    with open(cache, "rb") as f:
        cached = pickle.load(f)
    assert len(cached["train"]) == 10 * 16
    again = build_dataset(make_cfg(toy_root, subsample="base", shots=16, seed=3))
    assert [d.impath for d in again.train_x] == [d.impath for d in ds.train_x]


# ----------------------------------------------------------------------------------------
# the weights helper and the script
# ----------------------------------------------------------------------------------------
def test_make_weights_is_reproducible_and_needs_no_dassl(tmp_path):
    from promptkd import demo

    code = ("import sys, promptkd.demo as d; d.main(sys.argv[1:]); "
            "assert not [m for m in sys.modules if m.split('.')[0] == 'dassl'], 'dassl imported'")
    proc = subprocess.run([sys.executable, "-c", code, "make-weights", str(tmp_path / "a")],
                          cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == [str(tmp_path / "a" / "teacher.pt"), str(tmp_path / "a" / "student.pt")]
    paths = demo.make_weights(str(tmp_path / "b"))
    for role, name in (("teacher", "teacher.pt"), ("student", "student.pt")):
        assert (tmp_path / "a" / name).read_bytes() == open(paths[role], "rb").read()


def run_demo(out, cwd):
    env = {**os.environ, "PYTHON": sys.executable, "DEMO_EPOCHS": "2"}
    proc = subprocess.run(["bash", osp.join(REPO, "scripts", "promptkd", "demo.sh"), str(out)],
                          cwd=str(cwd), env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def result_records(log):
    return [json.loads(line.split("RESULT ", 1)[1]) for line in log.read_text().splitlines()
            if "RESULT {" in line]


def test_demo_script_end_to_end_and_repeatable(tmp_path):
    out = tmp_path / "demo out"  # a space in the path, on purpose
    stdout = run_demo(out, cwd=tmp_path)
    for name in ("results.md", "results.csv"):
        assert (out / name).is_file()
    assert (out / "results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = (out / "results.md").read_text()
    assert "ToyShapes" in table and "PromptKDTeacher" in table
    assert f"Results table: {out}/results.md" in stdout
    assert f"Plot:          {out}/results.png" in stdout
    assert "epoch [2/2]" in stdout

    runs = out / "runs" / "base2new"
    student_log = runs / "promptkd" / "toy_shapes" / "seed1" / "log.txt"
    teacher_log = runs / "promptkd_teacher" / "toy_shapes" / "seed1" / "log.txt"
    student = result_records(student_log)
    assert student and student[-1]["trainer"] == "PromptKD" and student[-1]["dataset"] == "ToyShapes"
    assert {"base", "novel", "hm"} <= set(student[-1])
    assert (teacher_log.parent / "export" / "class_vectors_ToyShapes.pt").is_file()
    assert (out / "weights" / "teacher.pt").is_file() and (out / "data" / "toy_shapes").is_dir()

    # a second run (from another directory) reuses weights and data, redoes the runs, and
    # gives the same numbers
    first = (result_records(teacher_log)[-1], student[-1])
    run_demo(out, cwd="/")
    assert (result_records(teacher_log)[-1], result_records(student_log)[-1]) == first
    assert not list(runs.rglob("log.txt-*"))  # the runs were redone, not resumed
