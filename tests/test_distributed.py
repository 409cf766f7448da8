"""Training under torchrun (DistributedDataParallel), on CPU with gloo and 2 processes.

Each launch (`python -m torch.distributed.run --standalone --nproc_per_node 2`) costs a few
seconds of start-up, so the runs are module fixtures shared by the assertions:

* IVLP (no BatchNorm), 2 processes at batch 2 = one process at batch 4 over the same order;
  its export is the teacher of the PromptKD runs; a single-process IVLP run evaluated under DDP;
* PromptKD under DDP: ranks identical, one set of files, evaluation = single-process;
* killed after epoch 1 and re-run (through `GPUS=2 bash scripts/promptkd/base2new_train.sh`):
  the same weights as the uninterrupted run;
* two nodes on 127.0.0.1 (two launches, c10d rendezvous, NNODES=2 through the same script):
  the same weights too.

`tests/ddp_probe.py` runs train.py's main() and saves each rank's state and evaluation scores.
In-process, a 1-process gloo group runs the other trainers through the DDP wrapper (DDP
refuses a trainable parameter that does not reach the loss) and checks the refused launches.
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from dassl.data.datasets import build_dataset  # noqa: E402

from promptkd.trainers import train  # noqa: E402
import promptkd.trainers.evaluate  # noqa: E402
from promptkd import distributed  # noqa: E402
from promptkd.checkpoints import load_file  # noqa: E402
from promptkd.class_vectors import ClassVectors, class_vectors_file  # noqa: E402
from promptkd.errors import ConfigError  # noqa: E402
from tests.ddp_kit import CPU, assert_same, env, ranks, torchrun  # noqa: E402
from tests.fake_data import make_dtd  # noqa: E402
from tests.trainer_kit import ROOT, baseline_args, learnable, make_trainer, student_args, teacher_args  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.exact]

DTD = "DescribableTextures"
# Deterministic inputs (resize + normalise, in order) so that 2 x b and 1 x 2b see the same batches.
SAME_ORDER = ["DATALOADER.TRAIN_X.SAMPLER", "SequentialSampler", "INPUT.TRANSFORMS", "('normalize',)",
              "OPTIM.WARMUP_EPOCH", "0"]


def ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def final_state(out, epoch):
    return load_file(os.path.join(out, "VLPromptLearner", f"model.pth.tar-{epoch}"))["state_dict"]


@pytest.fixture(scope="module")
def data(tmp_path_factory, clip_files):
    """A fake DTD whose split and few-shot caches exist before any run (building them draws
    random numbers, which would make the first run's initial prompts differ from the rest)."""
    root = str(tmp_path_factory.mktemp("ddp_data"))
    make_dtd(root, n_classes=5, per_class=10)
    cfg = train.setup_cfg(train.parse_args(ivlp_args(root, clip_files, str(tmp_path_factory.mktemp("x")), 4)))
    build_dataset(cfg)
    return root


def ivlp_args(root, clip_files, out, batch, *extra):
    return baseline_args("IVLP", root, clip_files, out, "DATALOADER.TRAIN_X.BATCH_SIZE", str(batch), *SAME_ORDER, *extra)


@pytest.fixture(scope="module")
def ivlp(data, clip_files, tmp_path_factory):
    single_out, ddp_out = (str(tmp_path_factory.mktemp(n)) for n in ("ivlp_single", "ivlp_ddp"))
    single = make_trainer(ivlp_args(data, clip_files, single_out, 4))
    initial = learnable(single)
    single.train()
    probe = str(tmp_path_factory.mktemp("ivlp_probe"))
    ok(torchrun(probe, ivlp_args(data, clip_files, ddp_out, 2)))
    return {"single": single, "initial": initial, "ddp_out": ddp_out, "single_out": single_out,
            "ranks": ranks(probe), "export": os.path.join(ddp_out, "export")}


def test_ddp_at_batch_b_equals_one_process_at_batch_2b(ivlp):
    r0, r1 = ivlp["ranks"]
    assert r0["world"] == 2 and r0["sampler"] == "DistributedSampler" and r0["sampler_epoch"] == 1
    assert_same(r0["state"], r1["state"])  # DDP keeps the ranks identical
    single = learnable(ivlp["single"])
    assert max((single[k] - ivlp["initial"][k]).abs().max() for k in single) > 1e-3  # it did train
    # DDP averages two means over b images where one process takes one mean over 2b: the same
    # gradient summed in another order (and the forward at batch b vs 2b, whose GEMMs may use other
    # kernels), a few fp32 ulps (6e-8 relative) per step. 1e-6 allows that to grow ~16-fold over
    # this run's few SGD steps, on this CPU and under AVX2 kernels (.ci/run), while a different
    # data order moves the prompts by > 1e-3 (asserted above: training moved them that far).
    assert_same(r0["state"], single, atol=1e-6, rtol=1e-6)
    # One export, from rank 0, equal to the single-process one.
    ddp = ClassVectors.load(class_vectors_file(ivlp["export"], DTD))
    one = ClassVectors.load(class_vectors_file(os.path.join(ivlp["single_out"], "export"), DTD))
    assert torch.allclose(ddp.vectors, one.vectors, atol=1e-5)


def test_single_process_checkpoint_evaluates_under_ddp(ivlp, data, clip_files, tmp_path):
    """A single-process run's checkpoint, --eval-only under torchrun: every test image scored
    once, the same scores and report as the single-process evaluation."""
    out = str(tmp_path / "eval")
    ok(torchrun(str(tmp_path / "probe"), ["--eval-only", "--model-dir", ivlp["single_out"],
                                           *ivlp_args(data, clip_files, out, 2)]))
    r0, r1 = ranks(str(tmp_path / "probe"))
    single = ivlp["single"]
    assert r0["report"] == r1["report"] == pytest.approx(single.last_report)
    assert r0["report"]["n"] == len(single.eval_loader.dataset) == 15
    assert torch.equal(r0["evals"][-1]["labels"], torch.tensor([x.label for x in single.eval_loader.dataset.data_source]))


def test_unreadable_share_is_over_all_ranks_and_every_rank_stops(clip_files, tmp_path):
    """Two unreadable training images, one on each rank: 1 of 12 per rank is within
    MAX_UNREADABLE_SHARE 0.1 (1.2 images), 2 of 12 over both ranks is not. Both ranks stop at
    the same step with the same message (neither waits for the other in a collective)."""
    root = str(tmp_path / "data")
    make_dtd(root, n_classes=5, per_class=10)
    args = ivlp_args(root, clip_files, str(tmp_path / "out"), 2, "DATALOADER.SKIP_UNREADABLE", "True",
                     "DATALOADER.MAX_UNREADABLE_SHARE", "0.1")
    train_x = build_dataset(train.setup_cfg(train.parse_args(args))).train_x  # writes the split caches too
    assert len(train_x) == 12
    bad = [train_x[0].impath, train_x[1].impath]  # SequentialSampler: rank r takes images r, r + 2, ...
    for path in bad:
        with open(path, "wb") as f:
            f.write(b"not an image")
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(ROOT, "train.py"), *args, *CPU]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env())
    message = ("error: at least 2 of the 12 images of the train split of DescribableTextures are unreadable (16.7%), "
               "more than DATALOADER.MAX_UNREADABLE_SHARE 0.1 (10%) allows with DATALOADER.SKIP_UNREADABLE True: ")
    assert proc.returncode != 0 and proc.stderr.count(message) == 2, proc.stdout[-3000:] + proc.stderr[-3000:]
    line = next(l for l in proc.stderr.splitlines() if l.startswith(message))
    assert all(path in line for path in bad)  # each rank's file, in both ranks' message


