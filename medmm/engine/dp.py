"""DP-SGD inside the one engine, with opacus' per-sample gradients, optimizer and accountants.

What the engine gets from :func:`private_training` (``engine.privacy.enabled=true``):

* the model made DP-compatible by opacus' own fixers (BatchNorm -> GroupNorm, GRU / LSTM /
  MultiheadAttention -> opacus' DP layers), in place, so the run's model object, its checkpoints
  and ``medmm predict`` (which calls :func:`prepare_model`) all agree on the architecture;
* Poisson sampling: each optimizer step's logical batch takes every training example
  independently with probability ``q = 1 / ceil(n / (batch_size * grad_accum))``, drawn from
  (seed, epoch) only, so a resumed run draws the same batches; the logical batch is cut into
  ``grad_accum`` micro-batches;
* opacus' ``GradSampleModule`` (per-example gradients) and ``DPOptimizer`` (per-example
  clipping to ``max_grad_norm``, Gaussian noise ``sigma * max_grad_norm`` once per logical batch,
  average over the expected batch size ``n * q``) -- an empty Poisson batch still takes its noise
  step, as the analysis assumes;
* ``sigma`` calibrated by opacus' ``get_noise_multiplier`` for ``target_epsilon`` and ``delta``
  over the configured steps, and an RDP or PRV accountant fed every noisy step; its state is in
  the ``last`` checkpoint, so a resumed run reports the ε of an uninterrupted one.

The guarantee is per training *example* (row, image, text window): a patient contributing
``k`` examples is protected at group level (roughly ``k * ε``); the log says when ``k > 1``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import warnings
from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from medmm.errors import MedmmError, PrivacyError

if TYPE_CHECKING:
    import torch

log = logging.getLogger("medmm")

ACCOUNTANTS = ("rdp", "prv")
DEFAULTS: dict[str, Any] = {"enabled": False, "target_epsilon": 3.0, "delta": None, "max_grad_norm": 1.0,
                            "accountant": "rdp", "audit": False}
EXTRA = "pip install 'medmm[privacy]'"


def settings(engine: dict[str, Any]) -> dict[str, Any]:
    """``engine.privacy`` with defaults filled in (third-party configs may lack the section)."""
    return {**DEFAULTS, **(engine.get("privacy") or {})}


def enabled(engine: dict[str, Any]) -> bool:
    return bool(settings(engine)["enabled"])


def _opacus() -> Any:
    try:
        import opacus
    except ImportError:
        raise MedmmError(f"engine.privacy needs opacus: {EXTRA}") from None
    return opacus


# ---------------------------------------------------------------------------- the model
def prepare_model(model: torch.nn.Module, cfg: dict[str, Any]) -> torch.nn.Module:
    """Make ``model`` DP-compatible in place when ``engine.privacy.enabled`` (else unchanged).

    Uses opacus' registered fixers (the ones ``ModuleValidator.fix`` runs), applied in place.
    Every BatchNorm is replaced, trainable or not: batch statistics mix examples. Idempotent.
    """
    if not enabled(cfg.get("engine", {})):
        return model
    _opacus()
    import torch.nn as nn
    from opacus.validators import ModuleValidator

    replaced: list[str] = []
    for name, module in list(model.named_modules()):
        fixer = ModuleValidator.FIXERS.get(type(module))
        is_bn = isinstance(module, nn.modules.batchnorm._BatchNorm)
        if is_bn and fixer is None:  # a subclass, e.g. timm's BatchNormAct2d (norm + drop + activation)
            fixer = _norm_act_to_group_norm
        trainable = any(p.requires_grad for p in module.parameters(recurse=False))
        if fixer is None or not (trainable or is_bn) or not name:
            continue
        new = fixer(module)
        params = list(module.parameters()) or list(module.buffers())
        if params:
            new.to(params[0].device)
        if is_bn:
            new.requires_grad_(trainable)
        parent = model.get_submodule(name.rpartition(".")[0]) if "." in name else model
        setattr(parent, name.rpartition(".")[2], new)
        replaced.append(f"{name} ({type(module).__name__} -> {type(new).__name__})")
    for name, module in model.named_modules():  # Hugging Face encoders: position ids are one [1, L] buffer
        if name.endswith("position_embeddings") and isinstance(module, nn.Embedding) and module.weight.requires_grad:
            module.weight.requires_grad_(False)
            _note(model, f"froze {name}: its input (position ids) is shared by the whole batch, so it has no "
                         f"per-example gradient; the pretrained position embeddings are kept")
    if replaced:
        kinds = Counter(r.split("(", 1)[1].rstrip(")") for r in replaced)
        bn = any("BatchNorm" in k for k in kinds)
        msg = ("opacus replaced layers for per-example gradients: " + ", ".join(f"{n} x {k}" for k, n in kinds.items())
               + ("; this changes the network: BatchNorm's pretrained statistics and affine weights are dropped, "
                  "GroupNorm starts from scratch" if bn else " (weights copied)"))
        _note(model, msg)
    return model


def _note(model: torch.nn.Module, msg: str) -> None:
    """Log ``msg`` and keep it on the model for the model card."""
    log.warning("engine.privacy: %s", msg)
    notes = getattr(model, "_medmm_privacy_notes", [])
    if msg not in notes:
        notes.append(msg)
    model._medmm_privacy_notes = notes  # type: ignore[attr-defined]


def _norm_act_to_group_norm(module: torch.nn.Module) -> torch.nn.Module:
    """GroupNorm (opacus' group count) followed by the BatchNorm subclass's own drop / act modules."""
    import torch.nn as nn

    class GroupNormAct(nn.GroupNorm):
        """GroupNorm, then the replaced layer's dropout and activation (per-example grads via functorch)."""

        def __init__(self, groups: int, channels: int, eps: float, affine: bool, drop: nn.Module,
                     act: nn.Module) -> None:
            super().__init__(groups, channels, eps=eps, affine=affine)
            self.drop, self.act = drop, act

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.drop(super().forward(x)))

    return GroupNormAct(math.gcd(32, module.num_features), module.num_features, module.eps, module.affine,
                        getattr(module, "drop", None) or nn.Identity(), getattr(module, "act", None) or nn.Identity())


