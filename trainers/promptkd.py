"""PromptKD (stage 2): distil a small CLIP image encoder from a teacher, without labels.

The teacher's class vectors were computed once by `PromptKDTeacher` (its export folder,
TRAINER.PROMPTKD.TEACHER_DIR). Each step runs the frozen teacher image tower (eval mode, no
autograd) and the student on the same augmented batch, scores both against the stored class
vectors, and minimises KD_WEIGHT · T² · KL(teacher ‖ student) / (B·C) (KD_WEIGHT auto: the
published weight of the dataset, `promptkd.trainers.config.kd_weight`). Labels are never read.
Evaluation and inference run the student and the class vectors only.

Views are reproducible (`trainers/view_loader.py`): with TRAINER.PROMPTKD.TEACHER_CACHE the
teacher's embeddings of each view are read from a cache (`promptkd cache` writes
it) and the teacher tower is never built; TEACHER_CACHE_WRITE fills the cache online.

Beyond the paper (docs/students.md): STUDENT names any prompt-learning method as the student
(`trainers/students.py`; it keeps its text tower and is scored on its own text features of the
same classes), LOSS the objective (forward / reverse / symmetric KL), FEATURE_LOSS and CE_WEIGHT
optional extra terms, and VOCABULARY class-agnostic distillation over the teacher's top-K
vocabulary entries (the dataset's class names are then used only to evaluate).

With a view bank (VIEWS_PER_IMAGE = K > 0) each image has K views and epoch e draws one; an
online run filling the cache runs the teacher only on views not embedded yet (after the first K
epochs, on none), reading the others back from the cache.
"""
from __future__ import annotations

import logging
import os

import random

import torch
import torch.nn.functional as F

from promptkd import distributed as dist_
from promptkd.deploy import hub
from promptkd import records
from promptkd.backbones import backbone_reference, load_backbone, load_image_tower
from promptkd.class_vectors import (IMAGE_SIDE_FILE, VOCABULARY_PREFIX, ClassVectors, ImageSide, check_pair,
                                    class_vectors_file, visual_fingerprint)
from promptkd.errors import ConfigError
from promptkd.image_inputs import TowerInput
from promptkd.losses import (DISTILL_LOSS_LABELS, DISTILL_LOSSES, FEATURE_LOSSES, distill_loss, feature_loss,
                             kd_loss, topk_logits)
from promptkd.precision import fp32_scoring
from promptkd.deploy.predictor import PredictorRecord, reference_tower
from promptkd.student import PromptKDStudent, TeacherImageScorer, load_published_student, teacher_logits
from promptkd.targets import (ENSEMBLE_RULES, TOPK_MODES, CachedTeacher, FillingTeacher, LiveTeacher, Views,
                              build_ensemble, check_ensemble_rule, check_same_classes, select_vocabulary)
from promptkd.teacher_cache import FORMATS, TeacherCache, error_check
from promptkd.trainers.base import PromptTrainer, check_allowed
from promptkd.trainers.config import grad_checkpoint_towers, kd_weight
from promptkd.trainers.cache_filler import cache_identity, cache_slots, fill_views
from promptkd.trainers.predictor_export import preprocess_from_cfg, save_predictor
from promptkd.trainers.prompt_learning import MethodExport
from promptkd.trainers.host_methods import is_host_trainer
from promptkd.trainers.host_teacher import build_host_teacher, check_cfg as check_host_teacher
from promptkd.trainers.students import PAPER_STUDENT, build_method_student, regulariser_note, student_trainer
from promptkd.trainers.pool_loader import SHARD_CACHE_REFUSED, build_pool, build_shard_loader, teacher_data
from promptkd.trainers.view_loader import build_view_loader, resolve_view_seed

logger = logging.getLogger("promptkd")

TEACHER_HINT = ("Produce it with the teacher: `bash scripts/promptkd/teacher_train.sh <dataset> <seed>` "
                "(or `python train.py --trainer PromptKDTeacher --eval-only --model-dir TEACHER_RUN ...` "
                "to export from a finished or published teacher), then set TRAINER.PROMPTKD.TEACHER_DIR "
                "to its export folder.")


class _OneTeacher:
    """The trainer as `fill_views` (trainers/cache_filler.py) sees it, with one teacher's cache
    and tower: each teacher of an ensemble fills its own cache through the same writer."""

    def __init__(self, trainer, cache, teacher):
        self._trainer, self.cache, self.teacher = trainer, cache, teacher

    def __getattr__(self, name):
        return getattr(self._trainer, name)