@pytest.fixture(scope="module")
def kd(ivlp, data, clip_files, tmp_path_factory):
    """PromptKD under DDP, distilling from the IVLP export, 3 epochs."""
    out, probe = (str(tmp_path_factory.mktemp(n)) for n in ("kd_ddp", "kd_probe"))
    proc = ok(torchrun(probe, student_args(data, clip_files, out, ivlp["export"])))
    return {"out": out, "ranks": ranks(probe), "proc": proc}


def test_promptkd_ranks_agree_and_write_one_set_of_files(kd):
    r0, r1 = kd["ranks"]
    assert_same(r0["state"], r1["state"])  # prompts, projector and its BatchNorm statistics
    assert any("projector.1.running_mean" in k for k in r0["state"])
    out = kd["out"]
    assert sorted(os.listdir(os.path.join(out, "VLPromptLearner"))) == ["checkpoint", "model.pth.tar-3"]
    assert sorted(os.listdir(out)) == ["VLPromptLearner", "export", "log.txt", "result.json", "run.json", "tensorboard"]
    run, result = (json.load(open(os.path.join(out, f))) for f in ("run.json", "result.json"))  # rank 0's
    assert run["processes"] == 2 and result["run_id"] == run["run_id"] and result["n_images"] == r0["report"]["n"]
    assert os.listdir(os.path.join(out, "export")) == ["predictor.pt"]
    assert len(os.listdir(os.path.join(out, "tensorboard"))) == 1
    log = open(os.path.join(out, "log.txt")).read()
    assert log.count("RESULT ") == 1 and log.count("Checkpoint saved") == 3
    assert kd["proc"].stdout.count("RESULT ") == 1  # rank 1 prints nothing
    assert_same(final_state(out, 3), r0["state"])  # no "module." prefixes


