"""Every baseline trainer through train.py's machinery on fake data (timm-style: the same
checks over all of them, taken from the registry, so a newly registered method is tested with no
change here), and PromptKD distilling from teachers of two other methods."""
import os
import shutil

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from promptkd.baselines import ZeroshotCLIP  # noqa: E402
from promptkd.class_vectors import ClassVectors, class_vectors_file  # noqa: E402
from tests.trainer_kit import BASELINES, baseline_args, make_trainer, student_args  # noqa: E402

# BASELINES: every trainer the plugin registers but PromptKD's own two stages, with the config its
# scripts train (tests/trainer_kit.py); data_root: a session fixture of tests/conftest.py.


@pytest.fixture(scope="module")
def runs(data_root, clip_files, tmp_path_factory):
    done = {}
    for name in BASELINES:
        out = str(tmp_path_factory.mktemp(name))
        trainer = make_trainer(baseline_args(name, data_root, clip_files, out))
        trainer.train()
        done[name] = {"out": out, "trainer": trainer, "report": trainer.last_report}
    return done


@pytest.mark.parametrize("name", sorted(BASELINES))
def test_baseline_trains_evaluates_exports_and_reloads(name, runs, data_root, clip_files, tmp_path):
    run = runs[name]
    assert {"base", "novel", "hm", "accuracy"} <= set(run["report"])
    vectors_path = class_vectors_file(os.path.join(run["out"], "export"), "DescribableTextures")
    if name == "CoCoOp":
        assert not os.path.exists(vectors_path)  # its text depends on the image: nothing to export
    else:
        vectors = ClassVectors.load(vectors_path)
        assert vectors.vectors.shape[0] == 5 and vectors.teacher["method"] == name
    trained = any(p.requires_grad for p in run["trainer"].model.parameters())
    assert trained == (not isinstance(run["trainer"].model, ZeroshotCLIP))  # zero-shot CLIP learns nothing
    if trained:
        again = make_trainer(baseline_args(name, data_root, clip_files, str(tmp_path)))
        again.run_eval_only(run["out"])
        assert again.last_report == pytest.approx(run["report"])


@pytest.mark.parametrize("teacher", ["MaPLe", "CoOp"])
def test_promptkd_distils_from_other_methods(teacher, runs, data_root, clip_files, tmp_path):
    export = os.path.join(runs[teacher]["out"], "export")
    student = make_trainer(student_args(data_root, clip_files, str(tmp_path), export, epochs=2))
    student.train()
    assert {"base", "novel", "hm"} <= set(student.last_report)
    # The student's teacher logits come from that method's own image side.
    images = torch.randn(2, 3, 32, 32)
    method = runs[teacher]["trainer"].model.eval()
    method.prepare_eval(student.all_classnames)
    with torch.no_grad():
        assert (student.teacher(images, student.class_vectors) - method.eval_logits(images)).abs().max() <= 1e-4


@pytest.mark.parametrize("name, mode, text, image", [("CoOp", "both", True, False), ("MaPLe", "image", False, True)])
def test_grad_checkpoint_key_reaches_the_method(name, mode, text, image, data_root, clip_files, tmp_path, caplog):
    node = BASELINES[name][1]
    with caplog.at_level("INFO", logger="promptkd"):
        trainer = make_trainer(baseline_args(name, data_root, clip_files, str(tmp_path),
                                             f"TRAINER.{node}.GRAD_CHECKPOINT", mode))
    model = trainer.model
    assert model.text_encoder.grad_checkpoint == text
    assert getattr(getattr(model, "image_encoder", None), "grad_checkpoint", False) == image
    states = f"text tower {'on' if text else 'off'}, image tower {'on' if image else 'off'}"
    assert f"Activation checkpointing (TRAINER.{node}.GRAD_CHECKPOINT {mode}): {states}" in caplog.text
    # CoOp runs CLIP's stock image tower (no prompts): asking for it there says so.
    assert ("does not backpropagate through a prompted image tower" in caplog.text) == (name == "CoOp")


def test_cocoop_trains_at_its_published_batch_of_one(data_root, clip_files, tmp_path):
    trainer = make_trainer(baseline_args("CoCoOp", data_root, clip_files, str(tmp_path), "DATALOADER.TRAIN_X.BATCH_SIZE",
                                         "1", "OPTIM.MAX_EPOCH", "1", "OPTIM.WARMUP_EPOCH", "0"))
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    steps = []
    forward_backward = trainer.forward_backward
    trainer.forward_backward = lambda batch: steps.append(len(batch["img"])) or forward_backward(batch)
    trainer.train()
    assert steps and set(steps) == {1} and len(steps) == len(trainer.dm.dataset.train_x)
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_a_newly_registered_method_joins_the_grid(monkeypatch, tmp_path):
    """As timm's tests take its models from its registry: a trainer added to the plugin's
    (promptkd.trainers.plugin.trainer_classes, which register() puts in Dassl's TRAINER_REGISTRY)
    joins BASELINES, and so every test above, with the config it ships; without one, the grid
    stops naming the folder to ship it in."""
    from dassl.engine import TRAINER_REGISTRY

    from promptkd.trainers import baseline_trainers, plugin
    from tests import trainer_kit

    class WideCoOp(baseline_trainers.CoOp):
        """A new method: CoOp under a name of its own."""

    shipped = plugin.trainer_classes()
    monkeypatch.setattr(TRAINER_REGISTRY, "_obj_map", dict(TRAINER_REGISTRY._obj_map))  # restored afterwards
    monkeypatch.setattr(plugin, "trainer_classes", lambda: (*shipped, WideCoOp))
    repo = tmp_path / "repo"
    shutil.copytree(os.path.join(trainer_kit.ROOT, "configs"), repo / "configs")
    os.symlink(os.path.join(trainer_kit.ROOT, "scripts"), repo / "scripts")
    with pytest.raises(AssertionError, match=r"WideCoOp has no config in .*configs/trainers/WideCoOp \(or its"):
        trainer_kit.registered_baselines(str(repo))
    (repo / "configs" / "trainers" / "WideCoOp").mkdir()
    shutil.copy(repo / "configs" / "trainers" / "CoOp" / "vit_b16_ep50.yaml",
                repo / "configs" / "trainers" / "WideCoOp" / "vit_b16.yaml")
    grid = trainer_kit.registered_baselines(str(repo))
    assert TRAINER_REGISTRY.get("WideCoOp") is WideCoOp
    assert grid.pop("WideCoOp") == ("WideCoOp/vit_b16.yaml", "COOP", [])
    assert grid == BASELINES  # the shipped methods as the grid above has them
