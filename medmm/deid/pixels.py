"""Burned-in text in pixel data: find it with OCR, blank it, re-encode, and check the result.

Which files: every file whose modality or SOP class often carries burned-in text (ultrasound,
secondary capture, angiography, endoscopy, photographs, "other"), any file marked
``BurnedInAnnotation=YES``, and with ``--pixels scan-all`` every file with pixel data.

The OCR engine is RapidOCR (``rapidocr-onnxruntime``: PaddleOCR's detection and recognition
models for Chinese and English, shipped inside the wheel, run by onnxruntime; nothing is
downloaded). Up to :data:`MAX_FRAMES` frames, evenly spaced, are read per file; detected boxes
(padded) are blanked on every frame with the darkest displayed value, plus the vendor's known
annotation band where one is listed in :data:`KNOWN_BANDS`. The blanked pixels are re-encoded
in the source transfer syntax when it is lossless and an encoder is installed (RLE, JPEG 2000
lossless), else stored uncompressed (Explicit VR Little Endian: lossless; a lossy source is
decoded once and not compressed again, which the result says). The re-encoded data are
decoded back and read again (the second pass); only when it finds no text does the file get
``BurnedInAnnotation=NO`` and the Clean Pixel Data code (DCM 113101).

Nothing here prints or logs what was read: texts go back to the caller, which compares them
with the source identifiers and never shows them.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from medmm.errors import MedmmError

__all__ = ["KNOWN_BANDS", "MAX_FRAMES", "POLICIES", "PixelOutcome", "TextReader", "clean_pixels",
           "display_image", "frames_first", "in_scope", "known_band", "mark_clean", "sample_frames"]

POLICIES = ("blank", "skip", "keep", "scan-all")
MAX_FRAMES = 5
PAD = 6  # pixels added around each detected box
MAX_ROUNDS = 3  # blank, read again, blank what is left ...; then give up on the file
DET_MAX_SIDE = 2000  # OCR detection runs at the image's size, the long side capped here (RapidOCR's own cap)
MODALITIES = frozenset({"US", "IVUS", "SC", "XA", "RF", "ES", "XC", "GM", "OT", "DOC", "SM", "OP", "OPT"})
# SOP class prefixes: secondary capture (x.7.*), encapsulated documents (x.104.*), ultrasound (x.6.*,
# x.3.1), X-ray angiography (x.12.*), visible light (x.77.*)
SOP_PREFIXES = tuple(f"1.2.840.10008.5.1.4.1.1.{s}" for s in ("7", "104.", "6.", "3.1", "12.", "77."))
# (manufacturer word, modality) -> fraction of rows at the top that is the vendor's text band.
# Philips ultrasound: rows 0-59 of 600 on pydicom-data's OBXXXX1A*.dcm (name, date, time, ID).
KNOWN_BANDS: dict[tuple[str, str], float] = {("PHILIPS", "US"): 0.1}
CLEAN_PIXEL_CODE = ("113101", "Clean Pixel Data Option")
_LOSSLESS_ENCODABLE = {"1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.90"}  # RLE, JPEG 2000 lossless
_LOSSY = {"1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.51", "1.2.840.10008.1.2.4.81",
          "1.2.840.10008.1.2.4.91", "1.2.840.10008.1.2.4.203", "1.2.840.10008.1.2.4.100",
          "1.2.840.10008.1.2.4.101", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.103"}
_NATIVE = {"1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2"}


@dataclass
class PixelOutcome:
    """What the pixel pass did to one file (``texts_*`` are for comparison only: never show them)."""

    scanned: bool = False
    blanked: bool = False
    skip: str | None = None  # reason the file must not be written
    reencoded: str = ""  # "", "same", "uncompressed (lossless)" or "uncompressed (lossy source, ...)"
    texts_before: list[str] = field(default_factory=list, repr=False)
    texts_after: list[str] = field(default_factory=list, repr=False)


class TextReader:
    """RapidOCR, loaded once; a one-line error naming the ``deid`` extra when it is missing.

    ``threads``: onnxruntime's threads per model run (``None``: the engine's default, every core).
    ``medmm pull`` gives 1: its other threads de-identify and retrieve meanwhile, and a run spread
    over cores that are busy waits on the slowest (measured: 0.40 s vs 0.6-0.9 s per 1024x256
    secondary capture on the shared 2-core VM, load 14)."""

    def __init__(self, threads: int | None = None) -> None:
        try:
            from rapidocr_onnxruntime import RapidOCR
        except ModuleNotFoundError:
            raise MedmmError("the pixel pass of medmm deid needs rapidocr-onnxruntime: pip install "
                             "'medmm[deid]' (or --pixels keep to leave pixels unscanned)") from None
        import logging

        # Detection at the image's own size (the long side capped at DET_MAX_SIDE), never upscaled: the
        # engine's default scales the SHORT side up to 736 px, 8.3x the pixels of a 1024x256 secondary
        # capture (the detector's cost) for no recall (bench/deid_pixels.py: 29/29 known strings read).
        kwargs = {} if threads is None else {"intra_op_num_threads": threads, "inter_op_num_threads": 1}
        self._engine = RapidOCR(det_limit_type="max", det_limit_side_len=DET_MAX_SIDE, **kwargs)
        logging.getLogger("RapidOCR").setLevel(logging.ERROR)  # it logs nothing we need

    def read(self, image: Any) -> list[tuple[tuple[int, int, int, int], str]]:
        """Boxes ``(x0, y0, x1, y1)`` and their text, for regions the recogniser reads as text (its
        own score threshold: a detected box of texture that reads as nothing is not text)."""
        found, _ = self._engine(image, use_det=True, use_cls=False, use_rec=True)
        return [(_bbox(b), str(t)) for b, t, _score in (found or [])]


def _bbox(points: Any) -> tuple[int, int, int, int]:
    xs, ys = [p[0] for p in points], [p[1] for p in points]
    return int(min(xs)), int(min(ys)), int(max(xs)) + 1, int(max(ys)) + 1


def in_scope(ds: Any, scan_all: bool = False) -> bool:
    """Whether ``ds`` gets the pixel pass: a modality / SOP class that often carries burned-in text,
    ``BurnedInAnnotation=YES``, or ``scan_all``."""
    if scan_all:
        return True
    modality = str(ds.get("Modality", "") or "").strip().upper()
    sop = str(ds.get("SOPClassUID", "") or "")
    burned = str(ds.get("BurnedInAnnotation", "") or "").strip().upper() == "YES"
    return burned or modality in MODALITIES or sop.startswith(SOP_PREFIXES)


def frames_first(ds: Any, arr: Any) -> tuple[Any, int]:
    """``arr`` as ``(frames, rows, cols[, samples])`` and the frame count."""
    n = int(ds.get("NumberOfFrames", 1) or 1)
    return (arr if n > 1 else arr[None]), n


def display_image(ds: Any, frame: Any) -> Any:
    """One frame as a uint8 image as a viewer shows it (palette applied, VOI LUT / window, MONOCHROME1
    inverted, min-max scaled)."""
    import numpy as np
    from pydicom.pixels import apply_color_lut, apply_voi_lut

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    img = frame
    if photometric == "PALETTE COLOR":
        img = apply_color_lut(frame, ds)
    elif photometric.startswith("MONOCHROME"):
        try:
            img = apply_voi_lut(frame, ds)
        except Exception:  # noqa: BLE001 - a broken VOI module: plain min-max below
            img = frame
    img = np.asarray(img, dtype=np.float32)
    lo, hi = float(img.min()), float(img.max())
    img = (img - lo) / (hi - lo) * 255.0 if hi > lo else np.zeros_like(img)
    if photometric == "MONOCHROME1":
        img = 255.0 - img
    return np.ascontiguousarray(img.astype(np.uint8))


def sample_frames(n: int) -> list[int]:
    """The frames read by OCR: all of them up to MAX_FRAMES, else MAX_FRAMES evenly spaced."""
    if n <= MAX_FRAMES:
        return list(range(n))
    return sorted({round(i * (n - 1) / (MAX_FRAMES - 1)) for i in range(MAX_FRAMES)})


def _fill_value(ds: Any, arr: Any) -> Any:
    import numpy as np

    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        values = np.unique(arr)
        rgb = np.asarray(apply_color_lut(values, ds), dtype=np.float64).reshape(len(values), -1)
        return values[int(rgb.sum(axis=1).argmin())]
    if photometric == "MONOCHROME1":
        return arr.max()
    if arr.ndim >= 3 and arr.shape[-1] == 3 and photometric not in ("MONOCHROME2",):
        return 0
    return arr.min()


def _blank(ds: Any, arr: Any, boxes: Sequence[tuple[int, int, int, int]]) -> Any:
    """``arr`` (frames first) with every box blanked on every frame, plus the vendor band."""
    rows, cols = arr.shape[1], arr.shape[2]
    out = arr.copy()
    fill = _fill_value(ds, arr)
    for x0, y0, x1, y1 in boxes:
        out[:, max(0, y0 - PAD):min(rows, y1 + PAD), max(0, x0 - PAD):min(cols, x1 + PAD)] = fill
    band = known_band(ds)
    if band:
        out[:, : int(round(rows * band))] = fill
    return out


def known_band(ds: Any) -> float:
    """The top-band fraction listed for this file's manufacturer and modality, else 0."""
    maker = str(ds.get("Manufacturer", "") or "").upper()
    modality = str(ds.get("Modality", "") or "").strip().upper()
    bands = (f for (word, mod), f in KNOWN_BANDS.items() if word in maker and mod == modality)
    return max(bands, default=0.0)


