"""The built-in synthetic shapes set: determinism, captions, labels, geometry, validation."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from ditcore.data import builtin
from ditcore.data.builtin import (
    COLOURS,
    NUM_CLASSES,
    POSITIONS,
    SHAPES,
    SIZES,
    BuiltinSpec,
    array_to_objects,
    render,
    render_batch,
)

# Golden digest of images + captions: any change to the generator (hash, layout, rasteriser) must be deliberate,
# because precomputed data sets and FID statistics depend on these exact bytes.
GOLDEN = "6ae377670adaac2c976fcb7e1072f3699d3d4c5ea54aa011da94da3434b93e4f"


def test_golden_bytes_are_stable():
    h = hashlib.sha256()
    for size in (32, 64, 256):
        for i in (0, 1, 7, 12345):
            item = render(i, BuiltinSpec(image_size=size, seed=3))
            h.update(item.image.tobytes())
            h.update(item.caption.encode())
    assert h.hexdigest() == GOLDEN


def test_same_index_same_bytes_and_seed_changes_content():
    spec = BuiltinSpec(seed=5)
    a, b = render(42, spec), render(42, BuiltinSpec(seed=5))
    assert a.image.tobytes() == b.image.tobytes() and a.caption == b.caption and a.id == b.id
    assert a.id == "builtin-5-00000042"
    others = [render(42, BuiltinSpec(seed=s)).caption for s in range(6, 12)]
    assert any(c != a.caption for c in others)


def test_item_fields_and_caption_grammar():
    spec = BuiltinSpec(image_size=48)
    counts = set()
    for i in range(200):
        item = render(i, spec)
        assert item.image.shape == (48, 48, 3) and item.image.dtype == np.uint8
        objs = item.objects
        counts.add(len(objs))
        assert 1 <= len(objs) <= 2
        assert len({o["position"] for o in objs}) == len(objs)  # one object per grid cell
        first = objs[0]
        assert item.label == first["shape"] * len(COLOURS) + first["colour"]
        assert 0 <= item.label < NUM_CLASSES
        words = [f"{SIZES[o['size']]} {list(COLOURS)[o['colour']]} {SHAPES[o['shape']]}" for o in objs]
        assert item.caption.startswith("a " + words[0])
        for w in words:
            assert w in item.caption
        assert (" and " in item.caption) == (len(objs) == 2)
    assert counts == {1, 2}


def test_all_attribute_values_occur():
    objs = [o for i in range(600) for o in render(i, BuiltinSpec()).objects]
    assert {o["shape"] for o in objs} == set(range(len(SHAPES)))
    assert {o["colour"] for o in objs} == set(range(len(COLOURS)))
    assert {o["size"] for o in objs} == set(range(len(SIZES)))
    assert {o["position"] for o in objs} == set(range(len(POSITIONS)))


def test_object_is_drawn_in_its_cell_with_its_colour():
    spec = BuiltinSpec(image_size=96, max_objects=1)
    for i in range(30):
        item = render(i, spec)
        (obj,) = item.objects
        row, col = divmod(obj["position"], 3)
        cell = item.image[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32].astype(int)
        colour = np.array(COLOURS[list(COLOURS)[obj["colour"]]])
        exact = (np.abs(cell - colour).sum(-1) == 0).sum()
        assert exact > 20, (i, obj)  # solid interior pixels of the right colour
        outside = item.image.astype(int).copy()
        outside[row * 32 : (row + 1) * 32, col * 32 : (col + 1) * 32] = 255
        assert (outside == 255).all()  # nothing drawn outside the object's cell


def test_large_objects_cover_more_than_small():
    spec = BuiltinSpec(image_size=64, max_objects=1)
    area = {0: [], 1: []}
    for i in range(100):
        item = render(i, spec)
        area[item.objects[0]["size"]].append((item.image != 255).any(-1).sum())
    assert min(area[1]) > max(area[0])


def test_backgrounds():
    for name, rgb in builtin.BACKGROUNDS.items():
        img = render(3, BuiltinSpec(background=name)).image
        assert tuple(img[0, 0]) == rgb or tuple(img[-1, -1]) == rgb


def test_render_batch_matches_render():
    spec = BuiltinSpec(image_size=32, seed=1)
    batch = render_batch(10, 20, spec)
    assert batch["image"].shape == (10, 32, 32, 3)
    assert batch["objects"].shape == (10, 2, 4)
    objects = array_to_objects(batch["objects"])
    for k, i in enumerate(range(10, 20)):
        item = render(i, spec)
        assert batch["id"][k] == item.id and batch["caption"][k] == item.caption
        assert batch["label"][k] == item.label
        np.testing.assert_array_equal(batch["image"][k], item.image)
        assert objects[k] == item.objects
    assert render_batch(5, 5, spec)["image"].shape == (0, 32, 32, 3)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"image_size": 16}, "image_size"),
        ({"image_size": 512}, "image_size"),
        ({"max_objects": 0}, "max_objects"),
        ({"seed": -1}, "seed"),
        ({"background": "pink"}, "background"),
    ],
)
def test_bad_spec_names_the_field(kwargs, key):
    with pytest.raises(ValueError, match=key):
        BuiltinSpec(**kwargs)


def test_bad_index():
    with pytest.raises(ValueError, match="index"):
        render(-1, BuiltinSpec())
