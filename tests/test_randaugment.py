"""RandAugment (sot_jax.data.randaugment) against timm's own auto_augment.py ops, loaded without the timm package."""

import importlib.util
import io
import os
import random
import types

import numpy as np
import pytest
from conftest import timm_fixture
from PIL import Image

from sot_jax.data import randaugment as ra
from sot_jax.errors import UserError


def _load_timm_auto_augment() -> types.ModuleType | None:
    """timm's auto_augment.py, loaded without the timm package (whose import needs torchvision); None without timm."""
    spec = importlib.util.find_spec("timm")
    if spec is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), "data", "auto_augment.py")
    module_spec = importlib.util.spec_from_file_location("timm_auto_augment", path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)  # imports only PIL, numpy, random, math, re
    return module


timm_aa = _load_timm_auto_augment()
# timm 0.3.4/0.4.5's _RAND_INCREASING_TRANSFORMS, in ra.OPS's order.
TIMM_NAMES = dict(zip(ra.OPS, (
    "AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing", "SolarizeAdd",
    "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing", "SharpnessIncreasing", "ShearX", "ShearY",
    "TranslateXRel", "TranslateYRel",
), strict=True))  # fmt: skip
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY")
MAGNITUDES = (0.0, 5.0, 9.3, 10.0)
BOTH = (Image.BILINEAR, Image.BICUBIC)


def _natural_image() -> np.ndarray:
    """A smooth colour field plus noise, 50×61 (non-square)."""
    y, x = np.mgrid[:50, :61] / 60.0
    field = np.stack([120 + 90 * np.sin(3 * x + y), 100 + 80 * np.cos(2 * y - x), 60 + 150 * x * y], axis=-1)
    noise = np.random.default_rng(0).normal(0, 12, field.shape)
    return np.clip(field + noise, 0, 255).astype(np.uint8)


def _reopened(array: np.ndarray, fmt: str) -> Image.Image:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format=fmt)
    return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")


IMAGES = {fmt: _reopened(_natural_image(), fmt) for fmt in ("JPEG", "PNG")}


def _position_coded(height: int = 24, width: int = 30) -> tuple[Image.Image, int, int]:
    """Red = 8x + 2, green = 10y + 2: bilinear interpolation reproduces it, so a pixel's colour says where it came
    from (half a pixel is 4-5 levels)."""
    y, x = np.mgrid[:height, :width]
    return Image.fromarray(np.stack([8 * x + 2, 10 * y + 2, np.full_like(x, 77)], -1).astype(np.uint8)), height, width


def _sources(matrix: np.ndarray, height: int, width: int) -> np.ndarray:
    y, x = np.mgrid[:height, :width].astype(float)
    return np.einsum("ij,jhw->ihw", matrix, np.stack([x, y, np.ones_like(x)]))[:2]  # (x_in, y_in) per pixel


def _timm(monkeypatch, name: str, image: Image.Image, magnitude: float, sign: float, resample: int) -> Image.Image:
    """timm's op at `magnitude`, its _randomly_negate (`-v if random() > 0.5`) forced to `sign`."""
    fake = types.SimpleNamespace(random=lambda: 0.9 if sign < 0 else 0.1, choice=random.choice)
    monkeypatch.setattr(timm_aa, "random", fake)
    timm_name = TIMM_NAMES[name]
    level_fn = timm_aa.LEVEL_TO_ARG[timm_name]
    args = level_fn(magnitude, {}) if level_fn is not None else ()
    return timm_aa.NAME_TO_OP[timm_name](image, *args, fillcolor=ra.FILL, resample=resample)


def test_ops_match_timms_recorded_outputs():
    """Every op against timm 0.4.5's outputs recorded in tests/fixtures/timm_transforms.npz (for where timm is not
    installed; `test_op_matches_timm_exactly` runs timm itself)."""
    fixture = timm_fixture()
    if timm_aa is not None:
        assert list(TIMM_NAMES.values()) == timm_aa._RAND_INCREASING_TRANSFORMS
    checked = 0
    for key, expected in fixture.items():
        parts = key.split("/")
        if parts[0] != "randaugment" or parts[1] == "input":
            continue
        timm_name, fmt, magnitude, sign, resample = parts[1:]
        name = next(ours for ours, theirs in TIMM_NAMES.items() if theirs == timm_name)
        image = Image.fromarray(fixture[f"randaugment/input/{fmt}"])
        ours, _ = ra.apply_op(image, name, float(magnitude), float(sign), int(resample))
        assert np.array_equal(np.asarray(ours), expected), key
        checked += 1
    assert checked == 2 * (15 * 4 * 2 - 2 + 5 * 4 * 2)  # every op, magnitude, sign (and filter), both formats


