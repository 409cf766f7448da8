"""A zero-shot teacher in one command (issue 38 item 3): TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES
and scripts/promptkd/zeroshot_teacher.sh.

The exported class vectors are checked against a hand computation on the tiny teacher CLIP:
each template's sentence encoded alone, normalised, averaged over the templates, normalised
again (CLIP's zero-shot ensemble). The export of a single template differs from the ensemble's,
so the comparison can fail. The script is run as a user runs it (bash, the backbone's own INPUT.*
read from it) and writes the same vectors to the documented folder.
"""
import os

import pytest
import torch
import torch.nn.functional as F

from promptkd.errors import ConfigError, MissingFileError
from promptkd.templates import IMAGENET_TEMPLATES, OPENAI7_TEMPLATES, TEMPLATE_SETS, template_set

THREE = ["a photo of a {}.", "a drawing of the {}.", "itap of my {}."]


def test_template_sets_by_name_and_from_a_file(tmp_path):
    assert template_set("imagenet80") == IMAGENET_TEMPLATES and template_set("openai7") == OPENAI7_TEMPLATES
    assert len(TEMPLATE_SETS["promptsrc60"]) == 60
    f = tmp_path / "mine.txt"
    f.write_text("# my templates\n" + "\n".join(THREE) + "\n\n")
    assert template_set(str(f)) == THREE


def test_bad_template_sets_are_refused_naming_key_and_value(tmp_path):
    with pytest.raises(ConfigError, match=r"ZERO_SHOT_TEMPLATES 'imagenet81' is neither a template set \(imagenet80"):
        template_set("imagenet81")
    with pytest.raises(MissingFileError, match="/no/such.txt"):
        template_set("/no/such.txt")
    bad = tmp_path / "bad.txt"
    bad.write_text("a photo of a {}.\na photo of {} and {}.\n")
    with pytest.raises(ConfigError, match=r"template 2 of .*bad.txt, 'a photo of \{\} and \{\}.', needs exactly one"):
        template_set(str(bad))
    empty = tmp_path / "empty.txt"
    empty.write_text("# nothing\n")
    with pytest.raises(ConfigError, match="holds no templates"):
        template_set(str(empty))


# --- through the trainer and the script (Dassl) -----------------------------------------------

dassl = pytest.importorskip("dassl", reason="Dassl not installed")

from promptkd.trainers import train  # noqa: E402,F401  (conftest.py registers the trainers and datasets)
from tests.trainer_kit import ROOT, TEACHER_CFG, make_trainer, teacher_args  # noqa: E402

ZS_CFG = os.path.join(ROOT, "configs/trainers/PromptKDTeacher/zeroshot_vit_l14.yaml")


def zero_shot_args(data_root, clip_files, out, *extra):
    args = teacher_args(data_root, clip_files, out, epochs=0)
    args[args.index(TEACHER_CFG)] = ZS_CFG
    return args[:args.index("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT")] + ["TRAINER.PROMPTSRC.PREC", "fp32", *extra]


@torch.no_grad()
def hand_ensemble(clip_model, classnames, templates):
    """Normalised mean over templates of the normalised text features, one sentence at a time."""
    from promptkd.backbones import tokenizer
    tokenize = tokenizer(clip_model)
    rows = []
    for name in classnames:
        feats = [F.normalize(clip_model.encode_text(tokenize([t.format(name.replace("_", " "))])).float(), dim=-1)[0]
                 for t in templates]
        rows.append(F.normalize(torch.stack(feats).mean(0), dim=0))
    return torch.stack(rows)


def export_of(out):
    from promptkd.class_vectors import ClassVectors, class_vectors_file
    return ClassVectors.load(class_vectors_file(os.path.join(out, "export"), "DescribableTextures"))


# fp32 on a CPU; the export encodes the sentences in batches of many, the hand computation one at a
# time, so the rows may differ by a few ulps of unit vectors (1e-7 each); 1e-5 is far below the
# distance to the single-template vectors (checked below to be > 1e-2).
TOL = 1e-5


def test_zero_shot_export_is_clips_template_ensemble(data_root, clip_files, tmp_path):
    from promptkd.backbones import load_clip
    f = tmp_path / "three.txt"
    f.write_text("\n".join(THREE) + "\n")
    trainer = make_trainer(zero_shot_args(data_root, clip_files, str(tmp_path / "ens"),
                                          "TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES", str(f)))
    trainer.train()
    vectors = export_of(str(tmp_path / "ens"))
    clip_model = load_clip(clip_files["teacher"]).float().eval()
    want = hand_ensemble(clip_model, vectors.classnames, THREE)
    assert (vectors.vectors - want).abs().max() <= TOL
    assert vectors.teacher["prompts"]["templates"] == str(f) and vectors.teacher["prompts"]["n_templates"] == 3

    single = make_trainer(zero_shot_args(data_root, clip_files, str(tmp_path / "one")))
    single.train()
    one = export_of(str(tmp_path / "one")).vectors
    assert (one - hand_ensemble(clip_model, vectors.classnames, THREE[:1])).abs().max() <= TOL
    assert (one - vectors.vectors).abs().max() > 1e-2  # the ensemble is not the CTX_INIT teacher

    from promptkd.class_vectors import ImageSide
    from promptkd.trainers.promptkd import PromptKD
    side = ImageSide.load(os.path.join(tmp_path / "ens", "export", "image_side.pt"))
    assert PromptKD.teacher_label(vectors, side) == "tiny-teacher.pt zero-shot (three.txt)"


def test_templates_on_a_trained_teacher_are_refused(data_root, clip_files, tmp_path):
    args = teacher_args(data_root, clip_files, str(tmp_path / "t"), "TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES",
                        "imagenet80")
    with pytest.raises(ConfigError, match="ZERO_SHOT_TEMPLATES 'imagenet80' sets the templates of a zero-shot"):
        make_trainer(args)


@pytest.mark.slow
def test_zeroshot_teacher_script_writes_the_documented_folder(data_root, clip_files, tmp_path):
    from tests.pyserver import python_server
    from tests.script_kit import run
    env = {**os.environ, "DATA": data_root, "OUTPUT": str(tmp_path / "output"),
           "PYTHON": python_server(str(tmp_path))}
    out = run("zeroshot_teacher.sh", "dtd", clip_files["teacher"], "openai7", "DATALOADER.NUM_WORKERS", "0",
              "TRAINER.PROMPTSRC.PREC", "fp32", "DATALOADER.TEST.BATCH_SIZE", "16", env=env)
    run_dir = tmp_path / "output" / "zeroshot" / "dtd" / "tiny-teacher" / "openai7"
    assert f"{run_dir}/export" in out
    vectors = export_of(str(run_dir))
    from promptkd.backbones import load_clip
    want = hand_ensemble(load_clip(clip_files["teacher"]).float().eval(), vectors.classnames, OPENAI7_TEMPLATES)
    assert (vectors.vectors - want).abs().max() <= TOL
    assert os.path.isfile(run_dir / "export" / "image_side.pt")
    # the config's INPUT.SIZE is 224: the run went through only with the tiny backbone's 32 px, read from it
