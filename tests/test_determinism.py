"""TRAIN.DETERMINISTIC: what `promptkd.determinism.configure` sets (GPU mocked where needed)."""
import os

import pytest
import torch

from promptkd import determinism


@pytest.fixture
def backends(monkeypatch):
    """Put torch's global switches back after each test."""
    saved = (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic,
             torch.are_deterministic_algorithms_enabled())
    monkeypatch.delenv(determinism.CUBLAS_KEY, raising=False)
    yield
    torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic = saved[:2]
    torch.use_deterministic_algorithms(saved[2])


def test_the_key_is_off_by_default():
    from yacs.config import CfgNode as CN

    from promptkd.trainers.config import extend_cfg
    cfg = CN()
    for node in ("DATASET", "DATALOADER", "INPUT", "MODEL", "TEST", "TRAINER", "TRAIN"):
        cfg[node] = CN()
    assert extend_cfg(cfg).TRAIN.DETERMINISTIC is False


def test_deterministic_sets_every_switch(backends, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    torch.backends.cudnn.benchmark = True
    determinism.configure(True, use_cuda=True)
    assert torch.are_deterministic_algorithms_enabled()
    assert not torch.backends.cudnn.benchmark and torch.backends.cudnn.deterministic
    assert os.environ[determinism.CUBLAS_KEY] == ":4096:8"


def test_a_users_deterministic_cublas_setting_is_kept(backends, monkeypatch):
    monkeypatch.setenv(determinism.CUBLAS_KEY, ":16:8")
    determinism.configure(True)
    assert os.environ[determinism.CUBLAS_KEY] == ":16:8"


def test_off_means_benchmark_on_a_gpu_only(backends, monkeypatch):
    determinism.configure(True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    determinism.configure(False, use_cuda=True)
    assert torch.backends.cudnn.benchmark and not torch.are_deterministic_algorithms_enabled()
    determinism.configure(False, use_cuda=False)  # USE_CUDA False: no cuDNN in the run
    assert not torch.backends.cudnn.benchmark


def test_train_py_follows_the_key(backends, monkeypatch):
    """train.main configures the backends from the config, not benchmark=True unconditionally."""
    from promptkd.trainers import train
    seen = []
    monkeypatch.setattr(determinism, "configure", lambda flag, use_cuda=True: seen.append((flag, use_cuda)))
    monkeypatch.setattr(train, "build_trainer", lambda cfg: (_ for _ in ()).throw(SystemExit("stop")))
    monkeypatch.setattr(train, "setup_logging", lambda out: None)
    args = train.parse_args(["--root", ".", "--trainer", "PromptKD", "DATASET.NAME", "DescribableTextures", "MODEL.BACKBONE.NAME", "ViT-B/16",
                             "TRAIN.DETERMINISTIC", "True", "USE_CUDA", "False"])
    with pytest.raises(SystemExit, match="stop"):
        train.main(args)
    assert seen == [(True, False)]
