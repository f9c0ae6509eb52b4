"""Text in screen space that never overlaps and never runs out of the window.

Corner texts (title, caption, legend) and graph labels are ``vtkTextActor`` s placed in display
pixels. Their extent is *measured* (``vtkTextActor.GetBoundingBox``, the font renderer's own
metrics, valid before the first render), so a text that is too wide is shortened until it fits
(``...`` where it was cut) instead of running into its neighbour, and a label that would still
collide with one already placed is hidden. Pure layout: the scenes decide what to write where.
"""

from __future__ import annotations

from dataclasses import dataclass

from vtkmodules.vtkRenderingCore import vtkTextActor

__all__ = ["Box", "TextBlock", "CornerTexts", "make_text", "measure", "fit_line", "overlaps", "ELLIPSIS"]

ELLIPSIS = "..."  # ASCII: every embedded VTK font has it


@dataclass(frozen=True)
class Box:
    """A display-pixel rectangle (``x0 <= x1``, ``y0 <= y1``, y up as in VTK)."""

    x0: float
    x1: float
    y0: float
    y1: float

    @property
    def width(self) -> float:
        return self.x1 - self.x0

    @property
    def height(self) -> float:
        return self.y1 - self.y0


def make_text(
    renderer, *, size: int, color=(1.0, 1.0, 1.0), h: str = "left", v: str = "top", bold: bool = False
) -> vtkTextActor:
    """An empty one-line text actor in display coordinates, added to ``renderer``."""
    actor = vtkTextActor()
    actor.GetPositionCoordinate().SetCoordinateSystemToDisplay()
    tp = actor.GetTextProperty()
    tp.SetFontSize(int(size))
    tp.SetColor(*color)
    tp.SetBold(bool(bold))
    {"left": tp.SetJustificationToLeft, "center": tp.SetJustificationToCentered, "right": tp.SetJustificationToRight}[
        h
    ]()
    {
        "top": tp.SetVerticalJustificationToTop,
        "center": tp.SetVerticalJustificationToCentered,
        "bottom": tp.SetVerticalJustificationToBottom,
    }[v]()
    actor.SetPickable(False)
    renderer.AddViewProp(actor)
    return actor


def measure(actor: vtkTextActor, renderer) -> Box:
    """A one-line actor's extent in display pixels where it stands now (empty text: a zero box)."""
    x, y = actor.GetPosition()
    if not actor.GetInput():
        return Box(x, x, y, y)
    bb = [0.0] * 4
    actor.GetBoundingBox(renderer, bb)  # relative to the anchor
    return Box(x + bb[0], x + bb[1], y + bb[2], y + bb[3])


def _cut(line: str, n: int, keep: str) -> str:
    """``line`` shortened to ``n`` characters of content plus the ellipsis."""
    if n <= 0:
        return ELLIPSIS
    if keep == "start":
        return line[:n].rstrip() + ELLIPSIS
    if keep == "end":  # keep the most specific end of a dotted name: ...17.conv.1.0
        tail = line[-n:]
        if n < len(line) and line[-n - 1] != "." and "." in tail[:-1]:
            tail = tail[tail.index(".") + 1 :]  # cut at a dot, not inside a word
        return ELLIPSIS + tail.lstrip()
    a = (n + 1) // 2
    return line[:a] + ELLIPSIS + line[len(line) - (n - a) :]


def fit_line(actor: vtkTextActor, renderer, line: str, max_px: float, keep: str = "start") -> str:
    """Set ``line`` on a one-line actor, shortened (``keep``: its ``"start"``, ``"end"`` or
    ``"middle"`` stays) until it is at most ``max_px`` wide. Returns what is shown."""
    actor.SetInput(line)
    if measure(actor, renderer).width <= max_px:
        return line
    lo, hi = 0, len(line)  # the longest cut that fits: binary search on the measured width
    while lo < hi:
        mid = (lo + hi + 1) // 2
        actor.SetInput(_cut(line, mid, keep))
        if measure(actor, renderer).width <= max_px:
            lo = mid
        else:
            hi = mid - 1
    actor.SetInput(_cut(line, lo, keep))
    return actor.GetInput()


