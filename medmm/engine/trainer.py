"""The one training loop every task uses.

Exact resume: an epoch's batches are a pure function of (seed, epoch) (see ``sampling``), the
loader draws no global random numbers, and a checkpoint stores the position inside the epoch
plus every RNG state, so a run killed at any point and resumed from its last checkpoint
performs the same arithmetic as one that was never interrupted.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from medmm.engine import callbacks as cb
from medmm.engine import interrupt
from medmm.engine.checkpoint import clean_orphans, load_trainer_state, load_weights, save_checkpoint
from medmm.engine.device import autocast, move_to, no_grad_eval, resolve_precision, select_device
from medmm.engine.eta import format_seconds
from medmm.engine.distributed import (
    DistInfo, barrier, broadcast_object, gather_objects, init_distributed, local_rank_from_env,
)
from medmm.engine.losses import problem_loss, scores_from_output
from medmm.pooling import pool_by_unit
from medmm.engine.sampling import balanced_class_weights, epoch_generator, eval_batches, plan_epoch, shard
from medmm.engine.schedule import build_optimizer, lr_lambda
from medmm.errors import CheckpointError, ConfigError, TrainingError
from medmm.runlog import log_evaluation
from medmm.task import DataBundle, Split, Task


def _warn(msg: str) -> None:
    """A warning in train.log, and on stderr unless a console handler already shows it."""
    logger = logging.getLogger("medmm")
    logger.warning(msg)
    if not any(isinstance(h, logging.StreamHandler) and not isinstance(h, logging.FileHandler)
               for h in logger.handlers):
        print(f"medmm: warning: {msg}", file=sys.stderr)


BOOT_PROBE = 50  # bootstrap resamples timed at the first evaluation (the ETA's estimate of the finish)


@dataclass
class TrainState:
    """Progress counters; saved in every checkpoint's ``state.json``."""

    epoch: int = 0
    batch_in_epoch: int = 0  # next global batch of the epoch plan
    global_step: int = 0  # optimizer steps taken
    samples_seen: int = 0
    best_value: float | None = None
    best_step: int = -1
    best_epoch: int = -1
    bad_evals: int = 0
    skipped_steps: int = 0
    loss_sum: float = 0.0  # training loss since the last evaluation
    loss_n: int = 0
    stopped_early: bool = False
    finished: bool = False
    precision: str = ""  # the precision the run trains in (engine.cpu_bf16=auto: chosen once, kept on resume)


@dataclass
class EvalOutput:
    """Predictions pooled per unit, in first-seen unit order."""

    units: list[str]
    scores: np.ndarray
    targets: np.ndarray | None
    loss: float


