"""Sites: the named places of a model whose tensors are recorded.

A site's name mirrors its module path (``layers.2``, ``encoder.block.0.mlp``); on
transformer-lens models every hook point of ``model.hook_dict`` is a site too
(``blocks.0.hook_resid_post``), aliases included. Sites are chosen by exact name, glob
(``layers.*``) or module type (``nn.Linear``), and each declares its axes, which
downstream code reads instead of guessing from names.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from dynalens.errors import InvalidParameterError, SiteNotFoundError, close_matches, listing

SiteSpec = str | type[nn.Module] | Sequence[str | type[nn.Module]]

_CONV_TYPES = (nn.Conv2d, nn.BatchNorm2d, nn.MaxPool2d, nn.AvgPool2d)


@dataclass
class Site:
    """A recorded place: its name, module, and the axes of its output."""

    name: str
    module: nn.Module
    axes: tuple[str, ...] | None = None  # filled at the first capture when not given
    meta: dict[str, Any] = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"module": type(self.module).__name__, "axes": list(self.axes or ()), **self.meta}


def candidate_modules(model: nn.Module) -> dict[str, nn.Module]:
    """Every nameable module: ``named_modules()`` (without the root) plus hook points."""
    found = {name: mod for name, mod in model.named_modules() if name}
    hook_dict = getattr(model, "hook_dict", None)
    if isinstance(hook_dict, dict):
        found.update({k: v for k, v in hook_dict.items() if isinstance(v, nn.Module)})
    return found


def resolve_sites(model: nn.Module, spec: SiteSpec) -> dict[str, Site]:
    """Turn a site spec into ``{name: Site}`` in model order.

    Raises:
        SiteNotFoundError: a name or pattern matches no module (with close matches).
        InvalidParameterError: the spec is neither a name, a glob, a type nor a list.
    """
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    items: Sequence[Any] = [spec] if isinstance(spec, (str, type)) else spec
    if not isinstance(items, Sequence) or not items:
        raise InvalidParameterError(
            "sites must be a module name ('layers.2'), a glob ('layers.*'), a module type "
            f"(nn.Linear) or a non-empty list of them; got {spec!r}."
        )
    modules = candidate_modules(model)
    chosen: dict[str, nn.Module] = {}
    for item in items:
        if isinstance(item, type) and issubclass(item, nn.Module):
            hits = {n: m for n, m in modules.items() if isinstance(m, item)}
            what = f"module type {item.__name__}"
        elif isinstance(item, str):
            if any(ch in item for ch in "*?["):
                hits = {n: m for n, m in modules.items() if fnmatch.fnmatchcase(n, item)}
            else:
                hits = {item: modules[item]} if item in modules else {}
            what = f"site {item!r}"
        else:
            raise InvalidParameterError(
                f"a site must be a name, a glob or an nn.Module type; got {item!r}."
            )
        if not hits:
            hint = close_matches(item, modules) if isinstance(item, str) else ""
            raise SiteNotFoundError(
                f"{what} matches no module of {type(model).__name__}{hint} "
                f"Sites: {listing(modules, limit=20)}."
            )
        chosen.update(hits)
    order = {name: i for i, name in enumerate(modules)}
    return {
        name: Site(name, mod) for name, mod in sorted(chosen.items(), key=lambda kv: order[kv[0]])
    }


def default_axes(module: nn.Module, ndim: int, name: str = "") -> tuple[str, ...]:
    """Axes of an output with ``ndim`` dimensions, batch first.

    2-D ``(batch, feature)``; 3-D ``(batch, pos, feature)`` (sequence models, transformer
    hook points); 4-D convolutional ``(batch, channel, height, width)``; 4-D attention
    patterns ``(batch, head, query_pos, key_pos)``; otherwise ``(batch, dim1, ...)``.
    """
    if ndim == 0:
        return ()
    if ndim == 1:
        return ("batch",)
    if ndim == 2:
        return ("batch", "feature")
    if ndim == 3:
        return ("batch", "pos", "feature")
    if ndim == 4 and isinstance(module, _CONV_TYPES):
        return ("batch", "channel", "height", "width")
    if ndim == 4 and ("pattern" in name or "attn_scores" in name):
        return ("batch", "head", "query_pos", "key_pos")
    return ("batch", *(f"dim{i}" for i in range(1, ndim)))
