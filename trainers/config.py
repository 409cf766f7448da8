"""Config keys this plugin adds to Dassl's defaults (yacs), in one place.

`extend_cfg(cfg)` is called by `train.py` before the dataset / trainer YAML files are merged,
so every key a YAML file or a `KEY VALUE` override may set is declared here with its default.
The published PromptKD / PromptSRC key names are kept (`TRAINER.PROMPTKD.*`, `TRAINER.PROMPTSRC.*`;
`TRAINER.MODAL` as the old name of `TRAINER.PROTOCOL`, `resolve_protocol`). This module needs
only yacs, not Dassl.

TRAINER.PROMPTKD.KD_WEIGHT defaults to `auto`: the published weight of DATASET.NAME
(`kd_weight`, the one place that knows them). yacs keeps one type per key, so keys that take
`auto` or a number (`AUTO_NUMBER_KEYS`) hold a string; train.py stores a number given in a
YAML file or on the command line as its string.
"""
import warnings

from yacs.config import CfgNode as CN

from promptkd.datasets.config import extend_data_cfg
from promptkd.errors import ConfigError
from promptkd.records import DEFAULT_PROTOCOL, protocol

PROTOCOLS = ("base2novel", "cross", "few_shot")  # TRAINER.PROTOCOL
MODEL_SELECTIONS = ("last_epoch", "best_base_test")
GRAD_CHECKPOINTS = ("off", "text", "image", "both")

AUTO = "auto"
AUTO_NUMBER_KEYS = ("TRAINER.PROMPTKD.KD_WEIGHT",)  # `auto` or a number (kept as a string)
# The published PromptKD KD_WEIGHT per dataset (DATASET.NAME); every other dataset gets the default.
PUBLISHED_KD_WEIGHTS = {"FGVCAircraft": 200.0, "OxfordFlowers": 200.0, "DescribableTextures": 200.0}
PUBLISHED_KD_WEIGHT_DEFAULT = 1000.0


def kd_weight(cfg) -> tuple[float, str]:
    """(TRAINER.PROMPTKD.KD_WEIGHT as a number, a log line saying where it comes from): `auto`
    is the published weight of DATASET.NAME (200 for FGVCAircraft, OxfordFlowers and
    DescribableTextures, 1000 otherwise); a number (or its string) is taken as given."""
    value, name = cfg.TRAINER.PROMPTKD.KD_WEIGHT, cfg.DATASET.NAME
    published = PUBLISHED_KD_WEIGHTS.get(name, PUBLISHED_KD_WEIGHT_DEFAULT)
    if isinstance(value, str) and value.strip().lower() == AUTO:
        return published, f"TRAINER.PROMPTKD.KD_WEIGHT auto -> {published:g} for {name} (the published value)"
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        weight = float(value)
    except (TypeError, ValueError):
        raise ConfigError(f"TRAINER.PROMPTKD.KD_WEIGHT is '{value}': give a number >= 0 (e.g. 200) or auto (the "
                          f"published weight of DATASET.NAME, {published:g} for {name}).") from None
    if weight < 0:
        raise ConfigError(f"TRAINER.PROMPTKD.KD_WEIGHT must be >= 0, got {value}.")
    return weight, f"TRAINER.PROMPTKD.KD_WEIGHT {weight:g} (as given; auto would be {published:g} for {name})"


def _grad_checkpoint_key(node):
    # Activation checkpointing of the prompted towers that backpropagate (off | text | image
    # | both): each transformer block's activations are recomputed in backward instead of kept.
    # Same results, much less memory (the prompted text tower keeps every class prompt's
    # activations), ~1/3 more compute. Turn on when a step runs out of memory (docs/gpu.md).
    node.GRAD_CHECKPOINT = "off"


def grad_checkpoint_towers(mode: str) -> tuple[bool, bool]:
    """(text, image): the towers a GRAD_CHECKPOINT value turns checkpointing on in."""
    return mode in ("text", "both"), mode in ("image", "both")


