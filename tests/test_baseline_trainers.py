"""Every baseline trainer through train.py's machinery on fake data (timm-style: the same
checks over all of them), and PromptKD distilling from teachers of two other methods."""
import os

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from tests.test_trainers import DTD_CFG, ROOT, data_root, make_trainer, student_args  # noqa: E402,F401

from promptkd.class_vectors import ClassVectors, class_vectors_file  # noqa: E402

BASELINES = {
    "ZeroshotCLIP": ("ZeroshotCLIP/vit_b16.yaml", "ZEROSHOT", []),
    "CoOp": ("CoOp/vit_b16_ep50_ctxv1.yaml", "COOP", []),
    "CoCoOp": ("CoCoOp/vit_b16_c4_ep10_batch1_ctxv1.yaml", "COCOOP", []),
    "IVLP": ("IVLP/vit_b16_c2_ep5_batch4_2+2ctx.yaml", "IVLP",
             ["TRAINER.IVLP.PROMPT_DEPTH_TEXT", "2", "TRAINER.IVLP.PROMPT_DEPTH_VISION", "2"]),
    "MaPLe": ("MaPLe/vit_b16_c2_ep5_batch4_2ctx.yaml", "MAPLE", ["TRAINER.MAPLE.PROMPT_DEPTH", "2"]),
    "PromptSRC": ("PromptSRC/vit_b16_c2_ep20_batch4_4+4ctx.yaml", "PROMPTSRC",
                  ["TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2"]),
}


def baseline_args(name, data_root, weights, out, *extra):
    cfg, node, opts = BASELINES[name]
    return ["--root", data_root, "--seed", "1", "--trainer", name, "--dataset-config-file", DTD_CFG,
            "--config-file", os.path.join(ROOT, "configs/trainers", cfg), "--output-dir", out,
            "MODEL.BACKBONE.NAME", weights["teacher"], "INPUT.SIZE", "(32, 32)", "DATALOADER.NUM_WORKERS", "0",
            "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16", "OPTIM.MAX_EPOCH", "2",
            "OPTIM.LR", "0.01", "DATASET.NUM_SHOTS", "4", "DATASET.SUBSAMPLE_CLASSES", "base",
            f"TRAINER.{node}.PREC", "fp32", *opts, *extra]


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
    assert trained == (name != "ZeroshotCLIP")
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
