"""The device tier: the same test bodies on the CPU (normal suite) and on a CUDA GPU (marker
`cuda`, skipped without one; `python -m pytest -m cuda` runs the GPU half alone, < 3 min on
one GPU). Tiny random-weight CLIPs, fake DTD, nothing downloaded.

* every PREC: one teacher and one student step against fp32 (loss and gradients);
* PREC amp on CUDA: a resume round-trips the GradScaler state (GPU only: on the CPU amp runs
  as bf16 autocast without a scaler);
* a 1-process group (gloo on CPU, NCCL on CUDA): DDP wrap, sharded evaluation, the teacher
  cache's gather;
* activation checkpointing gives the gradients of no checkpointing;
* the predictor, and on CUDA its ONNX export (CUDA execution provider if installed), equal eager;
* the teacher cache written from and read back to the device.

Reference runs are true fp32: TF32 is switched off on CUDA for the tier (PyTorch lets cuDNN
convolutions use TF32 by default, ~1e-3 relative, which would blur every comparison; trainers are
built with TRAIN.DETERMINISTIC True there, which keeps it off).

The tier must run on a GPU: without Dassl it fails there instead of skipping, and
`benchmarks/gpu_report.py` fails a tier in which no test ran.
"""
import os

import pytest
import torch
import torch.distributed as dist
import torch.nn.functional as F

from promptkd import distributed as dist_  # noqa: E402
from promptkd.evaluation import accuracy_report  # noqa: E402
from promptkd.losses import CALIBRATION_SKIPS  # noqa: E402
from promptkd.teacher_cache import TeacherCache  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.gpu_kit import loss_and_grads, make_trainer, promptsrc, student_args, teacher_args  # noqa: E402

# Dassl: the trainer tests skip without it, but never on a GPU run (the CUDA tier would pass with
# nothing run: `benchmarks.gpu_report` also counts the tests that ran, and sets
# PROMPTKD_REQUIRE_DASSL=1, under which tests/conftest.py stops the run instead).
if torch.cuda.is_available():
    import dassl  # noqa: E402,F401
else:
    pytest.importorskip("dassl", reason="Dassl not installed (see README)")

