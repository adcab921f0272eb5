"""The embedded default data: cartoon faces drawn procedurally, with the attributes they were drawn with.

Every face is a few dozen anti-aliased shapes (clamped ramps of distance fields) evaluated for a
chunk of faces at once in torch and numpy: no per-face Python loop, thousands of faces a second per
core. Shapes live in face-local coordinates (x right, y down, head about 1.1 x 1.4 units), so any
image_size works and pose is one affine map. Randomness comes from numpy generators seeded by
(seed, block index) and is always drawn for a whole block, so ``draw_faces(n, seed=s)`` is exactly
the first n faces of ``draw_faces(m, seed=s)`` for any m > n, the chunk size used for drawing never
changes a pixel, and the global RNGs are never touched.
"""
from __future__ import annotations

import math
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from facegen.data.base import DataError, FaceDataModule, FaceDataset

#: Faces whose attributes and noise come from one generator, seeded by (seed, block index).
BLOCK = 512
#: Faces drawn at once: each [CHUNK, H, W] float32 field (~2.4 MB at 48 px) stays in the CPU cache.
#: Any value gives the same pixels; this one was fastest on one core.
CHUNK = 256
#: Hair styles, indexed by the ``hair_style`` label.
HAIR_STYLES = ("short", "fringe", "side_part", "long")
#: Attributes draw_faces can hold fixed, with their ranges (the label columns of the same names).
FIXABLE = {"smiling": (0, 1), "mouth_open": (0, 1), "glasses": (0, 1), "hair_darkness": (0.0, 1.0),
           "hair_style": (0, len(HAIR_STYLES) - 1), "skin_tone": (0.0, 1.0), "pose": (-1.0, 1.0),
           "roll": (-1.0, 1.0), "scale": (0.86, 1.0), "shift_x": (-0.06, 0.06), "shift_y": (-0.05, 0.05)}
# Boxes (fractions of the image: rows, cols) that hold a feature of every drawn face, whatever its
# pose: the mouth with its smile or opening; the eyes with glasses; hair (above every hairline).
_MOUTH_BOX = ((0.55, 0.86), (0.28, 0.72))
_EYES_BOX = ((0.40, 0.56), (0.25, 0.75))
_HAIR_BOX = ((0.16, 0.26), (0.42, 0.58))

# Per hair style: hairline height at the middle, its curvature, fringe jaggedness, whether the
# hair falls past the shoulders, extra volume. Indexed by style, looked up per face.
_HAIRLINE = np.array([-0.44, -0.22, -0.36, -0.40])
_HAIRLINE_CURVE = np.array([0.55, 0.15, 0.30, 0.50])
_FRINGE_WAVE = np.array([0.0, 0.03, 0.0, 0.0])
_LONG = np.array([0.0, 0.0, 0.0, 1.0])
_VOLUME = np.array([0.05, 0.07, 0.07, 0.09])
#: The fixed gray levels of eye whites, irises, lids, the open mouth and teeth, as lerp_ takes them.
_GRAY = {v: torch.tensor(v) for v in (0.06, 0.1, 0.12, 0.88, 0.93)}


