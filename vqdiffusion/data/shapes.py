"""The embedded default dataset: procedural coloured shapes with captions, and their analyzer.

Images are black with one or two objects from {circle, square, triangle} x {red, green, blue,
yellow, purple, white}. Captions read "a red circle" or "a blue square left of a yellow
triangle" (the first object is the one at the named side). Everything is a function of
(seed, index): no files, any number of samples, identical on every machine and rank.

:func:`describe` finds the objects in an image (colour, shape, centre) without any learned
model, so it can score whether generated images are faithful to their prompts.
"""

from __future__ import annotations

import re
from collections import deque
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

__all__ = [
    "COLOURS", "SHAPES", "RELATIONS", "ShapeObject", "Scene", "random_scene", "render", "describe",
    "parse_caption", "score_image", "ShapesDataset", "single_object_prompts",
]

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (230, 30, 30),
    "green": (30, 200, 30),
    "blue": (40, 60, 240),
    "yellow": (240, 230, 30),
    "purple": (160, 40, 200),
    "white": (245, 245, 245),
}
SHAPES = ("circle", "square", "triangle")
RELATIONS = ("left of", "right of", "above", "below")

_BACKGROUND_MAX = 70  # a pixel whose brightest channel is below this is background
# Components below this share of the image are specks, not objects: the smallest object the
# dataset draws (a triangle of side 0.26) covers 3.4%, decoder speckle stays well under 1.5%.
_MIN_AREA_SHARE = 0.015


@dataclass(frozen=True)
class ShapeObject:
    colour: str
    shape: str
    centre: tuple[float, float]  # (x, y) in [0, 1] image coordinates, y down
    size: float = 0.3  # side / diameter as a share of the image side

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    objects: tuple[ShapeObject, ...]
    relation: str | None = None  # relation of objects[0] to objects[1]

    @property
    def caption(self) -> str:
        first = f"a {self.objects[0].name}"
        if self.relation is None:
            return first
        return f"{first} {self.relation} a {self.objects[1].name}"


def random_scene(
    rng: np.random.Generator, two_object_share: float = 0.5, single_size: tuple[float, float] = (0.35, 0.55)
) -> Scene:
    """One or two objects; two objects sit in opposite halves so their relation is unambiguous.

    ``single_size``: range of a lone object's side (or diameter) as a share of the image side.
    """
    def pick() -> tuple[str, str]:
        return str(rng.choice(list(COLOURS))), str(rng.choice(SHAPES))

    if rng.random() >= two_object_share:
        colour, shape = pick()
        size = rng.uniform(*single_size)
        centre = tuple(rng.uniform(size / 2 + 0.05, 1 - size / 2 - 0.05, size=2))
        return Scene((ShapeObject(colour, shape, centre, size),))
    (c1, s1), (c2, s2) = pick(), pick()
    while (c1, s1) == (c2, s2):
        c2, s2 = pick()
    relation = str(rng.choice(RELATIONS))
    sizes = rng.uniform(0.26, 0.38, size=2)
    # positions along the relation axis: first object in its half, second in the other
    along = [rng.uniform(0.05 + s / 2, 0.46 - s / 2) for s in sizes]  # a gap between the halves
    across = [rng.uniform(0.05 + s / 2, 0.95 - s / 2) for s in sizes]
    first_low = relation in ("left of", "above")  # smaller coordinate: left / top
    a = along[0] if first_low else 1 - along[0]
    b = 1 - along[1] if first_low else along[1]
    horizontal = relation in ("left of", "right of")
    centres = [(a, across[0]), (b, across[1])] if horizontal else [(across[0], a), (across[1], b)]
    return Scene((ShapeObject(c1, s1, centres[0], sizes[0]), ShapeObject(c2, s2, centres[1], sizes[1])), relation)


