"""Activation checkpointing changes memory, not results; many-prompt encodings run in chunks.

With checkpointing on, the loss and the gradient of every learnable parameter equal those with
it off (fp32, tiny CLIPs) for every trainable method (PromptSRC teacher with deep prompts in
both towers and its regularisers, IVLP, MaPLe's coupled prompts, CoOp / CoCoOp through
`encode_embeddings`) and for the PromptKD student; and the tensors autograd keeps for backward
really shrink. The template ensemble is encoded in bounded chunks across classes.
"""
import pytest
import torch
import torch.nn.functional as F

from promptkd.backbones import clip
from promptkd.baselines import METHODS
from promptkd.encoders import PromptedImageEncoder, PromptedTextEncoder, run_block
from promptkd.losses import kd_loss
from promptkd.student import PromptKDStudent
from promptkd.teacher import ensemble_text_features
from tests.method_kit import BASE, build, images

pytestmark = pytest.mark.exact

TOL = 1e-6
TRAINABLE = sorted(n for n in METHODS if n != "ZeroshotCLIP")


class SavedBytes:
    """Bytes of the tensors autograd saves for backward outside checkpointed regions."""

    def __enter__(self):
        self.total = 0

        def pack(t):
            self.total += t.numel() * t.element_size()
            return t
        self.hooks = torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)
        self.hooks.__enter__()
        return self

    def __exit__(self, *exc):
        self.hooks.__exit__(*exc)


def loss_and_grads(model, step):
    for p in model.parameters():
        p.grad = None
    with SavedBytes() as saved:
        loss = step()
    loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return loss.detach(), grads, saved.total


def assert_same(off, on):
    (loss_off, grads_off, _), (loss_on, grads_on, _) = off, on
    assert (loss_off - loss_on).abs().item() <= TOL
    assert grads_off.keys() == grads_on.keys() and grads_off
    for name in grads_off:
        assert grads_off[name].abs().sum() > 0, name  # every learnable prompt gets a gradient
        assert (grads_off[name] - grads_on[name]).abs().max().item() <= TOL, name


@pytest.mark.parametrize("name", TRAINABLE)
def test_checkpointing_keeps_loss_and_prompt_gradients(name, teacher_clip):
    torch.manual_seed(0)
    method = build(name, teacher_clip).train()
    x, y = images(teacher_clip, n=4), torch.tensor([0, 1, 2, 0])

    def step():
        out = method(x)
        return F.cross_entropy(out["logits"], y) + sum(method.extra_losses(out, y).values())

    off = loss_and_grads(method, step)
    on_towers = method.set_grad_checkpoint(text=True, image=True)
    on = loss_and_grads(method, step)
    assert_same(off, on)
    prompted_image = name in ("IVLP", "PromptSRC", "MaPLe")  # CoOp / CoCoOp use stock encode_image
    assert on_towers == {"text": True, "image": prompted_image}
    assert on[2] < off[2] / 2, (on[2], off[2])  # autograd keeps far less for backward
    assert method.set_grad_checkpoint(False, False) == {"text": False, "image": False}
    assert_same(off, loss_and_grads(method, step))


def test_student_checkpointing_keeps_loss_and_gradients(student_clip):
    torch.manual_seed(0)
    student = PromptKDStudent(student_clip.visual, student_clip.logit_scale, class_dim=96, n_ctx=2, depth=2).train()
    x = images(student_clip, n=4)
    vectors = F.normalize(torch.randn(5, 96), dim=-1)
    teacher_logits = 10 * torch.randn(4, 5)

    def step():
        return kd_loss(student(x, vectors), teacher_logits, 1.0, 10.0)

    off = loss_and_grads(student, step)
    student.image_encoder.grad_checkpoint = True
    on = loss_and_grads(student, step)
    assert_same(off, on)
    assert {n for n in on[1] if n.startswith("image_encoder.prompts")} == {"image_encoder.prompts.0",
                                                                           "image_encoder.prompts.1"}
    assert on[2] < off[2] / 2, (on[2], off[2])


def test_run_block_checkpoints_only_while_autograd_records(monkeypatch):
    import promptkd.encoders as encoders
    calls = []
    real = encoders._checkpoint
    monkeypatch.setattr(encoders, "_checkpoint", lambda *a, **k: calls.append(k) or real(*a, **k))
    block, x = torch.nn.Linear(3, 3), torch.randn(2, 3, requires_grad=True)
    assert torch.equal(run_block(block, x, checkpoint=True), block(x))
    with torch.no_grad():
        run_block(block, x, checkpoint=True)
    run_block(block, x, checkpoint=False)
    assert calls == [{"use_reentrant": False}]


def test_encoders_default_to_no_checkpointing(teacher_clip):
    assert not PromptedImageEncoder(teacher_clip, 2, 2).grad_checkpoint
    assert not PromptedTextEncoder(teacher_clip, 2, 2, "a photo").grad_checkpoint


@pytest.mark.parametrize("normalise_each", [False, True])
def test_template_ensemble_runs_in_bounded_chunks(teacher_clip, normalise_each, monkeypatch):
    templates = ["a photo of a {}.", "a {} drawing.", "art of the {}.", "a big {}.", "the {} itself."]
    names = BASE + ["yellow_star"]
    with torch.no_grad():  # reference: one batch per class, as CLIP's zero-shot notebook does
        ref = []
        for c in names:
            f = teacher_clip.encode_text(clip.tokenize([t.format(c.replace("_", " ")) for t in templates])).float()
            ref.append((F.normalize(f, dim=-1) if normalise_each else f).mean(0))
        ref = F.normalize(torch.stack(ref), dim=-1)
    sizes, encode = [], teacher_clip.encode_text

    def spy(tokens):
        sizes.append(len(tokens))
        assert not torch.is_grad_enabled()
        return encode(tokens)
    monkeypatch.setattr(teacher_clip, "encode_text", spy)
    got = ensemble_text_features(teacher_clip, names, templates, chunk=7, normalise_each=normalise_each)
    assert sizes == [7, 7, 6]  # 4 classes x 5 templates = 20 sentences, chunks cross class borders
    assert (got - ref).abs().max().item() <= TOL
