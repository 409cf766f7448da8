"""Shared test kit: tiny random-weight CLIP files loaded through the real `clip` path.

The teacher and the student have different widths so that every size the code derives
(projector, class-vector width) is really derived. Nothing here downloads anything.
"""
import os

# One thread per test process, also in the train.py / torchrun processes tests start (they
# inherit the environment). The models are tiny, so a second thread gains little and, on a
# busy machine, OpenMP threads waiting for a taken core cost far more; pytest-xdist (`-n auto`
# in pytest.ini) uses the cores instead, one test file per worker.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import pytest  # noqa: E402
import torch  # noqa: E402

from promptkd.tiny import TINY_STUDENT, TINY_TEACHER, write_tiny_clip  # noqa: E402

torch.set_num_threads(1)


def pytest_configure(config):
    """PROMPTKD_REQUIRE_DASSL=1 (CI): a missing or broken Dassl fails the run instead of
    skipping the trainer, dataset, script and demo tests."""
    if os.environ.get("PROMPTKD_REQUIRE_DASSL") == "1":
        try:
            import dassl  # noqa: F401
        except Exception as err:
            raise pytest.UsageError(f"PROMPTKD_REQUIRE_DASSL=1 but Dassl cannot be imported ({err}): "
                                    "the Dassl-dependent tests would be skipped.") from err
    try:
        import dassl  # noqa: F401
    except Exception:
        return
    # As our train.py does: our trainers and loaders in Dassl's registries (importing them does
    # not register them; tests that build trainers or datasets directly rely on this).
    from promptkd.trainers.plugin import register

    register()


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
