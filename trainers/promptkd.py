"""PromptKD (stage 2): distil a small CLIP image encoder from a teacher, without labels.

The teacher's class vectors were computed once by `PromptKDTeacher` (its export folder,
TRAINER.PROMPTKD.TEACHER_DIR). Each step runs the frozen teacher image tower (eval mode, no
autograd) and the student on the same augmented batch, scores both against the stored class
vectors, and minimises KD_WEIGHT · T² · KL(teacher ‖ student) / (B·C). Labels are never read.
Evaluation and inference run the student and the class vectors only.

Views are reproducible (`trainers/view_data.py`): with TRAINER.PROMPTKD.TEACHER_CACHE the
teacher's embeddings of each view are read from a cache (`trainers/teacher_cache.py` writes
it) and the teacher tower is never built; TEACHER_CACHE_WRITE fills the cache online.
"""
from __future__ import annotations

import logging
import os

import torch
from dassl.engine import TRAINER_REGISTRY

from promptkd.backbones import clip, read_clip_state, visual_from_state_dict
from promptkd.class_vectors import IMAGE_SIDE_FILE, ClassVectors, ImageSide, check_pair, class_vectors_file
from promptkd.losses import kd_loss
from promptkd.errors import ConfigError
from promptkd.student import PromptKDStudent, TeacherImageScorer, load_published_student, teacher_logits
from promptkd.teacher_cache import DTYPES, TeacherCache
from trainers.base import PromptTrainer, _allowed
from trainers.teacher_cache import cache_identity, fill_views
from trainers.view_data import build_view_loader, resolve_view_seed

logger = logging.getLogger("promptkd")

TEACHER_HINT = ("Produce it with the teacher: `bash scripts/promptkd/teacher_train.sh <dataset> <seed>` "
                "(or `python train.py --trainer PromptKDTeacher --eval-only --model-dir TEACHER_RUN ...` "
                "to export from a finished or published teacher), then set TRAINER.PROMPTKD.TEACHER_DIR "
                "to its export folder.")