def test_ddp_run_writes_the_same_teacher_cache_as_the_writer(ivlp, data, clip_files, tmp_path):
    """TEACHER_CACHE_WRITE under DDP: every rank's views reach rank 0, which writes the cache,
    so rank 0 embeds after each epoch only the views training dropped (not the other rank's
    share again); the cache equals the one-process writer's."""
    import json

    import numpy as np

    from promptkd import cli

    fp32 = ["TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32", "TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE", "7"]
    written, online = tmp_path / "writer_cache", tmp_path / "ddp_cache"
    assert cli.main(["cache", *student_args(data, clip_files, str(tmp_path / "writer_out"), ivlp["export"],
                                            "TRAINER.PROMPTKD.TEACHER_CACHE", str(written), *fp32)]) == 0
    out = str(tmp_path / "ddp_out")
    ok(torchrun(str(tmp_path / "probe"), student_args(data, clip_files, out, ivlp["export"], "TEST.NO_TEST", "True",
                                                      "TRAINER.PROMPTKD.TEACHER_CACHE", str(online),
                                                      "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True", *fp32)))
    manifests = [json.loads((c / "manifest.json").read_text()) for c in (written, online)]
    assert sorted(manifests[0]["shards"]) == sorted(manifests[1]["shards"]) and manifests[1]["shards"]
    for name in manifests[0]["shards"]:
        np.testing.assert_allclose(np.load(online / name), np.load(written / name), rtol=0, atol=1e-6)

    n_images = manifests[1]["n_images"]
    with open(os.path.join(out, "log.txt")) as f:
        counts = re.findall(r"Teacher cache [^\n]*?, epoch (\d+): (\d+) views embedded in training, (\d+) that it dropped",
                            f.read())
    assert [int(e) for e, _, _ in counts] == [1, 2, 3], counts  # once per epoch: rank 0 only
    for _, trained, dropped in counts:
        assert int(trained) + int(dropped) == n_images and int(dropped) < n_images / 4, (counts, n_images)


