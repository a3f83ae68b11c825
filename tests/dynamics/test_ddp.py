"""DDP comm-hook noise scale with 2 gloo processes on CPU, against a single-process
computation on the same data (exact), and the live per-example instrument under DDP."""

from __future__ import annotations

import os
import socket
from typing import Any

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn.parallel import DistributedDataParallel

pytestmark = pytest.mark.ddp

B_LOCAL, STEPS, WORLD = 6, 4, 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _data(step: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(100 + step)
    x = torch.randn(WORLD * B_LOCAL, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (WORLD * B_LOCAL,), generator=g)
    return x, y


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(5, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()


def _expected() -> tuple[float, float]:
    """Single process: mean over steps of the two-batch estimates (b vs W·b)."""
    from dynalens.dynamics.gns import two_batch_estimates

    model = _model()
    ce = torch.nn.functional.cross_entropy
    trs, g2s = [], []
    for step in range(STEPS):
        x, y = _data(step)
        small = 0.0
        grads = []
        for r in range(WORLD):
            sl = slice(r * B_LOCAL, (r + 1) * B_LOCAL)
            gr = torch.autograd.grad(ce(model(x[sl]), y[sl]), list(model.parameters()))
            small += sum(float(g.pow(2).sum()) for g in gr) / WORLD
            grads.append(gr)
        big = sum(float(((a + b) / 2).pow(2).sum()) for a, b in zip(*grads))
        tr, g2 = two_batch_estimates(small, B_LOCAL, big, WORLD * B_LOCAL)
        trs.append(float(tr))
        g2s.append(float(g2))
    return sum(trs) / STEPS, sum(g2s) / STEPS


def _worker(rank: int, port: int, queue: Any) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from dynalens.dynamics.ddp import DDPNoiseScale
        from dynalens.dynamics.gns_live import GradientNoiseScaleMonitor

        torch.set_num_threads(1)
        ddp = DistributedDataParallel(_model())
        gns = DDPNoiseScale(ddp, batch_size=B_LOCAL, beta=1.0).register()
        live = GradientNoiseScaleMonitor(ddp.module, beta=1.0, sync_ranks=True).attach()
        opt = torch.optim.SGD(ddp.parameters(), lr=0.0)
        for step in range(STEPS):
            x, y = _data(step)
            sl = slice(rank * B_LOCAL, (rank + 1) * B_LOCAL)
            opt.zero_grad()
            torch.nn.functional.cross_entropy(ddp(x[sl]), y[sl]).backward()
            gns.step(step)
            live.step(step)
            opt.step()
        live.detach()
        queue.put((rank, gns.compute(), live.compute()))
    finally:
        dist.destroy_process_group()


def test_ddp_comm_hook_matches_single_process() -> None:
    ctx = mp.get_context("spawn")
    queue = ctx.SimpleQueue()
    mp.start_processes(_worker, args=(_free_port(), queue), nprocs=WORLD, start_method="spawn")
    results = [queue.get() for _ in range(WORLD)]
    tr, g2 = _expected()
    for _rank, got, live in results:
        assert got["gns_ddp.trace_sigma"] == pytest.approx(tr, rel=1e-9)
        assert got["gns_ddp.grad_sq"] == pytest.approx(g2, rel=1e-9)
        assert live["gns.trace_sigma"] > 0  # per-example, averaged over both ranks
    # both ranks report the same synchronised per-example statistics
    assert results[0][2]["gns.trace_sigma"] == pytest.approx(results[1][2]["gns.trace_sigma"])
