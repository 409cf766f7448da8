"""A finished run of a host codebase's trainer as PromptKD's teacher (trainers/host_teacher.py),
in process, with small host trainers defined here in the CoOp-family pattern (a `model` with
prompt_learner, text_encoder, image_encoder, logit_scale; the loss in training mode, logits in
eval mode; its own load_model). The end-to-end run through a host's train.py is
tests/test_plugin_host.py::test_a_finished_host_coop_run_is_a_teacher.
"""
import os

import pytest

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from dassl.engine import TRAINER_REGISTRY, TrainerX  # noqa: E402
from dassl.optim import build_lr_scheduler, build_optimizer  # noqa: E402
from dassl.utils import load_checkpoint  # noqa: E402
from torch import nn  # noqa: E402
from yacs.config import CfgNode as CN  # noqa: E402

from promptkd.backbones import load_clip, tokenizer  # noqa: E402
from promptkd.class_vectors import ClassVectors  # noqa: E402
from promptkd.errors import ConfigError, MissingFileError  # noqa: E402
from promptkd.student import teacher_logits  # noqa: E402
from promptkd.trainers import host_teacher  # noqa: E402
from promptkd.trainers.host_methods import build_host_trainer  # noqa: E402
from promptkd.trainers.plugin import our_keys  # noqa: E402

CLASSES = ["abyssinian", "beagle", "bombay", "boxer", "persian"]


class TextEncoder(nn.Module):
    def __init__(self, clip_model):
        super().__init__()
        self.transformer, self.ln_final = clip_model.transformer, clip_model.ln_final
        self.positional_embedding, self.text_projection = clip_model.positional_embedding, clip_model.text_projection

    def forward(self, prompts, tokenized):
        x = self.transformer((prompts + self.positional_embedding).permute(1, 0, 2)).permute(1, 0, 2)
        x = self.ln_final(x)
        return x[torch.arange(x.shape[0]), tokenized.argmax(dim=-1)] @ self.text_projection


class PromptLearner(nn.Module):
    def __init__(self, n_ctx, classnames, clip_model):
        super().__init__()
        width = clip_model.ln_final.weight.shape[0]
        self.ctx = nn.Parameter(torch.randn(n_ctx, width) * 0.02)
        tokenized = tokenizer(clip_model)([" ".join(["X"] * n_ctx) + f" {name}." for name in classnames])
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized)
        self.register_buffer("token_prefix", embedding[:, :1])
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:])
        self.tokenized_prompts = tokenized

    def forward(self, shift=None):
        ctx = self.ctx.unsqueeze(0).expand(self.token_prefix.shape[0], -1, -1)
        if shift is not None:  # CoCoOp: a context per image
            ctx = ctx + shift
        return torch.cat([self.token_prefix, ctx, self.token_suffix], dim=1)


class HostCLIP(nn.Module):
    """CoOp's model; `kind` "cocoop": the context shifted by each image's feature (its text
    encoded per image), "fixed_scale": logits at a fixed scale of 10, not logit_scale.exp()."""

    def __init__(self, cfg, classnames, clip_model, kind):
        super().__init__()
        self.kind = kind
        self.prompt_learner = PromptLearner(cfg.TRAINER.HOSTFAKE.N_CTX, classnames, clip_model)
        self.image_encoder, self.text_encoder = clip_model.visual, TextEncoder(clip_model)
        self.logit_scale = clip_model.logit_scale
        width = clip_model.ln_final.weight.shape[0]
        self.meta_net = nn.Linear(clip_model.visual.output_dim, width) if kind == "cocoop" else None

    def forward(self, image, label=None):
        image_features = F.normalize(self.image_encoder(image), dim=-1)
        tokenized = self.prompt_learner.tokenized_prompts.to(image.device)
        if self.kind == "cocoop":
            logits = []
            for feature in image_features:
                text = self.text_encoder(self.prompt_learner(self.meta_net(feature)), tokenized)
                logits.append(self.logit_scale.exp() * feature @ F.normalize(text, dim=-1).t())
            logits = torch.stack(logits)
        else:
            text = F.normalize(self.text_encoder(self.prompt_learner(), tokenized), dim=-1)
            scale = 10.0 if self.kind == "fixed_scale" else self.logit_scale.exp()
            logits = scale * image_features @ text.t()
        if self.prompt_learner.training:
            return F.cross_entropy(logits, label)
        return logits


