"""The embedded default data: cartoon faces drawn procedurally, with the attributes they were drawn with.

Every face is a few dozen anti-aliased shapes (clamped ramps of distance fields), drawn by one kernel
compiled with numba on first use: face by face, row by row, every layer, the noise and the uint8
quantisation in one pass with no per-face Python work, tens of thousands of faces a second on one
core. Shapes live in face-local coordinates (x right, y down, head about 1.1 x 1.4 units), so any
image_size works and pose is one affine map. Randomness comes from numpy generators seeded by
(seed, block index) and is always drawn for a whole block, so ``draw_faces(n, seed=s)`` is exactly
the first n faces of ``draw_faces(m, seed=s)`` for any m > n, a face's pixels depend on its own
parameters and noise only (not on which faces are drawn with it), and the global RNGs are never
touched.
"""
from __future__ import annotations

import logging
import math
from functools import lru_cache
from typing import Mapping

import numpy as np
import pandas as pd
import torch

from facegen.data.base import DataError, FaceDataModule, FaceDataset

log = logging.getLogger(__name__)

#: Faces whose attributes and noise come from one generator, seeded by (seed, block index).
BLOCK = 512
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


# -- parameters ----------------------------------------------------------------------------------
def _sample_parameters(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """All per-face draws of one block, in a fixed order so results depend on (seed, block) only.

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
# Layers are composited back to front by lerp (torch.lerp's formula, exact at weights 0 and 1).
#
# Speed, on one core (~90,000 faces a second at 48 px; the torch version this replaced drew ~12,000).
# One compiled kernel (numba) draws face after face, row after row: a row of a face is a small
# float32 buffer (48 floats at 48 px) that every layer updates in turn, then the noise and the uint8
# quantisation write it out, so a pixel never leaves the L1 cache between layers. Face-local x
# and y are affine in the pixel position, so any a*x + b*y + c is a per-column term (float64 math,
# rounded to float32 once per face) plus a per-row term (once per row), and the column loops are
# straight-line float32 (min/max, no branches) that LLVM vectorises. Small features (eyes, brows,
# nose, mouth, hairline, ears) go further: each is drawn in a frame anchored at its exactly rotated
# centre where the roll is a vertical shear, so x depends on the column alone (it differs from the
# rotated x by tan(roll) * y: at most ~0.5 px over a feature's height) and every function of x is
# a per-column term. Only the head, hair and back hair outlines use the full rotation. Each feature
# is drawn in the band of rows that can hold it for that face (see _rows); the rest of the row is
# untouched, since its coverage there is exactly 0.

#: The per-face numbers the kernel reads (float64; pixel math is float32), one record per face.
_FACE = np.dtype([(name, np.float64) for name in (
    "scale", "cos", "sin", "tx", "ty", "yaw", "skin", "hair", "a", "b", "lx", "ly",
    "background", "grad_x", "grad_y", "clothes", "long", "vol", "hairline", "hairline_curve",
    "fringe", "part_slope", "eye_sep", "eye_y", "eye_open", "gaze_x", "gaze_y", "brow_raise",
    "brow_tilt", "brow_thick", "glasses", "glasses_round", "lens_tint", "frame", "nose_y",
    "mouth_y", "mouth_width", "mouth_curve", "mouth_opening", "lip", "noise")])


def _face_table(p: dict[str, np.ndarray]) -> np.ndarray:
    """The kernel's input: pose, colours and feature knobs of every face, from the drawn parameters."""
    f = np.empty(len(p["scale"]), dtype=_FACE)
    angle = np.radians(12.0) * p["roll"]             # in-plane rotation, +-12 degrees
    style = p["hair_style"].astype(np.int64)
    f["scale"], f["cos"], f["sin"] = p["scale"], np.cos(angle), np.sin(angle)
    f["tx"], f["ty"] = p["shift_x"], p["shift_y"] + 0.02
    f["yaw"] = p["pose"]
    f["skin"] = 0.86 - 0.45 * p["skin_tone"]
    f["hair"] = 0.93 - 0.88 * p["hair_darkness"]
    f["a"], f["b"] = p["head_w"], p["head_h"]
    f["lx"], f["ly"] = p["light"] * np.cos(p["light_angle"]), p["light"] * np.sin(p["light_angle"])
    grad, ga = p["background_gradient"], p["background_angle"]
    f["background"], f["grad_x"], f["grad_y"] = p["background"], grad * np.cos(ga), grad * np.sin(ga)
    f["clothes"] = p["clothes"]
    f["long"], f["vol"] = _LONG[style], _VOLUME[style] + p["hair_volume"]
    f["hairline"] = _HAIRLINE[style] + p["hairline_jitter"]
    f["hairline_curve"], f["fringe"] = _HAIRLINE_CURVE[style], _FRINGE_WAVE[style]
    for key in ("part_slope", "eye_sep", "eye_y", "eye_open", "gaze_x", "gaze_y", "brow_raise", "brow_tilt",
                "brow_thick", "glasses", "glasses_round", "lens_tint", "frame", "nose_y", "mouth_y",
                "mouth_width", "mouth_curve", "mouth_opening", "lip"):
        f[key] = p[key]
    # int8 noise is uniform on [-128, 127]: standard deviation 73.9, so scale by 255 / 73.9
    f["noise"] = p["noise"] * (255.0 / 73.9)
    return f


# The kernel and its helpers are plain Python here, compiled by numba on first use (see _kernel), so
# importing this module stays cheap. The helpers take and return float32 (or float64 where noted).
def _clamp(x):  # pragma: no cover - compiled by numba
    """Clamp to [0, 1]: coverage from 0.5 + k * distance."""
    return min(max(x, np.float32(0.0)), np.float32(1.0))


def _lerp(v, end, w):  # pragma: no cover - compiled by numba
    """v towards end by w, as torch.lerp computes it: exactly v at w = 0 and exactly end at w = 1."""
    small = w < np.float32(0.5)
    return (v if small else end) + (w if small else w - np.float32(1.0)) * (end - v)


def _ramp64(d_scaled):  # pragma: no cover - compiled by numba
    """Coverage from 0.5 + k * distance (float64, per column), rounded to float32."""
    return np.float32(min(max(d_scaled, 0.0), 1.0))


def _rows(ty, cos, sin, scale, y0, y1, half_width, size, banded):  # pragma: no cover - compiled by numba
    """The rows [first, last) that hold local |x| <= half_width, y0 <= y <= y1 of a face (all if not banded).

    Conservative: the box's corners tilted by the roll, then 2 rows above and 3 below to spare.
    """
    if not banded:
        return 0, size
    cos_s, sin_s = cos * scale, sin * scale
    reach = abs(sin_s) * half_width                 # how far the corners of the box tilt up or down
    top = ty + min(cos_s * y0, cos_s * y1) - reach
    bottom = ty + max(cos_s * y0, cos_s * y1) + reach
    first = int(np.floor((top + 1.0) * size / 2.0 - 0.5)) - 2
    last = int(np.ceil((bottom + 1.0) * size / 2.0 - 0.5)) + 3
    return min(max(first, 0), size), max(min(last, size), 0)


def _draw(faces, noise, out, banded):  # pragma: no cover - compiled by numba
    """Draw faces (records of _FACE) with int8 noise [n, H, W] into uint8 out [n, H, W].

    Layers go back to front: background, back hair, clothes, neck, ears, head, eyes, brows, front
    hair, glasses, nose, mouth. Then faces * 255 + noise * scale + 0.5, clamped to 0..255, truncated.
    banded=False draws every feature over the whole image (the same pixels, only slower).
    """
    f32 = np.float32
    n, size = out.shape[0], out.shape[2]
    half, one, white_level = f32(0.5), f32(1.0), f32(255.0)
    pix = (np.arange(size) + 0.5) * (2.0 / size) - 1.0
    v = np.empty(size, np.float32)                  # the row being drawn
    # per-column terms of the face being drawn (float32), named by layer
    cols = np.zeros((35, size), np.float32)
    bg_c, back_x, back_y, cut_c, clothes_c, neck_c, ear_c, ear_x = cols[0], cols[1], cols[2], cols[3], \
        cols[4], cols[5], cols[6], cols[7]
    head_x, head_y, shade_c = cols[8], cols[9], cols[10]
    eye_c, eye_x, iris_c, iris_x, brow_c, brow_end = cols[11], cols[12], cols[13], cols[14], cols[15], cols[16]
    cap_c, hair_x_c, hair_y_c, hair_shade_c = cols[17], cols[18], cols[19], cols[20]
    lens_c, round_c, square_c, bar_c, beside = cols[21], cols[22], cols[23], cols[24], cols[25]
    nose_c, nose_x_c, ridge_c, ridge_end = cols[26], cols[27], cols[28], cols[29]
    lips_c, mouth_end, inside_c, teeth_c, gap_c = cols[30], cols[31], cols[32], cols[33], cols[34]

    for i in range(n):
        f = faces[i]
        scale, cos, sin, tx, ty = f.scale, f.cos, f.sin, f.tx, f.ty
        c, s = cos / scale, sin / scale              # x = du * c + dv * s, y = dv * c - du * s
        k = -(scale * size) / 1.4                    # ramp slope: 0.7 px either side of an edge
        yaw, skin, hair, a, b, lx, ly = f.yaw, f.skin, f.hair, f.a, f.b, f.lx, f.ly
        long_, vol = f.long, f.vol
        fx, hair_x, mouth_x, nose_x = 0.10 * yaw, -0.05 * yaw, 0.07 * yaw, 0.17 * yaw   # turned head
        kf = f32(k)

        # anchors of the feature frames (where their local centre lands, u and v in -1..1) and the
        # frames' row factor: Y = (v - va) * cos / scale; X = (u - ua) / (scale * cos), per column
        x_of, y_of = 1.0 / (scale * cos), cos / scale
        ear_u, ear_v = tx, ty
        eye_u, eye_v = tx + scale * (cos * fx - sin * f.eye_y), ty + scale * (sin * fx + cos * f.eye_y)
        line_u, line_v = tx + scale * (cos * hair_x + sin * 0.4), ty + scale * (sin * hair_x - cos * 0.4)
        nose_u, nose_v = tx + scale * (cos * nose_x - sin * f.nose_y), ty + scale * (sin * nose_x + cos * f.nose_y)
        my = f.mouth_y
        mouth_u, mouth_v = tx + scale * (cos * mouth_x - sin * my), ty + scale * (sin * mouth_x + cos * my)
        clothes_u, clothes_v = tx + scale * (cos * 0.0 - sin * 1.55), ty + scale * (sin * 0.0 + cos * 1.55)
        neck_u, neck_v = tx + scale * (cos * 0.0 - sin * 0.95), ty + scale * (sin * 0.0 + cos * 0.95)

        # back hair: a rim for short styles, down past the shoulders for long ones (every row)
        back_rx, back_ry = a + vol + 0.06 * long_, b + vol + 0.3 * long_
        back_cy = 0.3 * long_ - 0.06
        back_slope = k * (0.5 * min(back_rx, back_ry))
        back_cut = 0.5 - k * (0.02 + 0.72 * long_)
        # clothes and neck stay upright; ears turn with the head
        clothes_slope = k * (0.5 * 0.6)
        neck_k = k / scale                           # ramp slope per image unit
        ear_slope = k * (0.5 * 0.09)
        # head: an egg (narrower at the chin), shaded like a ball lit from one side, darker at the rim
        head_slope = k * (0.5 * a)
        shade_ax, shade_ay = skin * lx / a, skin * ly / b
        # eyes and eyebrows: whites, dark iris, an outline; the eye on the turned-to side narrows
        sep, eye_ry = f.eye_sep, 0.07 * f.eye_open
        white_slope, iris_slope = k * (0.5 * eye_ry), k * (0.5 * 0.058)
        # front hair: a cap above the hairline (curved, scalloped for a fringe, tilted for a side part)
        top, curve, fringe, part = f.hairline, f.hairline_curve, f.fringe, f.part_slope
        reach, lowest_ok = a + vol, f.eye_y - 0.12    # a fringe may hide the brows, never the eyes
        lowest = min(top + curve * reach ** 2 + abs(part) * reach + fringe, lowest_ok)
        hair_rx, hair_ry = a + vol, b + vol
        hair_slope = k * (0.5 * min(hair_rx, hair_ry))
        hair_ax, hair_ay = 0.5 * hair * lx, 0.5 * hair * ly
        # glasses: tinted lenses, round or squarish rims, bridge, arms; nose: a shadow under the tip
        # and a line on the side away from the light; mouth: its centre drops below its corners when
        # smiling, and open smiles show teeth
        glasses, opening = f.glasses > 0.5, f.mouth_opening
        nose_slope = k * (0.5 * 0.035)
        line_x = -0.055 if lx >= 0 else 0.055
        mw, mouth_curve = f.mouth_width, f.mouth_curve

        for j in range(size):
            du = pix[j] - tx
            bg_c[j] = f32(f.grad_x * pix[j])
            back_x[j] = f32(du * ((1.0 / back_rx) * c))
            back_y[j] = f32(du * -((1.0 / back_ry) * s))
            cut_c[j] = f32(du * -(k * s))
            clothes_c[j] = f32(((pix[j] - clothes_u) / (scale * 1.05)) ** 2)
            neck_c[j] = _ramp64(0.5 + neck_k * (abs(pix[j] - neck_u) - scale * 0.21))
            d = pix[j] - ear_u
            ear_c[j] = f32(-d * s * (1.0 / 0.15))
            ear_x[j] = f32(((abs(d * x_of + 0.06 * yaw) - 0.97 * a) / 0.09) ** 2)
            head_x[j] = f32(du * ((1.0 / a) * c))
            head_y[j] = f32(du * -((1.0 / b) * s))
            shade_c[j] = f32(du * (shade_ax * c - shade_ay * s))

            d = pix[j] - eye_u
            x, col = d * x_of, -d * s
            side = 1.0 if x >= 0.0 else -1.0
            ex = x - side * sep                      # from the centre of this side's eye
            eye_rx = 0.115 * (1.0 - 0.28 * yaw * side)
            eye_c[j] = f32(col * (1.0 / eye_ry))
            eye_x[j] = f32((ex / eye_rx) ** 2)
            iris_c[j] = f32(col * (1.0 / 0.058))
            iris_x[j] = f32(((ex - (f.gaze_x + 0.04 * yaw)) / 0.058) ** 2)
            out_ = ex * side                         # outward from the eye centre, both sides alike
            brow_centre = -(f.brow_raise + 0.04) + 0.04 * (out_ / 0.13) ** 2 \
                + (f.brow_tilt * 0.1) * (out_ / 0.13)          # an arch, its outer end tilted
            brow_c[j] = f32(col * k + -k * brow_centre)
            brow_end[j] = _ramp64(0.5 + k * (abs(out_) - 0.13))
            if glasses:
                mid = abs(x)                         # distance from the midline
                gx2 = ((mid - sep) / 0.165) ** 2
                lens_c[j] = f32(col * (1.0 / 0.125))
                round_c[j] = f32((gx2 - 1.0) * 0.5)          # (r^2 - 1) / 2: a round rim
                square_c[j] = f32((gx2 ** 2 - 1.0) * 0.25)   # p = 4: squarish
                bar_c[j] = f32(col * k)
                bridge = min(max(0.5 + k * (mid - (sep - 0.15)), 0.0), 1.0)
                arms = min(max(0.5 + k * ((sep + 0.16) - mid), 0.0), 1.0) \
                    * min(max(0.5 + k * (abs(x + fx) - 1.02 * a), 0.0), 1.0)   # out to the head's side
                beside[j] = f32(max(bridge, arms))

            d = pix[j] - line_u
            hx = d * x_of
            hairline = min(curve * hx ** 2 + part * hx + top, lowest_ok)
            scallop = abs(hx * 5.0)
            hairline += fringe * 4.0 * (scallop - np.floor(scallop) - 0.5) ** 2   # scallops every 0.2
            cap_c[j] = f32(-d * s * k + -k * (hairline + 0.4))
            hair_x_c[j] = f32(du * ((1.0 / hair_rx) * c))
            hair_y_c[j] = f32(du * -((1.0 / hair_ry) * s))
            hair_shade_c[j] = f32(du * (hair_ax * c - hair_ay * s))

            d = pix[j] - nose_u
            x, col = d * x_of, -d * s
            nose_c[j] = f32(col * (1.0 / 0.035))
            nose_x_c[j] = f32((x / 0.085) ** 2)
            ridge_c[j] = f32(col * k)
            ridge_end[j] = _ramp64(0.5 + k * (abs(x - line_x) - 0.016))

            d = pix[j] - mouth_u
            x, col = d * x_of, -d * s
            t = (x / mw) ** 2                        # 0 at the centre, 1 at the corners
            bend = mouth_curve * (t - 0.5)           # the lips' line is at Y = -bend
            mouth_end[j] = _ramp64(0.5 + k * (abs(x) - mw))
            lips_c[j] = f32(col * k + k * bend)
            if opening > 0:
                gap = max(1.0 - t, 0.0) * opening
                inside_c[j] = f32(col * -k + -k * bend)
                gap_c[j] = f32(col * k + k * (bend - gap))
                teeth_c[j] = f32(col * k + k * (bend - 0.45 * gap))

        # float32 constants of the pixel loops
        back_a, back_b, back_level = f32(back_slope), f32(0.5 - back_slope), f32(hair * 0.8)
        clothes_a, clothes_b, clothes_level = f32(clothes_slope), f32(0.5 - clothes_slope), f32(f.clothes)
        ear_a, ear_b, ear_level = f32(ear_slope), f32(0.5 - ear_slope), f32(skin * 0.9)
        head_a, head_b, rim_dark = f32(head_slope), f32(0.5 - head_slope), f32(-0.22 * skin)
        white_a, white_b = f32(white_slope), f32(0.5 - white_slope)
        lid_a, lid_b = f32(0.5 * k * eye_ry), f32(0.5 - 0.018 * k)
        iris_a, iris_b = f32(iris_slope), f32(0.5 - iris_slope)
        brow_b, brow_level = f32(0.5 - k * f.brow_thick), f32(min(hair, 0.55 * skin) * 0.8)
        hair_a, hair_b = f32(hair_slope), f32(0.5 - hair_slope)
        lens_round, tint = f32(f.glasses_round), f32(-f.lens_tint)
        rim_b, glass_bar_b, frame_level = f32(0.5 - k * 0.024), f32(0.5 - k * 0.02), f32(f.frame)
        nose_a, nose_b, ridge_b = f32(nose_slope), f32(0.5 - nose_slope), f32(0.5 - k * 0.09)
        lip_b, lower_b, lip_level = f32(0.5 - k * f.lip), f32(0.5 - k * (f.lip * 0.8)), f32(skin * 0.38)
        neck_level, noise_scale = f32(skin * 0.78), f32(f.noise)
        g93, g06, g12, g10, g88 = f32(0.93), f32(0.06), f32(0.12), f32(0.1), f32(0.88)

        clothes_rows = _rows(ty, cos, sin, scale, 0.92, 2.0, 1.1, size, banded)
        neck_rows = _rows(ty, cos, sin, scale, 0.3, 1.5, 0.25, size, banded)
        ear_rows = _rows(ty, cos, sin, scale, -0.2, 0.2, 0.8, size, banded)
        head_rows = _rows(ty, cos, sin, scale, -b - 0.03, b + 0.03, 0.62, size, banded)
        eye_rows = _rows(ty, cos, sin, scale, f.eye_y - 0.29, f.eye_y + 0.11, 0.52, size, banded)
        hair_rows = _rows(ty, cos, sin, scale, -b - vol - 0.07, lowest + 0.01, 0.85, size, banded)
        glasses_rows = _rows(ty, cos, sin, scale, f.eye_y - 0.16, f.eye_y + 0.15, 0.66, size, banded)
        nose_rows = _rows(ty, cos, sin, scale, f.nose_y - 0.22, f.nose_y + 0.06, 0.3, size, banded)
        mouth_rows = _rows(ty, cos, sin, scale, my - 0.1, my + 0.1 + opening, 0.35, size, banded)

        for r in range(size):
            dv = pix[r] - ty
            bg_r = f32(f.background + f.grad_y * pix[r])
            bx_r = f32(dv * ((1.0 / back_rx) * s) + -hair_x / back_rx)
            by_r = f32(dv * ((1.0 / back_ry) * c) + -back_cy / back_ry)
            cut_r = f32(dv * (k * c) + back_cut)
            for j in range(size):
                bx, by = back_x[j] + bx_r, back_y[j] + by_r
                back = _clamp((bx * bx + by * by) * back_a + back_b) * _clamp(cut_c[j] + cut_r)
                v[j] = _lerp(bg_c[j] + bg_r, back_level, back)

            if clothes_rows[0] <= r < clothes_rows[1]:
                down = f32(((pix[r] - clothes_v) / (scale * 0.6)) ** 2)
                for j in range(size):
                    v[j] = _lerp(v[j], clothes_level, _clamp((clothes_c[j] + down) * clothes_a + clothes_b))
            if neck_rows[0] <= r < neck_rows[1]:
                down = _ramp64(0.5 + neck_k * (abs(pix[r] - neck_v) - scale * 0.5))
                for j in range(size):
                    v[j] = _lerp(v[j], neck_level, neck_c[j] * down)
            if ear_rows[0] <= r < ear_rows[1]:
                ear_r = f32((pix[r] - ear_v) * y_of * (1.0 / 0.15))
                for j in range(size):
                    ey = ear_c[j] + ear_r
                    v[j] = _lerp(v[j], ear_level, _clamp((ey * ey + ear_x[j]) * ear_a + ear_b))
            if head_rows[0] <= r < head_rows[1]:
                hx_r = f32(dv * ((1.0 / a) * s))
                hy_r = f32(dv * ((1.0 / b) * c))
                shade_r = f32(dv * (shade_ax * s + shade_ay * c) + skin)
                for j in range(size):
                    xa, yb = head_x[j] + hx_r, head_y[j] + hy_r
                    chin = max(yb, f32(0.0))
                    chin = chin * chin * f32(0.35) + one
                    q = xa * xa * chin + yb * yb
                    head = _clamp(q * head_a + head_b)
                    v[j] = _lerp(v[j], (shade_c[j] + shade_r) + q * q * rim_dark, head)
            if eye_rows[0] <= r < eye_rows[1]:
                ey = (pix[r] - eye_v) * y_of
                eye_r = f32(ey * (1.0 / eye_ry))
                iris_r = f32(ey * (1.0 / 0.058) + -f.gaze_y / 0.058)
                brow_r = f32(ey * k)
                for j in range(size):
                    t = eye_c[j] + eye_r
                    q = t * t + eye_x[j]
                    lid = _clamp(abs(q - one) * lid_a + lid_b)
                    white = _clamp(q * white_a + white_b)
                    w = _lerp(v[j], g93, white)
                    t = iris_c[j] + iris_r
                    w = _lerp(w, g06, _clamp((t * t + iris_x[j]) * iris_a + iris_b) * white)
                    w = _lerp(w, g12, lid)
                    brow = _clamp(brow_b - abs(brow_c[j] + brow_r)) * brow_end[j]
                    v[j] = _lerp(w, brow_level, brow)
            if hair_rows[0] <= r < hair_rows[1]:
                cap_r = f32((pix[r] - line_v) * y_of * k + 0.5)
                hx_r = f32(dv * ((1.0 / hair_rx) * s) + -hair_x / hair_rx)
                hy_r = f32(dv * ((1.0 / hair_ry) * c) + 0.06 / hair_ry)
                shade_r = f32(dv * (hair_ax * s + hair_ay * c) + hair)
                for j in range(size):
                    hx, hy = hair_x_c[j] + hx_r, hair_y_c[j] + hy_r
                    cap = _clamp(cap_c[j] + cap_r) * _clamp((hx * hx + hy * hy) * hair_a + hair_b)
                    v[j] = _lerp(v[j], hair_shade_c[j] + shade_r, cap)
            if glasses and glasses_rows[0] <= r < glasses_rows[1]:
                gy = (pix[r] - eye_v) * y_of
                lens_r = f32(gy * (1.0 / 0.125) + 0.005 / 0.125)
                bar_r = f32(gy * k + 0.02 * k)
                for j in range(size):
                    t = lens_c[j] + lens_r
                    gy2 = t * t
                    round_d = gy2 * half + round_c[j]
                    glass_d = _lerp(gy2 * gy2 * f32(0.25) + square_c[j], round_d, lens_round) * f32(0.125)
                    gk = glass_d * kf
                    w = v[j] * (_clamp(gk + half) * tint + one)
                    rim = _clamp(rim_b - abs(gk))
                    bar = _clamp(glass_bar_b - abs(bar_c[j] + bar_r)) * beside[j]
                    v[j] = _lerp(w, frame_level, max(rim, bar))
            if nose_rows[0] <= r < nose_rows[1]:
                ny = (pix[r] - nose_v) * y_of
                nose_r = f32(ny * (1.0 / 0.035) + -0.015 / 0.035)
                ridge_r = f32(ny * k + 0.1 * k)
                for j in range(size):
                    t = nose_c[j] + nose_r
                    w = v[j] * (_clamp((t * t + nose_x_c[j]) * nose_a + nose_b) * f32(-0.3) + one)
                    ridge = _clamp(ridge_b - abs(ridge_c[j] + ridge_r)) * ridge_end[j]
                    v[j] = w * (ridge * f32(-0.2) + one)
            if mouth_rows[0] <= r < mouth_rows[1]:
                my_r = (pix[r] - mouth_v) * y_of
                lips_r = f32(my_r * k)
                if opening > 0:                      # the dark opening, teeth and lower lip of open smiles
                    open_r, shut_r = f32(my_r * -k + 0.5), f32(my_r * k + 0.5)
                    for j in range(size):
                        lips = _clamp(lip_b - abs(lips_c[j] + lips_r))
                        inside = _clamp(inside_c[j] + open_r) * _clamp(gap_c[j] + shut_r) * mouth_end[j]
                        w = _lerp(v[j], g10, inside)
                        w = _lerp(w, g88, inside * _clamp(teeth_c[j] + shut_r))
                        lips = max(lips, _clamp(lower_b - abs(gap_c[j] + lips_r)))
                        v[j] = _lerp(w, lip_level, lips * mouth_end[j])
                else:
                    for j in range(size):
                        lips = _clamp(lip_b - abs(lips_c[j] + lips_r))
                        v[j] = _lerp(v[j], lip_level, lips * mouth_end[j])

            row_noise, row_out = noise[i, r], out[i, r]
            for j in range(size):
                level = v[j] * white_level + f32(row_noise[j]) * noise_scale + half
                row_out[j] = np.uint8(min(max(level, f32(0.0)), white_level))


@lru_cache(maxsize=1)
def _kernel():
    """_draw compiled by numba on first use, ~7 s, then cached on disk (in __pycache__ next to this
    file, else in numba's user cache dir or NUMBA_CACHE_DIR): later processes load it in under a second."""
    import numba
    from numba.extending import register_jitable

    options = dict(fastmath=True, boundscheck=False)
    for helper in (_clamp, _lerp, _ramp64, _rows):
        register_jitable(**options)(helper)
    try:
        return numba.njit(cache=True, **options)(_draw)
    except RuntimeError as err:                      # no writable cache dir: compile in every process
        log.warning("synthetic faces: numba cannot cache the drawing kernel (%s); it is compiled again in "
                    "every process. Set NUMBA_CACHE_DIR to a writable directory to cache it.", err)
        return numba.njit(cache=False, **options)(_draw)


def _render(p: dict[str, np.ndarray], noise: np.ndarray, out: np.ndarray, banded: bool = True) -> None:
    """Draw the faces of per-face arrays p with int8 noise [n, H, W] into uint8 out [n, H, W]."""
    _kernel()(_face_table(p), noise, out, banded)


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
    pixels = images.numpy()[:, 0]                     # a view: the kernel writes the faces in place
    params: list[dict[str, np.ndarray]] = []
    for block, first in enumerate(range(0, n, BLOCK)):
        m = min(BLOCK, n - first)
        rng = _block_rng(seed, block)
        drawn = _sample_parameters(rng, BLOCK)        # always a full block: prefixes stay identical
        noise = np.frombuffer(rng.bytes(BLOCK * size * size), dtype=np.int8).reshape(BLOCK, size, size)
        drawn = {key: val[:m] for key, val in drawn.items()}
        _hold(drawn, fixed or {})
        _derive(drawn)
        params.append(drawn)
        _render(drawn, noise[:m], pixels[first:first + m])
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
    takes about a quarter of a second on one core (plus numba's one-time compile of the kernel).
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
