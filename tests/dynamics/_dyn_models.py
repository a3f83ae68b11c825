"""Small float64 models and a per-example reference loop shared by the dynamics tests."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F


def ce_tokens(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sequence loss: token cross-entropies summed over positions -> [B]."""
    return F.cross_entropy(out.transpose(1, 2), y, reduction="none").sum(1)


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(out, y, reduction="none")


def mse(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 0.5 * (out - y).pow(2).flatten(1).sum(1)


def mlp(d_in: int = 7, h: int = 9, d_out: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Linear(d_in, h), nn.ReLU(inplace=True), nn.Linear(h, h), nn.Tanh(), nn.Linear(h, d_out)
    ).double()


class SeqModel(nn.Module):
    """Embedding -> LayerNorm -> Linear (3-D) -> GELU -> RMSNorm -> Linear head."""

    def __init__(self, V: int = 11, d: int = 6, h: int = 5, tied: bool = False) -> None:
        super().__init__()
        self.emb = nn.Embedding(V, d, padding_idx=0)
        self.ln = nn.LayerNorm(d)
        self.fc = nn.Linear(d, h)
        self.rms = nn.RMSNorm(h)
        self.proj = nn.Linear(h, d, bias=False)
        self.head = nn.Linear(d, V)
        if tied:
            self.head.weight = self.emb.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.ln(self.emb(x))
        z = self.rms(F.gelu(self.fc(z)))
        return self.head(self.proj(z))


class ConvModel(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 4, 3, padding=1, stride=2)
        self.gn = nn.GroupNorm(2, 4)
        self.conv2 = nn.Conv2d(4, 3, (2, 3), dilation=(1, 2), bias=False)
        self.fc = nn.Linear(3 * 2 * 2, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.relu(self.gn(self.conv(x)))
        return self.fc(self.conv2(z).flatten(1))


class Reused(nn.Module):
    """One Linear applied twice (weight reuse within a pass) and a custom module."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(5, 4)
        self.shared = nn.Linear(4, 4)
        self.scale = Scale(4)
        self.out = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.tanh(self.shared(torch.tanh(self.inp(x))))
        z = self.scale(torch.tanh(self.shared(z)))
        return self.out(z)


class Scale(nn.Module):
    """No closed-form rule: exercised through the torch.func fallback."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.gamma = nn.Parameter(torch.linspace(0.5, 1.5, d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gamma + self.gamma.pow(2)


def per_example_reference(
    model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], x: Any, y: Any
) -> dict[str, torch.Tensor]:
    """``‖∇θ l_i‖²`` per parameter by a loop over single examples (autograd.grad)."""
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    out: dict[str, list[torch.Tensor]] = {n: [] for n, _ in named}
    for i in range(len(x)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, [p for _, p in named], allow_unused=True)
        for (n, p), g in zip(named, grads):
            out[n].append(torch.zeros((), dtype=p.dtype) if g is None else g.pow(2).sum())
    return {n: torch.stack(v) for n, v in out.items()}


def per_example_grads(
    model: nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], x: Any, y: Any
) -> torch.Tensor:
    """[N, P] flattened per-example gradients (reference for the statistics tests)."""
    params = [p for p in model.parameters() if p.requires_grad]
    rows = []
    for i in range(len(x)):
        loss = loss_fn(model(x[i : i + 1]), y[i : i + 1]).sum()
        grads = torch.autograd.grad(loss, params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)
