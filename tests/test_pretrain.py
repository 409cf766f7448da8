"""The demo's toy world and the contrastive pretraining of tiny CLIPs on it (core, no Dassl)."""
import dataclasses
import json
import os

import numpy as np
import pytest
import torch

from promptkd.demo import pretrain, toyworld
from promptkd.backbones import load_clip
from promptkd.demo.tiny import TinySpec

MICRO = pretrain.Model(TinySpec(embed_dim=16, vision_layers=1, vision_width=64, text_width=64, text_layers=1),
                       pretrain.Recipe(steps=6, batch_size=24, lr=1e-3, warmup_steps=2, seed=3, threads=1))


def test_world_classes_split_into_base_and_novel_combinations():
    assert toyworld.NUM_CLASSES == len(toyworld.COLOURS) * len(toyworld.SHAPES) == 36
    assert len(set(toyworld.CLASSES)) == 36
    base, novel = toyworld.CLASSES[:18], toyworld.CLASSES[18:]
    # every colour and every shape occurs in both halves, three times each: a novel class is
    # a new combination of attributes that base classes show
    for half in (base, novel):
        assert sorted({c for c, _ in half}) == sorted(toyworld.COLOURS)
        assert all(sum(c == colour for c, _ in half) == 3 for colour in toyworld.COLOURS)
        assert all(sum(s == shape for _, s in half) == 3 for shape in toyworld.SHAPES)
    assert toyworld.CAPTION_TEMPLATES[0].format(toyworld.CLASSNAMES[0]) == "a photo of a red circle."


def test_world_images_are_deterministic_and_show_the_object():
    one = toyworld.draw(np.random.default_rng(5), [0, 20, 35])
    two = toyworld.draw(np.random.default_rng(5), [0, 20, 35])
    assert one.dtype == np.uint8 and one.shape == (3, 32, 32, 3)
    assert np.array_equal(one, two)
    # a red object: some pixels are far redder than the grey background
    red = one[0].astype(int)
    assert ((red[..., 0] - red[..., 1]) > 80).sum() > 20


def test_text_prefix_encoding_equals_encode_text():
    model = pretrain.build_clip(MICRO.spec, seed=0).eval()
    tokens, _ = pretrain.caption_table()
    assert len(tokens) == 36 * len(toyworld.CAPTION_TEMPLATES)
    with torch.no_grad():
        full = model.encode_text(tokens[::7])
        prefix = pretrain.encode_text_prefix(model, tokens[::7])
    torch.testing.assert_close(prefix, full, rtol=1e-5, atol=1e-5)


def test_caption_table_uses_the_recipe_caption_forms():
    tokens, labels = pretrain.caption_table(("a {}.",))
    assert len(tokens) == 36 and labels.tolist() == list(range(36))
    assert torch.equal(tokens[0], pretrain.clip.tokenize(["a red circle."])[0])
    assert torch.equal(tokens[35], pretrain.clip.tokenize([f"a {toyworld.CLASSNAMES[35]}."])[0])
    tokens, labels = pretrain.caption_table(("a {}.", "a photo of a {}."))  # class-major
    assert labels[:4].tolist() == [0, 0, 1, 1]
    assert torch.equal(tokens[3], pretrain.clip.tokenize([f"a photo of a {toyworld.CLASSNAMES[1]}."])[0])


def test_demo_student_never_sees_the_zero_shot_prompt():
    # what the demo's table rests on (docs/demo.md, "What it runs"): the teacher is pretrained on the
    # zero-shot prompt's form among others, the student on another form only
    full = pretrain.PRESETS["full"]
    assert toyworld.CAPTION_TEMPLATES[0] == "a photo of a {}."
    assert toyworld.CAPTION_TEMPLATES[0] in full["teacher"].recipe.captions
    assert toyworld.CAPTION_TEMPLATES[0] not in full["student"].recipe.captions
    assert full["student"].spec.vision_layers < full["teacher"].spec.vision_layers
    assert full["student"].spec.embed_dim < full["teacher"].spec.embed_dim


def test_contrastive_loss_prefers_matching_pairs():
    feats = torch.eye(4)
    positive = torch.eye(4, dtype=torch.bool)
    scale = torch.tensor(np.log(10.0))
    good = pretrain.contrastive_loss(feats, feats, positive, scale)
    bad = pretrain.contrastive_loss(feats, feats.roll(1, 0), positive, scale)
    assert good < bad


