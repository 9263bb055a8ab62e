"""DICOM pixel pipeline: decode -> Modality LUT -> VOI LUT / window -> [0, 1] -> resize.

Order of operations for ``load_pixels`` (DICOM PS3.3 C.11, PS3.4 N.2):

1. Decode only the frames needed (``pydicom.pixels.iter_pixels(path, indices=...)``,
   retried from an in-memory dataset when that fails), through whichever pixel-data
   plugins are installed (pylibjpeg-libjpeg / -openjpeg / -rle).
   pydicom converts ``YBR_FULL``/``YBR_FULL_422`` to RGB; the JPEG 2000 decoder undoes
   ``YBR_ICT``/``YBR_RCT``; ``PlanarConfiguration`` is handled by pydicom.
2. Greyscale: Modality LUT (LUT sequence or Rescale Slope/Intercept), then the VOI
   transform: the config's window if set, else the header's VOI LUT Sequence, else its
   first Window Center/Width (honouring VOI LUT Function), else min-max over the
   selected frames. Enhanced multi-frame objects take these attributes from the
   per-frame / shared functional groups. MONOCHROME1 is inverted after the VOI step.
3. Colour (RGB, YBR, PALETTE COLOR): palette LUTs applied, values divided by the
   largest value the stored bit depth allows (colour images are display-ready; windows
   do not apply). ``channels=1`` converts to luma (ITU-R BT.601 weights).
4. Resize with Pillow's antialiased bilinear filter (longest side to ``size``, then
   centred zero padding when ``keep_aspect``), giving ``float32 [C, size, size]``.

Images without any window are scaled min-max per image (not by the Bits Stored range:
many 16-bit images use a few hundred values, which would come out black). A constant
image is legal and maps to zeros; :func:`is_constant` lets callers report it.
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from medmm.data.dicom.scan import quiet_pydicom, short_reason
from medmm.errors import ConfigError, PixelDecodeError

__all__ = [
    "FRAME_MODES",
    "WINDOW_PRESETS",
    "PixelConfig",
    "PixelDecodeError",
    "apply_window",
    "frame_indices",
    "is_constant",
    "load_pixels",
]

WINDOW_PRESETS: dict[str, tuple[float, float]] = {
    # (center, width) in Hounsfield units, the usual radiology defaults
    "lung": (-600.0, 1500.0),
    "mediastinum": (50.0, 350.0),
    "soft": (40.0, 400.0),
    "bone": (400.0, 1800.0),
    "brain": (40.0, 80.0),
}
FRAME_MODES = ("middle", "all", "stack")
_LUMA = np.array([0.299, 0.587, 0.114], dtype=np.float32)
_PIXEL_VALUE_SQ = "PixelValueTransformationSequence"
_FRAME_VOI_SQ = "FrameVOILUTSequence"
_FUNCTIONAL_GROUPS = [0x52009229, 0x52009230]  # Shared / Per-frame Functional Groups
_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_PALETTES: dict[str, np.ndarray] = {}  # palette fingerprint -> RGB table, per process


@dataclass(frozen=True)
class PixelConfig:
    """How DICOM pixels become a network input; hashable, and round-trips through a dict.

    ``window``: ``None`` (header VOI LUT / window, else min-max), ``"minmax"``, a preset
    (``lung``, ``mediastinum``, ``soft``, ``bone``, ``brain``) or ``"<center>,<width>"``.
    ``frames``: ``"middle"`` frame, ``"all"`` (one item per frame, see
    :func:`medmm.data.dicom.scan.expand_frames`) or ``"stack"`` (2.5-D: frames
    middle-1, middle, middle+1 as 3 channels; needs ``channels=3``).
    """

    size: int = 224
    channels: int = 1
    window: str | None = None
    frames: str = "middle"
    keep_aspect: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.window, str) and self.window.strip().lower() in ("", "header", "none"):
            object.__setattr__(self, "window", None)
        elif isinstance(self.window, str):
            object.__setattr__(self, "window", self.window.strip().lower())
        if not isinstance(self.size, int) or not 8 <= self.size <= 4096:
            raise ConfigError(f"pixel size must be an integer in [8, 4096], got {self.size!r}")
        if self.channels not in (1, 3):
            raise ConfigError(f"channels must be 1 or 3, got {self.channels!r}")
        if self.frames not in FRAME_MODES:
            raise ConfigError(f"frames must be one of {', '.join(FRAME_MODES)}, got {self.frames!r}")
        if self.frames == "stack" and self.channels != 3:
            raise ConfigError("frames='stack' puts 3 frames into 3 channels: set channels=3")
        self.window_spec()  # validates

    def window_spec(self) -> str | tuple[float, float] | None:
        """``None`` (header), ``"minmax"``, or an explicit ``(center, width)``."""
        window = self.window
        if window is None or window == "minmax":
            return window
        if window in WINDOW_PRESETS:
            return WINDOW_PRESETS[window]
        try:
            center, width = (float(v) for v in window.split(","))
        except ValueError:
            presets = ", ".join(WINDOW_PRESETS)
            raise ConfigError(
                f"window must be a preset ({presets}), 'minmax', or '<center>,<width>'; got {window!r}"
            ) from None
        if not (np.isfinite(center) and np.isfinite(width) and width >= 1):
            raise ConfigError(f"window width must be >= 1 and finite, got {window!r}")
        return center, width

    @property
    def shape(self) -> tuple[int, int, int]:
        """Output array shape ``(C, H, W)``."""
        return self.channels, self.size, self.size

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for configs and cache keys."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PixelConfig:
        """Build from a mapping; unknown keys are a :class:`ConfigError`."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(
                f"unknown pixel option(s): {', '.join(unknown)}; known: {', '.join(sorted(known))}"
            )
        return cls(**dict(data))


