"""Multi-rank recording: 2 gloo processes on CPU write shards of one run; the reader
merges them along the batch axis."""

import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

import dynalens


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, path: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 2))
        ddp = nn.parallel.DistributedDataParallel(model)
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        rec = dynalens.Recorder(
            ddp,
            path,
            sites=["module.0", "module.2"],
            every=2,
            capture=("activations", "gradients", "param_grads"),
        )
        expected = []
        for step in range(4):
            g = torch.Generator().manual_seed(100 * step + rank)
            x, y = torch.randn(6, 5, generator=g), torch.randint(0, 2, (6,), generator=g)
            h = model[0](x).detach().clone()
            loss = nn.functional.cross_entropy(ddp(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            rec.step(step, loss=loss.item())
            if step % 2 == 0:
                expected.append(h.numpy())
        rec.close()
        np.save(os.path.join(path, f"expected{rank}.npy"), np.stack(expected))
        assert rec.run == "run-000"
    finally:
        dist.destroy_process_group()


@pytest.mark.ddp
def test_two_ranks_write_shards_that_the_reader_merges(tmp_path):
    path = str(tmp_path / "ddp")
    mp.spawn(_worker, args=(2, _free_port(), path), nprocs=2, join=True)
    store = dynalens.open_store(path)
    assert store.world_size == 2
    assert store.steps().tolist() == [0, 2]
    merged = store.activations("module.0")
    assert merged.shape == (2, 12, 4)  # ranks concatenated along the batch axis
    e0, e1 = np.load(f"{path}/expected0.npy"), np.load(f"{path}/expected1.npy")
    np.testing.assert_allclose(merged, np.concatenate([e0, e1], axis=1), atol=1e-6)
    np.testing.assert_allclose(store.activations("module.0", rank=1), e1, atol=1e-6)
    np.testing.assert_allclose(store.as_dask("activations", "module.0").compute(), merged)
    # DDP all-reduces parameter gradients: every rank holds the same, rank 0's is returned
    assert store.param_grads("module.2", "weight").shape == (2, 2, 4)
    assert store.info()["arrays"][0]["shape"] == [12, 4]
    assert len(store.scalars(rank=1)) == 4
