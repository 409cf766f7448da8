"""promptkd.io: every kind of file the project reads, damaged, through the reader that really
reads it; atomic writes; a full disk during any write, and a training run that resumes after one.

One tiny teacher run (fake DTD, tiny CLIPs, 2 epochs) is made once for the module: its
checkpoint of epoch 2 hits a full disk (ENOSPC), the same command is run again and resumes from
epoch 1 to the end, and its files (checkpoints, pointer, class vectors, image side, predictor)
are then damaged copy by copy: cut to half their bytes, emptied, or replaced by a foreign file
(a text file, a zip of something else). Every damaged file must give a `UserError` that names
it and the command that writes it again, never a raw torch / numpy / json / pickle error.
"""
import errno
import json
import os
import shutil
import zipfile
from collections import namedtuple

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from promptkd.trainers import train  # noqa: E402,F401  (conftest.py registers the trainers and datasets)
from promptkd import io as pio  # noqa: E402
from promptkd import cli  # noqa: E402
from promptkd.class_vectors import IMAGE_SIDE_FILE, ClassVectors, ImageSide, class_vectors_file  # noqa: E402
from promptkd.errors import CheckpointError, DiskFullError, UserError, run_cli  # noqa: E402
from promptkd.deploy.predictor import PREDICTOR_FILE, Predictor, PredictorRecord  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.trainer_kit import make_trainer, student_args, teacher_args  # noqa: E402

DATASET = "DescribableTextures"
DAMAGES = ("truncated", "empty", "text", "zip")
FREE = 12345  # what the patched disk has free


def damage(path, how: str) -> str:
    """Cut `path` to half its bytes, empty it, or replace it with a foreign file."""
    path = str(path)
    if how == "truncated":
        data = open(path, "rb").read()
        assert len(data) > 1
        open(path, "wb").write(data[:len(data) // 2])
    elif how == "empty":
        open(path, "wb").close()
    elif how == "text":
        with open(path, "w") as f:
            f.write("these are my notes, not the file you are looking for\n")
    elif how == "zip":
        with zipfile.ZipFile(path, "w") as z:
            z.writestr("notes.txt", "a zip of something else")
    else:
        raise ValueError(how)
    return path


def raises_naming(call, path, *fix_fragments, error=UserError):
    """`call()` raises `error` whose message names `path` and every fix fragment."""
    with pytest.raises(error) as info:
        call()
    message = str(info.value)
    assert str(path) in message, message
    for fragment in fix_fragments:
        assert fragment in message, message
    for raw in ("PytorchStreamReader", "Traceback"):  # a torch message alone tells no one what to do
        assert not message.startswith(raw)
    return message


def raiser(exc):
    def raise_(*args, **kwargs):
        raise exc
    return raise_


def no_tmp(folder) -> bool:
    return not [f for f in os.listdir(folder) if f.startswith(pio.TMP_PREFIX)]


# --- the one training run -----------------------------------------------------------------

@pytest.fixture(scope="module")
def run(clip_files, tmp_path_factory):
    """A teacher run whose checkpoint of epoch 2 fails with ENOSPC, then the same run again."""
    data = str(tmp_path_factory.mktemp("iodata"))
    make_dtd(data, n_classes=5, per_class=10)
    out = str(tmp_path_factory.mktemp("io_teacher"))
    args = teacher_args(data, clip_files, out, epochs=2)
    real_save = torch.save

    def disk_fills_at_epoch_2(obj, f, *a, **k):  # writes the bytes, then the disk is full
        real_save(obj, f, *a, **k)
        if hasattr(f, "fileno") and isinstance(obj, dict) and obj.get("epoch") == 2:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    patch = pytest.MonkeyPatch()
    patch.setattr(torch, "save", disk_fills_at_epoch_2)
    first, failure = make_trainer(args), None
    try:
        first.train()
    except DiskFullError as err:
        failure = err
    finally:
        patch.undo()
    folder = os.path.join(out, "VLPromptLearner")
    after = {"files": sorted(os.listdir(folder)), "pointer": open(os.path.join(folder, "checkpoint")).read()}
    again = make_trainer(args)
    again.train()
    export = os.path.join(out, "export")
    return {"out": out, "folder": folder, "failure": failure, "after_failure": after, "trainer": again,
            "export": export, "vectors": class_vectors_file(export, DATASET),
            "side": os.path.join(export, IMAGE_SIDE_FILE), "predictor": os.path.join(export, PREDICTOR_FILE),
            "data": data}


def test_a_full_disk_at_a_checkpoint_stops_the_run_and_the_rerun_resumes(run):
    err = run["failure"]
    assert err is not None, "the run did not stop at the full disk"
    path = os.path.join(run["folder"], "model.pth.tar-2")
    message = str(err)
    assert path in message and "No space left on device" in message and " free" in message
    assert "run the same train.py command again: it resumes from the last complete checkpoint" in message
    # nothing half-written: no temp file, epoch 2 absent, the pointer at epoch 1
    assert run["after_failure"]["files"] == ["checkpoint", "model.pth.tar-1"]
    assert run["after_failure"]["pointer"] == "model.pth.tar-1\n"
    assert run["trainer"].start_epoch == 1  # the re-run resumed from epoch 1
    assert sorted(os.listdir(run["folder"])) == ["checkpoint", "model.pth.tar-2"]
    assert os.path.isfile(run["predictor"])


def test_the_message_gives_the_size_needed_and_the_free_space(run, tmp_path, monkeypatch):
    """The size needed is what the file would hold (measured without writing it)."""
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - FREE, FREE))
    record = PredictorRecord.load(run["predictor"])
    record.save(str(tmp_path / "whole.pt"))
    size = os.path.getsize(tmp_path / "whole.pt")

    monkeypatch.setattr(os, "fsync", raiser(OSError(errno.EDQUOT, os.strerror(errno.EDQUOT))))
    target = tmp_path / "sub" / PREDICTOR_FILE
    message = raises_naming(lambda: record.save(str(target)), target, error=DiskFullError)
    assert f"It needs {pio.human_size(size)}" in message
    assert f"{pio.human_size(FREE)} free" in message and os.strerror(errno.EDQUOT) in message
    assert os.listdir(tmp_path / "sub") == []