def frame_indices(n_frames: int, mode: str, frame: int | None = None) -> list[int]:
    """Frame indices to decode: the given frame, the middle one, or 3 around the middle."""
    if frame is not None:
        if not 0 <= frame < n_frames:
            raise IndexError(f"frame {frame} out of range for {n_frames} frame(s)")
        return [frame]
    middle = n_frames // 2
    if mode == "stack":
        return [max(middle - 1, 0), middle, min(middle + 1, n_frames - 1)]
    return [middle]


def load_pixels(
    path: Path, cfg: PixelConfig, frame: int | None = None, *, n_frames: int | None = None
) -> np.ndarray:
    """Decode and preprocess one image to ``float32 [C, size, size]`` in ``[0, 1]``.

    ``frame`` selects one frame (``frames="all"`` items); otherwise ``cfg.frames``
    decides. Pass ``n_frames`` (known from the scan) to avoid a second header read.
    Raises :class:`PixelDecodeError` for anything that cannot become a valid image.
    """
    try:
        with quiet_pydicom():
            ds, stack = _decode(Path(path), cfg, frame, n_frames)
            image = _to_unit_range(stack, ds, cfg)
        out = _resize(_planes(image, cfg), cfg)
    except PixelDecodeError:
        raise
    except Exception as exc:  # decoder/plugin errors are per-file failures
        raise PixelDecodeError(path, short_reason(exc)) from exc
    if not np.isfinite(out).all():
        raise PixelDecodeError(path, "non-finite pixel values after preprocessing")
    np.clip(out, 0.0, 1.0, out=out)
    return np.repeat(out, cfg.channels, axis=0) if len(out) < cfg.channels else out


def is_constant(image: np.ndarray) -> bool:
    """True when every value is equal (legal, but worth reporting: it carries no signal)."""
    return bool(image.size == 0 or image.min() == image.max())


