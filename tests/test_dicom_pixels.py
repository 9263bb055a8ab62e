"""Pixel pipeline against values computed by hand from the stored pixels of real files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.pixels import pixel_array

from medmm.demos.dicom import source_roots
from medmm.data.dicom.pixels import PixelConfig, PixelDecodeError, apply_window, is_constant, load_pixels
from medmm.data.dicom.scan import scan_folder
from medmm.errors import ConfigError, DataError

ROOTS = source_roots()
PYDICOM_FILES = ROOTS[0]
EXTRA = ROOTS[1] if len(ROOTS) > 1 else None
needs_extra = pytest.mark.skipif(EXTRA is None, reason="pydicom-data not installed")
# Undecodable with the pylibjpeg / openjpeg / rle plugins (corrupt JPEG and J2K streams).
KNOWN_UNDECODABLE = {"JPEG-lossy.dcm", "JPEG2000-embedded-sequence-delimiter.dcm"}


def _raw(path: Path, index: int | None = None) -> np.ndarray:
    return pixel_array(path, index=index).astype(np.float64)


def _dicom_linear(x: np.ndarray, center: float, width: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently of the code under test."""
    low, high = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    y = ((x - (center - 0.5)) / (width - 1) + 0.5)
    return np.where(x <= low, 0.0, np.where(x > high, 1.0, y))


def _minmax(x: np.ndarray) -> np.ndarray:
    return (x - x.min()) / (x.max() - x.min())


@pytest.mark.parametrize("root", [pytest.param(r, marks=pytest.mark.slow if i else ()) for i, r in enumerate(ROOTS)],
                         ids=("pydicom", "pydicom-data")[: len(ROOTS)])  # pydicom-data: big files, slow
def test_every_bundled_image_loads_or_fails_with_a_reason(root: Path) -> None:
    records, _ = scan_folder(root)
    cfg = PixelConfig(size=32, channels=3)
    failed = {}
    for rec in records:
        try:
            out = load_pixels(root / rec.path, cfg, n_frames=rec.frames)
        except PixelDecodeError as exc:
            assert exc.reason and isinstance(exc, DataError)
            failed[rec.path] = exc.reason
            continue
        assert out.shape == (3, 32, 32) and out.dtype == np.float32, rec.path
        assert np.isfinite(out).all() and out.min() >= 0.0 and out.max() <= 1.0, rec.path
    assert set(failed) == (KNOWN_UNDECODABLE if root == PYDICOM_FILES else set()), failed


def test_monochrome1_is_inverted_after_rescale_and_window() -> None:
    path = PYDICOM_FILES / "dicomdirtests/77654033/CR1/6154"  # CR, MONOCHROME1, 16x16
    ds = pydicom.dcmread(path)
    assert ds.PhotometricInterpretation == "MONOCHROME1"
    assert (float(ds.RescaleSlope), float(ds.RescaleIntercept)) == (0.684, 200.0)
    assert (float(ds.WindowCenter), float(ds.WindowWidth)) == (1600.0, 2800.0)
    expected = 1.0 - _dicom_linear(_raw(path) * 0.684 + 200.0, 1600.0, 2800.0)
    out = load_pixels(path, PixelConfig(size=16))
    np.testing.assert_allclose(out[0], expected, atol=1e-5)
    assert 0.2 < out.mean() < 0.6  # really windowed, neither clipped nor blank


@needs_extra
def test_rescale_slope_applied_before_header_window() -> None:
    path = EXTRA / "MR2_UNCI.dcm"  # MR 1024x1024, slope 3.774114, window 1000/2000
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    slope, intercept = float(ds.RescaleSlope), float(ds.RescaleIntercept)
    assert slope == pytest.approx(3.774114)
    out = load_pixels(path, PixelConfig(size=1024))[0]
    raw = _raw(path)
    np.testing.assert_allclose(out, _dicom_linear(raw * slope + intercept, 1000.0, 2000.0), atol=1e-5)
    without_slope = _dicom_linear(raw, 1000.0, 2000.0)
    assert np.abs(out - without_slope).max() > 0.5


