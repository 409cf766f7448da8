"""`promptkd convert`: published PromptKD / PromptSRC checkpoints (faked in their torch-1.x pickled
layout, tests/published_kit.py) become model folders that load without pickles and give the
published models' logits."""
import pytest
import torch
import torch.nn.functional as F

from promptkd import cli
from promptkd.deploy import hub
from promptkd.class_vectors import ClassVectors
from promptkd.errors import ConfigError, UserError
from promptkd.teacher import IVLPTeacher
from tests.published_kit import CLASSES, published_student, published_teacher, teacher_logits, trained_student

pytestmark = pytest.mark.exact


def no_pickles(monkeypatch):
    """From here on, torch.load may only run with weights_only=True (no arbitrary pickle)."""
    real = torch.load

    def load(*args, weights_only=None, **kw):
        assert weights_only is True, "a pickle was read with weights_only=False"
        return real(*args, weights_only=True, **kw)
    monkeypatch.setattr(torch, "load", load)


@pytest.fixture
def teacher(clip_files):
    from promptkd.backbones import load_clip
    torch.manual_seed(11)  # random prompts on the stock tiny teacher CLIP
    return IVLPTeacher(load_clip(clip_files["teacher"]), CLASSES[:3], 4, 3, "a photo of a", 4, 3,
                       regularise=False).eval()


def test_published_teacher_becomes_a_folder_with_its_logits(teacher, clip_files, tmp_path, monkeypatch):
    ckpt, out = str(tmp_path / "model.pth.tar-20"), str(tmp_path / "teacher-hf")
    published_teacher(teacher, ckpt)
    (tmp_path / "names.txt").write_text("\n".join(CLASSES) + "\n")
    assert cli.main(["convert", ckpt, out, "--trust-pickled", "--backbone", clip_files["teacher"],
                     "--classnames", str(tmp_path / "names.txt"), "--dataset", "ImageNet"]) == 0
    no_pickles(monkeypatch)
    predictor = hub.from_pretrained(out)
    assert predictor.classnames == CLASSES and predictor.record.dataset == "ImageNet"
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    # logits <= exp(logit_scale) = 14.3: 1e-5 is ~10 fp32 ulps (other encode batches); other prompts move them by 1e-2+
    assert (predictor.logits(images) - teacher_logits(teacher, images)).abs().max() <= 1e-5
    vectors, side, _ = hub.teacher_export(out)  # usable as TEACHER_DIR
    assert vectors.teacher["converted_from"] == "model.pth.tar-20" and len(side.prompts) == 3


def test_published_student_becomes_a_folder_with_its_logits(student_clip, clip_files, tmp_path, monkeypatch):
    trained = trained_student(student_clip)
    ckpt, out = str(tmp_path / "model.pth.tar-20"), str(tmp_path / "student-hf")
    published_student(trained, ckpt)
    vectors = ClassVectors(F.normalize(torch.randn(5, 96), dim=-1), CLASSES, "ImageNet",
                           {"fingerprint": "abc", "method": "PromptKDTeacher"})
    vectors.save(str(tmp_path / "class_vectors_ImageNet.pt"))
    assert cli.main(["convert", ckpt, out, "--trust-pickled", "--backbone", clip_files["student"],
                     "--teacher", str(tmp_path)]) == 0
    no_pickles(monkeypatch)
    predictor = hub.from_pretrained(out)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        expected = trained(images, vectors.vectors)
    assert (predictor.logits(images) - expected).abs().max() <= 1e-5
    assert predictor.record.teacher["fingerprint"] == "abc"


def test_conversion_needs_trust_and_the_right_backbone(teacher, clip_files, tmp_path):
    ckpt = str(tmp_path / "t.pth.tar")
    with torch.no_grad():  # its image tower is no longer the stock one
        teacher.clip.visual.ln_post.weight.add_(0.5)
    published_teacher(teacher, ckpt)
    (tmp_path / "names.txt").write_text("\n".join(CLASSES))
    args = ["convert", ckpt, str(tmp_path / "out"), "--backbone", clip_files["teacher"], "--classnames",
            str(tmp_path / "names.txt"), "--dataset", "ImageNet"]
    with pytest.raises(UserError, match="--trust-pickled"):
        cli.main(args)
    with pytest.raises(ConfigError, match="fingerprint [0-9a-f]{16}, but the stock backbone .* has [0-9a-f]{16}"):
        cli.main(args + ["--trust-pickled"])
    with pytest.raises(ConfigError, match="is a teacher: give --classnames"):
        cli.main(args[:5] + ["--trust-pickled"])
    assert not (tmp_path / "out").exists()
