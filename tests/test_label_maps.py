"""Token label maps in numpy: lookup and pickling, the official `get_label` read-out (torchvision's roi_align), and
the map under RandAugment, traced or resampled per op as TokenLabeling's random_augment_label does."""

import importlib
import json
import math
import pickle
import re

import numpy as np
import pytest
from scipy import ndimage

from sot_jax.data import label_maps
from sot_jax.errors import UserError


def write_maps(folder, names, shape=(5, 6, 6), seed=0):
    """A folder as `convert_labels` writes it (float16 scores, int16 classes)."""
    rng = np.random.default_rng(seed)
    folder.mkdir()
    scores = (rng.normal(size=(len(names), *shape)) * 3).astype(np.float16)
    classes = rng.integers(0, 1000, size=(len(names), *shape)).astype(np.int16)
    np.save(folder / "scores.npy", scores)
    np.save(folder / "classes.npy", classes)
    (folder / "names.txt").write_text("".join(f"{name}\n" for name in names))
    meta = {"count": len(names), "top_k": shape[0], "height": shape[1], "width": shape[2], "num_classes": 1000}
    (folder / "meta.json").write_text(json.dumps(meta))
    return scores, classes


def test_maps_are_found_by_file_name_and_a_missing_one_is_named(tmp_path):
    scores, classes = write_maps(tmp_path / "maps", ["n01_1", "n01_2", "n02_7"])
    maps = label_maps.LabelMaps(str(tmp_path / "maps"))
    found_scores, found_classes = maps.lookup("n02_7.JPEG")
    assert found_scores.dtype == np.float32 and found_classes.dtype == np.int32
    np.testing.assert_array_equal(found_scores, scores[2].astype(np.float32))
    np.testing.assert_array_equal(found_classes, classes[2])
    np.testing.assert_array_equal(maps.lookup("n01_1")[1], classes[0])  # no extension
    with pytest.raises(UserError, match=re.escape(f"no token label map for image n03_5.JPEG in {tmp_path / 'maps'}")):
        maps.lookup("n03_5.JPEG")
    with pytest.raises(UserError, match="missing meta.json, names.txt, scores.npy, classes.npy"):
        label_maps.LabelMaps(str(tmp_path / "nowhere"))


def test_pickled_maps_carry_their_folder_not_their_data(tmp_path):
    scores, _ = write_maps(tmp_path / "maps", [f"image_{i}" for i in range(300)], shape=(5, 18, 18))
    maps = label_maps.LabelMaps(tmp_path / "maps")
    data = pickle.dumps(maps)
    assert len(data) < 1000 < scores.nbytes
    copy = pickle.loads(data)
    assert isinstance(copy.scores, np.memmap) and copy.meta == maps.meta
    for a, b in zip(copy.lookup("image_123.png"), maps.lookup("image_123.png"), strict=True):
        np.testing.assert_array_equal(a, b)


def torchvision_roi_align():
    """torchvision's roi_align, and whether it is its C++ kernel; skips the test without torch or torchvision.

    A torchvision whose C++ ops fail to load (`operator torchvision::nms does not exist` on import) imports once its
    fake-op registration is skipped; its roi_align then falls back to its pure-Python twin of the kernel (called here
    eagerly, not through torch.compile), which lacks the kernel's rule that samples beyond the map weigh 0."""
    torch = pytest.importorskip("torch")
    register_fake = torch.library.register_fake

    def skip_torchvision(name, *args, **kwargs):
        return (lambda f: f) if str(name).startswith("torchvision::") else register_fake(name, *args, **kwargs)

    torch.library.register_fake = skip_torchvision
    try:
        from torchvision.extension import _has_ops

        module = importlib.import_module("torchvision.ops.roi_align")
    except Exception as error:  # noqa: BLE001 - whatever stops torchvision loading, there is no reference
        pytest.skip(f"torchvision does not load: {error}")
    finally:
        torch.library.register_fake = register_fake
    kernel = _has_ops()

    def apply(features, box, output_size):
        features = torch.from_numpy(np.ascontiguousarray(features))[None]
        rois = torch.cat([torch.zeros(1, 1), torch.tensor(np.asarray(box, np.float32))[None]], 1)
        if kernel:
            return module.roi_align(features, rois, output_size).numpy()[0]
        twin = getattr(module._roi_align, "__wrapped__", module._roi_align)
        return twin(features, rois, 1.0, *output_size, -1, False).numpy()[0]

    return apply, kernel