def test_pretraining_is_deterministic_and_learns():
    state_a, stats_a = pretrain.pretrain(MICRO.spec, MICRO.recipe, log_every=0)
    state_b, _ = pretrain.pretrain(MICRO.spec, MICRO.recipe, log_every=0)
    assert state_a.keys() == state_b.keys()
    assert all(torch.equal(state_a[k], state_b[k]) for k in state_a)
    assert state_a["visual.conv1.weight"].dtype == torch.float16  # as OpenAI's files
    fresh = pretrain.build_clip(MICRO.spec, MICRO.recipe.seed).state_dict()
    assert not torch.equal(fresh["visual.proj"].half(), state_a["visual.proj"])
    assert np.isfinite(stats_a["final_loss"])


def test_bad_recipe_is_a_config_error():
    from promptkd.errors import ConfigError

    with pytest.raises(ConfigError, match="steps"):
        pretrain.pretrain(MICRO.spec, dataclasses.replace(MICRO.recipe, steps=0))
    for captions in ((), ("a photo of a red circle.",), ("a {} and a {}.",)):
        with pytest.raises(ConfigError, match="Recipe.captions"):
            pretrain.pretrain(MICRO.spec, dataclasses.replace(MICRO.recipe, captions=captions))
    with pytest.raises(ConfigError, match="preset"):
        pretrain.ensure_pretrained("/nonexistent", "teacher", preset="huge")


def test_probe_table_needs_the_pretrained_sidecars(tmp_path):
    from promptkd.demo import weights as demo
    from promptkd.errors import MissingFileError

    with pytest.raises(MissingFileError, match="teacher.json: pretrain first"):
        demo.probe_table(str(tmp_path))


def test_ensure_pretrained_caches_on_the_recipe_and_loads_like_clip(tmp_path, monkeypatch):
    monkeypatch.setitem(pretrain.PRESETS, "micro", {"teacher": MICRO})
    path, info = pretrain.ensure_pretrained(str(tmp_path), "teacher", "micro")
    assert path == str(tmp_path / "teacher.pt")
    assert sorted(os.listdir(tmp_path)) == ["teacher.json", "teacher.pt"]  # no temp files
    assert info["key"] == pretrain.cache_key(MICRO) and info["recipe"]["steps"] == 6
    assert {"base", "novel", "hm"} <= set(info["zero_shot_probe"])
    # a zero-shot probe with the standard prompt and with every caption form it was trained on
    assert list(info["zero_shot_probe_by_prompt"]) == list(toyworld.CAPTION_TEMPLATES)
    assert info["zero_shot_probe_by_prompt"]["a photo of a {}."] == info["zero_shot_probe"]
    model = load_clip(path)  # the loading path of real CLIP weights
    assert model.visual.input_resolution == 32 and model.text_projection.shape == (64, 16)

    mtime = os.stat(path).st_mtime_ns
    assert pretrain.ensure_pretrained(str(tmp_path), "teacher", "micro")[1] == info  # reused
    assert os.stat(path).st_mtime_ns == mtime

    changed = dataclasses.replace(MICRO, recipe=dataclasses.replace(MICRO.recipe, steps=4))
    monkeypatch.setitem(pretrain.PRESETS, "micro", {"teacher": changed})
    _, info2 = pretrain.ensure_pretrained(str(tmp_path), "teacher", "micro")
    assert info2["key"] != info["key"] and info2["recipe"]["steps"] == 4
    assert json.loads((tmp_path / "teacher.json").read_text())["key"] == info2["key"]

    # other caption forms are another recipe: trained again
    one_form = dataclasses.replace(changed, recipe=dataclasses.replace(changed.recipe, captions=("a {}.",)))
    monkeypatch.setitem(pretrain.PRESETS, "micro", {"teacher": one_form})
    _, info3 = pretrain.ensure_pretrained(str(tmp_path), "teacher", "micro")
    assert info3["key"] != info2["key"] and info3["recipe"]["captions"] == ["a {}."]
    assert list(info3["zero_shot_probe_by_prompt"]) == ["a photo of a {}.", "a {}."]


def test_pretraining_moves_only_the_token_rows_the_captions_use():
    # pretraining trains a gather of the used rows of the token embedding; the other rows
    # have an all-zero gradient, which AdamW without weight decay never moves, so they must
    # stay exactly at their initial values, and the state dict keeps the full table
    state, _ = pretrain.pretrain(MICRO.spec, MICRO.recipe, log_every=0)
    fresh = pretrain.build_clip(MICRO.spec, MICRO.recipe.seed).state_dict()["token_embedding.weight"]
    table = state["token_embedding.weight"]
    assert table.shape == (49408, MICRO.spec.text_width)
    tokens, _ = pretrain.caption_table(MICRO.recipe.captions)
    vocabulary, local = pretrain.restricted_vocabulary(tokens)
    assert torch.equal(vocabulary[local], tokens) and torch.equal(local.argmax(-1), tokens.argmax(-1))
    unused = torch.ones(len(table), dtype=torch.bool)
    unused[vocabulary] = False
    assert torch.equal(table[unused], fresh[unused])
    used_with_gradient = vocabulary[vocabulary != 0]  # 0 pads the captions, after the end token
    assert (table[used_with_gradient] != fresh[used_with_gradient]).any(dim=1).all()


