"""PromptKDTeacher and PromptKD through Dassl, on a fake DTD with tiny CLIPs (in-process).

Covers: teacher -> class vectors -> student -> base / novel / HM; exact resume; labels never
read; no teacher text encoder in stage 2; checkpoint contents; eval-only; published formats;
bad configuration; precision modes; a non-finite loss.
"""
import json
import os
import subprocess
import sys

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from promptkd.trainers import train  # noqa: E402  (conftest.py registers the trainers and datasets)

from promptkd.checkpoints import load_file  # noqa: E402
from promptkd.class_vectors import ClassVectors, class_vectors_file  # noqa: E402
from promptkd.errors import CheckpointError, ConfigError  # noqa: E402
from tests.cli import train_py  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.published_kit import published_student, published_teacher  # noqa: E402
from tests.trainer_kit import (ROOT, STUDENT_CFG, TEACHER_CFG, DTD_CFG, baseline_args, learnable,  # noqa: E402
                               make_trainer, student_args, teacher_args, whole_and_resumed)

# data_root and teacher_run: session fixtures of tests/conftest.py


@pytest.fixture(scope="session")
def student_run(data_root, clip_files, teacher_run, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("student"))
    trainer = make_trainer(student_args(data_root, clip_files, out, teacher_run["export"]))
    losses = []
    run_epoch = trainer.run_epoch

    def recording():
        run_epoch()
        losses.append(trainer.epoch_losses["kd_loss"])
    trainer.run_epoch = recording
    trainer.train()
    return {"out": out, "trainer": trainer, "losses": losses, "report": trainer.last_report}


# --- stage 1 ------------------------------------------------------------------------------

def test_teacher_exports_all_classes_and_reports_base_novel(teacher_run):
    vectors = ClassVectors.load(class_vectors_file(teacher_run["export"], "DescribableTextures"))
    full = teacher_run["trainer"].all_classnames
    assert len(full) == 5 and teacher_run["trainer"].dm.dataset.num_classes == 3  # trained on base only
    assert vectors.classnames == full and vectors.vectors.shape == (5, 96)
    assert torch.allclose(vectors.vectors.norm(dim=-1), torch.ones(5), atol=1e-6)
    assert set(teacher_run["report"]) >= {"base", "novel", "hm", "accuracy"}
    ckpt = load_file(os.path.join(teacher_run["out"], "VLPromptLearner", "model.pth.tar-2"))
    assert sorted(ckpt["state_dict"]) == [f"{s}.prompts.{i}" for s in ("image_encoder", "text_encoder") for i in (0, 1)]
    assert ckpt["extra"]["gpa_applied"] is True


@pytest.mark.exact
def test_teacher_resume_is_exact(data_root, clip_files, tmp_path):
    whole_and_resumed(lambda run: teacher_args(data_root, clip_files, str(tmp_path / run), epochs=2), 1)
    va, vb = (ClassVectors.load(class_vectors_file(str(tmp_path / run / "export"), "DescribableTextures"))
              for run in ("whole", "cut"))
    assert torch.equal(va.vectors, vb.vectors)


@pytest.mark.exact
def test_teacher_with_grad_checkpoint_resumes_exactly_and_matches(data_root, clip_files, teacher_run, tmp_path):
    """GRAD_CHECKPOINT both: on in both towers, resume stays exact, and the weights equal a
    run without checkpointing (the session's teacher_run, same settings otherwise)."""
    both = ("TRAINER.PROMPTSRC.GRAD_CHECKPOINT", "both")
    whole, resumed = whole_and_resumed(
        lambda run: teacher_args(data_root, clip_files, str(tmp_path / run), *both, epochs=2), 1)
    for trainer in (whole, resumed):
        assert trainer.model.text_encoder.grad_checkpoint and trainer.model.image_encoder.grad_checkpoint
    assert not teacher_run["trainer"].model.text_encoder.grad_checkpoint
    plain, checkpointed = learnable(teacher_run["trainer"]), learnable(whole)
    assert plain.keys() == checkpointed.keys()
    assert all((plain[k] - checkpointed[k]).abs().max() <= 1e-6 for k in plain)


@pytest.mark.exact
def test_zero_shot_teacher_exports_stock_clip_vectors(data_root, clip_files, tmp_path):
    from promptkd.backbones import clip, load_clip
    zs_cfg = os.path.join(ROOT, "configs/trainers/PromptKDTeacher/zeroshot_vit_l14.yaml")
    args = teacher_args(data_root, clip_files, str(tmp_path), epochs=0)
    args[args.index(TEACHER_CFG)] = zs_cfg
    args = args[:args.index("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT")]
    trainer = make_trainer(args)
    trainer.train()
    vectors = ClassVectors.load(class_vectors_file(os.path.join(str(tmp_path), "export"), "DescribableTextures"))
    model = load_clip(clip_files["teacher"])
    with torch.no_grad():
        stock = model.encode_text(clip.tokenize([f"a photo of a {c.replace('_', ' ')}." for c in vectors.classnames]))
    assert (vectors.vectors - torch.nn.functional.normalize(stock, dim=-1)).abs().max() <= 1e-6
    assert "hm" in trainer.last_report


