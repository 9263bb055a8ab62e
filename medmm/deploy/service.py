"""``medmm serve``: an exported model behind FastAPI + uvicorn (onnxruntime, no torch at request time).

Endpoints: ``POST /predict`` (JSON rows for text and tabular models; DICOM file uploads for image
models), ``GET /health``, ``GET /model`` (manifest and model card), OpenAPI docs at ``/docs``.
Bad requests get a 4xx with a one-line reason (422 wrong fields or types, 415 not DICOM, 413 body
over the limit); request bodies are never logged, and validation errors never echo the input.
The server binds to 127.0.0.1 unless told otherwise and has no authentication of its own: put it
behind the hospital's gateway when it must be reachable from other machines.
"""

# No ``from __future__ import annotations``: FastAPI reads the route signatures at run time.
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from medmm.deploy.manifest import is_export_dir, require
from medmm.errors import MedmmError

log = logging.getLogger("medmm.serve")
EXTRA = "serve"
Cell = str | int | float | bool | None
_DICM = b"DICM"


# --------------------------------------------------------------------------- body limit


class BodyLimit:
    """ASGI middleware: a request body over ``limit`` bytes gets 413 before the app sees it.

    A declared ``Content-Length`` over the limit is refused without reading; a chunked body is
    read up to the limit and then replayed to the app.
    """

    def __init__(self, app: Any, limit: int) -> None:
        self.app, self.limit = app, int(limit)

    async def _refuse(self, send: Any) -> None:
        body = json.dumps({"detail": f"request body over the limit of {self.limit} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if declared is not None and int(declared) > self.limit:
                await self._refuse(send)
                return
        except ValueError:
            await self._refuse(send)
            return
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                await self.app(scope, _replay([message]), send)
                return
            size += len(message.get("body", b""))
            if size > self.limit:
                await self._refuse(send)
                return
            chunks.append(message.get("body", b""))
            more = bool(message.get("more_body"))
        await self.app(scope, _replay([{"type": "http.request", "body": b"".join(chunks), "more_body": False}],
                                      receive), send)


def _replay(messages: list[dict[str, Any]], then: Any = None) -> Callable[[], Any]:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then is not None:
            return await then()
        return {"type": "http.disconnect"}

    return receive


# --------------------------------------------------------------------------- the app


def _rows_out(model: Any, pred: Any) -> list[dict[str, Any]]:
    """``predictions.csv`` rows as JSON objects (numbers as numbers)."""
    from medmm.predictions import prediction_rows

    header, rows = prediction_rows(pred, model.problem, model.label_names)
    out = []
    for row in rows:
        item: dict[str, Any] = {}
        for key, value in zip(header, row):
            if key.startswith("prob_") or key in ("prediction", "risk"):
                value = float(value)
            item[key] = value
        out.append(item)
    for item in out:
        item.update((pred.unit_columns or {}).get(item["id"], {}))
    conf = model.conformal()  # prediction set (class names) or interval, and the refer flag (#32)
    if conf is not None and out:
        from medmm.evaluation.conformal import prediction_columns

        head, extra = prediction_columns(conf, pred.scores, model.label_names or [], pred.set_groups)
        for item, values in zip(out, extra):
            for key, value in zip(head, values):
                item[key] = (bool(value) if key == "abstain" else float(value) if key.startswith(("lower", "upper"))
                             else value if key == "set_thresholds" else [v for v in str(value).split(";") if v])
    return out


def _required_columns(model: Any) -> list[str]:
    """The input columns a row must hold: what the task's runtime reader declares (``columns``)."""
    return [str(c) for c in getattr(model.inputs, "columns", None) or []]


def create_app(model: Any, *, max_body: int = 32 * 1024 * 1024, max_rows: int = 1000) -> Any:
    """The ASGI app serving ``model`` (an :class:`~medmm.deploy.runtime.ExportedModel`)."""
    require("fastapi", EXTRA, "medmm serve")
    from fastapi import FastAPI, File, HTTPException, UploadFile
    from fastapi.exceptions import RequestValidationError
    from fastapi.responses import JSONResponse
    from pydantic import BaseModel, ConfigDict, Field

    from medmm.errors import DataError

    if model.inputs.accepts not in ("rows", "dicom"):  # fusion: image cells are paths relative to a table
        raise MedmmError(f"medmm serve: a {model.task} export predicts a table whose image cells are file paths; "
                         f"use medmm predict EXPORT_DIR --data TABLE")
    manifest = model.manifest
    card_path = model.dir / "model_card.md"
    card = card_path.read_text(encoding="utf-8") if card_path.is_file() else None
    app = FastAPI(title=f"medmm {model.task}: {model.model_name}", version=str(manifest.get("medmm", "?")),
                  description=f"Exported medmm {model.task} model ({manifest.get('problem')}; labels "
                              f"{manifest.get('label_names')}), served with onnxruntime.")

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Any, exc: RequestValidationError) -> Any:  # never echo the request's values
        errors = [{"loc": list(e.get("loc", ())), "msg": e.get("msg", "invalid")} for e in exc.errors()[:20]]
        return JSONResponse({"detail": errors}, status_code=422)

    @app.exception_handler(DataError)
    async def bad_data(_: Any, exc: DataError) -> Any:
        return JSONResponse({"detail": str(exc)}, status_code=422)

    @app.get("/health", summary="Liveness and the model served")
    def health() -> dict[str, Any]:
        return {"status": "ok", "task": model.task, "model": model.model_name}

    @app.get("/model", summary="Manifest (hashes, opset, parity, labels) and model card")
    def model_info() -> dict[str, Any]:
        conf = model.conformal()  # what "set" / "abstain" in a prediction mean (#32)
        if conf is not None:
            from medmm.evaluation.conformal import describe

            return {"manifest": manifest, "model_card": card, "prediction_sets": describe(conf)}
        return {"manifest": manifest, "model_card": card}

    if model.inputs.accepts == "rows":
        required = _required_columns(model)
        id_col = model.cfg.data.id_column
        group = model.group_column()  # optional: picks the prediction-set thresholds of the row's group (#32)
        keep = [*required, *([id_col] if id_col else []), *([group] if group and group not in required else [])]
        text = [str(c) for c in getattr(model.inputs, "text_columns", None) or []]  # must hold strings

        class Rows(BaseModel):
            model_config = ConfigDict(extra="forbid")
            rows: list[dict[str, Cell]] = Field(min_length=1, max_length=max_rows,
                                                description=f"one object per row; needs columns {required}" + (
                                                    f"; optional {group!r}: the prediction set uses that group's "
                                                    "thresholds (absent: the per-class ones, said in "
                                                    "set_thresholds)" if group else ""))

        @app.post("/predict", summary="Predict table rows (JSON)")
        def predict(body: Rows) -> dict[str, Any]:
            for i, row in enumerate(body.rows):
                missing = [c for c in required if c not in row]
                if missing:
                    raise HTTPException(422, f"rows[{i}] lacks column(s) {missing}")
                if text:
                    wrong = [c for c in text if c in row and row[c] is not None and not isinstance(row[c], str)]
                    if wrong:
                        raise HTTPException(422, f"rows[{i}]: column(s) {wrong} must hold text (a string)")
                broken = [c for c in keep if isinstance(row.get(c), str) and not _is_unicode(row[c])]
                if broken:  # JSON's \ud800 escapes decode to lone surrogates, which tokenizers cannot encode (#28)
                    raise HTTPException(422, f"rows[{i}]: column(s) {broken} hold text that is not valid Unicode "
                                             "(a lone surrogate escape)")
            # only the model's inputs and the id go further: labels or other fields are never parsed
            rows = [{k: row[k] for k in keep if k in row} for row in body.rows]
            if id_col:  # rows are keyed by the id column, or by their position when no row has one
                have = [id_col in row and row[id_col] is not None for row in rows]
                if any(have) and not all(have):
                    raise HTTPException(422, f"rows[{have.index(False)}] lacks the id column {id_col!r} "
                                             "that other rows have")
                if not any(have):
                    rows = [{**row, id_col: str(i)} for i, row in enumerate(rows)]
            pred = model.predict_rows(rows)
            return {"model": model.model_name, "predictions": _rows_out(model, pred),
                    "skipped": [{"id": i, "reason": r} for i, r in pred.skipped]}
    else:
        @app.post("/predict", summary="Predict uploaded DICOM files (one instance, or a series / study)")
        def predict_dicom(files: list[UploadFile] = File(..., description="DICOM Part 10 files"),  # noqa: B008
                          ) -> dict[str, Any]:
            if len(files) > max_rows:
                raise HTTPException(422, f"at most {max_rows} files per request")
            from medmm.data.dicom.paths import public_name

            tmp = Path(tempfile.mkdtemp(prefix="medmm-serve-"))
            try:
                names: dict[str, str] = {}
                for i, upload in enumerate(files):
                    data = upload.file.read()
                    if len(data) < 132 or data[128:132] != _DICM:
                        raise HTTPException(415, f"files[{i}] is not a DICOM Part 10 file (no DICM preamble)")
                    rel = f"{i:05d}.dcm"  # never the client's file name as a path
                    (tmp / rel).write_bytes(data)
                    names[rel] = public_name(_safe_name(upload.filename, i), data)  # an id / date: a token
                pred = model.predict_path(tmp)
                rows = _rows_out(model, pred)
                for row in rows:
                    if row["id"] in names:
                        row["id"] = names[row["id"]]
                skipped = [{"file": names.get(p.split("#")[0], "?"), "reason": r} for p, r in pred.skipped]
                if not rows:
                    raise HTTPException(422, "no uploaded file holds a decodable image" +
                                        (f" ({skipped[0]['reason']})" if skipped else ""))
                return {"model": model.model_name, "predictions": rows, "skipped": skipped}
            finally:
                shutil.rmtree(tmp, ignore_errors=True)

    app.state.model = model
    return BodyLimit(app, max_body)


def _is_unicode(text: str) -> bool:
    """False for a string that cannot be written as UTF-8 (it holds a lone surrogate)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _safe_name(name: str | None, i: int) -> str:
    base = Path(name or "").name
    return re.sub(r"[^A-Za-z0-9._-]", "_", base)[:80] or f"file{i}"


# --------------------------------------------------------------------------- running it


def serve_source(source: Path, *, host: str = "127.0.0.1", port: int = 8000, max_body: int = 32 * 1024 * 1024,
                 max_rows: int = 1000, threads: int = 0, quantized: bool = False,
                 registry: Callable[[], Any] | None = None) -> None:
    """Serve an export folder, or a run directory exported into a temporary folder first."""
    import click

    uvicorn = require("uvicorn", EXTRA, "medmm serve")
    require("fastapi", EXTRA, "medmm serve")
    require("multipart", EXTRA, "medmm serve")
    from medmm.deploy.runtime import ExportedModel

    source = Path(source)
    tmp: Path | None = None
    try:
        if not is_export_dir(source):
            if not (source / "run.json").is_file():
                raise MedmmError(f"{source} is neither a medmm export (manifest.json) nor a run directory (run.json)")
            from medmm.deploy.export import export_run

            tmp = Path(tempfile.mkdtemp(prefix="medmm-serve-export-"))
            click.echo(f"medmm serve: exporting {source} first (medmm export {source} keeps the export)", err=True)
            source = export_run(source, tmp / "export", registry=registry() if registry else None, quiet=True)
        model = ExportedModel(source, quantized=quantized, threads=threads)
        app = create_app(model, max_body=max_body, max_rows=max_rows)
        if host not in ("127.0.0.1", "localhost", "::1"):
            click.echo(f"medmm serve: warning: listening on {host}, reachable from other machines; the service "
                       "has no authentication", err=True)
        click.echo(f"medmm serve: {model.task} model {model.model_name} on http://{host}:{port} "
                   f"(docs: /docs; body limit {max_body} bytes)", err=True)
        uvicorn.run(app, host=host, port=port, log_level="info", server_header=False, access_log=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
