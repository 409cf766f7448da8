"""Every registered prompt-learning method (timm-style: the same checks over all of them),
then the behaviour that makes each method what it is."""
import pytest
import torch
import torch.nn.functional as F

from promptkd.backbones import clip
from promptkd.baselines import METHODS, CoCoOp, CoOp, MaPLe, ZeroshotCLIP
from promptkd.checkpoints import learnable_state_dict, load_learnable_state_dict
from promptkd.errors import ConfigError
from promptkd.teacher import IVLPTeacher
from tests.method_kit import BASE, build, images

ALL = BASE + ["yellow star", "black stripes"]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_trains_only_its_prompts_and_round_trips(name, teacher_clip):
    torch.manual_seed(0)
    method = build(name, teacher_clip)
    frozen = {k: v.clone() for k, v in teacher_clip.state_dict().items()}
    params = [p for p in method.parameters() if p.requires_grad]
    x, y = images(teacher_clip), torch.tensor([0, 1, 2, 0, 1, 2])
    method.train()
    out = method(x)
    assert out["logits"].shape == (6, 3)
    if not params:  # zero-shot: nothing to learn
        assert name == "ZeroshotCLIP"
        return
    opt = torch.optim.SGD(params, lr=0.05 if name != "CoCoOp" else 0.01, momentum=0.9)
    losses = []
    for _ in range(12):
        out = method(x)
        terms = {"ce": F.cross_entropy(out["logits"], y), **method.extra_losses(out, y)}
        loss = sum(terms.values())
        opt.zero_grad()
        loss.backward()
        assert all(p.grad is None for p in teacher_clip.parameters())
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(torch.equal(frozen[k], v) for k, v in teacher_clip.state_dict().items())
    state = learnable_state_dict(method)
    assert state and not any(k.startswith("clip.") for k in state)
    torch.manual_seed(123)
    other = build(name, teacher_clip)
    load_learnable_state_dict(other, state)
    method.eval()
    other.eval()
    with torch.no_grad():
        assert torch.equal(method(x)["logits"], other(x)["logits"])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_method_evaluates_novel_classes_and_exports(name, teacher_clip):
    method = build(name, teacher_clip).eval()
    method.prepare_eval(ALL)
    with torch.no_grad():
        logits = method.eval_logits(images(teacher_clip))
    assert logits.shape == (6, 5)
    if method.image_conditioned:
        with pytest.raises(ConfigError, match="depend on the image"):
            method.export(ALL, "Toy", {"kind": "clip", "name": "tiny"})
        return
    vectors, side = method.export(ALL, "Toy", {"kind": "clip", "name": "tiny"})
    assert vectors.vectors.shape == (5, 96) and vectors.classnames == ALL
    assert torch.allclose(vectors.vectors.norm(dim=-1), torch.ones(5), atol=1e-5)
    assert vectors.teacher["method"] == type(method).__name__
    # The exported image side reproduces the method's own image features.
    from promptkd.student import TeacherImageScorer
    scorer = TeacherImageScorer(teacher_clip.visual, teacher_clip.logit_scale, side.prompts)
    with torch.no_grad():
        assert (scorer(images(teacher_clip), vectors.vectors) - logits).abs().max() <= 1e-4


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_coop_class_token_positions(teacher_clip, position):
    coop = CoOp(teacher_clip, BASE, n_ctx=4, ctx_init="", position=position)
    with torch.no_grad():
        coop.ctx.copy_(torch.arange(4).float()[:, None].expand(4, coop.ctx.shape[1]) + 100)
    emb, tokens = coop.prompt_embeddings(["blue square"], coop.ctx)
    name = clip.clip._tokenizer.encode("blue square")  # 2 tokens
    name_emb = teacher_clip.token_embedding(torch.tensor(name))
    is_ctx = (emb[0, :, 0] >= 100).tolist()
    expected = {"end": [1, 2, 3, 4], "middle": [1, 2, 5, 6], "front": [3, 4, 5, 6]}[position]
    assert [i for i, c in enumerate(is_ctx) if c] == expected
    start = {"end": 5, "middle": 3, "front": 1}[position]
    assert torch.equal(emb[0, start:start + 2], name_emb)
    assert emb.shape[1] == 77 and int(tokens[0].argmax()) == 1 + 4 + 2 + 1  # EOT after "."