@pytest.mark.parametrize("name", ra.OPS)
def test_op_matches_timm_exactly(monkeypatch, name):
    if timm_aa is None:
        pytest.skip("timm is not installed (test_ops_match_timms_recorded_outputs compares with its outputs)")
    resamples = BOTH if name in GEOMETRIC else (Image.BILINEAR,)
    for image in IMAGES.values():
        for magnitude in MAGNITUDES:
            for sign in (1.0, -1.0):
                for resample in resamples:
                    ours, matrix = ra.apply_op(image, name, magnitude, sign, resample)
                    assert ours.mode == "RGB" and ours.size == image.size
                    assert matrix.shape == (3, 3) and matrix.dtype == np.float64
                    if name not in GEOMETRIC:
                        np.testing.assert_array_equal(matrix, np.eye(3))
                    try:
                        theirs = np.asarray(_timm(monkeypatch, name, image, magnitude, sign, resample))
                    except ValueError:  # Pillow >= 10's ImageOps.posterize refuses the 0 bits of magnitude 10
                        assert name == "Posterize" and magnitude == 10.0
                        bits = 4 - int(magnitude / 10 * 4)
                        theirs = np.asarray(image).astype(int) & ~(2 ** (8 - bits) - 1)  # what Pillow 8 did
                        assert not theirs.any()  # black
                    assert np.array_equal(np.asarray(ours), theirs), (name, magnitude, sign, resample)


def test_ops_change_the_image_and_sign_matters():
    image = IMAGES["JPEG"]
    signed = ("Rotate", "Color", "Contrast", "Brightness", "Sharpness") + GEOMETRIC[1:]
    for name in ra.OPS:
        plus = np.asarray(ra.apply_op(image, name, 9.0, 1.0)[0])
        minus = np.asarray(ra.apply_op(image, name, 9.0, -1.0)[0])
        assert not np.array_equal(plus, np.asarray(image)), name
        assert np.array_equal(plus, minus) == (name not in signed), name
    black = np.asarray(ra.apply_op(image, "Posterize", 10.0, 1.0)[0])
    assert not black.any()


@pytest.mark.parametrize("name", GEOMETRIC)
def test_geometric_matrix_maps_output_pixels_to_where_pil_sampled(name):
    image, height, width = _position_coded()
    for magnitude in (3.0, 7.3, 10.0):
        for sign in (1.0, -1.0):
            out, matrix = ra.apply_op(image, name, magnitude, sign, Image.BILINEAR)
            assert not np.allclose(matrix, np.eye(3))
            out = np.asarray(out).astype(float)
            x_in, y_in = _sources(matrix, height, width)
            inside = (x_in >= 0.5) & (x_in <= width - 1.5) & (y_in >= 0.5) & (y_in <= height - 1.5)
            assert inside.sum() > 100
            np.testing.assert_array_less(np.abs(out[..., 0] - (8 * x_in + 2))[inside], 1.5)
            np.testing.assert_array_less(np.abs(out[..., 1] - (10 * y_in + 2))[inside], 1.5)
            outside = (x_in < -1) | (x_in > width) | (y_in < -1) | (y_in > height)
            assert outside.any() and (out[outside] == ra.FILL).all()  # off the image: timm's fill colour


def _recording(monkeypatch) -> list:
    calls = []
    real = ra.apply_op

    def apply_op(image, name, magnitude, sign, resample=Image.BILINEAR):
        out, matrix = real(image, name, magnitude, sign, resample)
        calls.append((name, magnitude, sign, resample, matrix))
        return out, matrix

    monkeypatch.setattr(ra, "apply_op", apply_op)
    return calls


