"""The Dassl-free core: losses, GPA, schedule, student, teacher export, class-vector files."""
import math
import os

import pytest
import torch
import torch.nn.functional as F

from promptkd.backbones import clip, fingerprint
from promptkd.checkpoints import atomic_save, learnable_state_dict, load_file, load_learnable_state_dict
from promptkd.class_vectors import ClassVectors, ImageSide, check_pair
from promptkd.errors import CheckpointError
from promptkd.evaluation import accuracy_report
from promptkd.losses import GaussianPromptAggregator, gpa_weights, kd_loss, promptsrc_loss
from promptkd.schedule import build_lr_scheduler
from promptkd.student import PromptKDStudent, TeacherImageScorer
from promptkd.teacher import IVLPTeacher

CLASSES = ["red circle", "blue_square", "green triangle", "yellow star", "black stripes"]


def batch(model, n=4, seed=0):
    r = model.visual.input_resolution
    return torch.randn(n, 3, r, r, generator=torch.Generator().manual_seed(seed))


# --- losses ------------------------------------------------------------------------------

def test_kd_loss_matches_hand_computation():
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(3, 5, generator=g) * 4, torch.randn(3, 5, generator=g) * 4
    T, w = 2.0, 1000.0
    total = 0.0
    for i in range(3):
        p = [math.exp(v / T) for v in t[i].tolist()]
        q = [math.exp(v / T) for v in s[i].tolist()]
        p = [x / sum(p) for x in p]
        q = [x / sum(q) for x in q]
        total += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    expected = w * T * T * total / (3 * 5)  # summed KL over the number of logits, not batchmean
    assert kd_loss(s, t, T, w).item() == pytest.approx(expected, rel=1e-5)
    assert kd_loss(t, t, T, w).item() == pytest.approx(0.0, abs=1e-6)


def test_promptsrc_terms_and_switches():
    g = torch.Generator().manual_seed(1)
    logits, zs = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    labels = torch.tensor([0, 1, 2, 0])
    tf, ztf = F.normalize(torch.randn(3, 8, generator=g), dim=-1), F.normalize(torch.randn(3, 8, generator=g), dim=-1)
    imf, zif = F.normalize(torch.randn(4, 8, generator=g), dim=-1), F.normalize(torch.randn(4, 8, generator=g), dim=-1)
    terms = promptsrc_loss(logits, labels, tf, ztf, imf, zif, zs, 25.0, 10.0, 1.0)
    assert terms["ce"].item() == pytest.approx(F.cross_entropy(logits, labels).item())
    assert terms["l1_text"].item() == pytest.approx(25 * (tf - ztf).abs().mean().item(), rel=1e-6)
    assert terms["l1_image"].item() == pytest.approx(10 * (imf - zif).abs().mean().item(), rel=1e-6)
    kl = F.kl_div(F.log_softmax(logits, -1), F.softmax(zs, -1), reduction="sum") / logits.numel()
    assert terms["kl"].item() == pytest.approx(kl.item(), rel=1e-5)
    assert terms["loss"].item() == pytest.approx(sum(terms[k].item() for k in ("ce", "l1_text", "l1_image", "kl")), rel=1e-6)
    plain = promptsrc_loss(logits, labels, tf, ztf, imf, zif, zs, 0.0, 0.0, 0.0)
    assert set(plain) == {"ce", "loss"}


def test_gpa_weights_and_aggregate():
    w = gpa_weights(20, 15, 1)
    assert sum(w) == pytest.approx(1.0, abs=1e-12)
    assert max(range(20), key=lambda i: w[i]) == 14  # epoch 15
    assert sum(gpa_weights(2, 15, 1)) == pytest.approx(1.0)  # far mean: no underflow
    agg = GaussianPromptAggregator(3, 2, 1.5)
    values = [torch.full((2, 2), float(e)) for e in (1, 2, 3)]
    for e, v in enumerate(values, 1):
        agg.update(e, {"p": v})
    ww = gpa_weights(3, 2, 1.5)
    expected = sum(wi * v for wi, v in zip(ww, values))
    assert torch.allclose(agg.result()["p"], expected)
    resumed = GaussianPromptAggregator(3, 2, 1.5)
    half = GaussianPromptAggregator(3, 2, 1.5)
    half.update(1, {"p": values[0]})
    resumed.load_state_dict(half.state_dict())
    resumed.update(2, {"p": values[1]})
    resumed.update(3, {"p": values[2]})
    assert torch.equal(resumed.result()["p"], agg.result()["p"])


