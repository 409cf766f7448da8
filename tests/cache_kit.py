"""Helpers of the teacher-cache tests (test_teacher_cache.py, test_view_bank.py,
test_compact_cache.py): how far apart two students end, the fp32 tolerances that bound it, and
the view-bank tests' teacher (fake DTD of 5 x 8 images, one epoch) with the student command line
that distils from it (4 epochs by default: with K = 2 views per image, two cycles).
"""
import os

import pytest
import torch

from tests.fake_data import make_dtd
from tests.trainer_kit import make_trainer, student_args, teacher_args


def relative_distance(weights, ref, init):
    """|weights - ref| / |ref - init| over all learnable floating-point weights: how far apart two
    students are, as a share of how far training moved them."""
    keys = [k for k in ref if ref[k].is_floating_point()]
    moved = torch.cat([(ref[k] - init[k]).flatten() for k in keys]).norm()
    assert moved > 0
    return (torch.cat([(weights[k] - ref[k]).flatten() for k in keys]).norm() / moved).item()


# fp32 embeddings computed at another batch size differ by rounding only: a GEMM of another
# shape may sum in another order (MKL and ATen pick kernels by shape and CPU), which moves a
# result by a few ulps per operation. Through the tiny towers (<= 4 layers, inner sizes <= 256)
# that stays far below 64 ulps of a unit component (2^-17 = 7.6e-6); a real difference (another
# view, image or teacher) moves components by 1e-2 or more.
FP32_ACROSS_BATCH_SIZES = 2.0**-17
# A student trained on embeddings perturbed by rho ends a fraction ~ c * rho of its training
# distance away (linear response: SGD for a few steps is smooth in its targets). The fp16 cache
# (rho = 2^-11) stays within 1% (next test), so c <= 0.01 / 2^-11 ~ 20, and fp32 rounding across
# batch sizes (rho <= 2^-17) gives <= 1.6e-4. We allow 1e-3 for curvature. Measured on an
# Intel Xeon: 0 (same kernels); with MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2
# the embeddings differ and the students stay well inside the bound.
FP32_STUDENT_SHARE = 1e-3

EPOCHS = 4  # with K = 2: two cycles, so the second reuses every view


@pytest.fixture(scope="module")
def setup(tmp_path_factory, clip_files):
    root = str(tmp_path_factory.mktemp("data"))
    make_dtd(root, n_classes=5, per_class=8)
    out = str(tmp_path_factory.mktemp("teacher"))
    make_trainer(teacher_args(root, clip_files, out, epochs=1)).train()
    return {"root": root, "export": os.path.join(out, "export"), "clip": clip_files}


def args(setup, out, *extra, epochs=EPOCHS):
    return student_args(setup["root"], setup["clip"], out, setup["export"], "TEST.NO_TEST", "True", *extra,
                        epochs=epochs)
