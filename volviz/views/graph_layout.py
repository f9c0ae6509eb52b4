"""A layered 3-D layout for a unit graph: each layer's units on a plane grid, layers along depth.

Geometry (world units, see ``docs/graph.md``):

* depth axis ``+x``: layer planes at ``x = depth`` in forward order (input first), ``layer_gap``
  apart; with ``stack="level"`` layers on parallel branches (a ResNet's downsample next to its
  conv) share a depth and sit side by side.
* each plane is upright, facing ``-x`` (towards the input): unit ``j`` of a layer with a
  ``rows x cols`` grid (:func:`~volviz.views.grid.near_square_grid`) sits in row ``j // cols``
  (rows go down, ``-z``) and column ``j % cols`` (columns go along ``-y``, so that from the input
  side, looking downstream with ``z`` up, a layer reads like a page: left to right, top down).
* plane sizes: ``cell = unit_spacing * (max_cols / cols) ** (1 - size_exponent)``. With
  ``size_exponent = 1`` every unit gets the same cell (a 4096-unit layer dwarfs a 64-unit one);
  with ``0`` every plane has the same width; the default ``0.5`` keeps big layers big but makes
  the units of small layers larger, so both read in the overview.

Pure numpy: no VTK, no networkx (it takes the layer dicts of ``G.graph["layers"]``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .grid import near_square_grid

__all__ = [
    "LayerPlane",
    "GraphLayout",
    "layered_layout",
    "unit_box",
    "LayerTiles",
    "layer_tiles",
    "U_AXIS",
    "V_AXIS",
    "DEPTH_AXIS",
]

DEPTH_AXIS = np.array([1.0, 0.0, 0.0])  # layers along +x
U_AXIS = np.array([0.0, -1.0, 0.0])  # a plane's "right" seen from the input side
V_AXIS = np.array([0.0, 0.0, 1.0])  # a plane's "up"


@dataclass
class LayerPlane:
    """One layer's plane: ``positions[j]`` is the centre of unit ``j``."""

    name: str
    kind: str
    n: int
    rows: int
    cols: int
    cell: float  # distance between neighbouring units
    center: np.ndarray  # (3,)
    positions: np.ndarray  # (n, 3)
    slot: int  # index along the depth axis

    @property
    def width(self) -> float:
        return self.cols * self.cell

    @property
    def height(self) -> float:
        return self.rows * self.cell

    def corners(self) -> np.ndarray:
        """The plane's 4 corners ``(4, 3)``: bottom-left, bottom-right, top-right, top-left."""
        hu, hv = U_AXIS * self.width / 2, V_AXIS * self.height / 2
        c = self.center
        return np.array([c - hu - hv, c + hu - hv, c + hu + hv, c - hu + hv])

    def grid_index(self, j: int) -> tuple[int, int]:
        return divmod(int(j), self.cols)