# --- atomic_write -------------------------------------------------------------------------

def test_atomic_write_replaces_whole_or_not_at_all(tmp_path):
    path = tmp_path / "f.bin"
    assert pio.atomic_write(str(path), lambda f: f.write(b"old")) == 3
    for exc in (RuntimeError("boom"), KeyboardInterrupt()):
        def half(f, exc=exc):
            f.write(b"new, half written")
            raise exc
        with pytest.raises(type(exc)):
            pio.atomic_write(str(path), half)
        assert path.read_bytes() == b"old" and os.listdir(tmp_path) == ["f.bin"]
    other = OSError(errno.EACCES, "Permission denied")  # not a full disk: passed on as it is

    def denied(f):
        raise other
    with pytest.raises(OSError) as info:
        pio.atomic_write(str(path), denied)
    assert info.value is other and not isinstance(info.value, UserError)
    assert pio.atomic_write_text(str(path), "é") == 2 and path.read_text(encoding="utf-8") == "é"


def test_atomic_write_exclusive_keeps_the_first_file(tmp_path):
    path = str(tmp_path / "split.json")
    assert pio.atomic_write_json(path, {"a": 1}, exclusive=True) is not None
    assert pio.atomic_write_json(path, {"a": 2}, exclusive=True) is None
    assert json.load(open(path)) == {"a": 1} and os.listdir(tmp_path) == ["split.json"]


