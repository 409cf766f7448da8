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

from promptkd.demo.tiny import TINY_STUDENT, TINY_TEACHER, write_tiny_clip  # noqa: E402

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


# --- runs shared by the trainer tests (their builders: tests/trainer_kit.py) ---------------------

@pytest.fixture(scope="session")
def data_root(tmp_path_factory):
    """A fake DTD (5 classes x 10 images) that the trainer tests train on; nothing writes into it."""
    from tests.fake_data import make_dtd
    root = tmp_path_factory.mktemp("data")
    make_dtd(str(root), n_classes=5, per_class=10)
    return str(root)


@pytest.fixture(scope="session")
def teacher_run(data_root, clip_files, tmp_path_factory):
    """A PromptKDTeacher trained for 2 epochs on data_root (tests/trainer_kit.teacher_args):
    {"out", "export", "report", "trainer"}. Built once per test process and shared by the test
    files it runs: read it, train from its export, never change it."""
    from tests.trainer_kit import make_trainer, teacher_args
    out = str(tmp_path_factory.mktemp("teacher"))
    trainer = make_trainer(teacher_args(data_root, clip_files, out))
    trainer.train()
    return {"out": out, "export": os.path.join(out, "export"), "report": trainer.last_report, "trainer": trainer}


@pytest.fixture(scope="session")
def zero_shot(data_root, clip_files, tmp_path_factory):
    """A zero-shot PromptKDTeacher export of the tiny *student* CLIP (another backbone than
    teacher_run's): the second teacher of the ensemble tests. Read it, never change it."""
    from tests.trainer_kit import ROOT, TEACHER_CFG, make_trainer, teacher_args
    out = str(tmp_path_factory.mktemp("zero-shot"))
    args = teacher_args(data_root, {"teacher": clip_files["student"]}, out, epochs=0)
    args[args.index(TEACHER_CFG)] = os.path.join(ROOT, "configs/trainers/PromptKDTeacher/zeroshot_vit_l14.yaml")
    make_trainer(args[:args.index("TRAINER.PROMPTSRC.PROMPT_DEPTH_TEXT")]).train()
    return os.path.join(out, "export")


# --- the order of the run -------------------------------------------------------------------------

#: Test files run first, in this order: the layer tests (a module moved across the layers, or
#: into a subpackage, fails within seconds) and the suite's house rules.
FIRST = ("test_packaging.py", "test_house.py")


def _first(name: str) -> int:
    return FIRST.index(name) if name in FIRST else len(FIRST)


def pytest_collection_modifyitems(session, config, items):
    """In one process (-n 0): FIRST's files at the head; the rest keep pytest's order."""
    items.sort(key=lambda item: _first(item.path.name))  # a stable sort


@pytest.hookimpl(tryfirst=True, optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """Under xdist's --dist loadfile (pytest.ini), which hands out the files with the most tests
    first: the same, but FIRST's files before all others."""
    if config.getvalue("dist") != "loadfile":
        return None
    from xdist.scheduler import LoadFileScheduling

    class FirstFilesFirst(LoadFileScheduling):
        def _assign_work_unit(self, node):
            for scope in sorted((s for s in self.workqueue if os.path.basename(s) in FIRST),
                                key=lambda s: -_first(os.path.basename(s))):
                self.workqueue.move_to_end(scope, last=False)
            super()._assign_work_unit(node)

    return FirstFilesFirst(config, log)