def test_coop_class_specific_context_refuses_novel_classes(teacher_clip):
    coop = CoOp(teacher_clip, BASE, n_ctx=2, ctx_init="", class_specific=True)
    assert coop.ctx.shape[:2] == (3, 2)
    assert coop.text_features(BASE[::-1]).shape == (3, 96)
    with pytest.raises(ValueError, match="only for the training classes"):
        coop.text_features(ALL)


def test_cocoop_context_depends_on_the_image(teacher_clip):
    torch.manual_seed(0)
    cocoop = CoCoOp(teacher_clip, BASE, n_ctx=2, ctx_init="a photo")
    feats = F.normalize(teacher_clip.encode_image(images(teacher_clip, n=2)).float(), dim=-1)
    ctx = cocoop.context(feats)
    assert ctx.shape == (2, 2, cocoop.ctx.shape[-1]) and not torch.allclose(ctx[0], ctx[1])
    assert torch.allclose(ctx[0] - cocoop.meta_net(feats[:1]).squeeze(0), cocoop.ctx, atol=1e-6)


def test_maple_vision_prompts_are_projections_of_text_prompts(teacher_clip):
    maple = MaPLe(teacher_clip, BASE, n_ctx=2, depth=3)
    prompts = maple.image_prompts()
    for proj, text, vision in zip(maple.projections, maple.text_encoder.prompts, prompts):
        assert torch.allclose(vision, text @ proj.weight.t() + proj.bias)
        assert vision.shape == (2, teacher_clip.visual.class_embedding.shape[0])
    assert not any(True for _ in maple.image_encoder.parameters() if _.requires_grad)
    # "a photo of a" with 2 learnable tokens: the first two are learnt, "of a" stays text.
    tok = maple.text_encoder.tokenize(["dog"])[0]
    assert int(tok.argmax()) == 1 + 4 + 1 + 1


@pytest.mark.parametrize("ensemble", [False, True])
def test_zero_shot_equals_stock_classifier(teacher_clip, ensemble):
    zs = ZeroshotCLIP(teacher_clip, ALL, ensemble=ensemble)
    x = images(teacher_clip)
    with torch.no_grad():
        if ensemble:
            from promptkd.templates import IMAGENET_TEMPLATES
            text = torch.stack([F.normalize(teacher_clip.encode_text(clip.tokenize(
                [t.format(c.replace("_", " ")) for t in IMAGENET_TEMPLATES])), dim=-1).mean(0) for c in ALL])
        else:
            text = teacher_clip.encode_text(clip.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in ALL]))
        text = F.normalize(text, dim=-1)
        stock = teacher_clip.logit_scale.exp() * F.normalize(teacher_clip.encode_image(x), dim=-1) @ text.t()
        zs.prepare_eval(ALL)
        assert (zs.eval_logits(x) - stock).abs().max() <= 1e-4


def test_ivlp_is_promptsrc_without_regularisers(teacher_clip):
    assert METHODS["IVLP"] is IVLPTeacher and METHODS["PromptSRC"] is IVLPTeacher
    ivlp = build("IVLP", teacher_clip).train()
    assert ivlp.extra_losses(ivlp(images(teacher_clip)), torch.zeros(6, dtype=torch.long)) == {}
    src = build("PromptSRC", teacher_clip).train()
    assert set(src.extra_losses(src(images(teacher_clip)), torch.zeros(6, dtype=torch.long))) == {"l1_text", "l1_image", "kl"}
