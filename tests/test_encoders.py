"""Prompted encoders on stock CLIP: depth 0 is stock CLIP, prompts are appended and replaced at the configured depths."""
import pytest
import torch

from promptkd.backbones import clip, fingerprint, load_clip, read_clip_state, visual_from_state_dict
from promptkd.encoders import PromptedImageEncoder, PromptedTextEncoder, freeze_clip


NAMES = ["a cat", "golden_retriever", "space shuttle"]


def images(model, n=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    r = model.visual.input_resolution
    return torch.randn(n, 3, r, r, generator=g)


@pytest.mark.exact
@pytest.mark.parametrize("which", ["teacher", "student"])
def test_depth0_reproduces_stock_clip(clip_files, which):
    model = load_clip(clip_files[which])
    x = images(model)
    with torch.no_grad():
        assert (PromptedImageEncoder(model, 4, 0)(x) - model.encode_image(x)).abs().max() <= 1e-6
        enc = PromptedTextEncoder(model, 4, 0, "a photo of a")
        stock = model.encode_text(clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]))
        assert (enc.encode(NAMES) - stock).abs().max() <= 1e-6


@pytest.mark.exact
def test_text_context_initialised_from_phrase_equals_stock_at_input_depth(teacher_clip):
    # Depth 1 replaces only the input embeddings, by the phrase's own embeddings: same output.
    enc = PromptedTextEncoder(teacher_clip, 4, 1, "a photo of a")
    with torch.no_grad():
        stock = teacher_clip.encode_text(clip.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES]))
        assert (enc.encode(NAMES) - stock).abs().max() <= 1e-5


def test_deep_prompts_change_output_and_get_gradients(teacher_clip):
    freeze_clip(teacher_clip)
    img = PromptedImageEncoder(teacher_clip, 4, 3)
    txt = PromptedTextEncoder(teacher_clip, 4, 3, "a photo of a")
    x = images(teacher_clip)
    loss = img(x).sum() + txt.encode(NAMES).sum()
    loss.backward()
    for p in list(img.prompts) + list(txt.prompts):
        assert p.grad is not None and p.grad.abs().sum() > 0
    assert all(p.grad is None for p in teacher_clip.parameters())


@pytest.mark.exact
def test_visual_prompts_are_appended_and_replaced(teacher_clip):
    """Block i (1..depth-1) sees prompts[i] as its last n_ctx tokens, block 0 sees prompts[0]."""
    enc = PromptedImageEncoder(teacher_clip, 2, 2)
    seen = []
    hooks = [b.register_forward_pre_hook(lambda m, a: seen.append(a[0].detach().clone()))
             for b in teacher_clip.visual.transformer.resblocks]
    with torch.no_grad():
        enc(images(teacher_clip, n=2))
    for h in hooks:
        h.remove()
    n_patches = teacher_clip.visual.positional_embedding.shape[0]
    assert seen[0].shape[0] == n_patches + 2
    assert torch.equal(seen[1][-2:], enc.prompts[1].unsqueeze(1).expand(-1, 2, -1))
    assert not torch.equal(seen[2][-2:], enc.prompts[1].unsqueeze(1).expand(-1, 2, -1))  # depth 2: block 2 keeps its input


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_ctx=4, depth=99), "larger than the encoder"),
    (dict(n_ctx=0, depth=2), "N_CTX_VISION must be >= 1"),
    (dict(n_ctx=4, depth=-1), ">= 0"),
])
def test_bad_image_prompt_settings(teacher_clip, kwargs, message):
    with pytest.raises(ValueError, match=message):
        PromptedImageEncoder(teacher_clip, **kwargs)


def test_context_phrase_longer_than_n_ctx(teacher_clip):
    with pytest.raises(ValueError, match="CTX_INIT 'a photo of a' is 4 tokens long but N_CTX_TEXT is 2"):
        PromptedTextEncoder(teacher_clip, 2, 2, "a photo of a")


def test_resnet_backbone_with_deep_prompts_is_refused(teacher_clip):
    class FakeResNet(torch.nn.Module):
        output_dim = 8
    with pytest.raises(ValueError, match="need a ViT backbone"):
        PromptedImageEncoder(FakeResNet(), 4, 2)


@pytest.mark.exact
def test_visual_only_tower_matches_full_clip(clip_files, teacher_clip):
    visual, scale = visual_from_state_dict(read_clip_state(clip_files["teacher"]))
    x = images(teacher_clip)
    with torch.no_grad():
        assert torch.equal(visual(x), teacher_clip.encode_image(x))
    assert scale == teacher_clip.logit_scale
    assert fingerprint(visual) == fingerprint(teacher_clip.visual)


def test_missing_named_weights_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"ViT-B-16\.pt"):
        load_clip("ViT-B/16", str(tmp_path), allow_download=False)


def test_failed_download_is_a_clear_error(tmp_path, monkeypatch):
    import urllib.error
    import urllib.request

    def offline(*a, **k):
        raise urllib.error.URLError("no network")
    monkeypatch.setattr(urllib.request, "urlopen", offline)
    with pytest.raises(FileNotFoundError, match=r"not found at .*ViT-B-16\.pt.*download failed"):
        load_clip("ViT-B/16", str(tmp_path))


def test_unknown_backbone_name():
    with pytest.raises(ValueError, match="Unknown CLIP backbone 'ViT-Q/99'"):
        load_clip("ViT-Q/99")


def test_half_weights_as_published_fp16_run(teacher_clip):
    clip.model.convert_weights(teacher_clip)  # PREC fp16: the published pure-half backbone
    enc = PromptedImageEncoder(teacher_clip, 4, 2)
    txt = PromptedTextEncoder(teacher_clip, 4, 2)
    assert enc(images(teacher_clip)).dtype == torch.float16
    assert txt.encode(NAMES).dtype == torch.float16
    assert enc.prompts[0].dtype == torch.float32  # learnable prompts stay fp32 master weights


def test_bf16_autocast_runs_on_cpu(teacher_clip):
    enc = PromptedImageEncoder(teacher_clip, 4, 2)
    txt = PromptedTextEncoder(teacher_clip, 4, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        f = enc(images(teacher_clip))
        t = txt.encode(NAMES)
    assert f.dtype == torch.bfloat16 and t.dtype == torch.bfloat16
    (f.float().sum() + t.float().sum()).backward()
    assert enc.prompts[1].grad is not None and txt.prompts[1].grad is not None