def render(scene: Scene, size: int) -> Image.Image:
    """Draw the scene on a black ``size`` x ``size`` RGB image."""
    image = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        cx, cy, half = obj.centre[0] * size, obj.centre[1] * size, obj.size * size / 2
        box = [cx - half, cy - half, cx + half, cy + half]
        colour = COLOURS[obj.colour]
        if obj.shape == "circle":
            draw.ellipse(box, fill=colour)
        elif obj.shape == "square":
            draw.rectangle(box, fill=colour)
        else:
            draw.polygon([(cx, cy - half), (cx + half, cy + half), (cx - half, cy + half)], fill=colour)
    return image


def _components(mask: np.ndarray) -> list[np.ndarray]:
    """4-connected components of a boolean (H, W) mask, as arrays of (y, x) pixels."""
    seen = np.zeros_like(mask)
    found = []
    h, w = mask.shape
    for y0, x0 in zip(*np.nonzero(mask)):
        if seen[y0, x0]:
            continue
        seen[y0, x0] = True
        queue, pixels = deque([(y0, x0)]), []
        while queue:
            y, x = queue.popleft()
            pixels.append((y, x))
            for ny, nx in ((y - 1, x), (y + 1, x), (y, x - 1), (y, x + 1)):
                if 0 <= ny < h and 0 <= nx < w and mask[ny, nx] and not seen[ny, nx]:
                    seen[ny, nx] = True
                    queue.append((ny, nx))
        found.append(np.array(pixels))
    return found


def _shape_of(pixels: np.ndarray) -> str:
    """Fill share of the bounding box, holes filled: square ~1, circle ~pi/4, triangle ~1/2."""
    top, left = pixels.min(axis=0)
    height, width = pixels.max(axis=0) - (top, left) + 1
    box = np.zeros((height + 2, width + 2), dtype=bool)  # a free border around the component
    box[pixels[:, 0] - top + 1, pixels[:, 1] - left + 1] = True
    outside = _components(~box)[0]  # the free region touching the border (starts at (0, 0))
    fill = (box.size - len(outside)) / (height * width)
    if fill > 0.88:
        return "square"
    if fill > 0.64:
        return "circle"
    return "triangle"


def describe(image: Image.Image | np.ndarray) -> list[ShapeObject]:
    """The objects in an image, largest first: colour (nearest prototype), shape, centre, size."""
    pixels = np.asarray(image.convert("RGB") if isinstance(image, Image.Image) else image, dtype=np.float32)
    h, w, _ = pixels.shape
    foreground = pixels.max(axis=2) >= _BACKGROUND_MAX
    prototypes = np.array(list(COLOURS.values()), dtype=np.float32)  # (C, 3)
    nearest = np.linalg.norm(pixels[:, :, None, :] - prototypes, axis=-1).argmin(-1)  # (H, W)
    names = list(COLOURS)
    objects = []
    for index, colour in enumerate(names):
        for component in _components(foreground & (nearest == index)):
            if len(component) < _MIN_AREA_SHARE * h * w:
                continue
            cy, cx = component.mean(axis=0)
            extent = max(np.ptp(component[:, 0]), np.ptp(component[:, 1])) + 1
            objects.append(ShapeObject(colour, _shape_of(component), ((cx + 0.5) / w, (cy + 0.5) / h), extent / w))
    return sorted(objects, key=lambda o: -o.size)


_CAPTION = re.compile(
    r"^a (?P<c1>\w+) (?P<s1>\w+)(?: (?P<rel>left of|right of|above|below) a (?P<c2>\w+) (?P<s2>\w+))?$"
)


def parse_caption(caption: str) -> Scene:
    """Inverse of ``Scene.caption`` (centres unknown: set to the middle)."""
    match = _CAPTION.match(caption.strip())
    if not match or match["c1"] not in COLOURS or match["s1"] not in SHAPES:
        raise ValueError(f"not a shapes caption: {caption!r} (expected e.g. 'a red circle' or "
                         f"'a blue square left of a yellow triangle')")
    objects = [ShapeObject(match["c1"], match["s1"], (0.5, 0.5))]
    if match["rel"]:
        objects.append(ShapeObject(match["c2"], match["s2"], (0.5, 0.5)))
    return Scene(tuple(objects), match["rel"])