def check_model(model: torch.nn.Module) -> None:
    """One-line error naming the first layer opacus cannot train privately (after fixing)."""
    from opacus.grad_sample import GradSampleModule
    from opacus.validators import ModuleValidator

    import torch.nn as nn

    for name, module in model.named_modules():
        label = f"layer {name or '<root>'} ({type(module).__name__})"
        if isinstance(module, nn.TransformerEncoderLayer) and any(p.requires_grad for p in module.parameters()):
            raise PrivacyError(f"engine.privacy: {label} is not supported: torch's transformer layers pass float "
                               f"attention masks that opacus' DPMultiheadAttention rejects; freeze it or use a head "
                               f"without it (fusion: model.head=concat or gated)")
        own = [n for n, p in module.named_parameters(recurse=False) if p.requires_grad]
        if not own:
            continue
        if type(module) not in GradSampleModule.GRAD_SAMPLERS and any(
                any(True for _ in child.parameters()) for child in module.children()):
            raise PrivacyError(f"engine.privacy: {label} owns trainable parameters ({', '.join(own[:3])}) next to "
                               f"its sub-layers; opacus computes per-example gradients layer by layer and cannot "
                               f"for this one: freeze them or move them into a layer of their own")
        validator = ModuleValidator.VALIDATORS.get(type(module))
        errors = validator(module) if validator else []
        if errors:
            raise PrivacyError(f"engine.privacy: layer {name or '<root>'} ({type(module).__name__}) is not supported "
                               f"by opacus and has no fix: {str(errors[0]).splitlines()[0]}")
        own_buffers = [b for b, _ in module.named_buffers(recurse=False)]
        if type(module) not in GradSampleModule.GRAD_SAMPLERS and own_buffers:
            raise PrivacyError(f"engine.privacy: layer {name or '<root>'} ({type(module).__name__}) has trainable "
                               f"weights and buffers ({', '.join(own_buffers[:3])}) and no opacus fix; freeze it or "
                               f"use a supported layer")
        if type(module) not in GradSampleModule.GRAD_SAMPLERS and isinstance(module, _unsupported()):
            raise PrivacyError(f"engine.privacy: layer {name or '<root>'} ({type(module).__name__}) has no per-example "
                               f"gradient in opacus; freeze it or use a supported layer (GRU, LSTM, Linear, Conv, ...)")


