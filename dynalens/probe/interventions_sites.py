"""Where an intervention reads and writes: site access and the backends that provide it.

A *site access* hands a site's activation to an edit function in declared axes and puts
the edited tensor back into the forward pass. Three kinds cover every backend:

- :class:`OutputAccess`: the output of a module or hook point (the first tensor of a tuple
  output). On transformer-lens bridges a hook point may carry a ``hook_conversion`` (its
  raw tensor is ``[batch, pos, head*d_head]`` while users see ``[batch, pos, head,
  d_head]``); the access converts before the edit and reverts after, like
  ``HookPoint.add_hook`` does.
- :class:`InputAccess`: the first input of a module, optionally split into heads. Per-head
  outputs of Hugging Face attention (no head hook points) are reached here: the input of
  the output projection (``c_proj`` of GPT-2, ``o_proj`` of Llama) is the concatenation of
  the heads' values ``z``, so ``[batch, pos, head*d_head]`` is viewed as ``[batch, pos, head,
  d_head]``. ``out = Σ_h z_h W_O^h`` (Vaswani et al. 2017, eq. multi-head), which is what
  transformer-lens calls ``hook_z``.
- :class:`SliceOutputAccess`: a slice of a module's last axis split into heads (GPT-2's
  fused ``c_attn`` holds q, k and v side by side).
- :class:`ResidMidAccess`: the residual stream between attention and MLP of a Hugging Face
  block, which no module outputs: the edit of ``resid_mid = resid_pre + attn_out`` is
  written back as a change of ``attn_out`` (an exact no-op where nothing was edited).

Backends (:func:`detect_backend`) are feature-detected; each resolves transformer-lens
names (``blocks.{layer}.hook_resid_pre``, ``blocks.{layer}.attn.hook_z``, ...) so that a
sweep reads the same on every model, and every module path stays a site. The Hugging
Face backend lives in :mod:`dynalens.probe.interventions_hf`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dynalens.errors import CapabilityError, InvalidParameterError, SiteNotFoundError
from dynalens.probe.hooks import HookSet, first_tensor
from dynalens.probe.sites import candidate_modules, default_axes, resolve_sites

Edit = Callable[[torch.Tensor], torch.Tensor]

RESID = ("batch", "pos", "d_model")
HEAD_VECTOR = ("batch", "pos", "head", "d_head")
PATTERN = ("batch", "head", "query_pos", "key_pos")

#: component -> transformer-lens hook name template (``{layer}`` filled in)
COMPONENT_SITES = {
    "resid_pre": "blocks.{layer}.hook_resid_pre",
    "resid_mid": "blocks.{layer}.hook_resid_mid",
    "resid_post": "blocks.{layer}.hook_resid_post",
    "attn_out": "blocks.{layer}.hook_attn_out",
    "mlp_out": "blocks.{layer}.hook_mlp_out",
    "head_out": "blocks.{layer}.attn.hook_z",
    "q": "blocks.{layer}.attn.hook_q",
    "k": "blocks.{layer}.attn.hook_k",
    "v": "blocks.{layer}.attn.hook_v",
    "pattern": "blocks.{layer}.attn.hook_pattern",
}


class EditingHooks(HookSet):
    """A :class:`HookSet` that may also change what a module computes: the hooks of
    interventions. Removal is the same: exactly what was added, also on exceptions."""

    def on_forward_replace(
        self, module: nn.Module, fn: Callable[[nn.Module, tuple[Any, ...], Any], Any]
    ) -> RemovableHandle:
        """A forward hook whose return value (when not ``None``) replaces the output."""
        return self.adopt(module.register_forward_hook(fn))

    def on_forward_pre_replace(
        self,
        module: nn.Module,
        fn: Callable[[nn.Module, tuple[Any, ...], dict[str, Any]], Any],
    ) -> RemovableHandle:
        """A forward pre-hook with kwargs; a returned ``(args, kwargs)`` replaces the inputs."""
        return self.adopt(module.register_forward_pre_hook(fn, with_kwargs=True))


def axes_for_name(name: str, ndim: int, module: nn.Module | None = None) -> tuple[str, ...]:
    """Declared axes of a site from its transformer-lens name, else :func:`default_axes`."""
    last = name.rsplit(".", 1)[-1]
    if last in {"hook_q", "hook_k", "hook_v", "hook_z", "hook_result"} and ndim == 4:
        return HEAD_VECTOR
    if last in {"hook_pattern", "hook_attn_scores"} and ndim == 4:
        return PATTERN
    if last.startswith("hook_resid") or last in {"hook_attn_out", "hook_mlp_out"}:
        if ndim == 3:
            return RESID
    return default_axes(module if module is not None else nn.Identity(), ndim, name)


class SiteAccess(Protocol):
    """Reads and writes one site; ``attach`` registers hooks in ``hooks``."""

    name: str

    def attach(self, hooks: EditingHooks, edit: Edit) -> None: ...

    def axes(self, ndim: int) -> tuple[str, ...]: ...


def _replace_first_tensor(value: Any, new: torch.Tensor) -> Any:
    """``value`` with its first tensor (as :func:`first_tensor` finds it) replaced."""
    if isinstance(value, torch.Tensor):
        return new
    if isinstance(value, tuple) and value:
        return (_replace_first_tensor(value[0], new), *value[1:])
    if isinstance(value, list) and value:
        return [_replace_first_tensor(value[0], new), *value[1:]]
    raise CapabilityError(
        f"cannot write into a module output of type {type(value).__name__}; "
        "intervene on a submodule that returns a tensor or a tuple instead."
    )


@dataclass
class OutputAccess:
    """The output of ``module`` (converted by its ``hook_conversion`` if it has one)."""

    name: str
    module: nn.Module

    def axes(self, ndim: int) -> tuple[str, ...]:
        return axes_for_name(self.name, ndim, self.module)

    def attach(self, hooks: EditingHooks, edit: Edit) -> None:
        conversion = getattr(self.module, "hook_conversion", None)

        def hook(mod: nn.Module, args: tuple[Any, ...], output: Any) -> Any:
            raw = first_tensor(output)
            if raw is None:
                raise CapabilityError(
                    f"site {self.name!r} returned no tensor; choose a module that does."
                )
            act = conversion.convert(raw) if conversion is not None else raw
            new = edit(act)
            if new is act:
                return None
            return _replace_first_tensor(
                output, conversion.revert(new) if conversion is not None else new
            )

        hooks.on_forward_replace(self.module, hook)


@dataclass
class InputAccess:
    """The first input of ``module``; ``n_heads`` splits its last axis into heads."""

    name: str
    module: nn.Module
    n_heads: int | None = None

    def axes(self, ndim: int) -> tuple[str, ...]:
        return HEAD_VECTOR if self.n_heads else axes_for_name(self.name, ndim, self.module)

    def attach(self, hooks: EditingHooks, edit: Edit) -> None:
        def pre_hook(
            mod: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
        ) -> tuple[tuple[Any, ...], dict[str, Any]] | None:
            key = None
            if args:
                raw = args[0]
            else:
                key = "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))
                raw = kwargs[key]
            act = raw.unflatten(-1, (self.n_heads, -1)) if self.n_heads else raw
            new = edit(act)
            if new is act:
                return None
            back = new.flatten(-2) if self.n_heads else new
            if key is None:
                return (back, *args[1:]), kwargs
            return args, {**kwargs, key: back}

        hooks.on_forward_pre_replace(self.module, pre_hook)


@dataclass
class SliceOutputAccess:
    """Columns ``[start, stop)`` of ``module``'s output, split into ``n_heads`` heads."""

    name: str
    module: nn.Module
    start: int
    stop: int
    n_heads: int

    def axes(self, ndim: int) -> tuple[str, ...]:
        return HEAD_VECTOR

    def attach(self, hooks: EditingHooks, edit: Edit) -> None:
        def hook(mod: nn.Module, args: tuple[Any, ...], output: torch.Tensor) -> Any:
            act = output[..., self.start : self.stop].unflatten(-1, (self.n_heads, -1))
            new = edit(act)
            if new is act:
                return None
            out = output.clone()
            out[..., self.start : self.stop] = new.flatten(-2)
            return out

        hooks.on_forward_replace(self.module, hook)