def _ivlp_prompt_keys(node, depth):
    """Prompt settings shared by every IVLP-style trainer (text + vision deep prompts)."""
    node.N_CTX_VISION = 4
    node.N_CTX_TEXT = 4
    node.CTX_INIT = "a photo of a"
    node.PROMPT_DEPTH_VISION = depth
    node.PROMPT_DEPTH_TEXT = depth
    # fp32 | fp16 (pure half, the published behaviour) | amp (autocast fp16 + grad scaler)
    # | bf16 (autocast bf16). On CPU, amp runs as bf16 autocast.
    node.PREC = "fp16"
    _grad_checkpoint_key(node)


def extend_cfg(cfg):
    extend_data_cfg(cfg)  # the dataset keys (DATASET.*, DATALOADER.*, INPUT.RESIZE_MODE)

    # --- several processes (torchrun; see promptkd/distributed.py) ------------------------
    # DATALOADER.TRAIN_X.BATCH_SIZE stays per process (each GPU keeps its memory use), so the
    # global batch is BATCH_SIZE x processes. SCALE_LR True multiplies OPTIM.LR by the number
    # of processes (linear scaling rule); off by default, the log says which LR is used.
    cfg.DISTRIBUTED = CN()
    cfg.DISTRIBUTED.SCALE_LR = False
    # BatchNorm layers of the trained model (PromptKD's projector) as SyncBatchNorm: statistics
    # over the global batch. False: each process normalises over its own batch (running stats
    # of rank 0 are broadcast). GPU only (DDP cannot run SyncBatchNorm on CPU).
    cfg.DISTRIBUTED.SYNC_BN = False

    # --- experiment tracking (trainers/tracking.py) -------------------------------------------
    # Weights & Biases, off by default (needs the `tracking` extra): rank 0 logs losses, LR,
    # evaluation metrics, the full config and run record, and the final base / novel / HM. A
    # resumed run continues the same W&B run (its id: OUTPUT_DIR/wandb-run-id).
    cfg.LOG = CN()
    cfg.LOG.WANDB = CN()
    cfg.LOG.WANDB.ENABLED = False
    cfg.LOG.WANDB.PROJECT = "promptkd"
    cfg.LOG.WANDB.ENTITY = ""  # "" = wandb's default entity
    cfg.LOG.WANDB.NAME = ""  # "" = <trainer>-<dataset>-seed<seed>
    cfg.LOG.WANDB.TAGS = []
    cfg.LOG.WANDB.MODE = ""  # "" (wandb's default: WANDB_MODE, else online) | online | offline | disabled

    # --- reproducibility ------------------------------------------------------------------
    # True: deterministic GPU kernels (cuDNN benchmark off, torch.use_deterministic_algorithms,
    # CUBLAS_WORKSPACE_CONFIG=:4096:8), needed for bit-exact resumes and "N processes equal 1"
    # on a GPU; slower. False (default): cuDNN benchmark on a GPU. No effect on CPU results.
    cfg.TRAIN.DETERMINISTIC = False

    # --- the training step on a GPU (issue 37) ------------------------------------------
    # Steps between host reads of the loss values: they stay on the device and are read every N
    # steps in one copy (TensorBoard / W&B / the progress bar still get every step's value), so a
    # small-batch GPU step does not wait for the GPU; a non-finite loss stops the run at that read.
    cfg.TRAIN.READ_LOSS_EVERY = 20
    # PREC amp: the GradScaler skips steps whose gradients overflow (how it calibrates its scale);
    # stop when more than this share of the steps were skipped, beyond the first 24 skipped ones,
    # or when 24 are skipped in a row.
    cfg.TRAIN.MAX_SKIPPED_STEPS_SHARE = 0.05
    # "" (off) or a torch.compile mode (default | reduce-overhead | max-autotune | max-autotune-no-cudagraphs):
    # compile the training forward. The first steps are slower (compilation).
    cfg.TRAIN.COMPILE = ""

    # --- CLIP weights ------------------------------------------------------------------
    # Directory holding OpenAI's CLIP files (ViT-B-16.pt, ...); "" = the clip package's cache
    # (~/.cache/clip). MODEL.BACKBONE.NAME is a CLIP name (ViT-B/16) or a path to a file.
    cfg.MODEL.WEIGHTS_DIR = ""
    # Checkpoints written by torch 1.x (the published PromptKD/PromptSRC files) pickle Python
    # objects and can only be read with torch.load(weights_only=False). Set True only for
    # files you trust.
    cfg.MODEL.TRUST_PICKLED_CHECKPOINTS = False

    # --- evaluation --------------------------------------------------------------------
    # last_epoch: report the final model (default; no choice is made on test data).
    # best_base_test: the published code's rule, keep the epoch with the best accuracy on
    # the base-class *test* images (reproduces the paper; selects on test data).
    cfg.TEST.MODEL_SELECTION = "last_epoch"

    # --- protocol ------------------------------------------------------------------------
    # base2novel | cross | few_shot (all classes, DATASET.NUM_SHOTS per class: accuracy over all
    # classes; scripts/<method>/few_shot.sh). Recorded as run.json's protocol.
    cfg.TRAINER.PROTOCOL = DEFAULT_PROTOCOL
    # Its published name ("" = unset): published configs still load; train.py moves it to
    # TRAINER.PROTOCOL with a FutureWarning (resolve_protocol).
    cfg.TRAINER.MODAL = ""
    # Where a prompt-learning trainer writes its class vectors + image side when it is final
    # ("" = OUTPUT_DIR/export): every method here can be a PromptKD teacher.
    cfg.TRAINER.EXPORT_DIR = ""
    # A text file of class names (one per line): the export also writes the class vectors of this
    # vocabulary, class_vectors_vocab_<file stem>.pt (TRAINER.PROMPTKD.VOCABULARY reads it).
    cfg.TRAINER.EXPORT_VOCABULARY = ""

    # --- stage 1: the teacher (PromptSRC-style IVLP) ------------------------------------
    cfg.TRAINER.PROMPTSRC = CN()
    _ivlp_prompt_keys(cfg.TRAINER.PROMPTSRC, depth=9)
    # Integers, as in the PromptSRC codebase: one YAML file merges into its config and ours.
    cfg.TRAINER.PROMPTSRC.TEXT_LOSS_WEIGHT = 25
    cfg.TRAINER.PROMPTSRC.IMAGE_LOSS_WEIGHT = 10
    cfg.TRAINER.PROMPTSRC.KL_LOSS_WEIGHT = 1.0
    cfg.TRAINER.PROMPTSRC.GPA = True
    cfg.TRAINER.PROMPTSRC.GPA_MEAN = 15
    cfg.TRAINER.PROMPTSRC.GPA_STD = 1
    # A teacher that is not trained at all: stock CLIP with "{CTX_INIT} {classname}."
    # (also implied by OPTIM.MAX_EPOCH 0). Prompt depths must then be 0.
    cfg.TRAINER.PROMPTSRC.ZERO_SHOT = False
    # A zero-shot teacher's class vectors from a template ensemble instead of CTX_INIT: a set of
    # promptkd/templates.py (imagenet80, promptsrc60, openai7, photo) or a file of templates, one
    # per line; the normalised mean of the normalised features over them (CLIP's ensemble).
    cfg.TRAINER.PROMPTSRC.ZERO_SHOT_TEMPLATES = ""

    # --- baselines (same data pipeline and evaluation; each can export class vectors) -----
    cfg.TRAINER.ZEROSHOT = CN()
    cfg.TRAINER.ZEROSHOT.TEMPLATE = "a photo of a {}."
    cfg.TRAINER.ZEROSHOT.ENSEMBLE = False  # True: OpenAI's 80 ImageNet templates
    cfg.TRAINER.ZEROSHOT.PREC = "fp16"
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16
    cfg.TRAINER.COOP.CTX_INIT = ""  # a phrase sets N_CTX and initialises the context
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # end | middle | front
    cfg.TRAINER.COOP.PREC = "fp16"
    _grad_checkpoint_key(cfg.TRAINER.COOP)
    cfg.TRAINER.COCOOP = CN()
    cfg.TRAINER.COCOOP.N_CTX = 4
    cfg.TRAINER.COCOOP.CTX_INIT = "a photo of a"
    cfg.TRAINER.COCOOP.PREC = "fp16"
    _grad_checkpoint_key(cfg.TRAINER.COCOOP)
    cfg.TRAINER.IVLP = CN()
    _ivlp_prompt_keys(cfg.TRAINER.IVLP, depth=9)
    cfg.TRAINER.MAPLE = CN()
    cfg.TRAINER.MAPLE.N_CTX = 2
    cfg.TRAINER.MAPLE.CTX_INIT = "a photo of a"  # longer than N_CTX: its first N_CTX tokens are learnt
    cfg.TRAINER.MAPLE.PROMPT_DEPTH = 9
    cfg.TRAINER.MAPLE.PREC = "fp16"
    _grad_checkpoint_key(cfg.TRAINER.MAPLE)

    # --- stage 2: the student -------------------------------------------------------------
    cfg.TRAINER.PROMPTKD = CN()
    # The student uses N_CTX_VISION, PROMPT_DEPTH_VISION, PREC and GRAD_CHECKPOINT (off | image:
    # only its image tower trains). N_CTX_TEXT, PROMPT_DEPTH_TEXT and CTX_INIT are kept so
    # published configs load: the teacher's text side is in its class vectors. TEACHER_NAME is checked against the teacher export (a warning if different).
    _ivlp_prompt_keys(cfg.TRAINER.PROMPTKD, depth=9)
    cfg.TRAINER.PROMPTKD.TEACHER_NAME = "ViT-L/14"
    # auto: the published weight of DATASET.NAME (PUBLISHED_KD_WEIGHTS above), or a number.
    cfg.TRAINER.PROMPTKD.KD_WEIGHT = AUTO
    cfg.TRAINER.PROMPTKD.TEMPERATURE = 1.0
    # The teacher's export directory (class_vectors_<Dataset>.pt + image_side.pt), or a teacher's
    # model folder (promptkd.deploy.hub: config.json + model.safetensors; `hf-hub:OWNER/NAME` from the local HF cache).
    cfg.TRAINER.PROMPTKD.TEACHER_DIR = ""
    # Explicit class-vector file; "" = TEACHER_DIR/class_vectors_<DATASET.NAME>.pt
    cfg.TRAINER.PROMPTKD.CLASS_VECTORS = ""
    # A finished run of a host codebase's trainer as the teacher (docs/plugin.md, trainers/host_teacher.py):
    # TEACHER_TRAINER its registered name ("" = TEACHER_DIR is a PromptKD export, as above); TEACHER_DIR
    # then the host run's output folder (its Dassl checkpoints), TEACHER_CONFIG the trainer YAML it was
    # trained with, TEACHER_BACKBONE its MODEL.BACKBONE.NAME ("" = the one TEACHER_CONFIG names),
    # TEACHER_LOAD_EPOCH the checkpoint (-1: model-best if the run saved one, else its last epoch).
    cfg.TRAINER.PROMPTKD.TEACHER_TRAINER = ""
    cfg.TRAINER.PROMPTKD.TEACHER_CONFIG = ""
    cfg.TRAINER.PROMPTKD.TEACHER_BACKBONE = ""
    cfg.TRAINER.PROMPTKD.TEACHER_LOAD_EPOCH = -1
    # Several teachers (promptkd/targets.py, docs/students.md "Several teachers"): exports of more
    # teachers beside TEACHER_DIR (trained or zero-shot, any backbone; the same classes in the same
    # order); the student's class vectors are TEACHER_DIR's. Their probabilities are mixed per image
    # by ENSEMBLE_RULE: mean_prob, weights (ENSEMBLE_WEIGHTS, one per teacher, TEACHER_DIR first) or
    # confidence (softmax over teachers of each one's confidence / ENSEMBLE_TEMPERATURE, confidence
    # ENSEMBLE_CONFIDENCE max_prob or entropy). [] = one teacher.
    cfg.TRAINER.PROMPTKD.TEACHER_DIRS = []
    cfg.TRAINER.PROMPTKD.ENSEMBLE_RULE = "mean_prob"
    cfg.TRAINER.PROMPTKD.ENSEMBLE_WEIGHTS = []
    cfg.TRAINER.PROMPTKD.ENSEMBLE_TEMPERATURE = 0.1
    cfg.TRAINER.PROMPTKD.ENSEMBLE_CONFIDENCE = "max_prob"
    # Training views (crop box, flip) are a pure function of (VIEW_SEED, epoch, image index),
    # and so is each epoch's image order; -1 = the run's --seed. Runs with different student
    # seeds can share one view stream (and one teacher cache) by setting it.
    cfg.TRAINER.PROMPTKD.VIEW_SEED = -1
    # The view bank: K > 0 gives every image K views, a pure function of (VIEW_SEED, image, view
    # number), and epoch e draws one of them (each once per cycle of K epochs); the teacher cache
    # then holds K views per image whatever the epochs, and an online run filling it
    # (TEACHER_CACHE_WRITE) runs the teacher only on views it has not embedded yet.
    # 0 = a fresh view every epoch (docs/teacher_cache.md).
    cfg.TRAINER.PROMPTKD.VIEWS_PER_IMAGE = 0
    # A teacher-cache folder (promptkd cache ...): the run reads the
    # teacher's stored image embeddings and never builds the teacher tower. "" = online teacher.
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE = ""
    # True: run the teacher online and fill TEACHER_CACHE as the run goes (resumable).
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE_WRITE = False
    # Storage of the cached embeddings when writing: fp16 (half the size) | fp32 (exact) | int8
    # (a quarter of fp32 + 4 B per view: one scale per vector; accepted only while its measured
    # error of the teacher's logits / T stays within TEACHER_CACHE_MAX_LOGIT_ERROR).
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE = "fp16"
    # | topk (the teacher's TEACHER_CACHE_TOPK largest logits + classes, the rest of its mass
    # spread uniformly over the other classes; depends on the class vectors and TEMPERATURE, and
    # is accepted only while its measured ||dp||_1 stays within TEACHER_CACHE_MAX_PROB_ERROR).
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR = 0.1
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE_TOPK = 10
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE_MAX_PROB_ERROR = 0.1
    # Views per cache shard file (one epoch, consecutive images).
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE = 4096
    # Teacher batch size of the cache writer; 0 = 4 x DATALOADER.TRAIN_X.BATCH_SIZE.
    cfg.TRAINER.PROMPTKD.TEACHER_CACHE_BATCH_SIZE = 0
    # The student (docs/students.md): promptkd (the paper's: prompted image tower + projector,
    # scored on the teacher's class vectors) or the trainer name of any prompt-learning method
    # (CoOp, CoCoOp, IVLP, MaPLe, PromptSRC, ...), built from its own TRAINER.<NODE> keys, which
    # keeps its text tower and is scored on its own text features of the same classes.
    cfg.TRAINER.PROMPTKD.STUDENT = "promptkd"
    # A method student's own regularisers (PromptSRC's): on (True) or off.
    cfg.TRAINER.PROMPTKD.STUDENT_REGULARISERS = True
    # The distillation objective: kl (KL(teacher || student), the published one) | reverse_kl | sym_kl.
    cfg.TRAINER.PROMPTKD.LOSS = "kl"
    # Extra term between the promptkd student's projected feature and the teacher's embedding:
    # off | cosine | l1, times FEATURE_WEIGHT.
    cfg.TRAINER.PROMPTKD.FEATURE_LOSS = "off"
    cfg.TRAINER.PROMPTKD.FEATURE_WEIGHT = 1.0
    # Semi-supervised: CE_WEIGHT x cross-entropy on the labelled images of the batch. Labels are read
    # only when CE_WEIGHT > 0; CE_SHOTS K > 0 labels K seeded images per class of the split (-1: all).
    cfg.TRAINER.PROMPTKD.CE_WEIGHT = 0.0
    cfg.TRAINER.PROMPTKD.CE_SHOTS = -1
    # Class-agnostic distillation (KDPL): a class-vector file of the teacher over a vocabulary
    # (TRAINER.EXPORT_VOCABULARY writes one); training never uses the dataset's class names and
    # distils the teacher's top TOPK vocabulary entries per image. "" = the dataset's classes.
    cfg.TRAINER.PROMPTKD.VOCABULARY = ""
    cfg.TRAINER.PROMPTKD.TOPK = 10
    # image: the teacher's top TOPK entries of each image; batch: the top TOPK of the batch by the
    # teacher's mean probability, the same for every image of the batch (KDPL's class-agnostic variant)
    cfg.TRAINER.PROMPTKD.TOPK_MODE = "image"
    # --- the unlabelled pool (trainers/pool_loader.py, docs/protocols.md) ---
    # Sources of the images distilled on: train (the train split as DATASET.* builds it; the
    # published protocol), train_base (its base classes), folder:PATH (any image tree),
    # wds:PATTERN (WebDataset .tar shards, brace pattern); several combine (shards alone).
    cfg.TRAINER.PROMPTKD.POOL = ["train"]
    # Keep N images of the pool (0: all), by a hash of (POOL_SEED, image name): the same N on every run.
    cfg.TRAINER.PROMPTKD.POOL_BUDGET = 0
    # Keep K images per class instead (split sources only: labels select the images; recorded).
    cfg.TRAINER.PROMPTKD.POOL_BUDGET_PER_CLASS = 0
    cfg.TRAINER.PROMPTKD.POOL_SEED = 0
    # Shards: at most this many images an epoch over all processes (0: what the shards give).
    cfg.TRAINER.PROMPTKD.POOL_EPOCH_IMAGES = 0
    # Content-hash check of the pool against the test / val images: auto (when the pool has a
    # folder or shards), on, off. A test image in the pool stops the run unless ALLOW_TEST_OVERLAP.
    cfg.TRAINER.PROMPTKD.LEAKAGE_CHECK = "auto"
    cfg.TRAINER.PROMPTKD.ALLOW_TEST_OVERLAP = False
    # sha256 cache, per (path, size, mtime); "" = $XDG_CACHE_HOME/promptkd/content_hashes.json
    cfg.TRAINER.PROMPTKD.HASH_CACHE = ""
    return cfg


def resolve_protocol(cfg) -> str:
    """Move a TRAINER.MODAL that a config file or override set (the published name) to
    TRAINER.PROTOCOL, with a FutureWarning, and return the protocol (cfg not frozen). A host
    codebase's own MODAL is read where it is (promptkd.records.protocol), without a warning."""
    value = protocol(cfg)  # a ConfigError where the two disagree
    if cfg.TRAINER.MODAL:
        warnings.warn(f"TRAINER.MODAL is the old name of TRAINER.PROTOCOL: read as TRAINER.PROTOCOL {value}. "
                      "Write TRAINER.PROTOCOL in configs and overrides (published configs still load).",
                      FutureWarning, stacklevel=2)
    cfg.TRAINER.PROTOCOL, cfg.TRAINER.MODAL = value, ""
    return value
