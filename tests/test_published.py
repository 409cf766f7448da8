"""The published PromptSRC/PromptKD checkpoint formats (docs/running.md, "Published checkpoint
layout"), synthesised from their key patterns, load into our models and reproduce the logits
of the models they came from."""
import pytest
import torch
import torch.nn.functional as F

from promptkd.checkpoints import split_published_student, split_published_teacher
from promptkd.errors import CheckpointError
from promptkd.student import PromptKDStudent, load_published_student
from promptkd.teacher import IVLPTeacher, load_published_teacher
from tests.published_kit import CLASSES, published_student, published_teacher, teacher_logits, trained_student

pytestmark = pytest.mark.exact


@pytest.fixture
def trained_teacher(clip_files):
    from promptkd.backbones import load_clip
    clip_model = load_clip(clip_files["teacher"])
    with torch.no_grad():  # the checkpoint's backbone differs from the stock file: it must win
        clip_model.visual.ln_post.weight.add_(0.5)
        clip_model.transformer.resblocks[0].mlp.c_fc.bias.add_(0.25)
    torch.manual_seed(11)
    return IVLPTeacher(clip_model, CLASSES[:3], 4, 3, "a photo of a", 4, 3, regularise=False)


def test_published_teacher_reproduces_logits(trained_teacher, clip_files, tmp_path):
    path = str(tmp_path / "model.pth.tar-20")
    published_teacher(trained_teacher, path)
    from promptkd.backbones import load_clip
    torch.manual_seed(99)
    fresh = IVLPTeacher(load_clip(clip_files["teacher"]), CLASSES[:3], 4, 3, "a photo of a", 4, 3, regularise=False)
    images = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert (teacher_logits(fresh, images) - teacher_logits(trained_teacher, images)).abs().max() > 1e-3
    load_published_teacher(fresh, path, trusted=True)
    assert (teacher_logits(fresh, images) - teacher_logits(trained_teacher, images)).abs().max() <= 1e-5


def test_published_teacher_needs_trust_and_says_so(trained_teacher, tmp_path):
    path = str(tmp_path / "model-best.pth.tar")
    published_teacher(trained_teacher, path)
    with pytest.raises(CheckpointError, match="MODEL.TRUST_PICKLED_CHECKPOINTS True.*weights_only=False"):
        split_published_teacher(path, trusted=False)


def test_published_teacher_depth_inferred_and_mismatch_explained(trained_teacher, clip_files, tmp_path):
    path = str(tmp_path / "t.pth.tar")
    published_teacher(trained_teacher, path)
    pub = split_published_teacher(path, trusted=True)
    assert len(pub["text_prompts"]) == 3 and len(pub["image_prompts"]) == 3
    from promptkd.backbones import load_clip
    shallow = IVLPTeacher(load_clip(clip_files["teacher"]), CLASSES, 4, 2, "a photo of a", 4, 2, regularise=False)
    with pytest.raises(ValueError, match="set PROMPT_DEPTH_TEXT 3 and N_CTX_TEXT 4"):
        load_published_teacher(shallow, path, trusted=True)


def test_unknown_keys_are_listed(trained_teacher, tmp_path):
    path = str(tmp_path / "t.pth.tar")
    published_teacher(trained_teacher, path)
    ckpt = torch.load(path, weights_only=False)
    ckpt["state_dict"]["prompt_learner.meta_net.linear1.weight"] = torch.zeros(2)
    torch.save(ckpt, path)
    with pytest.raises(CheckpointError, match="prompt_learner.meta_net.linear1.weight"):
        split_published_teacher(path, trusted=True)


def test_published_student_reproduces_logits(student_clip, tmp_path):
    trained = trained_student(student_clip)
    path = str(tmp_path / "model.pth.tar-20")
    published_student(trained, path)
    from promptkd.backbones import clip_from_state_dict
    fresh = PromptKDStudent(clip_from_state_dict(student_clip.state_dict()).visual, torch.tensor(1.0), 96, 4, 2).eval()
    vectors = F.normalize(torch.randn(5, 96), dim=-1)
    images = torch.randn(4, 3, 32, 32)
    load_published_student(fresh, path, trusted=True)
    with torch.no_grad():
        assert (fresh(images, vectors) - trained(images, vectors)).abs().max() <= 1e-5


def test_student_and_teacher_files_are_told_apart(student_clip, trained_teacher, tmp_path):
    s_path, t_path = str(tmp_path / "s.pth.tar"), str(tmp_path / "t.pth.tar")
    published_student(PromptKDStudent(student_clip.visual, student_clip.logit_scale, 96, 4, 2), s_path)
    published_teacher(trained_teacher, t_path)
    with pytest.raises(CheckpointError, match="looks like a PromptKD \\*student\\* checkpoint"):
        split_published_teacher(s_path, trusted=True)
    with pytest.raises(CheckpointError, match="looks like a teacher checkpoint"):
        split_published_student(t_path, trusted=True)