def _write_pixels(ds: Any, arr: Any, n_frames: int) -> str:
    """Put ``arr`` (frames first) back into ``ds``; returns how it was encoded."""
    syntax = str(ds.file_meta.get("TransferSyntaxUID", "") or "")
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    data = arr if n_frames > 1 else arr[0]
    if photometric.startswith("YBR") or photometric == "":
        photometric = "RGB" if data.ndim == (4 if n_frames > 1 else 3) else "MONOCHROME2"
    bits = int(ds.get("BitsStored", 8) or 8)
    if syntax in _LOSSLESS_ENCODABLE:
        try:
            kwargs = {"photometric_interpretation": photometric} if syntax.endswith("4.90") else {}
            ds.PhotometricInterpretation = photometric
            ds.compress(syntax, data, generate_instance_uid=False, **kwargs)
            return "same"
        except Exception:  # noqa: BLE001 - no encoder for this image: lossless uncompressed below
            pass
    if syntax == "1.2.840.10008.1.2.2":  # big endian: pydicom writes new pixel data little endian only
        ds.file_meta.TransferSyntaxUID = "1.2.840.10008.1.2.1"
    ds.set_pixel_data(data, photometric, bits, generate_instance_uid=False)
    if syntax in _LOSSY:
        return "uncompressed (lossy source, not recompressed)"
    return "same" if syntax in _NATIVE and syntax != "1.2.840.10008.1.2.2" else "uncompressed (lossless)"