def _unsupported() -> tuple[type, ...]:
    import torch.nn as nn

    return (nn.RNN, nn.RNNCell, nn.GRUCell, nn.LSTMCell)  # neither an opacus grad sampler nor a fixer


# ---------------------------------------------------------------------------- the engine side
class PrivateTraining:
    """Everything the engine needs for DP-SGD; built by :func:`private_training`."""

    def __init__(self, *, n: int, batch: int, steps: int, epsilon: float, delta: float, max_grad_norm: float,
                 accountant: str, examples_per_unit: int = 1, noise_multiplier: float | None = None) -> None:
        from opacus.accountants import create_accountant

        self.n = n
        self.steps_per_epoch = max(1, math.ceil(n / batch))
        self.sample_rate = 1.0 / self.steps_per_epoch
        self.expected_batch = n * self.sample_rate
        self.total_steps, self.target_epsilon, self.delta = steps, epsilon, delta
        self.max_grad_norm, self.accountant_name = max_grad_norm, accountant
        self.examples_per_unit = examples_per_unit
        numbers = (f"target ε={epsilon:g}, δ={delta:.3g}, n_train={n}, expected batch {self.expected_batch:.1f} "
                   f"(sample rate {self.sample_rate:.4g}), {steps} steps")
        try:
            sigma = noise_multiplier if noise_multiplier is not None else \
                calibrate(epsilon, delta, self.sample_rate, steps, accountant)
        except ValueError:
            raise PrivacyError(f"engine.privacy: {numbers} cannot reach the target ε (opacus finds no noise multiplier "
                               f"up to 1e6); use fewer epochs or steps, a larger batch or a larger ε") from None
        if sigma > self.expected_batch:
            raise PrivacyError(
                f"engine.privacy: {numbers} cannot reach the target ε with a usable gradient: it needs noise "
                f"multiplier {sigma:.3g} > expected batch {self.expected_batch:.1f}, so the noise on each coordinate of "
                f"the mean gradient exceeds the largest clipped gradient; use fewer epochs, a larger batch "
                f"(engine.batch_size / engine.grad_accum), more data or a larger ε")
        self.noise_multiplier = float(sigma)
        self.accountant = create_accountant(mechanism=accountant)
        self.steps_taken = 0
        self.notes: list[str] = []
        self._eps: tuple[int, float] | None = None
        self.param_names: dict[str, Any] = {}
        self._rdp_step: Any = None

    # -- sampling
    def plan(self, n: int, seed: int, epoch: int, accum: int) -> list[list[int]]:
        """Poisson logical batches for one epoch, each cut into ``accum`` micro-batches (some may be empty)."""
        import torch

        from medmm.engine.sampling import epoch_generator

        g = epoch_generator(seed + 7919, epoch)
        out: list[list[int]] = []
        for _ in range(self.steps_per_epoch):
            chosen = torch.nonzero(torch.rand(n, generator=g) < self.sample_rate).flatten().numpy()
            out.extend(part.tolist() for part in np.array_split(chosen, accum))
        return out

    # -- wrapping
    def wrap_model(self, model: torch.nn.Module) -> torch.nn.Module:
        """opacus' per-example gradient hooks on ``model`` (the wrapper forwards attributes)."""
        self.param_names = dict(model.named_parameters())
        return _grad_sample_module(model)

    def wrap_optimizer(self, optimizer: Any) -> Any:
        return _engine_dp_optimizer(optimizer, self)

    def on_step(self) -> None:
        self.accountant.step(noise_multiplier=self.noise_multiplier, sample_rate=self.sample_rate)
        self.steps_taken += 1

    # -- reporting and checkpoints
    def epsilon(self) -> float:
        """ε spent so far (the accountant's figure; RDP: its formula with the per-step RDP cached)."""
        if self.steps_taken == 0:
            return 0.0
        if self._eps is not None and self._eps[0] == self.steps_taken:
            return self._eps[1]
        history = self.accountant.history
        with _quiet_rdp():
            if self.accountant_name == "rdp" and len(history) == 1 and history[0][:2] == (
                    self.noise_multiplier, self.sample_rate):
                # RDP composes linearly in steps: compute the per-step curve once (the slow part:
                # ~1 s of Python per call), then get_privacy_spent as RDPAccountant.get_epsilon does
                from opacus.accountants.analysis import rdp as analysis
                from opacus.accountants.rdp import RDPAccountant

                orders = RDPAccountant.DEFAULT_ALPHAS
                if self._rdp_step is None:
                    self._rdp_step = analysis.compute_rdp(q=self.sample_rate, noise_multiplier=self.noise_multiplier,
                                                          steps=1, orders=orders)
                eps = float(analysis.get_privacy_spent(orders=orders, rdp=self._rdp_step * history[0][2],
                                                       delta=self.delta)[0])
            else:
                eps = float(self.accountant.get_epsilon(delta=self.delta))
        self._eps = (self.steps_taken, eps)
        return eps

    def metrics(self) -> dict[str, float]:
        """The privacy spent so far, for ``metrics.jsonl``."""
        return {"epsilon": self.epsilon(), "delta": self.delta, "noise_multiplier": self.noise_multiplier,
                "dp_max_grad_norm": self.max_grad_norm}

    def summary(self) -> dict[str, Any]:
        return {**self.metrics(), "target_epsilon": self.target_epsilon, "accountant": self.accountant_name,
                "sample_rate": self.sample_rate, "expected_batch": self.expected_batch, "steps": self.steps_taken,
                "planned_steps": self.total_steps, "n_train": self.n, "examples_per_unit": self.examples_per_unit,
                "notes": list(self.notes)}

    def state_dict(self) -> dict[str, Any]:
        return {"noise_multiplier": self.noise_multiplier, "sample_rate": self.sample_rate,
                "steps": self.steps_taken, "history": [list(h) for h in self.accountant.history]}

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if not state:
            raise PrivacyError("engine.privacy: the checkpoint holds no privacy accountant (it was trained without "
                               "engine.privacy); a run cannot switch to DP on resume, start a new run")
        if not math.isclose(float(state["noise_multiplier"]), self.noise_multiplier, rel_tol=1e-9) or \
                not math.isclose(float(state["sample_rate"]), self.sample_rate, rel_tol=1e-9):
            raise PrivacyError(
                f"engine.privacy: the checkpoint was trained with noise multiplier {float(state['noise_multiplier']):.4g} "
                f"and sample rate {float(state['sample_rate']):.4g}, this configuration gives {self.noise_multiplier:.4g} "
                f"and {self.sample_rate:.4g}; resume with the run's own privacy settings")
        self.accountant.history = [tuple(h) for h in state.get("history", [])]
        self.steps_taken = int(state["steps"])


