"""Membership-inference audit: does the model tell its training units from held-out ones?

The attack is the loss-threshold attack (Yeom et al., 2018): a unit's loss under the model is
its membership score (lower loss -> "was in the training set"); for classification this is the
confidence on the true label. It is run on an equal number of training and held-out units
(the smaller group's size, units drawn at random) and summarised by the attack AUROC with a
percentile bootstrap CI: 0.5 = the losses do not reveal membership, 1.0 = they reveal it fully.

The units come through the task's own data and :meth:`Trainer.evaluate` (the same reader,
preprocessing and pooling as training and ``medmm predict``). A low AUROC for this attack is
evidence, not proof, of privacy: stronger attacks (shadow models, LiRA) can do better; a
differentially private run (``engine.privacy``) is the guarantee.
"""

from __future__ import annotations

import contextlib
import html
import json
import math
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from medmm.errors import MedmmError

AUDIT_FILE = "membership_audit.json"
_EPS = 1e-7


def unit_losses(problem: str, scores: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Each unit's loss from pooled scores (probabilities / values) and targets.

    Survival: each unit's term of the negative Cox partial log-likelihood over the units passed
    together (risk sets among them); censored units contribute 0.
    """
    s = np.asarray(scores, dtype=np.float64)
    t = np.asarray(targets, dtype=np.float64)
    if problem == "binary":
        p = np.clip(s.reshape(len(s)), _EPS, 1 - _EPS)
        y = t.reshape(len(t))
        return -(y * np.log(p) + (1 - y) * np.log(1 - p))
    if problem == "multiclass":
        p = np.clip(s[np.arange(len(s)), t.reshape(len(t)).astype(int)], _EPS, 1.0)
        return -np.log(p)
    if problem == "multilabel":
        p = np.clip(s, _EPS, 1 - _EPS)
        return -(t * np.log(p) + (1 - t) * np.log(1 - p)).mean(axis=1)
    if problem == "regression":
        return (s.reshape(len(s)) - t.reshape(len(t))) ** 2
    if problem == "survival":
        eta, time, event = s.reshape(len(s)), t[:, 0], t[:, 1] > 0
        at_risk = time[None, :] >= time[:, None]  # row i: who is still at risk at t_i
        top = eta.max() if len(eta) else 0.0
        log_risk = np.log((np.exp(eta - top)[None, :] * at_risk).sum(axis=1)) + top
        return np.where(event, log_risk - eta, 0.0)
    raise MedmmError(f"membership audit: unknown problem kind {problem!r}")


def loss_attack(problem: str, members: Any, nonmembers: Any, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
    """Attack AUROC (members positive, score = -loss) on equal numbers of units, with a 95% CI.

    ``members`` / ``nonmembers`` are :class:`~medmm.engine.trainer.EvalOutput` (pooled per unit).
    """
    from medmm.metrics import bootstrap_ci, compute_metrics

    if members.targets is None or nonmembers.targets is None:
        raise MedmmError("membership audit needs labelled training and held-out units")
    m = min(len(members.units), len(nonmembers.units))
    if m < 2:
        raise MedmmError(f"membership audit needs at least 2 training and 2 held-out units, got "
                         f"{len(members.units)} and {len(nonmembers.units)}")
    rng = np.random.default_rng(seed)
    a = rng.choice(len(members.units), m, replace=False)
    b = rng.choice(len(nonmembers.units), m, replace=False)
    scores = np.concatenate([members.scores[a], nonmembers.scores[b]])
    targets = np.concatenate([members.targets[a], nonmembers.targets[b]])
    loss = unit_losses(problem, scores, targets)
    score = -_per_class_centred(problem, loss, targets)
    is_member = np.r_[np.ones(m), np.zeros(m)]
    auroc = compute_metrics("binary", is_member, score)["auroc"]
    low, high = bootstrap_ci("binary", "auroc", is_member, score, n_boot=n_boot, seed=seed) if n_boot else (math.nan,) * 2
    return {"attack": "loss threshold (Yeom et al. 2018), per-class threshold for classification", "attack_auroc": float(auroc), "ci_low": float(low),
            "ci_high": float(high), "units_per_group": int(m), "train_units": len(members.units),
            "heldout_units": len(nonmembers.units), "mean_loss_members": float(loss[:m].mean()),
            "mean_loss_heldout": float(loss[m:].mean())}


def _per_class_centred(problem: str, loss: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Classification: each unit's loss minus its class's median loss over the audited units.

    A per-class threshold: without it a different class mix in the train and held-out units
    (classes differ in typical loss) reads as membership signal, or hides it.
    """
    if problem not in ("binary", "multiclass"):
        return loss
    y = np.asarray(targets).reshape(len(loss))
    out = loss.astype(np.float64).copy()
    for c in np.unique(y):
        out[y == c] -= np.median(loss[y == c])
    return out


def audit_split(trainer: Any, model: Any, bundle: Any, heldout_eval: Any, heldout_name: str, *, seed: int = 0,
                n_boot: int = 1000) -> dict[str, Any]:
    """The audit of a trained model: its train split vs an already evaluated held-out split."""
    if bundle.train is None or len(bundle.train.dataset) == 0:
        raise MedmmError("membership audit: the run has no training split")
    with _no_augmentation(bundle.train.dataset):  # members are scored as held-out units are: un-augmented
        members = trainer.evaluate(model, bundle.train, bundle.collate_fn)
    out = loss_attack(trainer.task.problem, members, heldout_eval, seed=seed, n_boot=n_boot)
    out["heldout_split"] = heldout_name
    return out


@contextlib.contextmanager
def _no_augmentation(dataset: Any) -> Iterator[None]:
    """Switch off a training split's random ``transform`` (image augmentation) for a while."""
    transform = getattr(dataset, "transform", None)
    if transform is None:
        yield
        return
    dataset.transform = None
    try:
        yield
    finally:
        dataset.transform = transform


def membership_audit(run_dir: Path, data: Path | None = None, *, checkpoint: str = "best", seed: int = 0,
                     n_boot: int = 1000, registry: Any = None, write: bool = True) -> dict[str, Any]:
    """Audit a finished run: rebuild its splits from ``data`` (default: the run's own data path)
    through the task, load ``checkpoints/<checkpoint>``, attack train vs test units.

    Writes ``RUN_DIR/membership_audit.json`` (atomically) unless ``write`` is false.
    """
    from medmm.engine import Trainer
    from medmm.io import write_json_atomic
    from medmm.run import Run

    run = Run.open(run_dir, registry=registry)
    run_dir, cfg = run.path, run.cfg
    data = Path(data) if data is not None else Path(run.info["data"])
    if not data.exists():
        raise MedmmError(f"membership audit: the run's data {data} is not there; pass the training data again")
    with tempfile.TemporaryDirectory(prefix=".membership-", dir=run_dir) as scratch:
        task = run.task(scratch, artifacts=False)  # the splits are rebuilt, as training built them
        bundle = task.build_data(data)
        model = run.model(task, checkpoint)
        trainer = Trainer(task, cfg, Path(scratch), quiet=True)
        model.to(trainer.device)
        name, held = ("test", bundle.test) if bundle.test is not None and len(bundle.test.dataset) else ("val", bundle.val)
        if held is None or len(held.dataset) == 0:
            raise MedmmError("membership audit: the run has no held-out (test or val) split")
        result = audit_split(trainer, model, bundle, trainer.evaluate(model, held, bundle.collate_fn), name,
                             seed=seed, n_boot=n_boot)
    result["checkpoint"] = checkpoint
    if write:
        write_json_atomic(run_dir / AUDIT_FILE, result)
    return result


def verdict(result: dict[str, Any]) -> str:
    """One plain sentence on what the AUROC means."""
    low, high = result.get("ci_low", math.nan), result.get("ci_high", math.nan)
    if math.isfinite(low) and low > 0.5:
        return "the model's losses reveal training membership above chance (95% CI above 0.5)"
    if math.isfinite(high) and high < 0.5:
        return ("held-out units have lower losses than training units (95% CI below 0.5): the splits differ "
                "(e.g. in class mix or difficulty); no sign of leakage, but the audit is confounded")
    return "no membership leakage detected by this attack (95% CI includes 0.5)"


def report_section(result: dict[str, Any], privacy: dict[str, Any] | None = None) -> tuple[str, str]:
    """``(heading, html)`` for report.html: DP figures (if any) and the audit (if any)."""
    rows = privacy_rows(result, privacy)
    body = "<table>" + "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(v)}</td></tr>" for k, v in rows) + "</table>"
    notes = [*((privacy or {}).get("notes") or [])]
    if result:
        notes.append(f"Membership audit: {verdict(result)}. A low AUROC for this attack is evidence, not proof, "
                     "of privacy; stronger attacks exist.")
    body += "".join(f'<p class="note">{html.escape(n)}</p>' for n in notes)
    return "Privacy", body