@dataclass
class ResidMidAccess:
    """``resid_mid = resid_pre + attn_out``, which no module outputs (Hugging Face
    blocks; transformer-lens bridges, whose ``hook_resid_mid`` is an alias of
    ``ln2.hook_in``, the LayerNorm's input: writing there leaves the residual skip
    unchanged). The edit is written back as ``attn_out + (edit(mid) - mid)``, an exact
    no-op on entries the edit left alone."""

    name: str
    resid_pre: SiteAccess
    attn_out: SiteAccess

    def axes(self, ndim: int) -> tuple[str, ...]:
        return RESID

    def attach(self, hooks: EditingHooks, edit: Edit) -> None:
        seen: dict[str, torch.Tensor] = {}

        def keep(act: torch.Tensor) -> torch.Tensor:
            seen["resid_pre"] = act
            return act

        def through_attn_out(attn_out: torch.Tensor) -> torch.Tensor:
            mid = seen.pop("resid_pre") + attn_out
            new = edit(mid)
            return attn_out if new is mid else attn_out + (new - mid)

        self.resid_pre.attach(hooks, keep)
        self.attn_out.attach(hooks, through_attn_out)


class Backend:
    """Resolves site names to accesses; subclasses add transformer-lens component names.

    Attributes:
        kind: ``"transformer-lens"``, ``"hf-gpt2"``, ``"hf-llama"`` or ``"module"``.
        n_layers, n_heads, n_kv_heads: ``None`` where the model does not say.
    """

    kind = "module"

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.n_layers: int | None = None
        self.n_heads: int | None = None
        self.n_kv_heads: int | None = None
        self._modules = candidate_modules(model)

    def virtual_sites(self) -> dict[str, SiteAccess]:
        """Named sites that are no module (per-head splits, HF residual points)."""
        return {}

    def site_names(self) -> list[str]:
        return [*self.virtual_sites(), *self._modules]

    def blocks(self) -> list[nn.Module] | None:
        """The transformer blocks in forward order (``None`` where the model does not say);
        the batched patching engine replays the unchanged prefix through them."""
        if self.n_layers is None:
            return None
        found = [self._modules.get(f"blocks.{i}") for i in range(self.n_layers)]
        return None if any(b is None for b in found) else found  # type: ignore[return-value]

    def forward_kwargs(self) -> dict[str, Any]:
        """Keyword arguments of every forward the engines run (none for plain modules)."""
        return {}

    def keys_values(self, output: Any) -> list[tuple[torch.Tensor, torch.Tensor]] | None:
        """Per-layer attention keys and values ``[batch, head, pos, d_head]`` of a causal
        model's forward run with :meth:`cache_forward_kwargs` (``None``: not supported)."""
        return None

    def cache_forward_kwargs(self) -> dict[str, Any] | None:
        """Forward kwargs that make the output carry its keys and values (``None``: the
        backend cannot continue a run from cached keys and values)."""
        return None

    def continue_kwargs(
        self, kv: list[tuple[torch.Tensor, torch.Tensor]], rows: torch.Tensor, upto: int
    ) -> dict[str, Any]:
        """Forward kwargs that continue rows ``rows`` of a cached run after ``upto``
        positions: the model is then fed positions ``upto..`` only."""
        raise CapabilityError(f"the {self.kind} backend cannot continue a cached run.")

    def access(self, name: str) -> SiteAccess:
        """The access of one site, by exact name (globs belong to :func:`resolve_sites`).

        Raises:
            SiteNotFoundError: no such site, with close matches.
        """
        virtual = self.virtual_sites()
        if name in virtual:
            return virtual[name]
        if name in self._modules:
            return OutputAccess(name, self._modules[name])
        resolve_sites(self.model, name)  # raises with close matches and a listing
        raise SiteNotFoundError(f"site {name!r} is a glob; name one site.")  # pragma: no cover

    def component_site(self, component: str, layer: int) -> str:
        """The site of a sweep component at a layer (transformer-lens names)."""
        if component not in COMPONENT_SITES:
            raise InvalidParameterError(
                f"unknown component {component!r}; expected one of {sorted(COMPONENT_SITES)}."
            )
        if self.n_layers is None:
            raise CapabilityError(
                f"a plain {type(self.model).__name__} has no layers or components; pass "
                "sites=[...] (module paths) to the sweep instead of components, or use a "
                "transformer-lens model, a Hugging Face GPT-2 / Llama model or "
                "dynalens.circuits.ReferenceTransformer."
            )
        if not 0 <= layer < self.n_layers:
            raise InvalidParameterError(
                f"layer {layer} is out of range; the model has {self.n_layers} layers "
                f"(0..{self.n_layers - 1})."
            )
        name = COMPONENT_SITES[component].format(layer=layer)
        if name not in self.virtual_sites() and name not in self._modules:
            raise CapabilityError(
                f"the {self.kind} backend has no site {name!r} for component {component!r}"
                f"{self._instead(component)}"
            )
        return name

    def heads_of(self, component: str) -> int:
        """Number of heads a per-head component has (key/value heads under GQA)."""
        n = self.n_kv_heads if component in {"k", "v"} and self.n_kv_heads else self.n_heads
        if n is None:
            raise CapabilityError(f"the {self.kind} backend does not know its number of heads.")
        return n

    def _instead(self, component: str) -> str:
        if component == "mlp_out":
            return " (an attention-only model has no MLP); drop 'mlp_out' from components."
        return "; use a transformer-lens model for it."


