"""Procedural street scenes with a controlled domain shift, for the demo and the tests.

Every scene has the layout of a driving image: sky above a horizon, a row of buildings with
trees between them, a road narrowing to a vanishing point, sidewalks on both sides, cars on
the road and people on the sidewalks. Two renderers draw the same kind of scene:

- "source" (the synthetic domain): flat per-class colours, sharp edges, large cars, few people;
- "target" (the "real" domain): a shifted palette (every colour pulled toward a warm overcast
  grey, so classes lose contrast), textures (windows, lane marks, leaf noise, asphalt grain),
  sensor noise, a blur, an illumination gradient, a higher horizon, smaller and fewer cars,
  more people.

The layout statistics overlap between the domains (that is what self-training can exploit);
colours and textures do not (that is what costs a source-only model its accuracy).

Corrupted domains ("fog-1" .. "fog-3", "noise-1" .. "noise-3") are a second kind of shift:
scenes drawn with the source's layout statistics and painted in the source style, then
degraded by a corruption at a graded severity. The objects are the source's (rare classes stay
rare), only the image is harder to read, so a source model tends to be uncertain rather than
wrong there. docs/study.md gives the reasons for each family:

- "fog": haze that grows toward the top of the frame (far away): each pixel blended toward a
  light grey by a fraction rising from the bottom to the top row, plus sensor noise;
- "noise": strong per-pixel colour noise (low light), the class colours intact on average.

Every corrupted domain of a split shows the same scenes, and a family draws the same noise at
every severity, so severities differ only in how strong the corruption is.

Class ids are Cityscapes 19-class train ids, so the 19-class model, names and palette apply
unchanged: road 0, sidewalk 1, building 2, vegetation 8, sky 10, person 11, car 13. Every
pixel is labelled (no ignore). A scene is a pure function of (style, split, index, size, seed).
"""

import zlib

import numpy as np

ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR = 0, 1, 2, 8, 10, 11, 13
CLASS_IDS = (ROAD, SIDEWALK, BUILDING, VEGETATION, SKY, PERSON, CAR)
STYLES = ("source", "target")
# Corruption family -> parameters per severity 1, 2, 3:
#   fog: (blend toward grey at the bottom row, at the top row, noise sd);
#   noise: (noise sd,). Pixel values are 0..255.
CORRUPTIONS = {
    "fog": ((0.15, 0.35, 4.0), (0.30, 0.60, 10.0), (0.45, 0.80, 14.0)),
    "noise": ((20.0,), (35.0,), (50.0,)),
}
SEVERITIES = (1, 2, 3)
_FOG_GREY = 170.0
# Every domain `render` draws: the two styles and "<family>-<severity>".
DOMAINS = STYLES + tuple(f"{f}-{s}" for f in CORRUPTIONS for s in SEVERITIES)

# Mean colour of each class in the source style (RGB): flat, saturated, well separated.
_SOURCE_PALETTE = {
    ROAD: (120, 100, 130),
    SIDEWALK: (210, 170, 190),
    BUILDING: (80, 80, 80),
    VEGETATION: (60, 160, 50),
    SKY: (90, 150, 230),
    PERSON: (230, 40, 60),
    CAR: (30, 40, 170),
}
# The target palette pulls every source colour 40% toward a warm overcast grey: contrast
# between classes drops (road and building become close) but each class keeps its hue
# family, so a source model is uncertain rather than confidently wrong: the regime in which
# self-training helps.
_CAST = np.array((150, 135, 115), np.float32)
_PALETTES = {
    "source": {c: np.asarray(v, np.float32) for c, v in _SOURCE_PALETTE.items()},
    "target": {
        c: 0.5 * np.asarray(v, np.float32) + 0.5 * _CAST for c, v in _SOURCE_PALETTE.items()
    },
}

# Layout statistics per style: (low, high) ranges of uniform draws, or Poisson means.
_STATS = {
    "source": dict(horizon=(0.40, 0.55), cars=2.5, car_scale=(0.9, 1.3), people=1.5, trees=2.0),
    "target": dict(horizon=(0.32, 0.47), cars=1.5, car_scale=(0.6, 1.0), people=3.0, trees=3.0),
}


def _rng(style: str, split: str, index: int, seed: int) -> np.random.Generator:
    # crc32 gives a hash of the names that is stable across processes (unlike hash()).
    words = [seed, zlib.crc32(style.encode()), zlib.crc32(split.encode()), index]
    return np.random.default_rng(np.random.SeedSequence(words))


