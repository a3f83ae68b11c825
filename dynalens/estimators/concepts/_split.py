"""Seeded train / test splits that refuse when a class is too rare to appear in both."""

from __future__ import annotations

import torch

from dynalens.errors import InvalidInputError

__all__ = ["check_class_counts", "train_test_split"]


def train_test_split(n: int, test_size: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded random split of ``range(n)``: (train rows, test rows), both non-empty."""
    n_test = round(n * test_size)
    if n_test < 1 or n - n_test < 1:
        raise InvalidInputError(
            f"test_size={test_size} leaves an empty train or test split of {n} rows; pass "
            "more rows or a test_size between 1/n and 1 - 1/n."
        )
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_test:], order[:n_test]


def check_class_counts(
    labels: torch.Tensor, test_size: float, *, metric: str, what: str, min_count: int = 2
) -> None:
    """Refuse binary label columns (n, k) with fewer than ``min_count`` expected members
    of a class in the smaller split: the split would make the metric undefined."""
    n = labels.shape[0]
    smaller = min(test_size, 1 - test_size)
    counts = torch.minimum(labels.sum(0), n - labels.sum(0))
    rare = (counts * smaller < min_count).nonzero().flatten().tolist()
    if rare:
        j = rare[0]
        raise InvalidInputError(
            f"{metric} needs both classes of every {what} in the train and the test split; "
            f"{what} {j} has only {int(counts[j])} sample(s) of its rarer class among {n}, "
            f"so a {smaller:.0%} split holds about {counts[j] * smaller:.1f} of them "
            f"({len(rare)} such {what}(s): {rare[:8]}). Pass more rows, raise test_size, "
            f"or drop the {what}."
        )