class HostFakeCoOp(TrainerX):
    KIND = "coop"

    def build_model(self):
        clip_model = load_clip(self.cfg.MODEL.BACKBONE.NAME).float()
        self.model = HostCLIP(self.cfg, self.dm.dataset.classnames, clip_model, self.KIND)
        for name, param in self.model.named_parameters():
            param.requires_grad_("prompt_learner" in name or "meta_net" in name)
        self.model.to(self.device)
        learner = nn.ModuleList([self.model.prompt_learner] + ([self.model.meta_net] if self.model.meta_net else []))
        self.optim = build_optimizer(learner, self.cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, self.cfg.OPTIM)
        self.register_model("prompt_learner", learner, self.optim, self.sched)

    def load_model(self, directory, epoch=None):  # as the hosts' CoOp: fixed token buffers not loaded
        model_file = "model-best.pth.tar" if epoch is None else f"model.pth.tar-{epoch}"
        for name in self.get_model_names():
            path = os.path.join(directory, name, model_file)
            if not os.path.exists(path):
                raise FileNotFoundError(f'Model not found at "{path}"')
            state = load_checkpoint(path)["state_dict"]
            state = {k: v for k, v in state.items() if "token_" not in k}
            self._models[name].load_state_dict(state, strict=False)


class HostFakeCoCoOp(HostFakeCoOp):
    KIND = "cocoop"


class HostFakeFixedScale(HostFakeCoOp):
    KIND = "fixed_scale"


class HostFakeLoadsNothing(HostFakeCoOp):
    def load_model(self, directory, epoch=None):  # finds its files, loads no key (strict=False)
        pass


@pytest.fixture(scope="module", autouse=True)
def host_fakes():
    """The fake host trainers in Dassl's registry for this file's tests only: registered at import
    they would be students in every other test file of the worker (test_students' grid)."""
    added = [c for c in (HostFakeCoOp, HostFakeCoCoOp, HostFakeFixedScale, HostFakeLoadsNothing)
             if c.__name__ not in TRAINER_REGISTRY.registered_names()]
    for cls in added:
        TRAINER_REGISTRY.register(cls)
    yield
    for cls in added:  # Dassl's Registry has no way to unregister: its map is the registry
        TRAINER_REGISTRY._obj_map.pop(cls.__name__, None)


def run_cfg(tmp_path, clip_file, trainer="HostFakeCoOp", run_dir="", teacher_yaml="", **keys):
    """Our keys plus the host's node (as a host's extend_cfg + the plugin line make it), with
    the host run as the teacher; TEACHER_CONFIG a YAML file naming the host's N_CTX (and
    `teacher_yaml`)."""
    cfg = our_keys()
    cfg.TRAINER.HOSTFAKE = CN({"N_CTX": 16})  # the host's default; its run used 3
    yaml = tmp_path / "hostfake.yaml"
    yaml.write_text("TRAINER:\n  HOSTFAKE:\n    N_CTX: 3\nOPTIM:\n  NAME: sgd\n  LR: 0.01\n  MAX_EPOCH: 2\n"
                    + teacher_yaml)
    cfg.OUTPUT_DIR, cfg.DATASET.NAME, cfg.DATASET.ROOT = str(tmp_path / "student"), "OxfordPets", str(tmp_path)
    cfg.INPUT.SIZE = (32, 32)
    kd = cfg.TRAINER.PROMPTKD
    kd.TEACHER_TRAINER, kd.TEACHER_DIR, kd.TEACHER_CONFIG, kd.TEACHER_BACKBONE = trainer, str(run_dir), str(yaml), clip_file
    for key, value in keys.items():
        kd[key] = value
    return cfg