def test_schedule_warmup_then_cosine_and_exact_resume(tmp_path):
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.005)
    sched = build_lr_scheduler(opt, "cosine", 4, 1, "constant", 1e-5)
    lrs = []
    for _ in range(4):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(1e-5)
    assert lrs[1:] == pytest.approx([0.005 * 0.5 * (1 + math.cos(math.pi * e / 4)) for e in (1, 2, 3)])
    # Resume after 2 epochs from a weights_only file: the curve continues where it stopped.
    opt2 = torch.optim.SGD([p], lr=0.005)
    s2 = build_lr_scheduler(opt2, "cosine", 4, 1, "constant", 1e-5)
    for _ in range(2):
        opt2.step()
        s2.step()
    atomic_save({"o": opt2.state_dict(), "s": s2.state_dict()}, str(tmp_path / "c.pt"))
    state = torch.load(str(tmp_path / "c.pt"), weights_only=True)
    opt3 = torch.optim.SGD([p], lr=0.005)
    s3 = build_lr_scheduler(opt3, "cosine", 4, 1, "constant", 1e-5)
    opt3.load_state_dict(state["o"])
    s3.load_state_dict(state["s"])
    assert opt3.param_groups[0]["lr"] == pytest.approx(lrs[2])
    opt3.step()
    s3.step()
    assert opt3.param_groups[0]["lr"] == pytest.approx(lrs[3])


def test_accuracy_report_scores_base_and_novel_separately():
    # 4 classes, m = 2. Image 0 (label 0) would be wrong over all classes but right among base.
    logits = torch.tensor([[5.0, 1.0, 9.0, 0.0],   # label 0: all-class argmax 2, base argmax 0
                           [0.0, 3.0, 1.0, 0.0],   # label 1: right
                           [9.0, 0.0, 1.0, 2.0],   # label 3: novel argmax 3 (index 1 of V[2:])
                           [0.0, 0.0, 4.0, 1.0]])  # label 2: right
    r = accuracy_report(logits, torch.tensor([0, 1, 3, 2]), "base2novel", 2)
    assert (r["base"], r["novel"], r["accuracy"]) == (100.0, 100.0, 50.0)
    assert r["hm"] == 100.0


# --- student ------------------------------------------------------------------------------

@pytest.mark.parametrize("class_dim", [96, 48])
def test_student_projector_sizes_and_gradients(student_clip, class_dim):
    student = PromptKDStudent(student_clip.visual, student_clip.logit_scale, class_dim, n_ctx=2, depth=2)
    ds = student_clip.visual.output_dim
    assert student.projector[0].weight.shape == (class_dim, ds)
    assert student.projector[3].weight.shape == (class_dim, class_dim)
    vectors = F.normalize(torch.randn(5, class_dim), dim=-1)
    logits = student(batch(student_clip), vectors)
    assert logits.shape == (4, 5)
    logits.sum().backward()
    trained = {n for n, p in student.named_parameters() if p.grad is not None}
    assert trained == {n for n, p in student.named_parameters() if p.requires_grad}
    assert all(n.startswith(("image_encoder.prompts", "projector")) for n in trained)
    assert {n for n in learnable_state_dict(student)} >= {"projector.1.running_mean", "logit_scale"}
    assert not any(k.startswith("image_encoder.visual") for k in learnable_state_dict(student))


def test_teacher_scorer_is_frozen_and_in_eval(teacher_clip):
    prompts = [torch.randn(2, teacher_clip.visual.class_embedding.shape[0]) for _ in range(2)]
    scorer = TeacherImageScorer(teacher_clip.visual, teacher_clip.logit_scale, prompts)
    scorer.train()
    assert not scorer.training and not any(p.requires_grad for p in scorer.parameters())
    out = scorer(batch(teacher_clip), F.normalize(torch.randn(3, 96), dim=-1))
    assert out.shape == (4, 3) and not out.requires_grad


# --- teacher ------------------------------------------------------------------------------

