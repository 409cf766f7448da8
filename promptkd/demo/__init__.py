"""The offline demo's kit (plain PyTorch, no Dassl; the driver is promptkd.trainers.demo_driver).

    toyworld       the demo's generated colour x shape world (images and captions)
    pretrain       contrastive pretraining of tiny CLIPs on it, cached (the demo's backbones)
    weights        promptkd demo-weights: pretrain them, regenerate the shipped ones, probes
    tiny           random-weight tiny CLIP checkpoints (the tests' and benchmarks' smoke runs)
    forked         run a function in a forked child (the demo's and the CLI tests' runs)
    demo_weights/  the shipped full-preset weights of the two tiny CLIPs

Before 0.5 this was the module of `promptkd demo-weights`; its names still resolve here for one
release, with a FutureWarning (promptkd.moved).
"""
from __future__ import annotations

import importlib


def __getattr__(name: str):
    from ..moved import OLD_DEMO_NAMES, warn_moved

    if name in OLD_DEMO_NAMES:
        warn_moved(f"promptkd.demo.{name}", f"promptkd.demo.weights.{name}")
        value = getattr(importlib.import_module(f"{__name__}.weights"), name)
        globals()[name] = value  # warned once: `from promptkd.demo import ROLES` looks a name up twice
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
