"""Names a user sees: TRAINER.PROTOCOL (TRAINER.MODAL, the published name, an alias with a
warning) and one spelling of ZeroshotCLIP."""
from __future__ import annotations

import os
import re
import subprocess
import warnings

import pytest
from yacs.config import CfgNode

from promptkd import baselines
from promptkd.errors import ConfigError
from promptkd.records import protocol

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DTD = os.path.join(ROOT, "configs/datasets/dtd.yaml")
STUDENT = os.path.join(ROOT, "configs/trainers/PromptKD/vit_b16_c2_ep20_batch8_4+4ctx.yaml")


def setup(tmp_path, *opts, yaml_text: str | None = None):
    """train.py's merge (setup_cfg) of the PromptKD student config (+ a file of `yaml_text`), and
    the FutureWarnings it raised."""
    pytest.importorskip("dassl", reason="Dassl not installed")
    from promptkd.trainers import train

    args = ["--trainer", "PromptKD", "--dataset-config-file", DTD, "--config-file", STUDENT]
    if yaml_text is not None:  # a published-style config: the method file's keys, one of them changed
        path = tmp_path / "published.yaml"
        path.write_text(open(STUDENT, encoding="utf-8").read().replace("  PROTOCOL: ", "  MODAL: ")
                        .replace('MODAL: "base2novel"', yaml_text))
        args[-1] = str(path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        cfg = train.setup_cfg(train.parse_args([*args, *opts]))
    return cfg, [w for w in seen if issubclass(w.category, FutureWarning)]


def test_protocol_is_the_key_and_gives_no_warning(tmp_path):
    cfg, seen = setup(tmp_path, "TRAINER.PROTOCOL", "cross")
    assert (cfg.TRAINER.PROTOCOL, cfg.TRAINER.MODAL, protocol(cfg)) == ("cross", "", "cross")
    assert seen == []


@pytest.mark.parametrize("where", ["file", "override"])
def test_the_published_modal_still_loads_with_a_warning(tmp_path, where):
    if where == "file":  # a published config file (MODAL: "cross")
        cfg, seen = setup(tmp_path, yaml_text='MODAL: "cross"')
    else:
        cfg, seen = setup(tmp_path, "TRAINER.MODAL", "cross")
    assert (cfg.TRAINER.PROTOCOL, cfg.TRAINER.MODAL) == ("cross", ""), "read as TRAINER.PROTOCOL, once"
    assert len(seen) == 1 and "TRAINER.MODAL is the old name of TRAINER.PROTOCOL" in str(seen[0].message)


def test_a_published_config_at_the_default_still_warns(tmp_path):
    cfg, seen = setup(tmp_path, yaml_text='MODAL: "base2novel"')
    assert cfg.TRAINER.PROTOCOL == "base2novel" and len(seen) == 1


def test_protocol_and_modal_that_disagree_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="TRAINER.PROTOCOL cross and TRAINER.MODAL few_shot disagree"):
        setup(tmp_path, "TRAINER.PROTOCOL", "cross", "TRAINER.MODAL", "few_shot")
    cfg, seen = setup(tmp_path, "TRAINER.PROTOCOL", "cross", "TRAINER.MODAL", "cross")  # the same: fine
    assert cfg.TRAINER.PROTOCOL == "cross" and len(seen) == 1


def test_a_host_config_keeps_its_modal():
    """In a host codebase (the plugin) the config is the host's: its MODAL is read as it is."""
    host = CfgNode({"TRAINER": {"MODAL": "cross", "PROTOCOL": "base2novel"}})
    assert protocol(host) == "cross"
    assert protocol(CfgNode({"TRAINER": {"MODAL": "few_shot"}})) == "few_shot"  # a config without PROTOCOL
    assert protocol(CfgNode({"TRAINER": {}})) == "base2novel"


def test_no_shipped_config_or_script_sets_the_old_key():
    found = subprocess.run(["git", "grep", "-n", "-E", r"TRAINER\.MODAL|^\s*MODAL:", "--", "configs", "scripts"],
                           cwd=ROOT, capture_output=True, text=True).stdout
    assert found == "", "write TRAINER.PROTOCOL: " + found


# --- ZeroshotCLIP -------------------------------------------------------------------------------

def test_every_method_class_is_spelt_as_its_trainer():
    from promptkd.teacher import IVLPTeacher

    for name, cls in baselines.METHODS.items():
        assert cls is IVLPTeacher or cls.__name__ == name, (name, cls.__name__)


def test_the_old_spelling_is_an_alias_with_a_warning():
    with pytest.warns(FutureWarning, match="promptkd.baselines.ZeroShotCLIP is now promptkd.baselines.ZeroshotCLIP"):
        assert baselines.ZeroShotCLIP is baselines.ZeroshotCLIP


def test_one_spelling_of_zeroshot_clip_in_the_project():
    """ZeroshotCLIP (the registered name) wherever the class is named; snake_case helpers
    (zero_shot_*) and prose ("zero-shot") are other words. The alias's own files are the exceptions."""
    out = subprocess.run(["git", "grep", "-n", "-i", "-E", "zero_?shot_?clip"], cwd=ROOT, capture_output=True,
                         text=True).stdout.splitlines()
    allowed = ("promptkd/baselines.py:", "promptkd/moved.py:", "tests/test_names.py:", "tests/test_public_api.py:")
    other = [line for line in out if not line.startswith(allowed)
             and any(token != "ZeroshotCLIP" for token in re.findall("zero_?shot_?clip", line, re.I))]
    assert other == [], "spell it ZeroshotCLIP: " + "; ".join(other)