def _read_texts(reader: TextReader, ds: Any, arr: Any, frames: list[int]) -> tuple[list[Any], list[str]]:
    boxes: list[Any] = []
    texts: list[str] = []
    for f in frames:
        for box, text in reader.read(display_image(ds, arr[f])):
            boxes.append(box)
            texts.append(text)
    return boxes, texts


def clean_pixels(ds: Any, reader: TextReader, policy: str) -> PixelOutcome:
    """Run the pixel pass on ``ds`` in place (``policy``: ``blank`` / ``skip`` / ``scan-all``)."""
    import numpy as np

    out = PixelOutcome(scanned=True)
    if "PixelData" not in ds:
        if "EncapsulatedDocument" in ds:
            out.skip = "encapsulated document (text cannot be checked)"
        return out
    ds.pixel_array_options(as_rgb=True)
    arr, n = frames_first(ds, np.asarray(ds.pixel_array))
    frames = sample_frames(n)
    boxes, out.texts_before = _read_texts(reader, ds, arr, frames)
    if not boxes and not known_band(ds):
        return out
    if policy == "skip":
        out.skip = "text found in the pixels (--pixels skip)"
        return out
    for _round in range(MAX_ROUNDS):
        arr = _blank(ds, arr, boxes)
        out.reencoded = _write_pixels(ds, arr, n)
        ds.pixel_array_options(as_rgb=True)
        back, _ = frames_first(ds, np.asarray(ds.pixel_array))  # the second pass reads what will be written
        boxes, out.texts_after = _read_texts(reader, ds, back, frames)
        if not boxes:
            out.blanked = True
            return out
        arr = back
    out.skip = "text remains in the pixels after blanking"
    return out


def mark_clean(ds: Any) -> None:
    """``BurnedInAnnotation=NO`` and the Clean Pixel Data code: only after a pass found no text."""
    from pydicom.dataset import Dataset

    ds.BurnedInAnnotation = "NO"
    items = list(ds.get("DeidentificationMethodCodeSequence", []) or [])
    if not any(str(i.get("CodeValue", "")) == CLEAN_PIXEL_CODE[0] for i in items):
        item = Dataset()
        item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = CLEAN_PIXEL_CODE[0], "DCM", \
            CLEAN_PIXEL_CODE[1]
        items.append(item)
    ds.DeidentificationMethodCodeSequence = items
