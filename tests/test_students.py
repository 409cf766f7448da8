"""Any registered method as PromptKD's student, with any objective, and class-agnostic
distillation, on a fake DTD with tiny CLIPs (timm style: a grid over the registry, so a newly
registered prompt-learning method is a tested student with no change here).

Each grid cell trains label-free, is invariant to relabelled batches (labels are never read),
resumes exactly after a crash, evaluates base / novel / HM and exports what predict reads.
"""
import os

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from tests.trainer_kit import (BASELINES, eval_logits, learnable, make_trainer, predictor_logits,  # noqa: E402
                               student_args, teacher_args)

from promptkd import distributed  # noqa: E402
from promptkd.class_vectors import ClassVectors, class_vectors_file, vocabulary_vectors_file  # noqa: E402
from promptkd.errors import ConfigError  # noqa: E402
from promptkd.deploy.predictor import PREDICTOR_FILE  # noqa: E402
from promptkd.losses import distill_loss, feature_loss, kd_loss, topk_logits  # noqa: E402
from promptkd.trainers.students import method_students  # noqa: E402

# Methods with something to learn; ZeroshotCLIP has no prompts and is refused as a student.
STUDENTS = ["promptkd"] + [m for m in method_students() if m != "ZeroshotCLIP"]
OBJECTIVES = ["kl", "reverse_kl", "sym_kl"]


def node_options(student):
    """The method's own small-prompt settings for the tiny CLIP (its TRAINER.<NODE> keys)."""
    if student == "PromptKDTeacher":
        student = "PromptSRC"
    return BASELINES[student][2] if student in BASELINES else []


def args_for(data_root, clip_files, teacher_dir, out, student, objective, *extra, epochs=2):
    return student_args(data_root, clip_files, out, teacher_dir, "TRAINER.PROMPTKD.STUDENT", student,
                        "TRAINER.PROMPTKD.LOSS", objective, *node_options(student), *extra, epochs=epochs)


# --- the objectives against hand computations ---------------------------------------------------

def _kl(p_log, q_log):
    """Σ p (log p - log q) over all entries."""
    return (p_log.exp() * (p_log - q_log)).sum()


