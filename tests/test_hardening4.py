"""Hardening, round 4: each input below once crashed, was used silently or ended in a traceback;
now it works (item 1's documented setting) or is refused with `error: ...` naming the file, key or
value, exit 2, no traceback. Every check runs the command a user types, as a forked child
(tests/cli.py): `promptkd train / cache / predict / results`.

1. an unlabelled pool that adds a folder to the train split, with CE_WEIGHT (and CE_SHOTS);
2. a model folder whose model.safetensors holds tensors config.json does not describe;
3. a teacher cache on a read-only location (`promptkd cache`, and an online run filling it);
4. a WebDataset shard cut short (or changed after it was counted);
5. a class-agnostic vocabulary with names CLIP's tokenizer cannot tell apart;
6. hand-edited run records (a metric as a string, `"metrics": null`, ...);
and no error path prints a traceback without --debug.

Fake DTD (5 classes x 10 images), tiny CLIPs, 1 epoch; the teacher is conftest.py's session teacher.
"""
import ctypes
import json
import os
import shutil
import subprocess

import pytest
import torch

pytest.importorskip("dassl", reason="Dassl not installed (see README: install Dassl from GitHub to run the trainer tests)")

from promptkd.demo import forked  # noqa: E402
from promptkd.deploy import hub  # noqa: E402
from promptkd.class_vectors import ClassVectors, class_vectors_file  # noqa: E402
from promptkd.errors import DataError  # noqa: E402
from tests.cli import promptkd, train_py  # noqa: E402
from tests.fake_data import _image  # noqa: E402
from tests.trainer_kit import make_trainer, student_args, teacher_args  # noqa: E402

# data_root, teacher_run, clip_files: fixtures of tests/conftest.py


def refused(proc, *needles):
    """`error: ...` naming every needle, exit 2, no traceback."""
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-3000:]
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr[-3000:])


def student(data_root, clip_files, teacher_run, out, *keys):
    return student_args(data_root, clip_files, str(out), teacher_run["export"], *keys, epochs=1)


def write_folder(folder, n, seed0=9100):
    for i in range(n):
        _image(os.path.join(folder, f"extra_{i:03d}.png"), seed=seed0 + i)
    return str(folder)


# --- 1. CE_WEIGHT with a pool that adds a folder ---------------------------------------------------

