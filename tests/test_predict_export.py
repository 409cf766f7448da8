"""Using a trained run: predictor.pt, `promptkd.deploy.predict` and `promptkd.deploy.export_model`.

A tiny teacher and student are trained through Dassl on a fake DTD (tiny CLIPs); the
predictor rebuilt from the student's run folder alone must give the trainer's evaluation
logits on the same images, and the exported ONNX / TorchScript files the eager logits.
"""
import csv
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from promptkd.deploy import export_model  # noqa: E402
from promptkd import cli  # noqa: E402
from promptkd.errors import UserError  # noqa: E402
from promptkd.extras import torch_at_least  # noqa: E402
from promptkd.deploy.predictor import PREDICTOR_FILE, Predictor, PredictorRecord  # noqa: E402
from tests.cli import promptkd  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.published_kit import published_student  # noqa: E402
from tests.trainer_kit import (eval_logits, make_trainer, predictor_logits, student_args,  # noqa: E402
                               teacher_args)

pytestmark = pytest.mark.exact

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def runs(clip_files, tmp_path_factory):
    data = str(tmp_path_factory.mktemp("pdata"))
    make_dtd(data, n_classes=5, per_class=10)
    out = tmp_path_factory.mktemp("pruns")
    teacher = make_trainer(teacher_args(data, clip_files, str(out / "teacher"), epochs=1))
    teacher.train()
    student = make_trainer(student_args(data, clip_files, str(out / "student"), str(out / "teacher" / "export"),
                                        epochs=2))
    student.train()
    return {"data": data, "teacher": teacher, "student": student, "out": out}


@pytest.mark.parametrize("which", ["student", "teacher"])
def test_predictor_equals_trainer_evaluation(runs, which):
    trainer = runs[which]
    paths, expected = eval_logits(trainer)
    predictor = Predictor.from_run(str(runs["out"] / which))  # the run folder alone
    assert predictor.classnames == trainer.all_classnames
    got = predictor_logits(predictor, paths)
    assert got.shape == expected.shape == (15, 5)
    # Same weights, other batches (other GEMM shapes, so other summation orders on some CPUs):
    # tiny-CLIP logits are at most exp(logit_scale) = 1/0.07 = 14.3 in size, where an fp32 ulp is
    # 9.5e-7, so 1e-5 allows ~10 ulps of rounding; a real difference (other prompts, other
    # preprocessing) moves logits by 1e-2 or more.
    assert (got - expected).abs().max() <= 1e-5
    record = predictor.record
    assert record.preprocess["crop"] == [32, 32] and record.preprocess["interpolation"] == "bicubic"
    assert (record.weights["projector"] is not None) == (which == "student")


def test_predictor_file_is_plain_and_versioned(runs):
    data = torch.load(str(runs["out"] / "student" / "export" / PREDICTOR_FILE), weights_only=True)
    assert data["kind"] == "predictor" and data["format_version"] == 1
    assert data["backbone"]["kind"] == "clip" and len(data["weights"]["prompts"]) == 2
    assert "projector" in data["weights"] and data["class_vectors"].shape == (5, 96)


