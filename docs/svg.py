"""Small SVG drawings for the docs, written by code so that they follow the code: a
timeline (lanes, spans, marks on a time axis) and panels of time series. No plotting
library: the pictures are a few dozen shapes, and their text must stay diffable."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from html import escape

INK, MUTED, LINE = "#1f2933", "#6b7785", "#c5ccd3"
COLORS = {"payment": "#1e6fd9", "order": "#2e9d5b", "late": "#c2410c", "window": "#dbeafe", "grace": "#fde68a",
          "horizon": "#fee2e2", "progress": "#7c3aed", "recovery": "#dc2626", "off": "#9aa5b1"}
FONT = 'font-family="Helvetica, Arial, sans-serif"'


def _text(x: float, y: float, text: str, *, size: int = 12, anchor: str = "start", color: str = INK,
          weight: str = "normal") -> str:
    return (f'<text x="{x:.1f}" y="{y:.1f}" font-size="{size}" text-anchor="{anchor}" fill="{color}" '
            f'font-weight="{weight}">{escape(text)}</text>')


@dataclass
class Timeline:
    """A time axis from `start` to `end` (in `unit`s) with named lanes, drawn left to right."""

    title: str
    start: float
    end: float
    lanes: Sequence[str]
    unit: str = "s"
    width: int = 760
    left: int = 130
    right: int = 30
    lane_gap: int = 58
    shapes: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def x(self, t: float) -> float:
        t = min(max(t, self.start), self.end)
        return self.left + (t - self.start) / (self.end - self.start) * (self.width - self.left - self.right)

    def y(self, lane: str) -> float:
        return 62 + self.lanes.index(lane) * self.lane_gap

    @property
    def axis_y(self) -> float:
        return self.y(self.lanes[-1]) + 42

    @property
    def height(self) -> int:
        return int(self.axis_y + 52 + 16 * len(self.notes))

    def _anchor(self, x: float) -> str:
        """Labels near an edge grow inwards."""
        return "end" if x > self.width - self.right - 90 else "start" if x < self.left + 60 else "middle"

    def span(self, lane: str, t0: float, t1: float, kind: str, label: str) -> None:
        """A band over [t0, t1] on a lane, labelled above it."""
        x0, x1, y = self.x(t0), self.x(t1), self.y(lane)
        self.shapes.append(f'<rect x="{x0:.1f}" y="{y - 11:.1f}" width="{x1 - x0:.1f}" height="22" rx="3" '
                           f'fill="{COLORS[kind]}" stroke="{LINE}"/>')
        self.shapes.append(_text((x0 + x1) / 2, y - 15, label, size=11, anchor="middle", color=MUTED))

    def mark(self, lane: str, t: float, kind: str, label: str = "", *, below: bool = False,
             hollow: bool = False) -> None:
        """A dot at time t on a lane, its label above (or below) it."""
        x, y = self.x(t), self.y(lane)
        fill = "white" if hollow else COLORS[kind]
        self.shapes.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="6" fill="{fill}" stroke="{COLORS[kind]}" '
                           f'stroke-width="2"/>')
        if label:
            self.shapes.append(_text(x, y + (24 if below else -12), label, size=11, anchor=self._anchor(x)))

    def star(self, lane: str, t: float, label: str) -> None:
        x, y = self.x(t), self.y(lane)
        points = " ".join(f"{x + dx:.1f},{y + dy:.1f}" for dx, dy in
                          ((0, -9), (2.6, -3), (9, -3), (4, 1.5), (6, 8), (0, 4), (-6, 8), (-4, 1.5), (-9, -3),
                           (-2.6, -3)))
        self.shapes.append(f'<polygon points="{points}" fill="{COLORS["recovery"]}"/>')
        self.shapes.append(_text(x, y + 24, label, size=11, anchor=self._anchor(x), color=COLORS["recovery"],
                                 weight="bold"))

    def rule(self, t: float, label: str, kind: str = "off", anchor: str = "middle") -> None:
        """A dashed vertical line across every lane at time t, labelled under the axis."""
        x, top = self.x(t), self.y(self.lanes[0]) - 26
        self.shapes.append(f'<line x1="{x:.1f}" y1="{top:.1f}" x2="{x:.1f}" y2="{self.axis_y:.1f}" '
                           f'stroke="{COLORS[kind]}" stroke-dasharray="4 3"/>')
        dx = {"end": -3, "start": 3}.get(anchor, 0)
        self.shapes.append(_text(x + dx, self.axis_y + 30, label, size=11, anchor=anchor, color=COLORS[kind]))

    def progress(self, lane: str, reached: Sequence[float], label: str) -> None:
        """How far a partition's progress got, record after record: a tick at each value it
        reached (fainter for the earlier ones) and a bar up to the last."""
        y, x0 = self.y(lane), self.x(self.start)
        for i, value in enumerate(reached):
            opacity = 0.35 + 0.65 * (i + 1) / len(reached)
            self.shapes.append(f'<line x1="{self.x(value):.1f}" y1="{y - 9:.1f}" x2="{self.x(value):.1f}" '
                               f'y2="{y + 9:.1f}" stroke="{COLORS["progress"]}" stroke-width="2" '
                               f'opacity="{opacity:.2f}"/>')
        end = self.x(reached[-1])
        self.shapes.append(f'<rect x="{x0:.1f}" y="{y - 3:.1f}" width="{end - x0:.1f}" height="6" '
                           f'fill="{COLORS["progress"]}" opacity="0.3"/>')
        self.shapes.append(_text(x0 + 4, y - 12, label, size=11, color=COLORS["progress"]))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def svg(self, ticks: Sequence[tuple[float, str]]) -> str:
        h, axis_y = self.height, self.axis_y
        out = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {self.width} {h}" width="{self.width}" '
               f'height="{h}" {FONT} role="img" aria-label="{escape(self.title)}">'),
               f'<rect width="{self.width}" height="{h}" fill="white"/>',
               _text(12, 22, self.title, size=14, weight="bold")]
        for lane in self.lanes:
            y = self.y(lane)
            out.append(f'<line x1="{self.left}" y1="{y:.1f}" x2="{self.width - self.right}" y2="{y:.1f}" '
                       f'stroke="{LINE}"/>')
            out.append(_text(12, y + 4, lane, color=MUTED))
        out.append(f'<line x1="{self.left}" y1="{axis_y:.1f}" x2="{self.width - self.right}" y2="{axis_y:.1f}" '
                   f'stroke="{MUTED}"/>')
        for t, label in ticks:
            out.append(f'<line x1="{self.x(t):.1f}" y1="{axis_y:.1f}" x2="{self.x(t):.1f}" y2="{axis_y + 4:.1f}" '
                       f'stroke="{MUTED}"/>')
            out.append(_text(self.x(t), axis_y + 14, label, size=10, anchor="middle", color=MUTED))
        out += self.shapes
        for i, text in enumerate(self.notes):
            out.append(_text(12, axis_y + 56 + 16 * i, text, size=11, color=MUTED))
        return "\n".join([*out, "</svg>"]) + "\n"


def panels(title: str, xs: Sequence[float], series: Sequence[tuple[str, str, Sequence[float]]], *,
           x_label: str, note: str, width: int = 760, panel_height: int = 90) -> str:
    """Time series stacked in panels that share the x axis: (label, color, values) each,
    scaled from 0 to its own maximum."""
    left, right, top = 70, 20, 36
    h = top + len(series) * (panel_height + 22) + 48
    x_max = max(xs) or 1.0

    def x(v: float) -> float:
        return left + v / x_max * (width - left - right)

    out = [(f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {h}" width="{width}" height="{h}" '
           f'{FONT} role="img" aria-label="{escape(title)}">'), f'<rect width="{width}" height="{h}" fill="white"/>',
           _text(12, 22, title, size=14, weight="bold")]
    for i, (label, color, values) in enumerate(series):
        y0 = top + i * (panel_height + 22) + 16
        y_max = max(values) or 1.0
        out.append(f'<rect x="{left}" y="{y0}" width="{width - left - right}" height="{panel_height}" fill="none" '
                   f'stroke="{LINE}"/>')
        out.append(_text(left, y0 - 5, label, size=11, color=color, weight="bold"))
        out.append(_text(left - 6, y0 + 10, f"{y_max:,.0f}", size=10, anchor="end", color=MUTED))
        out.append(_text(left - 6, y0 + panel_height, "0", size=10, anchor="end", color=MUTED))
        points = " ".join(f"{x(t):.1f},{y0 + panel_height - v / y_max * (panel_height - 6):.1f}"
                          for t, v in zip(xs, values, strict=True))
        out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="2"/>')
    axis_y = top + len(series) * (panel_height + 22)
    step = max(1, round(x_max / 8 / 5) * 5)
    for t in range(0, int(x_max) + 1, step):
        out.append(_text(x(t), axis_y + 4, f"{t}", size=10, anchor="middle", color=MUTED))
    out.append(_text(left + (width - left - right) / 2, axis_y + 20, x_label, size=11, anchor="middle", color=MUTED))
    out.append(_text(12, axis_y + 40, note, size=11, color=MUTED))
    return "\n".join([*out, "</svg>"]) + "\n"