def _holds(relation: str, a: ShapeObject, b: ShapeObject) -> bool:
    (ax, ay), (bx, by) = a.centre, b.centre
    return {"left of": ax < bx, "right of": ax > bx, "above": ay < by, "below": ay > by}[relation]


def score_image(image: Image.Image | np.ndarray, caption: str) -> dict[str, bool]:
    """Is the image faithful to its caption? ``objects``: every named colour+shape is present
    (and nothing else sizeable); ``relation``: also the relation holds (True for one object)."""
    expected = parse_caption(caption)
    found = describe(image)
    matched = []
    for want in expected.objects:
        hit = next((f for f in found if f.colour == want.colour and f.shape == want.shape and f not in matched), None)
        matched.append(hit)
    objects_ok = all(m is not None for m in matched) and len(found) == len(expected.objects)
    relation_ok = objects_ok and (expected.relation is None or _holds(expected.relation, *matched))
    return {"objects": objects_ok, "relation": relation_ok}


def single_object_prompts() -> list[str]:
    """All 18 one-object captions."""
    return [f"a {c} {s}" for c in COLOURS for s in SHAPES]


class ShapesDataset(Dataset):
    """``length`` deterministic samples: dict(image (3, H, W) float in [-1, 1], caption str).

    Sample ``i`` is drawn from ``numpy.random.default_rng([seed, i])``, so any subset, order,
    worker or rank sees the same images.
    """

    def __init__(self, size: int = 32, length: int = 100_000, seed: int = 0, two_object_share: float = 0.5,
                 single_size: tuple[float, float] = (0.35, 0.55)) -> None:
        if size < 16:
            raise ValueError(f"size must be >= 16 pixels, got {size}")
        low, high = single_size
        if not 0.1 <= low <= high <= 0.8:
            raise ValueError(f"single_size must satisfy 0.1 <= low <= high <= 0.8, got {tuple(single_size)}")
        self.size, self.length, self.seed, self.two_object_share = size, length, seed, two_object_share
        self.single_size = (float(low), float(high))

    def __len__(self) -> int:
        return self.length

    def scene(self, index: int) -> Scene:
        return random_scene(np.random.default_rng([self.seed, index]), self.two_object_share, self.single_size)

    def all_captions(self) -> list[str]:
        """Every caption this dataset can draw (18 single objects, and with two objects every
        ordered pair of distinct objects in every relation): lets a text cache fill up front."""
        names = [f"{c} {s}" for c in COLOURS for s in SHAPES]
        captions = [f"a {n}" for n in names]
        if self.two_object_share > 0:
            captions += [f"a {a} {r} a {b}" for a in names for b in names if a != b for r in RELATIONS]
        return captions

    def validation_prompts(self, count: int, kind: str = "mixed") -> list[str]:
        """``count`` fixed prompts: ``"single_objects"`` (the 18 captions, cycled), ``"two_objects"``
        (seeded compositions) or ``"mixed"`` (every single caption first, then compositions)."""
        if kind not in ("single_objects", "two_objects", "mixed"):
            raise ValueError(f"kind must be 'single_objects', 'two_objects' or 'mixed', got {kind!r}")
        singles = single_object_prompts()
        if kind == "single_objects":
            return [singles[i % len(singles)] for i in range(count)]
        pairs = [random_scene(np.random.default_rng([self.seed, 2**32 - 1, i]), 1.0).caption for i in range(count)]
        if kind == "two_objects":
            return pairs
        return (singles + pairs)[:count]

    @staticmethod
    def score(image: Image.Image, caption: str) -> bool:
        """Text faithfulness of one image: right objects (colour and shape) and relation."""
        return score_image(image, caption)["relation"]

    def __getitem__(self, index: int) -> dict:
        scene = self.scene(index)
        array = np.asarray(render(scene, self.size), dtype=np.float32) / 127.5 - 1.0
        return {"image": torch.from_numpy(array).permute(2, 0, 1), "caption": scene.caption}