def test_predict_cli_topk_csv_and_unreadable_image(runs, tmp_path):
    images = tmp_path / "images"
    src = os.path.join(runs["data"], "dtd", "images")
    shutil.copytree(os.path.join(src, "banded"), images / "banded")
    (images / "broken.jpg").write_bytes(b"not a jpeg at all")
    out = tmp_path / "pred.csv"
    proc = promptkd("predict", [runs["out"] / "student", images, "--topk", "3", "--out", out])
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"skipped {images / 'broken.jpg'}" in proc.stderr and "10 images classified, 1 skipped" in proc.stderr
    with open(out, newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 10 * 3 and {r["rank"] for r in rows} == {"1", "2", "3"}
    predictor = Predictor.from_run(str(runs["out"] / "student"))
    first = sorted({r["image"] for r in rows})[0]
    logits = predictor_logits(predictor, [first])[0]
    probs = logits.softmax(-1)
    mine = [r for r in rows if r["image"] == first]
    order = probs.argsort(descending=True)[:3].tolist()
    assert [r["class"] for r in mine] == [predictor.classnames[i] for i in order]
    assert all(abs(float(r["probability"]) - probs[i].item()) < 1e-6 for r, i in zip(mine, order))
    assert first in proc.stdout


def test_predict_reports_a_missing_run_as_user_error(tmp_path):
    """`promptkd predict` itself, a new interpreter (the other CLI tests fork)."""
    proc = subprocess.run([sys.executable, "-m", "promptkd", "predict", str(tmp_path), str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "error: No predictor.pt in" in proc.stderr and "--eval-only" in proc.stderr


def test_predictor_refuses_other_backbone_weights(runs, tmp_path, clip_files):
    record = PredictorRecord.load(str(runs["out"] / "student" / "export" / PREDICTOR_FILE))
    record.backbone = {"kind": "clip", "name": clip_files["teacher"]}
    record.save(str(tmp_path / PREDICTOR_FILE))
    with pytest.raises(Exception, match="fingerprint"):
        Predictor.from_run(str(tmp_path))


@pytest.mark.parametrize("fmt,name", [("onnx", "student.onnx"), ("torchscript", "student.pt")])
def test_export_matches_eager_with_dynamic_batch(runs, tmp_path, fmt, name):
    if fmt == "onnx" and not torch_at_least(export_model.ONNX_MIN_TORCH):  # refused: tests/test_install_extras.py
        pytest.skip(f"ONNX export needs torch >= {export_model.ONNX_MIN_TORCH} (this is {torch.__version__})")
    run = str(runs["out"] / "student")
    out = str(tmp_path / name)
    assert cli.main(["export", run, out, "--format", fmt]) == 0
    predictor = Predictor.from_run(run)
    for batch in (1, 5):  # neither is the batch size of the example used to export
        images = torch.randn(batch, 3, 32, 32)
        eager = predictor.logits(images).numpy()
        got = export_model.run_exported(out, images)
        assert got.shape == (batch, 5)
        assert abs(got - eager).max() <= 1e-5  # ~10 ulps of logits <= 14.3 (another runtime's kernels)
    meta = export_model.read_metadata(out)
    assert meta["classnames"] == predictor.classnames
    assert meta["preprocess"] == predictor.record.preprocess
    assert meta["preprocess"]["mean"] == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    assert [f for f in os.listdir(tmp_path) if f.startswith(".tmp")] == []


def test_onnx_export_without_onnxscript_says_what_to_install(runs, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxscript", None)  # import onnxscript -> ImportError
    with pytest.raises(UserError, match=r'pip install -e "\.\[export\]"\), or use --format torchscript'):
        cli.main(["export", str(runs["out"] / "student"), str(tmp_path / "s.onnx"), "--format", "onnx"])
    assert os.listdir(tmp_path) == []


def test_eval_only_writes_the_predictor(runs, clip_files, tmp_path):
    out = str(tmp_path / "eval")
    trainer = make_trainer(student_args(runs["data"], clip_files, out, str(runs["out"] / "teacher" / "export")))
    trainer.run_eval_only(str(runs["out"] / "student"))
    a = PredictorRecord.load(os.path.join(out, "export", PREDICTOR_FILE))
    b = PredictorRecord.load(str(runs["out"] / "student" / "export" / PREDICTOR_FILE))
    assert a.classnames == b.classnames and a.fingerprint == b.fingerprint
    assert all(torch.equal(x, y) for x, y in zip(a.weights["prompts"], b.weights["prompts"]))
    assert json.dumps(a.preprocess) == json.dumps(b.preprocess)


def test_published_student_eval_only_gives_a_predictor(runs, clip_files, tmp_path):
    model_dir = tmp_path / "published"
    (model_dir / "VLPromptLearner").mkdir(parents=True)
    published_student(runs["student"].model, str(model_dir / "VLPromptLearner" / "model.pth.tar-20"))
    out = str(tmp_path / "eval")
    trainer = make_trainer(student_args(runs["data"], clip_files, out, str(runs["out"] / "teacher" / "export"),
                                        "MODEL.TRUST_PICKLED_CHECKPOINTS", "True"))
    trainer.run_eval_only(str(model_dir), epoch=20)
    paths, expected = eval_logits(trainer)
    with pytest.raises(UserError, match="--trust-pickled"):  # the backbone is the published file: trust is asked for
        Predictor.from_run(out)
    predictor = Predictor.from_run(out, trusted=True)
    assert predictor.record.backbone["kind"] == "published_student"
    assert (predictor_logits(predictor, paths) - expected).abs().max() <= 1e-5


def test_fp16_student_predictor_reads_the_fp32_backbone(runs, clip_files, tmp_path):
    """Under PREC fp16 the live tower is half; the predictor names the fp32 file's weights."""
    out = str(tmp_path / "half")
    trainer = make_trainer(student_args(runs["data"], clip_files, out, str(runs["out"] / "teacher" / "export"),
                                        "TRAINER.PROMPTKD.PREC", "fp16", epochs=1))
    trainer.train()
    assert trainer.model.image_encoder.visual.conv1.weight.dtype == torch.float16
    paths, expected = eval_logits(trainer)
    predictor = Predictor.from_run(out)  # refuses weights whose fingerprint differs
    assert (predictor_logits(predictor, paths) - expected).abs().max() <= 5e-2 * expected.abs().max()


@pytest.mark.parametrize("mode", ["shortest", "squash"])
def test_resize_mode_is_the_same_in_evaluation_and_in_the_predictor(mode):
    """INPUT.RESIZE_MODE: the trainer's test transform and the predictor's (from the recorded
    preprocessing) give the same tensor for a wide image; "squash" keeps the whole image."""
    import numpy as np
    from dassl.config import get_cfg_default
    from PIL import Image
    from torchvision import transforms as T

    from promptkd.deploy.predictor import image_transform
    from promptkd.trainers.config import extend_cfg
    from promptkd.trainers.data import test_transform
    from promptkd.trainers.predictor_export import preprocess_from_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.INPUT.SIZE, cfg.INPUT.RESIZE_MODE, cfg.INPUT.INTERPOLATION = (32, 32), mode, "bicubic"
    cfg.INPUT.TRANSFORMS = ("random_flip", "normalize")
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (40, 80, 3), dtype=np.uint8))
    ours = test_transform(cfg)(image)
    assert ours.shape == (3, 32, 32)
    torch.testing.assert_close(image_transform(preprocess_from_cfg(cfg))(image), ours, rtol=0, atol=0)
    squashed = T.Compose([T.Resize((32, 32), interpolation=T.InterpolationMode.BICUBIC), T.ToTensor(),
                          T.Normalize(cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD)])(image)
    assert torch.equal(ours, squashed) == (mode == "squash")


def test_unknown_resize_mode_is_a_config_error():
    from dassl.config import get_cfg_default

    from promptkd.errors import ConfigError
    from promptkd.trainers.config import extend_cfg
    from promptkd.trainers.data import test_transform

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.INPUT.RESIZE_MODE = "longest"
    with pytest.raises(ConfigError, match="INPUT.RESIZE_MODE is 'longest'; use one of shortest, squash"):
        test_transform(cfg)


def test_a_model_that_letterboxes_test_images_is_refused():
    """open_clip's resize_mode "longest" (pad to the square) has no Dassl transform here."""
    from types import SimpleNamespace

    from dassl.config import get_cfg_default

    from promptkd.backbones import Preprocess
    from promptkd.errors import ConfigError
    from promptkd.trainers.base import PromptTrainer
    from promptkd.trainers.config import extend_cfg

    cfg = get_cfg_default()
    extend_cfg(cfg)
    cfg.INPUT.SIZE, cfg.INPUT.INTERPOLATION = (224, 224), "bicubic"
    cfg.INPUT.PIXEL_MEAN, cfg.INPUT.PIXEL_STD = [0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711]
    trainer = SimpleNamespace(cfg=cfg)
    PromptTrainer.check_input(trainer, Preprocess.of(224), "backbone")  # agrees: nothing to say
    with pytest.raises(ConfigError, match="resize mode 'longest', which is not supported"):
        PromptTrainer.check_input(trainer, Preprocess.of(224, resize_mode="longest"), "backbone")
