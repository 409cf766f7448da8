"""The GPU paths, checked on the CPU (issue 37): what a first GPU run would trip over, each as a
device-agnostic invariant that the defect breaks.

* fp16 towers run every matmul / norm / attention op on operands of one dtype (a CPU kernel
  accepts fp16 input with fp32 LayerNorm weights; whether a GPU's does is not to be found out
  there);
* GPA sums read from a checkpoint (on the CPU) follow the parameters to their device (checked
  on the `meta` device, which refuses a CPU operand as CUDA would);
* under a GradScaler a non-finite loss is skipped and counted, not an error;
* the training loop reads its loss values every TRAIN.READ_LOSS_EVERY steps, not every step
  (host reads counted);
* the text encoders index on the device of their activations (meta again);
* TF32 on a GPU unless TRAIN.DETERMINISTIC; loaders keep their workers and pin memory.
"""
import math
import os

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from promptkd.backbones import load_backbone, load_clip, mixed_dtype_ops, to_half
from promptkd.encoders import PromptedImageEncoder, PromptedTextEncoder
from promptkd.losses import CALIBRATION_SKIPS, GaussianPromptAggregator, StepLog
from promptkd.precision import configure_matmul
from tests.gpu_kit import HostReads

NAMES = ["a cat", "golden_retriever", "space shuttle"]


def images(size, n=2, seed=0):
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


# --- 1. fp16 towers: one dtype per op ---------------------------------------------------------

def test_the_dtype_check_sees_a_mixed_layer_norm():
    """The check itself can fail: fp16 input against fp32 LayerNorm weights (what open_clip's
    plain LayerNorm did after convert_weights_to_lp) is found, though the CPU kernel runs it."""
    norm = torch.nn.LayerNorm(8)
    with mixed_dtype_ops() as found:
        norm(torch.randn(2, 8).half())
    assert found and found[0][0] == "native_layer_norm"


def half_tower_ops(model, size):
    to_half(model)
    img, txt = PromptedImageEncoder(model, 2, 2), PromptedTextEncoder(model, 4, 2)
    with torch.no_grad(), mixed_dtype_ops() as found:
        a, b = img(images(size)), txt.encode(NAMES)
    return found, a, b


def test_half_open_clip_towers_run_every_op_in_one_dtype(tmp_path):
    pytest.importorskip("open_clip")
    from promptkd.demo.tiny import write_tiny_open_clip
    name = write_tiny_open_clip(str(tmp_path), "tiny-oc-teacher", seed=3)  # LayerScale, GELU, plain LayerNorm
    reference, _ = load_backbone(name)
    model, _ = load_backbone(name)
    found, a, b = half_tower_ops(model, 48)
    assert found == [] and a.dtype == b.dtype == torch.float16
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert norms and all(type(m).__name__ == "LayerNormFp32" and m.weight.dtype == torch.float32 for m in norms)
    # fp16 against the fp32 tower: the LayerNorms compute in fp32 now, the matmuls in fp16 (10 bits:
    # ~1e-3 relative per rounding, a few dozen roundings deep) -> within 2% of the feature norm
    with torch.no_grad():
        torch.manual_seed(0)
        img = PromptedImageEncoder(model, 2, 2)
        torch.manual_seed(0)
        ref = PromptedImageEncoder(reference, 2, 2)
        x = images(48)
        assert (img(x).float() - ref(x)).norm() <= 0.02 * ref(x).norm()


def test_half_openai_towers_run_every_op_in_one_dtype(clip_files):
    model = load_clip(clip_files["teacher"])
    found, a, b = half_tower_ops(model, model.visual.input_resolution)
    assert found == [] and a.dtype == b.dtype == torch.float16


# --- 2. GPA resumed on a GPU ------------------------------------------------------------------

def test_resumed_gpa_sums_follow_the_parameters_to_their_device():
    """A checkpoint loads onto the CPU; the next update adds the parameters of the run's device.
    `meta` stands for CUDA: like it, it refuses to add a CPU tensor (cpu + meta raises)."""
    gpa = GaussianPromptAggregator(3, 2, 1.0)
    gpa.update(1, {"p": torch.ones(2, 3)})
    resumed = GaussianPromptAggregator(3, 2, 1.0)
    resumed.load_state_dict(gpa.state_dict())  # CPU tensors, as torch.load(map_location="cpu")
    resumed.update(2, {"p": torch.ones(2, 3, device="meta")})
    assert resumed.sums["p"].device.type == "meta" and resumed.epochs_done == 2
    gpa.update(2, {"p": torch.ones(2, 3)})  # the same arithmetic on the CPU
    assert gpa.sums["p"].shape == resumed.sums["p"].shape


# --- 3. a non-finite loss under a GradScaler --------------------------------------------------

