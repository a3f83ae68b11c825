"""Sites: the named places of a model whose tensors are recorded.

A site's name mirrors its module path (``layers.2``, ``encoder.block.0.mlp``); on
transformer-lens models every hook point of ``model.hook_dict`` is a site too
(``blocks.0.hook_resid_post``), aliases included. Sites are chosen by exact name, glob
(``layers.*``) or module type (``nn.Linear``), and each declares its axes, which
downstream code reads instead of guessing from names.

Globs match module paths the way file globs match paths, with ``.`` as the separator:
``*`` matches within one name level (``layers.*`` matches ``layers.0`` but not
``layers.0.mlp``), ``**`` as a whole level matches any number of levels
(``layers.**`` every module below ``layers``; ``**.mlp`` every ``mlp``), ``?`` one
character and ``[...]`` a character class, both within a level.
"""

from __future__ import annotations

import re
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


def _level_regex(level: str) -> str:
    """One name level of a glob: ``*``, ``?`` and ``[...]`` never cross a ``.``."""
    out, i = [], 0
    while i < len(level):
        ch = level[i]
        close = level.find("]", i + 2) if ch == "[" else -1
        if ch == "*":
            out.append("[^.]*")
        elif ch == "?":
            out.append("[^.]")
        elif close > 0:  # a character class [abc], [0-9] or [!abc]
            body = level[i + 1 : close]
            negate = body.startswith("!")
            body = re.escape(body[1:] if negate else body).replace("\\-", "-")
            out.append(f"[^.{body}]" if negate else f"[{body}]")
            i = close
        else:
            out.append(re.escape(ch))
        i += 1
    return "".join(out)


def glob_regex(pattern: str) -> re.Pattern[str]:
    """The regular expression of a site glob (see the module docstring)."""
    levels = pattern.split(".")
    out = []
    for i, level in enumerate(levels):
        first, last = i == 0, i == len(levels) - 1
        if level == "**":
            out.append(
                r"[^.]+(?:\.[^.]+)*"
                if first and last
                else r"(?:[^.]+\.)*"
                if first
                else r"(?:\.[^.]+)+"
                if last
                else r"(?:\.[^.]+)*"
            )
            continue
        if not first and not (levels[i - 1] == "**" and i - 1 == 0):
            out.append(r"\.")
        out.append(_level_regex(level))
    return re.compile("".join(out) + r"\Z")


def is_glob(name: str) -> bool:
    return any(ch in name for ch in "*?[")


def resolve_sites(
    model: nn.Module, spec: SiteSpec, matched: dict[str, list[str]] | None = None
) -> dict[str, Site]:
    """Turn a site spec into ``{name: Site}`` in model order.

    ``matched``, when given, receives ``{pattern: [site names]}`` for every glob and
    module type of the spec (what each one selected).

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
            if is_glob(item):
                regex = glob_regex(item)
                hits = {n: m for n, m in modules.items() if regex.match(n)}
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
        if matched is not None and (not isinstance(item, str) or is_glob(item)):
            key = item if isinstance(item, str) else f"type {item.__name__}"
            matched[key] = list(hits)
    order = {name: i for i, name in enumerate(modules)}
    return {
        name: Site(name, mod) for name, mod in sorted(chosen.items(), key=lambda kv: order[kv[0]])
    }


def default_axes(module: nn.Module, ndim: int, name: str = "") -> tuple[str, ...]:
    """Axes of an output with ``ndim`` dimensions.

    2-D ``(batch, feature)``; 3-D ``(batch, pos, feature)`` (sequence models, transformer
    hook points), ``(pos, batch, feature)`` for modules with ``batch_first=False``
    (``nn.LSTM``, ``nn.MultiheadAttention``, ...); 4-D convolutional
    ``(batch, channel, height, width)``; 4-D attention patterns
    ``(batch, head, query_pos, key_pos)``; otherwise ``(batch, dim1, ...)``.
    """
    if ndim == 0:
        return ()
    if ndim == 1:
        return ("batch",)
    if ndim == 2:
        return ("batch", "feature")
    if ndim == 3:
        if getattr(module, "batch_first", None) is False:  # RNNs, attention: (T, B, F)
            return ("pos", "batch", "feature")
        return ("batch", "pos", "feature")
    if ndim == 4 and isinstance(module, _CONV_TYPES):
        return ("batch", "channel", "height", "width")
    if ndim == 4 and ("pattern" in name or "attn_scores" in name):
        return ("batch", "head", "query_pos", "key_pos")
    return ("batch", *(f"dim{i}" for i in range(1, ndim)))