@pytest.mark.parametrize("where", ["write", "fsync", "replace"])
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
def test_a_full_disk_anywhere_in_a_write_is_a_user_error(tmp_path, monkeypatch, where, code):
    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(shutil, "disk_usage", lambda p: usage(10**9, 10**9 - FREE, FREE))
    path = tmp_path / "out.bin"
    path.write_bytes(b"previous")
    full = OSError(code, os.strerror(code))
    payload = b"x" * 5000

    def write(f):
        f.write(payload)
        if where == "write" and hasattr(f, "fileno"):  # a real file (not the sink that measures the size)
            raise full
    if where in ("fsync", "replace"):
        monkeypatch.setattr(os, where, raiser(full))
    message = raises_naming(lambda: pio.atomic_write(str(path), write, fix="do X."), path, "do X.",
                            error=DiskFullError)
    assert f"It needs {pio.human_size(len(payload))}" in message and f"{pio.human_size(FREE)} free" in message
    assert path.read_bytes() == b"previous" and os.listdir(tmp_path) == ["out.bin"]


def test_atomic_write_to_a_path_writer(tmp_path):
    path = tmp_path / "m.onnx"

    def write(tmp):
        assert tmp.endswith(".onnx") and os.path.basename(tmp).startswith(pio.TMP_PREFIX)
        open(tmp, "wb").write(b"model")
    assert pio.atomic_write(str(path), write, to_path=True, suffix=".onnx") == 5
    assert path.read_bytes() == b"model" and os.listdir(tmp_path) == ["m.onnx"]


# --- a full disk in every writer ------------------------------------------------------------

def _cache(directory, width=8, n=4):
    from promptkd.teacher_cache import TeacherCache
    return TeacherCache.create(str(directory), {"dataset": "x"}, n, 1, width, "fp32", shard_size=2)


def _write_results(tmp_path):
    from tests.results_kit import b2n_metrics, write_run
    write_run(tmp_path / "runs", "PromptKD", DATASET, 1, metrics=b2n_metrics(80, 70))
    cli.main(["results", str(tmp_path / "runs"), "--out", str(tmp_path / "out" / "table")])


def _writers(run, tmp_path, name):
    """(write through the real writer into tmp_path/out, the path the error must name)."""
    from promptkd.datasets.common import write_json_atomic, write_pickle_atomic
    from promptkd.deploy import export_model, predict
    from promptkd.demo import pretrain
    from promptkd.trainers.checkpointing import _write_pointer
    out = tmp_path / "out"
    if name == "checkpoint":
        return lambda: run["trainer"].write_checkpoint({"epoch": 9}, str(out), "model.pth.tar-9", ""), \
            out / "model.pth.tar-9"
    if name == "pointer":
        return lambda: _write_pointer(str(out), "model.pth.tar-1"), out / "checkpoint"
    if name == "class vectors":
        return lambda: ClassVectors.load(run["vectors"]).save(str(out / "cv.pt")), out / "cv.pt"
    if name == "image side":
        return lambda: ImageSide.load(run["side"]).save(str(out / "side.pt")), out / "side.pt"
    if name == "predictor":
        return lambda: PredictorRecord.load(run["predictor"]).save(str(out / "p.pt")), out / "p.pt"
    if name == "cache shard":
        cache = _cache(out)
        return lambda: cache.add([0, 0], [0, 1], F.normalize(torch.randn(2, 8), dim=-1)), out / "e000-00000000.npy"
    if name == "cache manifest":
        return lambda: _cache(out), out / "manifest.json"
    if name == "pretrain sidecar":
        return lambda: pretrain._write_json_atomic({"key": "k"}, str(out / "teacher.json")), out / "teacher.json"
    if name == "split json":
        return lambda: write_json_atomic({"train": []}, str(out / "split.json"), exclusive=True), out / "split.json"
    if name == "few-shot pickle":
        return lambda: write_pickle_atomic({"train": []}, str(out / "shot.pkl")), out / "shot.pkl"
    if name == "predictions csv":
        images = os.path.join(run["data"], "dtd", "images")
        return lambda: cli.main(["predict", run["export"], images, "--out", str(out / "p.csv")]), out / "p.csv"
    if name == "results":
        return lambda: _write_results(tmp_path), out / "table.csv"
    if name == "export":
        predictor = Predictor.from_run(run["export"])
        return lambda: export_model.export(predictor, str(out / "m.pt"), "torchscript"), out / "m.pt"
    raise ValueError(name)


