"""The random state a checkpoint keeps, so a resumed run draws what it would have drawn.

Python, numpy, torch's CPU generator and, when the run's device is a GPU, the CUDA generator of
*this process's* GPU only (the device's index, else `torch.cuda.current_device()`: its
LOCAL_RANK GPU under torchrun). A run on the CPU never touches CUDA, even where a GPU is
visible (reading a CUDA generator creates a CUDA context: with USE_CUDA False every gloo rank
would take memory on cuda:0). Not every visible GPU's:
torchrun does not narrow CUDA_VISIBLE_DEVICES, so a run written where 8 GPUs are visible and
resumed where 2 are would not fit, and the other GPUs' generators are other processes' business.

Checkpoints of earlier versions stored the list of every visible GPU's state; reading one,
the entry of this process's GPU is taken (and the log says so).
"""
from __future__ import annotations

import logging
import random

import numpy as np
import torch

logger = logging.getLogger("promptkd")


def _cuda_index(device) -> int | None:
    """The CUDA device index of the run's `device` (None: the run is not on a GPU)."""
    if device is None:
        return None
    device = torch.device(device)
    if device.type != "cuda":
        return None
    return device.index if device.index is not None else torch.cuda.current_device()


def rng_state(device: torch.device | str | None = None) -> dict:
    """The random state to checkpoint; `device`: the run's device (CUDA's generator is read only
    when it is a GPU)."""
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": random.getstate(),
             "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *map(float, np_state[2:])]}
    index = _cuda_index(device)
    if index is not None:
        state["cuda"] = torch.cuda.get_rng_state(index)
        state["cuda_device"] = index
    return state


def set_rng_state(state: dict, device: torch.device | str | None = None) -> None:
    """Restore `state` (from `rng_state`); the CUDA generator only when the run's `device` is a GPU."""
    torch.set_rng_state(state["torch"])
    version, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((version, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(gauss)))
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    _set_cuda_state(state.get("cuda"), state.get("cuda_device"), device)


def _set_cuda_state(saved, saved_index, device) -> None:
    on_gpu = device is not None and torch.device(device).type == "cuda"
    if saved is None:
        if on_gpu:
            logger.info("The checkpoint holds no CUDA random state (written without a GPU): this GPU's generator "
                        "keeps its seed.")
        return
    if not on_gpu:
        logger.info("The checkpoint holds a CUDA random state but no GPU is used now: only the CPU, numpy and "
                    "Python states are restored.")
        return
    index = _cuda_index(device)
    if isinstance(saved, (list, tuple)):  # an earlier version: every visible GPU's state
        if index >= len(saved):
            logger.warning("The checkpoint holds the CUDA random states of %d GPU(s) (older format) and none for "
                           "cuda:%d: that GPU's generator keeps its seed.", len(saved), index)
            return
        logger.info("The checkpoint holds the CUDA random states of %d GPU(s) (older format): restoring the one "
                    "of cuda:%d, this process's GPU.", len(saved), index)
        saved = saved[index]
    elif saved_index is not None and int(saved_index) != index:
        logger.info("CUDA random state written on cuda:%d restored on cuda:%d (this process's GPU).",
                    int(saved_index), index)
    torch.cuda.set_rng_state(saved, index)
