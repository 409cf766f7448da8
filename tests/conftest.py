"""Shared test kit: tiny random-weight CLIP files loaded through the real `clip` path.

The teacher and the student have different widths so that every size the code derives
(projector, class-vector width) is really derived. Nothing here downloads anything.
"""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from promptkd.tiny import TINY_STUDENT, TINY_TEACHER, write_tiny_clip  # noqa: E402

torch.set_num_threads(2)


def pytest_configure(config):
    """PROMPTKD_REQUIRE_DASSL=1 (CI): a missing or broken Dassl fails the run instead of
    skipping the trainer, dataset, script and demo tests."""
    if os.environ.get("PROMPTKD_REQUIRE_DASSL") == "1":
        try:
            import dassl  # noqa: F401
        except Exception as err:
            raise pytest.UsageError(f"PROMPTKD_REQUIRE_DASSL=1 but Dassl cannot be imported ({err}): "
                                    "the Dassl-dependent tests would be skipped.") from err


@pytest.fixture(scope="session")
def clip_files(tmp_path_factory):
    """{'teacher': path, 'student': path} of tiny CLIP state-dict files."""
    folder = tmp_path_factory.mktemp("clip_weights")
    return {
        "teacher": write_tiny_clip(str(folder / "tiny-teacher.pt"), TINY_TEACHER, seed=1),
        "student": write_tiny_clip(str(folder / "tiny-student.pt"), TINY_STUDENT, seed=2),
    }


@pytest.fixture
def teacher_clip(clip_files):
    from promptkd.backbones import load_clip
    return load_clip(clip_files["teacher"])


@pytest.fixture
def student_clip(clip_files):
    from promptkd.backbones import load_clip
    return load_clip(clip_files["student"])
