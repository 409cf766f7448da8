"""TRAIN.DETERMINISTIC: bit-reproducible GPU kernels, or the fastest ones.

On the CPU the kernels this project uses are deterministic either way. On a GPU, cuDNN's
benchmark mode picks convolution algorithms by timing (a different pick, different rounding)
and several cuBLAS / CUDA kernels accumulate in a run-dependent order, so "resume gives the
same weights" and "2 processes equal 1" hold bit for bit there only with

    cudnn.benchmark False, cudnn.deterministic True, torch.use_deterministic_algorithms(True)
    and CUBLAS_WORKSPACE_CONFIG=:4096:8 (cuBLAS's documented setting for reproducibility)

which `configure(True)` sets. `configure(False)` (the default, for speed) turns cuDNN's
benchmark mode on when a GPU is used.
"""
from __future__ import annotations

import logging
import os

import torch

logger = logging.getLogger("promptkd")

CUBLAS_KEY = "CUBLAS_WORKSPACE_CONFIG"
CUBLAS_DETERMINISTIC = ":4096:8"


def configure(deterministic: bool, use_cuda: bool = True) -> None:
    """Set torch's backends for TRAIN.DETERMINISTIC; call before the first GPU matmul."""
    cuda = use_cuda and torch.cuda.is_available()
    if deterministic:
        have = os.environ.get(CUBLAS_KEY)
        if have not in (":4096:8", ":16:8"):  # the two values cuBLAS documents as deterministic
            os.environ[CUBLAS_KEY] = CUBLAS_DETERMINISTIC
        torch.backends.cudnn.benchmark = False
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True)
        logger.info("TRAIN.DETERMINISTIC True: deterministic algorithms, cuDNN benchmark off, %s=%s",
                    CUBLAS_KEY, os.environ[CUBLAS_KEY])
    else:
        torch.use_deterministic_algorithms(False)
        torch.backends.cudnn.deterministic = False
        torch.backends.cudnn.benchmark = cuda
        if cuda:
            logger.info("TRAIN.DETERMINISTIC False: cuDNN benchmark on (fastest kernels; GPU results are not "
                        "bit-reproducible across runs, resumes or process counts)")
