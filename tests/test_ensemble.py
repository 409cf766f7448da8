"""Several teachers (issue 38): the ensemble rules, and a student distilled from a trained and a
zero-shot teacher of another backbone, online and from the cache.

Fake DTD, tiny CLIPs: the trained teacher is the session's PromptKDTeacher (tiny teacher CLIP),
the zero-shot one a stock "a photo of a {c}." export of the tiny *student* CLIP (another width,
another tower). Rules are checked against hand computations; an ensemble of one is the teacher
itself; the cache of each teacher gives the online student exactly (fp32 stores the very floats
the online teacher produced); a killed run resumes to the same weights; teachers whose classes
differ are refused with both exports named.
"""
import json
import math
import os
import shutil

import pytest
import torch

from promptkd.errors import ConfigError
from promptkd.targets import (Ensemble, Targets, TeacherTargets, build_ensemble, check_ensemble_rule,
                              mix_probabilities, select_vocabulary, teacher_weights)

# --- the rules against hand computations (core only) ------------------------------------------

A = torch.tensor([[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
B = torch.tensor([[0.0, 1.0, 0.0], [3.0, -1.0, 0.5]])


def softmax(row, t):
    e = [math.exp(x / t) for x in row]
    return [x / sum(e) for x in e]


def hand_mix(weights_per_row, t):
    out = []
    for r in range(2):
        pa, pb = softmax(A[r].tolist(), t), softmax(B[r].tolist(), t)
        wa, wb = weights_per_row[r]
        out.append([wa * x + wb * y for x, y in zip(pa, pb)])
    return torch.tensor(out, dtype=torch.float64)


def probabilities(logits, t):
    return torch.softmax(logits.double() / t, dim=-1)


# float32 throughout: 1e-6 is a few ulps of probabilities <= 1 after a softmax and a log-sum-exp
TOL = 1e-6


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_mean_and_fixed_weights_mix_probabilities_at_the_objective_temperature(t):
    mixed = mix_probabilities([A, B], t, "mean_prob")
    assert (probabilities(mixed, t) - hand_mix([(0.5, 0.5)] * 2, t)).abs().max() <= TOL
    w = check_ensemble_rule("weights", [3, 1], 1.0, "max_prob", 2)
    assert w == [0.75, 0.25]
    mixed = mix_probabilities([A, B], t, "weights", w)
    assert (probabilities(mixed, t) - hand_mix([(0.75, 0.25)] * 2, t)).abs().max() <= TOL


@pytest.mark.parametrize("measure", ["max_prob", "entropy"])
def test_confidence_weights_are_a_softmax_over_teachers_of_each_images_confidence(measure):
    t, tau = 1.0, 0.25
    rows = []
    for r in range(2):
        pa, pb = softmax(A[r].tolist(), t), softmax(B[r].tolist(), t)
        if measure == "max_prob":
            ca, cb = max(pa), max(pb)
        else:  # negative entropy / log C
            ca = sum(p * math.log(p) for p in pa) / math.log(3)
            cb = sum(p * math.log(p) for p in pb) / math.log(3)
        wa = math.exp(ca / tau) / (math.exp(ca / tau) + math.exp(cb / tau))
        rows.append((wa, 1 - wa))
    mixed = mix_probabilities([A, B], t, "confidence", None, tau, measure)
    assert (probabilities(mixed, t) - hand_mix(rows, t)).abs().max() <= TOL
    # row 1 of A is uniform: the confident teacher B dominates that image
    assert rows[1][1] > 0.5
    w = teacher_weights(torch.stack([torch.log_softmax(A, -1), torch.log_softmax(B, -1)]), "confidence",
                        temperature=tau, confidence=measure)
    assert torch.allclose(w.sum(0), torch.ones(2)) and abs(float(w[1, 1]) - rows[1][1]) <= TOL


class Fixed(TeacherTargets):
    def __init__(self, logits):
        super().__init__(None, None, "fixed")
        self.logits = logits

    def __call__(self, views):
        return Targets(self.logits)


def test_an_ensemble_of_one_is_that_teacher_exactly():
    one = Fixed(A)
    assert build_ensemble([one], 2.0, "confidence", None, 0.1) is one
    two = build_ensemble([one, Fixed(B)], 1.0)
    assert isinstance(two, Ensemble) and two.describe() == {"rule": "mean_prob", "teachers": ["fixed", "fixed"]}


@pytest.mark.parametrize("weights, message", [([1.0], "1 weights for 2 teachers"), ([0, 0], "not all 0"),
                                              ([-1, 2], ">= 0")])
def test_bad_weights_are_refused_naming_the_key(weights, message):
    with pytest.raises(ConfigError, match="ENSEMBLE_WEIGHTS") as err:
        check_ensemble_rule("weights", weights, 1.0, "max_prob", 2)
    assert message in str(err.value)


def test_batch_level_vocabulary_is_the_top_k_of_the_batch_mean_probability():
    logits = torch.tensor([[5.0, 0.0, 0.0, 4.0], [0.0, 0.0, 6.0, 0.0], [5.0, 0.0, 0.0, 0.0]])
    mean = torch.softmax(logits, -1).mean(0)  # class 0 highest, then 2, then 3
    assert select_vocabulary(logits, 2, "batch").tolist() == sorted(mean.topk(2).indices.tolist()) == [0, 2]
    assert select_vocabulary(logits, 2, "image").tolist() == logits.topk(2, dim=-1).indices.tolist()


# --- a student of a trained and a zero-shot teacher (Dassl) ---------------------------------------

dassl = pytest.importorskip("dassl", reason="Dassl not installed")

from promptkd.trainers import train  # noqa: E402,F401  (conftest.py registers the trainers and datasets)
from tests.trainer_kit import learnable, make_trainer, student_args, whole_and_resumed  # noqa: E402

EPOCHS = 2


def ensemble_args(data_root, clip_files, teacher_run, zero_shot, out, *extra):
    return student_args(data_root, clip_files, out, teacher_run["export"], "TEST.NO_TEST", "True",
                        "TRAINER.PROMPTKD.TEACHER_DIRS", f"['{zero_shot}']", *extra, epochs=EPOCHS)


@pytest.mark.exact
def test_ensemble_online_equals_from_each_teachers_cache_and_records_name_both(
        data_root, clip_files, teacher_run, zero_shot, tmp_path, monkeypatch):
    rule = ("TRAINER.PROMPTKD.ENSEMBLE_RULE", "confidence", "TRAINER.PROMPTKD.ENSEMBLE_TEMPERATURE", "0.2")
    online = make_trainer(ensemble_args(data_root, clip_files, teacher_run, zero_shot, str(tmp_path / "online"),
                                        *rule))
    assert isinstance(online.targets, Ensemble) and len(online.targets.members) == 2
    widths = {m.tower.image_encoder.output_dim for m in online.targets.members}
    assert len(widths) == 2  # two backbones of different widths
    online.train()
    ref = learnable(online)
    cache = str(tmp_path / "cache")
    filling = make_trainer(ensemble_args(data_root, clip_files, teacher_run, zero_shot, str(tmp_path / "fill"),
                                         *rule, "TRAINER.PROMPTKD.TEACHER_CACHE", cache,
                                         "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True",
                                         "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32"))
    filling.train()
    assert sorted(os.listdir(cache)) == ["teacher0", "teacher1"]  # each teacher paid once, in its own cache
    filled = learnable(filling)
    assert all(torch.equal(filled[k], ref[k]) for k in ref)  # filling changes nothing

    from promptkd.class_vectors import ImageSide

    def refuse(*a, **k):
        raise AssertionError("a teacher's weights were loaded in a cached run")
    with monkeypatch.context() as m:
        m.setattr(ImageSide, "load_visual", refuse)
        cached = make_trainer(ensemble_args(data_root, clip_files, teacher_run, zero_shot, str(tmp_path / "cached"),
                                            *rule, "TRAINER.PROMPTKD.TEACHER_CACHE", cache))
    cached.train()
    weights = learnable(cached)
    assert all(torch.equal(weights[k], ref[k]) for k in ref)  # the stored fp32 floats are the online ones

    run = json.load(open(tmp_path / "cached" / "run.json"))
    assert [t["class_vectors"] for t in run["teachers"]][1].startswith(os.path.abspath(zero_shot))
    assert run["ensemble"]["rule"] == "confidence" and len(run["ensemble"]["teachers"]) == 2
    assert "ensemble confidence of" in run["objective_label"] and "zero-shot" in run["objective_label"]


def test_ensemble_resumes_exactly(data_root, clip_files, teacher_run, zero_shot, tmp_path):
    whole_and_resumed(lambda name: ensemble_args(data_root, clip_files, teacher_run, zero_shot,
                                                 str(tmp_path / name)), crash_after_epoch=1)


def test_teachers_whose_classes_differ_are_refused_naming_both(data_root, clip_files, teacher_run, zero_shot,
                                                               tmp_path):
    from promptkd.class_vectors import ClassVectors, class_vectors_file
    other = str(tmp_path / "swapped")
    shutil.copytree(zero_shot, other)
    path = class_vectors_file(other, "DescribableTextures")
    vectors = ClassVectors.load(path)
    vectors.classnames[0], vectors.classnames[1] = vectors.classnames[1], vectors.classnames[0]
    vectors.save(path)
    with pytest.raises(ConfigError) as err:
        make_trainer(ensemble_args(data_root, clip_files, teacher_run, other, str(tmp_path / "s")))
    text = str(err.value)
    assert path in text and class_vectors_file(teacher_run["export"], "DescribableTextures") in text
    assert "another order" in text


def test_an_ensemble_refuses_a_feature_loss(data_root, clip_files, teacher_run, zero_shot, tmp_path):
    with pytest.raises(ConfigError, match="FEATURE_LOSS cosine with several teachers"):
        make_trainer(ensemble_args(data_root, clip_files, teacher_run, zero_shot, str(tmp_path / "s"),
                                   "TRAINER.PROMPTKD.FEATURE_LOSS", "cosine"))