def test_promptkd_ddp_checkpoint_evaluates_in_one_process(kd, ivlp, data, clip_files, tmp_path, monkeypatch):
    seen = []
    report = promptkd.trainers.evaluate.report_from_predictions
    monkeypatch.setattr(promptkd.trainers.evaluate, "report_from_predictions",
                        lambda pr, lb, *a: seen.append((pr, lb)) or report(pr, lb, *a))
    single = make_trainer(student_args(data, clip_files, str(tmp_path), ivlp["export"]))
    single.run_eval_only(kd["out"])
    r0, r1 = kd["ranks"]
    (preds, labels), = seen
    assert preds.shape == (len(labels), 3) and preds.dtype == torch.int64  # predictions, not [N, C] logits
    for rank in (r0, r1):  # every rank holds the predictions of all test images, in order
        assert torch.equal(rank["evals"][-1]["labels"], labels)
        assert torch.equal(rank["evals"][-1]["predictions"], preds)
        assert rank["report"] == pytest.approx(single.last_report)
    assert single.last_report["n"] == len(labels) == 15


def script(name, output, data, export, extra, **environ):
    extra = extra[extra.index("--output-dir") + 2:]  # the KEY VALUE options of student_args
    command = ["bash", os.path.join(ROOT, "scripts", "promptkd", name), "dtd", "1", *extra, *CPU]
    return subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env(PYTHON=sys.executable, DATA=data, OUTPUT=output, TEACHER_DIR=export, **environ))


