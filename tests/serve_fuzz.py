"""A fuzz list for ``medmm serve`` (#28): shortest and longest inputs, empty strings, missing and
extra fields, wrong types, broken bodies. Used by the tests of every exportable task; each
request must get an answer under 500 (a 4xx for what is wrong, a 200 for what is merely odd).

Driven in process through FastAPI's ``TestClient`` with ``raise_server_exceptions=False``, so a
bug answers 500 here exactly as it would over HTTP.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

MARKER = "zebra-marker-7731"  # planted in bad values: a 4xx answer must never echo it


def _value(kind: str, which: str) -> Any:
    text = {"short": "x", "long": "effusion " * 20_000, "empty": "", "space": "   \t\n",
            "unicode": "\U0001F600 \u00e9\u0000\u200b", "surrogate": "\ud800 lone", "marker": MARKER,
            "numeric-text": "1,5", "nan-text": "NaN", "inf-text": "inf"}
    number = {"short": 0, "long": 1e308, "negative": -1e308, "tiny": 5e-324, "huge-int": 10**40, "bool": True,
              "null": None, "text": MARKER, "empty": "", "nested": {"v": MARKER}, "list": [1, 2]}
    table = text if kind == "text" else number
    return table.get(which, which)


def row_payloads(columns: list[str], text_columns: list[str], id_column: str | None,
                 max_rows: int) -> list[tuple[str, bytes]]:
    """``(name, JSON body)`` pairs covering the edges of a rows service."""
    def row(which: str, **extra: Any) -> dict[str, Any]:
        return {c: _value("text" if c in text_columns else "number", which) for c in columns} | extra

    def body(obj: Any) -> bytes:
        return json.dumps(obj, allow_nan=True).encode()

    kinds = ["short", "long"] + (["empty", "space", "unicode", "surrogate", "marker", "numeric-text", "nan-text",
                                   "inf-text"] if text_columns else []) + ["negative", "tiny", "huge-int", "bool",
                                                                           "null", "text", "nested", "list"]
    out = [(f"row-{k}", body({"rows": [row(k)]})) for k in dict.fromkeys(kinds)]
    ok = row("short")
    out += [
        ("one-column-missing", body({"rows": [{k: v for k, v in list(ok.items())[1:]}]})),
        ("empty-row", body({"rows": [{}]})),
        ("extra-field", body({"rows": [ok | {"unexpected": MARKER, "label": 1}]})),
        ("extra-top-level", body({"rows": [ok], "extra": MARKER})),
        ("no-rows-key", body({"data": [ok]})),
        ("rows-empty", body({"rows": []})),
        ("rows-not-list", body({"rows": ok})),
        ("rows-of-numbers", body({"rows": [1, 2, 3]})),
        ("top-level-list", body([ok])),
        ("top-level-null", b"null"),
        ("max-rows", body({"rows": [ok] * max_rows})),
        ("max-rows-plus-one", body({"rows": [ok] * (max_rows + 1)})),
        ("nan-literal", b'{"rows": [{"%s": NaN}]}' % columns[0].encode()),
        ("infinity-literal", b'{"rows": [{"%s": -Infinity}]}' % columns[0].encode()),
        ("invalid-json", b'{"rows": [{'),
        ("not-utf8", b'\xff\xfe\x00{'),
        ("empty-body", b""),
        ("deep-nesting", b'{"rows": [' + b"[" * 50_000 + b"]" * 50_000 + b"]}"),
    ]
    if id_column:
        out += [
            ("duplicate-ids", body({"rows": [ok | {id_column: "a"}, ok | {id_column: "a"}]})),
            ("some-ids", body({"rows": [ok | {id_column: "a"}, ok]})),
            ("numeric-id", body({"rows": [ok | {id_column: 7}]})),
            ("empty-id", body({"rows": [ok | {id_column: ""}]})),
            ("long-id", body({"rows": [ok | {id_column: "i" * 10_000}]})),
            ("nested-id", body({"rows": [ok | {id_column: {"v": MARKER}}]})),
        ]
    return out


def fuzz_rows(app: Any, model: Any, max_rows: int) -> dict[str, int]:
    """Status of every fuzz request against a rows service (``create_app(model)``)."""
    from fastapi.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=False)
    columns = [str(c) for c in getattr(model.inputs, "columns", None) or []]
    texts = [str(c) for c in getattr(model.inputs, "text_columns", None) or []]
    id_col = getattr(model.cfg.data, "id_column", None)
    statuses: dict[str, int] = {}
    for name, payload in row_payloads(columns, texts, id_col, max_rows):
        r = client.post("/predict", content=payload, headers={"content-type": "application/json"})
        statuses[name] = r.status_code
        if r.status_code >= 400:
            assert MARKER not in r.text, (name, r.text[:300])
    for name, kwargs in {"text-plain": {"content": b"rows", "headers": {"content-type": "text/plain"}},
                         "form": {"data": {"rows": "x"}}}.items():
        statuses[name] = client.post("/predict", **kwargs).status_code
    statuses["get-predict"] = client.get("/predict").status_code
    statuses["health"] = client.get("/health").status_code
    return statuses


def fuzz_dicom(app: Any, good: Path, extra: dict[str, Path] | None = None, max_rows: int = 4) -> dict[str, int]:
    """Status of every fuzz request against a DICOM upload service; ``good`` is a readable image file."""
    from fastapi.testclient import TestClient

    client = TestClient(app, raise_server_exceptions=False)
    data = good.read_bytes()
    files: dict[str, list[tuple[str, tuple[str, bytes, str]]]] = {
        "one-good": [("files", ("a.dcm", data, "application/dicom"))],
        "empty-file": [("files", ("e.dcm", b"", "application/dicom"))],
        "not-dicom": [("files", ("n.dcm", b"hello " * 50, "application/dicom"))],
        "preamble-only": [("files", ("p.dcm", b"\0" * 128 + b"DICM", "application/dicom"))],
        "preamble-garbage": [("files", ("g.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 400, "application/dicom"))],
        "truncated": [("files", ("t.dcm", data[: len(data) // 3], "application/dicom"))],
        "good-and-bad": [("files", ("a.dcm", data, "application/dicom")),
                         ("files", ("g.dcm", b"\0" * 128 + b"DICM" + b"\xff" * 400, "application/dicom"))],
        "path-traversal-name": [("files", ("../../" + MARKER + ".dcm", data, "application/dicom"))],
        "no-name": [("files", ("", data, "application/dicom"))],
        "wrong-field": [("upload", ("a.dcm", data, "application/dicom"))],
        "too-many": [("files", (f"{i}.dcm", data, "application/dicom")) for i in range(max_rows + 1)],
    }
    for name, path in (extra or {}).items():
        files[name] = [("files", (path.name, path.read_bytes(), "application/dicom"))]
    statuses: dict[str, int] = {}
    for name, parts in files.items():
        r = client.post("/predict", files=parts)
        statuses[name] = r.status_code
        if r.status_code >= 400:
            assert MARKER not in r.text, (name, r.text[:300])
    statuses["no-files"] = client.post("/predict").status_code
    statuses["json-body"] = client.post("/predict", json={"rows": [{"x": 1}]}).status_code
    statuses["raw-bytes"] = client.post("/predict", content=io.BytesIO(data).read(),
                                        headers={"content-type": "application/dicom"}).status_code
    return statuses


def server_errors(statuses: dict[str, int]) -> dict[str, int]:
    """The requests answered 5xx (the test's failure list)."""
    return {k: v for k, v in statuses.items() if v >= 500}
