"""Tubular anatomy: pulmonary vessel trees and airways, great vessels, liver vessels, oesophagus and bowel.

Each structure is a :class:`TubeFamily`: tube segments (world mm), the tissue they are made of and the host
tissues they may replace (a pulmonary vessel only replaces lung, so a tree never paints over the heart). Trees
grow level by level and keep a branch only where its end lies in the organ, which is checked with
:func:`~nnscreener.synthetic.anatomy.organ_map` at the branch ends.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, FrozenSet, List, Optional, Sequence

import numpy as np

from nnscreener.synthetic.abdomen import liver_lobes, stomach
from nnscreener.synthetic.anatomy import in_abdominal_cavity, organ_map
from nnscreener.synthetic.body import profile
from nnscreener.synthetic.patient import Patient
from nnscreener.synthetic.raster import Tubes
from nnscreener.synthetic.thorax import MEDIASTINUM_HALF_WIDTH, heart
from nnscreener.synthetic.tissues import Tissue

T = Tissue
SOFT = frozenset({T.VISCERAL_FAT, T.MUSCLE, T.LUNG, T.MYOCARDIUM, T.PULMONARY_VESSEL})


@dataclass(frozen=True)
class TubeFamily:
    """Tubes of one tissue.

    Attributes:
        name: what it is, e.g. "pulmonary_arteries".
        tubes: the segments.
        tissue: tissue of the tubes (of the fluid part for a bowel lumen).
        host: tissues the tubes may replace; other voxels are left alone.
        gas_level_y: for bowel lumens: world y (mm) of the air-fluid level; gas in front (y below it). None: no gas.
    """

    name: str
    tubes: Tubes
    tissue: Tissue
    host: FrozenSet[int]
    gas_level_y: Optional[float] = None


def _points_in(p: Patient, points: np.ndarray, tissues: Sequence[int]) -> np.ndarray:
    """(n,) bool: which of the (n, 3) world points (x, y, z) lie in one of ``tissues``."""
    if not len(points):
        return np.zeros(0, bool)
    pts = points.astype(np.float32)
    return np.isin(organ_map(p, pts[:, 0], pts[:, 1], pts[:, 2]), tissues)


def sample_points(p: Patient, lo: np.ndarray, hi: np.ndarray, tissues: Sequence[int], n: int,
                  rng: np.random.Generator, extra: Optional[Callable[[np.ndarray], np.ndarray]] = None) -> np.ndarray:
    """Up to ``n`` uniform random points (m, 3) in the box [lo, hi] (x, y, z mm) that lie in ``tissues`` (and
    satisfy ``extra(points) -> bool`` when given)."""
    pts = rng.uniform(lo, hi, size=(n, 3)).astype(np.float32)
    keep = _points_in(p, pts, tissues)
    if extra is not None:
        keep &= extra(pts)
    return pts[keep]


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-9)


def _random_perpendicular(d: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    r = rng.standard_normal(d.shape)
    return _unit(r - (r * d).sum(-1, keepdims=True) * d)


def grow_trees(p: Patient, roots: np.ndarray, directions: np.ndarray, radii: np.ndarray, organ: Sequence[int],
               clouds: Sequence[np.ndarray], cloud_of_root: Sequence[int], rng: np.random.Generator,
               min_radius: float = 0.6) -> Tubes:
    """Bifurcating vessel trees filling an organ, grown together (one anatomy query per level for all trees).

    Each tip splits into a main child (0.82-0.92 of its radius, turned 5-20 degrees) and a side branch (0.5-0.75,
    turned 30-65 degrees the other way), both pulled towards random points of the organ ahead of them, with
    length 3.5-6 radii. A child survives when its end and midpoint lie in ``organ`` (halved once if not); growth
    stops below ``min_radius`` mm.

    Args:
        roots, directions: (k, 3) start (x, y, z mm, inside the organ) and direction of each trunk.
        radii: (k,) trunk radii (mm).
        organ: tissue ids the trees must stay in.
        clouds: point sets (m_i, 3) in the organ used as growth targets.
        cloud_of_root: (k,) which cloud each tree grows towards (e.g. its own lung).

    Returns:
        All segments of all trees.
    """
    starts, ends, all_radii = [], [], []
    tips, dirs = np.asarray(roots, np.float64), _unit(np.asarray(directions, np.float64))
    rads, which = np.asarray(radii, np.float64) / 0.87, np.asarray(cloud_of_root)  # first main child ~ radii
    while len(tips):
        n = len(tips)
        tips2, dirs2, which2 = np.repeat(tips, 2, axis=0), np.repeat(dirs, 2, axis=0), np.repeat(which, 2)
        # monopodial branching: a main child nearly straight on, a thinner side branch at a wider angle
        factor = np.stack([rng.uniform(0.82, 0.92, n), rng.uniform(0.5, 0.75, n)], axis=1).reshape(-1)
        r = np.repeat(rads, 2) * factor
        angle = np.stack([rng.uniform(5.0, 20.0, n), rng.uniform(30.0, 65.0, n)], axis=1).reshape(-1)
        turn = np.radians(angle)[:, None] * np.where(np.arange(2 * n) % 2, 1.0, -1.0)[:, None]
        perp = np.repeat(_random_perpendicular(dirs, rng), 2, axis=0)
        turned = np.cos(turn) * dirs2 + np.sin(turn) * perp
        # pull towards the organ point most ahead among 6 random ones of the tree's cloud
        cand = np.empty((2 * n, 6, 3))
        for c, cloud in enumerate(clouds):
            sel = which2 == c
            if sel.any():
                cand[sel] = cloud[rng.integers(0, len(cloud), (int(sel.sum()), 6))]
        to = _unit(cand - tips2[:, None, :])
        best = np.argmax((to * turned[:, None, :]).sum(-1), axis=1)
        new_dir = _unit(turned + 0.5 * to[np.arange(2 * n), best])
        length = np.maximum(r * rng.uniform(3.5, 6.0, 2 * n), 2.5)
        keep = r >= min_radius
        end = tips2 + new_dir * length[:, None]
        mid = tips2 + 0.5 * (end - tips2)
        ok = keep & _points_in(p, np.concatenate([end, mid]), organ).reshape(2, -1).all(axis=0)
        retry = np.nonzero(keep & ~ok)[0]
        end[retry] = mid[retry]
        ok[retry] = _points_in(p, end[retry], organ)
        starts.append(tips2[ok])
        ends.append(end[ok])
        all_radii.append(r[ok])
        tips, dirs, rads, which = end[ok], new_dir[ok], r[ok], which2[ok]
    return Tubes(np.concatenate(starts).astype(np.float32), np.concatenate(ends).astype(np.float32),
                 np.concatenate(all_radii).astype(np.float32))


def _airways_beside(arteries: Tubes, rng: np.random.Generator, min_radius: float = 1.0) -> tuple[Tubes, Tubes]:
    """Bronchi running beside the larger arteries (bronchovascular bundles): (walls, lumens)."""
    keep = arteries.radius >= min_radius
    a, b, r = arteries.start[keep], arteries.end[keep], arteries.radius[keep]
    d = _unit(b - a)
    side = _unit(rng.standard_normal(3))
    off = _unit(side[None] - (d @ side)[:, None] * d)
    outer = 0.9 * r
    shift = off * (r + outer + 0.5)[:, None]
    wall = np.maximum(0.5, 0.2 * outer)
    walls = Tubes(a + shift, b + shift, outer)
    lumens = Tubes(a + shift, b + shift, np.maximum(outer - wall, 0.3))
    return walls, lumens


def _polyline(points: Sequence[Sequence[float]], step: float = 10.0) -> np.ndarray:
    """Catmull-Rom spline through the control points (x, y, z), sampled about every ``step`` mm: (m, 3)."""
    c = np.asarray(points, np.float64)
    c = np.vstack([2 * c[0] - c[1], c, 2 * c[-1] - c[-2]])
    out = []
    for i in range(1, len(c) - 2):
        p0, p1, p2, p3 = c[i - 1], c[i], c[i + 1], c[i + 2]
        n = max(2, int(np.ceil(np.linalg.norm(p2 - p1) / step)))
        t = np.linspace(0.0, 1.0, n, endpoint=False)[:, None]
        a, b, c3 = -p0 + p2, 2 * p0 - 5 * p1 + 4 * p2 - p3, -p0 + 3 * p1 - 3 * p2 + p3
        out.append(0.5 * (2 * p1 + a * t + b * t**2 + c3 * t**3))
    out.append(c[-2][None])
    return np.vstack(out).astype(np.float32)


@dataclass(frozen=True)
class _Mediastinum:
    """Landmarks of the central chest, sampled every 20 mm in z (world mm)."""

    z: np.ndarray  # (m,) heights
    vertebra_front: np.ndarray  # (m,) world y of the front of the vertebral bodies
    vertebra_half_depth: np.ndarray  # (m,)
    trachea_y: np.ndarray  # (m,)
    trachea_radius: float
    carina: np.ndarray  # (3,) x, y, z
    right_hilum: np.ndarray  # (3,)
    left_hilum: np.ndarray  # (3,)


def _mediastinum(p: Patient, rng: np.random.Generator) -> _Mediastinum:
    h = p.height
    z = np.arange(-235.0 * h, 300.0 * h, 20.0)
    prof = profile(p, z.astype(np.float32))
    front = prof.vertebra_y - prof.vertebra_half_depth
    radius = rng.uniform(7.5, 10.5)
    trachea_y = front - 10.0 - 8.0 - radius - 3.0  # in front of the oesophagus, which lies on the spine
    carina = np.array([p.cx + 2.0, float(np.interp(150.0 * h, z, trachea_y)), 150.0 * h])
    shift = p.mediastinum_shift_mm
    right_hilum = np.array([p.cx + shift - MEDIASTINUM_HALF_WIDTH - 6.0, carina[1] + 22.0, 128.0 * h])
    left_hilum = np.array([p.cx + shift + MEDIASTINUM_HALF_WIDTH + 8.0, carina[1] + 26.0, 122.0 * h])
    return _Mediastinum(z, front, prof.vertebra_half_depth, trachea_y, radius, carina, right_hilum, left_hilum)


def _central_airways(p: Patient, m: _Mediastinum) -> List[TubeFamily]:
    """Trachea from the neck down to the carina, main bronchi to the hila: wall and lumen."""
    upper = m.z >= m.carina[2]
    trachea = np.column_stack([np.full(upper.sum(), p.cx + 2.0), m.trachea_y[upper], m.z[upper]])[::-1]
    trachea = np.vstack([trachea, m.carina])
    r = m.trachea_radius
    walls = Tubes.concat(
        Tubes.from_path(trachea, np.full(len(trachea), r)),
        Tubes.from_path(np.vstack([m.carina, m.right_hilum]), [0.72 * r, 0.72 * r]),
        Tubes.from_path(np.vstack([m.carina, m.left_hilum]), [0.72 * r, 0.68 * r]),
    )
    lumens = Tubes(walls.start, walls.end, walls.radius - 2.0)
    return [
        TubeFamily("trachea_bronchi_wall", walls, T.AIRWAY_WALL, SOFT),
        TubeFamily("trachea_bronchi_lumen", lumens, T.AIRWAY_LUMEN, frozenset(SOFT | {T.AIRWAY_WALL})),
    ]


def _oesophagus(p: Patient, m: _Mediastinum) -> TubeFamily:
    """From the neck along the spine down to the stomach."""
    keep = m.z > -20.0 * p.height
    points = np.column_stack([np.full(keep.sum(), p.cx - 2.0), m.vertebra_front[keep] - 10.0, m.z[keep]])[::-1]
    st = stomach(p)
    points = np.vstack([points, [st.centre[0] - 0.5 * st.radii[0], st.centre[1], st.centre[2] + 0.6 * st.radii[2]]])
    return TubeFamily("oesophagus", Tubes.from_path(points, np.full(len(points), 8.0)), T.MUSCLE,
                      frozenset({T.VISCERAL_FAT, T.MUSCLE}))


def _great_vessels(p: Patient, m: _Mediastinum, rng: np.random.Generator) -> List[TubeFamily]:
    """Aorta (root, arch, descending along the spine to the bifurcation), pulmonary trunk with the arteries to
    the hila, and the caval veins."""
    h = p.height
    hrt = heart(p)
    hx, hy, hz = hrt.centre
    desc = (m.z < 150.0 * h) & (m.z > -230.0 * h)
    descending = np.column_stack([
        np.full(desc.sum(), p.cx + 18.0), m.vertebra_front[desc] - 0.2 * m.vertebra_half_depth[desc] + 6.0, m.z[desc]
    ])[::-1]
    arch_top_y = m.trachea_y[m.z >= 150.0 * h][-1] - 14.0
    aorta = np.vstack([
        [hx - 12.0, hy + 6.0, hz + 0.45 * hrt.radii[2]],
        [p.cx + 4.0, hy - 6.0, 135.0 * h],
        [p.cx + 6.0, arch_top_y, 165.0 * h],
        [p.cx + 18.0, 0.5 * (m.carina[1] + descending[0, 1]), 168.0 * h],
        descending,
    ])
    r_desc = np.where(descending[:, 2] > -20.0 * h, 12.0, 10.0)
    aorta_r = np.concatenate([[15.0, 15.0, 14.0, 13.0], r_desc]) * rng.uniform(0.9, 1.15)
    trunk = np.array([hx - 4.0, hy - 0.8 * hrt.radii[1], hz + 0.5 * hrt.radii[2]])
    split = np.array([p.cx + 8.0, m.carina[1] + 10.0, 132.0 * h])
    pulmonary = Tubes.concat(
        Tubes.from_path(np.vstack([trunk, split]), [13.0, 12.0]),
        Tubes.from_path(np.vstack([split, m.right_hilum + [0.0, 6.0, -8.0]]), [10.0, 9.0]),
        Tubes.from_path(np.vstack([split, m.left_hilum + [0.0, 4.0, 4.0]]), [10.0, 9.0]),
    )
    below = m.z < 10.0 * h
    ivc = np.column_stack([np.full(below.sum(), p.cx - 24.0), m.vertebra_front[below] - 4.0, m.z[below]])
    ivc = np.vstack([ivc, [hx - 0.5 * hrt.radii[0], hy + 10.0, 20.0 * h]])
    svc = np.array([[p.cx - 28.0, arch_top_y + 6.0, 215.0 * h], [p.cx - 26.0, hy - 5.0, 100.0 * h]])
    veins = Tubes.concat(Tubes.from_path(ivc, np.full(len(ivc), rng.uniform(9.0, 12.0))),
                         Tubes.from_path(svc, [9.0, 9.5]))
    return [
        TubeFamily("aorta", Tubes.from_path(aorta, aorta_r), T.ARTERIAL_BLOOD, SOFT),
        TubeFamily("pulmonary_trunk", pulmonary, T.PULMONARY_VESSEL, frozenset(SOFT | {T.ARTERIAL_BLOOD})),
        TubeFamily("caval_veins", veins, T.VENOUS_BLOOD, frozenset(SOFT | {T.LIVER})),
    ]


def _lung_trees(p: Patient, right_hilum: np.ndarray, left_hilum: np.ndarray,
                rng: np.random.Generator) -> List[TubeFamily]:
    """Pulmonary arteries and veins of both lungs, and the bronchi beside the arteries."""
    h = p.height
    prof = profile(p, np.float32(100.0 * h))
    half_w = float(prof.half_width)
    lo = np.array([p.cx - half_w, p.cy - float(prof.half_depth), -110.0 * h])
    hi = np.array([p.cx + half_w, p.cy + float(prof.half_depth), 240.0 * h])
    cloud = sample_points(p, lo, hi, [T.LUNG], 6000, rng)
    right = cloud[:, 0] < p.cx + p.mediastinum_shift_mm
    clouds = [cloud[right], cloud[~right]]
    if not all(len(c) for c in clouds):
        return []
    # segmental trunks: (lateral, posterior, cranial) direction and how far below the hilum (mm) they start;
    # the basal trunks are reached by an interlobar segment running down from the hilum
    trunks = [((0.5, -0.5, 1.0), 0.0), ((0.5, 0.7, 0.8), 0.0), ((1.0, -0.6, 0.0), 0.0), ((0.7, 0.9, -0.6), 0.0),
              ((0.6, -0.2, -1.0), 0.0), ((0.5, 0.6, -1.0), 45.0), ((0.8, -0.1, -1.0), 75.0), ((0.3, 1.0, -0.8), 75.0)]
    roots, vein_roots, directions, which, radii, links = [], [], [], [], [], []
    for c, (side, hilum) in enumerate(((-1.0, right_hilum), (1.0, left_hilum))):
        for trunk, drop in trunks:
            direction = np.array(trunk) * [side, 1.0, 1.0]
            start = hilum + np.array([side * 0.2 * drop, 0.3 * drop, -drop * h])
            for target, out in ((start, roots), (start + np.array([0.0, 10.0, -30.0 * h]), vein_roots)):
                near = clouds[c][np.argsort(np.linalg.norm(clouds[c] - (target + 10.0 * direction), axis=1))[:5]]
                out.append(near[rng.integers(0, len(near))])
            radius = rng.uniform(3.5, 5.0)
            if drop:
                links.append((hilum, roots[-1], radius))
            directions.append(direction)
            which.append(c)
            radii.append(radius)
    roots, vein_roots = np.array(roots), np.array(vein_roots)
    directions, radii = np.array(directions), np.array(radii)
    arteries_t = grow_trees(p, roots, directions, radii, [T.LUNG], clouds, which, rng)
    veins_t = grow_trees(p, vein_roots, directions, 0.9 * radii, [T.LUNG], clouds, which, rng)
    interlobar = Tubes(np.array([a for a, _, _ in links], np.float32), np.array([b for _, b, _ in links], np.float32),
                       np.array([r for _, _, r in links], np.float32))
    arteries_t = Tubes.concat(interlobar, arteries_t)
    walls, lumens = _airways_beside(arteries_t, rng)
    lung = frozenset({T.LUNG})
    return [
        TubeFamily("pulmonary_arteries", arteries_t, T.PULMONARY_VESSEL, lung),
        TubeFamily("pulmonary_veins", veins_t, T.PULMONARY_VESSEL, lung),
        TubeFamily("bronchi_wall", walls, T.AIRWAY_WALL, frozenset({T.LUNG, T.PULMONARY_VESSEL})),
        TubeFamily("bronchi_lumen", lumens, T.AIRWAY_LUMEN, frozenset({T.LUNG, T.AIRWAY_WALL, T.PULMONARY_VESSEL})),
    ]


def _liver_trees(p: Patient, rng: np.random.Generator) -> List[TubeFamily]:
    """Portal vein branches from the hilum and hepatic veins from the dome, inside the liver."""
    lobes = liver_lobes(p)
    lo = np.min([np.subtract(l.centre, l.radii) for l in lobes], axis=0)
    hi = np.max([np.add(l.centre, l.radii) for l in lobes], axis=0)
    cloud = sample_points(p, lo, hi, [T.LIVER], 4000, rng)
    if len(cloud) < 20:
        return []
    (rc, rr), (lc, lr) = ((np.array(l.centre), np.array(l.radii)) for l in lobes)
    hilum_target = rc + rr * [0.4, 0.0, -0.2]
    dome_target = rc + rr * [0.5, 0.3, 0.7]
    left_target = lc + lr * [0.0, 0.0, -0.3]
    targets = (hilum_target, left_target, dome_target)
    roots = np.array([cloud[np.argmin(np.linalg.norm(cloud - t, axis=1))] for t in targets])
    directions = np.array([[-1.0, 0.0, 0.3], [1.0, -0.3, 0.0], [-0.8, -0.2, -0.5]])
    vessels = grow_trees(p, roots, directions, rng.uniform(5.0, 6.5, 3), [T.LIVER], [cloud], [0, 0, 0], rng)
    return [TubeFamily("liver_vessels", vessels, T.VENOUS_BLOOD, frozenset({T.LIVER}))]


def _bowel(p: Patient, rng: np.random.Generator) -> List[TubeFamily]:
    """Small-bowel loops (random walks through the free abdominal space) and the colon frame, each with a wall
    and a lumen holding fluid (or stool) below an air-fluid level."""
    h = p.height
    prof = profile(p, np.float32(-150.0 * h))
    a, b = float(prof.cavity_half_width), float(prof.cavity_half_depth_front)
    lo = np.array([p.cx - a, p.cy - b, -245.0 * h])
    hi = np.array([p.cx + a, p.cy + b, -85.0 * h])
    free = lambda pts: in_abdominal_cavity(p, pts[:, 0], pts[:, 1], pts[:, 2])  # noqa: E731
    starts = sample_points(p, lo, hi, [T.VISCERAL_FAT], 1500, rng, extra=free)
    families: List[TubeFamily] = []
    n_loops = min(len(starts), int(rng.integers(8, 15)))
    if n_loops:
        radius = rng.uniform(9.0, 15.0, n_loops)
        pos = starts[rng.choice(len(starts), n_loops, replace=False)].astype(np.float64)
        direction = _unit(rng.standard_normal((n_loops, 3)))
        paths = [[q] for q in pos]
        alive = np.ones(n_loops, bool)
        for _ in range(int(rng.integers(12, 26))):
            cand_dir = _unit(direction[:, None, :] + 0.9 * rng.standard_normal((n_loops, 6, 3)))
            cand = pos[:, None, :] + cand_dir * (1.4 * radius)[:, None, None]
            flat = cand.reshape(-1, 3)
            ok = (_points_in(p, flat, [T.VISCERAL_FAT]) & free(flat.astype(np.float32))).reshape(n_loops, 6)
            has = ok.any(axis=1) & alive
            first = np.argmax(ok, axis=1)
            for i in np.nonzero(has)[0]:
                pos[i], direction[i] = cand[i, first[i]], cand_dir[i, first[i]]
                paths[i].append(pos[i].copy())
            alive = has
        for i, path in enumerate(paths):
            if len(path) < 3:
                continue
            pts = np.asarray(path, np.float32)
            families += _bowel_segment(f"small_bowel_{i}", pts, radius[i], 2.5, T.BOWEL_FLUID, rng)
    # colon frame: caecum, ascending, hepatic flexure, transverse, splenic flexure, descending, sigmoid, as
    # (x / cavity half width, y / cavity half depth, z at height factor 1)
    frame = np.array([(-0.55, 0.1, -235.0), (-0.62, 0.15, -160.0), (-0.5, -0.15, -118.0), (0.0, -0.5, -135.0),
                      (0.55, -0.05, -98.0), (0.64, 0.2, -170.0), (0.4, -0.1, -240.0)])
    ctrl = np.column_stack([p.cx + frame[:, 0] * a, p.cy + frame[:, 1] * b, frame[:, 2] * h])
    ctrl += rng.uniform([-10.0, -10.0, -8.0], [10.0, 10.0, 8.0], size=ctrl.shape)
    colon = _polyline(ctrl, step=12.0)
    families += _bowel_segment("colon", colon, rng.uniform(18.0, 26.0), 3.0, T.FECES, rng, haustra=True)
    return families


def _bowel_segment(name: str, pts: np.ndarray, radius: float, wall: float, content: Tissue,
                   rng: np.random.Generator, haustra: bool = False) -> List[TubeFamily]:
    n = len(pts)
    r = np.full(n, radius, np.float32)
    if haustra:
        r = r * (1.0 + 0.12 * np.sin(np.arange(n) * 2.1))
    kind = rng.random()
    if kind < 0.4 and content != T.FECES:
        level = None  # collapsed or fluid-filled, no gas
    else:
        gas = 1.0 if kind > 0.85 else rng.uniform(0.15, 0.6)
        y_front, y_back = float(pts[:, 1].min() - radius), float(pts[:, 1].max() + radius)
        level = y_front + gas * (y_back - y_front)
    bowel_host = frozenset({T.VISCERAL_FAT})
    return [
        TubeFamily(f"{name}_wall", Tubes.from_path(pts, r), T.BOWEL_WALL, bowel_host),
        TubeFamily(f"{name}_lumen", Tubes.from_path(pts, r - wall), content,
                   frozenset({T.VISCERAL_FAT, T.BOWEL_WALL}), level),
    ]


def tube_families(p: Patient, rng: np.random.Generator) -> List[TubeFamily]:
    """All tubular structures of the patient, in painting order."""
    m = _mediastinum(p, rng)
    lung = _lung_trees(p, m.right_hilum, m.left_hilum, rng)
    central = _great_vessels(p, m, rng) + [_oesophagus(p, m)] + _central_airways(p, m)
    return lung + central + _liver_trees(p, rng) + _bowel(p, rng)
