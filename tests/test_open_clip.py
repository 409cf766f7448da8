"""OpenCLIP backbones: tiny random open_clip models written offline and loaded through
`promptkd.backbones` (open_clip's own builders and checkpoint reader), nothing downloaded.

The tiny open_clip teacher has LayerScale, GELU, a 48 px input, mean / std 0.5 and bilinear
interpolation, so everything that differs from OpenAI's CLIP is exercised."""
import pytest
import torch
import torch.nn.functional as F

open_clip = pytest.importorskip("open_clip")

from promptkd.backbones import (Preprocess, backbone_reference, fingerprint, load_backbone,  # noqa: E402
                                load_image_tower, to_half)
from promptkd.encoders import PromptedImageEncoder, PromptedTextEncoder, freeze_clip  # noqa: E402
from promptkd.errors import ConfigError, MissingFileError  # noqa: E402
from promptkd.image_inputs import TowerInput  # noqa: E402
from promptkd.demo.tiny import TINY_OPEN_CLIP, write_tiny_open_clip  # noqa: E402

pytestmark = pytest.mark.exact

NAMES = ["a cat", "golden_retriever", "space shuttle"]
# An open_clip CLIP whose image tower is a timm trunk (EVA02, RoPE over the patch tokens).
TIMM_TOWER = {
    "embed_dim": 64,
    "vision_cfg": {"timm_model_name": "eva02_tiny_patch14_224", "timm_model_pretrained": False,
                   "timm_pool": "token", "timm_proj": "linear", "image_size": 224},
    "text_cfg": TINY_OPEN_CLIP["tiny-oc-student"]["text_cfg"],
}


@pytest.fixture(scope="module")
def oc_names(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("open_clip_weights"))
    return {"teacher": write_tiny_open_clip(folder, "tiny-oc-teacher", seed=3),
            "student": write_tiny_open_clip(folder, "tiny-oc-student", seed=4)}


@pytest.fixture
def oc_teacher(oc_names):
    return load_backbone(oc_names["teacher"])