HAVE_CUDA = torch.cuda.is_available()
CUDA = pytest.param("cuda", marks=[pytest.mark.cuda, pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU")])
DEVICES = ["cpu", CUDA]
SAME_ORDER = ["DATALOADER.TRAIN_X.SAMPLER", "SequentialSampler", "INPUT.TRANSFORMS", "('normalize',)"]

# One step of PREC p against fp32, same weights and batch: the loss, and the cosine between the
# gradients of all learnable parameters. bf16 keeps 8 mantissa bits (2^-8 = 3.9e-3 per rounding)
# of the tower's features; the PromptKD projector's BatchNorm over a batch of 4 subtracts the
# batch mean, which cancels most of each feature and leaves its rounding, so the first layer's
# gradient moves by ~40% (measured on CPU: cosine 0.97 over all parameters, loss within 1.3%).
# A broken precision path (a wrong dtype, an overflow, a gradient that never arrives) gives a
# cosine near 0 or NaN. fp16 (10 bits) and an fp32 head: cosine 0.9993 measured.
GRAD_COS = {"bf16": 0.9, "amp": 0.9, "fp16": 0.99}
LOSS_TOL = {"bf16": 5e-2, "amp": 5e-2, "fp16": 2e-2}
PRECS = {"cpu": ["fp16", "bf16"], "cuda": ["fp16", "amp", "bf16"]}


@pytest.fixture(autouse=True)
def true_fp32():
    if not HAVE_CUDA:
        yield
        return
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def on(device):
    # On CUDA, TRAIN.DETERMINISTIC True also keeps fp32 matmuls true fp32 (a run without it turns
    # TF32 on: promptkd.precision.configure_matmul), so the fp32 references are fp32.
    return ["USE_CUDA", "True", "TRAIN.DETERMINISTIC", "True"] if device == "cuda" else ["USE_CUDA", "False"]


@pytest.fixture(scope="module")
def setup(clip_files, tmp_path_factory):
    """Fake data and a teacher export (made without training: its prompts as initialised)."""
    data = str(tmp_path_factory.mktemp("tier_data"))
    make_dtd(data, n_classes=5, per_class=10)
    out = str(tmp_path_factory.mktemp("tier_teacher"))
    teacher = make_trainer(teacher_args(data, clip_files, out, "USE_CUDA", "False", epochs=1))
    teacher.export()
    return {"data": data, "export": os.path.join(out, "export"), "weights": clip_files}


def args_for(setup, stage, out, device, prec, *extra):
    if stage == "teacher":
        return teacher_args(setup["data"], setup["weights"], out, "TRAINER.PROMPTSRC.PREC", prec, *SAME_ORDER,
                            *on(device), *extra, epochs=1)
    return student_args(setup["data"], setup["weights"], out, setup["export"], "TRAINER.PROMPTKD.PREC", prec,
                        *on(device), *extra, epochs=1)


def one_step(args):
    """One training step of a fresh trainer: (trainer, loss, gradients of the learnable parameters).

    Under PREC amp the GradScaler starts at 2^16 and a step whose scaled gradients overflow is
    skipped (the weights do not move) and the scale halved: that is how it calibrates. The step is
    repeated on the same batch until the scaler takes it, so the gradients compared are those of an
    accepted step, from the same weights as the fp32 one."""
    trainer = make_trainer(args)
    batch = next(iter(trainer.train_loader_x))
    trainer.epoch = trainer.batch_idx = 0  # what run_epoch sets (the step's error message names them)
    trainer.set_model_mode("train")
    for _ in range(CALIBRATION_SKIPS + 1):
        skipped = trainer.step_log.skipped
        summary = trainer.forward_backward(batch)
        if trainer.scaler is None or trainer.step_log.skipped == skipped:
            break
    trainer.step_log.read()  # raises if the loss was not finite (outside a scaler)
    loss = float(summary.get("loss", next(iter(summary.values()))))
    grads = torch.cat([p.grad.detach().float().flatten().cpu() for p in trainer.model.parameters()
                       if p.requires_grad and p.grad is not None])
    return trainer, loss, grads


@pytest.mark.parametrize("stage", ["teacher", "student"])
@pytest.mark.parametrize("prec", ["fp16", "amp", "bf16"])
@pytest.mark.parametrize("device", DEVICES)
def test_one_step_in_every_precision_matches_fp32(setup, tmp_path, device, prec, stage):
    if prec not in PRECS[device]:
        pytest.skip(f"PREC {prec} on {device} is PREC {'bf16' if prec == 'amp' else prec} (tested)")
    _, loss32, grads32 = one_step(args_for(setup, stage, str(tmp_path / "fp32"), device, "fp32"))
    trainer, loss, grads = one_step(args_for(setup, stage, str(tmp_path / prec), device, prec))
    assert trainer.device.type == device and (trainer.scaler is not None) == (prec == "amp" and device == "cuda")
    assert grads.shape == grads32.shape and grads32.norm() > 0 and torch.isfinite(grads).all()
    assert abs(loss - loss32) <= LOSS_TOL[prec] * abs(loss32), (loss, loss32)
    cos = F.cosine_similarity(grads, grads32, dim=0).item()
    print(f"{device} {stage} {prec}: loss {loss:.6g} vs fp32 {loss32:.6g}, gradient cosine {cos:.4f}")
    assert cos >= GRAD_COS[prec], cos


@pytest.mark.cuda
@pytest.mark.skipif(not HAVE_CUDA, reason="no CUDA GPU")
def test_amp_resume_round_trips_the_grad_scaler(setup, tmp_path):
    out = str(tmp_path / "amp")
    trainer = make_trainer(args_for(setup, "student", out, "cuda", "amp", "OPTIM.MAX_EPOCH", "2"))
    assert trainer.scaler is not None
    trainer.before_train()
    trainer.epoch = 0
    trainer.run_epoch()
    trainer.scaler.update(1234.0)  # a scale the default would not give: the resume must carry it
    trainer.save_model(0, out)
    saved = trainer.scaler.state_dict()
    resumed = make_trainer(args_for(setup, "student", out, "cuda", "amp", "OPTIM.MAX_EPOCH", "2"))
    assert resumed.resume_model_if_exist(out) == 1
    assert resumed.scaler.state_dict() == saved and saved["scale"] == 1234.0


@pytest.fixture
def group(request):
    device = request.param if hasattr(request, "param") else "cpu"
    backend = "nccl" if device == "cuda" else "gloo"
    if device == "cuda":
        torch.cuda.set_device(0)
    dist.init_process_group(backend, store=dist.HashStore(), rank=0, world_size=1)
    yield device
    dist.destroy_process_group()


@pytest.mark.parametrize("group", DEVICES, indirect=True)
def test_one_process_group_wraps_evaluates_and_gathers_the_cache(setup, tmp_path, group):
    device = group
    cache_dir = str(tmp_path / "cache")
    trainer = make_trainer(args_for(setup, "student", str(tmp_path / "run"), device, "fp32",
                                    "TRAINER.PROMPTKD.TEACHER_CACHE", cache_dir, "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE",
                                    "True", "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32"))
    assert isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
    assert type(trainer.eval_loader.sampler).__name__ == "ShardSampler"
    trainer.train()  # DDP steps, cache_views through gather_rows, sharded evaluation
    # the evaluation's report = the logits of every test image scored here
    logits, labels = [], []
    with torch.no_grad():
        for batch in trainer.eval_loader:
            logits.append(trainer.model_inference(batch["img"].to(trainer.device)).cpu())
            labels.append(batch["label"])
    assert trainer.last_report == pytest.approx(accuracy_report(torch.cat(logits), torch.cat(labels), "base2novel",
                                                                trainer.num_base))
    cache = trainer.cache
    assert cache.is_complete([0])
    keys = list(range(len(trainer.view_dataset)))
    images = torch.stack([trainer.view_dataset[(0, i)]["img"] for i in keys]).to(trainer.device)
    with torch.no_grad():
        direct = trainer.teacher.embed(images).cpu()
    # batch composition only (one batch here, per-step batches there): fp32 GEMM rounding, ~1e-6
    assert (cache.lookup([0] * len(keys), keys) - direct).abs().max() <= 1e-5


def student_and_batch(student_clip, device):
    from promptkd.student import PromptKDStudent
    torch.manual_seed(0)
    student = PromptKDStudent(student_clip.visual, student_clip.logit_scale, class_dim=96, n_ctx=2, depth=2)
    r = student_clip.visual.input_resolution
    x = torch.randn(4, 3, r, r, generator=torch.Generator().manual_seed(1))
    return student.to(device).train(), x.to(device), F.normalize(torch.randn(5, 96), dim=-1).to(device)


@pytest.mark.parametrize("device", DEVICES)
def test_checkpointing_keeps_gradients_on_the_device(student_clip, teacher_clip, device):
    from promptkd.losses import kd_loss
    student, x, vectors = student_and_batch(student_clip, device)
    target = 10 * torch.randn(4, 5).to(device)
    runs = []
    for checkpoint in (False, True):
        student.image_encoder.grad_checkpoint = checkpoint
        runs.append(loss_and_grads(student, lambda: kd_loss(student(x, vectors), target, 1.0, 10.0)))
    torch.manual_seed(0)
    method = promptsrc(teacher_clip).to(device).train()
    y = torch.tensor([0, 1, 2, 0], device=device)
    r = teacher_clip.visual.input_resolution
    xt = torch.randn(4, 3, r, r, generator=torch.Generator().manual_seed(2)).to(device)

    def step():
        out = method(xt)
        return F.cross_entropy(out["logits"], y) + sum(method.extra_losses(out, y).values())
    method_runs = [loss_and_grads(method, step)]
    method.set_grad_checkpoint(text=True, image=True)
    method_runs.append(loss_and_grads(method, step))
    # Recomputation runs the same kernels on the same shapes; CUDA's atomic-add reductions in some
    # backward kernels may sum in another order (~1e-7 relative), hence 1e-5 rather than equality.
    for off, on_ in (runs, method_runs):
        assert (off[0] - on_[0]).abs().item() <= 1e-5
        assert off[1].keys() == on_[1].keys() and off[1]
        for name in off[1]:
            assert (off[1][name] - on_[1][name]).abs().max().item() <= 1e-5, name


@pytest.mark.parametrize("device", DEVICES)
def test_predictor_and_export_equal_eager_on_the_device(setup, tmp_path, device):
    from promptkd.deploy import export_model
    from promptkd.deploy.predictor import Predictor
    run = str(tmp_path / "student")
    trainer = make_trainer(args_for(setup, "student", run, device, "fp32"))
    trainer.save_student_predictor()
    predictor = Predictor.from_run(run)
    predictor.model.to(device)
    trainer.set_model_mode("eval")  # BatchNorm on its running statistics, as the predictor
    images = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        eager = trainer.model_inference(images.to(trainer.device)).cpu()
        got = predictor.logits(images).cpu()
    assert got.device.type == "cpu" and (got - eager).abs().max() <= 1e-5
    if device != "cuda":
        return  # the CPU export is tests/test_predict_export.py's
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    out = str(tmp_path / "student.onnx")
    assert export_model.main([run, out, "--format", "onnx"]) == 0
    providers = [p for p in ("CUDAExecutionProvider", "CPUExecutionProvider") if p in ort.get_available_providers()]
    exported = torch.from_numpy(export_model.run_exported(out, images, providers=providers))
    assert (exported - eager).abs().max() <= 1e-4  # another runtime's fp32 kernels


@pytest.mark.parametrize("dtype,tol", [("fp32", 0.0), ("fp16", 2 ** -11)])  # fp16: half an ulp of a unit vector entry
@pytest.mark.parametrize("device", DEVICES)
def test_teacher_cache_writes_and_reads_device_tensors(tmp_path, device, dtype, tol):
    identity = {"dataset": "x"}
    cache = TeacherCache.create(str(tmp_path), identity, n_images=6, epochs=1, width=8, dtype=dtype, shard_size=4)
    e = F.normalize(torch.randn(6, 8), dim=-1).to(device)
    cache.add(torch.zeros(3, dtype=torch.long, device=device), torch.tensor([5, 0, 2], device=device), e[[5, 0, 2]])
    cache.add(torch.zeros(3, dtype=torch.long), torch.tensor([1, 3, 4]), e[[1, 3, 4]])
    back = TeacherCache.open(str(tmp_path), identity, 1).lookup([0] * 6, list(range(6))).to(device)
    assert back.device.type == device and back.dtype == torch.float32
    assert (back - e).abs().max().item() <= tol
    assert dist_.world_size() == 1