# -- parameters ----------------------------------------------------------------------------------
def _sample_parameters(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """All per-face draws of one chunk, in a fixed order so results depend on (seed, chunk) only.

    Both mouth curves (smiling and not) are drawn for every face and :func:`_derive` picks one, so
    holding ``smiling`` fixed changes the mouth and nothing else about a face.
    """
    u = lambda lo, hi: rng.uniform(lo, hi, n)  # noqa: E731
    p: dict[str, np.ndarray] = {}
    p["smiling"] = (rng.random(n) < 0.5).astype(np.int64)
    p["mouth_open"] = (rng.random(n) < 0.45).astype(np.int64)   # kept only where smiling
    p["glasses"] = (rng.random(n) < 0.3).astype(np.int64)
    p["hair_darkness"] = rng.random(n)
    p["hair_style"] = rng.integers(0, len(HAIR_STYLES), n)
    p["skin_tone"] = rng.random(n)
    p["pose"] = u(-1.0, 1.0)                     # yaw: features slide sideways
    p["roll"] = u(-1.0, 1.0)                     # in-plane rotation, +-12 degrees
    p["scale"] = u(0.86, 1.0)
    p["shift_x"] = u(-0.06, 0.06)
    p["shift_y"] = u(-0.05, 0.05)
    # how far the mouth's centre sits below its corners (local units): up = smile, down = frown
    p["smile_curve"] = u(0.07, 0.11)
    p["neutral_curve"] = u(-0.045, 0.015)
    p["opening_size"] = u(0.07, 0.12)
    p["mouth_width"] = u(0.15, 0.2)
    p["mouth_y"] = u(0.32, 0.37)
    p["lip"] = u(0.028, 0.04)
    p["head_w"] = u(0.51, 0.57)
    p["head_h"] = u(0.66, 0.72)
    p["eye_sep"] = u(0.19, 0.23)
    p["eye_y"] = u(-0.09, -0.04)
    p["eye_open"] = u(0.8, 1.15)
    p["gaze_x"] = u(-0.035, 0.035)
    p["gaze_y"] = u(-0.012, 0.012)
    p["brow_raise"] = u(0.11, 0.16)
    p["brow_tilt"] = u(-0.25, 0.25)
    p["brow_thick"] = u(0.022, 0.035)
    p["nose_y"] = u(0.13, 0.17)
    p["glasses_round"] = (rng.random(n) < 0.5).astype(np.float64)
    p["lens_tint"] = np.where(rng.random(n) < 0.2, u(0.5, 0.8), u(0.0, 0.2))
    p["frame"] = u(0.02, 0.25)
    p["light_angle"] = u(0.0, 2 * math.pi)
    p["light"] = u(0.05, 0.3)
    p["hair_volume"] = u(0.0, 0.05)
    p["hairline_jitter"] = u(-0.04, 0.04)
    p["part_side"] = rng.choice([-1.0, 1.0], n)
    p["background"] = u(0.12, 0.92)
    p["background_gradient"] = u(-0.25, 0.25)
    p["background_angle"] = u(0.0, 2 * math.pi)
    p["clothes"] = u(0.1, 0.9)
    p["noise"] = u(0.005, 0.02)
    return p


def _hold(p: dict[str, np.ndarray], fixed: Mapping[str, float]) -> None:
    """Overwrite the drawn attributes named in ``fixed`` (checked against FIXABLE) for every face."""
    for key, value in fixed.items():
        if key not in FIXABLE:
            raise ValueError(f"draw_faces: cannot hold {key!r} fixed; choose from {', '.join(FIXABLE)}")
        lo, hi = FIXABLE[key]
        if not lo <= float(value) <= hi:
            raise ValueError(f"draw_faces: {key}={value} is outside [{lo}, {hi}]")
        p[key] = np.full_like(p[key], value)


def _derive(p: dict[str, np.ndarray]) -> None:
    """Rendering knobs that follow from the attributes: the mouth's curve and opening, the hair part."""
    p["mouth_open"] = p["mouth_open"] * p["smiling"]
    p["mouth_curve"] = np.where(p["smiling"] == 1, p["smile_curve"], p["neutral_curve"])
    p["mouth_opening"] = p["mouth_open"] * p["opening_size"]
    p["part_slope"] = np.where(p["hair_style"] == HAIR_STYLES.index("side_part"), 0.22 * p["part_side"], 0.0)


# -- shapes ----------------------------------------------------------------------------------------
# Every shape is a coverage field: a clamped linear ramp of its signed distance d, 0.5 + k * d with
# k = -1 / (0.7 px) in local units, i.e. the box-filtered area of an edge over ~1.4 pixels
# (anti-aliased, never a hard threshold). Round shapes use the first-order distance (q - 1) / 2 * r,
# q being the squared radius ratio: exact at the edge, where the ramp is, and no sqrt per pixel.
#
# Speed, on one core. Face-local x and y are affine in the pixel position, so any a*x + b*y + c is one
# broadcast add of a per-face column term [B, 1, W] and row term [B, H, 1]. Small features (eyes,
# brows, nose, mouth, hairline, ears) go further: each is drawn in a frame anchored at its exactly
# rotated centre where the roll is a vertical shear, so x depends on the column alone (it differs
# from the rotated x by tan(roll) * y: at most ~0.5 px over a feature's height) and every function
# of x is a numpy array per column. Only the head, hair and back hair outlines use the full rotation.
# Features are drawn in the band of rows that holds them for every face of the chunk.


def _t(values) -> torch.Tensor | float:
    """Per-face numbers as a [B, 1, 1] float32 tensor (a python float stays a float)."""
    if np.ndim(values) == 0:
        return float(values)
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32)).view(-1, 1, 1)