WRITERS = ["checkpoint", "pointer", "class vectors", "image side", "predictor", "cache shard", "cache manifest",
           "pretrain sidecar", "split json", "few-shot pickle", "predictions csv", "results", "export"]


@pytest.mark.parametrize("name", WRITERS)
def test_every_writer_reports_a_full_disk_and_leaves_no_temp_file(run, tmp_path, monkeypatch, name):
    (tmp_path / "out").mkdir()
    write, path = _writers(run, tmp_path, name)
    # every atomic write fsyncs its temporary file before the rename
    monkeypatch.setattr(os, "fsync", raiser(OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))))
    raises_naming(write, path, " free", error=DiskFullError)
    assert not path.exists() and no_tmp(path.parent)


# --- damaged files through their real readers ------------------------------------------------

def _copy(src, tmp_path) -> str:
    dst = tmp_path / os.path.basename(src)
    shutil.copy(src, dst)
    return str(dst)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_class_vectors_and_image_side(run, tmp_path, how):
    from promptkd.trainers.promptkd import TEACHER_HINT
    vectors = damage(_copy(run["vectors"], tmp_path), how)
    raises_naming(lambda: ClassVectors.load(vectors, TEACHER_HINT), vectors, "--eval-only --model-dir TEACHER_RUN")
    raises_naming(lambda: ClassVectors.load(vectors), vectors, "export_class_vectors.sh")  # the default hint
    side = damage(_copy(run["side"], tmp_path), how)
    raises_naming(lambda: ImageSide.load(side, TEACHER_HINT), side, "teacher_train.sh")


def test_truncated_class_vectors_stop_the_student_run(run, clip_files, tmp_path):
    """The student's trainer (stage 2) itself: the error names the file and the teacher's command."""
    export = tmp_path / "export"
    shutil.copytree(run["export"], export)
    vectors = damage(class_vectors_file(str(export), DATASET), "truncated")
    raises_naming(lambda: make_trainer(student_args(run["data"], clip_files, str(tmp_path / "s"), str(export))),
                  vectors, "--eval-only --model-dir TEACHER_RUN", error=CheckpointError)