def loop_roi_align(features, box, output_size):
    """roi_align(aligned=False, sampling_ratio=-1) of one box (x1, y1, x2, y2) on features (C, h, w), written out
    sample by sample from torchvision's kernel."""
    channels, height, width = features.shape
    rows, cols = output_size
    x1, y1, x2, y2 = np.asarray(box, np.float32)
    roi_h, roi_w = max(y2 - y1, np.float32(1)), max(x2 - x1, np.float32(1))
    bin_h, bin_w = roi_h / np.float32(rows), roi_w / np.float32(cols)
    grid_h, grid_w = math.ceil(roi_h / np.float32(rows)), math.ceil(roi_w / np.float32(cols))

    def bilinear(y, x):
        if y < -1 or y > height or x < -1 or x > width:
            return np.zeros(channels, np.float32)
        y, x = max(y, np.float32(0)), max(x, np.float32(0))
        y0, x0 = min(int(y), height - 1), min(int(x), width - 1)
        y, x = (np.float32(y0) if y0 == height - 1 else y), (np.float32(x0) if x0 == width - 1 else x)
        y1_, x1_ = min(y0 + 1, height - 1), min(x0 + 1, width - 1)
        ly, lx = y - np.float32(y0), x - np.float32(x0)
        f = features
        top_row = (1 - lx) * f[:, y0, x0] + lx * f[:, y0, x1_]
        return (1 - ly) * top_row + ly * ((1 - lx) * f[:, y1_, x0] + lx * f[:, y1_, x1_])

    out = np.zeros((channels, rows, cols), np.float32)
    for r in range(rows):
        for c in range(cols):
            for i in range(grid_h):
                y = y1 + np.float32(r) * bin_h + np.float32(i + 0.5) * bin_h / np.float32(grid_h)
                for j in range(grid_w):
                    x = x1 + np.float32(c) * bin_w + np.float32(j + 0.5) * bin_w / np.float32(grid_w)
                    out[:, r, c] += bilinear(y, x)
            out[:, r, c] /= grid_h * grid_w
    return out


@pytest.fixture(params=["torchvision", "loops"])
def roi_align(request):
    """(roi_align, whether samples beyond the map weigh 0 as in torchvision's kernel)."""
    return torchvision_roi_align() if request.param == "torchvision" else (loop_roi_align, True)


def logits(pairs, num_classes):
    """The read-out's (class, weight) pairs summed per class: the class target (C,) and the tokens' (N, C)."""
    token_classes, token_weights, class_classes, class_weights = pairs
    tokens = np.zeros((len(token_classes), num_classes))
    np.add.at(tokens, (np.arange(len(token_classes))[:, None], token_classes), token_weights)
    target = np.zeros(num_classes)
    np.add.at(target, class_classes, class_weights)
    return target, tokens


def random_map(shape, num_classes, seed):
    """Scores (K, h, w) and distinct top-k classes per cell, as the official maps hold."""
    rng = np.random.default_rng(seed)
    scores = rng.uniform(-2, 8, shape).astype(np.float32)
    classes = np.argsort(rng.uniform(size=(num_classes, *shape[1:])), 0)[: shape[0]].astype(np.int32)
    return scores, classes


@pytest.mark.parametrize("box", ["official", "corrected"])
def test_read_out_on_the_unmoved_map_is_roi_align_of_the_crop(roi_align, box):
    """get_label: the dense map (C, h, w) of the top-k (get_featuremaps), roi_align over the crop box scaled by the
    map width − 0.5 and passed as (x1, y1, x2, y2) = (top, left, bottom, right) ("official"; "corrected" passes the
    crop itself, each axis scaled by its own length); the tokens' bins and one bin for the class target."""
    roi_align, border_rule = roi_align
    num_classes = 12
    crops = ((0.0, 0.0, 1.0, 1.0), (0.1, 0.27, 0.8, 0.6), (0.0, 0.05, 1.0, 0.2), (0.33, 0.0, 0.42, 1.0))
    if border_rule:
        crops += ((0.97, 0.93, 1.0, 1.0),)  # rois widened to one cell, their last samples beyond the map
    for seed, (shape, grid) in enumerate((((5, 12, 12), (4, 4)), ((5, 12, 12), (14, 14)), ((3, 10, 14), (4, 6)))):
        if box == "official" and shape[1] != shape[2]:
            continue  # get_label's box is for square maps
        scores, classes = random_map(shape, num_classes, seed)
        for crop in crops:
            for flipped in (False, True):
                geometry = {"box": np.float32(crop), "flipped": flipped, "affine": np.eye(3), "size": (100.0, 150.0)}
                target, tokens = logits(label_maps.sample_label_map(scores, classes, geometry, grid, box), num_classes)
                dense = np.zeros((num_classes, *shape[1:]), np.float32)
                np.put_along_axis(dense, classes, scores, 0)  # get_featuremaps' scatter
                dense = dense[..., ::-1] if flipped else dense
                top, left, bottom, right = np.float32(crop)
                h, w = shape[1:]
                if box == "official":
                    roi = np.float32(crop) * np.float32(w) - np.float32(0.5)
                else:
                    roi = np.float32([left * w, top * h, right * w, bottom * h]) - np.float32(0.5)
                expected_tokens = roi_align(dense, roi, grid).reshape(num_classes, -1).T
                np.testing.assert_allclose(tokens, expected_tokens, rtol=1e-5, atol=1e-5)
                np.testing.assert_allclose(target, roi_align(dense, roi, (1, 1)).reshape(-1), rtol=1e-5, atol=1e-5)