def apply_window(x: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM VOI window (PS3.3 C.11.2.1.2) mapped to ``[0, 1]`` as float32.

    ``LINEAR`` (default), ``LINEAR_EXACT`` and ``SIGMOID`` are supported.
    """
    return _window_inplace(np.array(x, dtype=np.float32), center, width, function)


def _window_inplace(y: np.ndarray, center: float, width: float, function: str) -> np.ndarray:
    """:func:`apply_window` overwriting the float32 array ``y`` (large images: fewer copies)."""
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":  # 1 / (1 + exp(-4 (x - c) / w))
        y -= np.float32(center)
        y *= np.float32(-4.0 / width)
        np.exp(y, out=y)
        y += np.float32(1.0)
        np.reciprocal(y, out=y)
        return y
    if function == "LINEAR_EXACT":  # (x - c) / w + 0.5
        scale, offset = 1.0 / width, 0.5 - center / width
    elif width <= 1:  # LINEAR with width 1 is a threshold at c - 0.5
        y[...] = y > center - 0.5
        return y
    else:  # (x - (c - 0.5)) / (w - 1) + 0.5
        scale, offset = 1.0 / (width - 1), 0.5 - (center - 0.5) / (width - 1)
    y *= np.float32(scale)
    y += np.float32(offset)
    return np.clip(y, 0.0, 1.0, out=y)


# -- decoding ---------------------------------------------------------------------------


def _decode(path: Path, cfg: PixelConfig, frame: int | None, n_frames: int | None):
    """Read the needed frames; returns the image-pixel dataset and ``(F, H, W[, S])``.

    Frames are decoded straight from the file (only the frames asked for). pydicom's
    path-based reader does not handle deflated files and is stricter about malformed
    Basic Offset Tables than its in-memory one, so any failure is retried in memory.
    """

    if n_frames is None:
        header = read_dataset(path, stop_before_pixels=True, specific_tags=["NumberOfFrames"])
        n_frames = max(1, int(header.get("NumberOfFrames", 1) or 1))
    wanted = frame_indices(n_frames, cfg.frames, frame)
    unique = sorted(set(wanted))
    try:
        ds, decoded = _decode_from_file(path, unique)
    except Exception as first:  # noqa: BLE001 - retried below, first error reported
        try:
            ds, decoded = _decode_in_memory(path, unique)
        except Exception:  # noqa: BLE001
            raise first from None
    stack = np.stack([decoded[i] for i in wanted])
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    if stack.ndim != (4 if samples > 1 else 3):
        raise PixelDecodeError(path, f"unexpected decoded shape {stack.shape[1:]}")
    return _frame_view(ds, wanted[len(wanted) // 2]), stack


def _decode_from_file(path: Path, indices: list[int]):
    from pydicom.dataset import Dataset
    from pydicom.pixels import iter_pixels

    ds = Dataset()
    frames = iter_pixels(path, ds_out=ds, indices=indices, specific_tags=_FUNCTIONAL_GROUPS)
    decoded = dict(zip(indices, frames, strict=True))
    return ds, decoded


def _decode_in_memory(path: Path, indices: list[int]):
    from pydicom.pixels import pixel_array

    ds = read_dataset(path)
    return ds, {i: pixel_array(ds, index=i) for i in indices}


def read_dataset(path: Path, **kwargs: Any):
    """``dcmread``, falling back to a file without the 128-byte preamble (``force=True``).

    A bare data set has no file meta: its transfer syntax is set from the encoding pydicom
    detected (implicit / explicit VR, little / big endian), so its pixels decode.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        return dcmread(path, **kwargs)
    except InvalidDicomError:
        ds = dcmread(path, force=True, **kwargs)
    if not ds.file_meta.get("TransferSyntaxUID"):
        from medmm.data.dicom.scan import ENCODING_SYNTAX

        syntax = ENCODING_SYNTAX.get(tuple(getattr(ds, "original_encoding", ()) or ()))
        if syntax is None:
            raise PixelDecodeError(path, "no DICM preamble and no transfer syntax")
        ds.file_meta.TransferSyntaxUID = syntax
    return ds


def _frame_view(ds, index: int):
    """Dataset whose top-level LUT attributes are those in force for frame ``index``."""
    groups = [ds.get("SharedFunctionalGroupsSequence"), ds.get("PerFrameFunctionalGroupsSequence")]
    if not any(groups):
        return ds
    view = ds.copy()
    for seq, item_index in zip(groups, (0, index)):
        if not seq or item_index >= len(seq):
            continue
        for keyword in (_PIXEL_VALUE_SQ, _FRAME_VOI_SQ):
            inner = seq[item_index].get(keyword)
            if inner:
                for element in inner[0]:
                    view[element.tag] = element
    return view


# -- intensity --------------------------------------------------------------------------


def _to_unit_range(stack: np.ndarray, ds, cfg: PixelConfig) -> np.ndarray:
    """Map decoded values to ``[0, 1]``: ``(F, H, W)`` for grey, ``(F, H, W, 3)`` for colour."""
    photometric = str(ds.get("PhotometricInterpretation", "")).upper()
    if photometric == "PALETTE COLOR":
        return _palette_to_rgb(stack, ds)
    if stack.ndim == 4:  # RGB (YBR already converted by pydicom / the J2K decoder)
        bits = int(ds.get("BitsStored", 8) or 8)
        return (stack.astype(np.float64) / (2**bits - 1)).astype(np.float32)
    image = _voi(_modality_lut(stack, ds), ds, cfg)
    if photometric == "MONOCHROME1":
        np.subtract(np.float32(1.0), image, out=image)
    return image


def _palette_to_rgb(stack: np.ndarray, ds) -> np.ndarray:
    """Map indices through the palette; the ``(n, 3)`` table is built once per palette."""
    n_entries, first, _ = (int(v) for v in ds.RedPaletteColorLookupTableDescriptor)
    n_entries = n_entries or 65536
    key = _palette_fingerprint(ds)
    table = _PALETTES.get(key)
    if table is None:
        table = _palette_table(ds, first, n_entries)
        if len(_PALETTES) >= 32:
            _PALETTES.pop(next(iter(_PALETTES)))
        _PALETTES[key] = table
    return table[np.clip(stack.astype(np.int64) - first, 0, n_entries - 1)]


def _palette_fingerprint(ds) -> str:
    """Hash of the palette elements (0028,1101)-(0028,1223) and the byte order."""
    digest = hashlib.sha1(str(_big_endian(ds)).encode())
    for element in ds:
        if 0x00281101 <= element.tag <= 0x00281223:
            value = element.value
            digest.update(value if isinstance(value, bytes) else repr(value).encode())
    return digest.hexdigest()


def _palette_table(ds, first: int, n_entries: int) -> np.ndarray:
    """Float32 ``(n_entries, 3)`` RGB table in [0, 1]; expanding segmented LUTs is slow."""
    from pydicom.pixels import apply_color_lut

    if _big_endian(ds) and _palette_lut_ignores_endianness():
        _swap_palette_bytes(ds)
    bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    indices = np.arange(first, first + n_entries, dtype=np.int64)
    return apply_color_lut(indices, ds)[:, :3].astype(np.float32) / np.float32(2**bits - 1)


def _big_endian(ds) -> bool:
    meta = getattr(ds, "file_meta", None)
    return meta is not None and meta.get("TransferSyntaxUID") == _BIG_ENDIAN


def _swap_palette_bytes(ds) -> None:
    """Byte-swap 16-bit (non-segmented) palette LUT data in place (``ds`` is ours)."""
    n_entries = int(ds.RedPaletteColorLookupTableDescriptor[0]) or 65536
    for colour in ("Red", "Green", "Blue", "Alpha"):
        keyword = f"{colour}PaletteColorLookupTableData"
        data = ds.get(keyword)
        if isinstance(data, bytes) and len(data) == 2 * n_entries:
            ds[keyword].value = np.frombuffer(data, dtype=">u2").astype("<u2").tobytes()


@functools.cache
def _palette_lut_ignores_endianness() -> bool:
    """Probe for pydicom reading big-endian palette LUT data as little-endian (3.0.x).

    A behavioural check rather than a version pin, so a fixed pydicom is used as is.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.pixels import apply_color_lut

    probe = Dataset()
    probe.file_meta = FileMetaDataset()
    probe.file_meta.TransferSyntaxUID = _BIG_ENDIAN
    probe.set_original_encoding(False, False)
    probe.PhotometricInterpretation = "PALETTE COLOR"
    probe.BitsStored = 8
    for colour in ("Red", "Green", "Blue"):
        setattr(probe, f"{colour}PaletteColorLookupTableDescriptor", [2, 0, 16])
        setattr(probe, f"{colour}PaletteColorLookupTableData", b"\x01\x00\x01\x00")  # BE 256, 256
    try:
        return int(apply_color_lut(np.zeros(1, dtype=np.uint8), probe)[0, 0]) == 1
    except Exception:  # noqa: BLE001 - if the probe itself fails, do not touch the data
        return False


def _modality_lut(stack: np.ndarray, ds) -> np.ndarray:
    if ds.get("ModalityLUTSequence"):
        from pydicom.pixels import apply_modality_lut

        return apply_modality_lut(stack, ds).astype(np.float32)
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    values = stack.astype(np.float32)
    if slope != 1.0:
        values *= np.float32(slope)
    if intercept != 0.0:
        values += np.float32(intercept)
    return values


def _voi(values: np.ndarray, ds, cfg: PixelConfig) -> np.ndarray:
    spec = cfg.window_spec()
    if isinstance(spec, tuple):
        return _window_inplace(values, *spec, "LINEAR")
    if spec is None:
        if ds.get("VOILUTSequence"):
            return _voi_lut_sequence(values, ds)
        header = _header_window(ds)
        if header is not None:
            return _window_inplace(values, *header)
    return _minmax(values)


def _header_window(ds) -> tuple[float, float, str] | None:
    """First Window Center/Width pair (and VOI LUT Function), if valid."""
    center, width = ds.get("WindowCenter"), ds.get("WindowWidth")
    if center is None or width is None or center == "" or width == "":
        return None
    center = float(center[0] if _is_multi(center) else center)
    width = float(width[0] if _is_multi(width) else width)
    if not (np.isfinite(center) and np.isfinite(width) and width > 0):
        return None
    return center, width, str(ds.get("VOILUTFunction", "LINEAR") or "LINEAR")


def _is_multi(value: Any) -> bool:
    return isinstance(value, Sequence) and not isinstance(value, str)


def _voi_lut_sequence(values: np.ndarray, ds) -> np.ndarray:
    """Apply the first VOI LUT and rescale by the LUT's own output range."""
    from pydicom.pixels import apply_voi

    n_entries, first, _ = (int(v) for v in ds.VOILUTSequence[0].LUTDescriptor)
    n_entries = n_entries or 65536
    table = apply_voi(np.arange(first, first + n_entries), ds).astype(np.float32)
    low, high = float(table.min()), float(table.max())
    if high <= low:
        return _minmax(values)
    mapped = apply_voi(np.rint(values).astype(np.int64), ds).astype(np.float32)
    return (mapped - low) / np.float32(high - low)


def _minmax(values: np.ndarray) -> np.ndarray:
    low, high = float(values.min()), float(values.max())
    if not (np.isfinite(low) and np.isfinite(high)):
        raise ValueError("non-finite pixel values")
    if high <= low:
        return np.zeros_like(values, dtype=np.float32)
    values -= np.float32(low)
    values *= np.float32(1.0 / (high - low))
    return values


# -- channels and geometry ----------------------------------------------------------------


def _planes(image: np.ndarray, cfg: PixelConfig) -> np.ndarray:
    """``(F, H, W[, 3])`` -> ``(C, H, W)``, or ``(1, H, W)`` for grey (replicated after resizing)."""
    if cfg.frames == "stack":
        return image @ _LUMA if image.ndim == 4 else image  # 3 frames -> 3 channels
    single = image[0]
    if single.ndim == 3:  # colour
        return single.transpose(2, 0, 1) if cfg.channels == 3 else (single @ _LUMA)[None]
    return single[None]


def _resize(image: np.ndarray, cfg: PixelConfig) -> np.ndarray:
    """Antialiased bilinear resize of each channel, then centred zero padding."""
    from PIL import Image

    channels, height, width = image.shape
    size = cfg.size
    if cfg.keep_aspect:
        scale = size / max(height, width)
        new_h, new_w = max(1, round(height * scale)), max(1, round(width * scale))
    else:
        new_h, new_w = size, size
    out = np.zeros((channels, size, size), dtype=np.float32)
    top, left = (size - new_h) // 2, (size - new_w) // 2
    for c in range(channels):
        plane = np.ascontiguousarray(image[c], dtype=np.float32)
        if (new_h, new_w) != (height, width):
            plane = np.asarray(Image.fromarray(plane).resize((new_w, new_h), Image.BILINEAR))
        out[c, top : top + new_h, left : left + new_w] = plane
    return out