def images(size, n=3, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("train_mode", [False, True])
def test_depth0_reproduces_open_clip_encoders(oc_teacher, train_mode):
    model, pp = oc_teacher
    assert pp == Preprocess((48, 48), (0.5,) * 3, (0.5,) * 3, "bilinear", "squash")
    model.train(train_mode)
    x = images(48)
    tokens = open_clip.get_tokenizer("ViT-B-32")([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    with torch.no_grad():
        assert torch.equal(PromptedImageEncoder(model, 4, 0)(x), model.encode_image(x))
        enc = PromptedTextEncoder(model, 4, 0, "a photo of a")
        assert torch.equal(enc.tokenize(NAMES), tokens)  # open_clip's own tokenizer, same ids
        assert torch.equal(enc.encode(NAMES), model.encode_text(tokens))


def test_deep_prompts_on_open_clip_blocks_get_gradients(oc_teacher):
    model, _ = oc_teacher
    freeze_clip(model)
    img, txt = PromptedImageEncoder(model, 2, 2), PromptedTextEncoder(model, 4, 3, "a photo of a")
    seen = []
    hook = model.visual.transformer.resblocks[1].register_forward_pre_hook(lambda m, a: seen.append(a[0].detach()))
    (img(images(48, n=2)).sum() + txt.encode(NAMES).sum()).backward()
    hook.remove()
    assert torch.equal(seen[0][:, -2:], img.prompts[1].expand(2, -1, -1))  # batch-first: last tokens of dim 1
    for p in list(img.prompts) + list(txt.prompts):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_image_tower_alone_builds_no_text_tower(oc_names, oc_teacher, monkeypatch):
    model, pp = oc_teacher
    for builder in ("_build_text_tower",):
        monkeypatch.setattr(open_clip.model, builder, lambda *a, **k: pytest.fail("built a text tower"))
    monkeypatch.setattr(open_clip.model.CLIP, "__init__", lambda *a, **k: pytest.fail("built a whole CLIP"))
    visual, scale, tower_pp = load_image_tower(oc_names["teacher"])
    x = images(48)
    with torch.no_grad():
        assert torch.equal(visual(x), model.encode_image(x))
    assert scale == model.logit_scale and tower_pp == pp
    assert fingerprint(visual) == fingerprint(model.visual)
    ref = backbone_reference(oc_names["teacher"])
    assert ref["kind"] == "open_clip" and ref["name"] == oc_names["teacher"]


def test_half_open_clip_backbone_runs_with_layer_scale(oc_teacher):
    model, _ = oc_teacher
    to_half(model)
    img, txt = PromptedImageEncoder(model, 4, 2), PromptedTextEncoder(model, 4, 2)
    assert img(images(48)).dtype == torch.float16 and txt.encode(NAMES).dtype == torch.float16


def test_timm_trunk_is_refused_for_deep_prompts_but_runs_zero_shot(tmp_path):
    name = write_tiny_open_clip(str(tmp_path), "tiny-eva02", config=TIMM_TOWER)
    model, pp = load_backbone(name)
    with pytest.raises(ConfigError, match=r"Deep visual prompts need a ViT backbone; this image tower "
                                          r"\(TimmModel \(Eva trunk\)\) .*PROMPT_DEPTH_VISION 0"):
        PromptedImageEncoder(model, 4, 2)
    x = images(224, n=1)
    enc = PromptedImageEncoder(model, 4, 0)
    assert enc.output_dim == 64
    with torch.no_grad():  # a zero-shot tower: image as the model computes it, text through our encoder
        assert torch.equal(enc(x), model.encode_image(x))
        text = PromptedTextEncoder(model, 4, 0)
        assert torch.equal(text.encode(NAMES[:1]), model.encode_text(text.tokenize(NAMES[:1])))


def test_missing_tag_weights_say_what_to_download(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingFileError, match=r"ViT-H-14-quickgelu/dfn5b are not on this machine.*never download.*"
                                               r"huggingface-cli download apple/DFN5B-CLIP-ViT-H-14 "):
        load_image_tower("open_clip:ViT-H-14-quickgelu/dfn5b", str(tmp_path))


@pytest.mark.parametrize("name, error, message", [
    ("open_clip:ViT-B-16/openai", ConfigError, "trained with QuickGELU.*use open_clip:ViT-B-16-quickgelu/openai"),
    ("open_clip:ViT-B-16-quickgelu/nosuchtag", ConfigError, "neither a pretrained tag.*Tags of ViT-B-16-quickgelu: .*openai"),
    ("open_clip:ViT-Q-99/x.pt", MissingFileError, "No weight file at x.pt"),
    ("open_clip:ViT-Q-99/laion", ConfigError, "does not know the architecture 'ViT-Q-99'"),
    ("open_clip:ViT-B-16", ConfigError, "not of the form open_clip:<architecture>/<pretrained tag or weight file>"),
])
def test_bad_open_clip_names(name, error, message):
    with pytest.raises(error, match=message):
        load_backbone(name)


def test_weights_of_another_architecture_are_named(oc_names, tmp_path):
    path = oc_names["student"].split("/", 1)[1]
    with pytest.raises(ConfigError, match=r"Could not load open_clip ViT-B-32-quickgelu weights from .*tiny-oc-student"):
        load_image_tower(f"open_clip:ViT-B-32-quickgelu/{path}")


def test_tower_input_refits_the_view_and_is_exact_when_towers_agree():
    raw = torch.rand(2, 3, 32, 32)
    student = Preprocess.of(32)  # OpenAI mean / std
    teacher = Preprocess.of(48, (0.5,) * 3, (0.5,) * 3, "bilinear")
    mean_s, std_s = (torch.tensor(v).view(1, 3, 1, 1) for v in (student.mean, student.std))
    fit = TowerInput(student, teacher)
    got = fit((raw - mean_s) / std_s)
    want = (F.interpolate(raw, size=(48, 48), mode="bilinear", antialias=True) - 0.5) / 0.5
    assert got.shape == (2, 3, 48, 48) and (got - want).abs().max() < 1e-5
    same = TowerInput(student, Preprocess.of(32))
    x = (raw - mean_s) / std_s
    assert same.identity and same(x) is x