def finished_run(tmp_path, clip_file, trainer="HostFakeCoOp", epochs=(1, 2), best=False):
    """A host run's output folder: its trainer built as its train.py would, the context set to
    seeded values per epoch, saved with Dassl's save_model (model.pth.tar-N, model-best)."""
    run_dir = tmp_path / "host_run"
    cfg = host_teacher.teacher_cfg(run_cfg(tmp_path, clip_file, trainer, tmp_path))
    builder = build_host_trainer(TRAINER_REGISTRY.get(trainer), cfg, CLASSES, torch.device("cpu"))
    for epoch in epochs:
        with torch.no_grad():
            builder.model.prompt_learner.ctx.copy_(torch.randn(builder.model.prompt_learner.ctx.shape,
                                                               generator=torch.Generator().manual_seed(epoch)))
        builder.save_model(epoch - 1, str(run_dir), val_result=0.0)
    if best:
        builder.save_model(epochs[-1] - 1, str(run_dir), val_result=0.0, model_name="model-best.pth.tar")
    return run_dir, builder.model


def reference_model(tmp_path, clip_file, run_dir, epoch, trainer="HostFakeCoOp"):
    """The host model as its own --eval-only would have it: built, then load_model(run, epoch)."""
    cfg = host_teacher.teacher_cfg(run_cfg(tmp_path, clip_file, trainer, run_dir))
    builder = build_host_trainer(TRAINER_REGISTRY.get(trainer), cfg, CLASSES, torch.device("cpu"))
    builder.load_model(str(run_dir), epoch=epoch)
    return builder.model.eval()


