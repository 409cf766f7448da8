"""PromptKD (stage 2): distil a small CLIP image encoder from a teacher, without labels.

The teacher's class vectors were computed once by `PromptKDTeacher` (its export folder,
TRAINER.PROMPTKD.TEACHER_DIR). Each step runs the frozen teacher image tower (eval mode, no
autograd) and the student on the same augmented batch, scores both against the stored class
vectors, and minimises KD_WEIGHT · T² · KL(teacher ‖ student) / (B·C) (KD_WEIGHT auto: the
published weight of the dataset, `promptkd.trainers.config.kd_weight`). Labels are never read.
Evaluation and inference run the student and the class vectors only.

Views are reproducible (`trainers/view_data.py`): with TRAINER.PROMPTKD.TEACHER_CACHE the
teacher's embeddings of each view are read from a cache (`promptkd cache` writes
it) and the teacher tower is never built; TEACHER_CACHE_WRITE fills the cache online.
"""
from __future__ import annotations

import logging
import os

import torch
from dassl.engine import TRAINER_REGISTRY

from promptkd import distributed as dist_
from promptkd import records
from promptkd.backbones import backbone_reference, load_image_tower, to_half
from promptkd.class_vectors import (IMAGE_SIDE_FILE, ClassVectors, ImageSide, check_pair, class_vectors_file,
                                    visual_fingerprint)