def test_step_log_counts_skipped_steps_and_stops_past_the_limits():
    log = StepLog(max_skipped_share=0.1)
    log.last_scale = 2.0 ** 16
    scale = 2.0 ** 16
    for _ in range(CALIBRATION_SKIPS):  # calibration: the scale halves at every skipped step
        scale /= 2
        assert log.scaler_step(scale, "x") is True
    assert log.skipped == CALIBRATION_SKIPS and log.in_a_row == CALIBRATION_SKIPS
    with pytest.raises(FloatingPointError, match=rf"skipped {CALIBRATION_SKIPS + 1} steps in a row.*epoch 1, batch 25"):
        _copy(log).scaler_step(scale / 2, "epoch 1, batch 25")
    for _ in range(100):  # good steps: the scale stays
        assert log.scaler_step(scale, "x") is False
    assert log.in_a_row == 0
    # then every other step skipped: 124 + 2k steps, 24 + k skipped; the (k - 0)-th extra skip is
    # more than 10% of the steps once k > 0.1 (124 + 2k), i.e. at k = 16: 40 of 155 steps
    with pytest.raises(FloatingPointError, match=r"skipped 40 of 155 steps \(more than 10% beyond the first 24"):
        for _ in range(20):
            scale /= 2
            log.scaler_step(scale, "x")
            log.scaler_step(scale, "x")


def _copy(log):
    other = StepLog()
    other.__dict__.update(log.__dict__)
    return other


def test_step_log_reads_once_and_names_the_first_non_finite_loss():
    log = StepLog(every=3, hint="Try a lower OPTIM.LR.")
    for i, v in enumerate([1.0, float("inf"), float("nan")]):
        loss = torch.tensor(v)
        log.watch(loss, f"batch {i + 1}")
        log.add(i, {"kd_loss": loss, "lr": 0.5})
    assert log.due() and log.host_reads == 0
    with pytest.raises(FloatingPointError, match=r"Loss is inf at batch 2\. Try a lower OPTIM.LR\."):
        log.read()
    assert log.host_reads == 1
    log.add(7, {"a": torch.tensor(2.0), "b": torch.tensor(3.0)})
    assert log.read() == [(7, {"a": 2.0, "b": 3.0})] and log.host_reads == 2 and log.read() == []


# --- trainers on a fake DTD -------------------------------------------------------------------

@pytest.fixture(scope="module")
def setup(clip_files, tmp_path_factory):
    pytest.importorskip("dassl", reason="Dassl not installed (see README)")
    from tests.fake_data import make_dtd
    from tests.gpu_kit import make_trainer, teacher_args
    data = str(tmp_path_factory.mktemp("paths_data"))
    make_dtd(data, n_classes=5, per_class=10)
    out = str(tmp_path_factory.mktemp("paths_teacher"))
    make_trainer(teacher_args(data, clip_files, out, "USE_CUDA", "False", epochs=1)).export()
    return {"data": data, "export": os.path.join(out, "export"), "weights": clip_files}


def student(setup, out, *extra, epochs=1):
    from tests.gpu_kit import make_trainer, student_args
    return make_trainer(student_args(setup["data"], setup["weights"], str(out), setup["export"], "USE_CUDA", "False",
                                     "DATALOADER.TRAIN_X.SAMPLER", "SequentialSampler", *extra, epochs=epochs))


def test_an_overflowing_step_under_a_grad_scaler_is_skipped_not_fatal(setup, tmp_path):
    """PREC amp's GradScaler (here torch's CPU GradScaler, same logic): an inf loss at the default
    scale is the scaler's business (skip the step, halve the scale), not an error."""
    trainer = student(setup, tmp_path)
    trainer.scaler = torch.amp.GradScaler("cpu")
    trainer.epoch = trainer.batch_idx = 0
    trainer.set_model_mode("train")
    before = {n: p.detach().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    loss = sum((p * float("inf")).sum() for p in params[:1]) + sum(p.sum() for p in params)
    trainer.backward_and_step(loss)  # before the fix: FloatingPointError
    assert trainer.step_log.skipped == 1 and trainer.scaler.get_scale() == 2.0 ** 15
    assert all(torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)
    trainer.backward_and_step(sum(p.sum() for p in params))  # a finite step goes through
    assert trainer.step_log.skipped == 1 and trainer.step_log.in_a_row == 0
    assert any(not torch.equal(p, before[n]) for n, p in trainer.model.named_parameters() if p.requires_grad)


def test_the_epoch_loop_reads_losses_every_n_steps(setup, tmp_path):
    """8 steps with TRAIN.READ_LOSS_EVERY 4: two host reads of the loss values in the whole
    epoch (before: an isfinite check and an .item() per step, 16), and every step is still logged
    with its own value."""
    trainer = student(setup, tmp_path, "TRAIN.READ_LOSS_EVERY", "4", "DATALOADER.TRAIN_X.BATCH_SIZE", "2")
    loader = trainer.train_loader_x
    batches = [b for _, b in zip(range(8), loader)]
    assert len(batches) == 8
    trainer.train_loader_x = batches  # no loader code in the count
    trainer.epoch, trainer.max_epoch = 0, 1
    logged = []
    trainer.write_scalar = lambda tag, value, n_iter: logged.append((tag, n_iter, value))
    with HostReads() as reads:
        trainer.run_epoch()
    assert trainer.step_log.host_reads == 2
    assert len(reads.calls) <= 2, reads.calls
    assert [(t, n) for t, n, _ in logged] == [("train/kd_loss", i) for i in range(8)]
    assert all(isinstance(v, float) and math.isfinite(v) for _, _, v in logged)
    assert trainer.epoch_losses["kd_loss"] == pytest.approx(sum(v for _, _, v in logged) / 8)


def test_configured_matmul_precision_follows_deterministic(setup, tmp_path, monkeypatch):
    saved = torch.get_float32_matmul_precision(), torch.backends.cudnn.allow_tf32
    try:
        assert configure_matmul(torch.device("cpu"), False) is None
        assert torch.get_float32_matmul_precision() == saved[0]  # CPU kernels left alone
        assert configure_matmul("cuda", False) == "high" and torch.backends.cudnn.allow_tf32
        assert torch.get_float32_matmul_precision() == "high"
        assert configure_matmul("cuda:1", True) == "highest" and not torch.backends.cudnn.allow_tf32
    finally:
        torch.set_float32_matmul_precision(saved[0])
        torch.backends.cudnn.allow_tf32 = saved[1]
    import promptkd.trainers.base as base
    calls = []
    monkeypatch.setattr(base, "configure_matmul", lambda device, det: calls.append((device.type, det)))
    student(setup, tmp_path / "a")
    student(setup, tmp_path / "b", "TRAIN.DETERMINISTIC", "True")
    torch.use_deterministic_algorithms(False)
    assert calls == [("cpu", False), ("cpu", True)]


def test_train_compile_compiles_the_training_forward(setup, tmp_path, monkeypatch):
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda model, mode=None: compiled.append((model, mode)) or model)
    trainer = student(setup, tmp_path, "TRAIN.COMPILE", "reduce-overhead")
    assert compiled == [(trainer.model, "reduce-overhead")]
    assert student(setup, tmp_path / "off") and len(compiled) == 1
    from promptkd.errors import ConfigError
    with pytest.raises(ConfigError, match="TRAIN.COMPILE is 'fast'"):
        student(setup, tmp_path / "bad", "TRAIN.COMPILE", "fast")