def test_teacher_steps_lower_loss_and_leave_clip_untouched(teacher_clip):
    before = {k: v.clone() for k, v in teacher_clip.state_dict().items()}
    teacher = IVLPTeacher(teacher_clip, CLASSES[:3], 4, 2, "a photo of a", 4, 2)
    opt = torch.optim.SGD([p for p in teacher.parameters() if p.requires_grad], lr=0.05, momentum=0.9)
    x, y = batch(teacher_clip, n=6, seed=3), torch.tensor([0, 1, 2, 0, 1, 2])
    teacher.train()
    losses = []
    for _ in range(15):
        out = teacher(x)
        terms = promptsrc_loss(out["logits"], y, out["text_feats"], out["zs_text_feats"], out["image_feats"],
                               out["zs_image_feats"], out["zs_logits"], 25.0, 10.0, 1.0)
        opt.zero_grad()
        terms["loss"].backward()
        losses.append(terms["loss"].item())
        opt.step()
    assert losses[-1] < losses[0]
    assert all(torch.equal(before[k], v) for k, v in teacher_clip.state_dict().items())
    assert {n for n, p in teacher.named_parameters() if p.requires_grad} == {
        f"{side}.prompts.{i}" for side in ("image_encoder", "text_encoder") for i in range(2)}


# The 20 of OpenAI's 80 ImageNet templates that the published PromptSRC does not use.
NOT_IN_PROMPTSRC = [
    "a jpeg corrupted photo of the {}.", "a good photo of a {}.", "a plushie {}.",
    "a photo of the nice {}.", "a photo of the small {}.", "a photo of the weird {}.",
    "the cartoon {}.", "art of the {}.", "a drawing of the {}.", "a photo of the large {}.",
    "a black and white photo of a {}.", "the plushie {}.", "a dark photo of a {}.",
    "itap of a {}.", "graffiti of the {}.", "a toy {}.", "itap of my {}.",
    "a photo of a cool {}.", "a photo of a small {}.", "a tattoo of the {}.",
]


def test_promptsrc_regulariser_averages_its_60_templates(teacher_clip):
    from promptkd.templates import IMAGENET_TEMPLATES, PROMPTSRC_TEMPLATES
    expected = [t for t in IMAGENET_TEMPLATES if t not in NOT_IN_PROMPTSRC]
    assert len(IMAGENET_TEMPLATES) == 80 and PROMPTSRC_TEMPLATES == expected and len(expected) == 60
    teacher = IVLPTeacher(teacher_clip, CLASSES[:3], 4, 2, "a photo of a", 4, 2).train()
    out = teacher(batch(teacher_clip))
    with torch.no_grad():  # unnormalised features averaged over the 60, then normalised
        want = F.normalize(torch.stack([teacher_clip.encode_text(clip.tokenize(
            [t.format(c.replace("_", " ")) for t in expected])).mean(0) for c in CLASSES[:3]]), dim=-1)
    torch.testing.assert_close(out["zs_text_feats"], want, atol=1e-6, rtol=0)


def test_class_vectors_all_classes_unit_norm_label_order(teacher_clip):
    teacher = IVLPTeacher(teacher_clip, CLASSES[:3], 4, 2, "a photo of a", 4, 2, regularise=False)
    vectors, side = teacher.export(CLASSES, "Toy", {"kind": "clip", "name": "tiny"})
    assert vectors.vectors.shape == (5, teacher_clip.text_projection.shape[1])
    assert torch.allclose(vectors.vectors.norm(dim=-1), torch.ones(5), atol=1e-6)
    one_by_one = torch.cat([teacher.class_vectors([c]) for c in CLASSES])
    assert torch.allclose(vectors.vectors, one_by_one, atol=1e-6)
    assert vectors.classnames == CLASSES and len(side.prompts) == 2
    assert side.fingerprint == fingerprint(teacher_clip.visual) == vectors.teacher["fingerprint"]


def test_zero_shot_teacher_vectors_equal_stock_clip(teacher_clip):
    teacher = IVLPTeacher(teacher_clip, CLASSES, 4, 0, "a photo of a", 4, 0, regularise=False)
    with torch.no_grad():
        stock = F.normalize(teacher_clip.encode_text(
            clip.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])).float(), dim=-1)
    assert (teacher.class_vectors(CLASSES) - stock).abs().max() <= 1e-6