def test_randaugment_is_deterministic_and_applies_the_ops_it_draws(monkeypatch):
    image = IMAGES["PNG"]
    calls = _recording(monkeypatch)
    outputs = set()
    for seed in range(20):
        calls.clear()
        out, total, ops = ra.randaugment(image, np.random.default_rng(seed), num_layers=3, interpolation="random")
        again, total_again, _ = ra.randaugment(image, np.random.default_rng(seed), num_layers=3, interpolation="random")
        assert np.array_equal(np.asarray(out), np.asarray(again)) and np.array_equal(total, total_again)
        first = calls[: len(calls) // 2]
        replayed, expected_total = image, np.eye(3)
        for name, magnitude, sign, resample, _ in first:
            replayed, matrix = ra.apply_op(image=replayed, name=name, magnitude=magnitude, sign=sign, resample=resample)
            expected_total = expected_total @ matrix
        assert np.array_equal(np.asarray(out), np.asarray(replayed))
        np.testing.assert_allclose(total, expected_total)
        # The geometric ops, as the official label-map resampling takes them: timm's signed level_to_arg values.
        assert ops == [(n, s * (m / 10) * ra.GEOMETRIC[n]) for n, m, s, _, _ in first if n in ra.GEOMETRIC]
        outputs.add(np.asarray(out).tobytes())
        # A layer's draws do not depend on the later layers: one layer gives the first layer's op (if applied).
        calls.clear()
        ra.randaugment(image, np.random.default_rng(seed), num_layers=1, interpolation="random")
        if calls:
            assert calls[0][:4] == first[0][:4]
    assert len(outputs) > 10


class CountingRng:
    """A Generator that counts the draws made from it."""

    def __init__(self, seed: int):
        self.rng, self.draws = np.random.default_rng(seed), 0

    def __getattr__(self, name):
        self.draws += 1
        return getattr(self.rng, name)


def test_randaugment_draws_the_same_numbers_whatever_the_ops():
    image = IMAGES["JPEG"]
    for interpolation in ra.INTERPOLATIONS:
        counts = set()
        for seed in range(40):
            for layers in (1, 3):
                rng = CountingRng(seed)
                ra.randaugment(image, rng, num_layers=layers, interpolation=interpolation)
                counts.add(rng.draws / layers)
        assert len(counts) == 1  # per layer, whichever ops ran or were skipped


def test_randaugment_draws_timms_distribution(monkeypatch):
    calls = _recording(monkeypatch)
    image = Image.new("RGB", (8, 6), (90, 140, 200))
    seeds, layers = 300, 2
    for seed in range(seeds):
        ra.randaugment(image, np.random.default_rng(seed), num_layers=layers, interpolation="random")
    assert 0.44 < len(calls) / (seeds * layers) < 0.56  # applied with probability 0.5
    names = [c[0] for c in calls]
    assert set(names) == set(ra.OPS) and max(map(names.count, ra.OPS)) < 3 * len(calls) / len(ra.OPS)
    magnitudes = np.array([c[1] for c in calls])
    assert magnitudes.max() <= ra.MAX_LEVEL and abs(magnitudes.mean() - 9.0) < 0.1 and 0.4 < magnitudes.std() < 0.6
    assert 0.4 < np.mean([c[2] == -1.0 for c in calls]) < 0.6 and {c[2] for c in calls} == {-1.0, 1.0}
    assert 0.4 < np.mean([c[3] == Image.BICUBIC for c in calls]) < 0.6
    calls.clear()
    for seed in range(50):
        ra.randaugment(image, np.random.default_rng(seed), magnitude=9.5, magnitude_std=2.0)
    clipped = [c[1] for c in calls]
    assert max(clipped) == ra.MAX_LEVEL and min(clipped) < 9.0 and {c[3] for c in calls} == {Image.BILINEAR}


def test_random_interpolation_picks_bilinear_or_bicubic_with_the_same_draws(monkeypatch):
    image = IMAGES["JPEG"]
    calls = _recording(monkeypatch)
    picked = set()
    for seed in range(60):
        results, draws = {}, {}
        for interpolation in ra.INTERPOLATIONS:
            calls.clear()
            rng = np.random.default_rng(seed)
            out, total, _ = ra.randaugment(image, rng, num_layers=1, interpolation=interpolation)
            results[interpolation] = (np.asarray(out), total, rng.random())  # the stream after it, too
            draws[interpolation] = [c[:3] for c in calls]
            allowed = {"bilinear": {Image.BILINEAR}, "bicubic": {Image.BICUBIC}}.get(interpolation, set(BOTH))
            assert {c[3] for c in calls} <= allowed
        assert draws["random"] == draws["bilinear"] == draws["bicubic"]
        assert results["random"][2] == results["bilinear"][2] == results["bicubic"][2]
        equal = [fixed for fixed in ("bilinear", "bicubic") if np.array_equal(results["random"][0], results[fixed][0])]
        assert equal and all(np.array_equal(results["random"][1], results[fixed][1]) for fixed in equal)
        if len(equal) == 1:  # a geometric op, where the two differ
            picked.add(equal[0])
    assert picked == {"bilinear", "bicubic"}


def test_randaugment_matrix_composes_the_layers(monkeypatch):
    image, height, width = _position_coded()
    calls = _recording(monkeypatch)
    checked = 0
    for seed in range(400):
        calls.clear()
        out, total, _ = ra.randaugment(image, np.random.default_rng(seed), num_layers=2, magnitude=5.0)
        if len(calls) < 2 or any(c[0] not in GEOMETRIC for c in calls):
            continue
        first, second = calls[0][4], calls[1][4]
        np.testing.assert_allclose(total, first @ second)
        x_mid, y_mid = _sources(second, height, width)  # where layer 2 sampled layer 1's output
        x_in, y_in = _sources(total, height, width)
        inside = (x_mid >= 1) & (x_mid <= width - 2) & (y_mid >= 1) & (y_mid <= height - 2)
        inside &= (x_in >= 1) & (x_in <= width - 2) & (y_in >= 1) & (y_in <= height - 2)
        out = np.asarray(out).astype(float)
        np.testing.assert_array_less(np.abs(out[..., 0] - (8 * x_in + 2))[inside], 2.5)
        np.testing.assert_array_less(np.abs(out[..., 1] - (10 * y_in + 2))[inside], 2.5)
        checked += inside.sum()
    assert checked > 500


def test_unknown_interpolation_and_op_are_refused():
    with pytest.raises(UserError, match="input.interpolation"):
        ra.randaugment(IMAGES["PNG"], np.random.default_rng(0), interpolation="nearest")
    with pytest.raises(UserError):
        ra.apply_op(IMAGES["PNG"], "Cutout", 5.0, 1.0)