def card_section(result: dict[str, Any], privacy: dict[str, Any] | None = None) -> tuple[str, str]:
    """``(heading, markdown)`` for the model card."""
    lines = ["| item | value |", "|---|---|", *(f"| {k} | {v} |" for k, v in privacy_rows(result, privacy))]
    if privacy is None:
        lines.append("\nTrained **without** differential privacy: the weights carry no formal privacy guarantee.")
    for note in (privacy or {}).get("notes") or []:
        lines.append(f"\n- {note}")
    if result:
        lines.append(f"\nMembership audit: {verdict(result)}. A low AUROC for this simple attack is evidence, "
                     "not proof, of privacy.")
    return "Privacy", "\n".join(lines)


def privacy_rows(result: dict[str, Any], privacy: dict[str, Any] | None) -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    if privacy:
        rows += [("training", "DP-SGD (opacus): per-example clipping, Gaussian noise, Poisson sampling"),
                 ("ε spent", f"{privacy['epsilon']:.3f} (target {privacy['target_epsilon']:g}, "
                             f"{privacy['accountant'].upper()} accountant)"),
                 ("δ", f"{privacy['delta']:.3g}"), ("noise multiplier", f"{privacy['noise_multiplier']:.4f}"),
                 ("clipping norm", f"{privacy['dp_max_grad_norm']:g}"),
                 ("sample rate, steps", f"{privacy['sample_rate']:.4g}, {privacy['steps']}")]
    else:
        rows.append(("training", "not differentially private"))
    if result:
        ci = f" (95% CI {result['ci_low']:.3f}–{result['ci_high']:.3f})" if math.isfinite(result["ci_low"]) else ""
        rows += [("membership attack AUROC", f"{result['attack_auroc']:.3f}{ci}; 0.5 = no leakage"),
                 ("audited units", f"{result['units_per_group']} train vs {result['units_per_group']} "
                                   f"{result.get('heldout_split', 'held-out')}")]
    return rows