def test_a_file_of_another_kind_is_named(run, tmp_path):
    vectors = _copy(run["predictor"], tmp_path)  # a predictor.pt given as class vectors
    raises_naming(lambda: ClassVectors.load(vectors), vectors, "it is a predictor file", "export_class_vectors.sh")
    (tmp_path / "cv").mkdir()
    record = _copy(run["vectors"], tmp_path / "cv")
    raises_naming(lambda: PredictorRecord.load(record), record, "not a predictor file", "--eval-only")
    run_dir = tmp_path / "run"
    shutil.copytree(run["folder"], run_dir / "VLPromptLearner")
    ckpt = str(run_dir / "VLPromptLearner" / "model.pth.tar-2")
    shutil.copy(run["vectors"], ckpt)  # class vectors where a checkpoint should be
    raises_naming(lambda: run["trainer"].resume_model_if_exist(str(run_dir)), ckpt,
                  "not a resumable checkpoint", "train.py command")
    np.save(ckpt + ".npy", np.ones(3))  # a numpy file is no "trust the pickled checkpoint" case
    os.replace(ckpt + ".npy", ckpt)
    message = raises_naming(lambda: run["trainer"].resume_model_if_exist(str(run_dir)), ckpt, "cannot be read")
    assert "TRUST_PICKLED" not in message


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_predictor(run, tmp_path, how, capsys):
    from promptkd.deploy import predict
    export = tmp_path / "export"
    shutil.copytree(run["export"], export)
    path = damage(export / PREDICTOR_FILE, how)
    raises_naming(lambda: Predictor.from_run(str(export)), path, "--eval-only --model-dir RUN_DIR")
    argv = [str(export), run["vectors"]]
    with pytest.raises(SystemExit) as code:  # the command line: `error: ...`, exit 2, no traceback
        run_cli(lambda: cli.main(["predict", *argv]), argv)
    err = capsys.readouterr().err
    assert code.value.code == 2 and err.startswith(f"error: {path}") and "Traceback" not in err


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_trainer_checkpoint_on_resume_and_eval(run, tmp_path, how):
    run_dir = tmp_path / "run"
    shutil.copytree(run["folder"], run_dir / "VLPromptLearner")
    ckpt = damage(run_dir / "VLPromptLearner" / "model.pth.tar-2", how)
    trainer = run["trainer"]
    raises_naming(lambda: trainer.resume_model_if_exist(str(run_dir)), ckpt, "train.py command again",
                  error=CheckpointError)
    raises_naming(lambda: trainer.load_model(str(run_dir)), ckpt, "train.py command again",
                  "Download the published checkpoint again", error=CheckpointError)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_pointer_file(run, tmp_path, how):
    run_dir = tmp_path / "run"
    shutil.copytree(run["folder"], run_dir / "VLPromptLearner")
    pointer = damage(run_dir / "VLPromptLearner" / "checkpoint", how)
    raises_naming(lambda: run["trainer"].resume_model_if_exist(str(run_dir)), pointer,
                  "echo model.pth.tar-N >", "delete it to train from scratch", error=CheckpointError)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_teacher_cache(tmp_path, how):
    from promptkd.teacher_cache import MANIFEST, TeacherCache
    cache = _cache(tmp_path / "cache")
    cache.add([0, 0, 0, 0], [0, 1, 2, 3], F.normalize(torch.randn(4, 8), dim=-1))
    identity = cache.manifest["identity"]
    assert TeacherCache.open(cache.directory, identity, 1).lookup([0], [3]).shape == (1, 8)
    shard = damage(tmp_path / "cache" / "e000-00000002.npy", how)
    reader = TeacherCache.open(cache.directory, identity, 1)
    assert reader.lookup([0], [1]).shape == (1, 8)  # the intact shard still reads
    raises_naming(lambda: reader.lookup([0], [2]), shard, "promptkd cache")
    manifest = damage(tmp_path / "cache" / MANIFEST, how)
    raises_naming(lambda: TeacherCache.open(cache.directory, identity, 1), manifest, "promptkd cache")
    raises_naming(lambda: _cache(tmp_path / "cache"), manifest, "promptkd cache")  # the writer's resume


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_shipped_and_pretrained_demo_weights(tmp_path, monkeypatch, how):
    from promptkd.demo import pretrain
    shipped = tmp_path / "shipped"
    shutil.copytree(pretrain.SHIPPED_DIR, shipped)
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", str(shipped))
    for name in ("teacher.pt", "teacher.json"):  # ensure_pretrained unpacks the shipped small form
        intact = (shipped / name).read_bytes()
        damaged = damage(shipped / name, how)
        raises_naming(lambda: pretrain.ensure_pretrained(str(tmp_path / "weights"), "teacher"), damaged,
                      "git checkout -- promptkd/demo/demo_weights", error=CheckpointError)
        (shipped / name).write_bytes(intact)
    pretrained = tmp_path / "pretrained"  # `demo ship` reads a from-scratch pretraining
    pretrained.mkdir()
    model = pretrain.PRESETS["full"]["teacher"]
    pio.atomic_write_json(str(pretrained / "teacher.json"), {"key": pretrain.cache_key(model)})
    pio.atomic_save({"w": torch.ones(3)}, str(pretrained / "teacher.pt"))
    damaged = damage(pretrained / "teacher.pt", how)
    raises_naming(lambda: pretrain.ship(str(pretrained), out_dir=str(tmp_path / "o")), damaged,
                  "--from-scratch", error=CheckpointError)
    pio.atomic_save({"w": torch.ones(3)}, str(pretrained / "teacher.pt"))
    damaged = damage(pretrained / "teacher.json", how)
    raises_naming(lambda: pretrain.ship(str(pretrained), out_dir=str(tmp_path / "o")), damaged,
                  "--from-scratch", error=CheckpointError)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_clip_weights(clip_files, tmp_path, how):
    """A CLIP file (the demo's pretrained ones, or the user's), read as stage 1 and stage 2 read it."""
    from promptkd.backbones import load_clip, load_image_tower
    path = damage(_copy(clip_files["student"], tmp_path), how)
    raises_naming(lambda: load_image_tower(path), path, "promptkd demo-weights pretrain", error=CheckpointError)
    raises_naming(lambda: load_clip(path), path, "promptkd demo-weights pretrain", error=CheckpointError)