def _cols(values: np.ndarray) -> torch.Tensor:
    """A per-face, per-column numpy array [B, W] as a [B, 1, W] float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(values, dtype=np.float32))[:, None, :]


def _outer(cols: np.ndarray, rows: np.ndarray) -> torch.Tensor:
    """cols [B, W] + rows [B, h] as a [B, h, W] float32 tensor: one op at full size."""
    return torch.add(_cols(cols), torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32))[:, :, None])


def _ramp(d_scaled: np.ndarray) -> np.ndarray:
    """Coverage from 0.5 + k * distance (numpy, per column)."""
    return np.clip(d_scaled, 0.0, 1.0)


def _round_(q: torch.Tensor, k: np.ndarray, radius) -> torch.Tensor:
    """Coverage of a round shape from q, its squared radius ratio (1 on the edge); q is overwritten."""
    slope = k * (0.5 * np.asarray(radius))
    return q.mul_(_t(slope)).add_(_t(0.5 - slope)).clamp_(0.0, 1.0)


def _band_(g: torch.Tensor, k: np.ndarray, half) -> torch.Tensor:
    """Coverage of |f| <= half, given g = k * f (f a distance); g is overwritten."""
    return torch.sub(_t(0.5 - k * np.asarray(half)), g.abs_(), out=g).clamp_(0.0, 1.0)


def _col_arg(v, n: int) -> np.ndarray | float:
    """A per-face scalar as a [n, 1] array that broadcasts against [n, W] columns (a float stays one)."""
    return float(v) if np.ndim(v) == 0 else np.reshape(v, (n, 1))


class _Canvas:
    """A chunk of faces being drawn: the image, and the pose that maps pixels to face-local x, y."""

    def __init__(self, p: dict[str, np.ndarray], size: int) -> None:
        self.size, self.n = size, len(p["scale"])
        self.pix = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
        self.angle = np.radians(12.0) * p["roll"]
        self.scale, self.cos, self.sin = p["scale"], np.cos(self.angle), np.sin(self.angle)
        self.c, self.s = self.cos / self.scale, self.sin / self.scale
        self.tx, self.ty = p["shift_x"], p["shift_y"] + 0.02
        self.du = self.pix[None, :] - self.tx[:, None]   # [B, W]: x = du * c + dv * s
        self.dv = self.pix[None, :] - self.ty[:, None]   # [B, H]: y = dv * c - du * s
        grad, ga = p["background_gradient"], p["background_angle"]
        self.img = _outer((grad * np.cos(ga))[:, None] * self.pix[None, :],
                          p["background"][:, None] + (grad * np.sin(ga))[:, None] * self.pix[None, :])

    def field(self, ax, ay, a0, rows: slice) -> torch.Tensor:
        """ax * x + ay * y + a0 in rotated face-local coordinates, over the given rows."""
        ax, ay, a0 = (_col_arg(v, self.n) for v in (ax, ay, a0))
        c, s = self.c[:, None], self.s[:, None]
        return _outer(self.du * (ax * c - ay * s), self.dv[:, rows] * (ax * s + ay * c) + a0)

    def ellipse(self, k, cx, cy, rx, ry, rows: slice) -> torch.Tensor:
        """Coverage of an ellipse in rotated face-local coordinates (the head and hair outlines)."""
        rx, ry = np.asarray(rx, dtype=np.float64), np.asarray(ry, dtype=np.float64)
        q = self.field(1.0 / rx, 0.0, -np.asarray(cx) / rx, rows).square_()
        t = self.field(0.0, 1.0 / ry, -np.asarray(cy) / ry, rows)
        return _round_(q.addcmul_(t, t), k, np.minimum(rx, ry))

    def rows(self, y0, y1, half_width: float) -> slice:
        """The rows that hold local |x| <= half_width, y0 <= y <= y1 for every face of the chunk."""
        y0, y1 = (np.broadcast_to(np.asarray(v, dtype=np.float64), (self.n,)) for v in (y0, y1))
        cos, sin = self.cos * self.scale, self.sin * self.scale
        reach = np.abs(sin) * half_width               # how far the corners of the box tilt up or down
        top = self.ty + np.minimum(cos * y0, cos * y1) - reach
        bottom = self.ty + np.maximum(cos * y0, cos * y1) + reach
        first = math.floor((float(top.min()) + 1.0) * self.size / 2.0 - 0.5) - 2
        last = math.ceil((float(bottom.max()) + 1.0) * self.size / 2.0 - 0.5) + 3
        return slice(min(max(first, 0), self.size), max(min(last, self.size), 0))

    def anchor(self, cx, cy) -> tuple[np.ndarray, np.ndarray]:
        """Where local (cx, cy) of each face lands in the image (u, v in -1..1)."""
        return (self.tx + self.scale * (self.cos * cx - self.sin * cy),
                self.ty + self.scale * (self.sin * cx + self.cos * cy))

    def upright_box(self, k, cx, cy, rx, ry, rows: slice) -> torch.Tensor:
        """Coverage of a box of half-size (rx, ry) centred at local (cx, cy) that does not roll (the neck)."""
        ua, va = self.anchor(cx, cy)
        kx = (k / self.scale)[:, None]                   # ramp slope per image unit
        across = _ramp(0.5 + kx * (np.abs(self.pix[None, :] - ua[:, None]) - (self.scale * rx)[:, None]))
        down = _ramp(0.5 + kx * (np.abs(self.pix[None, rows] - va[:, None]) - (self.scale * ry)[:, None]))
        return torch.mul(_cols(across), torch.from_numpy(down.astype(np.float32))[:, :, None])

    def upright_ellipse(self, k, cx, cy, rx, ry, rows: slice) -> torch.Tensor:
        """Coverage of an ellipse centred at local (cx, cy) that does not roll (the shoulders)."""
        ua, va = self.anchor(cx, cy)
        across = ((self.pix[None, :] - ua[:, None]) / (self.scale * rx)[:, None]) ** 2
        down = ((self.pix[None, rows] - va[:, None]) / (self.scale * ry)[:, None]) ** 2
        return _round_(_outer(across, down), k, min(rx, ry))

    def frame(self, cx, cy, rows: slice, faces: np.ndarray | None = None) -> "_Frame":
        """A feature frame anchored at local (cx, cy); optionally for some faces only."""
        return _Frame(self, cx, cy, rows, slice(None) if faces is None else faces)


class _Frame:
    """Face-local coordinates around a feature's centre, with roll as a shear: x per column only.

    X = (u - u_a) / (scale * cos) is exact on the feature's horizontal axis and Y is the exact local y
    (relative to the anchor), so X = x - tan(roll) * y: sub-pixel over a small feature.
    """

    def __init__(self, cv: _Canvas, cx, cy, rows: slice, faces: slice | np.ndarray) -> None:
        scale, cos, sin = cv.scale[faces], cv.cos[faces], cv.sin[faces]
        n = len(scale)
        ua, va = (w[faces] for w in cv.anchor(cx, cy))
        du = cv.pix[None, :] - ua[:, None]
        self.n = n
        self.x = du / (scale * cos)[:, None]                          # [B, W]
        self._col = -du * (sin / scale)[:, None]                      # Y = col + row
        self._row = (cv.pix[None, rows] - va[:, None]) * (cos / scale)[:, None]

    def y(self, ay, a0, extra: np.ndarray | float = 0.0) -> torch.Tensor:
        """ay * Y + a0 + extra(X) over the frame's rows: one op at full size."""
        ay, a0 = _col_arg(ay, self.n), _col_arg(a0, self.n)
        return _outer(self._col * ay + extra, self._row * ay + a0)

    def ellipse(self, k, cx, cy, rx, ry) -> torch.Tensor:
        """Coverage of an ellipse centred at (cx, cy) in the frame."""
        rx, ry = np.asarray(rx, dtype=np.float64), np.asarray(ry, dtype=np.float64)
        across = ((self.x - _col_arg(cx, self.n)) / _col_arg(rx, self.n)) ** 2
        q = self.y(1.0 / ry, -np.asarray(cy) / ry).square_().add_(_cols(across))
        return _round_(q, k, np.minimum(rx, ry))