@functools.lru_cache(maxsize=32)
def calibrate(epsilon: float, delta: float, sample_rate: float, steps: int, accountant: str) -> float:
    """opacus' noise multiplier for (ε, δ) after ``steps`` at ``sample_rate`` (its binary search)."""
    from opacus.accountants.utils import get_noise_multiplier

    with _quiet_rdp():
        return float(get_noise_multiplier(target_epsilon=epsilon, target_delta=delta, sample_rate=sample_rate,
                                          steps=steps, accountant=accountant, epsilon_tolerance=0.01))


def private_training(trainer: Any, model: torch.nn.Module, data: Any) -> PrivateTraining | None:
    """Set up DP-SGD for ``trainer.fit`` (None when ``engine.privacy.enabled`` is false).

    Checks everything before training: the extra is installed, the run is single-process and
    fp32, ε > 0, 0 < δ < 1/n, the layers are supported, the target ε is reachable.
    """
    e = trainer.e
    p = settings(e)
    if not p["enabled"]:
        return None
    _opacus()
    n = len(data.train.dataset)
    epsilon = float(p["target_epsilon"])
    if not math.isfinite(epsilon) or epsilon <= 0:
        raise PrivacyError(f"engine.privacy.target_epsilon must be > 0, got {epsilon:g}")
    delta = float(p["delta"]) if p["delta"] is not None else 0.1 / n
    if not 0 < delta < 1.0 / n:
        raise PrivacyError(f"engine.privacy.delta must be in (0, 1/n_train) = (0, {1.0 / n:.3g}) for "
                           f"n_train={n}, got {delta:g}; a δ of 1/n or more allows releasing a whole record")
    if float(p["max_grad_norm"]) <= 0:
        raise PrivacyError(f"engine.privacy.max_grad_norm must be > 0, got {p['max_grad_norm']}")
    if p["accountant"] not in ACCOUNTANTS:
        raise PrivacyError(f"engine.privacy.accountant must be one of {', '.join(ACCOUNTANTS)}, got {p['accountant']!r}")
    if trainer.dist.enabled:
        raise PrivacyError("engine.privacy does not support torchrun data-parallel training yet "
                           "(Poisson sampling and noise are per process); train on one process")
    if e["precision"] in ("fp16", "bf16"):
        raise PrivacyError(f"engine.privacy needs fp32 (per-example clipping in {e['precision']} is not supported); "
                           f"set engine.precision=fp32 or auto")
    trainer.precision = "fp32"
    if e["sampler"] != "shuffle":
        log.warning("engine.privacy: engine.sampler=%s is replaced by Poisson sampling", e["sampler"])
    if e["class_weights"] != "none":
        log.warning("engine.privacy: class weights are computed from the training labels and are not private")
    prepare_model(model, trainer.cfg)
    model.train()
    check_model(model)
    if trainer.task.problem == "survival":
        note = ("Cox partial likelihood couples the patients of a batch (risk sets): per-example clipping bounds each "
                "patient's own gradient term, not its effect on others' terms, so ε is not a formal guarantee here")
    else:
        note = ""
    batch = int(e["batch_size"]) * max(1, int(e["grad_accum"]))
    steps_per_epoch = max(1, math.ceil(n / batch))
    steps = steps_per_epoch * int(e["epochs"])
    if int(e["max_steps"]):
        steps = min(steps, int(e["max_steps"]))
    per_unit = max(Counter(data.train.units).values()) if data.train.units else 1
    dp = PrivateTraining(n=n, batch=batch, steps=steps, epsilon=epsilon, delta=delta,
                         max_grad_norm=float(p["max_grad_norm"]), accountant=p["accountant"], examples_per_unit=per_unit)
    dp.notes.extend(getattr(model, "_medmm_privacy_notes", []))
    if per_unit > 1:
        dp.notes.append(f"ε is per training example; a unit contributes up to {per_unit} examples "
                        f"(group privacy: roughly {per_unit}x ε per unit)")
    if note:
        dp.notes.append(note)
    for msg in dp.notes[len(getattr(model, "_medmm_privacy_notes", [])):]:
        log.warning("engine.privacy: %s", msg)
    log.info("engine.privacy: DP-SGD (opacus), target ε=%g, δ=%.3g, noise multiplier %.4f, clipping norm %g, "
             "sample rate %.4g, %d steps, %s accountant", epsilon, delta, dp.noise_multiplier, dp.max_grad_norm,
             dp.sample_rate, steps, p["accountant"])
    return dp