@pytest.mark.parametrize("T", [1.0, 2.0])
def test_objectives_match_hand_computation(T):
    torch.manual_seed(0)
    s, t, w = torch.randn(4, 7, requires_grad=True), torch.randn(4, 7), 10.0
    ps, pt = F.log_softmax(s / T, -1), F.log_softmax(t / T, -1)
    forward, reverse = w * T**2 * _kl(pt, ps) / s.numel(), w * T**2 * _kl(ps, pt) / s.numel()
    assert torch.equal(distill_loss(s, t, "kl", T, w), kd_loss(s, t, T, w))  # the published loss itself
    torch.testing.assert_close(distill_loss(s, t, "kl", T, w), forward, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(distill_loss(s, t, "reverse_kl", T, w), reverse, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(distill_loss(s, t, "sym_kl", T, w), forward + reverse, rtol=1e-5, atol=1e-7)
    # the reverse KL's gradient reaches the student (it sits in the target place of kl_div)
    (g,) = torch.autograd.grad(distill_loss(s, t, "reverse_kl", T, w), s)
    (h,) = torch.autograd.grad(reverse, s)
    torch.testing.assert_close(g, h, rtol=1e-4, atol=1e-7)
    with pytest.raises(ConfigError, match="not one of"):
        distill_loss(s, t, "js", T, w)


def test_feature_terms_and_top_k_match_hand_computation():
    torch.manual_seed(1)
    a, b = torch.randn(5, 8), torch.randn(5, 8)
    na, nb = a / a.norm(dim=-1, keepdim=True), b / b.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(feature_loss(a, b, "cosine", 2.0), 2.0 * (1 - (na * nb).sum(-1)).mean())
    torch.testing.assert_close(feature_loss(a, b, "l1", 0.5), 0.5 * (na - nb).abs().mean())
    assert feature_loss(a, a, "cosine", 1.0).abs() < 1e-6
    student, teacher = torch.randn(3, 10), torch.randn(3, 10)
    s, t = topk_logits(student, teacher, 4)
    index = teacher.argsort(dim=-1, descending=True)[:, :4]
    assert torch.equal(t, teacher.gather(-1, index)) and torch.equal(s, student.gather(-1, index))


# --- the grid: every student x every objective --------------------------------------------------

def crashed_and_resumed(args, crash_after_epoch=1, relabel=None):
    """Train with relabelled batches, kill it after an epoch, and resume; the final trainer."""
    def build():
        trainer = make_trainer(args)
        if relabel is not None:  # every training batch with other labels
            step = trainer.forward_backward
            trainer.forward_backward = lambda batch: step({**batch, "label": relabel(batch["label"])})
        return trainer
    cut = build()
    after_epoch = cut.after_epoch

    def crash():
        after_epoch()
        if cut.epoch + 1 == crash_after_epoch:
            raise KeyboardInterrupt("killed")
    cut.after_epoch = crash
    with pytest.raises(KeyboardInterrupt):
        cut.train()
    resumed = build()
    resumed.train()
    return resumed


@pytest.mark.parametrize("objective", OBJECTIVES)
@pytest.mark.parametrize("student", STUDENTS)
def test_every_student_with_every_objective(student, objective, data_root, clip_files, teacher_run, tmp_path):
    whole = make_trainer(args_for(data_root, clip_files, teacher_run["export"], str(tmp_path / "whole"),
                                  student, objective))
    whole.train()
    report = whole.last_report
    assert {"base", "novel", "hm", "accuracy"} <= set(report) and all(0 <= report[k] <= 100 for k in report)
    losses = whole.epoch_losses
    assert all(torch.isfinite(torch.tensor(v)) for v in losses.values()) and losses["kd_loss"] > 0
    # relabelled batches, a crash and a resume: the same weights (labels are never read)
    other = crashed_and_resumed(args_for(data_root, clip_files, teacher_run["export"], str(tmp_path / "cut"),
                                         student, objective), relabel=lambda y: (y * 3 + 1) % 5)
    a, b = learnable(whole), learnable(other)
    assert a and all(torch.equal(a[k], b[k]) for k in a)
    run = whole.record_fields()  # what train.py adds to run.json
    assert run["student"] == student
    assert run["objective"] == objective and run["class_names_seen"] is True and run["labels_used"] is False
    if student == "promptkd":
        assert os.path.exists(tmp_path / "whole" / "export" / PREDICTOR_FILE)
    elif not whole.model.image_conditioned:  # a method student exports like its method
        vectors = ClassVectors.load(class_vectors_file(str(tmp_path / "whole" / "export"), "DescribableTextures"))
        assert vectors.classnames == whole.all_classnames


def test_a_text_student_encodes_its_class_prompts_once_per_step(data_root, clip_files, teacher_run, tmp_path):
    trainer = make_trainer(args_for(data_root, clip_files, teacher_run["export"], str(tmp_path), "CoOp", "kl",
                                    epochs=1))
    calls, images = [], []
    text_features, forward = trainer.model.text_features, trainer.model.forward
    trainer.model.text_features = lambda names: calls.append(len(names)) or text_features(names)
    trainer.model.forward = lambda x: images.append(len(x)) or forward(x)
    trainer.cfg.defrost()
    trainer.cfg.TEST.NO_TEST = True
    trainer.train()
    # one call of all 5 classes per step of 4 images (then one more: the export of the final prompts)
    assert len(calls) == len(images) + 1 and set(calls) == {5}
    assert set(images) == {4}


def test_method_student_keeps_its_regularisers_or_not(data_root, clip_files, teacher_run, tmp_path, caplog):
    for on in ("True", "False"):
        with caplog.at_level("INFO", logger="promptkd"):
            trainer = make_trainer(args_for(data_root, clip_files, teacher_run["export"], str(tmp_path / on),
                                            "PromptSRC", "kl", "TRAINER.PROMPTKD.STUDENT_REGULARISERS", on,
                                            epochs=1))
        assert trainer.model.regularise is (on == "True")
        assert f"its own regularisers {'on' if on == 'True' else 'off'}" in caplog.text
        trainer.cfg.defrost()
        trainer.cfg.TEST.NO_TEST = True
        trainer.train()
        assert ("l1_text" in trainer.epoch_losses) is (on == "True")
        caplog.clear()


@pytest.mark.parametrize("extra, message", [
    (["TRAINER.PROMPTKD.STUDENT", "NoSuchMethod"], "neither 'promptkd' nor a registered prompt-learning method"),
    (["TRAINER.PROMPTKD.STUDENT", "ZeroshotCLIP"], "has nothing to learn"),
    (["TRAINER.PROMPTKD.LOSS", "js"], "TRAINER.PROMPTKD.LOSS"),
    (["TRAINER.PROMPTKD.STUDENT", "CoOp", "TRAINER.PROMPTKD.FEATURE_LOSS", "cosine"], "has no projector"),
    (["TRAINER.PROMPTKD.VOCABULARY", "names.txt"], "TRAINER.EXPORT_VOCABULARY"),
])
def test_bad_student_settings_are_named(extra, message, data_root, clip_files, teacher_run, tmp_path):
    with pytest.raises(ConfigError, match=message):
        make_trainer(student_args(data_root, clip_files, str(tmp_path), teacher_run["export"], *extra))


# --- extra terms ---------------------------------------------------------------------------------

def test_feature_term_and_semi_supervised_ce(data_root, clip_files, teacher_run, tmp_path):
    trainer = make_trainer(student_args(data_root, clip_files, str(tmp_path / "f"), teacher_run["export"],
                                        "TRAINER.PROMPTKD.FEATURE_LOSS", "cosine", "TRAINER.PROMPTKD.FEATURE_WEIGHT",
                                        "2.0", epochs=1))
    trainer.train()
    assert trainer.epoch_losses["feature_loss"] > 0 and "kd_loss" in trainer.epoch_losses

    def ce_run(out, relabel, shots="-1"):
        trainer = make_trainer(student_args(data_root, clip_files, str(tmp_path / out), teacher_run["export"],
                                            "TRAINER.PROMPTKD.CE_WEIGHT", "1.0", "TRAINER.PROMPTKD.CE_SHOTS", shots,
                                            epochs=1))
        step = trainer.forward_backward
        trainer.forward_backward = lambda batch: step({**batch, "label": relabel(batch["label"])})
        trainer.cfg.defrost()
        trainer.cfg.TEST.NO_TEST = True
        trainer.train()
        return trainer
    a, b = ce_run("a", lambda y: y), ce_run("b", lambda y: (y + 1) % 5)
    assert a.epoch_losses["ce"] > 0
    assert not all(torch.equal(learnable(a)[k], learnable(b)[k]) for k in learnable(a))  # labels are read
    shots = ce_run("s", lambda y: y, shots="1")
    assert int(shots.labelled.sum()) == 5  # one labelled image per class, the same on every run
    assert torch.equal(shots.labelled, ce_run("s2", lambda y: y, shots="1").labelled)
    run = a.record_fields()
    assert run["labels_used"] is True and run["objective_label"] == "PromptKD (+CE)"


# --- class-agnostic ------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def vocabulary(teacher_run, data_root, clip_files, tmp_path_factory):
    """The teacher's class vectors of a vocabulary holding none of DTD's class names."""
    folder = tmp_path_factory.mktemp("vocab")
    names = folder / "words.txt"
    names.write_text("# a vocabulary without the test classes\n" + "\n".join(
        ["stone", "cloud", "ripple", "grid", "speckle", "weave", "swirl", "crack", "fur", "bark", "tile", "foam"]))
    dataset_names = set(teacher_run["trainer"].all_classnames)
    assert not dataset_names & set(names.read_text().split())
    out = str(folder / "teacher")
    trainer = make_trainer(teacher_args(data_root, clip_files, out, "TRAINER.EXPORT_DIR", str(folder / "export"),
                                        "TRAINER.EXPORT_VOCABULARY", str(names), "TEST.NO_TEST", "True"))
    trainer.run_eval_only(teacher_run["out"])
    path = vocabulary_vectors_file(str(folder / "export"), str(names))
    vectors = ClassVectors.load(path)
    assert vectors.dataset == "vocabulary:words" and len(vectors.classnames) == 12
    return path


@pytest.mark.parametrize("student", ["promptkd", "CoOp"])
def test_class_agnostic_distillation_from_a_vocabulary(student, vocabulary, data_root, clip_files, teacher_run,
                                                       tmp_path):
    args = args_for(data_root, clip_files, teacher_run["export"], str(tmp_path), student, "kl",
                    "TRAINER.PROMPTKD.VOCABULARY", vocabulary, "TRAINER.PROMPTKD.TOPK", "3", epochs=1)
    trainer = make_trainer(args)
    seen, training = [], []
    if student == "CoOp":  # the names it encodes in training are vocabulary names only
        text_features, finalize = trainer.model.text_features, trainer.finalize_model
        trainer.model.text_features = lambda names: seen.extend(names) or text_features(names)
        trainer.finalize_model = lambda *a, **k: training.extend(seen) or finalize(*a, **k)
    trainer.train()
    assert {"base", "novel", "hm"} <= set(trainer.last_report)  # evaluated on the real classes
    run = trainer.record_fields()
    assert run["class_names_seen"] is False and run["topk"] == 3
    assert "class-agnostic top-3" in run["objective_label"]
    if student == "CoOp":
        assert training and not set(training) & set(trainer.all_classnames)


def test_method_students_through_the_command_appear_in_the_results_table(data_root, clip_files, teacher_run,
                                                                         tmp_path):
    """`promptkd train` with STUDENT CoOp / MaPLe / PromptSRC (label-free), then `promptkd results`:
    each is a row named by what was distilled into what, beside the paper's student."""
    from promptkd import cli
    from tests.cli import train_py

    runs = tmp_path / "runs"
    for student, objective in (("promptkd", "kl"), ("CoOp", "kl"), ("MaPLe", "sym_kl"), ("PromptSRC", "kl")):
        out = runs / "base2new" / student.lower() / "dtd" / "seed1"
        proc = train_py(args_for(data_root, clip_files, teacher_run["export"], str(out), student, objective,
                                 epochs=1))
        assert proc.returncode == 0, proc.stderr[-2000:]
    assert cli.main(["results", str(runs), "--seeds", "1", "--out", str(tmp_path / "table")]) == 0
    table = (tmp_path / "table.md").read_text(encoding="utf-8")
    for label in ("| PromptKD ", "PromptKD→CoOp", "PromptKD→MaPLe (sym-KL)", "PromptKD→PromptSRC"):
        assert label in table, label
    pools = table.split("## Unlabelled pools")[1].split("## ")[0]  # each student's pool from its run.json
    for label in ("PromptKD→CoOp", "PromptKD→MaPLe (sym-KL)", "PromptKD→PromptSRC"):
        assert f"| {label} " in pools and "| train " in pools, label


# --- DDP, activation checkpointing and the teacher cache, for every method student -----------------

# Activation checkpointing recomputes each block's forward with the same ops at the same shapes, and
# a 1-process DDP all-reduce averages over one rank: both leave every step's gradient as it was, up
# to fp32 reassociation in the recomputed backward (<= 1e-6 per step, tests/test_grad_checkpoint.py).
# Over the run's few SGD steps that stays far below 1e-5.
SAME_RUN_ATOL = 1e-5


@pytest.mark.parametrize("student", [s for s in STUDENTS if s != "promptkd"])
def test_method_student_under_ddp_with_checkpointing_fills_a_cache_that_replays_the_run(
        student, data_root, clip_files, teacher_run, tmp_path, monkeypatch):
    """Run A: DDP (a gloo group), activation checkpointing in both towers, the online teacher
    writing an fp32 cache. Run B: one process, no checkpointing, reading that cache without the
    teacher. Both end with the same prompts, so each of the three works for this student."""
    import torch.distributed as dist
    from promptkd.class_vectors import ImageSide

    cache = str(tmp_path / "cache")
    common = ("TRAINER.PROMPTKD.TEACHER_CACHE", cache, "TEST.NO_TEST", "True")
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)  # run A only
    try:
        a = make_trainer(args_for(data_root, clip_files, teacher_run["export"], str(tmp_path / "a"), student, "kl",
                                  *common, "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True",
                                  "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32",
                                  "TRAINER.PROMPTKD.GRAD_CHECKPOINT", "both"))
        assert isinstance(a.train_model, torch.nn.parallel.DistributedDataParallel)
        checkpointed = [m for m in a.model.modules() if getattr(m, "grad_checkpoint", False)]
        assert checkpointed  # at least the prompted text tower
        init = {k: v.clone() for k, v in learnable(a).items()}
        a.train()
    finally:
        distributed.finish()  # one process: its barriers cannot wait on a peer
    monkeypatch.setattr(ImageSide, "load_visual", lambda *_, **__: pytest.fail("the teacher was loaded"))
    b = make_trainer(args_for(data_root, clip_files, teacher_run["export"], str(tmp_path / "b"), student, "kl",
                              *common))
    assert b.teacher is None and b.train_model is b.model
    assert not any(getattr(m, "grad_checkpoint", False) for m in b.model.modules())
    b.train()
    wa, wb = learnable(a), learnable(b)
    assert wa and wa.keys() == wb.keys()
    assert any(not torch.equal(wa[k], init[k]) for k in wa)  # the prompts did train
    for k in wa:
        assert torch.allclose(wa[k], wb[k], rtol=0, atol=SAME_RUN_ATOL), k


@pytest.mark.parametrize("student", [s for s in STUDENTS if s not in ("promptkd", "CoCoOp")])
def test_method_student_export_predicts_what_the_trainer_evaluates(student, data_root, clip_files, teacher_run,
                                                                    tmp_path):
    """The run folder alone (export/predictor.pt) gives the trainer's own evaluation logits."""
    from promptkd.deploy.predictor import Predictor

    trainer = make_trainer(args_for(data_root, clip_files, teacher_run["export"], str(tmp_path), student, "kl",
                                    "TEST.NO_TEST", "True", epochs=1))
    trainer.train()
    paths, expected = eval_logits(trainer)
    predictor = Predictor.from_run(str(tmp_path))
    assert predictor.classnames == trainer.all_classnames
    # Same weights, other batches: ~10 fp32 ulps of tiny-CLIP logits (tests/test_predict_export.py).
    assert (predictor_logits(predictor, paths) - expected).abs().max() <= 1e-5
