"""Text: Integrated Gradients on the token-embedding layer, word pieces merged into words.

Baseline: every real, non-special token replaced by the spec's baseline id (the padding token),
``[CLS]`` / ``[SEP]`` kept, so the path runs from "this document with its words removed" to the
document. A word's score is the sum over its pieces and embedding dimensions; IG's
completeness gap (``delta``: sum of attributions minus the change of the explained logit) is
reported per example.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from medmm.explain.core import Attribution, Items, Scorer
from medmm.explain.spec import InputSpec
from medmm.task import pad_id_of

_SP_MARKS = ("\u2581", "\u0120")  # SentencePiece / byte-level BPE word starts


def _content(spec: InputSpec, batch: Any, x: torch.Tensor) -> torch.Tensor:
    """``bool [B, L]``: real tokens that are not special tokens."""
    valid = spec.valid(batch).bool() if spec.valid is not None else torch.ones_like(x, dtype=torch.bool)
    special = torch.zeros_like(valid)
    for sid in spec.special_ids:
        special |= x == sid
    return valid & ~special


def merge_pieces(tokens: Sequence[str]) -> list[tuple[str, list[int]]]:
    """Group word pieces into words: ``[(word, [piece positions])]``.

    WordPiece continuations start with ``##``; SentencePiece / byte-level BPE mark word
    starts instead (``▁`` / ``Ġ``). Plain words (a word-level vocabulary) stay as they are.
    """
    sp = any(t.startswith(_SP_MARKS) for t in tokens)
    words: list[tuple[str, list[int]]] = []
    for pos, tok in enumerate(tokens):
        if sp:
            starts, text = tok.startswith(_SP_MARKS), tok.lstrip("".join(_SP_MARKS))
        else:
            starts, text = not tok.startswith("##"), tok.removeprefix("##")
        if starts or not words:
            words.append((text, [pos]))
        else:
            words[-1] = (words[-1][0] + text, [*words[-1][1], pos])
    return words


def token_items(spec: InputSpec, batch: Any) -> list[Items | None]:
    """Per example: one item per word (its pieces' positions in the padded row)."""
    x = spec.get(batch)
    content = _content(spec, batch, x).cpu().numpy()
    present = None if spec.present is None else spec.present(batch).cpu().numpy()
    ids = x.cpu().numpy()
    out: list[Items | None] = []
    for i in range(x.shape[0]):
        pos = np.flatnonzero(content[i])
        if (present is not None and not present[i]) or not len(pos):
            out.append(None)
            continue
        assert spec.tokens is not None
        words = merge_pieces(spec.tokens([int(t) for t in ids[i, pos]]))
        out.append(Items([w for w, _ in words], [pos[np.asarray(p)] for _, p in words]))
    return out


def integrated_gradients(scorer: Scorer, spec: InputSpec, batch: Any, items: Sequence[Items | None],
                         target: torch.Tensor, *, steps: int, internal_batch_size: int) -> list[Attribution | None]:
    """captum ``LayerIntegratedGradients`` on ``spec.layer``, all examples of the batch at once."""
    from captum.attr import LayerIntegratedGradients

    x = spec.get(batch)
    base = torch.where(_content(spec, batch, x), torch.as_tensor(int(spec.baseline or 0), device=x.device), x)
    lig = LayerIntegratedGradients(scorer.forward_of(spec, batch, target), spec.layer)
    # fusion encodes only the rows where text is present: captum's completeness check would
    # compare those rows with all of them, so it is skipped there
    want_delta = spec.present is None
    res = lig.attribute(x, baselines=base, n_steps=steps, return_convergence_delta=want_delta,
                        internal_batch_size=max(x.shape[0], internal_batch_size))
    attr, delta = res if want_delta else (res, None)
    per_token = attr.detach().float().sum(-1).cpu().numpy()  # [B, L]
    delta = None if delta is None else delta.detach().abs().cpu().numpy()
    if per_token.shape[0] != x.shape[0] and spec.present is not None:
        # the encoder saw only the rows where this input is present (fusion): put them back in place
        rows = np.flatnonzero(spec.present(batch).cpu().numpy())
        full = np.zeros(tuple(x.shape), dtype=np.float32)
        full[rows, :per_token.shape[1]] = per_token
        per_token = full
    if delta is not None and delta.shape[0] != x.shape[0]:
        delta = None
    return _collect(per_token, items, delta)


def _collect(per_token: np.ndarray, items: Sequence[Items | None], delta: np.ndarray | None) -> list[Attribution | None]:
    out: list[Attribution | None] = []
    for i, it in enumerate(items):
        if it is None:
            out.append(None)
            continue
        row = per_token[i].ravel()
        scores = np.array([row[idx].sum() for idx in it.index])
        extra: dict[str, Any] = {"token_scores": [row[idx].tolist() for idx in it.index]}
        if delta is not None:
            extra["delta"] = float(delta[i])
        out.append(Attribution(it, scores, extra))
    return out


def join_windows(words: Sequence[Sequence[tuple[str, float, int]]], overlap: int) -> list[tuple[str, float]]:
    """One document from its windows' ``(word, score, pieces)`` lists, in window order: each
    later window drops the ``overlap`` pieces it shares with the previous one."""
    out: list[tuple[str, float]] = []
    for w, window in enumerate(words):
        skip = overlap if w else 0
        for word, score, pieces in window:
            if skip > 0:
                skip -= pieces
                continue
            out.append((word, score))
    return out


def lexicon(docs: Sequence[tuple[str, Sequence[tuple[str, float]]]], top: int = 15,
            min_docs: int = 2) -> dict[str, list[tuple[str, float, int]]]:
    """Per predicted class, the words with the highest mean attribution over the documents
    that contain them (seen in at least ``min_docs`` documents): ``[(word, mean, n_docs)]``."""
    per_class: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for cls, words in docs:
        seen: dict[str, float] = defaultdict(float)
        for word, score in words:
            seen[word.lower()] += score
        for word, score in seen.items():
            per_class[cls][word].append(score)
    out = {}
    for cls, words in per_class.items():
        rows = [(w, float(np.mean(s)), len(s)) for w, s in words.items() if len(s) >= min_docs]
        out[cls] = sorted(rows, key=lambda r: -r[1])[:top]
    return out


def embedding_layer(encoder: Any) -> Any:
    """The token-embedding module of a text encoder (a vocabulary baseline or a Hugging Face model)."""
    if hasattr(encoder, "embedding"):
        return encoder.embedding
    inner = getattr(encoder, "model", encoder)
    if hasattr(inner, "get_input_embeddings"):
        return inner.get_input_embeddings()
    raise ValueError(f"cannot find the token embeddings of {type(encoder).__name__}")


def token_input(name: str, encoder: Any, tokenizer: Any, *, get: Any, put: Any, valid: Any,
                present: Any = None, window_overlap: int = 0) -> InputSpec:
    """The :class:`InputSpec` of token ids fed to ``encoder``, with ``tokenizer``'s strings."""
    pad = pad_id_of(tokenizer)
    if hasattr(tokenizer, "convert_ids_to_tokens"):
        strings = tokenizer.convert_ids_to_tokens
        special = frozenset(int(i) for i in tokenizer.all_special_ids) - {int(tokenizer.unk_token_id or -1)}
    else:  # SimpleVocab
        def strings(ids: Sequence[int]) -> list[str]:
            return [tokenizer.tokens[i] for i in ids]
        special = frozenset({pad})
    return InputSpec(name=name, kind="tokens", get=get, put=put, layer=embedding_layer(encoder), baseline=pad,
                     baseline_doc="every word replaced by the padding token ([CLS]/[SEP] kept)",
                     tokens=lambda ids: list(strings(list(ids))), special_ids=special | {pad}, valid=valid,
                     present=present, window_overlap=window_overlap)
