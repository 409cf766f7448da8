"""The compact teacher cache (TEACHER_CACHE_DTYPE int8: one int8 per component + one fp32 scale
per vector) against the full fp32 teacher, on tiny CLIPs and fake DTD.

Measured: the error of the teacher's logits / T (what the writer checks against
TEACHER_CACHE_MAX_LOGIT_ERROR, refusing the format beyond it), and what it does to the KD loss
and its gradient, each within a bound derived from the measured logit error; a student from the
int8 cache ends close to the online one; a format beyond the bound is refused.
"""
import json
import os

import numpy as np
import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed")

from promptkd.trainers import train  # noqa: E402,F401  (registers datasets and trainers)
from promptkd.errors import ConfigError  # noqa: E402
from promptkd.losses import kd_loss  # noqa: E402
from promptkd.student import teacher_logits  # noqa: E402
from promptkd.teacher_cache import MANIFEST, TeacherCache, bytes_per_view, decode, encode  # noqa: E402
from tests.test_teacher_cache import relative_distance  # noqa: E402
from tests.test_trainers import learnable, make_trainer  # noqa: E402
from tests.test_view_bank import args, setup  # noqa: E402,F401  (the module fixture)

pytestmark = pytest.mark.exact


def write(setup, cache, fmt, *extra):
    from promptkd import cli
    argv = args(setup, str(cache) + "-out", "TRAINER.PROMPTKD.TEACHER_CACHE", str(cache),
                "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", fmt, *extra, epochs=2)
    return cli.main(["cache", *argv])


def read_all(cache):
    c = TeacherCache(str(cache), json.load(open(os.path.join(cache, MANIFEST))))
    idx, eps = torch.arange(c.n_images).repeat(c.epochs), torch.arange(c.epochs).repeat_interleave(c.n_images)
    return c, c.lookup(eps, idx)


def test_int8_rounding_is_within_half_a_step():
    e = torch.nn.functional.normalize(torch.randn(64, 96), dim=-1).numpy()
    rows = encode("int8", e)
    assert rows.dtype.itemsize == 96 + 4 == bytes_per_view("int8", 96)
    step = np.abs(e).max(axis=1, keepdims=True) / 127
    assert (np.abs(decode("int8", rows) - e) <= step / 2 * (1 + 1e-6)).all()
    assert bytes_per_view("fp16", 768) == 1536 and bytes_per_view("int8", 768) == 772


@pytest.fixture(scope="module")
def caches(setup, tmp_path_factory):
    base = tmp_path_factory.mktemp("compact")
    assert write(setup, base / "fp32", "fp32") == 0
    assert write(setup, base / "int8", "int8") == 0
    trainer = make_trainer(args(setup, str(base / "t"), epochs=2))
    return {"fp32": read_all(base / "fp32"), "int8": read_all(base / "int8"), "base": base,
            "scale": trainer.teacher_logit_scale, "vectors": trainer.class_vectors}


def test_int8_kd_loss_and_gradient_error_against_fp32(caches):
    (c32, e32), (c8, e8) = caches["fp32"], caches["int8"]
    assert os.path.getsize(os.path.join(c8.directory, "e000-00000000.npy")) < \
        os.path.getsize(os.path.join(c32.directory, "e000-00000000.npy")) / 3
    scale, vectors, T, w = caches["scale"], caches["vectors"], 1.0, 100.0
    l32, l8 = teacher_logits(e32, scale, vectors), teacher_logits(e8, scale, vectors)
    eps = ((l8 - l32).abs() / T).max(dim=1).values  # per view: max |Δlogit| / T
    print(f"int8: max |dlogit|/T {eps.max():.5f} (median over views {eps.median():.5f}), logits span "
          f"{(l32.max(1).values - l32.min(1).values).mean():.2f}")
    assert 0 < eps.max() <= 0.1  # the default TEACHER_CACHE_MAX_LOGIT_ERROR, which the writer checked
    # Against a student's logits z (a spread like a trained student's): loss and gradient.
    torch.manual_seed(0)
    z = (l32 + 2 * torch.randn_like(l32)).requires_grad_(True)
    loss32 = kd_loss(z, l32, T, w)
    g32, = torch.autograd.grad(loss32, z)
    loss8 = kd_loss(z, l8, T, w)
    g8, = torch.autograd.grad(loss8, z)
    B, C = l32.shape
    p, p8 = torch.softmax(l32 / T, 1), torch.softmax(l8 / T, 1)
    logq = torch.log_softmax(z.detach() / T, 1)
    dp = (p8 - p).abs().sum(1)
    # A shift of at most eps in every logit / T moves each log-probability by at most 2 eps,
    # so ||p8 - p||_1 <= e^(2 eps) - 1; the gradient is w T (q - p) / (B C), so its error per
    # view is w T ||p8 - p||_1 / (B C); the KL per view moves by at most
    # 2 eps + ||p8 - p||_1 (max|log p8| + max|log q|).
    assert (dp <= torch.expm1(2 * eps) + 1e-7).all()
    assert torch.allclose((g8 - g32).abs().sum(1), w * T * dp / (B * C), rtol=1e-3, atol=1e-9)
    dkl = 2 * eps + dp * (torch.log(p8).abs().max(1).values + logq.abs().max(1).values)
    assert (loss8 - loss32).abs() <= w * T**2 * dkl.sum() / (B * C) + 1e-6
    rel_loss = ((loss8 - loss32).abs() / loss32).item()
    rel_grad = ((g8 - g32).norm() / g32.norm()).item()
    print(f"int8: KD loss relative error {rel_loss:.2e}, gradient relative error {rel_grad:.2e}")
    assert rel_loss <= 0.01 and rel_grad <= 0.05


def test_a_student_from_the_int8_cache_stays_close_to_the_fp32_one(setup, caches, tmp_path):
    def student(cache):
        trainer = make_trainer(args(setup, str(tmp_path / os.path.basename(cache)),
                                    "TRAINER.PROMPTKD.TEACHER_CACHE", str(cache), epochs=2))
        trainer.train()
        return learnable(trainer)
    base = caches["base"]
    ref, w8 = student(base / "fp32"), student(base / "int8")
    init = learnable(make_trainer(args(setup, str(tmp_path / "init"), epochs=2)))
    share = relative_distance(w8, ref, init)
    (_, e32), (_, e8) = caches["fp32"], caches["int8"]
    rho = ((e8 - e32).norm(dim=1) / e32.norm(dim=1)).max().item()
    print(f"int8: embeddings moved by rho <= {rho:.2e}; student {share:.2e} of its training distance away")
    # linear response (test_teacher_cache: c <= 20 per unit of relative embedding error)
    assert 0 < share <= 20 * rho


def test_a_format_beyond_the_logit_error_bound_is_refused(setup, tmp_path):
    with pytest.raises(ConfigError, match=r"int8 teacher cache moves the teacher's logits / T by up to .* more "
                                          r"than TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR 1e-05"):
        write(setup, tmp_path / "c", "int8", "TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR", "1e-5")
    assert write(setup, tmp_path / "c16", "fp16", "TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR", "1e-5") == 0

