"""Model folders in the Hugging Face layout (promptkd.deploy.hub): written from a finished run, read back
into the predictor and into stage 2 (TEACHER_DIR), from a path or the local HF cache (offline).

A tiny teacher and student are trained through Dassl on a fake DTD (tiny CLIPs), as in
tests/test_predict_export.py; the folder's logits must be the run's own evaluation logits.
"""
import json
import os
import pickle
import shutil
import sys

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from promptkd import cli, records  # noqa: E402
from promptkd.deploy import hub  # noqa: E402
from promptkd.errors import ConfigError, MissingFileError, UserError  # noqa: E402
from promptkd.deploy.predictor import PREDICTOR_FILE, PredictorRecord  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.trainer_kit import (eval_logits, learnable, make_trainer, predictor_logits, student_args,  # noqa: E402
                               teacher_args)

pytestmark = pytest.mark.exact


def train(args):
    """Train as `promptkd train ARGS` does, run records included (run.json, result.json)."""
    trainer = make_trainer(args)
    argv, sys.argv = sys.argv, ["promptkd", "train", *args]
    try:
        trainer.run_record = records.start_run(trainer.cfg, eval_only=False)
    finally:
        sys.argv = argv
    trainer.train()
    return trainer


@pytest.fixture(scope="module")
def runs(clip_files, tmp_path_factory):
    data = str(tmp_path_factory.mktemp("hdata"))
    make_dtd(data, n_classes=5, per_class=10)
    out = tmp_path_factory.mktemp("hruns")
    teacher = train(teacher_args(data, clip_files, str(out / "teacher"), epochs=1))
    student = train(student_args(data, clip_files, str(out / "student"), str(out / "teacher" / "export"), epochs=1))
    folders = {}
    for which in ("student", "teacher"):
        folders[which] = str(out / f"{which}-hf")
        assert cli.main(["export", str(out / which), folders[which], "--format", "hf"]) == 0
    return {"data": data, "teacher": teacher, "student": student, "out": out, "folders": folders}


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_folder_round_trip_equals_the_runs_evaluation(runs, which):
    trainer, folder = runs[which], runs["folders"][which]
    assert sorted(os.listdir(folder)) == ["README.md", "config.json", "model.safetensors"]
    paths, expected = eval_logits(trainer)
    predictor = hub.from_pretrained(folder)
    assert predictor.classnames == trainer.all_classnames
    # The same bound as the predictor's own test (tests/test_predict_export.py): logits <= 14.3,
    # an fp32 ulp there is 9.5e-7, other batch shapes reorder sums; a real difference is >= 1e-2.
    assert (predictor_logits(predictor, paths) - expected).abs().max() <= 1e-5
    # `promptkd predict` / export read a folder as they read a run
    assert (predictor_logits(hub.load_predictor(folder), paths) - expected).abs().max() <= 1e-5


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_folder_holds_only_learned_tensors_and_a_card(runs, which):
    import safetensors.torch

    folder = runs["folders"][which]
    tensors = safetensors.torch.load_file(os.path.join(folder, "model.safetensors"))
    record = PredictorRecord.load(str(runs["out"] / which / "export" / PREDICTOR_FILE))
    prompts = [k for k in tensors if k.startswith("image_prompts.")]
    projector = [k for k in tensors if k.startswith("projector.")]
    assert len(prompts) == 2 and "class_vectors" in tensors
    assert set(tensors) == {*prompts, *projector, "class_vectors"}  # no backbone weight
    assert bool(projector) == (which == "student")
    assert torch.equal(tensors["class_vectors"], record.class_vectors)
    learned = sum(p.numel() for p in record.weights["prompts"]) + record.class_vectors.numel() + \
        sum(v.numel() for v in (record.weights["projector"] or {}).values())
    assert sum(v.numel() for v in tensors.values()) == learned
    config = json.load(open(os.path.join(folder, "config.json")))
    assert config["fingerprint"] == record.fingerprint and config["backbone"] == record.backbone
    assert config["classnames"] == record.classnames and config["preprocess"] == record.preprocess
    assert config["prompts"] == {"depth_vision": 2, "n_ctx_vision": 4, "width": int(tensors["image_prompts.0"].shape[1])}
    result = json.load(open(runs["out"] / which / "result.json"))
    card = open(os.path.join(folder, "README.md")).read()
    assert card.startswith("---\nlibrary_name: promptkd")
    for k in ("base", "novel", "hm"):
        assert f"{result['metrics'][k]:.2f}" in card
    assert record.fingerprint in card and "DescribableTextures" in card and "base2novel" in card
    assert "MIT" in card and "holds no backbone weights" in card
    assert "promptkd train --root" in card and ("PromptKD" if which == "student" else "PromptKDTeacher") in card
    assert record.teacher["fingerprint"] in card  # the teacher it was distilled from
    assert '"OPTIM"' in card  # the full config


def test_folder_loads_with_no_pickle(runs, monkeypatch):
    def refuse(*a, **k):
        raise AssertionError("a pickle was read")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    monkeypatch.setattr(torch, "load", refuse)
    record, _ = hub.read_folder(runs["folders"]["student"])
    assert record.weights["projector"]["1.running_var"].shape == (96,)


def test_a_wrong_backbone_is_refused_naming_both(runs, clip_files):
    folder = runs["folders"]["student"]
    fingerprint = json.load(open(os.path.join(folder, "config.json")))["fingerprint"]
    with pytest.raises(ConfigError) as err:
        hub.from_pretrained(folder, backbone=clip_files["teacher"])
    message = str(err.value)
    assert fingerprint in message and clip_files["student"] in message and clip_files["teacher"] in message
    from promptkd.backbones import load_image_tower
    from promptkd.class_vectors import visual_fingerprint
    assert visual_fingerprint(load_image_tower(clip_files["teacher"])[0]) in message


