"""Random state: checkpoints keep this process's CUDA generator only (and none when the run is
on the CPU, even where a GPU is visible), and views never touch torch's global generators. CUDA is mocked (no GPU here): the mock records what is read and
written and refuses the every-GPU calls (`get_rng_state_all` / `set_rng_state_all`)."""
import logging
import random

import numpy as np
import pytest
import torch
from PIL import Image
from torchvision import transforms as T

from promptkd import rng
from promptkd.views import seeded_view, stream_seed


class FakeCuda:
    """torch.cuda's RNG surface for `visible` GPUs, this process on `current`."""

    def __init__(self, monkeypatch, visible: int, current: int):
        self.states = {i: torch.full((16,), i, dtype=torch.uint8) for i in range(visible)}
        self.current, self.calls = current, []
        cuda = torch.cuda
        monkeypatch.setattr(cuda, "is_available", lambda: True)
        monkeypatch.setattr(cuda, "device_count", lambda: visible)
        monkeypatch.setattr(cuda, "current_device", self.current_device)
        monkeypatch.setattr(cuda, "get_rng_state", self.get)
        monkeypatch.setattr(cuda, "set_rng_state", self.set)
        for name in ("get_rng_state_all", "set_rng_state_all", "manual_seed", "manual_seed_all", "seed", "seed_all"):
            monkeypatch.setattr(cuda, name, self.refuse(name))

    def current_device(self):
        self.calls.append(("current_device", self.current))
        return self.current

    def get(self, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index
        self.calls.append(("get", index))
        return self.states[index].clone()

    def set(self, state, device="cuda"):
        index = device if isinstance(device, int) else torch.device(device).index
        if index >= len(self.states):
            raise IndexError(f"cuda:{index} is not visible")
        self.calls.append(("set", index))
        self.states[index] = state.clone()

    def refuse(self, name):
        def call(*args, **kwargs):
            self.calls.append((name, None))
            raise AssertionError(f"torch.cuda.{name} was called")
        return call


def test_checkpoint_keeps_only_this_process_gpu_state(monkeypatch):
    fake = FakeCuda(monkeypatch, visible=8, current=3)
    state = rng.rng_state(torch.device("cuda"))
    assert torch.equal(state["cuda"], fake.states[3]) and state["cuda_device"] == 3
    assert fake.calls == [("current_device", 3), ("get", 3)]
    fake.calls.clear()
    assert torch.equal(rng.rng_state("cuda:5")["cuda"], fake.states[5]) and fake.calls == [("get", 5)]


def test_a_cpu_run_on_a_machine_with_a_gpu_never_touches_cuda(monkeypatch, caplog):
    """USE_CUDA False where GPUs are visible (e.g. gloo ranks): reading a CUDA generator would
    create a CUDA context on cuda:0 in every process. Nothing of CUDA is called, either way."""
    fake = FakeCuda(monkeypatch, visible=2, current=0)
    state = rng.rng_state(torch.device("cpu"))
    assert "cuda" not in state and fake.calls == []
    gpu_state = {**state, "cuda": fake.states[0].clone(), "cuda_device": 0}  # written by a GPU run
    with caplog.at_level(logging.INFO, "promptkd"):
        rng.set_rng_state(gpu_state, torch.device("cpu"))
    assert fake.calls == [] and "no GPU is used now" in caplog.text
    rng.set_rng_state(state)  # no device given: a CPU run
    assert fake.calls == []


def test_resume_on_fewer_gpus_restores_this_process_gpu(monkeypatch, caplog):
    """Written on cuda:5 of 8 visible GPUs, resumed as the process on cuda:1 of 2."""
    writer = FakeCuda(monkeypatch, visible=8, current=5)
    writer.states[5] = torch.arange(16, dtype=torch.uint8)
    state = rng.rng_state(torch.device("cuda"))
    reader = FakeCuda(monkeypatch, visible=2, current=1)
    with caplog.at_level(logging.INFO, "promptkd"):
        rng.set_rng_state(state, torch.device("cuda"))
    assert reader.calls == [("current_device", 1), ("set", 1)] and torch.equal(reader.states[1], torch.arange(16, dtype=torch.uint8))
    assert "written on cuda:5 restored on cuda:1" in caplog.text


def test_old_checkpoints_with_every_gpu_state_are_read(monkeypatch, caplog):
    """An earlier version stored get_rng_state_all() (8 GPUs visible); this process's entry is used."""
    FakeCuda(monkeypatch, visible=8, current=0)
    state = rng.rng_state(torch.device("cuda"))
    state.pop("cuda_device")
    state["cuda"] = [torch.full((16,), 100 + i, dtype=torch.uint8) for i in range(8)]
    reader = FakeCuda(monkeypatch, visible=2, current=1)
    with caplog.at_level(logging.INFO, "promptkd"):
        rng.set_rng_state(state, torch.device("cuda"))
    assert reader.calls == [("current_device", 1), ("set", 1)] and torch.equal(reader.states[1], state["cuda"][1])
    assert "CUDA random states of 8 GPU(s) (older format): restoring the one of cuda:1" in caplog.text
    short = FakeCuda(monkeypatch, visible=4, current=3)  # the old list has no entry for cuda:3
    state["cuda"] = state["cuda"][:2]
    with caplog.at_level(logging.INFO, "promptkd"):
        rng.set_rng_state(state, torch.device("cuda"))
    assert ("set", 3) not in short.calls and "none for cuda:3" in caplog.text


def test_cpu_and_gpu_checkpoints_cross_over(monkeypatch, caplog):
    cpu_state = rng.rng_state(torch.device("cpu"))  # a CPU run
    assert "cuda" not in cpu_state
    fake = FakeCuda(monkeypatch, visible=1, current=0)
    gpu_state = rng.rng_state(torch.device("cuda"))
    with caplog.at_level(logging.INFO, "promptkd"):
        rng.set_rng_state(cpu_state, torch.device("cuda"))
    assert ("set", 0) not in fake.calls and "holds no CUDA random state" in caplog.text
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with caplog.at_level(logging.INFO, "promptkd"):
        rng.set_rng_state(gpu_state, torch.device("cpu"))
    assert "no GPU is used now" in caplog.text


def test_cpu_numpy_python_states_round_trip():
    state = rng.rng_state()
    a = (torch.rand(3), np.random.rand(3), random.random())
    rng.set_rng_state(state)
    b = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(a[0], b[0]) and np.array_equal(a[1], b[1]) and a[2] == b[2]


# --- views ------------------------------------------------------------------------------------

TRANSFORM = T.Compose([T.RandomResizedCrop(24, scale=(0.08, 1.0)), T.RandomHorizontalFlip(), T.ToTensor()])


def picture(seed=0):
    pixels = np.random.default_rng(seed).integers(0, 256, (40, 52, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


def test_views_leave_global_cpu_and_cuda_state_alone(monkeypatch):
    fake = FakeCuda(monkeypatch, visible=2, current=0)
    torch.default_generator.manual_seed(123)  # (torch.manual_seed would reseed the CUDA mock)
    before = torch.get_rng_state()
    with seeded_view(7, 2, 11):
        TRANSFORM(picture())
    assert torch.equal(torch.get_rng_state(), before)  # the caller's CPU state, exactly
    assert fake.calls == []  # CUDA never read, written or reseeded
    with pytest.raises(RuntimeError), seeded_view(7, 2, 11):  # restored when the transform fails too
        torch.rand(2)
        raise RuntimeError
    assert torch.equal(torch.get_rng_state(), before)


def test_views_are_a_function_of_the_key_and_match_the_earlier_stream():
    """Same key, same view, whatever the global state; and the values of the earlier
    implementation (global CPU generator seeded with the same stream seed), so teacher caches
    written before stay valid (their identity needs no new version)."""
    def old(seed, epoch, index):
        with torch.random.fork_rng(devices=[]):
            torch.default_generator.manual_seed(stream_seed(seed, epoch, index))
            return TRANSFORM(picture())

    keys = [(0, 0, 0), (1, 0, 5), (1, 3, 5), (42, 9, 1234)]
    views = []
    for key in keys:
        torch.default_generator.manual_seed(99)
        with seeded_view(*key):
            first = TRANSFORM(picture())
        torch.rand(17)  # another global state
        with seeded_view(*key):
            second = TRANSFORM(picture())
        assert torch.equal(first, second) and torch.equal(first, old(*key))
        views.append(first)
    assert not torch.equal(views[1], views[2])  # other epochs, other views