def test_class_vectors_and_scorer_reproduce_the_host_models_own_eval_logits(tmp_path, clip_files):
    run_dir, _ = finished_run(tmp_path, clip_files["teacher"])
    cfg = run_cfg(tmp_path, clip_files["teacher"], run_dir=run_dir)
    rng = torch.get_rng_state()
    teacher = host_teacher.build_host_teacher(cfg, CLASSES, torch.device("cpu"))
    assert torch.equal(torch.get_rng_state(), rng)  # the student's initialisation does not depend on the teacher

    stored = ClassVectors.load(teacher.vectors_path)
    assert teacher.vectors_path == os.path.join(cfg.OUTPUT_DIR, "teacher_export", "class_vectors_OxfordPets.pt")
    assert stored.classnames == CLASSES and stored.vectors.shape == (len(CLASSES), 96)
    who = stored.teacher
    assert (who["host_trainer"], who["checkpoint_epoch"], who["run"]) == ("HostFakeCoOp", 2, str(run_dir))
    assert who["backbone"] == clip_files["teacher"] and who["checkpoints"][0].endswith("model.pth.tar-2")

    host = reference_model(tmp_path, clip_files["teacher"], run_dir, epoch=2)
    assert who["fingerprint"] == host_teacher.learned_fingerprint(host)
    images = torch.randn(6, 3, 32, 32, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        expected = host(images)
    text_runs = []
    hook = teacher.scorer.host.text_encoder.transformer.register_forward_hook(lambda *a: text_runs.append(1))
    ours = teacher_logits(teacher.scorer.embed(images), torch.tensor(teacher.side.logit_scale), stored.vectors)
    hook.remove()
    assert not text_runs  # each step runs the image side only
    # Same weights, same images, both fp32: the two differ only by rounding (the pattern
    # check's bound, trainers/host_teacher.logits_tolerance: 16u + D·u32 of the scale, 1.9e-4
    # logits here); another epoch's context moves them by whole logits (asserted below).
    scale = teacher.scorer.logit_scale.exp().item()
    allowed = scale * host_teacher.logits_tolerance(torch.float32, 96)
    assert (ours - expected).abs().max().item() <= allowed
    other = reference_model(tmp_path, clip_files["teacher"], run_dir, epoch=1)
    with torch.no_grad():
        assert (other(images) - expected).abs().max().item() > 100 * allowed


def test_the_teacher_sees_the_runs_images_fitted_to_its_own_input(tmp_path, clip_files):
    """The host run was trained on 32 px images normalised with mean / std 0.5 (its
    TEACHER_CONFIG); this run's loader makes 24 px images with CLIP's normalisation: the
    teacher gets each batch resized and re-normalised to its own input."""
    run_dir, _ = finished_run(tmp_path, clip_files["teacher"])
    theirs = "INPUT:\n  SIZE: (32, 32)\n  INTERPOLATION: bicubic\n  PIXEL_MEAN: [0.5, 0.5, 0.5]\n  PIXEL_STD: [0.5, 0.5, 0.5]\n"
    cfg = run_cfg(tmp_path, clip_files["teacher"], run_dir=run_dir, teacher_yaml=theirs)
    cfg.INPUT.SIZE, cfg.INPUT.TRANSFORMS = (24, 24), ["random_flip", "normalize"]
    teacher = host_teacher.build_host_teacher(cfg, CLASSES, torch.device("cpu"))
    assert (teacher.fit.size, teacher.fit.resize, teacher.fit.renormalise) == ((32, 32), True, True)
    images = torch.randn(4, 3, 24, 24, generator=torch.Generator().manual_seed(3))
    pixels = images * torch.tensor(cfg.INPUT.PIXEL_STD).view(1, 3, 1, 1) + torch.tensor(
        cfg.INPUT.PIXEL_MEAN).view(1, 3, 1, 1)
    resized = F.interpolate((pixels - 0.5) / 0.5, size=(32, 32), mode="bicubic", align_corners=False, antialias=True)
    host = reference_model(tmp_path, clip_files["teacher"], run_dir, epoch=2)
    with torch.no_grad():
        expected = host(resized)
    ours = teacher_logits(teacher.scorer.embed(images), torch.tensor(teacher.side.logit_scale), teacher.vectors.vectors)
    # Rounding only: the bound above (9.5e-5 logits here; the re-normalisation's two fp32 forms
    # gave 4.8e-7 on a 2-core EPYC). A batch not fitted, or fitted with the run's settings,
    # is off by far more (0.07 logits with bilinear interpolation instead of the teacher's bicubic).
    scale = teacher.scorer.logit_scale.exp().item()
    assert (ours - expected).abs().max().item() <= scale * host_teacher.logits_tolerance(torch.float32, 96)


def test_load_epoch_minus_one_is_model_best_if_saved_else_the_last_epoch(tmp_path, clip_files):
    run_dir, _ = finished_run(tmp_path, clip_files["teacher"], epochs=(1, 2, 3))
    assert host_teacher.checkpoint_epoch(str(run_dir), ["prompt_learner"], -1) == 3
    assert host_teacher.checkpoint_epoch(str(run_dir), ["prompt_learner"], 2) == 2
    (run_dir / "prompt_learner" / "model-best.pth.tar").write_bytes(b"")
    assert host_teacher.checkpoint_epoch(str(run_dir), ["prompt_learner"], -1) is None  # the hosts' default
    empty = tmp_path / "empty" / "prompt_learner"
    empty.mkdir(parents=True)
    with pytest.raises(MissingFileError, match="no model-best.pth.tar and no model.pth.tar-N"):
        host_teacher.checkpoint_epoch(str(empty.parent), ["prompt_learner"], -1)


def test_a_teacher_whose_text_depends_on_the_image_is_refused(tmp_path, clip_files):
    run_dir, _ = finished_run(tmp_path, clip_files["teacher"], trainer="HostFakeCoCoOp")
    cfg = run_cfg(tmp_path, clip_files["teacher"], "HostFakeCoCoOp", run_dir)
    with pytest.raises(ConfigError, match=r"HostFakeCoCoOp cannot be a teacher.*called text_encoder 2 time\(s\).*"
                                          r"depends on the image"):
        host_teacher.build_host_teacher(cfg, CLASSES, torch.device("cpu"))
    assert not os.path.exists(os.path.join(cfg.OUTPUT_DIR, "teacher_export"))


def test_a_forward_of_another_pattern_is_refused_naming_the_trainer(tmp_path, clip_files):
    run_dir, _ = finished_run(tmp_path, clip_files["teacher"], trainer="HostFakeFixedScale")
    cfg = run_cfg(tmp_path, clip_files["teacher"], "HostFakeFixedScale", run_dir)
    with pytest.raises(ConfigError, match="HostFakeFixedScale cannot be a teacher.*not of that pattern"):
        host_teacher.build_host_teacher(cfg, CLASSES, torch.device("cpu"))


def test_a_load_model_that_loads_nothing_is_refused(tmp_path, clip_files):
    run_dir, _ = finished_run(tmp_path, clip_files["teacher"], trainer="HostFakeLoadsNothing")
    cfg = run_cfg(tmp_path, clip_files["teacher"], "HostFakeLoadsNothing", run_dir)
    with pytest.raises(ConfigError, match="left its learned weights as built"):
        host_teacher.build_host_teacher(cfg, CLASSES, torch.device("cpu"))


def test_settings_that_do_not_fit_the_host_run_are_errors_naming_them(tmp_path, clip_files):
    run_dir, _ = finished_run(tmp_path, clip_files["teacher"])
    # the host's default N_CTX (16) instead of the run's 3: its checkpoint does not fit
    cfg = run_cfg(tmp_path, clip_files["teacher"], run_dir=run_dir)
    (tmp_path / "plain.yaml").write_text("OPTIM:\n  MAX_EPOCH: 2\n")
    cfg.TRAINER.PROMPTKD.TEACHER_CONFIG = str(tmp_path / "plain.yaml")
    with pytest.raises(ConfigError, match="HostFakeCoOp.load_model.*must be the host run's own settings"):
        host_teacher.build_host_teacher(cfg, CLASSES, torch.device("cpu"))
    # no backbone: neither TEACHER_BACKBONE nor the YAML names one
    cfg.TRAINER.PROMPTKD.TEACHER_BACKBONE = ""
    with pytest.raises(ConfigError, match="TEACHER_BACKBONE is not set"):
        host_teacher.teacher_cfg(cfg)
    cfg.TRAINER.PROMPTKD.TEACHER_LOAD_EPOCH = 5
    cfg.TRAINER.PROMPTKD.TEACHER_BACKBONE = clip_files["teacher"]
    cfg.TRAINER.PROMPTKD.TEACHER_CONFIG = str(tmp_path / "hostfake.yaml")
    with pytest.raises(ConfigError, match="model.pth.tar-5"):
        host_teacher.build_host_teacher(cfg, CLASSES, torch.device("cpu"))


@pytest.mark.parametrize("key, value, message", [
    ("TEACHER_CACHE", "cache", "TEACHER_CACHE cannot be used with a host run.*not built for host teachers yet"),
    ("VOCABULARY", "vocab.pt", "VOCABULARY cannot be used with a host run"),
    ("FEATURE_LOSS", "cosine", "FEATURE_LOSS cosine is not supported with a host run"),
    ("CLASS_VECTORS", "v.pt", "CLASS_VECTORS cannot be used with a host run"),
    ("TEACHER_CONFIG", "", "set TRAINER.PROMPTKD.TEACHER_CONFIG to the trainer YAML"),
    ("TEACHER_LOAD_EPOCH", 0, "TEACHER_LOAD_EPOCH must be -1"),
    ("TEACHER_TRAINER", "PromptKDTeacher", "'PromptKDTeacher' is not a host codebase's trainer.*HostFakeCoOp"),
    ("TEACHER_TRAINER", "NoSuchTrainer", "'NoSuchTrainer' is not a registered trainer"),
])
def test_check_cfg_refuses_what_a_host_teacher_cannot_do(tmp_path, clip_files, key, value, message):
    cfg = run_cfg(tmp_path, clip_files["teacher"], run_dir=tmp_path)
    host_teacher.check_cfg(cfg)  # as given: accepted
    cfg.TRAINER.PROMPTKD[key] = value
    with pytest.raises(ConfigError, match=message):
        host_teacher.check_cfg(cfg)


def test_host_teacher_keys_without_teacher_trainer_are_an_error(tmp_path, clip_files):
    cfg = run_cfg(tmp_path, clip_files["teacher"], run_dir=tmp_path, TEACHER_TRAINER="")
    with pytest.raises(ConfigError, match="TEACHER_CONFIG is set but TEACHER_TRAINER is not"):
        host_teacher.check_cfg(cfg)


def test_promptkd_check_cfg_runs_the_host_teacher_checks(tmp_path, clip_files):
    """PromptKD's own check_cfg (what Dassl calls first when it builds the trainer) refuses a
    host teacher with the teacher cache before anything is built."""
    from promptkd.trainers.promptkd import PromptKD

    cfg = run_cfg(tmp_path, clip_files["teacher"], run_dir=tmp_path)
    PromptKD.check_cfg(PromptKD.__new__(PromptKD), cfg)  # accepted as it is
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE = str(tmp_path / "cache")
    with pytest.raises(ConfigError, match="TEACHER_CACHE cannot be used with a host run"):
        PromptKD.check_cfg(PromptKD.__new__(PromptKD), cfg)