class TransformerLensBackend(Backend):
    """Hook points named like transformer-lens (bridges, ``HookedRootModule`` models and
    :class:`~dynalens.circuits.ReferenceTransformer`); ``cfg`` gives the sizes."""

    kind = "transformer-lens"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model)
        cfg: Any = model.cfg
        self.n_layers = int(cfg.n_layers)
        self.n_heads = int(cfg.n_heads)
        kv = getattr(cfg, "n_key_value_heads", None)
        self.n_kv_heads = int(kv) if kv else None
        self._virtual: dict[str, SiteAccess] = {}
        for layer in range(self.n_layers):
            name, ln_in = f"blocks.{layer}.hook_resid_mid", f"blocks.{layer}.ln2.hook_in"
            pre, attn_out = f"blocks.{layer}.hook_resid_pre", f"blocks.{layer}.hook_attn_out"
            aliased = name in self._modules and self._modules[name] is self._modules.get(ln_in)
            if aliased and pre in self._modules and attn_out in self._modules:
                self._virtual[name] = ResidMidAccess(
                    name,
                    OutputAccess(pre, self._modules[pre]),
                    OutputAccess(attn_out, self._modules[attn_out]),
                )

    def virtual_sites(self) -> dict[str, SiteAccess]:
        return self._virtual


def detect_backend(model: nn.Module) -> Backend:
    """The backend of ``model``, by feature: transformer-lens names with a ``cfg`` first,
    then Hugging Face GPT-2 / Llama layouts, else module paths only."""
    if not isinstance(model, nn.Module):
        raise InvalidParameterError(f"model must be a torch.nn.Module; got {type(model).__name__}.")
    modules = candidate_modules(model)
    cfg = getattr(model, "cfg", None)
    if "blocks.0.hook_resid_pre" in modules and cfg is not None and hasattr(cfg, "n_layers"):
        return TransformerLensBackend(model)
    config = getattr(model, "config", None)
    if config is not None and hasattr(config, "num_hidden_layers"):
        if "transformer.h.0.attn.c_proj" in modules or "model.layers.0.self_attn.o_proj" in modules:
            from dynalens.probe.interventions_hf import HuggingFaceBackend  # imports this module

            return HuggingFaceBackend(model)
    return Backend(model)