def test_a_published_backbone_is_refused_with_the_converter_named(runs, tmp_path):
    record = PredictorRecord.load(str(runs["out"] / "student" / "export" / PREDICTOR_FILE))
    record.backbone = {"kind": "published_student", "path": "/x/model.pth.tar-20"}
    with pytest.raises(UserError, match="promptkd convert"):
        hub.save_pretrained(record, str(tmp_path / "out"))
    assert not os.path.exists(tmp_path / "out" / "config.json")


def _cache(tmp_path, repo, folder):
    """The local Hugging Face cache layout (models--OWNER--NAME/refs/main -> snapshots/<commit>/)."""
    cache = tmp_path / "hf-cache"
    repo_dir = cache / ("models--" + repo.replace("/", "--"))
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(folder, repo_dir / "snapshots" / commit)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(commit)
    return str(cache)


def test_from_the_local_hf_cache_offline(runs, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    cache = _cache(tmp_path, "someone/tiny-student", runs["folders"]["student"])
    paths, expected = eval_logits(runs["student"])
    for ref in ("hf-hub:someone/tiny-student", "someone/tiny-student"):
        predictor = hub.from_pretrained(ref, cache_dir=cache)
        assert (predictor_logits(predictor, paths) - expected).abs().max() <= 1e-5
    with pytest.raises(MissingFileError, match="not in the local Hugging Face cache.*hf download someone/other"):
        hub.from_pretrained("hf-hub:someone/other", cache_dir=cache)


def test_a_teacher_folder_as_teacher_dir_distils_like_its_export(runs, clip_files, tmp_path, monkeypatch):
    export = str(runs["out"] / "teacher" / "export")
    a = make_trainer(student_args(runs["data"], clip_files, str(tmp_path / "a"), export, epochs=1))
    a.train()
    b = make_trainer(student_args(runs["data"], clip_files, str(tmp_path / "b"), runs["folders"]["teacher"], epochs=1))
    assert torch.equal(b.class_vectors, a.class_vectors)
    b.train()
    for (k, x), (_, y) in zip(sorted(learnable(a).items()), sorted(learnable(b).items())):
        # the same stored vectors, prompts and logit scale (safetensors / JSON round trips are exact):
        # the same computation in the same process
        assert (x.float() - y.float()).abs().max() <= 1e-6, k
    assert b.last_report == pytest.approx(a.last_report)
    assert b.teacher_identity()["fingerprint"] == a.teacher_identity()["fingerprint"]  # run.json's teacher
    # and from the local HF cache, by repo id
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE",
                        _cache(tmp_path, "someone/tiny-teacher", runs["folders"]["teacher"]))
    c = make_trainer(student_args(runs["data"], clip_files, str(tmp_path / "c"), "hf-hub:someone/tiny-teacher",
                                  epochs=1))
    assert torch.equal(c.class_vectors, a.class_vectors)


def test_a_student_folder_is_not_a_teacher(runs):
    with pytest.raises(ConfigError, match="is a PromptKD student.*not a teacher"):
        hub.teacher_export(runs["folders"]["student"])


def test_an_incomplete_folder_says_how_to_write_it(runs, tmp_path):
    folder = tmp_path / "f"
    shutil.copytree(runs["folders"]["teacher"], folder)
    (folder / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(UserError, match="not a readable safetensors file.*promptkd export RUN_DIR DIR --format hf"):
        hub.read_folder(str(folder))


def test_push_creates_the_repo_and_uploads_the_folder(runs, monkeypatch, capsys):
    """Everything up to the network: huggingface_hub's HfApi methods are replaced and their
    arguments checked (the upload itself was not run here)."""
    from huggingface_hub import CommitInfo, HfApi

    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw))
                        or f"https://huggingface.co/{repo_id}")
    monkeypatch.setattr(HfApi, "create_branch", lambda self, repo_id, **kw: calls.append(("create_branch", repo_id, kw)))

    def upload_folder(self, **kw):
        calls.append(("upload_folder", kw["repo_id"], kw))
        return CommitInfo(commit_url=f"https://huggingface.co/{kw['repo_id']}/commit/abc", commit_message="m",
                          commit_description="", oid="abc")
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    folder = runs["folders"]["student"]
    assert cli.main(["push", folder, "me/tiny-student", "--private", "--branch", "v1"]) == 0
    assert [c[0] for c in calls] == ["create_repo", "create_branch", "upload_folder"]
    assert calls[0][2] == {"repo_type": "model", "private": True, "exist_ok": True}
    assert calls[1][2] == {"branch": "v1", "repo_type": "model", "exist_ok": True}
    up = calls[2][2]
    assert up["folder_path"] == folder and up["repo_type"] == "model" and up["revision"] == "v1"
    assert "PromptKD student: PromptKD on DescribableTextures" in up["commit_message"]
    assert "https://huggingface.co/me/tiny-student/commit/abc" in capsys.readouterr().out


def test_push_refuses_a_folder_with_a_pickle_or_not_a_model_folder(runs, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("no upload may start"))
    folder = tmp_path / "f"
    shutil.copytree(runs["folders"]["teacher"], folder)
    torch.save({"x": 1}, folder / "extra.pt")
    with pytest.raises(UserError, match="may be pickles: extra.pt"):
        cli.main(["push", str(folder), "me/x"])
    with pytest.raises(UserError, match="config.json"):
        cli.main(["push", str(tmp_path), "me/x"])