from promptkd.errors import ConfigError
from promptkd.image_inputs import TowerInput
from promptkd.losses import kd_loss
from promptkd.predictor import PredictorRecord, reference_tower
from promptkd.student import PromptKDStudent, TeacherImageScorer, load_published_student, teacher_logits
from promptkd.teacher_cache import DTYPES, TeacherCache
from promptkd.trainers.base import PromptTrainer, _allowed
from promptkd.trainers.config import grad_checkpoint_towers, kd_weight
from promptkd.trainers.predictor_export import preprocess_from_cfg, save_predictor
from promptkd.trainers.cache_views import cache_identity, fill_views
from promptkd.trainers.pools import SHARD_CACHE_REFUSED, build_pool, build_shard_loader, teacher_data
from promptkd.trainers.view_data import build_view_loader, resolve_view_seed

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
        self.kd_weight, how = kd_weight(cfg)  # `auto`: the published weight of the dataset
        logger.info("%s", how)
        if kd.TEMPERATURE <= 0:
            raise ConfigError(f"TRAINER.PROMPTKD.TEMPERATURE must be > 0, got {kd.TEMPERATURE}.")
        if grad_checkpoint_towers(kd.GRAD_CHECKPOINT)[0]:
            raise ConfigError(f"TRAINER.PROMPTKD.GRAD_CHECKPOINT is '{kd.GRAD_CHECKPOINT}', but the PromptKD student "
                              "has no text tower (the teacher's text side is in its stored class vectors; only "
                              "the student's image tower trains): use off or image.")
        if not kd.TEACHER_DIR and not kd.CLASS_VECTORS:
            raise ConfigError("TRAINER.PROMPTKD.TEACHER_DIR is not set. " + TEACHER_HINT)
        _allowed("TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", kd.TEACHER_CACHE_DTYPE, tuple(DTYPES))
        if kd.TEACHER_CACHE_WRITE and not kd.TEACHER_CACHE:
            raise ConfigError("TRAINER.PROMPTKD.TEACHER_CACHE_WRITE needs TRAINER.PROMPTKD.TEACHER_CACHE (the folder).")

    def build_data_loader(self):
        """Dassl's loaders; the train loader's views are a pure function of (view seed, epoch,
        image) and its `ViewSampler` shards itself under torchrun (run_epoch sets its epoch)."""
        super().build_data_loader()
        seed = resolve_view_seed(self.cfg, required=bool(self.tcfg.TEACHER_CACHE))
        transform = self.dm.train_loader_x.dataset.transform  # Dassl's train transform (INPUT.*)
        self.pool = build_pool(self)  # TRAINER.PROMPTKD.POOL (trainers/pools.py); default: train_x itself
        if self.pool.streamed:
            if self.tcfg.TEACHER_CACHE:
                raise ConfigError(SHARD_CACHE_REFUSED)
            self.view_dataset, self.view_sampler, self.train_loader_x = build_shard_loader(
                self.cfg, self.pool, transform, seed)
        else:
            self.view_dataset, self.view_sampler, self.train_loader_x = build_view_loader(
                self.cfg, self.pool.items, transform, seed)
        logger.info("Training views: a pure function of (view seed %d, epoch, image); %d images.",
                    seed, len(self.view_dataset))

    def build_model(self):
        kd, cfg = self.tcfg, self.cfg
        backbone_mode = self.backbone_mode = self.setup_precision()
        vectors_path = self.vectors_path = kd.CLASS_VECTORS or class_vectors_file(kd.TEACHER_DIR, cfg.DATASET.NAME)
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
        self.teacher_vectors = vectors
        self.backbone_ref = backbone_reference(cfg.MODEL.BACKBONE.NAME)
        logger.info("Class vectors: %s (%d classes x %d, teacher %s %s)", vectors_path, *vectors.vectors.shape,
                    vectors.teacher.get("backbone"), vectors.teacher.get("fingerprint"))

        visual, logit_scale, preprocess = load_image_tower(cfg.MODEL.BACKBONE.NAME, cfg.MODEL.WEIGHTS_DIR)
        self.check_input(preprocess, f"student {cfg.MODEL.BACKBONE.NAME}")
        self.teacher, self.cache, fit = None, None, "from the cache"
        self.cached_in_epoch = 0  # TEACHER_CACHE_WRITE: views this epoch's steps added to the cache
        self.teacher_logit_scale = torch.tensor(side.logit_scale, dtype=torch.float32, device=self.device)
        if kd.TEACHER_CACHE:
            identity = cache_identity(cfg, side, self.pool.items, self.view_dataset, self.prec)
        if kd.TEACHER_CACHE and not kd.TEACHER_CACHE_WRITE:
            self.cache = TeacherCache.open(kd.TEACHER_CACHE, identity, cfg.OPTIM.MAX_EPOCH)
            logger.info("Teacher: embeddings read from the cache %s; the teacher image tower is not built "
                        "(no teacher weights are loaded).", kd.TEACHER_CACHE)
        else:
            # Built aside from the global RNG: the student starts the same with or without it.
            with torch.random.fork_rng(devices=[]):
                teacher_visual, teacher_preprocess = side.load_tower(cfg.MODEL.WEIGHTS_DIR,
                                                                     cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
                # The teacher sees the student's augmented view, resized / re-normalised for it if needed.
                fit = TowerInput(preprocess, teacher_preprocess)
                self.teacher = TeacherImageScorer(teacher_visual, torch.tensor(side.logit_scale), side.prompts,
                                                  input_adapter=None if fit.identity else fit)
            if kd.TEACHER_CACHE:
                self.cache = TeacherCache.create(kd.TEACHER_CACHE, identity, len(self.view_dataset),
                                                 cfg.OPTIM.MAX_EPOCH, side.width, kd.TEACHER_CACHE_DTYPE,
                                                 kd.TEACHER_CACHE_SHARD_SIZE)
        self.model = PromptKDStudent(visual, logit_scale, class_dim=vectors.width,
                                     n_ctx=kd.N_CTX_VISION, depth=kd.PROMPT_DEPTH_VISION)
        for tower in [self.model] + ([self.teacher] if self.teacher is not None else []):
            if backbone_mode == "fp16":
                to_half(tower.image_encoder.visual)  # the published pure-fp16 backbone
            tower.to(self.device)
        self.register_trainable(self.model)
        image_checkpoint = grad_checkpoint_towers(kd.GRAD_CHECKPOINT)[1]
        self.model.image_encoder.grad_checkpoint = image_checkpoint and self.model.image_encoder.depth > 0
        logger.info("Activation checkpointing (TRAINER.PROMPTKD.GRAD_CHECKPOINT %s): student image tower %s",
                    kd.GRAD_CHECKPOINT, "on" if self.model.image_encoder.grad_checkpoint else "off")
        logger.info("Student %s -> projector %d -> %d; teacher image side %s (depth %d, input %s)",
                    cfg.MODEL.BACKBONE.NAME, self.model.image_encoder.output_dim, vectors.width,
                    side.backbone, len(side.prompts), fit)

    def teacher_identity(self):
        return records.teacher_identity(self.teacher_vectors.teacher, self.vectors_path)

    def record_fields(self) -> dict:
        """run.json: the pool (sources, image count, budget, leakage check) and the teacher's data."""
        return {"pool": self.pool.record(), "teacher_data": teacher_data(self.tcfg.TEACHER_DIR)}

    def forward_backward(self, batch):
        images = batch["img"].to(self.device)  # labels are never read
        with self.autocast():
            if self.teacher is None:  # from the cache: the views of (epoch, index)
                embeddings = self.cache.lookup(batch["epoch"], batch["index"]).to(self.device)
            else:
                embeddings = self.teacher.embed(images)
                if self.cache is not None:
                    self.cache_views(batch["epoch"], batch["index"], embeddings)
            student_logits = self.train_model(images, self.class_vectors)  # DDP wrapper under torchrun
        # Both sides' logits and the loss are fp32, outside autocast (promptkd.precision).
        t_logits = teacher_logits(embeddings, self.teacher_logit_scale, self.class_vectors)
        loss = kd_loss(student_logits, t_logits, self.tcfg.TEMPERATURE, self.kd_weight)
        self.backward_and_step(loss)
        return {"kd_loss": loss.item()}

    def cache_views(self, epochs, indices, embeddings):
        """TEACHER_CACHE_WRITE: keep the teacher's embeddings of this step's views. Under DDP
        every rank's views go to rank 0, which alone writes the cache (each rank holds only
        its share of a shard, so none could complete it). They travel as tensors (`gather_rows`)."""
        if dist_.is_distributed():
            epochs, indices, embeddings = dist_.gather_rows(torch.as_tensor(epochs), torch.as_tensor(indices),
                                                            embeddings.float())
            if not dist_.is_main():
                return
        self.cache.add(epochs, indices, embeddings)
        self.cached_in_epoch += len(indices)

    def after_epoch(self):
        if self.cache is not None and self.teacher is not None:  # TEACHER_CACHE_WRITE
            if dist_.is_main():  # the views training did not reach (the tail it dropped)
                dropped = fill_views(self, [self.epoch])
                logger.info("Teacher cache, epoch %d: %d views embedded in training, %d that it dropped after it",
                            self.epoch + 1, self.cached_in_epoch, dropped)
                self.cached_in_epoch = 0
            dist_.barrier()  # the other ranks wait while rank 0 embeds them
        super().after_epoch()

    def model_inference(self, images):
        return self.model(images, self.class_vectors)

    def finalize_model(self, eval_only: bool = False):
        """The student is final: write its predictor.pt (promptkd.predict / export_model), once."""
        if dist_.is_main():
            self.save_student_predictor()
        dist_.barrier()

    def save_student_predictor(self):
        fingerprint = ""
        if self.backbone_mode == "fp16":  # the fp32 weights' fingerprint, which predict checks
            trusted = self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS
            fingerprint = visual_fingerprint(reference_tower(self.backbone_ref, self.cfg.MODEL.WEIGHTS_DIR, trusted)[0])
        record = PredictorRecord.for_student(self.model, self.teacher_vectors, self.backbone_ref,
                                             preprocess_from_cfg(self.cfg), self.cfg.TRAINER.NAME,
                                             self.cfg.MODEL.WEIGHTS_DIR, fingerprint)
        save_predictor(self.cfg, record)

    def load_published(self, path: str):
        """A published PromptKD student (`VLPromptLearner/model*.pth.tar`; layout in docs/running.md)."""
        load_published_student(self.model, path, self.cfg.MODEL.TRUST_PICKLED_CHECKPOINTS)
        self.backbone_ref = {"kind": "published_student", "path": os.path.abspath(path)}
        logger.info("Loaded published PromptKD student %s (backbone weights from the checkpoint)", path)