def _render(p: dict[str, np.ndarray], size: int) -> torch.Tensor:
    """Draw one chunk of faces as floats in [0, 1], [B, size, size], from per-face numpy arrays.

    Layers go back to front: background, back hair, clothes, neck, ears, head, eyes, brows, front
    hair, glasses, nose, mouth.
    """
    cv = _Canvas(p, size)
    img = cv.img
    k = -(p["scale"] * size) / 1.4                  # ramp slope: 0.7 px either side of an edge
    kc = k[:, None]                                  # the same, against [B, W] columns
    yaw = p["pose"]
    skin = 0.86 - 0.45 * p["skin_tone"]
    hair = 0.93 - 0.88 * p["hair_darkness"]
    a, b = p["head_w"], p["head_h"]
    lx, ly = p["light"] * np.cos(p["light_angle"]), p["light"] * np.sin(p["light_angle"])
    style = p["hair_style"].astype(np.int64)
    long_, vol = _LONG[style], _VOLUME[style] + p["hair_volume"]
    fx, hair_x, mouth_x, nose_x = 0.10 * yaw, -0.05 * yaw, 0.07 * yaw, 0.17 * yaw   # turned head

    # hair that falls behind the head: a rim for short styles, down past the shoulders for long ones
    everything = slice(None)
    back = cv.ellipse(k, hair_x, 0.3 * long_ - 0.06, a + vol + 0.06 * long_, b + vol + 0.3 * long_, everything)
    back.mul_(cv.field(0.0, k, 0.5 - k * (0.02 + 0.72 * long_), everything).clamp_(0.0, 1.0))
    img.lerp_(_t(hair * 0.8), back)

    # clothes and neck stay upright; ears turn with the head
    rows = cv.rows(0.92, 2.0, 1.1)
    img[:, rows].lerp_(_t(p["clothes"]), cv.upright_ellipse(k, 0.0, 1.55, 1.05, 0.6, rows))
    rows = cv.rows(0.3, 1.5, 0.25)
    img[:, rows].lerp_(_t(skin * 0.78), cv.upright_box(k, 0.0, 0.95, 0.21, 0.5, rows))
    rows = cv.rows(-0.2, 0.2, 0.8)
    ears = cv.frame(0.0, 0.0, rows)
    across = ((np.abs(ears.x + 0.06 * yaw[:, None]) - 0.97 * a[:, None]) / 0.09) ** 2
    q = ears.y(1.0 / 0.15, 0.0).square_().add_(_cols(across))
    img[:, rows].lerp_(_t(skin * 0.9), _round_(q, k, 0.09))

    # head: an egg (narrower at the chin), shaded like a ball lit from one side, darker at the rim
    rows = cv.rows(-b - 0.03, b + 0.03, 0.62)
    xa, yb = cv.field(1.0 / a, 0.0, 0.0, rows), cv.field(0.0, 1.0 / b, 0.0, rows)
    chin = yb.clamp(min=0.0).square_().mul_(0.35).add_(1.0)
    q = xa.square_().mul_(chin).addcmul_(yb, yb)
    head = _round_(q.clone(), k, a)
    shade = cv.field(skin * lx / a, skin * ly / b, skin, rows).addcmul_(q.square_(), _t(-0.22 * skin))
    img[:, rows].lerp_(shade, head)

    # eyes and eyebrows: whites, dark iris, an outline; the eye on the turned-to side narrows
    sep, eye_y = p["eye_sep"][:, None], p["eye_y"]
    rows = cv.rows(eye_y - 0.29, eye_y + 0.11, 0.52)
    im, eyes = img[:, rows], cv.frame(fx, eye_y, rows)
    side = np.where(eyes.x >= 0.0, 1.0, -1.0)
    ex = eyes.x - side * sep                         # from the centre of this side's eye
    rx = 0.115 * (1.0 - 0.28 * yaw[:, None] * side)
    ry = 0.07 * p["eye_open"]
    eye_q = eyes.y(1.0 / ry, 0.0).square_().add_(_cols((ex / rx) ** 2))
    lid = (eye_q - 1.0).abs_().mul_(_t(0.5 * k * ry)).add_(_t(0.5 - 0.018 * k)).clamp_(0.0, 1.0)
    white = _round_(eye_q, k, ry)
    im.lerp_(_GRAY[0.93], white)
    iris_x = ((ex - (p["gaze_x"] + 0.04 * yaw)[:, None]) / 0.058) ** 2
    iris = _round_(eyes.y(1.0 / 0.058, -p["gaze_y"] / 0.058).square_().add_(_cols(iris_x)), k, 0.058)
    im.lerp_(_GRAY[0.06], iris.mul_(white))
    im.lerp_(_GRAY[0.12], lid)
    out = ex * side                                  # outward from the eye centre, both sides alike
    brow_centre = -(p["brow_raise"] + 0.04)[:, None] + 0.04 * (out / 0.13) ** 2 \
        + (p["brow_tilt"] * 0.1)[:, None] * (out / 0.13)          # an arch, its outer end tilted
    brow = _band_(eyes.y(k, 0.0, -kc * brow_centre), k, p["brow_thick"])
    brow.mul_(_cols(_ramp(0.5 + kc * (np.abs(out) - 0.13))))
    im.lerp_(_t(np.minimum(hair, 0.55 * skin) * 0.8), brow)

    # front hair: a cap above the hairline (curved, scalloped for a fringe, tilted for a side part)
    top, curve, fringe = _HAIRLINE[style] + p["hairline_jitter"], _HAIRLINE_CURVE[style], _FRINGE_WAVE[style]
    reach, lowest_ok = a + vol, eye_y - 0.12         # a fringe may hide the brows, never the eyes
    lowest = np.minimum(top + curve * reach ** 2 + np.abs(p["part_slope"]) * reach + fringe, lowest_ok)
    rows = cv.rows(-b - vol - 0.07, lowest + 0.01, 0.85)
    line = cv.frame(hair_x, -0.4, rows)
    hx = line.x
    hairline = np.minimum(curve[:, None] * hx ** 2 + p["part_slope"][:, None] * hx + top[:, None],
                          lowest_ok[:, None])
    hairline += fringe[:, None] * 4.0 * (np.abs(np.modf(hx * 5.0)[0]) - 0.5) ** 2   # scallops every 0.2
    cap = line.y(k, 0.5, -kc * (hairline + 0.4)).clamp_(0.0, 1.0)
    cap.mul_(cv.ellipse(k, hair_x, -0.06, a + vol, b + vol, rows))
    img[:, rows].lerp_(cv.field(0.5 * hair * lx, 0.5 * hair * ly, hair, rows), cap)

    # glasses, only on the faces that wear them: tinted lenses, round or squarish rims, bridge, arms
    g = np.flatnonzero(p["glasses"] > 0.5)
    if len(g):
        rows = cv.rows(eye_y - 0.16, eye_y + 0.15, 0.66)
        gl, gk = cv.frame(fx, eye_y, rows, g), k[g]
        mid = np.abs(gl.x)                                          # distance from the midline
        gx2 = ((mid - sep[g]) / 0.165) ** 2
        gy2 = gl.y(1.0 / 0.125, 0.005 / 0.125).square_()
        round_d = (gy2 * 0.5).add_(_cols((gx2 - 1.0) * 0.5))        # (r^2 - 1) / 2: a round rim
        glass_d = gy2.square_().mul_(0.25).add_(_cols((gx2 ** 2 - 1.0) * 0.25))   # p = 4: squarish
        glass_d.lerp_(round_d, _t(p["glasses_round"][g])).mul_(0.125)
        gim = img[g, rows]
        lens = (glass_d * _t(gk)).add_(0.5).clamp_(0.0, 1.0)
        gim.mul_(lens.mul_(_t(-p["lens_tint"][g])).add_(1.0))
        rim = _band_(glass_d.mul_(_t(gk)), gk, 0.024)
        gkc, gsep = gk[:, None], sep[g]
        beside = np.maximum(_ramp(0.5 + gkc * (mid - (gsep - 0.15))),             # bridge
                            _ramp(0.5 + gkc * ((gsep + 0.16) - mid))              # arms, out to
                            * _ramp(0.5 + gkc * (np.abs(gl.x + fx[g][:, None]) - 1.02 * a[g][:, None])))
        bar = _band_(gl.y(gk, 0.02 * gk), gk, 0.02).mul_(_cols(beside))
        gim.lerp_(_t(p["frame"][g]), torch.maximum(rim, bar))
        img[g, rows] = gim

    # nose: a shadow under the tip and a line on the side away from the light
    nose_y = p["nose_y"]
    rows = cv.rows(nose_y - 0.22, nose_y + 0.06, 0.3)
    im, nose = img[:, rows], cv.frame(nose_x, nose_y, rows)
    im.mul_(nose.ellipse(k, 0.0, 0.015, 0.085, 0.035).mul_(-0.3).add_(1.0))
    line_x = np.where(lx >= 0, -0.055, 0.055)[:, None]
    ridge = _band_(nose.y(k, 0.1 * k), k, 0.09).mul_(_cols(_ramp(0.5 + kc * (np.abs(nose.x - line_x) - 0.016))))
    im.mul_(ridge.mul_(-0.2).add_(1.0))

    # mouth: its centre drops below its corners when smiling; open smiles show teeth
    my, mw, curve, opening = p["mouth_y"], p["mouth_width"][:, None], p["mouth_curve"][:, None], p["mouth_opening"]
    rows = cv.rows(my - 0.1, my + 0.1 + opening, 0.35)
    im, mouth = img[:, rows], cv.frame(mouth_x, my, rows)
    t = (mouth.x / mw) ** 2                          # 0 at the centre, 1 at the corners
    edge = _ramp(0.5 + kc * (np.abs(mouth.x) - mw))
    bend = curve * (t - 0.5)                         # the lips' line is at Y = -bend
    lips = _band_(mouth.y(k, 0.0, kc * bend), k, p["lip"])
    o = np.flatnonzero(opening > 0)
    if len(o):                                       # the dark opening, teeth and lower lip of open smiles
        om, ok = cv.frame(mouth_x, my, rows, o), k[o][:, None]
        gap = np.clip(1.0 - t[o], 0.0, None) * opening[o][:, None]
        inside = om.y(-k[o], 0.5, -ok * bend[o]).clamp_(0.0, 1.0)
        inside.mul_(om.y(k[o], 0.5, ok * (bend[o] - gap)).clamp_(0.0, 1.0)).mul_(_cols(edge[o]))
        oim = im[o]
        oim.lerp_(_GRAY[0.1], inside)
        oim.lerp_(_GRAY[0.88], inside.mul_(om.y(k[o], 0.5, ok * (bend[o] - 0.45 * gap)).clamp_(0.0, 1.0)))
        lower = _band_(om.y(k[o], 0.0, ok * (bend[o] - gap)), k[o], p["lip"][o] * 0.8)
        im[o] = oim
        lips[o] = torch.maximum(lips[o], lower)
    im.lerp_(_t(skin * 0.38), lips.mul_(_cols(edge)))
    return img