def test_window_override_and_presets_use_hounsfield_units() -> None:
    path = PYDICOM_FILES / "CT_small.dcm"  # intercept -1024, no window in the header
    hu = _raw(path) - 1024.0
    out = load_pixels(path, PixelConfig(size=128, window="40,400"))[0]
    np.testing.assert_allclose(out, _dicom_linear(hu, 40.0, 400.0), atol=1e-5)
    lung = load_pixels(path, PixelConfig(size=128, window="lung"))
    np.testing.assert_array_equal(lung, load_pixels(path, PixelConfig(size=128, window="-600,1500")))
    header = load_pixels(path, PixelConfig(size=128))[0]  # no header window -> min-max
    np.testing.assert_allclose(header, _minmax(hu), atol=1e-5)


@needs_extra
def test_enhanced_ct_uses_shared_functional_group_window() -> None:
    path = EXTRA / "eCT_Supplemental.dcm"  # 2 frames; window 49/102 and intercept in SFGS
    out = load_pixels(path, PixelConfig(size=512))[0]
    expected = _dicom_linear(_raw(path, index=1) - 1024.0, 49.0, 102.0)  # middle of 2 = frame 1
    np.testing.assert_allclose(out, expected, atol=1e-5)


@needs_extra
def test_voi_lut_sequence() -> None:
    path = EXTRA / "vlut_04.dcm"
    ds = pydicom.dcmread(path)
    n, first, _ = ds.VOILUTSequence[0].LUTDescriptor
    lut = np.asarray(ds.VOILUTSequence[0].LUTData, dtype=np.float64)
    expected = lut[np.clip(ds.pixel_array.astype(int) - first, 0, n - 1)]
    out = load_pixels(path, PixelConfig(size=512))[0]
    np.testing.assert_allclose(out, (expected - lut.min()) / (lut.max() - lut.min()), atol=1e-5)


@needs_extra
def test_modality_lut_sequence() -> None:
    path = EXTRA / "mlut_18.dcm"
    ds = pydicom.dcmread(path)
    n, first, _ = ds.ModalityLUTSequence[0].LUTDescriptor
    lut = np.asarray(ds.ModalityLUTSequence[0].LUTData, dtype=np.float64)
    values = lut[np.clip(ds.pixel_array.astype(int) - first, 0, n - 1)]
    out = load_pixels(path, PixelConfig(size=512))[0]
    np.testing.assert_allclose(out, _minmax(values), atol=1e-5)
    # the LUT maps stored -2048..2047 to 0..65535: a window in output units proves it ran
    windowed = load_pixels(path, PixelConfig(size=512, window="32768,16384"))[0]
    np.testing.assert_allclose(windowed, _dicom_linear(values, 32768, 16384), atol=1e-5)
    assert 0.2 < windowed.mean() < 0.8


@needs_extra
@pytest.mark.parametrize("ybr, rgb, tolerance", [
    ("SC_ybr_full_uncompressed.dcm", "SC_rgb.dcm", 6 / 255),  # YBR_FULL -> RGB by pydicom
    ("US1_J2KI.dcm", "US1_UNCI.dcm", 0.2),  # YBR_ICT, lossy J2K -> RGB by the decoder
    ("color-pl.dcm", "color-px.dcm", 0.0),  # PlanarConfiguration 1 vs 0
    ("OBXXXX1A_expb.dcm", "OBXXXX1A.dcm", 0.0),  # big-endian palette LUT (pydicom 3.0 bug)
])
def test_colour_encodings_give_the_same_rgb(ybr: str, rgb: str, tolerance: float) -> None:
    cfg = PixelConfig(size=256, channels=3)
    a, b = load_pixels(EXTRA / ybr, cfg), load_pixels(EXTRA / rgb, cfg)
    assert np.abs(a - b).max() <= tolerance + 1e-6
    assert np.abs(a - b).mean() <= min(tolerance, 0.01) + 1e-6
    assert np.abs(b[0] - b[1]).max() > 0.1 or ybr.startswith("OBX")  # really colour


