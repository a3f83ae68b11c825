"""Toy tasks for circuits tests and demos: an IOI-like task with token-aligned corruptions.

One word-level vocabulary (54 tokens): 14 template words, 20 names, 6 places, 6 objects
and 8 colours. The IOI-like template (15 tokens, Wang et al. 2022's indirect-object
identification in miniature) is ``<bos> When N1 and N2 went to the PLACE , S2 gave a OBJ
to`` with answer the indirect object IO: ``{N1, N2} = {IO, S}`` in either order (ABBA /
BABA, p = 0.5) and ``S2 = S`` at position 10. The corrupt prompt replaces S2 by a third name
C, so nothing says which name to repeat; positions stay aligned. A 2-layer attention-only
transformer learns it in about 200 AdamW steps (lr 3e-3, batch 128).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from dynalens.errors import InvalidParameterError

WORDS = [
    "<bos>",
    "<pad>",
    "When",
    "and",
    "went",
    "to",
    "the",
    ",",
    "gave",
    "a",
    "On",
    "is",
    "The",
    ".",
]
NAMES = [f"name{i}" for i in range(20)]
PLACES = [f"place{i}" for i in range(6)]
OBJECTS = [f"object{i}" for i in range(6)]
COLOURS = [f"colour{i}" for i in range(8)]
VOCAB = WORDS + NAMES + PLACES + OBJECTS + COLOURS
TOKEN = {w: i for i, w in enumerate(VOCAB)}
S2_POSITION, END_POSITION = 10, 14


@dataclass(frozen=True)
class PromptPairs:
    """Token-aligned clean / corrupt prompts with the answer and the wrong token."""

    clean: torch.Tensor  # [batch, pos]
    corrupt: torch.Tensor  # [batch, pos]
    answer: torch.Tensor  # [batch] the indirect object
    wrong: torch.Tensor  # [batch] the subject


def ioi_pairs(n: int, *, seed: int = 0, n_names: int = 16) -> PromptPairs:
    """``n`` IOI-like prompt pairs (names drawn from the first ``n_names`` of 20)."""
    if n < 1 or not 3 <= n_names <= len(NAMES):
        raise InvalidParameterError(f"need n >= 1 and 3 <= n_names <= 20; got {n}, {n_names}.")
    g = torch.Generator().manual_seed(seed)
    names = torch.stack([torch.randperm(n_names, generator=g)[:3] for _ in range(n)])
    io, s, c = (names[:, i] + TOKEN["name0"] for i in range(3))
    abba = torch.rand(n, generator=g) < 0.5
    n1, n2 = torch.where(abba, io, s), torch.where(abba, s, io)
    place = torch.randint(len(PLACES), (n,), generator=g) + TOKEN["place0"]
    obj = torch.randint(len(OBJECTS), (n,), generator=g) + TOKEN["object0"]
    words = [
        "<bos>",
        "When",
        None,
        "and",
        None,
        "went",
        "to",
        "the",
        None,
        ",",
        None,
        "gave",
        "a",
        None,
        "to",
    ]
    fill = {2: n1, 4: n2, 8: place, 10: s, 13: obj}
    columns = [fill[i] if w is None else torch.full((n,), TOKEN[w]) for i, w in enumerate(words)]
    clean = torch.stack(columns, dim=1)
    corrupt = clean.clone()
    corrupt[:, S2_POSITION] = c
    return PromptPairs(clean, corrupt, io, s)


def train_on_pairs(
    model: nn.Module,
    make_pairs: object,
    *,
    steps: int = 200,
    batch: int = 128,
    lr: float = 3e-3,
    seed: int = 0,
) -> nn.Module:
    """Train ``model`` with AdamW on cross-entropy at the last position of the clean
    prompts of ``make_pairs(batch, seed=...)``; returns the model in eval mode."""
    if not callable(make_pairs):
        raise InvalidParameterError("make_pairs must be a callable like ioi_pairs.")
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    for step in range(steps):
        pairs = make_pairs(batch, seed=seed * 1_000_003 + step)
        logits = model(pairs.clean)[:, -1]
        loss = nn.functional.cross_entropy(logits, pairs.answer)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()