@pytest.mark.parametrize("trusted", [False, True])
@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_published_checkpoint(run, tmp_path, how, trusted):
    from promptkd.checkpoints import split_published_student, split_published_teacher
    from tests.published_kit import FakeScheduler
    path = str(tmp_path / "model.pth.tar-20")
    torch.save({"state_dict": {"logit_scale": torch.ones(())}, "scheduler": FakeScheduler()}, path)
    damage(path, how)
    for read in (split_published_teacher, split_published_student):
        message = raises_naming(lambda: read(path, trusted), path, "Download the published checkpoint again",
                                error=CheckpointError)
        assert "TRUST_PICKLED" not in message  # damage, not a trust question
    folder = tmp_path / "run" / "VLPromptLearner"  # --eval-only --model-dir of a published teacher
    folder.mkdir(parents=True)
    shutil.copy(path, folder / "model-best.pth.tar")
    raises_naming(lambda: run["trainer"].load_model(str(tmp_path / "run")), folder / "model-best.pth.tar",
                  "Download the published checkpoint again", error=CheckpointError)


@pytest.mark.parametrize("how", DAMAGES)
def test_damaged_dataset_split_and_few_shot_cache(tmp_path, how):
    from promptkd.datasets.common import load_or_make_fewshot, read_split, write_json_atomic, write_pickle_atomic
    split = str(tmp_path / "split_zhou_DescribableTextures.json")
    write_json_atomic({"train": [["a.jpg", 0, "a"]], "val": [], "test": []}, split)
    damage(split, how)
    raises_naming(lambda: read_split(split, str(tmp_path), DATASET), split, "DATASETS.md#describabletextures")
    shots = tmp_path / "split_fewshot"
    write_pickle_atomic({"train": [], "val": []}, str(shots / "shot_4-seed_1.pkl"))
    cached = damage(shots / "shot_4-seed_1.pkl", how)
    raises_naming(lambda: load_or_make_fewshot(None, [], [], 4, 1, str(shots)), cached,
                  "Delete it: the next run draws the few-shot subset again")


def test_a_foreign_json_value_is_named(tmp_path):
    path = str(tmp_path / "manifest.json")
    pio.atomic_write_json(path, [1, 2])
    raises_naming(lambda: pio.load_json(path, what="teacher cache manifest", fix="Do Y."), path,
                  "holds a JSON list", "Do Y.")


def test_pickled_torch_files_still_need_trust(tmp_path):
    from tests.published_kit import FakeScheduler
    path = str(tmp_path / "published.pth.tar")
    torch.save({"state_dict": {}, "scheduler": FakeScheduler()}, path)
    with pytest.raises(CheckpointError, match="MODEL.TRUST_PICKLED_CHECKPOINTS True.*weights_only=False"):
        pio.load_torch(path)
    assert isinstance(pio.load_torch(path, trusted=True)["scheduler"], FakeScheduler)
