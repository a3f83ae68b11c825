"""The induction task with a random gap, and the per-head scores that find induction heads.

Task (Olsson et al. 2022, "In-context learning and induction heads", in the form of
guide §4): a sequence of ``T`` tokens starts with ``<bos>`` (token 0); every other
position is a uniformly random token from ``1..V-1``, except that ``k`` random tokens
``r_1..r_k`` appear twice: a first copy at a random start ``s_1`` and a second copy at
``s_2 = s_1 + k + g`` after a random gap of ``g`` in ``0..max_gap`` filler tokens. The
loss counts only the predictions *inside* the second copy: at position ``s_2 + i - 1``
the target is ``r_{i+1}`` (``i = 1..k-1``), predictable only by looking back at the first
copy. The random gap removes the positional shortcut that a fixed offset allows (a fixed
``[bos, r, r]`` layout is solved in ~100 steps by positional attention alone, with no
previous-token heads: guide §4 pitfall).

Per-head scores, from the attention pattern ``A^{l,h}[q, k]`` (mean over examples and
query positions; chance for uniform attention over ``q + 1`` keys is ``1/(q + 1)``):

- *induction score*: attention from the token ``r_i`` of the second copy (query
  ``s_2 + i - 1``) to the token *after* its earlier occurrence (key ``s_1 + i``),
  ``i = 1..k-1``;
- *previous-token score*: attention from every position ``q >= 1`` to ``q - 1``.

A 2-layer attention-only transformer solves the task by composing a previous-token head
in layer 0 with an induction head in layer 1 (K-composition); the loss drops when both
form (the phase change of Olsson et al. 2022).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import nn

from dynalens._validation import check_int
from dynalens.circuits.metrics import NamedMetric
from dynalens.errors import InvalidInputError, InvalidParameterError
from dynalens.probe.interventions import record_activations
from dynalens.probe.interventions_sites import detect_backend

if TYPE_CHECKING:
    import pandas as pd

BOS = 0


@dataclass(frozen=True)
class InductionBatch:
    """Sequences of the induction task and where their copies are.

    Attributes
    ----------
    tokens : Tensor ``[batch, T]`` int64, the clean sequences.
    corrupt : Tensor ``[batch, T]``, the same sequences with the first copy replaced by
        fresh random tokens (nothing to copy from; positions aligned).
    first, second : Tensor ``[batch]``, the start ``s_1`` / ``s_2`` of each copy.
    k : int, the length of a copy.
    """

    tokens: torch.Tensor
    corrupt: torch.Tensor
    first: torch.Tensor
    second: torch.Tensor
    k: int

    def query_positions(self) -> torch.Tensor:
        """``[batch, k-1]`` positions inside the second copy whose next token is scored."""
        return self.second[:, None] + torch.arange(self.k - 1)[None]

    def induction_keys(self) -> torch.Tensor:
        """``[batch, k-1]`` the token after each query's earlier occurrence."""
        return self.first[:, None] + 1 + torch.arange(self.k - 1)[None]

    def targets(self) -> torch.Tensor:
        """``[batch, k-1]`` the token to predict at each query position."""
        return self.tokens.gather(1, self.query_positions() + 1)


def induction_batch(
    n: int, *, seq_len: int = 40, k: int = 8, max_gap: int = 12, d_vocab: int = 64, seed: int = 0
) -> InductionBatch:
    """``n`` sequences of the induction task (module docstring), reproducible by ``seed``."""
    n = check_int("n", n, min=1)
    k = check_int("k", k, min=2)
    max_gap = check_int("max_gap", max_gap, min=0)
    d_vocab = check_int("d_vocab", d_vocab, min=3)
    if 1 + 2 * k + max_gap > seq_len:
        raise InvalidParameterError(
            f"seq_len={seq_len} cannot hold <bos>, two copies of k={k} and a gap up to "
            f"{max_gap}; need seq_len >= {1 + 2 * k + max_gap}."
        )
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(1, d_vocab, (n, seq_len), generator=g)
    tokens[:, 0] = BOS
    copy = torch.randint(1, d_vocab, (n, k), generator=g)
    gap = torch.randint(0, max_gap + 1, (n,), generator=g)
    room = seq_len - 2 * k - gap  # starts 1..room-1 keep the second copy inside
    first = 1 + (torch.rand(n, generator=g) * (room - 1)).long()
    second = first + k + gap
    rows = torch.arange(n)[:, None]
    offsets = torch.arange(k)[None]
    tokens[rows, first[:, None] + offsets] = copy
    tokens[rows, second[:, None] + offsets] = copy
    corrupt = tokens.clone()
    corrupt[rows, first[:, None] + offsets] = torch.randint(1, d_vocab, (n, k), generator=g)
    return InductionBatch(tokens, corrupt, first, second, k)


def _check_logits(logits: torch.Tensor, batch: InductionBatch) -> None:
    if logits.ndim != 3 or logits.shape[:2] != batch.tokens.shape:
        raise InvalidInputError(
            f"logits {tuple(logits.shape)} do not match the batch's tokens "
            f"{tuple(batch.tokens.shape)}; pass logits [batch, T, vocab] of those tokens."
        )


