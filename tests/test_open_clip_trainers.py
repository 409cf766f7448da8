"""OpenCLIP backbones through the user-facing scripts and trainers, on a fake DTD: an open_clip
teacher (48 px, mean / std 0.5, bilinear) distilled into an OpenAI student (32 px) in one run,
and an OpenAI teacher distilled into an open_clip student; INPUT.* checked against the model."""
import os
import sys

import pytest

pytest.importorskip("open_clip")
pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the script tests)")

from promptkd.deploy import export_model  # noqa: E402
from promptkd import cli  # noqa: E402
from promptkd.checkpoints import load_file  # noqa: E402
from promptkd.errors import ConfigError  # noqa: E402
from promptkd.extras import torch_at_least  # noqa: E402
from promptkd.demo.tiny import write_tiny_open_clip  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.pyserver import python_server  # noqa: E402
from tests.script_kit import results, run  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.exact]

TINY = ["DATALOADER.NUM_WORKERS", "0", "DATALOADER.TRAIN_X.BATCH_SIZE", "4", "DATALOADER.TEST.BATCH_SIZE", "16",
        "OPTIM.MAX_EPOCH", "1"]
OC_TEACHER_INPUT = ["INPUT.SIZE", "(48, 48)", "INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]", "INPUT.PIXEL_STD",
                    "[0.5, 0.5, 0.5]", "INPUT.INTERPOLATION", "bilinear", "INPUT.RESIZE_MODE", "squash"]
TEACHER_CONFIG = "openclip_vit_h14_dfn5b_c2_ep20_batch8_4+4ctx"


@pytest.fixture(scope="module")
def oc_env(tmp_path_factory):
    root = tmp_path_factory.mktemp("open_clip_scripts")
    make_dtd(str(root / "data"), n_classes=4, per_class=6)
    names = {"teacher": write_tiny_open_clip(str(root / "weights"), "tiny-oc-teacher", seed=5),
             "student": write_tiny_open_clip(str(root / "weights"), "tiny-oc-student", seed=6)}
    env = {**os.environ, "DATA": str(root / "data"), "PYTHON": python_server(str(root)),  # forks this process
           "TEACHER_CONFIG": TEACHER_CONFIG}
    return root, env, names


def teacher_opts(backbone, *extra):
    return [*TINY, "MODEL.BACKBONE.NAME", backbone, "DATASET.NUM_SHOTS", "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT",
            "2", "TRAINER.PROMPTSRC.PROMPT_DEPTH_VISION", "2", "TRAINER.PROMPTSRC.PREC", "fp32", *extra]


def student_opts(backbone, prec, *extra):
    return [*TINY, "INPUT.SIZE", "(32, 32)", "MODEL.BACKBONE.NAME", backbone, "TRAINER.PROMPTKD.PROMPT_DEPTH_VISION",
            "2", "TRAINER.PROMPTKD.PREC", prec, "TRAINER.PROMPTKD.TEACHER_NAME", "", *extra]


def exports(run_dir, tmp_path):
    """The run's classifier exported in both formats; `export_model` itself refuses a file whose
    logits differ from the eager predictor's (two batch sizes, 1e-5)."""
    onnx = torch_at_least(export_model.ONNX_MIN_TORCH)  # an older torch refuses it (tests/test_install_extras.py)
    for fmt, name in (("onnx", "model.onnx"),) * onnx + (("torchscript", "model.pt"),):
        assert cli.main(["export", str(run_dir), str(tmp_path / name), "--format", fmt]) == 0
        assert export_model.read_metadata(str(tmp_path / name))["classnames"]