# ---------------------------------------------------------------------------- opacus wrappers
@contextlib.contextmanager
def _quiet_rdp() -> Iterator[None]:
    """Silence opacus' note that the best RDP order is the largest one tried (the bound stays valid)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Optimal order is the largest alpha")
        yield


def _grad_sample_module(model: torch.nn.Module) -> torch.nn.Module:
    from opacus.grad_sample import GradSampleModule

    # the first layer's input needs no gradient; opacus' full backward hooks still fire correctly
    warnings.filterwarnings("ignore", message="Full backward hook is firing when gradients are computed")

    class EngineGradSampleModule(GradSampleModule):
        """Per-example gradients of the sum loss; unknown attributes go to the wrapped model."""

        def __getattr__(self, item: str) -> Any:
            try:
                return super().__getattr__(item)
            except AttributeError:
                if item == "_module":
                    raise
                return getattr(self._module, item)

    return EngineGradSampleModule(model, batch_first=True, loss_reduction="sum", strict=False)


def _engine_dp_optimizer(optimizer: Any, dp: PrivateTraining) -> Any:
    from opacus.optimizers import DPOptimizer

    class EngineDPOptimizer(DPOptimizer):
        """DPOptimizer driven by the engine's windows.

        ``accumulate()`` after each micro-batch's backward clips its per-example gradients into
        the window's sum; ``step()`` at the end of the window adds the noise once, averages over
        the expected batch, tells the accountant and steps (also for an empty Poisson batch);
        ``zero_grad()`` ends the window (clearing the sum even when the window was skipped).
        """

        def accumulate(self) -> None:
            have = [p.grad_sample for p in self.params if getattr(p, "grad_sample", None) is not None]
            if not have:  # nothing trainable was used by this micro-batch
                self.original_optimizer.zero_grad(set_to_none=True)
                return
            sizes = {len(g[-1] if isinstance(g, list) else g) for g in have}
            if len(sizes) > 1:
                bad = [name for name, p in self._dp.param_names.items() if getattr(p, "grad_sample", None) is not None
                       and len(p.grad_sample[-1] if isinstance(p.grad_sample, list) else p.grad_sample) == min(sizes)]
                raise PrivacyError(f"engine.privacy: {', '.join(bad[:3])} got one gradient for the whole batch (its "
                                   f"input is shared by all examples, e.g. a [1, L] buffer): no per-example gradient; "
                                   f"freeze it")
            n = max(sizes)
            for p in self.params:  # unused in this forward (e.g. an unused pooler): zero per-example gradients
                if getattr(p, "grad_sample", None) is None:
                    p.grad_sample = p.new_zeros((n, *p.shape))
            self.signal_skip_step(True)
            self.pre_step()
            for p in self.params:
                p.grad_sample = None
            self.original_optimizer.zero_grad(set_to_none=True)

        def step(self, closure: Any = None) -> Any:
            for p in self.params:
                if getattr(p, "grad_sample", None) is None:
                    p.grad_sample = p.new_zeros((0, *p.shape))
            return super().step(closure)

        def zero_grad(self, set_to_none: bool = True) -> None:
            self._is_last_step_skipped = False
            super().zero_grad(set_to_none)

    opt = EngineDPOptimizer(optimizer, noise_multiplier=dp.noise_multiplier, max_grad_norm=dp.max_grad_norm,
                            expected_batch_size=dp.expected_batch, loss_reduction="mean")
    opt._dp = dp
    opt.attach_step_hook(lambda _opt: dp.on_step())
    return opt