def test_teacher_eval_only_export_from_published_checkpoint(data_root, clip_files, teacher_run, tmp_path):
    model_dir = tmp_path / "published"
    (model_dir / "VLPromptLearner").mkdir(parents=True)
    published_teacher(teacher_run["trainer"].model, str(model_dir / "VLPromptLearner" / "model-best.pth.tar"))
    out = str(tmp_path / "export_run")
    trainer = make_trainer(teacher_args(data_root, clip_files, out, "MODEL.TRUST_PICKLED_CHECKPOINTS", "True"))
    trainer.run_eval_only(str(model_dir))
    ours = ClassVectors.load(class_vectors_file(teacher_run["export"], "DescribableTextures"))
    imported = ClassVectors.load(class_vectors_file(os.path.join(out, "export"), "DescribableTextures"))
    assert (ours.vectors - imported.vectors).abs().max() <= 1e-5
    assert imported.teacher["backbone"]["kind"] == "published"
    untrusted = make_trainer(teacher_args(data_root, clip_files, str(tmp_path / "x")))
    with pytest.raises(CheckpointError, match="TRUST_PICKLED_CHECKPOINTS"):
        untrusted.run_eval_only(str(model_dir))


# --- stage 2 ------------------------------------------------------------------------------

def test_student_distils_and_reports(student_run):
    losses = student_run["losses"]
    assert len(losses) == 3 and losses[-1] < losses[0]
    assert set(student_run["report"]) >= {"base", "novel", "hm", "accuracy"}
    ckpt = load_file(os.path.join(student_run["out"], "VLPromptLearner", "model.pth.tar-3"))
    assert all(k.startswith(("image_encoder.prompts.", "projector.", "logit_scale")) for k in ckpt["state_dict"])
    assert "projector.1.running_var" in ckpt["state_dict"]
    assert not os.path.exists(os.path.join(student_run["out"], "VLPromptLearner", "model.pth.tar-2"))


def test_student_eval_only_round_trip(data_root, clip_files, teacher_run, student_run, tmp_path):
    trainer = make_trainer(student_args(data_root, clip_files, str(tmp_path), teacher_run["export"]))
    trainer.run_eval_only(student_run["out"])
    assert trainer.last_report == student_run["report"]


def test_stage2_builds_no_text_encoder(data_root, clip_files, teacher_run, tmp_path, monkeypatch):
    from promptkd.backbones import clip
    built = []
    original = clip.model.Transformer.__init__

    def counting(self, width, layers, heads, attn_mask=None):
        built.append(attn_mask is not None)  # only CLIP's text transformer has a causal mask
        original(self, width, layers, heads, attn_mask)

    def refuse(*a, **k):
        raise AssertionError("stage 2 built a whole CLIP (with its text encoder)")
    monkeypatch.setattr(clip.model.Transformer, "__init__", counting)
    monkeypatch.setattr(clip.model.CLIP, "__init__", refuse)
    make_trainer(student_args(data_root, clip_files, str(tmp_path), teacher_run["export"]))
    assert built == [False, False]  # the teacher's and the student's image towers


@pytest.mark.exact
def test_labels_are_never_read(data_root, clip_files, teacher_run, tmp_path):
    def run(out, relabel):
        trainer = make_trainer(student_args(data_root, clip_files, out, teacher_run["export"], epochs=2))
        loader = trainer.train_loader_x

        class Relabelled:
            def __len__(self):
                return len(loader)

            def __iter__(self):
                for b in loader:
                    yield {**b, "label": relabel(b["label"])}
        trainer.train_loader_x = Relabelled()
        trainer.cfg.defrost()
        trainer.cfg.TEST.NO_TEST = True
        trainer.train()
        return learnable(trainer)
    a = run(str(tmp_path / "a"), lambda y: y)
    b = run(str(tmp_path / "b"), lambda y: (y * 3 + 1) % 5)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_class_vectors_for_other_classes_stop_the_run(data_root, clip_files, teacher_run, tmp_path):
    vectors = ClassVectors.load(class_vectors_file(teacher_run["export"], "DescribableTextures"))
    vectors.classnames = vectors.classnames[::-1]
    vectors.save(class_vectors_file(str(tmp_path), "DescribableTextures"))
    import shutil
    shutil.copy(os.path.join(teacher_run["export"], "image_side.pt"), str(tmp_path))
    with pytest.raises(ValueError, match="do not match the dataset: .*class names differ"):
        make_trainer(student_args(data_root, clip_files, str(tmp_path / "out"), str(tmp_path)))


def test_missing_teacher_export_names_file_and_command(data_root, clip_files, tmp_path):
    with pytest.raises(FileNotFoundError, match="class_vectors_DescribableTextures.pt.*teacher_train.sh"):
        make_trainer(student_args(data_root, clip_files, str(tmp_path / "o"), str(tmp_path / "nowhere")))