def _layout(rng: np.random.Generator, stats: dict, h: int, w: int) -> tuple[np.ndarray, list]:
    """Draws the label map and the instance boxes (class, y0, y1, x0, x1) of one scene."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    label = np.full((h, w), SKY, np.uint8)
    horizon = rng.uniform(*stats["horizon"]) * h
    vx = rng.uniform(0.3, 0.7) * w  # vanishing point

    # Buildings: a row of blocks standing on the horizon, with gaps of sky.
    x = -rng.uniform(0, 0.1) * w
    while x < w:
        bw = rng.uniform(0.08, 0.25) * w
        if rng.uniform() < 0.85:
            top = horizon - rng.uniform(0.15, 0.9) * horizon
            label[(xx >= x) & (xx < x + bw) & (yy >= top) & (yy < horizon + 1)] = BUILDING
        x += bw + rng.uniform(0, 0.05) * w

    # Ground: road between two lines through the vanishing point, sidewalks outside.
    below = yy >= horizon
    t = np.clip((yy - horizon) / max(h - horizon, 1.0), 0.0, 1.0)
    half_road = rng.uniform(0.25, 0.45) * w
    left, right = vx - t * half_road, vx + t * half_road
    label[below] = SIDEWALK
    label[below & (xx >= left) & (xx <= right)] = ROAD

    boxes = []
    # Trees: a trunk and a round crown beside the road, on the horizon band.
    for _ in range(rng.poisson(stats["trees"])):
        cx, r = rng.uniform(0, w), rng.uniform(0.04, 0.1) * h * 1.5
        cy = horizon - rng.uniform(0.2, 1.2) * r
        crown = (xx - cx) ** 2 + ((yy - cy) * 1.2) ** 2 <= r**2
        trunk = (np.abs(xx - cx) <= max(r * 0.12, 0.6)) & (yy >= cy) & (yy <= horizon + 0.1 * h)
        label[crown | trunk] = VEGETATION
    # Cars on the road, bigger nearer the camera; people on the sidewalks.
    objects = [(CAR, rng.poisson(stats["cars"])), (PERSON, rng.poisson(stats["people"]))]
    for cls, count in objects:
        for _ in range(count):
            tb = rng.uniform(0.15, 1.0)  # depth: 0 at the horizon, 1 at the bottom
            bottom = horizon + tb * (h - horizon)
            road_l, road_r = vx - tb * half_road, vx + tb * half_road
            if cls == CAR:
                scale = rng.uniform(*stats["car_scale"])
                cw, ch = 0.5 * tb * half_road * scale, 0.22 * tb * half_road * scale
                cx = rng.uniform(road_l + cw / 2, max(road_r - cw / 2, road_l + cw / 2 + 1))
            else:
                ch, cw = 0.45 * tb * h, 0.1 * tb * h
                side = road_l - rng.uniform(0.1, 0.6) * tb * w * 0.3
                other = road_r + rng.uniform(0.1, 0.6) * tb * w * 0.3
                cx = side if rng.uniform() < 0.5 else other
            y0, y1, x0, x1 = bottom - ch, bottom, cx - cw / 2, cx + cw / 2
            if cls == CAR:
                body = (yy >= y0 + 0.35 * ch) & (yy <= y1) & (xx >= x0) & (xx <= x1)
                cabin = (yy >= y0) & (yy <= y1) & (xx >= x0 + 0.2 * cw) & (xx <= x1 - 0.2 * cw)
                mask = body | cabin
            else:
                head = (xx - cx) ** 2 + (yy - (y0 + cw * 0.6)) ** 2 <= (cw * 0.6) ** 2
                mask = head | ((yy >= y0 + cw) & (yy <= y1) & (np.abs(xx - cx) <= cw / 2))
            if mask.any():
                label[mask] = cls
                boxes.append((cls, y0, y1, x0, x1))
    return label, boxes


def _blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Separable Gaussian blur with edge padding (NumPy only)."""
    r = max(1, int(np.ceil(2.5 * sigma)))
    k = np.exp(-0.5 * (np.arange(-r, r + 1) / sigma) ** 2)
    k /= k.sum()
    out = np.pad(image, ((r, r), (0, 0), (0, 0)), mode="edge")
    out = sum(k[i] * out[i : i + image.shape[0]] for i in range(2 * r + 1))
    out = np.pad(out, ((0, 0), (r, r), (0, 0)), mode="edge")
    return sum(k[i] * out[:, i : i + image.shape[1]] for i in range(2 * r + 1))