def test_export_twice_is_byte_identical(teacher_clip, tmp_path):
    teacher = IVLPTeacher(teacher_clip, CLASSES, 4, 2, "a photo of a", 4, 2, regularise=False)
    for run in ("a", "b"):
        vectors, side = teacher.export(CLASSES, "Toy", {"kind": "clip", "name": "tiny"})
        vectors.save(str(tmp_path / run / "cv.pt"))
        side.save(str(tmp_path / run / "side.pt"))
    for name in ("cv.pt", "side.pt"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()


# --- class-vector files ---------------------------------------------------------------------

def _vectors(names=CLASSES, dim=8, fp="abc"):
    return ClassVectors(F.normalize(torch.randn(len(names), dim), dim=-1), list(names), "Toy",
                        {"fingerprint": fp, "backbone": {"kind": "clip", "name": "x"}})


def test_class_vectors_roundtrip_and_weights_only(tmp_path):
    v = _vectors()
    v.save(str(tmp_path / "cv.pt"))
    loaded = ClassVectors.load(str(tmp_path / "cv.pt"))
    assert torch.equal(loaded.vectors, v.vectors) and loaded.classnames == CLASSES
    torch.load(str(tmp_path / "cv.pt"), weights_only=True)  # plain tensors, strings, numbers


@pytest.mark.parametrize("dataset, names, message", [
    ("Other", CLASSES, "made for dataset Toy"),
    ("Toy", CLASSES[:4], "5 classes stored, the dataset has 4"),
    ("Toy", [CLASSES[1], CLASSES[0]] + CLASSES[2:], "label 0: stored 'red circle' vs dataset 'blue_square'"),
])
def test_class_vectors_refuse_other_classes(dataset, names, message):
    with pytest.raises(ValueError, match=message):
        _vectors().check_dataset(dataset, names)


def test_class_vectors_and_image_side_from_different_teachers():
    side = ImageSide({"kind": "clip", "name": "x"}, "abc", [], 0.0, width=8)
    check_pair(_vectors(), side, "cv", "side")
    with pytest.raises(ValueError, match="width 8 vs 16"):
        check_pair(_vectors(), ImageSide({"kind": "clip", "name": "x"}, "abc", [], 0.0, width=16), "cv", "side")
    with pytest.raises(ValueError, match="teacher fingerprint zzz vs abc"):
        check_pair(_vectors(fp="zzz"), side, "cv", "side")


def test_missing_and_foreign_files_say_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="No class-vector file at .*nope.pt. Run the teacher"):
        ClassVectors.load(str(tmp_path / "nope.pt"), "Run the teacher.")
    atomic_save({"kind": "image_side", "format_version": 99}, str(tmp_path / "old.pt"))
    with pytest.raises(ValueError, match="format version 99"):
        ImageSide.load(str(tmp_path / "old.pt"))
    atomic_save({"hello": 1}, str(tmp_path / "other.pt"))
    with pytest.raises(ValueError, match="is not a class_vectors file"):
        ClassVectors.load(str(tmp_path / "other.pt"))


def test_image_side_refuses_other_weights(clip_files, tmp_path):
    side = ImageSide({"kind": "clip", "name": clip_files["teacher"]}, "0" * 16, [], 0.0, width=96)
    with pytest.raises(ValueError, match="not the weights it was trained on"):
        side.load_visual()


# --- checkpoints --------------------------------------------------------------------------

def test_atomic_save_keeps_old_file_on_failure(tmp_path):
    path = str(tmp_path / "ckpt.pt")
    atomic_save({"a": torch.ones(2)}, path)

    class Boom:
        def __reduce__(self):
            raise RuntimeError("disk full")
    with pytest.raises(RuntimeError, match="disk full"):
        atomic_save({"a": Boom()}, path)
    assert torch.equal(load_file(path)["a"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind


def test_learnable_state_roundtrip_and_mismatch(student_clip):
    a = PromptKDStudent(student_clip.visual, student_clip.logit_scale, 96, 2, 2)
    state = learnable_state_dict(a)
    torch.manual_seed(5)
    b = PromptKDStudent(student_clip.visual, student_clip.logit_scale, 96, 2, 2)
    load_learnable_state_dict(b, state)
    assert all(torch.equal(v, learnable_state_dict(b)[k]) for k, v in state.items())
    c = PromptKDStudent(student_clip.visual, student_clip.logit_scale, 96, 2, 1)
    with pytest.raises(CheckpointError, match="missing keys .*unexpected keys \\['image_encoder.prompts.1'\\]"):
        load_learnable_state_dict(c, state)
