import numpy as np
import pytest
import torch

from vqdiffusion.data.shapes import (
    COLOURS,
    SHAPES,
    Scene,
    ShapeObject,
    ShapesDataset,
    describe,
    parse_caption,
    random_scene,
    render,
    score_image,
    single_object_prompts,
)


@pytest.mark.parametrize("size", [32, 64])
@pytest.mark.parametrize("two_object_share", [0.0, 1.0])
def test_analyzer_scores_clean_images_at_least_98_percent(size, two_object_share):
    n = 400
    hits = sum(score_image(render(scene, size), scene.caption)["relation"]
               for scene in (random_scene(np.random.default_rng([11, i]), two_object_share) for i in range(n)))
    assert hits / n >= 0.98


def test_analyzer_rejects_wrong_images():
    swapped = render(Scene((ShapeObject("blue", "square", (0.25, 0.5), 0.3),
                            ShapeObject("red", "circle", (0.75, 0.5), 0.3)), "left of"), 64)
    result = score_image(swapped, "a red circle left of a blue square")
    assert result == {"objects": True, "relation": False}
    assert score_image(swapped, "a red triangle left of a blue square")["objects"] is False
    assert score_image(np.zeros((32, 32, 3), np.uint8), "a red circle") == {"objects": False, "relation": False}


def test_describe_finds_colour_shape_and_centre():
    for colour in COLOURS:
        for shape in SHAPES:
            found = describe(render(Scene((ShapeObject(colour, shape, (0.3, 0.6), 0.45),)), 64))
            assert [(f.colour, f.shape) for f in found] == [(colour, shape)]
            assert abs(found[0].centre[0] - 0.3) < 0.05
            assert abs(found[0].centre[1] - 0.6) < 0.08  # a triangle's centroid sits low


def test_dataset_is_deterministic_and_normalised():
    a, b = ShapesDataset(32, seed=3), ShapesDataset(32, seed=3)
    assert torch.equal(a[17]["image"], b[17]["image"]) and a[17]["caption"] == b[17]["caption"]
    assert a[17]["image"].shape == (3, 32, 32)
    assert a[17]["image"].min() >= -1 and a[17]["image"].max() <= 1
    assert ShapesDataset(32, seed=4)[17]["caption"] != a[17]["caption"] or not torch.equal(
        ShapesDataset(32, seed=4)[17]["image"], a[17]["image"])
    assert len(single_object_prompts()) == 18


def test_bad_caption_is_named():
    with pytest.raises(ValueError, match="not a shapes caption: 'a pink circle'"):
        parse_caption("a pink circle")


def test_analyzer_ignores_specks_and_fills_holes():
    image = np.asarray(render(Scene((ShapeObject("green", "square", (0.5, 0.5), 0.5),)), 32)).copy()
    image[14:17, 14:17] = 0  # a 3x3 hole in the square
    image[2:4, 2:5] = COLOURS["red"]  # a 6-pixel red speck
    assert [(o.colour, o.shape) for o in describe(image)] == [("green", "square")]
    image[0:5, 0:5] = COLOURS["red"]  # 25 pixels (2.4% of the image): an object, not a speck
    assert score_image(image, "a green square") == {"objects": False, "relation": False}


def test_single_size_is_validated():
    with pytest.raises(ValueError, match=r"single_size must satisfy 0.1 <= low <= high <= 0.8, got \(0.9, 0.95\)"):
        ShapesDataset(32, single_size=(0.9, 0.95))


def test_all_captions_cover_every_drawn_caption_and_prefill_the_text_cache():
    from vqdiffusion.models.conditioning import CachedTextEncoder

    dataset = ShapesDataset(32, length=3000, two_object_share=0.5)
    vocabulary = dataset.all_captions()
    assert len(vocabulary) == len(set(vocabulary)) == 18 + 18 * 17 * 4
    assert {dataset.scene(i).caption for i in range(3000)} <= set(vocabulary)
    assert len(ShapesDataset(32, two_object_share=0.0).all_captions()) == 18

    class CountingEncoder:
        calls = 0

        def __call__(self, prompts):
            CountingEncoder.calls += 1
            return torch.zeros(len(prompts), 4, 2)

    cache = CachedTextEncoder(CountingEncoder())
    cache.prefill(vocabulary, batch_size=500)
    assert CountingEncoder.calls == 3  # 1242 captions in batches of 500
    cache([dataset.scene(i).caption for i in range(64)])
    assert CountingEncoder.calls == 3  # every training caption is already cached
