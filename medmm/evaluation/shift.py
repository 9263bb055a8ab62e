"""Distribution shift between a run's training data and new data.

- tabular features: standardized mean difference per numeric feature (against the training
  means and standard deviations the task's own preprocessor stored) and categories never seen;
- text columns: share of words never seen in training and the length distribution;
- DICOM folders: modality / manufacturer / pixel spacing / photometric mix.

Text and DICOM need ``artifacts/data_profile.json``, written at training time by
:func:`write_training_profile`. It holds counts only; training words are kept only when they
occur in at least :data:`MIN_DOCS` documents, and only as truncated hashes.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["SMD_WARN", "shift_report", "shift_html", "write_training_profile"]

FORMAT = "medmm-data-profile"
FILE = "data_profile.json"
MIN_DOCS = 5
SMD_WARN = 0.25
"""|standardized mean difference| above this is warned about."""
_WORD = re.compile(r"[a-z]+")
_QUANTILES = (0.1, 0.25, 0.5, 0.75, 0.9)


def _h(word: str) -> str:
    return hashlib.blake2b(word.encode(), digest_size=6).hexdigest()


def _text_columns(data_cfg: Mapping[str, Any]) -> list[str]:
    col = data_cfg.get("text_column")
    return [] if not col else ([col] if isinstance(col, str) else [str(c) for c in col])


def _texts(df: Any, cols: list[str]) -> list[str]:
    from medmm.data.readers import is_missing

    return [" ".join("" if is_missing(v) else str(v) for v in row) for row in df[cols].itertuples(index=False)]


def _dicom_mix(root: Path) -> dict[str, Counter]:
    import pydicom

    from medmm.data.dicom.scan import list_files, quiet_pydicom

    mix: dict[str, Counter] = {k: Counter() for k in ("Modality", "Manufacturer", "PhotometricInterpretation",
                                                      "PixelSpacing")}
    for rel in list_files(root)[:200_000]:
        try:
            with quiet_pydicom():  # values are decoded lazily: read them inside too
                ds = pydicom.dcmread(root / rel, stop_before_pixels=True, specific_tags=list(mix))
                values = {key: ds.get(key, None) for key in mix}
                if values["PixelSpacing"]:
                    values["PixelSpacing"] = f"{float(values['PixelSpacing'][0]):.2g} mm"
        except Exception:
            continue
        for key, v in values.items():
            mix[key][str(v).strip() if v not in (None, "") else "absent"] += 1
    return mix


def write_training_profile(data_path: Path, data_cfg: Mapping[str, Any], directory: Path) -> Path | None:
    """Write the counts shift checks compare against (text columns of a table, or a DICOM folder's mix)."""
    from medmm.io import write_json_atomic

    path = Path(data_path)
    payload: dict[str, Any] = {"format": FORMAT, "version": 1}
    if path.is_dir():
        payload["dicom"] = {k: dict(v) for k, v in _dicom_mix(path).items()}
    else:
        cols = _text_columns(data_cfg)
        if not cols:
            return None
        from medmm.data.readers import read_table

        df = read_table(path)
        if any(c not in df.columns for c in cols):
            return None
        docs = [_WORD.findall(t.lower()) for t in _texts(df, cols)]
        df_count = Counter(w for d in docs for w in set(d))
        vocab = {w for w, c in df_count.items() if c >= MIN_DOCS}
        tokens = sum(len(d) for d in docs)
        oov = sum(1 for d in docs for w in d if w not in vocab) / max(tokens, 1)
        lengths = np.asarray([len(d) for d in docs], float)
        payload["text"] = {"docs": len(docs), "vocab": sorted(_h(w) for w in vocab), "oov_share": oov,
                           "length_quantiles": [float(q) for q in np.quantile(lengths, _QUANTILES)] if len(docs) else []}
    return write_json_atomic(Path(directory) / FILE, payload)


def shift_report(task: Any, data_path: Path, data_cfg: Mapping[str, Any], run_dir: Path,
                 rows: int | None = None) -> dict[str, Any]:
    """``{"tabular": ..., "text": ..., "dicom": ..., "warnings": [...]}`` for the new data.

    A table is read block by block (``rows`` per block, default :func:`~medmm.data.readers.chunk_rows`), only
    the columns the checks use: per numeric feature a sum and a count, per categorical feature a count, per
    document its word counts (4 bytes per document for the length quantiles); never the table."""
    from medmm.io import read_json

    out: dict[str, Any] = {"warnings": []}
    path = Path(data_path)
    profile_path = Path(run_dir) / "artifacts" / FILE
    profile = read_json(profile_path, format=FORMAT) if profile_path.exists() else {}
    pre = task.preprocessor
    if not path.is_dir():
        tab, text = _table_shift(path, pre, profile.get("text"), _text_columns(data_cfg), rows)
        if tab is not None:
            out["tabular"] = tab.result(out["warnings"])
        if text is not None:
            out["text"] = text.result(out["warnings"])
    if "dicom" in profile and path.is_dir():
        out["dicom"] = _dicom_shift(profile["dicom"], _dicom_mix(path), out["warnings"])
    if not any(k in out for k in ("tabular", "text", "dicom")):
        out["note"] = "no training profile for these inputs (runs trained before medmm stored one)"
    return out


def _table_shift(path: Path, pre: Any, train_text: Mapping[str, Any] | None, text_cols: list[str],
                 rows: int | None) -> tuple[TabularShift | None, TextShift | None]:
    """The tabular and text checks of a table, fed block by block (only the columns they read)."""
    from medmm.data.readers import chunk_rows, read_table_chunks

    header = [str(c) for c in next(read_table_chunks(path, 1)).columns]
    tab = TabularShift(pre, header) if pre is not None else None
    text = TextShift(train_text, text_cols) if train_text is not None and all(c in header for c in text_cols) else None
    wanted = [*(tab.columns if tab is not None else []), *(text_cols if text is not None else [])]
    wanted = [c for c in dict.fromkeys(wanted) if c in header]
    if tab is None and text is None:
        return None, None
    if not wanted:  # no feature column in the data: each check on its row count alone
        n = sum(len(b) for b in read_table_chunks(path, rows or chunk_rows(), columns=header[:1]))
        if tab is not None:
            tab.rows = n
        return tab, text
    for block in read_table_chunks(path, rows or chunk_rows(), columns=wanted):
        if tab is not None:
            tab.add(block)
        if text is not None:
            text.add(block)
    return tab, text


class TabularShift:
    """Standardized mean differences and unseen categories, block by block. Per numeric feature an exact
    running sum (``math.fsum`` of each block and its rounding residual) and a count; the mean is the correctly
    rounded mean of every finite value, which equals numpy's pairwise ``mean`` up to its last bits."""

    def __init__(self, pre: Any, header: list[str]) -> None:
        self.pre = pre
        self.numeric = [(i, c) for i, c in enumerate(pre.numeric) if c in header]
        self.categorical = [(c, set(cats)) for c, cats in zip(pre.categorical, pre.categories) if c in header]
        self.columns = [c for _, c in self.numeric] + [c for c, _ in self.categorical]
        self.partials: dict[str, list[float]] = {c: [] for _, c in self.numeric}
        self.counts: dict[str, int] = {c: 0 for _, c in self.numeric}
        self.unseen: dict[str, int] = {c: 0 for c, _ in self.categorical}
        self.rows = 0

    def add(self, df: Any) -> None:
        from medmm.data.tabular.preprocess import category_strings, to_float

        self.rows += len(df)
        for _, col in self.numeric:
            x = to_float(df[col], col)
            x = x[np.isfinite(x)]
            if x.size:
                values = x.tolist()
                s = math.fsum(values)
                values.append(-s)
                self.partials[col] += [s, math.fsum(values)]  # the block's sum and what its rounding left out
                self.counts[col] += int(x.size)
        for col, cats in self.categorical:
            self.unseen[col] += sum(1 for v in category_strings(df[col]) if v == v and v is not None and v not in cats)

    def result(self, warnings: list[str]) -> dict[str, Any]:
        pre, rows = self.pre, []
        for i, col in self.numeric:
            n = self.counts[col]
            smd = float((math.fsum(self.partials[col]) / n - pre.means[i]) / pre.scales[i]) if n else math.nan
            rows.append({"feature": col, "smd": smd, "missing_share": float(1 - n / max(self.rows, 1))})
            if math.isfinite(smd) and abs(smd) > SMD_WARN:
                warnings.append(f"feature {col!r}: standardized mean difference {smd:+.2f} vs training")
        for col, n in self.unseen.items():
            if n:
                warnings.append(f"feature {col!r}: {n} value(s) of categories never seen in training")
        return {"numeric": rows, "unseen_categories": dict(self.unseen)}


class TextShift:
    """Share of words never seen in training and the length quantiles, block by block: counts, and each
    document's word count (``uint32``, 4 bytes per document)."""

    def __init__(self, train: Mapping[str, Any], cols: list[str]) -> None:
        self.train, self.cols, self.vocab = train, cols, set(train["vocab"])
        self.tokens = self.oov = 0
        self.lengths: list[np.ndarray] = []

    def add(self, df: Any) -> None:
        docs = [_WORD.findall(t.lower()) for t in _texts(df, self.cols)]
        self.tokens += sum(len(d) for d in docs)
        self.oov += sum(1 for d in docs for w in d if _h(w) not in self.vocab)
        self.lengths.append(np.fromiter((len(d) for d in docs), dtype=np.uint32, count=len(docs)))

    def result(self, warnings: list[str]) -> dict[str, Any]:
        lengths = np.concatenate(self.lengths).astype(float) if self.lengths else np.zeros(0)
        return _text_summary(self.train, self.oov / max(self.tokens, 1), lengths, warnings)


def _text_summary(train: Mapping[str, Any], oov: float, lengths: np.ndarray, warnings: list[str]) -> dict[str, Any]:
    q = [float(v) for v in np.quantile(lengths, _QUANTILES)] if len(lengths) else []
    ref = float(train["oov_share"])
    if oov > max(2 * ref, ref + 0.05):
        warnings.append(f"text: {oov:.1%} of words were never (or rarely) seen in training vs {ref:.1%} there")
    tq = train["length_quantiles"]
    if q and tq and tq[2] > 0 and not 0.5 <= q[2] / tq[2] <= 2.0:
        warnings.append(f"text: median length {q[2]:.0f} words vs {tq[2]:.0f} in training")
    return {"oov_share": oov, "train_oov_share": ref, "length_quantiles": q, "train_length_quantiles": tq}


def _dicom_shift(train: Mapping[str, Mapping[str, int]], new: Mapping[str, Counter],
                 warnings: list[str]) -> dict[str, Any]:
    out = {}
    for key, counts in new.items():
        seen = train.get(key, {})
        never = {v: n for v, n in counts.items() if v not in seen}
        out[key] = {"new": dict(counts), "train": dict(seen), "never_seen": never}
        if never:
            warnings.append(f"DICOM {key}: {sum(never.values())} file(s) with values never seen in training: "
                            f"{', '.join(sorted(never))[:200]}")
    return out


def _counts(value: Any) -> str:
    """``{'CR': 8, 'CT': 9}`` as ``CR 8 · CT 9`` (most frequent first): never a raw dict on a page."""
    if isinstance(value, dict):
        return " · ".join(f"{k} {v}" for k, v in sorted(value.items(), key=lambda kv: -kv[1]
                                                          if isinstance(kv[1], (int, float)) else 0))
    return str(value)


def shift_html(report: Mapping[str, Any]) -> str:
    """The shift report as HTML."""
    import html

    e = html.escape
    parts = []
    if report["warnings"]:
        parts.append("<ul>" + "".join(f"<li><strong>warning:</strong> {e(w)}</li>" for w in report["warnings"])
                     + "</ul>")
    else:
        parts.append('<p class="note">No shift warning: every check is within its limit.</p>')
    tab = report.get("tabular")
    if tab and tab["numeric"]:
        rows = "".join(f"<tr><td>{e(r['feature'])}</td><td class=\"num\">{r['smd']:+.3f}</td>"
                       f"<td class=\"num\">{r['missing_share']:.1%}</td></tr>" for r in tab["numeric"])
        parts.append("<table><tr><th>feature</th><th>standardized mean difference</th><th>missing</th></tr>"
                     f"{rows}</table><p class=\"note\">|SMD| above {SMD_WARN} is warned about.</p>")
    if report.get("text"):
        t = report["text"]
        parts.append(f"<p>Words never seen in ≥ {MIN_DOCS} training documents: {t['oov_share']:.1%} "
                     f"(training: {t['train_oov_share']:.1%}). Length quantiles (10/25/50/75/90%, words): "
                     f"{e(', '.join(str(round(v)) for v in t['length_quantiles']))} vs training "
                     f"{e(', '.join(str(round(v)) for v in t['train_length_quantiles']))}.</p>")
    if report.get("dicom"):
        rows = "".join(f"<tr><td>{e(k)}</td><td>{e(_counts(v['new']))}</td><td>{e(_counts(v['train']))}</td></tr>"
                       for k, v in report["dicom"].items())
        parts.append(f"<table><tr><th>attribute</th><th>new data (files)</th><th>training (files)</th></tr>{rows}"
                     "</table>")
    if report.get("note"):
        parts.append(f'<p class="note">{e(report["note"])}</p>')
    return "\n".join(parts)