# TokenLabeling's label ops (tlt/data/random_augment_label.py) on its label tensor (2, K, h, w): scores, then class
# indices as floats; the same scipy calls, in its own terms. `value_mode` "nearest" is our `outside` "nearest".
def official_affine_label(label, matrix, value_mode="constant"):
    import torch

    a, b, c, d, e, f = matrix
    affine_matrix = [[1, 0, 0, 0], [0, a, b, c], [0, d, e, f]]
    value = ndimage.affine_transform(label[0].numpy(), matrix=affine_matrix, order=0, mode=value_mode)
    index = ndimage.affine_transform(label[1].numpy(), matrix=affine_matrix, order=0, mode="nearest")
    return torch.from_numpy(np.stack([value, index], axis=0))


def official_rotate_label(label, degrees, value_mode):
    _, _, w, h = label.size()
    post_trans = (0, 0)
    rotn_center = (w / 2.0, h / 2.0)
    angle = math.radians(degrees)
    matrix = [
        round(math.cos(angle), 15), round(math.sin(angle), 15), 0.0,
        round(-math.sin(angle), 15), round(math.cos(angle), 15), 0.0,
    ]  # fmt: skip

    def transform(x, y, matrix):
        (a, b, c, d, e, f) = matrix
        return a * x + b * y + c, d * x + e * y + f

    matrix[2], matrix[5] = transform(-rotn_center[0] - post_trans[0], -rotn_center[1] - post_trans[1], matrix)
    matrix[2] += rotn_center[0]
    matrix[5] += rotn_center[1]
    return official_affine_label(label, matrix, value_mode)


OFFICIAL_LABEL_OPS = {
    "Rotate": official_rotate_label,
    "ShearX": lambda label, factor, mode: official_affine_label(label, (1, 0, 0, factor, 1, 0), mode),
    "ShearY": lambda label, factor, mode: official_affine_label(label, (1, factor, 0, 0, 1, 0), mode),
    "TranslateX": lambda label, pct, mode: official_affine_label(label, (1, 0, 0, 0, 1, pct * label.size(3)), mode),
    "TranslateY": lambda label, pct, mode: official_affine_label(label, (1, 0, pct * label.size(2), 0, 1, 0), mode),
}


@pytest.mark.parametrize("outside", ["zero", "nearest"])
def test_official_resampling_equals_the_official_label_ops(outside):
    """resample "official": the read-out of our map equals the read-out, unmoved, of the map the official label ops
    (flip, then each op) leave — cell for cell, whatever the ops."""
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    ranges = {"Rotate": 30.0, "ShearX": 0.3, "ShearY": 0.3, "TranslateX": 0.45, "TranslateY": 0.45}
    moved = 0.0
    for trial in range(60):
        shape = ((5, 12, 12), (5, 18, 18), (3, 10, 14))[trial % 3]
        scores, classes = random_map(shape, 1000, trial)
        names = rng.choice(label_maps.MAP_OPS, int(rng.integers(1, 4)))
        ops = [(str(name), float(rng.uniform(-1, 1) * ranges[name])) for name in names]
        flipped, crop = bool(trial % 2), np.float32([0.1, 0.2, 0.9, 0.7])
        label = torch.stack([torch.from_numpy(scores), torch.from_numpy(classes).float()])
        label = label.flip(3) if flipped else label
        for name, value in ops:
            label = OFFICIAL_LABEL_OPS[name](label, value, "constant" if outside == "zero" else "nearest")
        official_scores, official_classes = label[0].numpy(), label[1].numpy().astype(np.int32)
        moved += np.mean(official_classes != classes) / 60
        unmoved = {"box": crop, "flipped": False, "ops": []}
        expected = label_maps.sample_label_map(
            official_scores, official_classes, unmoved, (4, 4), outside=outside, resample="official"
        )
        geometry = {"box": crop, "flipped": flipped, "ops": ops}
        ours = label_maps.sample_label_map(scores, classes, geometry, (4, 4), outside=outside, resample="official")
        for a, b in zip(ours, expected, strict=True):
            np.testing.assert_array_equal(a, b)
    assert moved > 0.5  # the ops did move the maps


