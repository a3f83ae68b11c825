"""Per-example squared gradient norms ``‖∇θ l_i‖²`` of every parameter, by hooks.

For per-example losses ``l_i`` and a backpropagated loss ``L = s·Σ_i l_i`` (``reduction=
"sum"``) or ``L = s·(1/B)Σ_i l_i`` (``"mean"``), with ``s`` the ``loss_scale`` (gradient
accumulation factor, AMP loss scale), the engine reports, per parameter and per example,

    n_i(θ) = ‖∇θ l_i‖²        (units: loss² / θ-unit²; exact up to rounding)

computed from the layer input ``a`` and ``g = ∂L/∂(output)`` captured by hooks, without
materialising per-example gradients where a closed form exists (the rules and their
references are in :mod:`dynalens.dynamics._rules`; Linear layers use
:func:`dynalens.kernels.ghost_norm.linear_sq_norms`, which picks ghost (Gram) or
materialise per call by the cost rule ``T(d_in + d_out) < d_in d_out``). Alongside, a tensor
hook on each parameter sees the gradient of each backward pass, so the squared norm of the
mini-batch mean gradient ``|G_B|²`` is measured too -- before clipping, and across
gradient-accumulation passes (it uses ``p.grad`` as the running sum of earlier passes, so
gradients must be zeroed at the start of each optimizer step, as usual).

Captures use :class:`dynalens.probe.hooks.HookSet` (forward hooks that register tensor hooks
on the module output), the mechanism the Recorder uses; pass the recorder's ``HookSet`` as
``hooks=`` to share it. A module's norms are computed as soon as its output gradient
arrives when its rule has a closed form, its parameters are its own and it ran once in the
pass (the common case); parameters used by several calls in one pass (tied embeddings,
reused layers) wait for their gradient hooks and are combined exactly by summing
materialised per-example gradients. Scratch tensors of the rules live in one reused
:class:`~dynalens.kernels.ghost_norm.Workspace` per engine.

Modules without a rule are handled by ``policy``: ``"raise"`` (default), ``"warn"`` (skip
them and list them in :attr:`PerExampleGradNorms.skipped_`) or ``"fallback"``
(``torch.func.vmap(grad)`` over a replay of the call that backpropagates the gradient of
every output; see :mod:`dynalens.dynamics._replay` for how the batch axis of each argument
is found and which calls are refused). BatchNorm in training mode couples the examples;
its per-example gradients are undefined and it is refused except under ``"warn"``; in eval
mode it is an affine map with an exact rule.

An embedding called with broadcast ``(1, T)`` indices (GPT-2's and BERT's position
embeddings) hands its consumer an expanded ``(B, T, d)`` view of its output (the values
broadcasting computes anyway; B is the first axis of the first tensor the model is called
with), so its gradient arrives per example and its norms are exact. (An embedding whose
``(1, T)`` output is not broadcast against the batch can be named in ``units=[...]``: it is
then replayed as it was called, without the view, and its parameters are left out when
they have no per-example gradient.)

Example:
    >>> engine = PerExampleGradNorms(model, reduction="mean").attach()
    >>> loss_fn(model(x), y).mean().backward()
    >>> cap = engine.collect()          # cap.per_example["0.weight"]: Tensor[B]
    >>> engine.detach()
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterable
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from dynalens._validation import check_float, check_option
from dynalens.dynamics._module_hooks import batch_hook, expand_hook, forward_hook, missed_message
from dynalens.dynamics._pass_log import PassLog
from dynalens.dynamics._plan import FuncRule, Rule, plan_modules
from dynalens.dynamics._rules import EmbeddingRule
from dynalens.dynamics.grad_capture import CaptureMeans, GradCapture, LazyMeans, resolve_means
from dynalens.errors import (
    HookNotFiredError,
    InvalidInputError,
    InvalidParameterError,
    exit_context,
    listing,
)
from dynalens.kernels.ghost_norm import Workspace
from dynalens.probe.hooks import HookSet

Policy = Literal["raise", "warn", "fallback"]
POLICIES = ("raise", "warn", "fallback")
REDUCTIONS = ("mean", "sum")


class PerExampleGradNorms:
    """Hook engine for per-example squared gradient norms (see the module docstring).

    Args:
        model: the model; every trainable parameter is measured (or reported as skipped).
        reduction: how the backpropagated loss reduces the per-example losses over the
            examples of one backward pass, ``"mean"`` or ``"sum"``.
        loss_scale: extra factor on the backpropagated loss (``1/accumulation_steps``, an
            AMP scale), a float or a callable returning one (read once per pass).
        policy: ``"raise"``, ``"warn"`` or ``"fallback"`` for modules without a rule.
        hooks: a :class:`HookSet` to register into (e.g. the Recorder's); default: own.
        track_batch_grad: also measure ``|G_B|²`` through parameter hooks.
        units: module names to treat as one unit with the ``torch.func`` fallback over
            all their parameters (``nn.MultiheadAttention`` always is).
        capture_examples: False: no per-example norms, only the per-pass and batch
            gradient norms from parameter hooks (then ``batch_size`` = examples per pass).
        batch_size: examples per backward pass, needed when ``capture_examples=False``.

    Attributes (after :meth:`attach`):
        plan_: module name -> rule name. ``skipped_``: parameter names not measured.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        reduction: str = "mean",
        loss_scale: float | Callable[[], float] = 1.0,
        policy: str = "raise",
        hooks: HookSet | None = None,
        track_batch_grad: bool = True,
        units: Iterable[str] = (),
        capture_examples: bool = True,
        batch_size: int | None = None,
    ) -> None:
        self.model = model
        self.reduction = reduction
        self.loss_scale = loss_scale
        self.policy = policy
        self.hooks = hooks
        self.track_batch_grad = track_batch_grad
        self.units = tuple(units)
        self.capture_examples = capture_examples
        self.batch_size = batch_size
        self.active = True
        self._busy = False
        self._warned_bad = False
        self.excluded_: list[str] = []
        self._handles: list[RemovableHandle] = []  # parameter hooks
        self._fwd_handles: list[RemovableHandle] = []
        self._own_hooks: HookSet | None = None
        self._hook_plan: tuple[list[Any], list[Any]] = ([], [])
        self._layouts: dict[tuple, Any] = {}  # record signature -> MeansLayout (or None)
        self._hook_fns: tuple[list[Any], list[Any]] | None = None
        self._log = PassLog()
        self._pass_batch: int | None = None  # examples in the current forward (root input)
        self._attached = False

    # ------------------------------------------------------------------ attach
    def _validate(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise InvalidParameterError(
                f"model must be a torch.nn.Module; got {type(self.model).__name__}."
            )
        check_option("reduction", self.reduction, REDUCTIONS)
        check_option("policy", self.policy, POLICIES)
        if not self.capture_examples:
            from dynalens._validation import check_int

            if self.batch_size is None:
                raise InvalidParameterError(
                    "capture_examples=False needs batch_size= (examples per backward pass): "
                    "without per-example hooks the engine cannot see the batch."
                )
            check_int("batch_size", self.batch_size, min=1)
        if not callable(self.loss_scale):
            check_float("loss_scale", self.loss_scale, min=0.0, min_inclusive=False)
        names = dict(self.model.named_modules())
        for u in self.units:
            if u not in names:
                from dynalens.errors import SiteNotFoundError, close_matches

                raise SiteNotFoundError(
                    f"units: module {u!r} not found{close_matches(u, names)} "
                    f"Modules: {listing(n for n in names if n)}"
                )

    def attach(self) -> PerExampleGradNorms:
        """Validate, choose a rule per module and register the hooks; returns self."""
        self._validate()
        if self._attached:
            raise InvalidParameterError(
                "this engine is already attached; call detach() before attaching again."
            )
        if self.capture_examples:
            plan = plan_modules(self.model, self.units, self.policy)
        else:
            plan = [("", self.model, Rule(), [(n, p) for n, p in self.model.named_parameters()
                                               if p.requires_grad])]  # fmt: skip
        pname = {id(p): n for n, p in self.model.named_parameters()}
        self.plan_ = {mname: rule.name for mname, _, rule, _ in plan}
        workspace = Workspace()  # scratch shared by the rules (they run one at a time)
        for _, _, rule, _ in plan:
            rule.workspace = workspace
        measured = {id(p) for *_, own in plan for _, p in own}
        self.skipped_ = sorted(n for i, n in pname.items() if i not in measured)
        self.param_names_ = [n for i, n in pname.items() if i in measured]
        params = {id(p): p for _, p in self.model.named_parameters()}
        # A module's norms are computed as soon as its output gradient arrives when its rule
        # has a closed form and its parameters are its own (not tied to another module's)
        # and it ran once in the pass; otherwise when its parameters' gradients are
        # complete (sums of per-example gradients over calls), the general path.
        uses: dict[int, int] = {}
        for *_, own in plan:
            for _, p in own:
                uses[id(p)] = uses.get(id(p), 0) + 1
        self._calls = [0] * len(plan)  # forward calls per module in the current pass
        modules = []
        if self.capture_examples:
            for slot, (mname, m, rule, own) in enumerate(plan):
                early = not isinstance(rule, FuncRule) and all(uses[id(p)] == 1 for _, p in own)
                entries = [(local, id(p)) for local, p in own]
                modules.append((mname, m, rule, entries, slot, early))
        ids = [i for i in params if i in measured]
        self._hook_plan = (modules, [(params[i], pname[i], k) for k, i in enumerate(ids)])
        if self.hooks is None:
            self._own_hooks = HookSet()
        self.reset()
        self._attached = True
        self.hooks_on()
        return self

    def hooks_on(self) -> None:
        """Register the hooks (after :meth:`attach`, which calls it; no-op when on)."""
        if self._handles or self._fwd_handles or not self._attached:
            return
        hooks = self.hooks if self.hooks is not None else self._own_hooks
        assert hooks is not None
        modules, params = self._hook_plan
        if self._hook_fns is None:  # made once, registered at every hooks_on
            slot_of: dict[int, int] = {}
            fwd: list[tuple[nn.Module, Any, Any]] = []
            for mname, m, rule, entries, slot, early in modules:
                kw = isinstance(rule, FuncRule) or rule.keywords  # replays read keywords
                if isinstance(rule, EmbeddingRule):  # broadcast (1, T) indices: per example
                    fwd.append((m, expand_hook(self), "view"))
                fwd.append((m, forward_hook(self, rule, entries, slot, early, mname), kw))
                slot_of.update((pid, slot) for _, pid in entries)
            if any(kind == "view" for *_, kind in fwd):
                fwd.insert(0, (self.model, batch_hook(self), "pre"))
            grads = [(p, self._param_hook(p, name, k, slot_of.get(id(p), -1)))
                     for p, name, k in params]  # fmt: skip
            self._hook_fns = (fwd, grads)
        for m, fn, kind in self._hook_fns[0]:
            if kind == "view":
                self._fwd_handles.append(hooks.on_forward_view(m, fn))
            elif kind == "pre":
                self._fwd_handles.append(hooks.on_forward_pre(m, fn))
            else:
                self._fwd_handles.append(hooks.on_forward(m, fn, with_kwargs=bool(kind)))
        for p, hook in self._hook_fns[1]:
            self._handles.append(p.register_hook(hook))

    @property
    def hooks_registered(self) -> bool:
        """Whether the hooks are on (see :meth:`hooks_on`, :meth:`hooks_off`)."""
        return bool(self._fwd_handles or self._handles)

    def hooks_off(self) -> None:
        """Remove the hooks but keep the plan; :meth:`hooks_on` restores them.

        A module with a forward hook takes the slow path of ``nn.Module.__call__`` even
        when the hook returns at once (~1-2 % of a small model's step on a CPU), so a
        live instrument turns its hooks off over runs of steps it does not measure.
        """
        if not self.hooks_registered:
            return
        hooks = self.hooks if self.hooks is not None else self._own_hooks
        while self._fwd_handles:
            handle = self._fwd_handles.pop()
            if hooks is not None:
                hooks.discard(handle)
            else:
                handle.remove()
        while self._handles:
            self._handles.pop().remove()
        for p, *_ in self._hook_plan[1]:
            if p._backward_hooks is not None and not p._backward_hooks:
                # an empty hook dict still costs a Python call per backward (~1 µs per
                # parameter); None removes torch's hook on the tensor altogether
                p._backward_hooks = None

    def detach(self) -> None:
        """Remove every hook this engine added (its own HookSet, and parameter hooks)."""
        self.hooks_off()
        if self._own_hooks is not None:
            self._own_hooks.remove()
            self._own_hooks = None
        self._hook_plan = ([], [])
        self._hook_fns = None
        self._attached = False
        self.reset()

    def __enter__(self) -> PerExampleGradNorms:
        return self if self._attached else self.attach()

    def __exit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        exit_context(self.detach, exc)  # an error raised inside the block comes out on top

    # ------------------------------------------------------------------- hooks
    def _param_hook(
        self, p: nn.Parameter, name: str, k: int, slot: int
    ) -> Callable[[torch.Tensor], None]:
        # Runs inside backward for every parameter, where each torch call costs ~10-20 us
        # and each Python statement ~1 us on a CPU: the row computed by the output hook
        # (or the norms of the pending calls), one dot (two when gradients accumulate) and
        # one record; scaling and conversions happen per block of steps.
        pid = id(p)
        calls = self._calls

        def hook(grad: torch.Tensor) -> None:
            if not self.active:
                return
            log = self._log
            if slot >= 0:
                calls[slot] = 0  # the module's calls of this pass are complete
            sq = log.ready.pop(pid, None)
            if sq is None:
                if not self.capture_examples:
                    B = int(self.batch_size or 1)
                    log.record(k, grad, p.grad, None, B, self._coef(B), self.track_batch_grad)
                    return
                sq = self._pending_sq(log, pid, name, slot)
                if sq is None:
                    return
            B = sq.shape[0]
            log.record(k, grad, p.grad, sq, B, self._coef(B), self.track_batch_grad)

        return hook

    def _pending_sq(self, log: PassLog, pid: int, name: str, slot: int) -> torch.Tensor | None:
        """Norms of a parameter from its pending calls (summing per-example gradients
        over several calls); None (and noted) when no call was captured."""
        calls = log.pending.pop(pid, None)
        if not calls:
            log.missed.add(name)
            view = log.views.get(slot)
            if view is not None:  # was its output (a view) modified in place afterwards?
                mname, ref, version = view
                t = ref()
                log.inplace[name] = (mname, None if t is None else t._version > version)
            return None
        self._busy = True
        try:
            if len(calls) == 1:
                call, local = calls[0]
                return call.sq(local)
            total = calls[0][0].per_example(calls[0][1])
            for call, local in calls[1:]:
                total = total + call.per_example(local)
            return total.flatten(1).pow(2).sum(1)
        finally:
            self._busy = False

    def _coef(self, B: int) -> float:
        """``c``: the pass's gradient is ``c · G_pass`` (G_pass: mean gradient of its B)."""
        s = float(self.loss_scale()) if callable(self.loss_scale) else self.loss_scale
        return s if self.reduction == "mean" else s * B

    # ------------------------------------------------------------------ results
    def reset(self) -> None:
        """Forget what was captured since the last :meth:`collect`."""
        self._log = PassLog()

    def collect_means(self, *, reset: bool = True, lazy: bool = False) -> CaptureMeans | LazyMeans:
        """The per-parameter means the noise-scale statistics need (see :class:`CaptureMeans`).

        Equal to ``CaptureMeans.from_capture(self.collect(), self.param_names_)``; a step
        of one backward pass (the common case) takes a short path: with ``lazy=True`` it
        returns a :class:`LazyMeans` holding the step's tensors, no torch call made, for
        :func:`~dynalens.dynamics.grad_capture.resolve_means` to convert with other steps.
        """
        means: CaptureMeans | LazyMeans | None = None
        if self.capture_examples and self.track_batch_grad and not self.excluded_:
            means = self._log.lazy_means(len(self.param_names_), self._layouts)
        if means is None:
            means = CaptureMeans.from_capture(self.collect(reset=False), self.param_names_)
        elif not lazy:
            block = resolve_means([means])
            assert block.per_example_mean is not None
            P, B = len(self.param_names_), means.n_examples
            means = CaptureMeans(
                block.per_example_mean[0], block.batch_grad_sq[0], np.full(P, float(B)),
                block.pass_grad_sq_mean[0], [B], B,
            )  # fmt: skip
        if reset:
            self.reset()
        return means

    def collect(self, *, reset: bool = True) -> GradCapture:
        """The per-example norms and ``|G_B|²`` of the passes since the last collect."""
        if self._log.missed:
            raise HookNotFiredError(missed_message(self._log.missed, self._log.inplace))
        cap = GradCapture()
        by_name = self._log.by_name(self.param_names_)
        lengths = {n: sum(rec.batch for _, rec in v) for n, v in by_name.items()}
        if lengths:
            N = max(lengths.values())
            bad = {n: k for n, k in lengths.items() if k != N}
            if bad and self.policy == "raise":
                raise InvalidInputError(
                    f"some parameters saw fewer examples than the others "
                    f"({listing(f'{n}: {k} of {N}' for n, k in bad.items())}): they were "
                    "unused in some backward passes, or their module ran on a batch that is "
                    "broadcast later (e.g. a custom module called on a (1, d) tensor), so "
                    "their per-example gradients cannot be recovered from the module "
                    "output. Use policy='warn' to leave them out of every statistic, or "
                    "collect() after each pass."
                )
            if bad and not self._warned_bad:
                warnings.warn(
                    f"per-example gradient norms leave out {listing(bad)}: they saw fewer "
                    f"examples than the other parameters (broadcast batch or unused in some "
                    "passes); they count as zero in every statistic.",
                    stacklevel=2,
                )
                self._warned_bad = True
            self.excluded_ = sorted(set(self.excluded_) | set(bad))
            cap.n_examples = N
        self._log.fill_capture(
            cap, by_name, self.param_names_, set(self.excluded_), self.track_batch_grad
        )
        if reset:
            self.reset()
        return cap


def per_example_sq_norms(
    model: nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor],
    inputs: Any,
    targets: Any,
    *,
    policy: str = "raise",
) -> dict[str, torch.Tensor]:
    """``{param name: [B] ‖∇θ l_i‖²}`` for one batch; ``.grad`` is left untouched.

    ``loss_fn(outputs, targets)`` returns the ``[B]`` per-example losses.
    """
    engine = PerExampleGradNorms(model, reduction="sum", policy=policy, track_batch_grad=False)
    with engine:
        losses = loss_fn(model(inputs), targets)
        check_losses(losses, None)
        params = [p for p in model.parameters() if p.requires_grad]
        torch.autograd.grad(losses.sum(), params, allow_unused=True)
        return engine.collect().per_example


def check_losses(losses: Any, batch: int | None) -> None:
    """The loss function returned ``[B]`` per-example losses."""
    if not isinstance(losses, torch.Tensor) or losses.ndim != 1:
        shape = tuple(losses.shape) if isinstance(losses, torch.Tensor) else type(losses).__name__
        raise InvalidInputError(
            f"loss_fn must return per-example losses of shape [B]; got {shape}. Use "
            "reduction='none' (e.g. F.cross_entropy(out, y, reduction='none')) and sum any "
            "per-token axes per example."
        )
    if batch is not None and losses.shape[0] != batch:
        raise InvalidInputError(
            f"loss_fn returned {losses.shape[0]} losses for a batch of {batch} examples; "
            "return one loss per example."
        )