def _paint(rng, style: str, label: np.ndarray) -> np.ndarray:
    """Colours a label map in a style; returns float RGB in 0..255."""
    h, w = label.shape
    palette = _PALETTES[style]
    image = np.zeros((h, w, 3), np.float32)
    for cls, colour in palette.items():
        jitter = rng.normal(0, 8 if style == "source" else 10, 3)
        image[label == cls] = colour + jitter
    if style == "source":
        return image
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    # Textures: windows on buildings, lane marks on the road, grain, leaf noise.
    windows = ((yy % 6) < 3) & ((xx % 7) < 3) & (label == BUILDING)
    image[windows] *= 0.55
    lane = (label == ROAD) & (np.abs(xx - w / 2) < 1 + yy / h) & ((yy // 4) % 2 == 0)
    image[lane] = (210, 205, 190)
    leaf = rng.normal(0, 30, (h, w, 1)) * (label == VEGETATION)[..., None]
    grain = rng.normal(0, 10, (h, w, 1)) * np.isin(label, (ROAD, SIDEWALK))[..., None]
    image += leaf + grain
    # Lighting: a gradient across the frame, then a blur and colour sensor noise.
    gain = 1.0 + rng.uniform(-0.25, 0.25) * (xx / w - 0.5) + rng.uniform(-0.15, 0.1)
    image *= gain[..., None]
    image += rng.normal(0, 12, 3)  # colour temperature of the scene's light
    image = _blur(image, rng.uniform(0.6, 1.2))
    image += rng.normal(0, 8, image.shape)
    return image


def _corrupt(rng, image: np.ndarray, family: str, severity: int) -> np.ndarray:
    """Degrades a float RGB image (0..255) by a corruption family at a severity (1..3)."""
    params = CORRUPTIONS[family][severity - 1]
    h, w, _ = image.shape
    # Drawn before any use of the severity, so every severity sees the same noise.
    noise = rng.normal(0, 1, image.shape).astype(np.float32)
    if family == "fog":
        bottom, top, sd = params
        height = 1.0 - np.arange(h, dtype=np.float32)[:, None, None] / max(h - 1, 1)
        blend = bottom + (top - bottom) * height  # 0 at the bottom row, 1 at the top
        return (1.0 - blend) * image + blend * _FOG_GREY + sd * noise
    (sd,) = params
    return image + sd * noise


def parse_domain(domain: str) -> tuple[str, int]:
    """('source' | 'target', 0) for a style, (family, severity) for "<family>-<severity>"."""
    if domain in STYLES:
        return domain, 0
    family, _, severity = domain.partition("-")
    if family not in CORRUPTIONS or severity not in {str(s) for s in SEVERITIES}:
        raise ValueError(f"unknown synthetic domain {domain!r}; valid: {list(DOMAINS)}")
    return family, int(severity)


def render(
    domain: str, split: str, index: int, height: int = 96, width: int = 192, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Renders one scene.

    Args:
      domain: "source" (synthetic look), "target" ("real" look), or a corrupted source-style
        domain "<family>-<severity>" (e.g. "fog-2"; see DOMAINS).
      split: split name; scenes of different splits are drawn independently.
      index: scene number within the split.
      height: image height in pixels.
      width: image width in pixels.
      seed: global seed; the same arguments always give the same scene.

    Returns:
      (image uint8 [H, W, 3] RGB, label uint8 [H, W] of 19-class train ids).
    """
    family, severity = parse_domain(domain)
    if severity == 0:
        rng = _rng(family, split, index, seed)
        label, _ = _layout(rng, _STATS[family], height, width)
        image = _paint(rng, family, label)
    else:
        # Scenes of their own (not the source's training scenes), in the source's statistics
        # and style, shared by every corrupted domain.
        rng = _rng("corrupted", split, index, seed)
        label, _ = _layout(rng, _STATS["source"], height, width)
        image = _corrupt(_rng(family, split, index, seed), _paint(rng, "source", label),
                         family, severity)  # fmt: skip
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), label


def render_batch(
    domain: str, split: str, n: int, height: int = 96, width: int = 192, seed: int = 0
):
    """Renders scenes 0..n-1 of a split as arrays (no TFDS), e.g. for quick experiments.

    Args:
      domain: "source", "target" or a corrupted domain (see `render`).
      split: split name.
      n: number of scenes.
      height: image height.
      width: image width.
      seed: global seed.

    Returns:
      (images uint8 [n, H, W, 3], labels uint8 [n, H, W]).
    """
    pairs = [render(domain, split, i, height, width, seed) for i in range(n)]
    return np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs])
