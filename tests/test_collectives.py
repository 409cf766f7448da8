"""Tensor collectives (`promptkd.distributed.gather_rows` / `gather_in_order` /
`sum_over_ranks`) under gloo with 2 processes: unequal and empty shares, equal to one process
holding everything. Evaluation
gathers per-image predictions and the teacher-cache writer gathers embeddings through these
(the torchrun runs of tests/test_distributed.py check them end to end; tests/gpu the same
code on one process per device)."""
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from promptkd import distributed


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shares(rank):
    """Rank 0: 3 examples in 2 batches; rank 1: 1 example (and, in a second round, none)."""
    g = torch.Generator().manual_seed(rank)
    if rank == 0:
        idx = [torch.tensor([4, 0]), torch.tensor([2])]
    else:
        idx = [torch.tensor([1])]
    preds = [torch.stack([i, i % 2, i + 10], 1) for i in idx]
    emb = [torch.randn(len(i), 5, generator=g) for i in idx]
    return idx, preds, emb


def everything():
    parts = [shares(r) for r in (0, 1)]
    return [sum((p[k] for p in parts), []) for k in range(3)]


def worker(rank, port, out_dir):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    try:
        idx, preds, emb = shares(rank)
        result = {"rows": distributed.gather_rows(torch.cat(idx), torch.cat(emb)),
                  "ordered": distributed.gather_in_order(idx, preds, emb),
                  "empty": distributed.gather_in_order(idx if rank == 0 else [], preds if rank == 0 else []),
                  "sums": distributed.sum_over_ranks(*((3, 0, True) if rank == 0 else (1, 5, False)))}
        torch.save(result, os.path.join(out_dir, f"rank{rank}.pt"))
    except BaseException:
        dist.destroy_process_group()  # no barrier: the peer may be gone
        raise
    distributed.finish()  # barriers first: see promptkd.distributed.finish


@pytest.fixture(scope="module")
def gathered(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("collectives"))
    mp.spawn(worker, args=(free_port(), out), nprocs=2, join=True)
    return [torch.load(os.path.join(out, f"rank{r}.pt"), weights_only=False) for r in (0, 1)]


def test_rows_of_every_rank_in_rank_order(gathered):
    idx, _, emb = everything()
    for r in gathered:
        index, rows = r["rows"]
        assert torch.equal(index, torch.cat(idx)) and torch.equal(rows, torch.cat(emb))


def test_gather_in_order_equals_one_process(gathered):
    idx, preds, emb = everything()
    one = distributed.gather_in_order(idx, preds, emb)  # not distributed: this process holds all
    assert torch.equal(one[0][:, 0], torch.tensor([0, 1, 2, 4]))  # sorted by dataset index
    for r in gathered:
        assert all(torch.equal(a, b) for a, b in zip(r["ordered"], one))
        assert torch.equal(r["empty"][0], distributed.gather_in_order(*everything()[:2])[0][[0, 2, 3]])


def test_counts_are_summed_over_ranks(gathered):
    """What the unreadable-image share is checked on under torchrun: every rank gets the same sums."""
    assert [r["sums"] for r in gathered] == [(4, 5, 1), (4, 5, 1)]
    assert distributed.sum_over_ranks(3, True) == (3, 1)  # one process: as given