# -- public API ------------------------------------------------------------------------------------
def draw_faces(n: int, image_size: int = 48, seed: int = 0, channels: int = 1,
               fixed: Mapping[str, float] | None = None) -> tuple[torch.Tensor, pd.DataFrame]:
    """Draw n cartoon faces: uint8 [n, channels, size, size] and one label row per face.

    Labels are the attributes each face was drawn with: smiling, mouth_open (only when smiling),
    glasses (0/1), hair_darkness, skin_tone (0 light .. 1 dark), hair_style (index into HAIR_STYLES),
    pose (yaw) and roll (-1..1), scale, shift_x, shift_y. ``fixed`` holds some of them (keys of
    FIXABLE) for every face while all other draws stay the same: ``fixed={"smiling": 1}`` and
    ``{"smiling": 0}`` with one seed give the same faces with and without a smile.
    channels=3 repeats the gray face.
    """
    n, size, channels = int(n), int(image_size), int(channels)
    if n < 0:
        raise DataError(f"synthetic: cannot draw {n} faces; data.num_images must be >= 0")
    if size < 16:
        raise DataError(f"synthetic: image_size {size} is too small to draw a face; use 48 or 64")
    if channels not in (1, 3):
        raise DataError(f"synthetic: channels must be 1 or 3, got {channels} (data.channels)")
    images = torch.empty((n, 1, size, size), dtype=torch.uint8)
    params: list[dict[str, np.ndarray]] = []
    for block, first in enumerate(range(0, n, BLOCK)):
        m = min(BLOCK, n - first)
        rng = _block_rng(seed, block)
        drawn = _sample_parameters(rng, BLOCK)        # always a full block: prefixes stay identical
        noise = np.frombuffer(bytearray(rng.bytes(BLOCK * size * size)), dtype=np.int8).reshape(BLOCK, size, size)
        drawn = {key: val[:m] for key, val in drawn.items()}
        _hold(drawn, fixed or {})
        _derive(drawn)
        params.append(drawn)
        for start in range(0, m, CHUNK):
            part = slice(start, min(start + CHUNK, m))
            chunk = {key: val[part] for key, val in drawn.items()}
            faces = _render(chunk, size).mul_(255.0)
            # int8 noise is uniform on [-128, 127]: standard deviation 73.9, so scale by 255 / 73.9
            faces.addcmul_(torch.from_numpy(noise[part]).float(), _t(chunk["noise"] * (255.0 / 73.9)))
            images[first + part.start:first + part.stop, 0] = faces.add_(0.5).clamp_(0.0, 255.0).to(torch.uint8)
    labels = _labels(params, n)
    if channels == 3:
        images = images.expand(n, 3, size, size).contiguous()
    return images, labels