def test_published_student_checkpoint_evaluates(data_root, clip_files, teacher_run, student_run, tmp_path):
    model_dir = tmp_path / "pub"
    (model_dir / "VLPromptLearner").mkdir(parents=True)
    published_student(student_run["trainer"].model, str(model_dir / "VLPromptLearner" / "model.pth.tar-20"))
    trainer = make_trainer(student_args(data_root, clip_files, str(tmp_path / "o"), teacher_run["export"],
                                        "MODEL.TRUST_PICKLED_CHECKPOINTS", "True"))
    trainer.run_eval_only(str(model_dir), epoch=20)
    assert trainer.last_report == pytest.approx(student_run["report"])


def test_checkpoint_of_the_other_stage_is_refused(data_root, clip_files, teacher_run, student_run, tmp_path):
    s = make_trainer(student_args(data_root, clip_files, str(tmp_path / "s"), teacher_run["export"]))
    with pytest.raises(ValueError, match="written by trainer PromptKDTeacher"):
        s.run_eval_only(teacher_run["out"])
    t = make_trainer(teacher_args(data_root, clip_files, str(tmp_path / "t")))
    with pytest.raises(ValueError, match="written by trainer PromptKD,"):
        t.run_eval_only(student_run["out"])


def test_paper_selection_rule_is_explicit(data_root, clip_files, teacher_run, tmp_path):
    trainer = make_trainer(student_args(data_root, clip_files, str(tmp_path), teacher_run["export"],
                                        "TEST.MODEL_SELECTION", "best_base_test", epochs=2))
    trainer.train()
    assert os.path.isfile(os.path.join(str(tmp_path), "VLPromptLearner", "model-best.pth.tar"))
    assert "selects on test data" in trainer.selection_description()


@pytest.mark.parametrize("prec", ["fp32", "fp16", "amp", "bf16"])
def test_precision_modes_train(data_root, clip_files, teacher_run, tmp_path, prec):
    s = make_trainer(student_args(data_root, clip_files, str(tmp_path / "s"), teacher_run["export"],
                                  "TRAINER.PROMPTKD.PREC", prec, epochs=1))
    s.train()
    t = make_trainer(teacher_args(data_root, clip_files, str(tmp_path / "t"), "TRAINER.PROMPTSRC.PREC", prec, epochs=1))
    t.train()
    assert s.prec == {"amp": "bf16"}.get(prec, prec) and t.last_report["accuracy"] >= 0
    if prec == "fp16":  # the published pure-half backbone; learnable parts stay fp32
        assert s.model.image_encoder.visual.conv1.weight.dtype == torch.float16
        assert s.teacher.image_encoder.visual.conv1.weight.dtype == torch.float16
        assert all(p.dtype == torch.float32 for p in s.model.parameters() if p.requires_grad)


def test_non_finite_loss_stops_with_a_hint_and_keeps_the_checkpoint(data_root, clip_files, teacher_run, tmp_path, monkeypatch):
    import promptkd.trainers.promptkd as module
    out = str(tmp_path)
    trainer = make_trainer(student_args(data_root, clip_files, out, teacher_run["export"], epochs=3))
    real = module.kd_loss
    monkeypatch.setattr(module, "kd_loss", lambda *a: real(*a) * (float("inf") if trainer.epoch == 1 else 1.0))
    with pytest.raises(FloatingPointError, match=r"epoch 2, batch 1\. Try a lower OPTIM.LR .*PREC fp32"):
        trainer.train()
    assert os.path.isfile(os.path.join(out, "VLPromptLearner", "model.pth.tar-1"))


@pytest.mark.parametrize("extra, error, message", [
    (["MODEL.BACKBONE.NAME", "ViT-Q/99"], ValueError, "Unknown CLIP backbone 'ViT-Q/99'"),
    (["TRAINER.PROMPTKD.PROMPT_DEPTH_VISION", "9"], ValueError, "larger than the encoder's 2 transformer layers"),
    (["TRAINER.PROMPTKD.N_CTX_VISION", "0"], ValueError, "N_CTX_VISION must be >= 1"),
    (["TRAINER.PROMPTKD.KD_WEIGHT", "-1"], ValueError, "KD_WEIGHT must be >= 0"),
    (["TRAINER.PROMPTKD.TEMPERATURE", "0"], ValueError, "TEMPERATURE must be > 0"),
    (["TRAINER.PROMPTKD.PREC", "fp8"], ValueError, "PREC is 'fp8'; allowed values: fp32, fp16, amp, bf16"),
    (["INPUT.SIZE", "(224, 224)"], ValueError, "expects 32x32 images"),
    (["TRAINER.PROMPTKD.KD_WEIGTH", "1"], ConfigError, "command-line options: .*KD_WEIGTH"),
    (["TRAINER.PROMPTKD.GRAD_CHECKPOINT", "text"], ConfigError, "GRAD_CHECKPOINT is 'text', but the PromptKD student "
                                                                "has no text tower"),
    (["TRAINER.PROMPTKD.GRAD_CHECKPOINT", "all"], ValueError, "GRAD_CHECKPOINT is 'all'; allowed values: off, text, "
                                                              "image, both"),
])
def test_bad_student_configuration_is_refused(data_root, clip_files, teacher_run, tmp_path, extra, error, message):
    with pytest.raises(error, match=message):
        make_trainer(student_args(data_root, clip_files, str(tmp_path), teacher_run["export"], *extra))