def copy_log_probs(logits: torch.Tensor, batch: InductionBatch) -> torch.Tensor:
    """``[batch, k-1]`` log-probabilities (nats) of the second copy's next tokens."""
    _check_logits(logits, batch)
    q = batch.query_positions().to(logits.device)
    picked = logits.gather(1, q[..., None].expand(-1, -1, logits.shape[-1]))
    logp = torch.log_softmax(picked.double(), dim=-1)
    return logp.gather(2, batch.targets().to(logits.device)[..., None])[..., 0]


def copy_loss(logits: torch.Tensor, batch: InductionBatch) -> torch.Tensor:
    """Mean cross-entropy (nats) inside the second copy: the training loss."""
    _check_logits(logits, batch)
    q = batch.query_positions().to(logits.device)
    picked = logits.gather(1, q[..., None].expand(-1, -1, logits.shape[-1]))
    return nn.functional.cross_entropy(
        picked.reshape(-1, logits.shape[-1]), batch.targets().to(logits.device).reshape(-1)
    )


def copy_accuracy(logits: torch.Tensor, batch: InductionBatch) -> float:
    """Share of the second copy's next tokens that are the argmax prediction."""
    _check_logits(logits, batch)
    q = batch.query_positions().to(logits.device)
    pred = logits.gather(1, q[..., None].expand(-1, -1, logits.shape[-1])).argmax(-1)
    return float((pred.cpu() == batch.targets()).double().mean())


def copy_metric(batch: InductionBatch) -> NamedMetric:
    """Per-example mean log-probability of the second copy's next tokens (a patching
    metric named ``"copy_logprob"``; its cache key holds the batch's copy positions)."""

    def metric(logits: torch.Tensor) -> torch.Tensor:
        return copy_log_probs(logits, batch).mean(1)

    params = {"first": batch.first, "second": batch.second, "k": batch.k}
    return NamedMetric(metric, "copy_logprob", params)


@dataclass
class HeadScores:
    """Per-head attention scores ``[layers, heads, batch]`` with the score's name."""

    values: torch.Tensor
    name: str

    def mean(self) -> torch.Tensor:
        """``[layers, heads]`` mean over examples."""
        return self.values.mean(-1)

    def table(self) -> pd.DataFrame:
        """One row per head: layer, head, score (mean over examples), name."""
        from dynalens._optional import require

        pandas = require("pandas", "HeadScores.table")
        n_layers, n_heads = self.values.shape[:2]
        mean = self.mean()
        return pandas.DataFrame({
            "layer": [lay for lay in range(n_layers) for _ in range(n_heads)],
            "head": [h for _ in range(n_layers) for h in range(n_heads)],
            "score": mean.reshape(-1).numpy(),
            "name": self.name,
        })  # fmt: skip


@torch.no_grad()
def attention_scores(
    model: nn.Module, tokens: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor
) -> torch.Tensor:
    """``[layers, heads, batch]``: mean over ``j`` of ``A^{l,h}[b, queries[b, j], keys[b, j]]``.

    Reads each layer's ``pattern`` site (``[batch, head, query, key]``) on any backend
    of :func:`~dynalens.probe.interventions_sites.detect_backend` with attention patterns.
    """
    if queries.shape != keys.shape or queries.ndim != 2 or queries.shape[0] != tokens.shape[0]:
        raise InvalidInputError(
            f"queries {tuple(queries.shape)} and keys {tuple(keys.shape)} must both be "
            f"[batch, n] with batch = {tokens.shape[0]} (one row of positions per example)."
        )
    t = tokens.shape[1]
    if queries.numel() and (
        int(queries.min()) < 0
        or int(queries.max()) >= t
        or bool((keys > queries).any())
        or int(keys.min()) < 0
    ):
        raise InvalidInputError(
            f"positions must satisfy 0 <= key <= query < {t} (causal attention)."
        )
    backend = detect_backend(model)
    n_layers = int(backend.n_layers or 0)
    sites = [backend.component_site("pattern", lay) for lay in range(n_layers)]
    patterns = record_activations(model, tokens, sites, backend=backend)
    rows = torch.arange(tokens.shape[0])[:, None]
    out = []
    for site in sites:
        p = patterns[site].double().cpu()  # [batch, head, query, key]
        picked = p.permute(0, 2, 3, 1)[rows, queries, keys]  # [batch, n, head]
        out.append(picked.mean(1).T)
    return torch.stack(out)


def induction_scores(model: nn.Module, batch: InductionBatch) -> HeadScores:
    """Per-head induction score on ``batch`` (module docstring)."""
    values = attention_scores(model, batch.tokens, batch.query_positions(), batch.induction_keys())
    return HeadScores(values, "induction")


def previous_token_scores(model: nn.Module, batch: InductionBatch) -> HeadScores:
    """Per-head previous-token score on ``batch`` (module docstring)."""
    b, t = batch.tokens.shape
    q = torch.arange(1, t).expand(b, -1)
    return HeadScores(attention_scores(model, batch.tokens, q, q - 1), "previous_token")
