"""The compact teacher caches against the full fp32 teacher, on tiny CLIPs and fake DTD:
TEACHER_CACHE_DTYPE int8 (one int8 per component + one fp32 scale per vector) and topk (the
teacher's k largest logits and their classes, the rest of its mass spread uniformly).

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

from promptkd.trainers import train  # noqa: E402,F401  (conftest.py registers the trainers and datasets)
from promptkd.errors import ConfigError  # noqa: E402
from promptkd.losses import kd_loss  # noqa: E402
from promptkd.student import teacher_logits  # noqa: E402
from promptkd.teacher_cache import MANIFEST, TeacherCache, bytes_per_view, decode, encode  # noqa: E402
from tests.cache_kit import args, relative_distance, setup  # noqa: E402,F401  (setup: the module fixture)
from tests.trainer_kit import learnable, make_trainer  # noqa: E402

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
    assert write(setup, base / "topk", "topk", "TRAINER.PROMPTKD.TEACHER_CACHE_TOPK", "3") == 0  # of 5 classes
    trainer = make_trainer(args(setup, str(base / "t"), epochs=2))
    return {fmt: read_all(base / fmt) for fmt in ("fp32", "int8", "topk")} | {
        "base": base, "scale": trainer.teacher_logit_scale, "vectors": trainer.class_vectors}


def test_topk_keeps_the_top_probabilities_and_the_tail_mass():
    torch.manual_seed(0)
    logits = (torch.randn(32, 50) * 4).numpy()
    spec = {"k": 10, "classes": 50, "temperature": 2.0}
    rows = encode("topk", logits, spec)
    assert rows.dtype.itemsize == 10 * 2 + 10 * 2 + 4 == bytes_per_view("topk", 768, spec)
    p = torch.softmax(torch.from_numpy(logits).double() / 2, 1)
    q = torch.softmax(torch.from_numpy(decode("topk", rows, spec)).double() / 2, 1)
    top = p.topk(10, 1)
    # the top-k probabilities, up to the fp16 rounding of their logits (|dl| <= 2^-11 |l|, / T)
    assert torch.allclose(q.gather(1, top.indices), top.values, rtol=2 * 2.0**-11 * 16 / 2, atol=0)
    tail = 1 - top.values.sum(1)
    assert torch.allclose(q.sum(1) - q.gather(1, top.indices).sum(1), tail, rtol=1e-2)  # ... and the tail's mass
    assert ((q - p).abs().sum(1) <= 2 * tail + 1e-2).all()  # so ||dp||_1 <= 2 x tail mass (+ rounding)


@pytest.mark.parametrize("fmt", ["int8", "topk"])
def test_kd_loss_and_gradient_error_against_fp32(caches, fmt):
    (c32, e32), (cx, ex) = caches["fp32"], caches[fmt]
    assert os.path.getsize(os.path.join(cx.directory, "e000-00000000.npy")) < \
        os.path.getsize(os.path.join(c32.directory, "e000-00000000.npy")) / 3
    scale, vectors, T, w = caches["scale"], caches["vectors"], 1.0, 100.0
    l32 = teacher_logits(e32, scale, vectors)
    lx = ex if fmt == "topk" else teacher_logits(ex, scale, vectors)
    eps = ((lx - l32).abs() / T).max(dim=1).values  # per view: max |dlogit| / T (topk: the tail's too)
    B, C = l32.shape
    p, px = torch.softmax(l32 / T, 1), torch.softmax(lx / T, 1)
    dp = (px - p).abs().sum(1)
    print(f"{fmt}: max |dlogit|/T {eps.max():.5f} (median over views {eps.median():.5f}), max ||dp||_1 "
          f"{dp.max():.2e}; teacher logits span {(l32.max(1).values - l32.min(1).values).mean():.2f}")
    if fmt == "int8":
        assert 0 < eps.max() <= 0.1  # the default TEACHER_CACHE_MAX_LOGIT_ERROR, which the writer checked
        # A shift of at most eps in every logit / T moves each log-probability by at most 2 eps.
        assert (dp <= torch.expm1(2 * eps) + 1e-7).all()
    else:
        assert 0 < dp.max() <= 0.1  # the default TEACHER_CACHE_MAX_PROB_ERROR, which the writer checked
    # Against a student's logits z (a spread like a trained student's): loss and gradient.
    torch.manual_seed(0)
    z = (l32 + 2 * torch.randn_like(l32)).requires_grad_(True)
    loss32 = kd_loss(z, l32, T, w)
    g32, = torch.autograd.grad(loss32, z)
    lossx = kd_loss(z, lx, T, w)
    gx, = torch.autograd.grad(lossx, z)
    # The gradient is w T (q - p) / (B C): its error per view is exactly w T ||dp||_1 / (B C).
    assert torch.allclose((gx - g32).abs().sum(1), w * T * dp / (B * C), rtol=1e-3, atol=1e-9)
    # KL(p||q) - KL(px||q) = sum(p log p - px log px) + sum((px - p) log q)
    logq = torch.log_softmax(z.detach() / T, 1)
    dkl = (px * px.log() - p * p.log()).abs().sum(1) + dp * logq.abs().max(1).values
    assert (lossx - loss32).abs() <= w * T**2 * dkl.sum() / (B * C) + 1e-6
    rel_loss = ((lossx - loss32).abs() / loss32).item()
    rel_grad = ((gx - g32).norm() / g32.norm()).item()
    print(f"{fmt}: KD loss relative error {rel_loss:.2e}, gradient relative error {rel_grad:.2e}")
    # Measured (tiny CLIPs): int8 1.9e-4 / 1.7e-3; topk (k = 3 of 5) 8.8e-3 / 6.5e-2: this random-init
    # teacher is nearly uniform (its logits span ~0.5), the worst case for a top-k cut.
    limits = {"int8": (0.01, 0.05), "topk": (0.02, 0.1)}[fmt]
    assert rel_loss <= limits[0] and rel_grad <= limits[1]


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
    (_, e32), (_, e8) = caches["fp32"], caches["int8"]  # noqa
    rho = ((e8 - e32).norm(dim=1) / e32.norm(dim=1)).max().item()
    print(f"int8: embeddings moved by rho <= {rho:.2e}; student {share:.2e} of its training distance away")
    # linear response (test_teacher_cache: c <= 20 per unit of relative embedding error)
    assert 0 < share <= 20 * rho


def test_a_topk_cache_is_read_only_by_a_run_with_its_k_and_temperature(setup, caches, tmp_path):
    topk = caches["base"] / "topk"
    with pytest.raises(ConfigError, match=r"does not match this run: top-k logits"):
        make_trainer(args(setup, str(tmp_path / "a"), "TRAINER.PROMPTKD.TEACHER_CACHE", str(topk), epochs=2))
    other_temperature = r"does not match this run: top-k logits.*'temperature': 1.0.*'temperature': 2.0"
    with pytest.raises(ConfigError, match=other_temperature):
        make_trainer(args(setup, str(tmp_path / "b"), "TRAINER.PROMPTKD.TEACHER_CACHE", str(topk),
                          "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "topk", "TRAINER.PROMPTKD.TEACHER_CACHE_TOPK", "3",
                          "TRAINER.PROMPTKD.TEMPERATURE", "2.0", epochs=2))
    trainer = make_trainer(args(setup, str(tmp_path / "c"), "TRAINER.PROMPTKD.TEACHER_CACHE", str(topk),
                                "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "topk",
                                "TRAINER.PROMPTKD.TEACHER_CACHE_TOPK", "3", epochs=2))
    assert trainer.teacher is None
    trainer.train()


def test_a_format_beyond_the_logit_error_bound_is_refused(setup, tmp_path):
    with pytest.raises(ConfigError, match=r"int8 teacher cache moves the teacher's logits / T by up to .* more "
                                          r"than TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR 1e-05"):
        write(setup, tmp_path / "c", "int8", "TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR", "1e-5")
    with pytest.raises(ConfigError, match=r"topk teacher cache \(k = 1\) moves the teacher's distribution by "
                                          r"\|\|dp\|\|_1 up to .*TEACHER_CACHE_MAX_PROB_ERROR 1e-05"
                                          r".*TEACHER_CACHE_TOPK"):
        write(setup, tmp_path / "t", "topk", "TRAINER.PROMPTKD.TEACHER_CACHE_TOPK", "1",
              "TRAINER.PROMPTKD.TEACHER_CACHE_MAX_PROB_ERROR", "1e-5")
    assert write(setup, tmp_path / "c16", "fp16", "TRAINER.PROMPTKD.TEACHER_CACHE_MAX_LOGIT_ERROR", "1e-5") == 0



def test_topk_with_a_view_bank_online_and_from_the_cache(setup, tmp_path):
    """An online run filling a topk cache with VIEWS_PER_IMAGE 2 scores its fresh views with the
    full teacher and its reused ones from the stored top-k; a run from that cache trains on it."""
    opts = ["TRAINER.PROMPTKD.TEACHER_CACHE", str(tmp_path / "c"), "TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "topk",
            "TRAINER.PROMPTKD.TEACHER_CACHE_TOPK", "3", "TRAINER.PROMPTKD.VIEWS_PER_IMAGE", "2"]
    online = make_trainer(args(setup, str(tmp_path / "a"), *opts, "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True"))
    online.train()
    assert online.cache.is_complete() and online.cache.max_error > 0
    cached = make_trainer(args(setup, str(tmp_path / "b"), *opts))
    assert cached.teacher is None and cached.cache.gives_logits
    cached.train()
    init = learnable(make_trainer(args(setup, str(tmp_path / "init"))))
    assert relative_distance(learnable(cached), learnable(online), init) <= 0.1
