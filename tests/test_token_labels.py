"""Token labeling: MixToken, dense targets and loss, label maps through crop and flip, conversion, a tiny run."""

import io
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import TINY_MODEL
from PIL import Image
from test_label_maps import loop_roi_align

from sot_jax import augment, experiment, models, recipes, token_labels, train
from sot_jax.data import label_maps, pipeline, randaugment, source_base, sources, transforms


def official_rand_bbox(lam, cy, cx, rows, cols):
    """TokenLabeling's lvvit.rand_bbox with its random centre given."""
    cut_h, cut_w = int(rows * np.sqrt(1.0 - lam)), int(cols * np.sqrt(1.0 - lam))
    return (
        np.clip(cy - cut_h // 2, 0, rows), np.clip(cx - cut_w // 2, 0, cols),
        np.clip(cy + cut_h // 2, 0, rows), np.clip(cx + cut_w // 2, 0, cols),
    )  # fmt: skip


def test_mix_token_box_follows_the_official_rule():
    rng = np.random.default_rng(0)
    for _ in range(200):
        lam, cy, cx = rng.uniform(), int(rng.integers(14)), int(rng.integers(14))
        box = augment.cut_box(jnp.float32(lam), (jnp.int32(cy), jnp.int32(cx)), (14, 14))
        assert tuple(np.asarray(box)) == official_rand_bbox(np.float32(lam), cy, cx, 14, 14)
    lams = []
    for seed in range(300):
        box, lam = token_labels.mix_token_box(jax.random.key(seed), (14, 14))
        top, left, bottom, right = np.asarray(box)
        assert 0 <= top <= bottom <= 14 and 0 <= left <= right <= 14
        assert float(lam) == pytest.approx(1 - (bottom - top) * (right - left) / 196)
        lams.append(float(lam))
    assert max(lams) == 1.0 and min(lams) < 0.5  # empty and large boxes both occur under λ ~ Beta(1, 1)


def test_mix_tokens_takes_the_box_from_the_reversed_batch_and_undoes_itself():
    grid = (3, 4)
    tokens = jnp.arange(2 * 12 * 5, dtype=jnp.float32).reshape(2, 12, 5)
    box = jnp.array([1, 1, 3, 3])  # rows 1-2, cols 1-2
    mixed = token_labels.mix_tokens(tokens, box, grid)
    inside = np.zeros((3, 4), bool)
    inside[1:3, 1:3] = True
    inside = inside.reshape(12)
    np.testing.assert_array_equal(mixed[:, inside], tokens[::-1][:, inside])
    np.testing.assert_array_equal(mixed[:, ~inside], tokens[:, ~inside])
    np.testing.assert_array_equal(token_labels.mix_tokens(mixed, box, grid), tokens)


def test_model_un_mixes_token_outputs_so_each_keeps_its_source():
    """With no blocks, a token's output depends on its own patch alone: after MixToken and un-mixing, every token
    output equals the unmixed forward's, while the mixed patches did reach the tokens inside the box."""
    model = models.create_model("lvvit_t", num_classes=5, img_size=64, embed_dim=16, depth=0, num_heads=2)
    images = jax.random.normal(jax.random.key(0), (3, 64, 64, 3))
    variables = model.init({"params": jax.random.key(1)}, images)

    def forward(mix_box):
        outputs, _ = model.apply(variables, images, train=True, mix_box=mix_box, mutable=["batch_stats"])
        return outputs

    box = jnp.array([0, 1, 2, 4])
    plain, mixed = forward(None), forward(box)
    (cls_plain, tokens_plain), (cls_mixed, tokens_mixed) = (plain.cls, plain.other), (mixed.cls, mixed.other)
    np.testing.assert_allclose(tokens_mixed, tokens_plain, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(cls_mixed, cls_plain, rtol=1e-5, atol=1e-5)
    # Without un-mixing, the box's tokens would show the partner's patches:
    raw_mixed = token_labels.mix_tokens(tokens_mixed, box, model.grid)
    assert not np.allclose(raw_mixed, tokens_plain)


@pytest.mark.parametrize("mode", ["official", "corrected"])
def test_dense_targets_scatter_softmax_and_smooth_like_a_hand_computation(mode):
    classes = np.array([[[0, 2, 2], [1, 1, 3]]])  # (B=1, N=2, P=3)
    weights = np.array([[[1.0, 0.5, 1.5], [2.0, -1.0, 0.25]]], np.float32)
    class_pairs = np.array([[3, 0, 3]]), np.array([[0.5, 1.0, 2.0]], np.float32)
    cls_target, token_targets = token_labels.dense_targets(
        jnp.asarray(classes), jnp.asarray(weights), *map(jnp.asarray, class_pairs), 4, 0.1, mode
    )
    logits = np.array([[1.0, 0.0, 2.0, 0.0], [0.0, 1.0, 0.0, 0.25]])

    def smooth(x):
        p = np.exp(x - x.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        # get_labelmaps_with_coords: softmax · on_value + off_value, on = 1 − s + s/C, off = s/C
        return p * (1 - 0.1 + 0.1 / 4) + 0.1 / 4 if mode == "official" else 0.9 * p + 0.1 / 4

    np.testing.assert_allclose(token_targets[0], smooth(logits), rtol=1e-6)
    np.testing.assert_allclose(cls_target[0], smooth(np.array([1.0, 0.0, 0.0, 2.5])), rtol=1e-6)
    assert float(cls_target[0].sum()) == pytest.approx(1 + 0.1 / 4 if mode == "official" else 1.0, rel=1e-6)
    with pytest.raises(ValueError, match="unknown aug.token_label_smoothing 'x'; choose one of official, corrected"):
        token_labels.dense_targets(*map(jnp.asarray, (classes, weights, *class_pairs)), 4, 0.1, "x")


def test_mix_token_draws_one_box_per_group_and_mixes_within_it():
    """aug.mix_group_size 4 on 8 images: each group has its own box and λ', partners are the group's reverse."""
    aug = recipes.base_config().aug
    aug.update({"mix_token": True, "mix_group_size": 4, "mixup": 0.0, "cutmix": 0.0, "random_erasing": 0.0})
    aug.label_smoothing = 0.0
    model = types.SimpleNamespace(grid=(4, 4), num_classes=8)
    batch = {"image": jnp.zeros((8, 8, 8, 3), jnp.uint8), "label": jnp.arange(8)}
    partner = np.array([3, 2, 1, 0, 7, 6, 5, 4])
    tokens = jnp.broadcast_to(jnp.arange(8.0)[:, None], (8, 16))  # each token holds its image's index
    differ = 0
    for seed in range(8):
        inputs, targets, _ = train.augment_images(jax.random.key(seed), batch, model, train.Augmentation(**aug))
        boxes = np.asarray(inputs["mix_box"])
        assert boxes.shape == (2, 4)
        mixed = np.asarray(token_labels.mix_tokens(tokens, inputs["mix_box"], model.grid))
        for group, (top, left, bottom, right) in enumerate(boxes):
            inside = np.zeros((4, 4), bool)
            inside[top:bottom, left:right] = True
            lam = 1 - inside.sum() / 16
            for i in range(4 * group, 4 * group + 4):
                np.testing.assert_array_equal(mixed[i], np.where(inside.reshape(16), partner[i], i))
                expected = lam * np.eye(8)[i] + (1 - lam) * np.eye(8)[partner[i]]
                np.testing.assert_allclose(targets[i], expected, atol=1e-6)
        differ += not np.array_equal(boxes[0], boxes[1])
    assert differ >= 6  # independent draws per group
    with pytest.raises(ValueError, match=r"aug.mix_group_size 3 does not divide the \(micro-\)batch of 8 images"):
        token_labels.mix_token_boxes(jax.random.key(0), (4, 4), 8, 3)


def test_token_labeling_loss_equals_a_hand_computation():
    rng = np.random.default_rng(0)
    cls_logits, token_logits = rng.normal(size=(2, 5)), rng.normal(size=(2, 3, 5))
    targets = rng.dirichlet(np.ones(5), size=2)
    token_targets = rng.dirichlet(np.ones(5), size=(2, 3))

    def ce(logits, target):
        log_p = logits - np.log(np.sum(np.exp(logits), -1, keepdims=True))
        return -np.sum(target * log_p, -1)

    expected = 0.7 * ce(cls_logits, targets).mean() + 0.4 * ce(token_logits, token_targets).mean()
    paired = models.PairedLogits(jnp.asarray(cls_logits), jnp.asarray(token_logits), per_token=True)
    loss = train.classification_loss(
        paired,
        jnp.asarray(targets),
        (0.7, 0.4),
        jnp.asarray(token_targets),
    )
    assert float(loss) == pytest.approx(expected, rel=1e-5)
    fallback = 0.7 * ce(cls_logits, targets).mean() + 0.4 * ce(token_logits, targets[:, None]).mean()
    loss = train.classification_loss(paired, jnp.asarray(targets), (0.7, 0.4))
    assert float(loss) == pytest.approx(fallback, rel=1e-5)


def position_coded_image_and_map(cells: int = 8, size: int = 128, width: int | None = None, per_block: int = 1):
    """An image (size × width) of cells×cells flat blocks whose colour encodes (row, col), and a top-5 score map
    with per_block² cells per block whose top class is the block's row·cells + col."""
    width = width or size
    block_rows, block_cols = size // cells, width // cells
    pixels = np.zeros((size, width, 3), np.uint8)
    for r in range(cells):
        for c in range(cells):
            pixels[r * block_rows : (r + 1) * block_rows, c * block_cols : (c + 1) * block_cols] = (32 * r, 32 * c, 128)
    side = cells * per_block
    scores = np.zeros((5, side, side), np.float32)
    classes = np.zeros((5, side, side), np.int32)
    scores[0] = 10.0
    blocks = np.arange(cells * cells).reshape(cells, cells)
    classes[0] = np.repeat(np.repeat(blocks, per_block, 0), per_block, 1)
    for k in range(1, 5):  # other top-k entries: weak, elsewhere
        scores[k], classes[k] = 1.0, (classes[0] + 7 * k) % (cells * cells)
    return pixels, scores, classes


def read_out(scores, classes, geometry, grid, box="corrected", outside="zero"):
    """(class target (C,), token targets (N, C)) of one image's map, C = 64, no smoothing."""
    pairs = label_maps.sample_label_map(scores, classes, geometry, grid, box, outside, resample="traced")
    targets = token_labels.dense_targets(*(jnp.asarray(p)[None] for p in pairs), 64, 0.0)
    return tuple(np.asarray(t[0]) for t in targets)


def check_alignment(image, scores, classes, geometry, grid, box="corrected"):
    """Per token: the map's top class after sampling, against the block the image shows at the token centre.
    Returns (tokens agreeing, tokens compared); disagreement is allowed only with a neighbouring block (a centre
    on a block edge that resampling blurs). Tokens showing RandAugment's fill colour are skipped; cells moved
    off the image take the nearest cell (with "zero", those whose centre passes the outer cell centres would show
    a uniform target while the image's edge pixels are still inside)."""
    from_map = np.argmax(read_out(scores, classes, geometry, grid, box, "nearest")[1], -1).reshape(grid)
    step = image.shape[0] // grid[0]
    pixels = np.asarray(image, np.float32)  # a token's centre lies between the middle two pixels of its step
    centre = sum(pixels[r::step, c::step] for r in (step // 2 - 1, step // 2) for c in (step // 2 - 1, step // 2)) / 4
    from_image = np.round(centre[..., 0] / 32) * 8 + np.round(centre[..., 1] / 32)
    inside = np.abs(centre[..., 2] - 128) < 8
    off = (from_map != from_image) & inside
    if box == "corrected":
        assert np.all(np.abs(from_map[off] // 8 - from_image[off] // 8) <= 1)
        assert np.all(np.abs(from_map[off] % 8 - from_image[off] % 8) <= 1)
    return int(np.sum(~off & inside)), int(np.sum(inside))


def test_label_map_stays_aligned_with_its_image_in_the_label_map_order(tiny_config, monkeypatch):
    """Flip, two geometric RandAugment ops on the whole (non-square) image, the random resized crop last: with
    the corrected box the map follows the image; the official box (mirrored across the diagonal) does not."""

    def geometric_randaugment(image, rng, *_):  # a fixed rotation then translation, whatever the seed
        ops = (("Rotate", 4.0, 1.0), ("TranslateX", 2.0, -1.0))
        affine = np.eye(3)
        for name, magnitude, sign in ops:
            image, matrix = randaugment.apply_op(image, name, magnitude, sign)
            affine = affine @ matrix
        return image, affine, []

    monkeypatch.setattr(randaugment, "randaugment", geometric_randaugment)
    config = tiny_config(crop_scale=(0.2, 1.0), hflip=True, randaugment_layers=2, token_label_dir="maps")
    pixels, scores, classes = position_coded_image_and_map(size=96, width=160, per_block=4)  # fine cells: see below
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    agree, official, total, flips = 0, 0, 0, 0
    for seed in range(30):
        image, geometry = transforms.train_image(buffer.getvalue(), np.random.default_rng(seed), config.input, 64)
        assert geometry["size"].tolist() == [96, 160]
        hits, count = check_alignment(image, scores, classes, geometry, (4, 4))
        agree, total, flips = agree + hits, total + count, flips + bool(geometry["flipped"])
        official += check_alignment(image, scores, classes, geometry, (4, 4), "official")[0]
    assert 5 <= flips <= 25 and total > 300  # both branches ran; most tokens show the image, not the fill
    # The map moves in whole cells (nearest cell, as the official's order-0 resampling): 4 map cells per block keep
    # that rounding small (one per block: 53%). Ignoring RandAugment's map gives 15%, ignoring the flip fails the
    # neighbour check, the official box gives 7%.
    assert agree / total > 0.85, f"only {agree}/{total} tokens carry their own image position"
    assert official / total < 0.3


@pytest.mark.parametrize("op", ["Rotate", "ShearX", "ShearY", "TranslateX", "TranslateY"])
def test_label_map_follows_randaugment_geometry(op):
    pixels, scores, classes = position_coded_image_and_map(size=64)
    agree = total = 0
    for sign in (-1.0, 1.0):
        image, affine = randaugment.apply_op(Image.fromarray(pixels), op, 6.0, sign)
        geometry = {"box": np.float32([0, 0, 1, 1]), "flipped": False, "affine": affine, "size": np.float32([64, 64])}
        hits, count = check_alignment(np.asarray(image), scores, classes, geometry, (8, 8))
        agree, total = agree + hits, total + count
    assert total > 60 and agree / total > 0.85, f"{op}: only {agree}/{total} tokens carry their own position"


def official_get_label(scores, classes, coords, label_size, num_classes=64):
    """TokenLabeling's get_featuremaps + get_label for one image: coords (top, left, bottom, right) fractions,
    scaled by the map width − 0.5 and passed to roi_align as (x1, y1, x2, y2). Returns softmax (C, 1 + N)."""
    dense = np.zeros((num_classes, *scores.shape[1:]), np.float32)
    for k in range(scores.shape[0]):
        np.put_along_axis(dense, classes[k][None], scores[k][None], 0)
    box = np.asarray(coords, np.float32) * np.float32(dense.shape[2]) - np.float32(0.5)
    tokens = loop_roi_align(dense, box, (label_size, label_size)).reshape(num_classes, -1)
    cls = loop_roi_align(dense, box, (1, 1)).reshape(num_classes, 1)
    logits = np.concatenate([cls, tokens], 1)
    return np.exp(logits) / np.exp(logits).sum(0)


@pytest.mark.parametrize("box", ["official", "corrected"])
def test_label_map_read_out_matches_the_official_get_label(box):
    """Crop boxes stored as the official does (float32 fractions, bottom = top + height); "official" reads what
    get_label reads (the box mirrored across the diagonal), "corrected" what it reads of the unmirrored box."""
    _, scores, classes = position_coded_image_and_map()
    scores = scores + np.random.default_rng(0).uniform(0, 3, scores.shape).astype(np.float32)
    other = {"official": "corrected", "corrected": "official"}[box]
    boxes = ((10, 40, 70, 50, False), (0, 5, 100, 20, True), (33, 0, 9, 150, False), (97, 140, 3, 10, True))
    for top, left, height, width, flipped in boxes:  # the last: rois widened to one cell, past the map's edge
        fractions = np.float32([top / 100, left / 150, height / 100, width / 150])
        coords = np.concatenate([fractions[:2], fractions[:2] + fractions[2:]])
        geometry = {"box": coords, "flipped": flipped, "affine": np.eye(3), "size": np.float32([100, 150])}
        maps = (scores[:, :, ::-1], classes[:, :, ::-1]) if flipped else (scores, classes)
        reference = official_get_label(*maps, coords if box == "official" else coords[[1, 0, 3, 2]], 4)
        cls_target, tokens = read_out(scores, classes, geometry, (4, 4), box)
        np.testing.assert_allclose(cls_target, reference[:, 0], rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(tokens, reference[:, 1:].T, rtol=1e-4, atol=1e-7)
        assert not np.allclose(read_out(scores, classes, geometry, (4, 4), other)[1], tokens, atol=1e-3)


@pytest.mark.parametrize("outside", ["zero", "nearest"])
def test_map_cells_moved_off_the_image_score_zero_or_take_the_nearest_cell(outside):
    """TranslateX by half the width: the right half of the map comes from off the image."""
    _, scores, classes = position_coded_image_and_map()
    shift = np.array([[1.0, 0.0, 32.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])  # output -> input: x + 32
    geometry = {"box": np.float32([0, 0, 1, 1]), "flipped": False, "affine": shift, "size": np.float32([64, 64])}
    _, tokens = read_out(scores, classes, geometry, (8, 8), "corrected", outside)
    tokens = tokens.reshape(8, 8, 64)
    row, col = np.arange(8)[:, None], np.arange(8)[None, :]
    np.testing.assert_array_equal(np.argmax(tokens[:, :4], -1), classes[0][row, col[:, :4] + 4])
    if outside == "zero":  # official: the constant fill scores 0, so the softmax is uniform
        np.testing.assert_allclose(tokens[:, 4:], 1 / 64, rtol=1e-6)
    else:
        np.testing.assert_array_equal(np.argmax(tokens[:, 4:], -1), np.broadcast_to(classes[0][:, 7:], (8, 4)))


def write_label_maps(root, names_by_class, shape=(5, 6, 6), num_classes=1000, seed=0):
    import torch

    rng = np.random.default_rng(seed)
    for wnid, names in names_by_class.items():
        (root / wnid).mkdir(parents=True, exist_ok=True)
        for name in names:
            scores = rng.normal(size=shape) * 3
            classes = rng.integers(0, num_classes, size=shape)
            torch.save(torch.tensor(np.stack([scores, classes]), dtype=torch.float16), root / wnid / f"{name}.pt")


def test_converted_label_maps_are_found_by_file_name(tmp_path):
    import torch

    from sot_jax import convert_labels

    write_label_maps(tmp_path / "raw", {"n01": ["n01_1", "n01_2"], "n02": ["n02_7"]})
    out = convert_labels.convert_labels(tmp_path / "raw", tmp_path / "maps")
    assert json.loads((out / "meta.json").read_text())["count"] == 3
    maps = label_maps.LabelMaps(str(out))
    scores, classes = maps.lookup("n02_7.JPEG")
    original = torch.load(tmp_path / "raw" / "n02" / "n02_7.pt").float().numpy()
    np.testing.assert_allclose(scores, original[0])
    np.testing.assert_array_equal(classes, original[1])
    with pytest.raises(ValueError, match="no token label map for image n03_5"):
        maps.lookup("n03_5.JPEG")
    with pytest.raises(FileExistsError):
        convert_labels.convert_labels(tmp_path / "raw", tmp_path / "maps")


@pytest.mark.parametrize(
    "content,message",
    [
        ("garbage", "cannot read token label map"),
        ("wrong_shape", r"expected a tensor \[2, K, h, w\]"),
        ("bad_class", r"class indices must be integers in \[0, 1000\)"),
    ],
)
def test_malformed_label_files_are_named_and_nothing_is_written(tmp_path, content, message):
    import torch

    from sot_jax import convert_labels

    write_label_maps(tmp_path / "raw", {"n01": ["n01_1"]})
    bad = tmp_path / "raw" / "n01" / "n01_2.pt"
    if content == "garbage":
        bad.write_bytes(b"not a torch file")
    elif content == "wrong_shape":
        torch.save(torch.zeros(5, 6, 6, dtype=torch.float16), bad)
    else:
        torch.save(torch.tensor(np.stack([np.zeros((5, 6, 6)), np.full((5, 6, 6), 1000.0)]), dtype=torch.float16), bad)
    with pytest.raises(ValueError, match=message) as error:
        convert_labels.convert_labels(tmp_path / "raw", tmp_path / "maps")
    assert "n01_2.pt" in str(error.value)
    assert not (tmp_path / "maps").exists() and len(list(tmp_path.iterdir())) == 1


def test_missing_label_folder_and_wrong_class_count_are_clear(tmp_path, tiny_config):
    with pytest.raises(ValueError, match="missing meta.json"):
        label_maps.LabelMaps(str(tmp_path / "nowhere"))
    config = tiny_config(token_label_dir=str(tmp_path))
    source = sources.get_source("digits", config.data_dir)
    with pytest.raises(ValueError, match="needs a dataset with file names"):
        next(pipeline.train_batches(
            source, config.input, image_size=32, seed=0, global_batch=8, start_step=0, token_grid=(2, 2)
        ))  # fmt: skip
    with pytest.raises(ValueError, match="does not combine with mixup"):
        experiment.validate_config(tiny_config(token_label_dir="x", mixup=0.8), 1, 1)
    with pytest.raises(ValueError, match="unknown input.token_label_box 'x'; choose one of official, corrected"):
        experiment.validate_config(tiny_config(token_label_dir="x", token_label_box="x"), 1, 1)
    with pytest.raises(ValueError, match="unknown input.token_label_outside 'x'; choose one of zero, nearest"):
        experiment.validate_config(tiny_config(token_label_dir="x", token_label_outside="x"), 1, 1)
    with pytest.raises(ValueError, match="unknown input.token_label_resample 'x'; choose one of traced, official"):
        experiment.validate_config(tiny_config(token_label_dir="x", token_label_resample="x"), 1, 1)


@pytest.mark.slow
def test_a_tiny_lvvit_run_trains_on_token_label_maps(tiny_imagenet, tiny_config, tmp_path):
    from sot_jax import convert_labels

    records = sources.get_source("imagenet2012", tiny_imagenet).records("train")
    names = [source_base.as_text(records[i]["file_name"]).rsplit(".", 1)[0] for i in range(len(records))]
    by_class = {}
    for name in names:
        by_class.setdefault(name.split("_")[0], []).append(name)
    write_label_maps(tmp_path / "raw", by_class)
    maps = convert_labels.convert_labels(tmp_path / "raw", tmp_path / "maps")

    def lvvit_config(token_label_dir):
        config = tiny_config(
            dataset="imagenet2012", data_dir=tiny_imagenet, batch_size=4, total_steps=3, eval_every_steps=3,
            token_label_dir=token_label_dir, mix_token=True, img_size=64,
        )  # fmt: skip
        config.model.name = "lvvit_t"
        return config

    def train_losses(run, config):
        state = train.train_and_evaluate(experiment.build(config), tmp_path / run)
        assert int(state.step) == 3 and state.params["norm"]["scale"].shape == (TINY_MODEL["embed_dim"],)
        records = [json.loads(r) for r in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in records if "loss" in r]

    config = lvvit_config(str(maps))
    source = sources.get_source("imagenet2012", tiny_imagenet)
    batch = next(pipeline.train_batches(
        source, config.input, image_size=64, seed=0, global_batch=4, start_step=0, token_grid=(4, 4)
    ))  # fmt: skip
    # 6×6 maps read by a 4×4 grid: up to 2×2 samples per bin, 4 cells each, top-5; the class target all 36 cells.
    assert batch["token_label_classes"].shape == (4, 16, 80) and batch["token_label_weights"].shape == (4, 16, 80)
    assert batch["class_label_classes"].shape == (4, 180) and batch["class_label_weights"].shape == (4, 180)
    assert np.all(np.isin(batch["token_label_classes"], np.load(maps / "classes.npy")))
    with_maps = train_losses("maps", config)
    assert all(np.isfinite(with_maps))
    # The same run on image labels alone (the official fallback) sees other targets: the maps reach the loss.
    assert not np.allclose(with_maps, train_losses("image_labels", lvvit_config("")))


def test_convert_labels_command_line_reports_errors_and_writes(tmp_path):
    import subprocess
    import sys

    command = [sys.executable, "-m", "sot_jax.convert_labels", "--label-root", str(tmp_path / "raw")]
    failed = subprocess.run([*command, "--output", str(tmp_path / "maps")], capture_output=True, text=True)
    assert failed.returncode != 0 and "error: no token label maps" in failed.stderr
    write_label_maps(tmp_path / "raw", {"n01": ["n01_1"]}, num_classes=10)
    done = subprocess.run([*command, "--output", str(tmp_path / "maps"), "--num-classes", "10"], capture_output=True)
    assert done.returncode == 0 and json.loads((tmp_path / "maps" / "meta.json").read_text())["num_classes"] == 10