def test_missing_dataset_root_and_typo_in_config_file(data_root, clip_files, teacher_run, tmp_path):
    with pytest.raises(FileNotFoundError, match="DATASET.ROOT .*nowhere does not exist"):
        make_trainer(student_args(str(tmp_path / "nowhere"), clip_files, str(tmp_path), teacher_run["export"]))
    bad = tmp_path / "bad.yaml"
    bad.write_text("TRAINER:\n  PROMPTKD:\n    TEMPERTURE: 2.0\n")
    args = student_args(data_root, clip_files, str(tmp_path), teacher_run["export"])
    args[args.index(STUDENT_CFG)] = str(bad)
    with pytest.raises(ConfigError, match="bad.yaml: .*TEMPERTURE"):
        make_trainer(args)


# --- the command line -----------------------------------------------------------------------

def test_cli_seed_zero_fresh_log_and_result_line(data_root, clip_files, teacher_run, tmp_path):
    """Two runs of the same command line: the first prints the RESULT line, the second resumes
    from the first one's checkpoint and moves the first log aside."""
    out = str(tmp_path)
    args = student_args(data_root, clip_files, out, teacher_run["export"], epochs=1)
    args[args.index("--seed") + 1] = "0"
    procs = [train_py(args) for _ in range(2)]
    for proc in procs:
        assert proc.returncode == 0, proc.stderr[-2000:]
    line = next(l for l in procs[0].stdout.splitlines() if l.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    assert result["trainer"] == "PromptKD" and result["protocol"] == "base2novel" and "hm" in result
    logs = sorted(f for f in os.listdir(out) if f.startswith("log.txt"))
    assert len(logs) == 2 and logs[0] == "log.txt"
    text = open(os.path.join(out, "log.txt")).read()
    assert "SEED: 0" in text and "Resumed from" in text  # the second run found the first one's checkpoint
    assert "Resumed from" not in open(os.path.join(out, logs[1])).read()


@pytest.mark.exact
def test_student_grad_checkpoint_image(data_root, clip_files, teacher_run, student_run, tmp_path, caplog):
    with caplog.at_level("INFO", logger="promptkd"):
        trainer = make_trainer(student_args(data_root, clip_files, str(tmp_path), teacher_run["export"],
                                            "TRAINER.PROMPTKD.GRAD_CHECKPOINT", "image", epochs=3))
    assert trainer.model.image_encoder.grad_checkpoint
    assert not student_run["trainer"].model.image_encoder.grad_checkpoint
    assert "GRAD_CHECKPOINT image): student image tower on" in caplog.text
    trainer.train()
    plain, checkpointed = learnable(student_run["trainer"]), learnable(trainer)
    assert all((plain[k].float() - checkpointed[k].float()).abs().max() <= 1e-5 for k in plain)


@pytest.mark.exact
def test_student_resume_is_exact(data_root, clip_files, teacher_run, tmp_path):
    whole, resumed = whole_and_resumed(
        lambda run: student_args(data_root, clip_files, str(tmp_path / run), teacher_run["export"]), 2)
    assert resumed.last_report == whole.last_report


@pytest.mark.exact
@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(clip_files, teacher_run, tmp_path_factory):
    import signal
    root = str(tmp_path_factory.mktemp("bigger"))
    make_dtd(root, n_classes=5, per_class=40)  # enough batches per epoch to kill mid-run
    export = str(tmp_path_factory.mktemp("export"))
    import shutil
    for f in os.listdir(teacher_run["export"]):
        shutil.copy(os.path.join(teacher_run["export"], f), export)

    def command(out):
        return student_args(root, clip_files, out, export, "TEST.NO_TEST", "True", epochs=2)
    whole, cut = str(tmp_path_factory.mktemp("whole")), str(tmp_path_factory.mktemp("cut"))
    assert train_py(command(whole)).returncode == 0
    first = os.path.join(cut, "VLPromptLearner", "checkpoint")  # written once model.pth.tar-1 is complete
    proc = train_py(command(cut), until=lambda _: os.path.exists(first))  # SIGKILL as soon as it is there
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    again = train_py(command(cut))
    assert again.returncode == 0, again.stderr[-2000:]
    assert "Resumed from" in open(os.path.join(cut, "log.txt")).read()
    assert not [f for f in os.listdir(os.path.join(cut, "VLPromptLearner")) if f.startswith(".tmp-")]
    a = load_file(os.path.join(whole, "VLPromptLearner", "model.pth.tar-2"))["state_dict"]
    b = load_file(os.path.join(cut, "VLPromptLearner", "model.pth.tar-2"))["state_dict"]
    assert all(torch.equal(a[k], b[k]) for k in a)


# --- fidelity and user errors ---------------------------------------------------------------

@pytest.mark.exact
def test_fp16_teacher_exports_the_fp32_class_vectors(data_root, clip_files, tmp_path):
    half = make_trainer(teacher_args(data_root, clip_files, str(tmp_path / "half"), "TRAINER.PROMPTSRC.PREC", "fp16",
                                     epochs=1))
    half.train()
    assert half.model.clip.visual.conv1.weight.dtype == torch.float16  # evaluation kept the training precision
    # the same prompts, exported from an fp32 backbone
    full = make_trainer(teacher_args(data_root, clip_files, str(tmp_path / "full"), "TRAINER.PROMPTSRC.PREC", "fp32",
                                     "TRAINER.EXPORT_DIR", str(tmp_path / "full_export"), epochs=1))
    full.run_eval_only(str(tmp_path / "half"))
    a = ClassVectors.load(class_vectors_file(str(tmp_path / "half" / "export"), "DescribableTextures"))
    b = ClassVectors.load(class_vectors_file(str(tmp_path / "full_export"), "DescribableTextures"))
    assert (a.vectors - b.vectors).abs().max() <= 1e-6  # a half backbone differs by ~1e-3
    assert a.teacher["fingerprint"] == b.teacher["fingerprint"]  # of the fp32 weights stage 2 loads
    assert (a.teacher["precision"], a.teacher["train_precision"]) == ("fp32", "fp16")


@pytest.mark.slow
def test_cli_user_error_without_traceback(data_root, clip_files, tmp_path):
    """`python train.py` itself (a new interpreter, through the `__main__` shim): error: and
    exit 2 without a traceback; --debug shows it; a misspelt key is named."""
    args = [sys.executable, os.path.join(ROOT, "train.py"), *student_args(
        data_root, clip_files, str(tmp_path), str(tmp_path / "no_teacher"))]
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: No class-vector file at {tmp_path / 'no_teacher'}")
    assert "teacher_train.sh" in proc.stderr  # says how to make it
    # the rest as forked children of this process (tests/cli.py): the same code after the shim
    proc = train_py(["--debug", *args[2:]])
    assert proc.returncode == 1 and "Traceback" in proc.stderr and "MissingFileError" in proc.stderr
    typo = train_py(args[2:] + ["TRAINER.PROMPTKD.KD_WEIGTH", "1"])
    assert typo.returncode == 2 and "KD_WEIGTH" in typo.stderr and "Traceback" not in typo.stderr


# --- refusals that name the key / value / file and the fix -----------------------------------

def cli_error(args, capsys):
    """train.py's main() through run_cli, as `python train.py ARGS` runs it: (exit code, stderr)."""
    from promptkd.errors import run_cli
    with pytest.raises(SystemExit) as exit_info:
        run_cli(lambda: train.main(train.parse_args(args)), args)
    return exit_info.value.code, capsys.readouterr().err


@pytest.mark.parametrize("change, message", [
    (("--trainer", "PromptKd"), "error: Unknown trainer 'PromptKd' (--trainer / TRAINER.NAME). Did you mean "
                                "'PromptKD'? This plugin's trainers: CoCoOp, CoOp, IVLP, MaPLe, PromptKD, "
                                "PromptKDTeacher, PromptSRC, ZeroshotCLIP.\n"),
    (("--trainer", "Vanilla"), "error: Unknown trainer 'Vanilla' (--trainer / TRAINER.NAME). This plugin's trainers:"),
    (("DATASET.NAME", "DescribableTexture"), "error: Unknown dataset 'DescribableTexture' (DATASET.NAME). Did you "
                                             "mean 'DescribableTextures'? This plugin's datasets: Caltech101,"),
    (("DATASET.NAME", "dtd"), "error: Unknown dataset 'dtd' (DATASET.NAME). Did you mean 'DescribableTextures'?"),
    (("MODEL.BACKBONE.NAME", "ViT-B/61"), "error: Unknown CLIP backbone 'ViT-B/61' (MODEL.BACKBONE.NAME). Did you "
                                          "mean 'ViT-B/16'? Use an OpenAI CLIP name (RN50,"),
    (("MODEL.BACKBONE.NAME", "openclip:ViT-B-16/dfn2b"), "error: Unknown backbone 'openclip:ViT-B-16/dfn2b' "
                                                         "(MODEL.BACKBONE.NAME): open_clip backbones are written "
                                                         "'open_clip:ViT-B-16/dfn2b'"),
    (("MODEL.BACKBONE.NAME", "/no/such/ViT-B-16.pt"), "error: MODEL.BACKBONE.NAME /no/such/ViT-B-16.pt: there is no "
                                                      "file there."),
    (("TRAINER.PROMPTKD.KD_WEIGTH", "1"), "error: command-line options: unknown config key TRAINER.PROMPTKD.KD_WEIGTH. "
                                          "Did you mean TRAINER.PROMPTKD.KD_WEIGHT? (Dassl's keys are in "
                                          "dassl/config/defaults.py, the ones this plugin adds in trainers/config.py.)"),
    (("PROMPTKD.TEMPERATURE", "2"), "error: command-line options: unknown config key PROMPTKD.TEMPERATURE. Did you "
                                    "mean TRAINER.PROMPTKD.TEMPERATURE?"),
    (("INPUT.SIZE", "224"), "error: command-line options: INPUT.SIZE 224: the key takes a tuple (e.g. (32, 32)), "
                            "not an integer."),
    (("TRAINER.PROMPTKD", "x"), "error: command-line options: TRAINER.PROMPTKD is a group of keys, not a key"),
    (("OPTIM.LR",), "error: command-line options: OPTIM.LR has no value; options are KEY VALUE pairs."),
    (("OPTIM.LR", "0.1", "--eval-only"), "error: command-line options: '--eval-only' is a train.py option, but it "
                                         "comes after the first KEY VALUE pair"),
    (("TRAINER.PROMPTKD.KD_WEIGHT", "heavy"), "error: TRAINER.PROMPTKD.KD_WEIGHT is 'heavy': give a number >= 0"),
])
def test_cli_names_keys_and_values_with_the_closest_match(data_root, clip_files, teacher_run, tmp_path, capsys,
                                                         change, message):
    """Refused before Dassl looks anything up: `error: ...`, exit 2, no traceback."""
    args = student_args(data_root, clip_files, str(tmp_path), teacher_run["export"])
    if change[0] == "--trainer":
        args[args.index("--trainer") + 1] = change[1]
    else:
        args += list(change)
    code, err = cli_error(args, capsys)
    assert code == 2 and err.startswith(message) and "Traceback" not in err


def test_config_file_keys_and_types_are_named(data_root, clip_files, teacher_run, tmp_path):
    args = student_args(data_root, clip_files, str(tmp_path), teacher_run["export"])
    for text, message in (
            ("TRAINER:\n  PROMPTKD:\n    TEMPERTURE: 2.0\n",
             "bad.yaml: unknown config key TRAINER.PROMPTKD.TEMPERTURE. Did you mean TRAINER.PROMPTKD.TEMPERATURE?"),
            ("OPTIM:\n  MAX_EPOCH: ten\n", "bad.yaml: OPTIM.MAX_EPOCH ten: the key takes an integer (e.g. 10), not a "
                                          "string."),
            ("TRAINER: PromptKD\n", "bad.yaml: TRAINER is a group of keys, not a key"),
            ("- a\n- b\n", "bad.yaml must hold a mapping of config keys (KEY: value), not a list."),
            ("OPTIM: [\n", "bad.yaml is not valid YAML")):
        bad = tmp_path / "bad.yaml"
        bad.write_text(text)
        changed = list(args)
        changed[changed.index(STUDENT_CFG)] = str(bad)
        with pytest.raises(ConfigError) as err:
            train.setup_cfg(train.parse_args(changed))
        assert str(err.value).startswith(f"{bad.parent}/{message}"), str(err.value)
    good = tmp_path / "good.yaml"  # an int for a float key, true for a bool key: what they mean
    good.write_text("TRAINER:\n  PROMPTKD:\n    TEMPERATURE: 2\nDATALOADER:\n  SKIP_UNREADABLE: true\n")
    changed = list(args)
    changed[changed.index("--config-file") + 1] = str(good)
    cfg = train.setup_cfg(train.parse_args(changed))
    assert cfg.TRAINER.PROMPTKD.TEMPERATURE == 2.0 and cfg.DATALOADER.SKIP_UNREADABLE is True


def kd_args(dataset_cfg, *opts, config=STUDENT_CFG):
    return ["--root", ROOT, "--trainer", "PromptKD", "--dataset-config-file", dataset_cfg, "--config-file", config,
            *opts]


def test_kd_weight_auto_is_the_published_one_and_a_number_wins(tmp_path):
    from promptkd.trainers.config import kd_weight
    imagenet = os.path.join(ROOT, "configs/datasets/imagenet.yaml")
    setup = lambda *a, **k: kd_weight(train.setup_cfg(train.parse_args(kd_args(*a, **k))))  # noqa: E731
    assert setup(DTD_CFG) == (200.0, "TRAINER.PROMPTKD.KD_WEIGHT auto -> 200 for DescribableTextures (the published "
                                     "value)")
    assert setup(imagenet)[0] == 1000.0
    for flowers in ("oxford_flowers", "fgvc_aircraft"):
        assert setup(os.path.join(ROOT, f"configs/datasets/{flowers}.yaml"))[0] == 200.0
    for value in ("500", "500.0", "5e2"):  # yacs would refuse a number for the string key
        assert setup(DTD_CFG, "TRAINER.PROMPTKD.KD_WEIGHT", value) == (
            500.0, "TRAINER.PROMPTKD.KD_WEIGHT 500 (as given; auto would be 200 for DescribableTextures)")
    assert setup(imagenet, "TRAINER.PROMPTKD.KD_WEIGHT", "auto")[0] == 1000.0
    for value in ("500", "500.0"):  # from a YAML file (an int and a float there)
        mine = tmp_path / f"kd_{value}.yaml"
        mine.write_text(f"MODEL:\n  BACKBONE:\n    NAME: ViT-B/16\nTRAINER:\n  PROMPTKD:\n    KD_WEIGHT: {value}\n")
        assert setup(DTD_CFG, config=str(mine))[0] == 500.0
    with pytest.raises(ConfigError, match="KD_WEIGHT must be >= 0, got -1"):
        setup(DTD_CFG, "TRAINER.PROMPTKD.KD_WEIGHT", "-1")


def test_the_student_distils_at_the_published_kd_weight(data_root, clip_files, teacher_run, tmp_path, caplog):
    args = student_args(data_root, clip_files, str(tmp_path), teacher_run["export"])
    i = args.index("TRAINER.PROMPTKD.KD_WEIGHT")
    del args[i:i + 2]  # the shipped config's auto
    with caplog.at_level("INFO", logger="promptkd"):
        trainer = make_trainer(args)
    assert trainer.kd_weight == 200.0
    assert "TRAINER.PROMPTKD.KD_WEIGHT auto -> 200 for DescribableTextures" in caplog.text
    assert make_trainer(args + ["TRAINER.PROMPTKD.KD_WEIGHT", "100"]).kd_weight == 100.0


def test_eval_only_needs_a_checkpoint_unless_nothing_is_trained(data_root, clip_files, teacher_run, tmp_path):
    student = make_trainer(student_args(data_root, clip_files, str(tmp_path / "s"), teacher_run["export"]))
    with pytest.raises(ConfigError, match=r"^--eval-only needs --model-dir: PromptKD learns its weights, and without a "
                                          r"checkpoint it would evaluate an untrained model\. Give --model-dir RUN_DIR"):
        student.run_eval_only("")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match=f"--model-dir {tmp_path / 'empty_run'} holds no checkpoints"):
        student.run_eval_only(str(tmp_path / "empty_run"))
    assert not hasattr(student, "last_report")
    teacher = make_trainer(teacher_args(data_root, clip_files, str(tmp_path / "t")))
    with pytest.raises(ConfigError, match="--eval-only needs --model-dir: PromptKDTeacher learns"):
        teacher.run_eval_only("")
    zero_shot = make_trainer(baseline_args("ZeroshotCLIP", data_root, clip_files, str(tmp_path / "z")))
    zero_shot.run_eval_only("")  # nothing to load: evaluated as built
    assert {"base", "novel", "hm"} <= set(zero_shot.last_report)