# ----------------------------------------------------------------------------------------
# shipped weights (the full preset's, in a small form)
# ----------------------------------------------------------------------------------------
def test_small_form_rebuilds_the_state_dict_exactly(tmp_path, monkeypatch):
    # pack keeps every tensor but the unused token rows, which pretraining never moves (test
    # above); unpack takes them from the seeded initialisation: the same state dict, in order
    state, _ = pretrain.pretrain(MICRO.spec, MICRO.recipe, log_every=0)
    packed = pretrain.pack(state, MICRO)
    assert len(packed["vocabulary"]) < 100 and "token_embedding.weight" not in packed["state"]
    again = pretrain.unpack(packed, MICRO)
    assert list(again) == list(state)
    assert all(again[k].dtype == state[k].dtype and torch.equal(again[k], state[k]) for k in state)
    assert pretrain.state_digest(again) == pretrain.state_digest(state)
    other = dataclasses.replace(MICRO, recipe=dataclasses.replace(MICRO.recipe, steps=5))
    from promptkd.errors import ConfigError
    with pytest.raises(ConfigError, match="not of this model and recipe"):
        pretrain.unpack(packed, other)

    # ensure_pretrained unpacks shipped weights of its recipe (a file that loads like CLIP's),
    # and pretrains instead with from_scratch; `ship` writes what it unpacks
    monkeypatch.setitem(pretrain.PRESETS, "micro", {"teacher": MICRO})
    trained, info = pretrain.ensure_pretrained(str(tmp_path / "trained"), "teacher", "micro")
    shipped_dir = tmp_path / "shipped"
    written = pretrain.ship(str(tmp_path / "trained"), "micro", out_dir=str(shipped_dir))
    assert sorted(os.path.basename(p) for p in written) == ["teacher.json", "teacher.pt"]
    monkeypatch.setattr(pretrain, "SHIPPED_DIR", str(shipped_dir))
    path, info2 = pretrain.ensure_pretrained(str(tmp_path / "user"), "teacher", "micro")
    assert info2["shipped"] and info2["key"] == info["key"]
    assert info2["zero_shot_probe_by_prompt"] == info["zero_shot_probe_by_prompt"]
    assert torch.load(path).keys() == torch.load(trained).keys()
    assert pretrain.state_digest(torch.load(path)) == pretrain.state_digest(torch.load(trained))
    load_clip(path)
    with pytest.raises(ConfigError, match="from-scratch"):  # shipped files are not re-shipped
        pretrain.ship(str(tmp_path / "user"), "micro", out_dir=str(tmp_path / "again"))
    _, info3 = pretrain.ensure_pretrained(str(tmp_path / "user"), "teacher", "micro", from_scratch=True)
    assert not info3.get("shipped") and info3["made_on"]["torch"] == torch.__version__


@pytest.mark.parametrize("role", ["teacher", "student"])
def test_shipped_demo_weights_are_what_their_sidecars_say(role):
    model = pretrain.PRESETS["full"][role]
    path, sidecar = pretrain.shipped_paths(role)
    info = json.loads(open(sidecar, encoding="utf-8").read())
    assert info["key"] == pretrain.shipped_key(model), "recipe changed: regenerate (docs/demo.md, 'What it runs')"
    assert os.path.getsize(path) < 1_000_000  # the small form (the full file is ~13 MB)
    state = pretrain.unpack(torch.load(path, weights_only=True), model)
    # the unused token rows are the seeded initialisation, drawn by torch's CPU normal_ kernel:
    # the vectorised one (AVX2 and AVX-512 give the same numbers) on the CPUs the file was made
    # on; the scalar one (no AVX2) draws them differently. No demo prompt reads those rows.
    if torch.backends.cpu.get_cpu_capability() in ("AVX2", "AVX512"):
        assert pretrain.state_digest(state) == info["digest"]
    built = pretrain.clip.model.build_model(state)
    # the zero-shot probe of the sidecar, within one image per half (0.28 points of 360): a
    # CPU whose kernels round differently may flip a near tie
    base, novel, _ = pretrain.zero_shot_accuracy(built)
    assert abs(base - info["zero_shot_probe"]["base"]) <= 0.3 and abs(novel - info["zero_shot_probe"]["novel"]) <= 0.3
