"""Helpers of the multi-process tests (test_distributed.py, test_pools.py): train.py under
`torchrun --standalone --nproc_per_node 2` on CPU with gloo, through tests/ddp_probe.py, which
saves each rank's state and evaluation scores; and the comparison of two state dicts.
"""
import os
import subprocess
import sys

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE = os.path.join(ROOT, "tests", "ddp_probe.py")
CPU = ["USE_CUDA", "False", "TRAIN.DETERMINISTIC", "True"]  # exactness is checked: deterministic kernels


def env(**extra):
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": ROOT, **extra}


def torchrun(probe_dir, args, extra_env=None, timeout=600):
    os.makedirs(probe_dir, exist_ok=True)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               PROBE, probe_dir, *args, *CPU]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                          env=env(**(extra_env or {})))


def ranks(probe_dir):
    return [torch.load(os.path.join(probe_dir, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]


def assert_same(a, b, atol=0.0, rtol=0.0):
    assert sorted(a) == sorted(b)
    for k in a:
        assert torch.allclose(a[k].float(), b[k].float(), rtol=rtol, atol=atol), (k, (a[k] - b[k]).abs().max())