def test_cli_unknown_trainer_and_eval_only_without_model_dir(data_root, clip_files, teacher_run, tmp_path):
    """The real command line: `error: ...`, exit 2, no traceback (not Dassl's list of its own trainers)."""
    args = student_args(data_root, clip_files, str(tmp_path), teacher_run["export"])
    typo = list(args)
    typo[typo.index("--trainer") + 1] = "PromptDK"
    proc = train_py(typo)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: Unknown trainer 'PromptDK' (--trainer / TRAINER.NAME). Did you mean "
                                  "'PromptKD'?")
    assert "Vanilla" not in proc.stderr  # Dassl's own trainers are not offered
    proc = train_py(["--eval-only", *args])
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith("error: --eval-only needs --model-dir: PromptKD learns its weights")


def test_unreadable_image_is_named_or_skipped(clip_files, teacher_run, tmp_path, caplog):
    from promptkd.errors import DataError
    root = str(tmp_path / "data")
    make_dtd(root, n_classes=5, per_class=8)
    args = lambda out, *extra: student_args(root, clip_files, str(tmp_path / out), teacher_run["export"],  # noqa: E731
                                            "DATALOADER.NUM_WORKERS", "1", *extra, epochs=1)
    probe = make_trainer(args("probe"))
    assert len(probe.dm.dataset.train_x) % 4 == 0  # whole batches: no image is left out of the epoch
    bad = probe.dm.dataset.train_x[0].impath
    with open(bad, "rb") as f:
        data = f.read()
    with open(bad, "wb") as f:
        f.write(data[: len(data) // 2])  # a truncated JPEG
    with pytest.raises(DataError) as err:
        make_trainer(args("stop")).train()
    message = str(err.value)
    assert f"cannot read image {bad} (train split of DescribableTextures)" in message
    assert f"promptkd check --root {root} DescribableTextures" in message
    assert "DATALOADER.SKIP_UNREADABLE True" in message
    skip = ("DATALOADER.SKIP_UNREADABLE", "True")
    # 1 of the 20 training images is 5%: more than the default MAX_UNREADABLE_SHARE (1%) stops the run
    with pytest.raises(DataError) as err:
        make_trainer(args("share", *skip)).train()
    assert str(err.value).startswith(
        "at least 1 of the 20 images of the train split of DescribableTextures are unreadable (5.0%), more than "
        f"DATALOADER.MAX_UNREADABLE_SHARE 0.01 (1%) allows with DATALOADER.SKIP_UNREADABLE True: {bad} (")
    assert "raise DATALOADER.MAX_UNREADABLE_SHARE" in str(err.value)
    skipping = make_trainer(args("skip", *skip, "DATALOADER.MAX_UNREADABLE_SHARE", "0.1"))
    with caplog.at_level("WARNING", logger="promptkd"):
        skipping.train()
    assert "epoch 1: skipped 1 unreadable image(s)" in caplog.text and bad in caplog.text
    assert skipping.last_report["n"] == len(skipping.dm.dataset.test)  # the bad file is a train image
    # evaluation: 2 of the 10 test images unreadable (20%) is over a share of 0.1 too
    bad_tests = sorted(d.impath for d in probe.dm.dataset.test)[:2]
    for path in bad_tests:
        with open(path, "wb") as f:
            f.write(b"not an image")
    evaluating = make_trainer(args("eval", *skip, "DATALOADER.MAX_UNREADABLE_SHARE", "0.1"))
    with pytest.raises(DataError, match=r"^2 of the 10 images of the test split of DescribableTextures are "
                                        r"unreadable \(20\.0%\), more than DATALOADER.MAX_UNREADABLE_SHARE 0.1"):
        evaluating.test()
    assert all(path in str(evaluating.unreadable) for path in bad_tests)


def test_an_epoch_without_an_optimisation_step_is_an_error(clip_files, teacher_run, tmp_path):
    """Every training image unreadable (skipped, the share allowed): the epoch would make no step and
    the run would go on to report an untrained model; and a loader with no batch at all."""
    from torch.utils.data import DataLoader

    from promptkd.errors import DataError
    root = str(tmp_path / "data")
    make_dtd(root, n_classes=5, per_class=8)
    args = lambda out, *extra: student_args(root, clip_files, str(tmp_path / out), teacher_run["export"],  # noqa: E731
                                            "DATALOADER.NUM_WORKERS", "0", *extra, epochs=1)
    probe = make_trainer(args("probe"))
    for d in probe.dm.dataset.train_x:
        with open(d.impath, "wb") as f:
            f.write(b"not an image")
    trainer = make_trainer(args("all_bad", "DATALOADER.SKIP_UNREADABLE", "True",
                                "DATALOADER.MAX_UNREADABLE_SHARE", "1"))
    with pytest.raises(DataError, match=r"^epoch 1: the train split of DescribableTextures \(20 images\) gave no "
                                        r"optimisation step: all 5 batches were skipped, 20 unreadable image\(s\)"):
        trainer.train()
    assert not os.path.exists(os.path.join(str(tmp_path / "all_bad"), "VLPromptLearner"))  # no checkpoint of it
    loader = trainer.train_loader_x
    trainer.train_loader_x = DataLoader(loader.dataset, batch_size=32, sampler=loader.sampler, drop_last=True,
                                        collate_fn=loader.collate_fn)
    trainer.epoch = 0
    with pytest.raises(ConfigError, match=r"gave no optimisation step: its loader has no batch: fewer images than one "
                                          r"batch of 32 \(DATALOADER.TRAIN_X.BATCH_SIZE\), and the incomplete last"):
        trainer.run_epoch()


def test_only_the_image_read_is_reported_as_unreadable(tmp_path):
    """A transform's own error (a bug, a ConfigError) propagates as it is; a broken file is a marker."""
    from dassl.config import get_cfg_default
    from dassl.data.datasets import Datum
    from PIL import Image
    from torchvision import transforms as T

    from promptkd.trainers.config import extend_cfg
    from promptkd.trainers.data import UNREADABLE, CheckedDatasetWrapper

    cfg = extend_cfg(get_cfg_default())
    good, broken, truncated = (str(tmp_path / n) for n in ("good.png", "broken.jpg", "truncated.jpg"))
    Image.new("RGB", (8, 8), (200, 10, 10)).save(good)
    Image.new("RGB", (64, 64), (10, 200, 10)).save(truncated)
    with open(truncated, "rb") as f:
        data = f.read()
    with open(truncated, "wb") as f:
        f.write(data[: len(data) // 2])
    with open(broken, "wb") as f:
        f.write(b"not an image")
    items = [Datum(impath=p, label=0, classname="x") for p in (good, broken, truncated)]

    def raising(error):
        def transform(image):
            raise error
        return transform
    for error in (ValueError("a bug in the transform"), ConfigError("INPUT.SIZE is wrong"), OSError("disk")):
        wrapper = CheckedDatasetWrapper(cfg, items, transform=raising(error))
        with pytest.raises(type(error), match=str(error)):
            wrapper[0]
    wrapper = CheckedDatasetWrapper(cfg, items, transform=T.ToTensor())
    assert wrapper[0]["img"].shape == (3, 8, 8) and wrapper[0]["impath"] == good
    for index, path in ((1, broken), (2, truncated)):
        marker = wrapper[index][UNREADABLE]
        assert marker[0] == path and marker[1].split(":")[0] in ("UnidentifiedImageError", "OSError")