@dataclass
class GraphLayout:
    planes: dict[str, LayerPlane]
    layer_gap: float

    @property
    def names(self) -> list[str]:
        return list(self.planes)

    @property
    def n_units(self) -> int:
        return sum(p.n for p in self.planes.values())

    def offsets(self) -> dict[str, int]:
        """Global index of each layer's unit 0 in :meth:`all_positions`."""
        out, k = {}, 0
        for name, p in self.planes.items():
            out[name] = k
            k += p.n
        return out

    def all_positions(self) -> np.ndarray:
        return np.concatenate([p.positions for p in self.planes.values()])

    def position(self, layer: str, j: int) -> np.ndarray:
        return self.planes[layer].positions[int(j)]

    def bounds(self, layers=None) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` corners of the box around the given planes (default all)."""
        pts = np.concatenate([self.planes[n].corners() for n in (layers or self.planes)])
        return pts.min(axis=0), pts.max(axis=0)

    def center(self) -> np.ndarray:
        lo, hi = self.bounds()
        return (lo + hi) / 2


def layered_layout(
    layers: list[dict],
    *,
    unit_spacing: float = 1.0,
    size_exponent: float = 0.5,
    layer_gap: float | None = None,
    gap_factor: float = 0.55,
    stack: str = "order",
) -> GraphLayout:
    """Place every layer's units on a plane, planes along ``+x``.

    Parameters
    ----------
    layers : dicts with ``name``, ``n_units`` and (for ``stack="level"``) ``level``, in
        forward order, e.g. ``G.graph["layers"]``; ``kind`` is kept when present.
    unit_spacing : cell size of the layer with the most columns.
    size_exponent : 0..1, how plane width grows with a layer's column count (module docstring).
    layer_gap : distance between consecutive planes; default ``gap_factor`` times the widest
        plane (at least 2 cells of the widest layer).
    stack : ``"order"`` (one plane per layer in forward order) or ``"level"`` (layers at the same
        longest-path level share a depth, side by side along ``-y``).
    """
    if not layers:
        raise ValueError("no layers to lay out")
    if not 0.0 <= size_exponent <= 1.0:
        raise ValueError(f"size_exponent must be in [0, 1], got {size_exponent}")
    if stack not in ("order", "level"):
        raise ValueError(f"stack must be 'order' or 'level', got {stack!r}")
    grids = [near_square_grid(int(d["n_units"])) for d in layers]
    max_cols = max(c for _, c in grids)
    cells = [unit_spacing * (max_cols / c) ** (1.0 - size_exponent) for _, c in grids]
    widest = max(c * cell for (_, c), cell in zip(grids, cells))
    tallest = max(r * cell for (r, _), cell in zip(grids, cells))
    gap = layer_gap if layer_gap is not None else max(gap_factor * max(widest, tallest), 2 * unit_spacing)

    if stack == "order":
        slots = list(range(len(layers)))
    else:
        levels = sorted({int(d.get("level", i)) for i, d in enumerate(layers)})
        rank = {lv: i for i, lv in enumerate(levels)}
        slots = [rank[int(d.get("level", i))] for i, d in enumerate(layers)]

    # side-by-side offsets for layers sharing a slot
    lateral = [0.0] * len(layers)
    by_slot: dict[int, list[int]] = {}
    for i, s in enumerate(slots):
        by_slot.setdefault(s, []).append(i)
    for members in by_slot.values():
        if len(members) > 1:
            widths = [grids[i][1] * cells[i] for i in members]
            pad = 0.15 * max(widths)
            total = sum(widths) + pad * (len(members) - 1)
            left = -total / 2
            for i, w in zip(members, widths):
                lateral[i] = left + w / 2
                left += w + pad

    planes: dict[str, LayerPlane] = {}
    for i, (d, (rows, cols), cell) in enumerate(zip(layers, grids, cells)):
        n = int(d["n_units"])
        center = DEPTH_AXIS * slots[i] * gap + U_AXIS * lateral[i]
        j = np.arange(n)
        r, c = j // cols, j % cols
        u = (c - (cols - 1) / 2.0) * cell
        v = ((rows - 1) / 2.0 - r) * cell
        pos = center + u[:, None] * U_AXIS + v[:, None] * V_AXIS
        planes[d["name"]] = LayerPlane(
            d["name"],
            d.get("kind", ""),
            n,
            rows,
            cols,
            float(cell),
            np.asarray(center, float),
            pos.astype(np.float64),
            slots[i],
        )
    return GraphLayout(planes, float(gap))


def unit_box(layout: GraphLayout, layer: str, j: int, radius_cells: float = 1.5):
    """``(lo, hi)`` of a small box around unit ``j`` (for a zoom on one unit)."""
    p = layout.planes[layer]
    c = p.positions[int(j)]
    h = p.cell * radius_cells
    ext = np.abs(U_AXIS) * h + np.abs(V_AXIS) * h
    return c - ext, c + ext


# ------------------------------------------------------------------ level of detail: one tile per layer
@dataclass
class LayerTiles:
    """One tile per layer on the ``x = 0`` plane (facing ``-x``, like the unit planes), in forward
    order along a serpentine: row 0 left to right, row 1 right to left, ..., so consecutive layers
    are always neighbours. ``positions[i]`` is tile ``i``'s centre, ``sizes[i]`` its side."""

    names: list[str]
    kinds: list[str]
    n_units: list[int]
    positions: np.ndarray  # (N, 3)
    sizes: np.ndarray  # (N,)
    rows: int
    cols: int
    pitch_u: float  # distance between neighbouring columns
    pitch_v: float  # distance between rows (tile + room for its label)

    def index(self, name: str) -> int:
        return self.names.index(name)

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """``(lo, hi)`` of the tiles and the label room below the last row."""
        half = (self.sizes / 2)[:, None]
        ext = np.abs(U_AXIS)[None] * half + np.abs(V_AXIS)[None] * half
        lo, hi = (self.positions - ext).min(0), (self.positions + ext).max(0)
        lo = lo - np.abs(V_AXIS) * (self.pitch_v - self.sizes.max())  # the bottom row's labels
        return lo, hi


def layer_tiles(
    layers: list[dict],
    *,
    aspect: float = 4 / 3,
    pitch_u: float = 1.0,
    pitch_v: float = 1.3,
    min_side: float = 0.42,
    max_side: float = 0.72,
    cols: int | None = None,
) -> LayerTiles:
    """Lay ``layers`` (dicts with ``name``, ``n_units``, optionally ``kind``; forward order, e.g.
    ``G.graph["layers"]``) out as tiles that all fit one ``aspect`` view: ``cols`` (default chosen
    so the grid's width / height is about ``aspect``: 53 layers at 4:3 -> 9 x 6). Tile sides grow
    with ``log(units)`` from ``min_side`` to ``max_side`` (times ``pitch_u``), so big layers stand
    out and a 3-channel input still reads."""
    if not layers:
        raise ValueError("no layers to lay out")
    n = len(layers)
    if cols is None:
        cols = max(1, min(n, int(math.ceil(math.sqrt(n * aspect * pitch_v / pitch_u)))))
    rows = -(-n // cols)
    units = np.array([max(1, int(d["n_units"])) for d in layers], float)
    top = math.log(units.max()) if units.max() > 1 else 1.0
    sides = pitch_u * (min_side + (max_side - min_side) * np.log(units) / top)
    pos = np.zeros((n, 3))
    for i in range(n):
        r, c = divmod(i, cols)
        if r % 2:
            c = cols - 1 - c
        pos[i] = ((c - (cols - 1) / 2) * pitch_u) * U_AXIS + (((rows - 1) / 2 - r) * pitch_v) * V_AXIS
    return LayerTiles(
        [d["name"] for d in layers],
        [d.get("kind", "") for d in layers],
        [int(d["n_units"]) for d in layers],
        pos,
        sides,
        rows,
        cols,
        pitch_u,
        pitch_v,
    )