def pixel_map(name, value, height, width):
    """The image's output->input pixel map (pixel indices) of a RandAugment op as PIL applies it."""
    if name == "Rotate":  # counter-clockwise about the image centre
        cos, sin = math.cos(math.radians(value)), math.sin(math.radians(value))
        cx, cy = (width - 1) / 2, (height - 1) / 2
        matrix = [cos, -sin, cx - cos * cx + sin * cy, sin, cos, cy - sin * cx - cos * cy]
    elif name == "ShearX":  # PIL shears about the pixel edge (0, 0): half a shear in pixel indices
        matrix = [1, value, value / 2, 0, 1, 0]
    elif name == "ShearY":
        matrix = [1, 0, 0, value, 1, value / 2]
    elif name == "TranslateX":
        matrix = [1, 0, value * width, 0, 1, 0]
    else:
        matrix = [1, 0, 0, 0, 1, value * height]
    return np.array([*matrix, 0, 0, 1]).reshape(3, 3)


def shown_cells(geometry, resample, h=14, w=14, outside="zero"):
    """Per cell of the moved map: the original cell it shows (row, col) and whether it still scores."""
    scores, classes = np.ones((1, h, w), np.float32), np.arange(h * w, dtype=np.int32).reshape(1, h, w)
    pairs = label_maps.sample_label_map(scores, classes, geometry, (2, 2), outside=outside, resample=resample)
    return np.stack(np.divmod(pairs[2], w), -1), pairs[3] > 0


@pytest.mark.parametrize("name,value", [("Rotate", 25.0), ("ShearX", 0.27), ("ShearY", -0.27), ("TranslateX", 0.4)])
def test_official_and_traced_resampling_move_the_map_alike(name, value):
    """On a square image, "ops" and "affine" describe the same op: both resamplings show (nearly) the same cells;
    they differ by the official's rounding and its centres in cell indices (rotation about (h/2, w/2))."""
    for flipped in (False, True):
        geometry = {"box": np.float32([0, 0, 1, 1]), "flipped": flipped, "size": np.float32([224, 224])}
        geometry.update(affine=pixel_map(name, value, 224, 224), ops=[(name, value)])
        (traced, traced_kept), (official, official_kept) = (shown_cells(geometry, r) for r in label_maps.RESAMPLES)
        both = traced_kept & official_kept
        assert np.mean(both) > 0.5 and np.mean(traced_kept == official_kept) > 0.95
        assert np.mean(np.all(traced == official, -1)[both]) > (0.6 if name == "Rotate" else 0.9)
        assert np.abs(traced - official)[both].max() <= 1
        geometry["ops"] = [(name, -value)]  # the other sign moves the map elsewhere
        assert np.mean(np.all(traced == shown_cells(geometry, "official")[0], -1)) < 0.2


@pytest.mark.parametrize("outside", ["zero", "nearest"])
def test_traced_cells_moved_off_the_image_score_zero_or_take_the_nearest_cell(outside):
    """TranslateX by half the (non-square) image's width: the right half of the map comes from off the image."""
    geometry = {"box": np.float32([0, 0, 1, 1]), "flipped": False, "size": np.float32([48, 64])}
    geometry["affine"] = np.array([[1, 0, 32], [0, 1, 0], [0, 0, 1]], np.float32)
    cells, kept = shown_cells(geometry, "traced", 8, 8, outside)
    cells, kept = cells.reshape(8, 8, 2), kept.reshape(8, 8)
    np.testing.assert_array_equal(cells[:, :4, 1], np.broadcast_to(np.arange(4, 8), (8, 4)))
    np.testing.assert_array_equal(cells[:, 4:, 1], 7)
    np.testing.assert_array_equal(cells[..., 0], np.broadcast_to(np.arange(8)[:, None], (8, 8)))
    np.testing.assert_array_equal(kept[:, 4:], outside == "nearest")
    assert np.all(kept[:, :4])


def test_bad_choices_are_named():
    scores, classes = random_map((2, 4, 4), 10, 0)
    geometry = {"box": np.float32([0, 0, 1, 1]), "flipped": False, "ops": [("Solarize", 1.0)]}
    with pytest.raises(UserError, match="unknown input.token_label_resample 'x'; choose one of traced, official"):
        label_maps.sample_label_map(scores, classes, geometry, (2, 2), resample="x")
    with pytest.raises(UserError, match="unknown token label map op 'Solarize'; choose one of Rotate, ShearX"):
        label_maps.sample_label_map(scores, classes, geometry, (2, 2), resample="official")