# --- 10. text encoders index on their device --------------------------------------------------

class DeviceMix(TorchDispatchMode):
    """Ops given tensors on several devices (a 0-dim CPU tensor is a scalar: CUDA takes it)."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        flat = [a for x in (*args, *(kwargs or {}).values()) for a in (x if isinstance(x, (list, tuple)) else (x,))]
        devices = {a.device.type for a in flat
                   if isinstance(a, torch.Tensor) and not (a.device.type == "cpu" and a.dim() == 0)}
        if len(devices) > 1:
            self.found.append((func.overloadpacket.__name__, tuple(sorted(devices))))
        return func(*args, **(kwargs or {}))


def test_text_encoder_indexes_on_the_device_of_its_activations(teacher_clip):
    """`meta` stands for CUDA; the CPU's index kernel accepts a CPU index for a meta tensor, so
    the mode records every op that mixes devices (before: the EOT row index, a torch.arange made
    on the CPU, i.e. a host-to-device copy per text encode)."""
    enc = PromptedTextEncoder(teacher_clip, 4, 2)
    tokens = enc.tokenize(NAMES)
    enc.to("meta")
    with torch.no_grad(), DeviceMix() as mix:
        out = enc(tokens.to("meta"))
    assert out.device.type == "meta" and mix.found == []


# --- 12. loaders: persistent workers, pinned memory copied without blocking --------------------

def test_loaders_keep_their_workers_and_copies_do_not_block(setup, tmp_path):
    from torch.overrides import TorchFunctionMode

    trainer = student(setup, tmp_path, "DATALOADER.NUM_WORKERS", "1")
    loaders = {n: getattr(trainer, n) for n in ("train_loader_x", "test_loader", "eval_loader")}
    assert all(loader.num_workers == 1 and loader.persistent_workers for loader in loaders.values()), loaders
    teacher = make_teacher(setup, tmp_path / "t", "DATALOADER.NUM_WORKERS", "1")
    assert teacher.train_loader_x.persistent_workers and teacher.eval_loader.persistent_workers
    assert student(setup, tmp_path / "w0").train_loader_x.persistent_workers is False  # no workers: nothing to keep

    copies = []

    class Copies(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            if getattr(func, "__name__", "") == "to" and args and isinstance(args[0], torch.Tensor) \
                    and args[0].dim() == 4:  # the image batch
                copies.append((kwargs or {}).get("non_blocking", False))
            return func(*args, **(kwargs or {}))

    for t in (trainer, teacher):
        t.train_loader_x = student(setup, tmp_path / "w1").train_loader_x if t is trainer else t.train_loader_x
        batch = next(iter(t.train_loader_x))
        t.epoch = t.batch_idx = 0
        t.set_model_mode("train")
        with Copies():
            t.forward_backward(batch)
    assert copies == [True, True], copies


def make_teacher(setup, out, *extra):
    from tests.gpu_kit import make_trainer, teacher_args
    return make_trainer(teacher_args(setup["data"], setup["weights"], str(out), "USE_CUDA", "False", *extra, epochs=1))