def _block_rng(seed: int, block: int) -> np.random.Generator:
    """The generator for one block of faces: depends on (seed, block) only, never on global RNG state."""
    return np.random.default_rng([int(seed) % (1 << 63), int(block)])


def _labels(params: list[dict[str, np.ndarray]], n: int) -> pd.DataFrame:
    """The label table: the drawn attributes people ask about, not every rendering knob."""
    columns = {"smiling": np.int64, "mouth_open": np.int64, "glasses": np.int64, "hair_darkness": np.float32,
               "hair_style": np.int64, "skin_tone": np.float32, "pose": np.float32, "roll": np.float32,
               "scale": np.float32, "shift_x": np.float32, "shift_y": np.float32}
    if not params:
        return pd.DataFrame({k: np.zeros(0, dtype=t) for k, t in columns.items()})
    return pd.DataFrame({k: np.concatenate([p[k] for p in params]).astype(t) for k, t in columns.items()},
                        index=pd.RangeIndex(n))


# -- where features are, and how to read them back ---------------------------------------------------
def _box(box: tuple[tuple[float, float], tuple[float, float]], image_size: int) -> tuple[slice, slice]:
    size = int(image_size)
    (r0, r1), (c0, c1) = box
    return slice(round(r0 * size), round(r1 * size)), slice(round(c0 * size), round(c1 * size))