def privacy_outputs(trainer: Any, model: Any, bundle: Any, heldout_eval: Any, heldout_name: str, cfg: Any,
                    run_dir: Path, *, main: bool = True) -> dict[str, Any]:
    """End of ``medmm run``: the ε spent (DP runs) and the membership audit (``engine.privacy.audit``).

    Adds a "Privacy" section to the report and the model card (through ``bundle.meta``), writes
    ``membership_audit.json`` and a ``privacy`` record in ``metrics.jsonl``; returns summary keys.
    Call on every rank (the audit evaluates the train split collectively); rank 0 writes.
    """
    audit = cfg.engine.privacy.audit  # cfg: a medmm.config.TaskConfig
    dp = trainer.privacy.summary() if getattr(trainer, "privacy", None) is not None else None
    if dp is None and not audit:
        return {}
    result: dict[str, Any] = {}
    if audit:
        n_boot = cfg.engine.bootstrap or 1000
        result = audit_split(trainer, model, bundle, heldout_eval, heldout_name, seed=cfg.seed, n_boot=n_boot)
    heading, body = report_section(result, dp)
    bundle.meta.report_sections = [*bundle.meta.report_sections, (heading, body)]
    heading, text = card_section(result, dp)
    bundle.meta.card_sections = [*bundle.meta.card_sections, f"## {heading}\n\n{text}"]
    summary: dict[str, Any] = {}
    if dp is not None:
        summary["privacy"] = {k: v for k, v in dp.items() if k != "notes"}
    if result:
        summary["membership_audit"] = result
    if main:
        from medmm.engine.callbacks import read_jsonl
        from medmm.io import write_json_atomic, write_text_atomic

        if result:
            write_json_atomic(run_dir / AUDIT_FILE, result)
        record = {"split": "privacy", "step": trainer.state.global_step, **summary.get("privacy", {}),
                  **{f"membership_{k}": v for k, v in result.items() if isinstance(v, (int, float))}}
        path = run_dir / "metrics.jsonl"
        rows = [r for r in read_jsonl(path) if r.get("split") != "privacy"]  # a resumed run replaces its record
        rows.append({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in record.items()})
        write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return summary


def summary_lines(summary: dict[str, Any]) -> list[str]:
    """Console lines for ``medmm run``'s summary: ε spent and the audit, when there are any."""
    lines = []
    dp = summary.get("privacy")
    if dp:
        lines.append(f"  privacy: DP-SGD, ε={dp['epsilon']:.3f} spent (target {dp['target_epsilon']:g}), "
                     f"δ={dp['delta']:.3g}, noise multiplier {dp['noise_multiplier']:.4f}, "
                     f"clipping norm {dp['dp_max_grad_norm']:g}")
    audit = summary.get("membership_audit")
    if audit:
        ci = f" (95% CI {audit['ci_low']:.3f}-{audit['ci_high']:.3f})" if math.isfinite(audit["ci_low"]) else ""
        lines.append(f"  membership attack AUROC {audit['attack_auroc']:.3f}{ci} on {audit['units_per_group']} train "
                     f"vs {audit['units_per_group']} {audit.get('heldout_split', 'held-out')} units; 0.5 = no leakage")
    return lines


def audit_command(run_dir: Path, *, checkpoint: str = "best", registry: Any = None) -> dict[str, Any]:
    """``medmm evaluate RUN --membership-audit``: audit, write the JSON, print one summary line."""
    from medmm.runlog import echo

    result = membership_audit(run_dir, checkpoint=checkpoint, registry=registry)
    line = summary_lines({"membership_audit": result})[0].strip()
    card = Path(run_dir) / "model_card.md"
    if card.exists():  # a dated entry under the card's "Validation" heading, as medmm evaluate adds
        from datetime import datetime, timezone

        from medmm.evaluation.external import append_validation

        day = datetime.now(timezone.utc).strftime("%Y-%m-%d")
        rows = "\n".join(f"| {k} | {v} |" for k, v in privacy_rows(result, None)[1:])
        append_validation(card, f"### Membership audit, {day} ({checkpoint} checkpoint)\n\n| item | value |\n"
                                f"|---|---|\n{rows}\n\n{verdict(result)[0].upper()}{verdict(result)[1:]}.")
    echo(f"medmm evaluate: {line} ({checkpoint} checkpoint) -> {Path(run_dir) / AUDIT_FILE}", err=False)
    return result