class PromptKD(MethodExport, PromptTrainer):
    CFG_NODE = "PROMPTKD"

    @property
    def paper_student(self) -> bool:
        return self.tcfg.STUDENT.lower() == PAPER_STUDENT

    @property
    def host_student(self) -> bool:
        """A host codebase's own trainer as the student (trainers/host_methods.py)."""
        return not self.paper_student and is_host_trainer(student_trainer(self.tcfg.STUDENT))

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        kd = cfg.TRAINER.PROMPTKD
        self.kd_weight, how = kd_weight(cfg)  # `auto`: the published weight of the dataset
        logger.info("%s", how)
        if kd.TEMPERATURE <= 0:
            raise ConfigError(f"TRAINER.PROMPTKD.TEMPERATURE must be > 0, got {kd.TEMPERATURE}.")
        paper = kd.STUDENT.lower() == PAPER_STUDENT
        if not paper:
            student_trainer(kd.STUDENT)  # a registered method, or an error listing them
        check_allowed("TRAINER.PROMPTKD.LOSS", kd.LOSS, DISTILL_LOSSES)
        check_allowed("TRAINER.PROMPTKD.FEATURE_LOSS", kd.FEATURE_LOSS, FEATURE_LOSSES)
        if kd.FEATURE_LOSS != "off" and not paper:
            raise ConfigError(f"TRAINER.PROMPTKD.FEATURE_LOSS {kd.FEATURE_LOSS} compares the student's projected "
                              f"feature with the teacher's embedding, but the {kd.STUDENT} student has no projector "
                              "to the teacher's width: use it with STUDENT promptkd, or set FEATURE_LOSS off.")
        if kd.CE_WEIGHT < 0 or kd.FEATURE_WEIGHT < 0:
            raise ConfigError("TRAINER.PROMPTKD.CE_WEIGHT and FEATURE_WEIGHT must be >= 0, got "
                              f"{kd.CE_WEIGHT} and {kd.FEATURE_WEIGHT}.")
        if kd.VOCABULARY:
            if kd.TOPK < 1:
                raise ConfigError(f"TRAINER.PROMPTKD.TOPK must be >= 1 with a VOCABULARY, got {kd.TOPK}.")
            if kd.CE_WEIGHT > 0:
                raise ConfigError("TRAINER.PROMPTKD.CE_WEIGHT needs the dataset's class names, which class-agnostic "
                                  "distillation (TRAINER.PROMPTKD.VOCABULARY) does not use: set one of them off.")
            if not kd.VOCABULARY.endswith(".pt"):
                raise ConfigError(f"TRAINER.PROMPTKD.VOCABULARY {kd.VOCABULARY}: give the teacher's class-vector file "
                                  "of the vocabulary (class_vectors_vocab_<name>.pt), which the teacher's export writes "
                                  "with TRAINER.EXPORT_VOCABULARY <names.txt> (e.g. train.py --trainer PromptKDTeacher "
                                  "--eval-only --model-dir TEACHER_RUN ... TRAINER.EXPORT_VOCABULARY names.txt).")
        if kd.TEACHER_CACHE_DTYPE == "topk" and (kd.VOCABULARY or kd.FEATURE_LOSS != "off"):
            raise ConfigError("TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE topk stores the teacher's logits over the dataset's "
                              "classes, not its embeddings, which FEATURE_LOSS and VOCABULARY need: use fp16 or fp32.")
        if paper and grad_checkpoint_towers(kd.GRAD_CHECKPOINT)[0]:
            raise ConfigError(f"TRAINER.PROMPTKD.GRAD_CHECKPOINT is '{kd.GRAD_CHECKPOINT}', but the PromptKD student "
                              "has no text tower (the teacher's text side is in its stored class vectors; only "
                              "the student's image tower trains): use off or image.")
        check_host_teacher(cfg)  # TEACHER_TRAINER: a host codebase's run as the teacher
        self.check_teachers(kd)
        if not kd.TEACHER_DIR and not kd.CLASS_VECTORS:
            raise ConfigError("TRAINER.PROMPTKD.TEACHER_DIR is not set. " + TEACHER_HINT)
        check_allowed("TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", kd.TEACHER_CACHE_DTYPE, FORMATS)
        if kd.TEACHER_CACHE_TOPK < 1:
            raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_CACHE_TOPK must be >= 1, got {kd.TEACHER_CACHE_TOPK}.")
        if kd.TEACHER_CACHE_WRITE and not kd.TEACHER_CACHE:
            raise ConfigError("TRAINER.PROMPTKD.TEACHER_CACHE_WRITE needs TRAINER.PROMPTKD.TEACHER_CACHE (the folder).")

    def build_data_loader(self):
        """Dassl's loaders; the train loader's views are a pure function of (view seed, epoch,
        image) and its `ViewSampler` shards itself under torchrun (run_epoch sets its epoch)."""
        super().build_data_loader()
        seed = resolve_view_seed(self.cfg, required=bool(self.tcfg.TEACHER_CACHE))
        transform = self.dm.train_loader_x.dataset.transform  # Dassl's train transform (INPUT.*)
        self.pool = build_pool(self)  # TRAINER.PROMPTKD.POOL (trainers/pool_loader.py); default: train_x itself
        if self.pool.streamed:
            if self.tcfg.TEACHER_CACHE:
                raise ConfigError(SHARD_CACHE_REFUSED)
            if self.tcfg.VIEWS_PER_IMAGE:
                raise ConfigError("TRAINER.PROMPTKD.VIEWS_PER_IMAGE with a WebDataset pool: a view bank draws views of "
                                  "a listed pool's images; set it 0, or unpack the shards and use POOL folder:PATH.")
            self.view_dataset, self.view_sampler, self.train_loader_x = build_shard_loader(
                self.cfg, self.pool, transform, seed)
        else:
            self.view_dataset, self.view_sampler, self.train_loader_x = build_view_loader(
                self.cfg, self.pool.items, transform, seed)
        k = self.view_dataset.views_per_image
        logger.info("Training views: a pure function of (view seed %d, %s, image); %d images.",
                    seed, f"view number in a bank of {k} per image, one drawn per epoch" if k else "epoch",
                    len(self.view_dataset))
        if k and not self.tcfg.TEACHER_CACHE:
            logger.info("TRAINER.PROMPTKD.VIEWS_PER_IMAGE %d without TRAINER.PROMPTKD.TEACHER_CACHE: the teacher "
                        "still runs on every step; set TEACHER_CACHE (and TEACHER_CACHE_WRITE True) to pay it "
                        "once per view.", k)
        if self.tcfg.CE_WEIGHT > 0 and self.pool.streamed:
            raise ConfigError("TRAINER.PROMPTKD.CE_WEIGHT needs labelled images, but a WebDataset pool has no labels: "
                              "use a split pool (train, train_base) or set CE_WEIGHT 0.")
        # the split's labels count from 0 within its class subset; the student scores all classes
        self.label_offset = self.num_base if self.cfg.DATASET.SUBSAMPLE_CLASSES == "new" else 0
        self.labelled = self.labelled_subset(seed) if self.tcfg.CE_WEIGHT > 0 else None

    def labelled_subset(self, seed: int) -> torch.Tensor | None:
        """The pool images whose label the cross-entropy reads: those of the split sources (a
        folder's images carry label -1, no label); CE_SHOTS K > 0: K per class of them, drawn
        with the view seed (the same images on every run). None: every image's label is used."""
        shots, items = self.tcfg.CE_SHOTS, self.pool.items
        has_label = [int(item.label) >= 0 for item in items]
        if not any(has_label):
            raise ConfigError(f"TRAINER.PROMPTKD.CE_WEIGHT needs labelled images, but the pool "
                              f"{[s.name for s in self.pool.sources]} has none (folder images carry no labels"
                              f"{', and the budget kept no image of the train split' if self.pool.budget else ''}): "
                              "add a split source (e.g. POOL \"['train', 'folder:DIR']\") or set CE_WEIGHT 0.")
        if shots == 0:
            raise ConfigError("TRAINER.PROMPTKD.CE_SHOTS 0 labels no image, so CE_WEIGHT would never apply: give "
                              "K > 0 images per class, -1 for every labelled image, or set CE_WEIGHT 0.")
        if shots < 0:
            if all(has_label):
                logger.info("Semi-supervised: cross-entropy (weight %g) on the labels of every training image.",
                            self.tcfg.CE_WEIGHT)
                return None
            logger.info("Semi-supervised: cross-entropy (weight %g) on the labels of the %d images of the split "
                        "sources; the pool's other %d images are unlabelled.", self.tcfg.CE_WEIGHT, sum(has_label),
                        len(items) - sum(has_label))
            return torch.tensor(has_label, dtype=torch.bool)
        by_class: dict[int, list[int]] = {}
        for index, item in enumerate(items):
            if has_label[index]:
                by_class.setdefault(int(item.label), []).append(index)
        rng, mask = random.Random(seed), torch.zeros(len(self.pool.items), dtype=torch.bool)
        for label in sorted(by_class):
            mask[rng.sample(by_class[label], min(shots, len(by_class[label])))] = True
        logger.info("Semi-supervised: cross-entropy (weight %g) on %d labelled images (%d per class), the rest "
                    "unlabelled.", self.tcfg.CE_WEIGHT, int(mask.sum()), shots)
        return mask

    def build_model(self):
        kd, cfg = self.tcfg, self.cfg
        backbone_mode = self.backbone_mode = self.setup_precision()
        # TEACHER_TRAINER: a finished run of a host codebase's trainer (trainers/host_teacher.py)
        self.host_teacher = build_host_teacher(cfg, self.all_classnames, self.device) \
            if kd.TEACHER_TRAINER else None
        if self.host_teacher is not None:
            vectors, side = self.host_teacher.vectors, self.host_teacher.side
            vectors_path = self.vectors_path = side_path = self.host_teacher.vectors_path
        elif not kd.CLASS_VECTORS and hub.names_model_folder(kd.TEACHER_DIR):  # a teacher's model folder
            vectors, side, folder = hub.teacher_export(kd.TEACHER_DIR)
            vectors_path = self.vectors_path = side_path = os.path.join(folder, hub.CONFIG_FILE)
            vectors.check_dataset(cfg.DATASET.NAME, self.all_classnames, source=f"class vectors in {folder}")
        else:
            vectors_path = self.vectors_path = kd.CLASS_VECTORS or class_vectors_file(kd.TEACHER_DIR, cfg.DATASET.NAME)
            side_path = os.path.join(kd.TEACHER_DIR or os.path.dirname(vectors_path), IMAGE_SIDE_FILE)
            vectors = ClassVectors.load(vectors_path, TEACHER_HINT)
            vectors.check_dataset(cfg.DATASET.NAME, self.all_classnames, source=f"class vectors in {vectors_path}")
            side = ImageSide.load(side_path, TEACHER_HINT)
        check_pair(vectors, side, vectors_path, side_path)
        self.check_teacher_protocol()
        exported = side.backbone.get("name") or side.backbone.get("path")
        if kd.TEACHER_NAME and kd.TEACHER_NAME != exported:
            logger.warning("TRAINER.PROMPTKD.TEACHER_NAME is %s but the teacher export was made with %s; "
                           "distilling from the export.", kd.TEACHER_NAME, exported)
        self.class_vectors = vectors.vectors.to(self.device, torch.float32)
        self.teacher_vectors = vectors
        self.backbone_ref = backbone_reference(cfg.MODEL.BACKBONE.NAME)
        logger.info("Class vectors: %s (%d classes x %d, teacher %s %s)", vectors_path, *vectors.vectors.shape,
                    vectors.teacher.get("backbone"), vectors.teacher.get("fingerprint"))

        self.vocabulary = self.load_vocabulary(side) if kd.VOCABULARY else None
        clip_model = None
        if self.paper_student:
            visual, logit_scale, preprocess = load_image_tower(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.WEIGHTS_DIR)
        elif self.host_student:  # a host codebase's trainer loads its own backbone (trainers/host_methods.py)
            preprocess = None
        else:
            clip_model, preprocess = load_backbone(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.WEIGHTS_DIR)
        if preprocess is not None:
            self.check_input(preprocess, f"student {cfg.MODEL.BACKBONE.NAME}")
        self.cached_in_epoch = {}  # TEACHER_CACHE_WRITE: views this epoch's steps added, per cache folder
        self.teacher_logit_scale = torch.tensor(side.logit_scale, dtype=torch.float32, device=self.device)
        # Where the targets come from (promptkd/targets.py): the step calls self.targets(views), whatever the source.
        count = 1 + len(kd.TEACHER_DIRS)  # TEACHER_DIRS: more teachers, an ensemble
        first, fit = self.build_teacher(0, count, vectors, side, preprocess, self.teacher_label(vectors, side))
        teachers, self.teacher_exports = [first], [(vectors, vectors_path, first.name)]
        for number, folder in enumerate(kd.TEACHER_DIRS, 1):
            more, more_path, more_side = self.load_teacher_export(folder, vectors, vectors_path)
            teachers.append(self.build_teacher(number, count, more, more_side, preprocess,
                                               self.teacher_label(more, more_side))[0])
            self.teacher_exports.append((more, more_path, teachers[-1].name))
        self.targets = build_ensemble(teachers, kd.TEMPERATURE, kd.ENSEMBLE_RULE, self.ensemble_weights,
                                      kd.ENSEMBLE_TEMPERATURE, kd.ENSEMBLE_CONFIDENCE)
        if count > 1:
            logger.info("Teachers: an ensemble of %d (%s), probabilities mixed by %s", count,
                        ", ".join(t.name for t in teachers), self.targets.describe())
        self.teacher, self.cache = getattr(first, "tower", None), getattr(first, "cache", None)
        if self.paper_student:
            self.build_paper_student(visual, logit_scale, vectors.width)
        else:
            self.build_method_student(clip_model, vectors.classnames)
        logger.info("Teacher image side %s (depth %d, input %s); objective %s%s%s%s", side.backbone,
                    len(side.prompts), fit, kd.LOSS,
                    f" + {kd.FEATURE_WEIGHT:g} x {kd.FEATURE_LOSS} feature term" if kd.FEATURE_LOSS != "off" else "",
                    f" + {kd.CE_WEIGHT:g} x cross-entropy" if kd.CE_WEIGHT > 0 else "",
                    f"; class-agnostic: the teacher's top {kd.TOPK} of {len(self.vocabulary.classnames)} vocabulary "
                    "names, the dataset's class names unseen in training" if self.vocabulary else "")

    def build_teacher(self, number: int, count: int, vectors: ClassVectors, side: ImageSide, preprocess,
                      name: str):
        """Teacher `number` of `count` as a source of targets (promptkd/targets.py), and how its
        input is fitted: the cache read (TEACHER_CACHE; no tower built), the live tower, or the
        live tower filling the cache (TEACHER_CACHE_WRITE). With several teachers each has its own
        cache, TEACHER_CACHE/teacher<number>; one teacher's cache is TEACHER_CACHE itself."""
        kd, cfg = self.tcfg, self.cfg
        if number == 0:
            class_vectors, scale = self.class_vectors, self.teacher_logit_scale
        else:
            class_vectors = vectors.vectors.to(self.device, torch.float32)
            scale = torch.tensor(side.logit_scale, dtype=torch.float32, device=self.device)
        scored = self.vocabulary_vectors if self.vocabulary is not None else class_vectors
        folder = kd.TEACHER_CACHE if count == 1 else os.path.join(kd.TEACHER_CACHE, f"teacher{number}")
        if kd.TEACHER_CACHE:
            identity = cache_identity(cfg, side, self.pool.items, self.view_dataset, self.prec, class_vectors)
        if kd.TEACHER_CACHE and not kd.TEACHER_CACHE_WRITE:
            cache = TeacherCache.open(folder, identity, cache_slots(cfg))
            logger.info("Teacher %s: embeddings read from the cache %s; the teacher image tower is not built "
                        "(no teacher weights are loaded).", name, folder)
            return CachedTeacher(cache, scored, scale, self.device, name), "from the cache"
        host = number == 0 and self.host_teacher is not None
        if host:  # the host model's own forward, its text features cached
            tower, fit = self.host_teacher.scorer, self.host_teacher.fit
        else:
            # Built aside from the global RNG: the student starts the same with or without it.
            with torch.random.fork_rng(devices=[]):
                teacher_visual, teacher_preprocess = side.load_tower(cfg.MODEL.WEIGHTS_DIR,
                                                                     cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
                # The teacher sees the student's augmented view, resized / re-normalised for it if needed.
                fit = TowerInput(preprocess or teacher_preprocess, teacher_preprocess)
                tower = TeacherImageScorer(teacher_visual, torch.tensor(side.logit_scale), side.prompts,
                                           input_adapter=None if fit.identity else fit)
            self.precision.cast_frozen(tower.image_encoder.visual)  # fp16; amp / bf16: compute dtype (a host
            # teacher keeps its own precision)
        tower.to(self.device)
        if not kd.TEACHER_CACHE:
            return LiveTeacher(tower, scored, scale, name), fit
        cache = TeacherCache.create(folder, identity, len(self.view_dataset), cache_slots(cfg), side.width,
                                    kd.TEACHER_CACHE_DTYPE, kd.TEACHER_CACHE_SHARD_SIZE, kd.VIEWS_PER_IMAGE)
        cache.check = error_check(cache.dtype, class_vectors, side.logit_scale, kd.TEMPERATURE,
                                  kd.TEACHER_CACHE_MAX_LOGIT_ERROR, kd.TEACHER_CACHE_MAX_PROB_ERROR, cache.spec)
        if cache.gives_logits:  # topk: the cache stores the teacher's logits of each view
            cpu_scale, cpu_vectors = scale.cpu(), class_vectors.cpu()
            cache.scorer = lambda e: teacher_logits(torch.from_numpy(e), cpu_scale, cpu_vectors).numpy()
        member = _OneTeacher(self, cache, tower)
        source = FillingTeacher(tower, cache, scored, scale, self.device,
                                store=lambda slots, indices, embeddings: self.cache_views(slots, indices, embeddings,
                                                                                          cache),
                                finish=lambda epoch: self.finish_cache_epoch(member, epoch),
                                bank=bool(self.view_dataset.views_per_image), name=name)
        source.writer = member  # `promptkd cache` fills each teacher's cache through it
        return source, fit

    def cache_writers(self) -> list[_OneTeacher]:
        """TEACHER_CACHE_WRITE: one `fill_views` target per teacher (its cache and tower)."""
        return [t.writer for t in self.targets.members if getattr(t, "writer", None) is not None]

    def check_teachers(self, kd) -> None:
        """TEACHER_DIRS (an ensemble) and its rule; what an ensemble cannot be combined with."""
        check_allowed("TRAINER.PROMPTKD.TOPK_MODE", kd.TOPK_MODE, TOPK_MODES)
        check_allowed("TRAINER.PROMPTKD.ENSEMBLE_RULE", kd.ENSEMBLE_RULE, ENSEMBLE_RULES)
        dirs = list(kd.TEACHER_DIRS)
        self.ensemble_weights = check_ensemble_rule(kd.ENSEMBLE_RULE, list(kd.ENSEMBLE_WEIGHTS),
                                                    kd.ENSEMBLE_TEMPERATURE, kd.ENSEMBLE_CONFIDENCE, 1 + len(dirs))
        if not dirs:
            return
        first = kd.TEACHER_DIR or kd.CLASS_VECTORS
        for folder in dirs:
            if not isinstance(folder, str) or not folder:
                raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_DIRS {dirs}: give a list of teacher export folders.")
        paths = [os.path.abspath(d) for d in [first] + dirs]
        if len(set(paths)) != len(paths):
            raise ConfigError(f"TRAINER.PROMPTKD.TEACHER_DIRS {dirs} lists a teacher twice (TEACHER_DIR is {first} "
                              "and is the first teacher already): list each other teacher once.")
        for key, why in (("VOCABULARY", "each teacher would need its own vocabulary export"),
                         ("FEATURE_LOSS", "the teachers' embeddings have different widths and spaces")):
            if kd[key] not in ("", "off"):
                raise ConfigError(f"TRAINER.PROMPTKD.{key} {kd[key]} with several teachers (TEACHER_DIRS {dirs}): "
                                  f"{why}; use one teacher, or set {key} {'off' if key == 'FEATURE_LOSS' else ''!r}.")

    def load_teacher_export(self, folder: str, first: ClassVectors, first_path: str):
        """Another teacher of an ensemble (TEACHER_DIRS): its class vectors and image side, from
        an export folder or a teacher's model folder; its classes must be the first teacher's,
        in the same order (the error names both exports)."""
        cfg = self.cfg
        if hub.names_model_folder(folder):
            vectors, side, real = hub.teacher_export(folder)
            path = side_path = os.path.join(real, hub.CONFIG_FILE)
        else:
            path, side_path = class_vectors_file(folder, cfg.DATASET.NAME), os.path.join(folder, IMAGE_SIDE_FILE)
            vectors = ClassVectors.load(path, TEACHER_HINT)
            side = ImageSide.load(side_path, TEACHER_HINT)
        check_same_classes(first.classnames, first_path, vectors.classnames, path)
        vectors.check_dataset(cfg.DATASET.NAME, self.all_classnames, source=f"class vectors in {path}")
        check_pair(vectors, side, path, side_path)
        return vectors, path, side

    @staticmethod
    def teacher_label(vectors: ClassVectors, side: ImageSide) -> str:
        """How logs, run.json and the results tables name a teacher: its backbone, and
        `zero-shot` for a zero-shot export."""
        backbone = os.path.basename(str(side.backbone.get("name") or side.backbone.get("path") or "teacher")) \
            if os.path.sep in str(side.backbone.get("name") or side.backbone.get("path") or "") \
            else str(side.backbone.get("name") or "teacher")
        prompts = vectors.teacher.get("prompts") or {}
        # a zero-shot export: no visual prompts, no text prompts (PromptKDTeacher ZERO_SHOT, depth 0)
        zero_shot = not side.prompts and not prompts.get("depth_text") and "host_trainer" not in vectors.teacher
        if zero_shot and prompts.get("templates"):  # a template ensemble (ZERO_SHOT_TEMPLATES)
            return f"{backbone} zero-shot ({os.path.basename(str(prompts['templates']))})"
        return f"{backbone} zero-shot" if zero_shot else backbone

    def build_paper_student(self, visual, logit_scale, class_dim: int):
        kd = self.tcfg
        self.model = PromptKDStudent(visual, logit_scale, class_dim=class_dim,
                                     n_ctx=kd.N_CTX_VISION, depth=kd.PROMPT_DEPTH_VISION)
        self.precision.cast_frozen(self.model.image_encoder.visual)  # fp16: the published pure-fp16 backbone
        self.model.to(self.device)
        self.register_trainable(self.model)
        image_checkpoint = grad_checkpoint_towers(kd.GRAD_CHECKPOINT)[1]
        self.model.image_encoder.grad_checkpoint = image_checkpoint and self.model.image_encoder.depth > 0
        logger.info("Activation checkpointing (TRAINER.PROMPTKD.GRAD_CHECKPOINT %s): student image tower %s",
                    kd.GRAD_CHECKPOINT, "on" if self.model.image_encoder.grad_checkpoint else "off")
        logger.info("Student %s -> projector %d -> %d", self.cfg.MODEL.BACKBONE.NAME,
                    self.model.image_encoder.output_dim, class_dim)

    def build_method_student(self, clip_model, classnames: list[str]):
        """A prompt-learning method as the student, on the teacher's classes in the teacher's
        order (or on the vocabulary: class-agnostic), with its own text tower."""
        kd = self.tcfg
        names = self.vocabulary.classnames if self.vocabulary else classnames
        if self.host_student and self.vocabulary:
            raise ConfigError(f"TRAINER.PROMPTKD.VOCABULARY: the host's {kd.STUDENT} builds its prompts for a fixed list "
                              "of classes, but class-agnostic distillation scores other names every step: use one of "
                              "our methods (PKD.<name>) as the student, or no VOCABULARY.")
        self.model, cls = build_method_student(kd.STUDENT, self.cfg, clip_model, names, kd.STUDENT_REGULARISERS,
                                               self.device)
        if self.vocabulary and getattr(self.model, "class_specific", False):
            raise ConfigError(f"A class-specific {cls.__name__} context (CSC) learns one context per class, but "
                              "class-agnostic distillation scores a different set of vocabulary names every step: "
                              f"set TRAINER.{cls.CFG_NODE}.CSC False.")
        if list(self.model.classnames) != list(names):  # the logits' order is the teacher's
            raise ConfigError(f"The {cls.__name__} student's classes are not the teacher's, in the teacher's order.")
        if not self.host_student:  # a host's model keeps the precision it chose
            self.precision.cast_frozen(self.model.clip)
        self.model.to(self.device)
        self.register_trainable(self.model)
        text, image = grad_checkpoint_towers(kd.GRAD_CHECKPOINT)
        on = self.model.set_grad_checkpoint(text, image)
        logger.info("Student %s on %s (TRAINER.%s.*), %s; scored on its own text features of %d %s, encoded once "
                    "per step; activation checkpointing (GRAD_CHECKPOINT %s): text %s, image %s", cls.__name__,
                    self.cfg.MODEL.BACKBONE.NAME, getattr(cls, "CFG_NODE", cls.__name__.upper()),
                    regulariser_note(self.model), len(names),
                    "vocabulary names" if self.vocabulary else "classes", kd.GRAD_CHECKPOINT,
                    *("on" if on[t] else "off" for t in ("text", "image")))

    def load_vocabulary(self, side) -> ClassVectors:
        """The teacher's class vectors of a vocabulary (class-agnostic distillation): made by this
        run's teacher (same fingerprint), for a vocabulary rather than a dataset."""
        path = self.tcfg.VOCABULARY
        vocabulary = ClassVectors.load(path, "Write it with the teacher's export: TRAINER.EXPORT_VOCABULARY names.txt.")
        if not vocabulary.dataset.startswith(VOCABULARY_PREFIX):
            raise ConfigError(f"TRAINER.PROMPTKD.VOCABULARY {path} holds the class vectors of dataset "
                              f"{vocabulary.dataset}, not of a vocabulary: export one with TRAINER.EXPORT_VOCABULARY.")
        from promptkd.class_vectors import indistinct_message, indistinct_names
        groups = indistinct_names(vocabulary.classnames)
        if groups:  # exported before such names were refused at export
            raise ConfigError(f"TRAINER.PROMPTKD.VOCABULARY {path} holds {indistinct_message(groups)}. Keep one name "
                              "of each group in the names file and export it again (TRAINER.EXPORT_VOCABULARY).")
        if vocabulary.teacher.get("fingerprint") != side.fingerprint:
            raise ConfigError(f"TRAINER.PROMPTKD.VOCABULARY {path} was exported by a teacher with weights "
                              f"{vocabulary.teacher.get('fingerprint')}, but the teacher in TEACHER_DIR has "
                              f"{side.fingerprint}: export the vocabulary with the same teacher.")
        self.vocabulary_vectors = vocabulary.vectors.to(self.device, torch.float32)
        logger.info("Class-agnostic: vocabulary %s, %d names (%s)", path, len(vocabulary.classnames),
                    vocabulary.dataset)
        return vocabulary

    def check_teacher_protocol(self):
        """A few-shot student (TRAINER.PROTOCOL few_shot) learns from a teacher of the same protocol:
        K labelled shots of all classes. Its record's labelled_shots is the teacher's K."""
        if records.protocol(self.cfg) != "few_shot":
            return
        data = teacher_data(self.tcfg.TEACHER_DIR)
        if data is None:
            logger.warning("TRAINER.PROTOCOL few_shot: the teacher at %s has no run.json, so its labelled shots are "
                           "unknown; the results tables list this run as unidentified.",
                           self.tcfg.TEACHER_DIR or self.tcfg.CLASS_VECTORS)
        elif data.get("protocol") != "few_shot" or data.get("train_classes") != "all":
            raise ConfigError(
                f"TRAINER.PROTOCOL few_shot: the teacher at {self.tcfg.TEACHER_DIR} was trained under protocol "
                f"{data.get('protocol')} on {data.get('train_classes')} classes; a few-shot student needs a few-shot "
                "teacher (TRAINER.PROTOCOL few_shot, DATASET.SUBSAMPLE_CLASSES all, DATASET.NUM_SHOTS K). "
                "scripts/promptkd/few_shot.sh DATASET SEED K trains one.")

    def record_fields(self) -> dict:
        """What run.json says of the student, the objective, the pool (sources, image count,
        budget, leakage check) and the teacher's data (promptkd.records)."""
        kd = self.tcfg
        student = PAPER_STUDENT if self.paper_student else student_trainer(kd.STUDENT).__name__
        data = teacher_data(kd.TEACHER_DIR)
        return {"student": student, "objective": kd.LOSS, "objective_label": self.method_label(),
                # the labelled shots per class behind this run: its teacher's (the pool's labels are not read)
                "labelled_shots": (data or {}).get("num_shots"),
                "feature_loss": kd.FEATURE_LOSS if kd.FEATURE_LOSS != "off" else None,
                "ce_weight": kd.CE_WEIGHT, "labels_used": kd.CE_WEIGHT > 0,
                "class_names_seen": not kd.VOCABULARY, "vocabulary": kd.VOCABULARY or None,
                "topk": kd.TOPK if kd.VOCABULARY else None,
                "student_regularisers": None if self.paper_student else bool(getattr(self.model, "regularise", False)),
                "pool": self.pool.record(), "teacher_data": data, **self.ensemble_fields()}

    def ensemble_fields(self) -> dict:
        """run.json of a run with several teachers: every teacher, and the rule; of KDPL's
        batch-level vocabulary: the mode. Nothing for one teacher and per-image top-K."""
        out = {"topk_mode": "batch"} if self.tcfg.VOCABULARY and self.tcfg.TOPK_MODE == "batch" else {}
        if len(self.teacher_exports) > 1:
            out["teachers"] = [{"name": name, **records.teacher_identity(v.teacher, path)}
                               for v, path, name in self.teacher_exports]
            out["ensemble"] = self.targets.describe()
        return out

    def method_label(self) -> str | None:
        """How the results tables name this run when it is not the paper's recipe,
        e.g. PromptKD→CoOp (sym-KL); None for the paper's student and objective."""
        kd = self.tcfg
        extras = [DISTILL_LOSS_LABELS[kd.LOSS]] * (kd.LOSS != "kl") + [f"+{kd.FEATURE_LOSS}"] * (
            kd.FEATURE_LOSS != "off") + ["+CE"] * (kd.CE_WEIGHT > 0) + [f"class-agnostic top-{kd.TOPK}" + (
                " per batch" if kd.TOPK_MODE == "batch" else "")] * bool(kd.VOCABULARY)
        if len(kd.TEACHER_DIRS):  # the ensemble, e.g. "ensemble mean_prob of ViT-L/14 + ViT-B/32 zero-shot"
            names = [name for _, _, name in getattr(self, "teacher_exports", [])] or [
                kd.TEACHER_DIR or kd.CLASS_VECTORS, *kd.TEACHER_DIRS]
            extras.append(f"ensemble {kd.ENSEMBLE_RULE} of {' + '.join(names)}")
        if self.paper_student and not extras:
            return None
        name = "PromptKD" + ("" if self.paper_student else "→" + student_trainer(kd.STUDENT).__name__)
        return name + (f" ({', '.join(extras)})" if extras else "")

    def teacher_identity(self):
        return records.teacher_identity(self.teacher_vectors.teacher, self.vectors_path)

    def forward_backward(self, batch):
        images = batch["img"].to(self.device, non_blocking=True)  # pinned on a GPU; labels only for CE_WEIGHT > 0
        kd = self.tcfg
        with self.autocast():
            # the teacher's logits (and embeddings), wherever they come from (promptkd/targets.py)
            targets = self.targets(Views.of_batch(batch, images))
            t_logits, embeddings = targets.logits, targets.embeddings
            terms = {}
            if self.vocabulary is not None:
                student_logits, t_logits = self.vocabulary_logits(images, t_logits)
            elif self.paper_student:
                if kd.FEATURE_LOSS != "off":
                    student_logits, features = self.train_model(images, self.class_vectors, with_features=True)
                    terms["feature_loss"] = feature_loss(features, embeddings, kd.FEATURE_LOSS, kd.FEATURE_WEIGHT)
                else:
                    student_logits = self.train_model(images, self.class_vectors)  # DDP wrapper under torchrun
            else:
                out = self.train_model(images)  # its own text features of the teacher's classes, once per step
                student_logits = out["logits"]
                terms.update(self.model.extra_losses(out, None) if getattr(self.model, "regularise", False) else {})
        # Both sides' logits and the loss are fp32, outside autocast (promptkd.precision).
        if kd.LOSS == "kl" and not terms and kd.CE_WEIGHT == 0:  # the published loss, exactly
            loss = kd_loss(student_logits, t_logits, kd.TEMPERATURE, self.kd_weight)
            self.backward_and_step(loss)
            return {"kd_loss": loss.detach()}  # read by the loop every N steps (no sync here)
        terms = {"kd_loss": distill_loss(student_logits, t_logits, kd.LOSS, kd.TEMPERATURE, self.kd_weight), **terms}
        if kd.CE_WEIGHT > 0:
            terms["ce"] = self.labelled_ce(student_logits, batch)
        loss = sum(terms.values())
        self.backward_and_step(loss)
        return {**{k: v.detach() for k, v in terms.items()}, "loss": loss.detach()}

    def vocabulary_logits(self, images, t_full):
        """Class-agnostic: (student, teacher) logits at the teacher's top-K vocabulary entries of
        each image (TOPK_MODE image), or of the batch by the teacher's mean probability (TOPK_MODE
        batch, KDPL's). `t_full`: the teacher's logits over the whole vocabulary. A method student
        encodes only the names some image of the batch needs."""
        kd = self.tcfg
        if kd.TOPK_MODE == "batch":
            needed = select_vocabulary(t_full, kd.TOPK, "batch", kd.TEMPERATURE)  # ascending
            if self.paper_student:
                return self.train_model(images, self.vocabulary_vectors)[:, needed], t_full[:, needed]
            self.model.classnames = [self.vocabulary.classnames[i] for i in needed.tolist()]
            return self.train_model(images)["logits"], t_full[:, needed]
        if self.paper_student:
            return topk_logits(self.train_model(images, self.vocabulary_vectors), t_full, kd.TOPK)
        top, index = t_full.topk(min(kd.TOPK, t_full.shape[-1]), dim=-1)
        needed = torch.unique(index)  # sorted
        self.model.classnames = [self.vocabulary.classnames[i] for i in needed.tolist()]
        student = self.train_model(images)["logits"]  # [B, len(needed)]
        return student.gather(-1, torch.searchsorted(needed, index)), top

    def labelled_ce(self, student_logits, batch) -> torch.Tensor:
        """CE_WEIGHT x cross-entropy over the batch's labelled images (CE_SHOTS), in fp32; 0 (with
        the graph kept, for DDP) when the batch has none."""
        labels = batch["label"].to(self.device)
        with fp32_scoring(student_logits):
            logits = student_logits.float()
            keep = labels >= 0  # a pool folder's images carry label -1
            if self.labelled is not None:
                keep &= self.labelled[torch.as_tensor(batch["index"])].to(self.device)
            if not keep.any():
                return logits.sum() * 0.0
            if not keep.all():
                logits, labels = logits[keep], labels[keep]
            return self.tcfg.CE_WEIGHT * F.cross_entropy(logits, labels + self.label_offset)

    def cache_views(self, epochs, indices, embeddings, cache=None):
        """TEACHER_CACHE_WRITE: keep the teacher's embeddings of this step's views in `cache`
        (default: the run's, the first teacher's). Under DDP
        every rank's views go to rank 0, which alone writes the cache (each rank holds only
        its share of a shard, so none could complete it). They travel as tensors (`gather_rows`)."""
        bank, cache = bool(self.view_dataset.views_per_image), self.cache if cache is None else cache
        if dist_.is_distributed():
            some = embeddings is not None and len(indices) > 0
            epochs, indices, embeddings = dist_.gather_rows(torch.as_tensor(epochs) if some else None,
                                                            torch.as_tensor(indices) if some else None,
                                                            embeddings.float() if some else None)
            if not dist_.is_main():
                # With a view bank every rank must know which views are stored (it skips their
                # teacher forward), so it keeps them too; only rank 0 writes.
                if bank and len(indices):
                    cache.add_async(epochs, indices, embeddings, write=False)
                return
        if embeddings is None or not len(indices):
            return
        cache.add_async(epochs, indices, embeddings)  # copied to the host and written off the step's thread
        self.cached_in_epoch[cache.directory] = self.cached_in_epoch.get(cache.directory, 0) + len(indices)

    def finish_cache_epoch(self, member: _OneTeacher, epoch: int) -> None:
        """TEACHER_CACHE_WRITE, at an epoch's end: the views training did not reach (the tail
        its loader dropped) are embedded into `member`'s cache by rank 0."""
        cache = member.cache
        if dist_.is_main():
            dropped = fill_views(member, [epoch], drawn=True)
            logger.info("Teacher cache %s, epoch %d: %d views embedded in training, %d that it dropped after it",
                        cache.directory, epoch + 1, self.cached_in_epoch.get(cache.directory, 0), dropped)
            self.cached_in_epoch[cache.directory] = 0
            cache.flush()  # every view on disk (the background writer) before the others re-read it
        dist_.barrier()  # the other ranks wait while rank 0 embeds them
        if not dist_.is_main() and self.view_dataset.views_per_image:
            cache.refresh()  # the shards rank 0 has written (with the views it just added)

    def after_epoch(self):
        self.targets.end_epoch(self.epoch)  # a source filling the cache completes the epoch's views
        super().after_epoch()

    @torch.no_grad()
    def test(self, split=None):
        if not self.paper_student:  # its own text features of every class, once per evaluation
            self.set_model_mode("eval")
            self.model.prepare_eval(self.all_classnames)
        return super().test(split)

    def model_inference(self, images):
        if not self.paper_student:
            return self.model.eval_logits(images)
        return self.model(images, self.class_vectors)

    def finalize_model(self, eval_only: bool = False):
        """The student is final: write its predictor.pt (promptkd.deploy.predict / export_model), once;
        a method student exports like its method (class vectors of every class, image side)."""
        if dist_.is_main():
            if self.paper_student:
                self.save_student_predictor()
            elif self.host_student:
                logger.info("The host's %s student exports no class vectors (its text side is its own code); its "
                            "weights are the checkpoints in %s.", self.tcfg.STUDENT, self.output_dir)
            else:
                self.export()
        dist_.barrier()

    def save_student_predictor(self):
        fingerprint = ""
        if self.precision.frozen_dtype != torch.float32:  # the fp32 weights' fingerprint, which predict checks
            trusted = self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS
            fingerprint = visual_fingerprint(reference_tower(self.backbone_ref, self.cfg.MODEL.WEIGHTS_DIR, trusted)[0])
        record = PredictorRecord.for_student(self.model, self.teacher_vectors, self.backbone_ref,
                                             preprocess_from_cfg(self.cfg), self.cfg.TRAINER.NAME,
                                             self.cfg.MODEL.WEIGHTS_DIR, fingerprint)
        save_predictor(self.cfg, record)

    def load_published(self, path: str):
        """A published PromptKD student (`VLPromptLearner/model*.pth.tar`; layout in docs/running.md)."""
        if not self.paper_student:
            raise ConfigError(f"{path} is a published PromptKD student; load it with TRAINER.PROMPTKD.STUDENT promptkd.")
        load_published_student(self.model, path, self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
        self.backbone_ref = {"kind": "published_student", "path": os.path.abspath(path)}
        logger.info("Loaded published PromptKD student %s (backbone weights from the checkpoint)", path)