def mouth_region(image_size: int) -> tuple[slice, slice]:
    """(rows, cols) of the box that holds every drawn face's mouth, open or smiling, in any pose."""
    return _box(_MOUTH_BOX, image_size)


def eyes_region(image_size: int) -> tuple[slice, slice]:
    """(rows, cols) of the box around both eyes (and glasses) of every drawn face."""
    return _box(_EYES_BOX, image_size)


def hair_region(image_size: int) -> tuple[slice, slice]:
    """(rows, cols) of a box on top of the head that every hair style covers, in any pose."""
    return _box(_HAIR_BOX, image_size)


def _column_max(t: torch.Tensor, pad: int) -> torch.Tensor:
    """Running max down each column over 2 * pad + 1 rows, edges repeated ([N, H, W]; faster than max_pool2d)."""
    h = t.shape[1]
    padded = torch.cat([t[:, :1].expand(-1, pad, -1), t, t[:, -1:].expand(-1, pad, -1)], dim=1)
    out = padded[:, :h].clone()
    for i in range(1, 2 * pad + 1):
        torch.maximum(out, padded[:, i:i + h], out=out)
    return out


def mouth_statistic(images: torch.Tensor) -> torch.Tensor:
    """Per image: how much the mouth curves up (smile) or down (frown), as a fraction of the height.

    Inside :func:`mouth_region`, thin dark strokes are isolated with a vertical black top-hat
    (closing minus image, ~1/7 of the height tall): lips and an open mouth stay, while hair,
    background and smooth shading drop out. Only rows near the strongest stroke of the middle
    columns count (the mouth, not a chin edge below it). Each column's stroke height is its
    darkness-weighted mean row, and a weighted parabola through them gives how far the middle sits
    below the ends: positive for smiles, about 0 or negative otherwise. Skin tone, shifts of a few
    pixels and blur (decoded faces) barely move it. Takes [N, C, H, W] or [N, H, W], uint8 or float.
    """
    x = images.float()
    if x.ndim == 4:
        x = x.mean(dim=1)
    if x.ndim != 3 or x.shape[-1] != x.shape[-2]:
        raise ValueError(f"mouth_statistic expects square [N, C, H, W] or [N, H, W] images, got "
                         f"{tuple(images.shape)}")
    size = x.shape[-1]
    rows, cols = mouth_region(size)
    pad = max(2, round(size * 0.07))
    strip = x[:, :, cols]                                   # whole height: no false edges at a crop
    closing = -_column_max(-_column_max(strip, pad), pad)
    hat = (closing - strip)[:, rows]
    flat = x.flatten(1)
    contrast = (flat.amax(dim=1) - flat.amin(dim=1)).clamp(min=1e-6).view(-1, 1, 1)
    dark = (hat / contrast - 0.04).clamp(min=0.0)          # drop noise and faint shading
    n_rows, n_cols = dark.shape[1], dark.shape[2]
    r = torch.arange(n_rows, dtype=torch.float32).view(1, -1, 1)
    c = torch.arange(n_cols, dtype=torch.float32).view(1, 1, -1)

    middle = dark[:, :, n_cols // 3: n_cols - n_cols // 3].sum(dim=2)         # [N, rows]
    centre_row = middle.argmax(dim=1).float().view(-1, 1, 1)
    near = ((r - centre_row) >= -max(2.0, 0.085 * size)) & ((r - centre_row) <= max(2.0, 0.065 * size))
    dark = dark * near
    # keep the run of columns with a stroke that contains the middle: the mouth, not an edge beside it
    has = dark.sum(dim=1) > 0.05                            # [N, cols]
    mid = n_cols // 2
    run = torch.cat([has[:, :mid].flip(1).cumprod(dim=1).flip(1), has[:, mid:].cumprod(dim=1)], dim=1)
    col_mass = dark.sum(dim=1) * run                        # [N, cols]
    col_row = (dark * r).sum(dim=1) / col_mass.clamp(min=1e-6)
    # weighted least squares: row = a + b * d + g * d^2 (d = column - centre; b absorbs a tilted head)
    w = col_mass / col_mass.sum(dim=1, keepdim=True).clamp(min=1e-6)
    c = c.view(1, -1)
    d = c - (w * c).sum(dim=1, keepdim=True)
    basis = torch.stack([torch.ones_like(d), d, d.square()], dim=2)       # [N, cols, 3]
    gram = (basis * w.unsqueeze(2)).transpose(1, 2) @ basis + 1e-4 * torch.eye(3)
    rhs = (basis * (w * torch.nan_to_num(col_row)).unsqueeze(2)).sum(dim=1)
    g = torch.linalg.solve(gram, rhs)[:, 2]
    half2 = 3.0 * (w * d.square()).sum(dim=1)             # (half-width)^2 of an even stroke
    drop = -g * half2                                       # rows the middle sits below the ends
    found = col_mass.sum(dim=1) > 1e-3
    return torch.where(found, drop / size, torch.zeros_like(drop))


class SyntheticFaces(FaceDataModule):
    """The embedded default source: ``num_images`` drawn faces, labelled, no download.

    cache_dir is accepted for uniformity with the other sources but unused: drawing 20,000 faces
    takes about a second, no slower than reading a cache would be.
    """

    def __init__(self, num_images: int = 20000, image_size: int = 48, channels: int = 1, batch_size: int = 64,
                 val_fraction: float = 0.05, limit: int | None = None, hflip: bool = False, seed: int = 0,
                 cache_dir: str | None = None) -> None:
        super().__init__(image_size=image_size, channels=channels, batch_size=batch_size,
                         val_fraction=val_fraction, limit=limit, hflip=hflip, seed=seed,
                         cache_dir=cache_dir, name="synthetic")
        self.num_images = int(num_images)
        if self.num_images < 1:
            raise DataError(f"synthetic: data.num_images must be >= 1, got {self.num_images}")

    def load(self) -> FaceDataset:
        images, labels = draw_faces(self.num_images, self.image_size, self.seed, self.channels)
        return FaceDataset(images, labels, "synthetic")