@pytest.mark.parametrize("shots", ["-1", "1"])
def test_ce_weight_with_a_folder_added_to_the_train_split_trains(shots, data_root, clip_files, teacher_run, tmp_path):
    """Before: IndexError 'Target -1 is out of bounds' (the folder's images carry label -1)."""
    folder = write_folder(tmp_path / "extra", 6)
    out = tmp_path / "run"
    proc = train_py(student(data_root, clip_files, teacher_run, out, "TRAINER.PROMPTKD.POOL",
                            str(["train", f"folder:{folder}"]), "TRAINER.PROMPTKD.CE_WEIGHT", "1.0",
                            "TRAINER.PROMPTKD.CE_SHOTS", shots, "TRAINER.PROMPTKD.LEAKAGE_CHECK", "off"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.load(open(out / "run.json"))
    assert run["labels_used"] is True and run["pool"]["images"] == 25 + 6
    log = open(out / "log.txt").read()
    assert ("on the labels of the 25 images of the split sources; the pool's other 6 images are unlabelled" in log
            if shots == "-1" else "on 5 labelled images (1 per class)" in log)


@pytest.mark.parametrize("keys, needle", [
    (("TRAINER.PROMPTKD.POOL", "FOLDER"), "CE_WEIGHT needs labelled images, but the pool ['folder:"),
    (("TRAINER.PROMPTKD.POOL", "TRAIN+FOLDER", "TRAINER.PROMPTKD.CE_SHOTS", "0"), "CE_SHOTS 0 labels no image"),
])
def test_ce_weight_without_labelled_images_is_refused(keys, needle, data_root, clip_files, teacher_run, tmp_path):
    """A folder-only pool with CE_WEIGHT: refused as the WebDataset pool is (before: the same IndexError)."""
    folder = write_folder(tmp_path / "extra", 6)
    pools = {"FOLDER": str([f"folder:{folder}"]), "TRAIN+FOLDER": str(["train", f"folder:{folder}"])}
    keys = [pools.get(k, k) for k in keys]
    proc = train_py(student(data_root, clip_files, teacher_run, tmp_path / "run", *keys,
                            "TRAINER.PROMPTKD.CE_WEIGHT", "1.0", "TRAINER.PROMPTKD.LEAKAGE_CHECK", "off"))
    refused(proc, needle)


def test_ce_targets_of_the_new_classes_are_their_places_among_all_classes(data_root, clip_files, teacher_run,
                                                                           tmp_path, monkeypatch):
    """SUBSAMPLE_CLASSES new relabels the split from 0, while the student scores all 5 classes:
    the cross-entropy's targets are the new classes' places (3, 4), not the base classes 0, 1."""
    targets = []
    real = torch.nn.functional.cross_entropy

    def recording(logits, target, *args, **kwargs):
        targets.append(target.detach().cpu())
        return real(logits, target, *args, **kwargs)
    trainer = make_trainer(student(data_root, clip_files, teacher_run, tmp_path / "new", "DATASET.SUBSAMPLE_CLASSES",
                                   "new", "TRAINER.PROMPTKD.CE_WEIGHT", "1.0", "TEST.NO_TEST", "True"))
    monkeypatch.setattr(torch.nn.functional, "cross_entropy", recording)
    trainer.train()
    seen = torch.cat(targets).unique().tolist()
    assert seen == [3, 4] and trainer.num_base == 3, seen


# --- 2. model folders: every tensor accounted for ------------------------------------------------

@pytest.fixture(scope="module")
def teacher_folder(teacher_run, tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("hf") / "teacher")
    hub.save_pretrained(teacher_run["export"], folder)
    return folder


def edited_folder(src, dst, tensors=None, config=None):
    """A copy of model folder `src` with its tensors / config.json changed by the given functions."""
    import safetensors.torch as st
    shutil.copytree(src, dst)
    if tensors:
        weights = st.load_file(os.path.join(dst, hub.WEIGHTS_FILE))
        tensors(weights)
        st.save_file(weights, os.path.join(dst, hub.WEIGHTS_FILE))
    if config:
        path = os.path.join(dst, hub.CONFIG_FILE)
        data = json.load(open(path))
        config(data)
        json.dump(data, open(path, "w"))
    return str(dst)


def test_a_model_folder_with_prompts_of_more_layers_than_its_config_is_refused(teacher_folder, data_root, tmp_path):
    """Before: `promptkd predict` used the first config-depth prompts and ignored the rest, exit 0."""
    image = os.path.join(data_root, "dtd", "images")
    image = os.path.join(image, sorted(os.listdir(image))[0])
    assert promptkd("predict", [teacher_folder, image]).returncode == 0  # the folder as written reads

    def fewer_layers(config):
        config["prompts"]["depth_vision"] = 1  # model.safetensors keeps image_prompts.0 and .1
    folder = edited_folder(teacher_folder, tmp_path / "depth", config=fewer_layers)
    refused(promptkd("predict", [folder, image]), "does not match", "tensors config.json does not describe: "
            "image_prompts.1", "(prompt depth 1,")


@pytest.mark.parametrize("change, needle", [
    (("tensors", lambda w: w.__setitem__("projector.0.weight", torch.zeros(3, 3))),
     "tensors config.json does not describe: projector.0.weight"),
    (("tensors", lambda w: w.pop("image_prompts.1")), "no tensor image_prompts.1"),
    (("tensors", lambda w: w.__setitem__("image_prompts.0", torch.zeros(7, w["image_prompts.0"].shape[1]))),
     "tensor image_prompts.0 has shape [7,"),
    (("tensors", lambda w: w.__setitem__("class_vectors", torch.full_like(w["class_vectors"], float("nan")))),
     "tensor class_vectors holds NaN"),
    (("config", lambda c: c["prompts"].__setitem__("depth_vision", "2")),
     "prompts.depth_vision is '2', not a prompt depth"),
    (("config", lambda c: c.pop("classnames")), "classnames is missing"),
    (("config", lambda c: c.__setitem__("logit_scale", "4.6")), "logit_scale is \"4.6\", not a number"),
    (("config", lambda c: c.__setitem__("classnames", c["classnames"][:-1])), "lists 4 class names for 5 class"),
])
def test_a_mismatched_or_edited_model_folder_is_named(change, needle, teacher_folder, data_root, tmp_path):
    kind, fn = change
    folder = edited_folder(teacher_folder, tmp_path / "f", **{kind: fn})
    image = os.path.join(data_root, "dtd", "images")
    image = os.path.join(image, sorted(os.listdir(image))[0])
    refused(promptkd("predict", [folder, image]), needle)


# --- 3. a teacher cache on a read-only location ------------------------------------------------------

def _read_only_child(folder, fn):
    """In a forked child: make `folder` read-only for this process only (a private mount namespace
    with a read-only bind mount, as a read-only NFS / container mount looks; without root, the mode
    bits), then run `fn`."""
    def child():
        if os.geteuid() == 0:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.unshare(0x00020000) != 0:  # CLONE_NEWNS
                os._exit(77)
            for cmd in (["mount", "--make-rprivate", "/"], ["mount", "--bind", folder, folder],
                        ["mount", "-o", "remount,bind,ro", folder]):
                if subprocess.run(cmd, capture_output=True).returncode:
                    os._exit(77)
        else:
            os.chmod(folder, 0o555)
        fn()
    return child


def read_only(folder, verb, argv, timeout=600):
    """`promptkd VERB ARGV` with `folder` read-only; skips where the machine cannot do that."""
    from promptkd.cli import console
    os.makedirs(folder, exist_ok=True)
    try:
        proc = forked.run(_read_only_child(str(folder), lambda: console([verb, *map(str, argv)])), timeout)
    finally:
        if os.geteuid() != 0:
            os.chmod(folder, 0o755)
    if proc.returncode == 77:
        pytest.skip("no private read-only mount here (unshare / mount refused)")
    return proc


def test_read_only_probe_really_cannot_write(tmp_path):
    """The helper's folder is read-only to the child (else the tests below would prove nothing)."""
    folder = tmp_path / "ro"
    write_runs(tmp_path / "runs", {})
    proc = read_only(folder, "results", [tmp_path / "runs", "--out", folder / "x"])
    refused(proc, f"Cannot write {folder / 'x.csv'}", "Read-only file system" if os.geteuid() == 0 else "Permission")
    assert not os.listdir(folder)


@pytest.mark.parametrize("verb", ["cache", "train"])
def test_a_teacher_cache_on_a_read_only_location_is_named(verb, data_root, clip_files, teacher_run, tmp_path):
    """Before: a traceback from the cache's lock file (PermissionError / OSError EROFS)."""
    cache = tmp_path / "cache"
    keys = ["TRAINER.PROMPTKD.TEACHER_CACHE", str(cache)] + (["TRAINER.PROMPTKD.TEACHER_CACHE_WRITE", "True"]
                                                               if verb == "train" else [])
    proc = read_only(cache, verb, student(data_root, clip_files, teacher_run, tmp_path / "run", *keys))
    refused(proc, f"The teacher cache folder {cache} cannot be written", "holds no cache yet",
            "without TRAINER.PROMPTKD.TEACHER_CACHE_WRITE")


def test_a_complete_cache_on_a_read_only_location_is_used(data_root, clip_files, teacher_run, tmp_path):
    """A finished cache on a read-only mount: `promptkd cache` has nothing to write and says so;
    an incomplete one is named with what is missing."""
    cache = tmp_path / "cache"
    keys = ["TRAINER.PROMPTKD.TEACHER_CACHE", str(cache)]
    args = student(data_root, clip_files, teacher_run, tmp_path / "run", *keys)
    assert promptkd("cache", args).returncode == 0
    proc = read_only(cache, "cache", args)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "complete and read-only" in proc.stdout
    manifest = json.load(open(cache / "manifest.json"))
    manifest["shards"].popitem()
    json.dump(manifest, open(cache / "manifest.json", "w"))
    refused(read_only(cache, "cache", args), "is incomplete (1 of", "cannot be written")


# --- 4. WebDataset shards that yield fewer images than they hold --------------------------------

def write_shard(path, keys, seed0):
    import webdataset as wds
    os.makedirs(os.path.dirname(path), exist_ok=True)
    png = os.path.join(os.path.dirname(path), "tmp.png")
    with wds.TarWriter(path) as sink:
        for j, key in enumerate(keys):
            _image(png, seed=seed0 + j)
            sink.write({"__key__": key, "png": open(png, "rb").read(), "txt": "no label"})
    os.remove(png)
    return path


def shard_pool(data_root, clip_files, teacher_run, out, pattern, hashes):
    return student(data_root, clip_files, teacher_run, out, "TRAINER.PROMPTKD.POOL", str([f"wds:{pattern}"]),
                   "DATALOADER.TRAIN_X.BATCH_SIZE", "2", "TRAINER.PROMPTKD.HASH_CACHE", str(hashes))


@pytest.mark.parametrize("cut", ["at a member boundary", "inside a header"])
def test_a_shard_cut_short_is_refused_naming_it(cut, data_root, clip_files, teacher_run, tmp_path):
    """Before: a shard cut at a member boundary (or in a header) read as a valid, shorter one."""
    pytest.importorskip("webdataset")
    import tarfile
    shards = [write_shard(str(tmp_path / "shards" / f"pool-{s}.tar"), [f"s{s}_{j}" for j in range(5)], 100 * s)
              for s in range(2)]
    with tarfile.open(shards[1]) as tar:
        third = [m for m in tar if m.name.startswith("s1_2.")][0].offset  # 2 samples before it
    data = open(shards[1], "rb").read()
    open(shards[1], "wb").write(data[:third + (100 if cut == "inside a header" else 0)])
    proc = train_py(shard_pool(data_root, clip_files, teacher_run, tmp_path / "run",
                               str(tmp_path / "shards" / "pool-{0..1}.tar"), tmp_path / "hashes.json"))
    refused(proc, f"WebDataset shard {shards[1]}", "after 2 samples", "without the tar end-of-archive block")


def test_a_shard_that_disagrees_with_sizes_json_is_refused(data_root, clip_files, teacher_run, tmp_path):
    pytest.importorskip("webdataset")
    shards = [write_shard(str(tmp_path / "shards" / f"pool-{s}.tar"), [f"s{s}_{j}" for j in range(5)], 100 * s)
              for s in range(2)]
    (tmp_path / "shards" / "sizes.json").write_text(json.dumps({"pool-0.tar": 5, "pool-1.tar": 6}))
    proc = train_py(shard_pool(data_root, clip_files, teacher_run, tmp_path / "run",
                               str(tmp_path / "shards" / "pool-{0..1}.tar"), tmp_path / "hashes.json"))
    refused(proc, f"WebDataset shard {shards[1]} holds 5 samples, but", "sizes.json says 6")


def test_a_shard_that_yields_fewer_than_it_was_counted_with_stops_the_run(data_root, clip_files, teacher_run,
                                                                         tmp_path):
    """The count is cached by (size, mtime): a shard replaced by another of the same size and time
    (here: one sample renamed) streams fewer of the counted samples; the run names it instead of
    training on a shorter epoch."""
    pytest.importorskip("webdataset")
    from promptkd.pools import HashCache
    shards = [write_shard(str(tmp_path / "shards" / f"pool-{s}.tar"), [f"s{s}_{j}" for j in range(5)], 100 * s)
              for s in range(2)]
    cache = HashCache(str(tmp_path / "hashes.json"))
    for s in shards:
        cache.shard(s)
    cache.save()
    stat = os.stat(shards[0])
    write_shard(shards[0], ["s0_0", "s0_1", "s0_x", "s0_3", "s0_4"], 0)  # same size: keys of the same length
    os.utime(shards[0], ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert os.stat(shards[0]).st_size == stat.st_size
    proc = train_py(shard_pool(data_root, clip_files, teacher_run, tmp_path / "run",
                               str(tmp_path / "shards" / "pool-{0..1}.tar"), tmp_path / "hashes.json"))
    refused(proc, f"WebDataset shard {shards[0]} yielded 4 of the 5 image samples", "missing: s0_2")


def test_a_stream_that_ends_early_is_an_error_not_a_shorter_epoch(tmp_path):
    """The loader's own check: a shard whose stream ends short (its marker in the dropped tail)."""
    pytest.importorskip("webdataset")
    from torchvision import transforms as T
    from promptkd.trainers.pool_loader import ShardEpochLoader, ShardViewDataset
    shard = write_shard(str(tmp_path / "a.tar"), [f"k{j}" for j in range(4)], 0)
    listing = {shard: [f"k{j}" for j in range(4)] + ["k9"]}  # counted with a fifth sample
    dataset = ShardViewDataset(listing, T.Compose([T.Resize((8, 8)), T.ToTensor()]), 1, 0, 1)
    dataset.batch_size = 2
    loader = ShardEpochLoader(dataset, 2, 0, 2, False)
    with pytest.raises(DataError, match="yielded 4 of the 5 image samples"):
        list(loader)


# --- 5. vocabularies with names CLIP cannot tell apart --------------------------------------------

def test_a_vocabulary_with_names_differing_only_in_case_is_refused(data_root, clip_files, teacher_run, tmp_path):
    """Before: exported, and the teacher's probability split between 'Cat' and 'cat'."""
    names = tmp_path / "words.txt"
    names.write_text("stone\nCat\ncloud\ncat\ngolden_retriever\ngolden   retriever\nfur\n")
    proc = train_py(["--eval-only", "--model-dir", teacher_run["out"], *teacher_args(
        data_root, clip_files, str(tmp_path / "t"), "TRAINER.EXPORT_DIR", str(tmp_path / "export"),
        "TRAINER.EXPORT_VOCABULARY", str(names), "TEST.NO_TEST", "True")])
    refused(proc, f"The vocabulary {names} holds 2 group(s) of names that CLIP's tokenizer cannot tell apart",
            "'Cat' / 'cat'", "'golden_retriever' / 'golden   retriever'")


def test_a_vocabulary_file_with_such_names_is_refused_by_the_student(data_root, clip_files, teacher_run, tmp_path):
    """A class-vector file of a vocabulary written before the check (here: by hand)."""
    vectors = ClassVectors.load(class_vectors_file(teacher_run["export"], "DescribableTextures"))
    vectors.classnames = ["stone", "Stone ", "cloud", "fur", "bark"]
    vectors.dataset = "vocabulary:words"
    path = str(tmp_path / "class_vectors_vocab_words.pt")
    vectors.save(path)
    proc = train_py(student(data_root, clip_files, teacher_run, tmp_path / "run", "TRAINER.PROMPTKD.VOCABULARY",
                            path))
    refused(proc, f"TRAINER.PROMPTKD.VOCABULARY {path} holds 1 group(s)", "'stone' / 'Stone '")


# --- 6. hand-edited run records ---------------------------------------------------------------------

def write_runs(root, edits):
    """Three seeds of one base-to-novel method; `edits[seed](run, result)` changes one."""
    for seed in (1, 2, 3):
        folder = root / f"seed{seed}"
        folder.mkdir(parents=True)
        run = {"format": 1, "kind": "run", "run_id": f"r{seed}", "trainer": "CoOp", "dataset": "DescribableTextures",
               "protocol": "base2novel", "seed": seed, "backbone": "ViT-B/16", "selection": "last_epoch"}
        result = {"format": 1, "kind": "result", "run_id": f"r{seed}", **{k: run[k] for k in
                                                                           ("trainer", "dataset", "protocol", "seed")},
                  "metrics": {"base": 80.0 + seed, "novel": 70.0 + seed, "hm": 75.0}}
        if seed in edits:
            edits[seed](run, result)
        for name, record in (("run.json", run), ("result.json", result)):
            if record is not None:
                (folder / name).write_text(json.dumps(record))


@pytest.mark.parametrize("edit, detail", [
    (lambda run, res: res["metrics"].__setitem__("base", "82.0"), 'metric base is "82.0", not a number'),
    (lambda run, res: res.__setitem__("metrics", None), "metrics is null, not an object of metrics"),
    (lambda run, res: res["metrics"].__setitem__("novel", float("nan")), "metric novel is nan, not an accuracy"),
    (lambda run, res: res["metrics"].__setitem__("base", 8200), "metric base is 8200, not an accuracy in percent"),
    (lambda run, res: res["metrics"].pop("novel"), "no metric novel (a base2novel run records base, novel)"),
    (lambda run, res: res["metrics"].__setitem__("hm", True), "metric hm is true, not a number"),
    (lambda run, res: run.__setitem__("trainer", ["CoOp"]), 'trainer is ["CoOp"], not a string'),
    (lambda run, res: run.__setitem__("pool", "train"), 'pool is "train", not a pool record'),
])
def test_a_hand_edited_record_is_listed_never_silently_dropped_from_one_column(edit, detail, tmp_path):
    """Before: a string metric left seed 2 out of Base but not Novel (means over different seeds,
    and an HM of them); `"metrics": null` was listed as "no result.json" though the file is there."""
    write_runs(tmp_path / "runs", {2: edit})
    proc = promptkd("results", [tmp_path / "runs", "--out", tmp_path / "t"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stderr + proc.stdout  # the warning (stdout where an in-process trainer set up the promptkd logger)
    assert "Traceback" not in said and "not used in any mean" in said and detail in said
    import csv
    rows = [r for r in csv.DictReader(open(tmp_path / "t.csv")) if r["kind"] == "dataset"]
    assert len(rows) == 1 and rows[0]["base_n"] == rows[0]["novel_n"] == "2" and rows[0]["seeds"] == "1 3"
    assert float(rows[0]["base_mean"]) == pytest.approx(82.0) and float(rows[0]["novel_mean"]) == pytest.approx(72.0)
    md = open(tmp_path / "t.md").read()
    assert "| invalid " in md and detail.replace("|", "\\|") in md


def test_a_record_that_is_not_an_object_is_an_error_naming_it(tmp_path):
    write_runs(tmp_path / "runs", {})
    (tmp_path / "runs" / "seed2" / "result.json").write_text("[81.0, 71.0]")
    refused(promptkd("results", [tmp_path / "runs", "--out", tmp_path / "t"]),
            f"{tmp_path / 'runs' / 'seed2' / 'result.json'} is not a run record", "JSON list")


# --- no traceback without --debug ----------------------------------------------------------------

@pytest.mark.parametrize("exc, code, needle", [
    (ZeroDivisionError("division by zero"), 1, "error: unexpected ZeroDivisionError: division by zero (at "),
    (KeyboardInterrupt(), 130, "error: interrupted (Ctrl-C)."),
    (PermissionError(13, "Permission denied", "/some/file"), 2, "error: Permission denied: /some/file."),
])
def test_no_error_path_prints_a_traceback_without_debug(exc, code, needle, tmp_path):
    """An exception no check anticipated (a bug), Ctrl-C, an unguarded permission error: one line
    and an exit code; --debug shows the traceback."""
    from promptkd.cli import console

    def run(debug):
        def child():
            from promptkd import results

            def boom(*args, **kwargs):
                raise exc
            results.aggregate = boom
            (tmp_path / "runs" / "a").mkdir(parents=True, exist_ok=True)
            (tmp_path / "runs" / "a" / "log.txt").write_text("epoch [1/1]\n")
            console(["results", str(tmp_path / "runs")] + (["--debug"] if debug else []))
        return forked.run(child, 120)
    plain = run(False)
    assert plain.returncode == code and plain.stderr.startswith(needle), plain.stderr[-2000:]
    assert "Traceback" not in plain.stderr and "--debug" in plain.stderr
    debugged = run(True)
    assert "Traceback" in debugged.stderr and debugged.returncode != 0


def test_a_read_only_output_dir_is_one_line(data_root, clip_files, teacher_run, tmp_path):
    """Sibling of the cache case: --output-dir on a read-only location (Dassl's own logger and
    mkdir, unguarded by this plugin) ends in one `error:` line naming the path, not a traceback."""
    out = tmp_path / "out"
    proc = read_only(out, "train", student(data_root, clip_files, teacher_run, out))
    refused(proc, str(out), "Read-only file system" if os.geteuid() == 0 else "Permission denied")


def test_a_hand_edited_hash_cache_is_hashed_again(data_root, clip_files, teacher_run, tmp_path):
    """The pool's content-hash cache with entries of the wrong type: read again, not a TypeError."""
    pytest.importorskip("webdataset")
    shard = write_shard(str(tmp_path / "shards" / "pool-0.tar"), [f"s0_{j}" for j in range(5)], 0)
    write_shard(str(tmp_path / "shards" / "pool-1.tar"), [f"s1_{j}" for j in range(5)], 100)
    (tmp_path / "hashes.json").write_text(json.dumps({"format": 1, "files": {}, "shards": {shard: 7}}))
    proc = train_py(shard_pool(data_root, clip_files, teacher_run, tmp_path / "run",
                               str(tmp_path / "shards" / "pool-{0..1}.tar"), tmp_path / "hashes.json"))
    assert proc.returncode == 0, proc.stderr[-3000:]