class TextBlock:
    """Lines of text at one anchor, one actor per line (VTK measures multi-line actors wrongly:
    their boxes come out as wide as the lines' widths added up). ``h``: left / center / right
    alignment of every line at ``x``; ``v``: ``"top"`` (the first line's top at ``y``, the others
    below) or ``"bottom"`` (the last line's bottom at ``y``)."""

    def __init__(
        self,
        renderer,
        *,
        size: int,
        color=(1.0, 1.0, 1.0),
        h: str = "left",
        v: str = "top",
        bold: bool = False,
        line_gap: float = 1.28,
    ):
        self.renderer, self.size, self.color, self.h, self.v, self.bold = renderer, int(size), color, h, v, bold
        self.line_px = max(1, round(self.size * line_gap))
        self.actors: list[vtkTextActor] = []
        self.text, self.shown = "", ""
        self.visible = True

    def set(self, text: str, x: float, y: float, max_px: float | None = None, keep: str = "start") -> str:
        """Show ``text`` (lines split at ``\n``) at ``(x, y)``, each line at most ``max_px`` wide."""
        self.text = str(text)
        lines = self.text.split("\n") if self.text else []
        while len(self.actors) < len(lines):
            self.actors.append(
                make_text(self.renderer, size=self.size, color=self.color, h=self.h, v="top", bold=self.bold)
            )
        top = y if self.v == "top" else y + len(lines) * self.line_px
        shown = []
        for i, actor in enumerate(self.actors):
            if i >= len(lines):
                actor.SetInput("")
                actor.SetVisibility(False)
                continue
            actor.SetPosition(float(x), float(top - i * self.line_px))
            shown.append(
                fit_line(actor, self.renderer, lines[i], max_px, keep)
                if max_px is not None
                else (actor.SetInput(lines[i]) or lines[i])
            )
            actor.SetVisibility(self.visible)
        self.shown = "\n".join(shown)
        return self.shown

    def box(self) -> Box:
        """The union of the lines' boxes (a zero box at the anchor when empty)."""
        boxes = [measure(a, self.renderer) for a in self.actors if a.GetInput()]
        if not boxes:
            return Box(0, 0, 0, 0)
        return Box(
            min(b.x0 for b in boxes), max(b.x1 for b in boxes), min(b.y0 for b in boxes), max(b.y1 for b in boxes)
        )

    def set_visible(self, visible: bool) -> None:
        self.visible = bool(visible)
        for a in self.actors:
            a.SetVisibility(self.visible and bool(a.GetInput()))

    def remove(self) -> None:
        for a in self.actors:
            self.renderer.RemoveViewProp(a)
        self.actors = []


def overlaps(a: Box, b: Box, pad: float = 2.0) -> bool:
    """Whether two boxes come closer than ``pad`` pixels."""
    return not (a.x1 + pad <= b.x0 or b.x1 + pad <= a.x0 or a.y1 + pad <= b.y0 or b.y1 + pad <= a.y0)


class CornerTexts:
    """A scene's corner texts, laid out so that they never overlap nor leave the window: the title
    top left (a muted note line under it), the caption bottom left with a warning line above it,
    every line shortened with ``...`` to the window's width. Re-laid out before a render when the
    window size changed (the app's view can be resized), through the renderer's ``StartEvent``."""

    def __init__(
        self,
        renderer,
        render_window_size,
        *,
        size: int,
        color=(1.0, 1.0, 1.0),
        note_color=(0.6, 0.63, 0.65),
        warning_color=(1.0, 0.62, 0.26),
    ):
        self.renderer = renderer
        self._size_of = render_window_size  # () -> (width, height)
        small = max(9, size - 3)
        self.title = TextBlock(renderer, size=size, color=color, v="top")
        self.note = TextBlock(renderer, size=small, color=note_color, v="top")
        self.caption = TextBlock(renderer, size=size, color=color, v="bottom")
        self.warning = TextBlock(renderer, size=max(9, size - 2), color=warning_color, v="bottom")
        self.texts = {"title": "", "note": "", "caption": "", "warning": ""}
        self._laid_out_for = None
        self._tag = renderer.AddObserver("StartEvent", self._before_render)

    def set(self, **texts) -> None:
        """``title=``, ``note=``, ``caption=``, ``warning=``: new texts (others stay)."""
        for k, v in texts.items():
            if k not in self.texts:
                raise KeyError(k)
            self.texts[k] = str(v)
        self.layout()

    def set_color(self, color) -> None:
        for b in (self.title, self.caption):
            b.color = color
            for a in b.actors:
                a.GetTextProperty().SetColor(*color)

    def _before_render(self, *_):
        if self._laid_out_for != tuple(self._size_of()):
            self.layout()

    def layout(self) -> None:
        w, h = (int(v) for v in self._size_of())
        m = max(4, round(0.012 * w))
        width = max(20, w - 2 * m)
        self.warning.set(self.texts["warning"], m, m, width)
        wb = self.warning.box()
        above = m + (wb.height + 4 if self.texts["warning"] else 0)
        self.caption.set(self.texts["caption"], m, above, width)
        self.title.set(self.texts["title"], m, h - m, width)
        tb = self.title.box()
        self.note.set(self.texts["note"], m, (tb.y0 - 3) if self.texts["title"] else h - m, width)
        # a window too small for all of them: the caption gives way to the title
        cb = self.caption.box()
        top_boxes = [b.box() for b in (self.title, self.note) if b.shown]
        self.caption.set_visible(not any(overlaps(cb, b, 0) for b in top_boxes))
        self._laid_out_for = (w, h)

    def boxes(self) -> dict[str, Box]:
        """Boxes of the texts shown (for tests)."""
        return {
            k: b.box()
            for k, b in (
                ("title", self.title),
                ("note", self.note),
                ("caption", self.caption),
                ("warning", self.warning),
            )
            if b.shown and b.visible
        }

    def remove(self) -> None:
        self.renderer.RemoveObserver(self._tag)
        for b in (self.title, self.note, self.caption, self.warning):
            b.remove()