@dataclass
class FitResult:
    state: TrainState
    history: list[dict[str, Any]] = field(default_factory=list)
    monitor: str = "loss"
    mode: str = "min"


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_snapshot() -> tuple[Any, ...]:
    """The RNG states as their libraries return them: cheap enough to take every step."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    return torch.get_rng_state(), np.random.get_state(), random.getstate(), cuda


def _rng_state(snapshot: tuple[Any, ...] | None = None) -> dict[str, Any]:
    """A snapshot (default: now) as tensors and ints, loadable with ``weights_only=True``."""
    torch_state, np_state, py_state, cuda = snapshot or _rng_snapshot()
    state: dict[str, Any] = {
        "torch": torch_state,
        "numpy": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_pos": int(np_state[2]),
        "python": torch.tensor(py_state[1], dtype=torch.int64),
    }
    if cuda is not None:
        state["cuda"] = cuda
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), int(state["numpy_pos"]), 0, 0.0))
    py = tuple(int(x) for x in state["python"].tolist())
    random.setstate((3, py, None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


class Trainer:
    """Fits a task's model; every task goes through here."""

    def __init__(self, task: Task, cfg: dict[str, Any], run_dir: Path, *, quiet: bool = False,
                 callbacks: list[Any] | None = None) -> None:
        from medmm.config import as_config

        self.task, self.cfg, self.run_dir = task, as_config(cfg), Path(run_dir)  # a medmm.config.TaskConfig
        self.e = self.cfg.engine
        self.device = select_device(self.e.device, local_rank_from_env())
        self.dist: DistInfo = init_distributed(self.device.type)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)
        self.precision = resolve_precision(self.e.precision, self.device)
        self.quiet = quiet or not sys.stderr.isatty() or not self.dist.is_main
        self.callbacks = list(callbacks or []) if self.dist.is_main else []
        self.seed = self.cfg.seed
        self.state = TrainState()
        self.history: list[dict[str, Any]] = []
        self.class_weights: torch.Tensor | None = None
        self.privacy: Any = None  # medmm.engine.dp.PrivateTraining under engine.privacy.enabled
        self.planner: Any = None  # medmm.engine.budget.Planner of the running fit (ETA, time limit)
        self.stopped: str | None = None  # "time limit" when the fit stopped at engine.time_limit
        # the fits the run trains after this one (a task's own, e.g. auto's candidates): how many seconds more
        # each one's step takes than this fit's (probe_step_s); the ETA and the time limit count them
        self.later_step_s: list[float] = []
        self._lengths: np.ndarray | None = None  # tokens per training example (DataBundle.lengths), for the ETA

    # ------------------------------------------------------------------ data loading
    def _loader(self, dataset: Any, batches: list[list[int]], collate: Callable[..., Any] | None,
                epoch: int) -> DataLoader:
        workers = self.e.num_workers
        return DataLoader(
            dataset, batch_sampler=batches, collate_fn=collate, num_workers=workers,
            pin_memory=self.device.type == "cuda", persistent_workers=False,
            generator=epoch_generator(self.seed, epoch),  # never draw from the global RNG
        )

    def epoch_plan(self, data: DataBundle, epoch: int) -> list[list[int]]:
        """The index batches of ``epoch`` over the train split (the sampler, DP-SGD's Poisson batches, ranks)."""
        split = data.train
        assert split is not None
        if self.privacy is not None:  # DP-SGD: Poisson-sampled logical batches
            return self.privacy.plan(len(split.dataset), self.seed, epoch, self.e.grad_accum)
        world = self.dist.world_size
        labels = split.targets if self.e.sampler in ("weighted", "bucket") else None
        plan = plan_epoch(len(split.dataset), self.e.batch_size * world, seed=self.seed, epoch=epoch,
                          mode=self.e.sampler, labels=labels, lengths=data.lengths)
        if world > 1:
            plan = [b for b in plan if len(b) >= world]
        return plan

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, model: torch.nn.Module, split: Split, collate: Callable[..., Any] | None) -> EvalOutput:
        """Predict a split on every rank, gather, pool per unit; the same result on all ranks."""
        batches = eval_batches(len(split.dataset), self.e.eval_batch_size, self.dist.rank, self.dist.world_size,
                               lengths=split.lengths)  # token counts: length order inside fixed windows
        idx, scores, targets, loss_sum, n = [], [], [], 0.0, 0
        with no_grad_eval(model):
            for batch in self._loader(split.dataset, batches, collate, epoch=0):
                batch = move_to(batch, self.device)
                with autocast(self.device, self.precision):
                    out = self.task.step(model, batch)
                if "loss" in out:  # the task's own loss: a mean over the batch's examples
                    k = len(out["index"])
                    loss_sum, n = loss_sum + float(out["loss"]) * k, n + k
                elif out.get("target") is not None:
                    ls, k = problem_loss(self.task.problem, out["output"], out["target"], class_weights=None,
                                         regression_loss=self._regression_loss())
                    loss_sum, n = loss_sum + float(ls), n + k
                idx.append(out["index"].cpu().numpy())
                scores.append(scores_from_output(self.task.problem, out["output"]).float().cpu().numpy())
                if out.get("target") is not None:
                    targets.append(out["target"].float().cpu().numpy())
        local = (np.concatenate(idx) if idx else np.zeros(0, int),
                 np.concatenate(scores) if scores else None,
                 np.concatenate(targets) if targets else None, loss_sum, n)
        parts = gather_objects(local, self.dist)
        index = np.concatenate([p[0] for p in parts])
        score = np.concatenate([p[1] for p in parts if p[1] is not None])
        has_t = all(p[2] is not None for p in parts if p[1] is not None)
        target = np.concatenate([p[2] for p in parts if p[2] is not None]) if has_t else None
        loss = sum(p[3] for p in parts) / max(1, sum(p[4] for p in parts))
        order = np.argsort(index, kind="stable")
        units, pooled, pooled_t = pool_by_unit([split.units[i] for i in index[order]], score[order],
                                               None if target is None else target[order])
        return EvalOutput(units, pooled, pooled_t, loss if n else float("nan"))

    def _time_bootstrap(self, out: EvalOutput, clock: Callable[[], float]) -> float | None:
        """Seconds per resample of a whole ``engine.bootstrap``-resample pass of the CIs on ``out``.

        The metrics are computed over many resamples at once, so a call costs a fixed part plus a part
        per resample: both are timed (``BOOT_PROBE // 5`` and ``BOOT_PROBE`` resamples, after a warm-up
        call) and the pass's cost is spread over its resamples. One timing of ``BOOT_PROBE`` resamples
        divided by them made the image demo's bootstrap 5x its real cost (0.6 s for 0.13 s)."""
        from medmm.metrics import bootstrap_cis

        if not self.e.bootstrap:
            return None
        (y_true, y_score), kw = self.metric_inputs(out)
        n_big = min(self.e.bootstrap, BOOT_PROBE)
        n_small = max(1, n_big // 5)

        def timed(n: int) -> float:
            started = clock()
            bootstrap_cis(self.task.problem, y_true, y_score, n_boot=n, seed=self.seed, **kw)
            return clock() - started

        try:
            timed(2)  # first-call one-offs
            small, big = timed(n_small), timed(n_big)
        except ValueError:
            return None
        if n_big == n_small:
            return big / n_big
        per_resample = max(0.0, (big - small) / (n_big - n_small))
        fixed = max(0.0, small - per_resample * n_small)
        return (fixed + per_resample * self.e.bootstrap) / self.e.bootstrap

    def _regression_loss(self) -> str:
        return str(getattr(self.cfg.model, "loss", "mse")) if self.task.problem == "regression" else "mse"

    def metrics_of(self, out: EvalOutput) -> dict[str, float]:
        """The task's metrics for pooled predictions."""
        from medmm.metrics import compute_metrics

        if out.targets is None:
            return {}
        args, kwargs = self.metric_inputs(out)
        return compute_metrics(self.task.problem, *args, **kwargs)

    def metric_inputs(self, out: EvalOutput) -> tuple[tuple[Any, Any], dict[str, Any]]:
        """``(y_true, y_score), {time, event}`` for :mod:`medmm.metrics`."""
        t = out.targets
        if self.task.problem == "survival":
            return (None, out.scores), {"time": t[:, 0], "event": t[:, 1].astype(bool)}
        if self.task.problem in {"binary", "multiclass"}:
            t = t.astype(int)
        return (t, out.scores), {}

    # ------------------------------------------------------------------ checkpoints
    def _save(self, kind: str, model: torch.nn.Module, opt: Any, sched: Any, scaler: Any,
              rng: dict[str, Any] | None = None) -> None:
        if not self.dist.is_main:
            return
        path = self.run_dir / "checkpoints" / kind
        trainer = None
        if kind == "last":
            trainer = {"optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                       "rng": rng or _rng_state()}
            if scaler is not None:
                trainer["scaler"] = scaler.state_dict()
        meta = {"state": asdict(self.state), "history": self.history}
        if self.privacy is not None:  # the accountant: a resumed run reports the same ε
            meta["privacy"] = self.privacy.state_dict()
        save_checkpoint(path, model, meta, trainer)
        cb.call(self.callbacks, "on_checkpoint", self, path, kind)

    def _restore(self, model: torch.nn.Module, opt: Any, sched: Any, scaler: Any) -> None:
        ckpts = self.run_dir / "checkpoints"
        error: CheckpointError | None = None
        for path in (ckpts / "last", ckpts / "last.old"):  # .old: a swap that a kill interrupted
            try:
                saved = load_weights(path, model)
                trainer = load_trainer_state(path)
                break
            except CheckpointError as exc:
                error = error or exc
        else:
            self._restore_from_best(model, sched, error)
            return
        opt.load_state_dict(trainer["optimizer"])
        sched.load_state_dict(trainer["scheduler"])
        if scaler is not None and "scaler" in trainer:
            scaler.load_state_dict(trainer["scaler"])
        _set_rng_state(trainer["rng"])
        self.state = TrainState(**saved["state"])
        self.history = list(saved.get("history", []))
        if self.privacy is not None:
            self.privacy.load_state_dict(saved.get("privacy"))

    def _restore_from_best(self, model: torch.nn.Module, sched: Any, error: CheckpointError | None) -> None:
        """``last`` is damaged: continue from ``best`` (weights and counters; fresh optimizer state)."""
        best = self.run_dir / "checkpoints" / "best"
        try:
            saved = load_weights(best, model)
        except CheckpointError:
            raise error or CheckpointError(f"no checkpoint in {self.run_dir / 'checkpoints'}") from None
        self.state = TrainState(**saved["state"])
        self.history = list(saved.get("history", []))
        if self.privacy is not None:
            self.privacy.load_state_dict(saved.get("privacy"))
        with warnings.catch_warnings():  # replay the schedule to the step (no optimizer step taken)
            warnings.simplefilter("ignore")
            for _ in range(self.state.global_step):
                sched.step()
        _warn(f"{error}; resuming from checkpoints/best (step {self.state.global_step}) instead: the optimizer "
              "state and random streams restart there, so this resume is not bit-exact")

    # ------------------------------------------------------------------ training
    def fit(self, model: torch.nn.Module, data: DataBundle, *, resume: bool = False) -> FitResult:
        """Train with evaluation, early stopping and checkpoints; returns the final state."""
        if data.train is None or len(data.train.dataset) == 0:
            raise ConfigError("the training split is empty")
        from medmm.metrics import headline

        monitor, mode = self.e.monitor, self.e.monitor_mode
        if monitor == "auto":
            monitor, auto_mode = headline(self.task.problem)
            mode = auto_mode if mode == "auto" else mode
        elif mode == "auto":
            from medmm.metrics import metric_mode

            mode = metric_mode(monitor)
        self.monitor, self.mode = monitor, mode

        seed_everything(self.seed)
        if self.e.class_weights in ("balanced", "auto") and self.task.problem == "multilabel":
            from medmm.engine.losses import multilabel_pos_weight  # per-label positives up-weighted

            self.class_weights = torch.tensor(multilabel_pos_weight(data.train.targets), device=self.device)
        elif self.e.class_weights == "balanced":
            if data.train.targets is None or np.asarray(data.train.targets).ndim != 1:
                raise ConfigError("engine.class_weights=balanced needs single-label classification targets")
            self.class_weights = torch.tensor(balanced_class_weights(data.train.targets), dtype=torch.float32,
                                              device=self.device)
        from medmm.engine.dp import private_training

        self.privacy = private_training(self, model, data)  # engine.privacy: DP-SGD through opacus, else None
        model.to(self.device)
        task_groups = self.task.param_groups(model)
        opt = build_optimizer(model, self.e.lr, self.e.weight_decay, task_groups)
        if self.privacy is not None:
            opt = self.privacy.wrap_optimizer(opt)
        accum = self.e.grad_accum
        steps_per_epoch = math.ceil(len(self.epoch_plan(data, 0)) / accum)
        total = steps_per_epoch * self.e.epochs
        if self.e.max_steps:
            total = min(total, self.e.max_steps) if total else self.e.max_steps
        warmup = int(round(self.e.warmup_ratio * total))
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_lambda(self.e.schedule, total, warmup))
        self.total, self.steps_per_epoch = total, steps_per_epoch
        scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None
        logger = cb.MetricsLogger(self.run_dir)
        if self.dist.is_main:
            clean_orphans(self.run_dir / "checkpoints")  # temp dirs of a writer that was killed
        if resume:
            self._restore(model, opt, sched, scaler)
            if self.dist.is_main:
                logger.truncate_after(self.state.global_step)
        if self.dist.is_main:
            self.callbacks.insert(0, logger)
        ddp_model = model
        if self.dist.enabled:
            ddp_model = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.privacy is not None:
            ddp_model = self.privacy.wrap_model(model)  # per-example gradients (opacus)
        self._choose_cpu_precision(model, data, resume)
        from medmm.engine.budget import Budget, Planner, Sizes, boot_passes_for, current

        budget = current() or Budget(self.e.time_limit)  # the run's (runner), else this fit's own
        budget.later = list(self.later_step_s)
        self._lengths = None if data.lengths is None else np.asarray(data.lengths, dtype=np.float64)
        work = 1.0  # a step's mean work: its batch's real tokens where the task reports lengths (text)
        if self._lengths is not None and len(self._lengths):
            work = self._window_work(*self.epoch_plan(data, 0)) / max(1, steps_per_epoch)
        sizes = Sizes.of(data, self.e)
        sizes.boot_passes = boot_passes_for(self.task.problem, sizes.n_boot)
        self.planner = Planner(budget, total=total, steps_per_epoch=steps_per_epoch, eval_every=self.e.eval_every_steps,
                               sizes=sizes, start_step=self.state.global_step,
                               patience=self.e.patience, work_per_step=work, warmup=warmup)
        cb.call(self.callbacks, "on_train_start", self)
        try:
            with interrupt.deferred(not self.dist.enabled):  # a first SIGTERM / SIGINT waits for a step boundary
                self._loop(ddp_model, model, data, opt, sched, scaler, accum)
        except KeyboardInterrupt as exc:
            if not getattr(exc, "at_step_boundary", False):  # mid-step: replay from the window's start
                self._save("last", model, opt, sched, scaler, rng=_rng_state(self._window_rng))
            raise interrupt.Interrupted(getattr(exc, "signum", signal.SIGINT),
                                        f"a resumable checkpoint is in {self.run_dir}/checkpoints/last "
                                        f"(continue with --resume {self.run_dir})") from None
        st = self.state
        if st.skipped_steps and st.skipped_steps >= st.global_step:
            raise TrainingError(f"every optimizer step ({st.global_step}) had a non-finite loss and was skipped "
                                "(engine.nan_policy=skip): nothing was trained; check the data and engine.lr")
        bad = [n for n, p in model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise TrainingError(f"the weights are not finite after training ({bad[0]}"
                                f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); lower engine.lr")
        self.state.finished = True
        self._save("last", model, opt, sched, scaler)
        if data.val is None or not (self.run_dir / "checkpoints" / "best").exists():
            self._save("best", model, opt, sched, scaler)
        barrier(self.dist)
        result = FitResult(self.state, self.history, monitor, mode)
        cb.call(self.callbacks, "on_train_end", self, result)  # loggers flush and close (TensorBoard)
        return result

    def _choose_cpu_precision(self, model: torch.nn.Module, data: DataBundle, resume: bool) -> None:
        """``engine.cpu_bf16=auto`` with precision auto on a CPU: bf16 autocast only where the CPU has native
        bf16 and a probe step on a real batch takes less CPU time than fp32 (weights, buffers, RNG untouched)."""
        e, st = self.e, self.state
        if resume and st.precision:  # a resumed run keeps the precision it trained in (exact resume)
            self.precision = st.precision
            return
        if not (e.precision == "auto" and e.cpu_bf16 == "auto" and self.device.type == "cpu"
                and self.privacy is None and not self.dist.enabled):
            st.precision = self.precision
            return
        from medmm.engine.device import PROBE_REPEATS, cpu_native_bf16, probe_bf16

        if not cpu_native_bf16():
            logging.getLogger("medmm").info("engine.cpu_bf16=auto: this CPU has no native bf16 (avx512_bf16 / "
                                            "amx_bf16): fp32")
            st.precision = self.precision = "fp32"
            return
        batch = self._probe_batch(data)
        saved = {k: v.detach().clone() for k, v in model.state_dict().items()}
        rng = _rng_snapshot()
        model.train()
        faster, t32, t16 = probe_bf16(lambda precision: self._probe_step(model, batch, precision))
        model.load_state_dict(saved)  # batch-norm statistics of the probe steps undone
        _set_rng_state(_rng_state(rng))
        st.precision = self.precision = "bf16" if faster else "fp32"
        from medmm.runlog import echo

        msg = (f"medmm: engine.cpu_bf16=auto: native bf16 on this CPU; a probe step took {t16:.3f} CPU s in "
               f"bf16 vs {t32:.3f} in fp32 (median of {PROBE_REPEATS}, interleaved): training in {self.precision}")
        if self.dist.is_main:
            echo(msg)

    def _probe_batch(self, data: DataBundle) -> Any:
        """The first training batch of epoch 0, on the device (for the probes)."""
        assert data.train is not None
        batches = self._loader(data.train.dataset, self.epoch_plan(data, 0)[:1], data.collate_fn, 0)
        return move_to(next(iter(batches)), self.device)

    def _probe_step(self, model: torch.nn.Module, batch: Any, precision: str) -> None:
        """One forward + backward of ``model`` on ``batch``, gradients dropped (no update)."""
        with autocast(self.device, precision):
            out = self.task.step(model, batch)
        loss = out["loss"] if "loss" in out else problem_loss(
            self.task.problem, out["output"], out["target"], class_weights=self.class_weights,
            regression_loss=self._regression_loss())[0]
        loss.float().sum().backward()
        model.zero_grad(set_to_none=True)

    def probe_step_s(self, models: Sequence[torch.nn.Module], data: DataBundle, repeats: int = 5) -> list[float]:
        """Wall seconds of one training step (forward + backward on the same real batch, no update) of each of
        ``models``: one warm-up, then ``repeats`` rounds interleaved so that all see the same load; the
        median each. Weights, buffers and random streams are left as they were. A task that trains
        several fits in one run (``model.backbone=auto``'s candidates) weighs the later ones with it for the
        run's ETA and time limit (:attr:`medmm.engine.budget.Budget.later`)."""
        import statistics

        batch = self._probe_batch(data)
        rng = _rng_snapshot()
        saved = []
        for model in models:
            model.to(self.device)
            saved.append({k: v.detach().clone() for k, v in model.state_dict().items()})
            model.train()
        times: list[list[float]] = [[] for _ in models]
        for r in range(repeats + 1):
            for i, model in enumerate(models):
                t0 = time.perf_counter()
                self._probe_step(model, batch, self.precision)
                if r:  # round 0 warms up
                    times[i].append(time.perf_counter() - t0)
        for model, state in zip(models, saved):
            model.load_state_dict(state)
        _set_rng_state(_rng_state(rng))
        return [statistics.median(t) for t in times]

    def _probe_finish(self, model: torch.nn.Module, data: DataBundle) -> None:
        """Before the steps, measure what the ETA would otherwise guess (docs/reliability.md, "Honest ETAs"):
        one report figure, once per run (:attr:`~medmm.engine.budget.Budget.figures`), and one validation
        batch, the seconds per validation example until the first evaluation is measured."""
        planner = self.planner
        budget = planner.budget
        if budget.figures and budget.figure_s is None and self.dist.is_main:
            from medmm.report import time_figure

            budget.figure_s = time_figure(budget.clock)
        if data.val is not None and len(data.val.dataset) and planner.total > planner.start_step:
            planner.val_example_s = self._time_val_batch(model, data.val, data.collate_fn, budget.clock)

    def _time_val_batch(self, model: torch.nn.Module, split: Split, collate: Callable[..., Any] | None,
                        clock: Callable[[], float]) -> float | None:
        """Seconds per validation example: the first evaluation batch read and predicted twice (the first
        warms up), the second timed, as its share of the split's tokens (where the task reports lengths) or
        examples. This rank's batch only (no collective); weights and random streams untouched."""
        batches = [b for b in eval_batches(len(split.dataset), self.e.eval_batch_size, self.dist.rank,
                                           self.dist.world_size, lengths=split.lengths) if len(b)]
        if not batches:
            return None
        first = batches[0]
        rng = _rng_snapshot()
        took = 0.0
        with no_grad_eval(model):
            loader = iter(self._loader(split.dataset, [first, first], collate, epoch=0))
            for r in range(2):
                started = clock()
                batch = move_to(next(loader), self.device)
                with autocast(self.device, self.precision):
                    out = self.task.step(model, batch)
                scores_from_output(self.task.problem, out["output"]).float().cpu()
                took = clock() - started
        _set_rng_state(_rng_state(rng))
        lengths = None if split.lengths is None else np.asarray(split.lengths, dtype=np.float64)
        share = (lengths[first].sum() / lengths.sum() if lengths is not None and lengths.sum() > 0
                 else len(first) / len(split.dataset))
        return took / max(share, 1e-9) / len(split.dataset)

    def _window_work(self, *batches: list[int]) -> float:
        """The real tokens of these batches (where the task reports lengths; else 1 per step)."""
        if self._lengths is None:
            return 1.0
        return float(sum(self._lengths[b].sum() for b in batches if len(b)))

    def _agreed_plan(self, step: int) -> int | None:
        """The planner's lowered total (:meth:`~medmm.engine.budget.Planner.plan`), decided once by rank 0
        under torchrun and broadcast, so every rank trains the same steps (a cheaper recipe likewise)."""
        from medmm.engine.budget import SwitchRecipe

        planner = self.planner
        if not self.dist.enabled:
            return planner.plan(step)
        if planner.planned or not planner.measured or planner.budget.limit_s is None:
            return None  # the same on every rank: the steps are counted alike and the limit is the config's
        decision: tuple[Any, ...] = ()
        if self.dist.is_main:
            try:
                total = planner.plan(step)
                decision = ("plan", total, planner.budget.notes[-1] if total is not None else "")
            except SwitchRecipe as switch:
                decision = ("switch", switch.overrides, switch.reason)
        decision = broadcast_object(decision, self.dist)
        planner.planned = True
        if decision[0] == "switch":
            raise SwitchRecipe(decision[1], decision[2])
        if decision[1] is not None and not self.dist.is_main:
            planner.total = decision[1]
            planner.budget.notes.append(decision[2])
        return decision[1]

    def _agreed_stop(self, step: int) -> bool:
        """Whether training stops at this step boundary for the time limit; under torchrun rank 0's clock
        decides and every rank stops at the same step."""
        planner = self.planner
        if planner.budget.limit_s is None:
            return False
        stop = planner.must_stop(step) if self.dist.is_main else False
        return bool(broadcast_object(stop, self.dist))

    def _replan(self, sched: Any, total: int) -> None:
        """The time limit lowered the run to ``total`` steps: the schedule ends there; saved as engine.max_steps."""
        self.total = total
        self.e.max_steps = total
        sched.lr_lambdas[0] = lr_lambda(self.e.schedule, total, int(round(self.e.warmup_ratio * total)))
        if self.dist.is_main:
            _warn(self.planner.budget.notes[-1])
        cb.call(self.callbacks, "on_plan", self, total)  # the runner rewrites config.yaml (resume keeps the plan)

    def _loop(self, model: torch.nn.Module, raw: torch.nn.Module, data: DataBundle, opt: Any, sched: Any,
              scaler: Any, accum: int) -> None:
        from tqdm.auto import tqdm

        st, e = self.state, self.e
        eval_every = e.eval_every_steps
        ckpt_every = e.checkpoint_every_steps
        self._window_rng = _rng_snapshot()
        from medmm.engine.eta import Eta

        planner = self.planner
        hints = self.task.speed_hints(len(data.train.dataset)) if self.device.type == "cpu" else []
        eta = Eta(planner, self.device.type, announce=self.dist.is_main, hints=hints)  # ETA lines: after the first steps and evaluation
        self._eta = eta
        if data.val is not None and len(data.val.dataset):  # a one-off import, not the first evaluation's cost
            from medmm.metrics import preload

            preload()
        self._probe_finish(raw, data)
        planner.started()
        stop = False
        while (st.epoch < e.epochs and not st.stopped_early and not (self.total and st.global_step >= self.total)
               and not stop):
            plan = self.epoch_plan(data, st.epoch)
            if not plan:
                raise ConfigError("the training split yields no batch (fewer examples than processes?)")
            self._plan_len = len(plan)
            windows = [plan[i : i + accum] for i in range(0, len(plan), accum)]
            first = st.batch_in_epoch // accum
            if hasattr(data.train.dataset, "set_epoch"):
                data.train.dataset.set_epoch(st.epoch)
            mine = [shard(b, self.dist.rank, self.dist.world_size) for w in windows[first:] for b in w if b]
            batches = iter(self._loader(data.train.dataset, mine, data.collate_fn, st.epoch))
            bar = tqdm(total=len(windows), initial=first, disable=self.quiet, leave=False,
                       desc=f"epoch {st.epoch + 1}/{e.epochs}", unit="step")
            t0, seen = time.perf_counter(), 0
            for window in windows[first:]:
                self._window_rng = _rng_snapshot()
                n_window = sum(len(b) for b in window)
                model.train()
                finite = True
                for j in range(len(window)):
                    if not window[j]:
                        continue  # an empty Poisson micro-batch (engine.privacy)
                    batch = move_to(next(batches), self.device)
                    sync = j == len(window) - 1 or not self.dist.enabled
                    ctx = contextlib.nullcontext() if sync else model.no_sync()
                    with ctx:
                        with autocast(self.device, self.precision):
                            out = self.task.step(model, batch)
                        if "loss" in out:
                            loss_sum, k = out["loss"].float() * len(out["index"]), len(out["index"])
                        else:
                            loss_sum, k = problem_loss(self.task.problem, out["output"], out["target"],
                                                       class_weights=self.class_weights,
                                                       label_smoothing=e.label_smoothing,
                                                       regression_loss=self._regression_loss())
                        if not torch.isfinite(loss_sum):
                            finite = False
                            if e.nan_policy == "stop":
                                raise TrainingError(
                                    f"loss is {float(loss_sum.detach())} at step {st.global_step + 1} (epoch {st.epoch + 1}); "
                                    f"stopped without overwriting checkpoints (engine.nan_policy=skip skips such steps)")
                            continue
                        # DP-SGD clips each example's gradient of its own loss: back-propagate the sum
                        loss = loss_sum if self.privacy is not None else loss_sum * self.dist.world_size / n_window
                        (scaler.scale(loss) if scaler else loss).backward()
                        if self.privacy is not None:
                            opt.accumulate()  # clip this micro-batch's per-example gradients into the window sum
                    st.loss_sum, st.loss_n = st.loss_sum + float(loss_sum.detach()), st.loss_n + k
                    seen += k
                if finite:
                    if scaler:
                        scaler.unscale_(opt)
                    if e.max_grad_norm > 0:
                        torch.nn.utils.clip_grad_norm_(model.parameters(), e.max_grad_norm)
                    if scaler:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                else:
                    st.skipped_steps += 1
                opt.zero_grad(set_to_none=True)
                sched.step()
                st.global_step += 1
                st.batch_in_epoch += len(window)
                st.samples_seen += n_window
                rate = seen * self.dist.world_size / max(1e-9, time.perf_counter() - t0)
                planner.step(self._window_work(*window) if self._lengths is not None else None)
                new_total = self._agreed_plan(st.global_step)  # once, after the first steps; may raise SwitchRecipe
                if new_total is not None:
                    self._replan(sched, new_total)
                bar.update(1)
                bar.set_postfix(loss=f"{st.loss_sum / max(1, st.loss_n):.4f}", samples_s=f"{rate:.0f}",
                                eta=eta.step(st.global_step))
                end_of_epoch = st.batch_in_epoch >= len(plan)
                at_max = bool(self.total) and st.global_step >= self.total
                evaluated = False
                if (eval_every and st.global_step % eval_every == 0) or end_of_epoch or at_max:
                    if end_of_epoch:
                        st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                    self._evaluate_and_track(raw, data, opt, sched, scaler, st.loss_sum / max(1, st.loss_n),
                                             rate, end_of_epoch)
                    st.loss_sum, st.loss_n, evaluated = 0.0, 0, True
                stop = not at_max and self._agreed_stop(st.global_step)
                if evaluated or st.global_step % ckpt_every == 0 or interrupt.pending() is not None or stop:
                    self._save("last", raw, opt, sched, scaler)
                if interrupt.pending() is not None:  # SIGTERM / SIGINT during the step: stop here, saved
                    bar.close()
                    try:
                        interrupt.raise_pending()
                    except interrupt.Interrupted as exc:
                        exc.at_step_boundary = True  # type: ignore[attr-defined]
                        raise
                if stop:  # engine.time_limit: the next step and the finish would not fit
                    self.stopped = planner.budget.stopped = "time limit"
                    if self.dist.is_main:
                        _warn(f"time limit ({format_seconds(planner.budget.limit_s)}) reached at step {st.global_step} "
                              f"of {self.total}: training stops here with a 'last' checkpoint; the best one is "
                              "evaluated and reported")
                if st.stopped_early or at_max or stop:
                    break
            bar.close()
            if st.batch_in_epoch == 0:
                cb.call(self.callbacks, "on_epoch_end", self, st.epoch)

    def _evaluate_and_track(self, raw: torch.nn.Module, data: DataBundle, opt: Any, sched: Any, scaler: Any,
                            train_loss: float, rate: float, end_of_epoch: bool) -> None:
        st = self.state
        lr = opt.param_groups[0]["lr"]
        base = {"epoch": round(st.epoch + st.batch_in_epoch / self._plan_len, 4), "step": st.global_step}
        train_rec = {**base, "split": "train", "loss": train_loss, "lr": lr, "samples_per_s": rate}
        if self.privacy is not None:  # ε spent so far, δ, noise multiplier, clipping norm
            train_rec.update(self.privacy.metrics())
        self.history.append(train_rec)
        cb.call(self.callbacks, "on_evaluate", self, train_rec)
        if data.val is None or len(data.val.dataset) == 0:
            log_evaluation([train_rec])  # train.log: the per-evaluation metrics
            return
        clock = self.planner.budget.clock if self.planner is not None else time.perf_counter
        started = clock()
        out = self.evaluate(raw, data.val, data.collate_fn)
        metrics = self.metrics_of(out) if self.dist.is_main else {}
        boot_s, probe_s = None, 0.0
        if self.planner is not None and not self.planner.eval_s and self.dist.is_main and out.targets is not None:
            probe_at = clock()
            boot_s = self._time_bootstrap(out, clock)  # what one resample of the finish's bootstrap costs
            probe_s = clock() - probe_at  # a one-off: not part of what each evaluation costs
        metrics = broadcast_object(metrics, self.dist)
        rec = {**base, "split": "val", "loss": out.loss, **metrics, "lr": lr, "samples_per_s": rate}
        self.history.append(rec)
        cb.call(self.callbacks, "on_evaluate", self, rec)
        log_evaluation([train_rec, rec])
        value = rec.get(self.monitor, float("nan"))
        better = st.best_value is None or (
            math.isfinite(value) and (not math.isfinite(st.best_value)
                                      or (value > st.best_value if self.mode == "max" else value < st.best_value)))
        if better:
            st.best_value, st.best_step, st.best_epoch, st.bad_evals = value, st.global_step, st.epoch, 0
            self._save("best", raw, opt, sched, scaler)
        else:
            st.bad_evals += 1
            if self.e.patience and st.bad_evals >= self.e.patience:
                st.stopped_early = True
        if self.planner is not None:  # the evaluation's cost, for the ETA and the time limit
            self.planner.evaluated(clock() - started - probe_s, boot_s, st.bad_evals)
            if getattr(self, "_eta", None) is not None and not st.stopped_early:
                self._eta.evaluated(st.global_step)