@TRAINER_REGISTRY.register()
class PromptKD(PromptTrainer):
    CFG_NODE = "PROMPTKD"

    def check_cfg(self, cfg):
        super().check_cfg(cfg)
        kd = cfg.TRAINER.PROMPTKD
        if kd.KD_WEIGHT < 0:
            raise ValueError(f"TRAINER.PROMPTKD.KD_WEIGHT must be >= 0, got {kd.KD_WEIGHT}.")
        if kd.TEMPERATURE <= 0:
            raise ValueError(f"TRAINER.PROMPTKD.TEMPERATURE must be > 0, got {kd.TEMPERATURE}.")
        if not kd.TEACHER_DIR and not kd.CLASS_VECTORS:
            raise ValueError("TRAINER.PROMPTKD.TEACHER_DIR is not set. " + TEACHER_HINT)
        _allowed("TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", kd.TEACHER_CACHE_DTYPE, tuple(DTYPES))
        if kd.TEACHER_CACHE_WRITE and not kd.TEACHER_CACHE:
            raise ConfigError("TRAINER.PROMPTKD.TEACHER_CACHE_WRITE needs TRAINER.PROMPTKD.TEACHER_CACHE (the folder).")

    def build_data_loader(self):
        super().build_data_loader()
        seed = resolve_view_seed(self.cfg, required=bool(self.tcfg.TEACHER_CACHE))
        transform = self.dm.train_loader_x.dataset.transform  # Dassl's train transform (INPUT.*)
        self.view_dataset, self.view_sampler, self.train_loader_x = build_view_loader(
            self.cfg, self.dm.dataset.train_x, transform, seed)
        logger.info("Training views: a pure function of (view seed %d, epoch, image); %d images.",
                    seed, len(self.view_dataset))

    def before_epoch(self):
        self.view_sampler.set_epoch(self.epoch)

    def build_model(self):
        kd, cfg = self.tcfg, self.cfg
        backbone_mode = self.setup_precision()
        vectors_path = kd.CLASS_VECTORS or class_vectors_file(kd.TEACHER_DIR, cfg.DATASET.NAME)
        side_path = os.path.join(kd.TEACHER_DIR or os.path.dirname(vectors_path), IMAGE_SIDE_FILE)
        vectors = ClassVectors.load(vectors_path, TEACHER_HINT)
        vectors.check_dataset(cfg.DATASET.NAME, self.all_classnames, source=f"class vectors in {vectors_path}")
        side = ImageSide.load(side_path, TEACHER_HINT)
        check_pair(vectors, side, vectors_path, side_path)
        exported = side.backbone.get("name") or side.backbone.get("path")
        if kd.TEACHER_NAME and kd.TEACHER_NAME != exported:
            logger.warning("TRAINER.PROMPTKD.TEACHER_NAME is %s but the teacher export was made with %s; "
                           "distilling from the export.", kd.TEACHER_NAME, exported)
        self.class_vectors = vectors.vectors.to(self.device, torch.float32)
        logger.info("Class vectors: %s (%d classes x %d, teacher %s %s)", vectors_path, *vectors.vectors.shape,
                    vectors.teacher.get("backbone"), vectors.teacher.get("fingerprint"))

        self.teacher, self.cache = None, None
        self.teacher_logit_scale = torch.tensor(side.logit_scale, dtype=torch.float32, device=self.device)
        if kd.TEACHER_CACHE:
            identity = cache_identity(cfg, side, self.dm.dataset.train_x, self.view_dataset, self.prec)
        if kd.TEACHER_CACHE and not kd.TEACHER_CACHE_WRITE:
            self.cache = TeacherCache.open(kd.TEACHER_CACHE, identity, cfg.OPTIM.MAX_EPOCH)
            logger.info("Teacher: embeddings read from the cache %s; the teacher image tower is not built "
                        "(no teacher weights are loaded).", kd.TEACHER_CACHE)
        else:
            # Built aside from the global RNG: the student starts the same with or without it.
            with torch.random.fork_rng(devices=[]):
                teacher_visual = side.load_visual(cfg.MODEL.WEIGHTS_DIR, cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
                self.check_input_size(teacher_visual, "teacher")
                self.teacher = TeacherImageScorer(teacher_visual, torch.tensor(side.logit_scale), side.prompts)
            if kd.TEACHER_CACHE:
                self.cache = TeacherCache.create(kd.TEACHER_CACHE, identity, len(self.view_dataset),
                                                 cfg.OPTIM.MAX_EPOCH, side.width, kd.TEACHER_CACHE_DTYPE,
                                                 kd.TEACHER_CACHE_SHARD_SIZE)

        visual, logit_scale = visual_from_state_dict(read_clip_state(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.WEIGHTS_DIR))
        self.check_input_size(visual, "student")
        self.model = PromptKDStudent(visual, logit_scale, class_dim=vectors.width,
                                     n_ctx=kd.N_CTX_VISION, depth=kd.PROMPT_DEPTH_VISION)
        towers = [self.model] + ([self.teacher] if self.teacher is not None else [])
        for tower in towers:
            if backbone_mode == "fp16":
                clip.model.convert_weights(tower.image_encoder.visual)  # the published pure-fp16 backbone
            tower.to(self.device)
        self.register_trainable(self.model)
        logger.info("Student %s -> projector %d -> %d; teacher image side %s (depth %d)",
                    cfg.MODEL.BACKBONE.NAME, self.model.image_encoder.output_dim, vectors.width,
                    side.backbone, len(side.prompts))

    def forward_backward(self, batch):
        images = batch["img"].to(self.device)  # labels are never read
        with self.autocast():
            if self.teacher is None:  # from the cache: the views of (epoch, index)
                embeddings = self.cache.lookup(batch["epoch"], batch["index"]).to(self.device)
            else:
                embeddings = self.teacher.embed(images)
                if self.cache is not None:
                    self.cache.add(batch["epoch"], batch["index"], embeddings)
            t_logits = teacher_logits(embeddings, self.teacher_logit_scale, self.class_vectors)
            student_logits = self.model(images, self.class_vectors)
        loss = kd_loss(student_logits, t_logits, self.tcfg.TEMPERATURE, self.tcfg.KD_WEIGHT)
        self.backward_and_step(loss)
        return {"kd_loss": loss.item()}

    def after_epoch(self):
        if self.cache is not None and self.teacher is not None:  # TEACHER_CACHE_WRITE: views the epoch dropped
            fill_views(self, [self.epoch])
        super().after_epoch()

    def model_inference(self, images):
        return self.model(images, self.class_vectors)

    def load_published(self, path: str):
        """A published PromptKD student (`VLPromptLearner/model*.pth.tar`, spec §3)."""
        load_published_student(self.model, path, self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
        logger.info("Loaded published PromptKD student %s (backbone weights from the checkpoint)", path)
