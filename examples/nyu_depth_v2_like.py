"""Writes a folder laid out as the NYU Depth V2 validation set (val/official/NNNNN.h5, each with
`rgb` uint8 [3, 480, 640] and `depth` float32 [480, 640] in metres), of rendered rooms.

    python examples/nyu_depth_v2_like.py build/data/nyu_depth_v2 [--count 100]

NYU Depth V2 cannot be downloaded here. Each sample is a room seen by a camera with the Kinect's
intrinsics NYU was recorded with: floor, ceiling and three walls, with a few boxes standing on
the floor (furniture), ray-cast with numpy, so `depth` is exact for `rgb` — the pair a depth
model learns from. Surfaces are shaded by their angle to a light and textured with noise; the
floor has boards. Depths fall in NYU's range (about 0.7 to 10 m).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import h5py
import numpy as np

HEIGHT, WIDTH = 480, 640
# The Kinect intrinsics of NYU Depth V2's RGB camera (fx, fy, cx, cy in pixels).
FX, FY, CX, CY = 518.86, 519.47, 325.58, 253.74
MAX_DEPTH = 10.0


def _rays() -> np.ndarray:
    """Per pixel the ray direction (x right, y down, z forward) scaled to z = 1, so the distance
    along it to a hit is the hit's depth."""
    v, u = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float64)
    return np.stack(((u + 0.5 - CX) / FX, (v + 0.5 - CY) / FY, np.ones_like(u)), axis=-1)


def _noise(rng: np.random.Generator, scale: int) -> np.ndarray:
    """Smooth noise in [-1, 1] over the image: a coarse random grid, bilinearly enlarged."""
    import cv2

    coarse = rng.uniform(-1, 1, size=(HEIGHT // scale + 2, WIDTH // scale + 2)).astype(np.float32)
    return cv2.resize(coarse, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR).astype(np.float64)


def render_room(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(rgb uint8 [480, 640, 3], depth float32 [480, 640] in metres) of one random room."""
    rays = _rays()
    camera_height = rng.uniform(1.0, 1.6)
    room_height = rng.uniform(2.4, 3.0)
    left, right = rng.uniform(1.2, 3.5), rng.uniform(1.2, 3.5)
    back = rng.uniform(3.5, MAX_DEPTH - 0.5)
    # Planes as (axis, coordinate, outward normal sign, surface index): walls left/right/back, floor, ceiling.
    planes = [(0, -left, -1), (0, right, 1), (2, back, 1), (1, camera_height, 1), (1, camera_height - room_height, -1)]
    depth = np.full((HEIGHT, WIDTH), np.inf)
    surface = np.zeros((HEIGHT, WIDTH), dtype=np.int64)
    normal = np.zeros((HEIGHT, WIDTH, 3))
    with np.errstate(divide="ignore", invalid="ignore"):
        for index, (axis, coordinate, sign) in enumerate(planes):
            t = coordinate / rays[..., axis]
            hit = (t > 0) & (t < depth)
            depth[hit], surface[hit] = t[hit], index
            normal[hit] = 0.0
            normal[hit, axis] = -sign  # facing the camera
        # Boxes standing on the floor: axis-aligned slabs, nearest entry wins.
        for box in range(int(rng.integers(1, 4))):
            width, box_height, length = rng.uniform(0.4, 1.6), rng.uniform(0.4, 1.2), rng.uniform(0.4, 1.2)
            x0 = rng.uniform(-left, right - width)
            z0 = rng.uniform(1.2, back - length)
            low = np.array([x0, camera_height - box_height, z0])
            high = low + np.array([width, box_height, length])
            t_low, t_high = (low - 0) / rays, (high - 0) / rays
            t_near, t_far = np.minimum(t_low, t_high), np.maximum(t_low, t_high)
            entry, entry_axis = t_near.max(axis=-1), t_near.argmax(axis=-1)
            hit = (entry < t_far.min(axis=-1)) & (entry > 0) & (entry < depth)
            depth[hit], surface[hit] = entry[hit], len(planes) + box
            normal[hit] = 0.0
            facing = -np.sign(rays[hit, entry_axis[hit]])
            normal[hit, entry_axis[hit]] = facing

    colours = rng.uniform(0.35, 0.9, size=(len(planes) + 3, 3))
    colours[3] = rng.uniform(0.3, 0.6) * np.array([1.0, 0.75, 0.5])  # a wooden floor
    colours[4] = rng.uniform(0.85, 0.95)                              # a pale ceiling
    albedo = colours[surface]
    points = rays * depth[..., None]
    floor = surface == 3
    boards = 0.12 * np.sin(points[..., 0] * np.pi / rng.uniform(0.15, 0.3)) ** 8
    albedo[floor] *= (1 - boards[floor])[:, None]
    albedo *= (1 + 0.06 * _noise(rng, 8) + 0.03 * _noise(rng, 2))[..., None]
    towards_light = np.array([rng.uniform(-1, 1), -1.0, rng.uniform(-0.5, 0.5)])  # from above (y is down)
    towards_light /= np.linalg.norm(towards_light)
    lambert = np.clip((normal * towards_light).sum(axis=-1), 0, 1)
    shading = (0.45 + 0.55 * lambert) / (1 + 0.03 * depth ** 2) ** 0.5
    rgb = np.clip(albedo * shading[..., None] * 255, 0, 255).astype(np.uint8)
    return rgb, np.clip(depth, 0, MAX_DEPTH).astype(np.float32)


def write_nyu_depth_v2(root: str | Path, count: int = 100, seed: int = 0) -> Path:
    """Writes `count` samples to root/val/official/00001.h5, ...; returns that folder."""
    folder = Path(root) / "val" / "official"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    for index in range(1, count + 1):
        rgb, depth = render_room(rng)
        path = folder / f"{index:05d}.h5"
        temporary = path.with_suffix(".h5.partial")  # a sample appears whole or not at all
        with h5py.File(temporary, "w") as h5f:
            h5f.create_dataset("rgb", data=np.transpose(rgb, (2, 0, 1)), compression="gzip", compression_opts=1)
            h5f.create_dataset("depth", data=depth, compression="gzip", compression_opts=1)
        temporary.replace(path)
    return folder


def ensure_nyu_depth_v2(root: str | Path, count: int) -> Path:
    """Generates the samples unless root/val/official holds at least `count` .h5 files (a real
    NYU Depth V2 there is used as it is)."""
    folder = Path(root) / "val" / "official"
    if sum(1 for _ in folder.glob("*.h5")) >= count:
        return folder
    return write_nyu_depth_v2(root, count)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", type=Path)
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print(f"wrote {args.count} samples to {write_nyu_depth_v2(args.root, args.count, args.seed)}")