def test_open_clip_teacher_into_openai_student_with_other_input_size(oc_env, clip_files, tmp_path):
    root, env, names = oc_env
    env = {**env, "OUTPUT": str(root / "oc_to_openai")}
    out = run("teacher_train.sh", "dtd", "1", *teacher_opts(names["teacher"], *OC_TEACHER_INPUT), env=env)
    assert results(out)[-1]["backbone"] == names["teacher"]
    export = root / "oc_to_openai/base2new/promptkd_teacher/dtd/seed1/export"
    side = load_file(str(export / "image_side.pt"))
    assert side["backbone"] == {"kind": "open_clip", "name": names["teacher"]}  # stage 2 rebuilds this tower
    assert load_file(str(export / "class_vectors_DescribableTextures.pt"))["vectors"].shape == (4, 96)
    exports(export.parent, tmp_path)  # an open_clip teacher with LayerScale, 48 px
    # its test images are squashed to 48x48, in evaluation and in the exported file's preprocessing
    log = open(export.parent / "log.txt").read()
    assert "RESIZE_MODE: squash" in log
    pre = export_model.read_metadata(str(tmp_path / "model.pt"))["preprocess"]  # the same in both formats
    assert pre["resize_mode"] == "squash" and pre["resize"] == [48, 48] and pre["crop"] == [48, 48]
    out = run("base2new_train.sh", "dtd", "1", *student_opts(clip_files["student"], "fp32"), env=env)
    r = results(out)[-1]
    assert r["trainer"] == "PromptKD" and {"base", "novel", "hm"} <= set(r)
    log = open(root / "oc_to_openai/base2new/promptkd/dtd/seed1/log.txt").read()
    assert "TowerInput(size=(48, 48), mode=bilinear, renormalise=True)" in log  # the teacher's own view


def test_openai_teacher_into_open_clip_student(oc_env, clip_files, tmp_path):
    root, env, names = oc_env
    env = {**env, "OUTPUT": str(root / "openai_to_oc")}
    env.pop("TEACHER_CONFIG")
    run("teacher_train.sh", "dtd", "1", *teacher_opts(clip_files["teacher"], "INPUT.SIZE", "(32, 32)"), env=env)
    out = run("base2new_train.sh", "dtd", "1", *student_opts(names["student"], "fp16"), env=env)
    r = results(out)[-1]
    assert r["backbone"] == names["student"] and {"base", "novel", "hm"} <= set(r)
    log = open(root / "openai_to_oc/base2new/promptkd/dtd/seed1/log.txt").read()
    assert "input TowerInput(identity)" in log  # same size and normalisation: the batch as it is
    exports(root / "openai_to_oc/base2new/promptkd/dtd/seed1", tmp_path)  # an open_clip student


def test_input_settings_must_match_the_open_clip_model(oc_env, tmp_path):
    from promptkd.trainers import train
    from dassl.engine import build_trainer

    root, env, names = oc_env
    args = ["--root", env["DATA"], "--trainer", "PromptKDTeacher", "--dataset-config-file",
            "configs/datasets/dtd.yaml", "--config-file", f"configs/trainers/PromptKDTeacher/{TEACHER_CONFIG}.yaml",
            "--output-dir", str(tmp_path), *teacher_opts(names["teacher"], "INPUT.SIZE", "(48, 48)")]
    cwd = os.getcwd()
    os.chdir(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        cfg = train.setup_cfg(train.parse_args(args))
        with pytest.raises(ConfigError, match=r"INPUT.PIXEL_MEAN is \[0.481.*trained with \[0.5, 0.5, 0.5\].*"
                                              r"INPUT.INTERPOLATION is bicubic but .* uses bilinear\. Set .*"
                                              r"INPUT.PIXEL_MEAN \"\[0.5, 0.5, 0.5\]\""):
            build_trainer(cfg)
        # the right mean / std / interpolation, but centre-cropped test images
        cfg = train.setup_cfg(train.parse_args(args + ["INPUT.PIXEL_MEAN", "[0.5, 0.5, 0.5]", "INPUT.PIXEL_STD",
                                                       "[0.5, 0.5, 0.5]", "INPUT.INTERPOLATION", "bilinear",
                                                       "INPUT.RESIZE_MODE", "shortest"]))
        with pytest.raises(ConfigError, match=r"INPUT.RESIZE_MODE is shortest but .* by 'squash'\. "
                                              r"Set INPUT.RESIZE_MODE squash"):
            build_trainer(cfg)
    finally:
        os.chdir(cwd)