def test_killed_ddp_run_resumes_to_the_same_weights(kd, ivlp, data, clip_files, tmp_path):
    output = str(tmp_path)
    run = os.path.join(output, "base2new", "promptkd", "dtd", "seed1")  # where the script writes
    args = student_args(data, clip_files, run, ivlp["export"])
    killed = torchrun(str(tmp_path / "probe"), args, extra_env={"PROBE_KILL_AFTER_EPOCH": "1"})
    assert killed.returncode != 0
    assert sorted(os.listdir(os.path.join(run, "VLPromptLearner"))) == ["checkpoint", "model.pth.tar-1"]
    proc = script("base2new_train.sh", output, data, ivlp["export"], args, GPUS="2")
    stdout, stderr = proc.communicate(timeout=600)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    log = open(os.path.join(run, "log.txt")).read()
    assert "Resumed from" in log and "(epoch 1 done)" in log and "4 per process x 2 processes" in log
    assert_same(final_state(run, 3), final_state(kd["out"], 3))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_train_and_evaluate(kd, ivlp, data, clip_files, tmp_path):
    """Two launches on one machine, one process each, c10d rendezvous: the same run as kd."""
    output = str(tmp_path)
    run = os.path.join(output, "base2new", "promptkd", "dtd", "seed1")
    args = student_args(data, clip_files, run, ivlp["export"])
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = [script("base2new_train.sh", output, data, ivlp["export"], args, GPUS="1", NNODES="2",
                    NODE_RANK=str(r), RDZV_ENDPOINT=endpoint, RDZV_ID=f"test{os.getpid()}") for r in (0, 1)]
    try:
        outs = [node.communicate(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            if node.poll() is None:
                node.send_signal(signal.SIGTERM)
    for node, (stdout, stderr) in zip(nodes, outs):
        assert node.returncode == 0, stdout[-3000:] + stderr[-3000:]
    assert sum(stdout.count("RESULT ") for stdout, _ in outs) == 1
    assert_same(final_state(run, 3), final_state(kd["out"], 3))


# --- in-process: a 1-process gloo group -----------------------------------------------------

@pytest.fixture
def process_group():
    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    yield
    distributed.finish()  # one process: its barriers cannot wait on a peer


# IVLP and PromptKD run under torchrun above; PromptSRC is PromptKDTeacher with other configs.
@pytest.mark.parametrize("name", ["ZeroshotCLIP", "CoOp", "CoCoOp", "MaPLe", "PromptKDTeacher"])
def test_every_trainer_trains_and_evaluates_through_ddp(name, process_group, data, clip_files, tmp_path):
    """DDP refuses (at the second step) any trainable parameter that does not reach the loss."""
    out = str(tmp_path)
    if name == "PromptKDTeacher":
        args = teacher_args(data, clip_files, out, epochs=1)
    else:
        args = baseline_args(name, data, clip_files, out, "OPTIM.MAX_EPOCH", "1")
    trainer = make_trainer(args)
    if name != "ZeroshotCLIP":
        assert isinstance(trainer.train_model, torch.nn.parallel.DistributedDataParallel)
        assert trainer.train_model.module is trainer.model and len(trainer.train_loader_x) >= 2
    trainer.train()
    assert {"base", "novel", "hm"} <= set(trainer.last_report)


def test_wrong_launches_are_refused(process_group, ivlp, data, clip_files, tmp_path, monkeypatch):
    out = str(tmp_path)
    with pytest.raises(ConfigError, match="RandomClassSampler cannot be split across processes"):
        make_trainer(ivlp_args(data, clip_files, out, 2, "DATALOADER.TRAIN_X.SAMPLER", "RandomClassSampler"))
    with pytest.raises(ConfigError, match=r"12 training images over 1 process\(es\) leave each fewer than one batch"):
        make_trainer(ivlp_args(data, clip_files, out, 16))
    with pytest.raises(ConfigError, match="SYNC_BN True needs GPUs"):
        make_trainer(student_args(data, clip_files, out, ivlp["export"], "DISTRIBUTED.SYNC_BN", "True"))


def test_more_processes_than_gpus_are_refused(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("LOCAL_RANK", "3")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    with pytest.raises(ConfigError, match="4 processes per node .* only 2 GPU"):
        distributed.init(use_cuda=True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no GPU is visible.*USE_CUDA False"):
        distributed.init(use_cuda=True)
    assert not distributed.is_distributed()


def test_shards_cover_every_example_once():
    for n in (0, 1, 7, 15):
        for world in (1, 2, 3, 8):
            shards = [list(distributed.shard_indices(n, r, world)) for r in range(world)]
            assert sorted(i for s in shards for i in s) == list(range(n))


def test_ddp_view_bank_embeds_each_view_once_and_writes_the_writers_cache(ivlp, data, clip_files, tmp_path):
    """VIEWS_PER_IMAGE 2 under DDP: every rank knows which views are stored (it skips their
    teacher forward), rank 0 writes; the 2 x N views are embedded once over the 3 epochs, none
    in the third; the cache equals the one-process writer's."""
    import json

    import numpy as np

    from promptkd import cli

    opts = ["TRAINER.PROMPTKD.TEACHER_CACHE_DTYPE", "fp32", "TRAINER.PROMPTKD.TEACHER_CACHE_SHARD_SIZE", "7",
            "TRAINER.PROMPTKD.VIEWS_PER_IMAGE", "2"]
    written, online = tmp_path / "writer_cache", tmp_path / "ddp_cache"
    assert cli.main(["cache", *student_args(data, clip_files, str(tmp_path / "writer_out"), ivlp["export"],
                                            "TRAINER.PROMPTKD.TEACHER_CACHE", str(written), *opts)]) == 0
    out = str(tmp_path / "ddp_out")
    ok(torchrun(str(tmp_path / "probe"), student_args(data, clip_files, out, ivlp["export"], "TEST.NO_TEST", "True",
                                                      "TRAINER.PROMPTKD.TEACHER_CACHE", str(online),
                                                      "TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True", *opts)))
    manifests = [json.loads((c / "manifest.json").read_text()) for c in (written, online)]
    assert sorted(manifests[0]["shards"]) == sorted(manifests[1]["shards"]) and manifests[1]["shards"]
    for name in manifests[0]["shards"]:
        np.testing.assert_allclose(np.load(online / name), np.load(written / name), rtol=0, atol=1e-6)
    with open(os.path.join(out, "log.txt")) as f:
        counts = re.findall(r"Teacher cache [^\n]*?, epoch (\d+): (\d+) views embedded in training, (\d+) that it dropped",
                            f.read())
    assert [int(e) for e, _, _ in counts] == [1, 2, 3], counts
    assert sum(int(t) + int(d) for _, t, d in counts) == 2 * manifests[1]["n_images"], counts
    assert int(counts[2][1]) + int(counts[2][2]) == 0, counts  # the third epoch only reuses