@needs_extra
def test_rgb_to_one_channel_is_bt601_luma() -> None:
    path = EXTRA / "SC_rgb.dcm"
    rgb = load_pixels(path, PixelConfig(size=100, channels=3))
    grey = load_pixels(path, PixelConfig(size=100, channels=1))
    np.testing.assert_allclose(grey[0], np.tensordot([0.299, 0.587, 0.114], rgb, axes=1), atol=1e-5)


@needs_extra
def test_multiframe_middle_stack_and_single_frame() -> None:
    path = EXTRA / "emri_small.dcm"  # 10 frames 64x64, no window -> min-max
    frames = _raw(path)
    middle = load_pixels(path, PixelConfig(size=64))
    np.testing.assert_allclose(middle[0], _minmax(frames[5]), atol=1e-5)
    stack = load_pixels(path, PixelConfig(size=64, channels=3, frames="stack"))
    np.testing.assert_allclose(stack, _minmax(frames[4:7]), atol=1e-5)  # joint min-max
    seventh = load_pixels(path, PixelConfig(size=64, frames="all"), frame=7)
    np.testing.assert_allclose(seventh[0], _minmax(frames[7]), atol=1e-5)
    with pytest.raises(PixelDecodeError, match="out of range"):
        load_pixels(path, PixelConfig(size=64, frames="all"), frame=10)


def test_keep_aspect_pads_and_stretch_does_not() -> None:
    path = PYDICOM_FILES / "JPEG2000.dcm"  # NM, 1024 rows x 256 columns
    padded = load_pixels(path, PixelConfig(size=64))[0]
    assert np.all(padded[:, :24] == 0) and np.all(padded[:, 40:] == 0)
    assert padded[:, 24:40].max() > 0.5
    stretched = load_pixels(path, PixelConfig(size=64, keep_aspect=False))[0]
    assert stretched[:, :24].max() > 0.1


def test_undecodable_pixels_raise_a_data_error_with_the_reason() -> None:
    with pytest.raises(PixelDecodeError, match="libjpeg") as info:
        load_pixels(PYDICOM_FILES / "JPEG-lossy.dcm", PixelConfig())
    assert isinstance(info.value, DataError) and info.value.path.endswith("JPEG-lossy.dcm")


def test_apply_window_functions() -> None:
    x = np.array([-100.0, 0.0, 39.5, 100.0, 1000.0])
    np.testing.assert_allclose(apply_window(x, 40, 400), _dicom_linear(x, 40, 400), atol=1e-6)
    np.testing.assert_allclose(apply_window(x, 40, 400, "LINEAR_EXACT"), np.clip((x - 40) / 400 + 0.5, 0, 1),
                               atol=1e-6)
    np.testing.assert_allclose(apply_window(x, 40, 400, "SIGMOID"), 1 / (1 + np.exp(-4 * (x - 40) / 400)),
                               atol=1e-6)
    assert is_constant(apply_window(x, 5000, 10)) and not is_constant(apply_window(x, 40, 400))


def test_pixel_config_validation_and_round_trip() -> None:
    cfg = PixelConfig(size=128, channels=3, window="LUNG", frames="stack", keep_aspect=False)
    assert cfg.window == "lung" and cfg.window_spec() == (-600.0, 1500.0)
    again = PixelConfig.from_dict(cfg.to_dict())
    assert again == cfg and hash(again) == hash(cfg)
    assert PixelConfig(window="header").window is None
    assert PixelConfig(window="50, 350").window_spec() == (50.0, 350.0)
    for bad in ({"window": "liver"}, {"window": "40,0"}, {"channels": 2}, {"frames": "stack"},
                {"frames": "first"}, {"size": 0}):
        with pytest.raises(ConfigError):
            PixelConfig(**bad)
    with pytest.raises(ConfigError, match="unknown pixel option"):
        PixelConfig.from_dict({"size": 64, "colour": 3})
