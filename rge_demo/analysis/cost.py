"""What reasoning costs and what it buys: generated tokens and seconds per query against the P@1 gain
over the direct embedding of the same queries, for RGE runs, Embed-RL runs and sampled rationales.

* :func:`run_point`: one evaluation run pair (the Failures tab's cases): mean rationale tokens and
  reasoning seconds per query, and the paired P@1 gain (reasoning - direct) with its 95 % bootstrap
  interval over queries.
* :func:`sampling_points`: sampled rationales at N = 1, 4, 8 (:func:`~rge_demo.analysis.sampling.evaluate_sampling`
  records, one list per N): the centroid of the N samples' embeddings against direct, at N times
  the sampled tokens.
* :func:`cost_figure`: gain (with intervals) against tokens, one marker per point.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .reasoning import bootstrap_ci


@dataclass
class CostPoint:
    name: str
    kind: str  # "rge" | "embed-rl" | "sampling" (the marker)
    tokens: float  # generated tokens per query (all samples for sampling)
    seconds: float | None  # per query, when measured
    gain: float  # P@1 of the method - P@1 direct, same queries
    low: float
    high: float
    n: int

    def to_dict(self) -> dict:
        return asdict(self)


def _gain(method_right: Sequence[bool], direct_right: Sequence[bool], seed: int = 0) -> tuple[float, float, float]:
    diff = np.asarray(method_right, dtype=float) - np.asarray(direct_right, dtype=float)
    return bootstrap_ci(diff, seed=seed)


def run_point(name: str, cases: Sequence, kind: str = "rge") -> CostPoint:
    """A run pair's point from its :class:`~rge_demo.analysis.failures.Case` list (both modes per query)."""
    if not cases:
        raise ValueError(f"run {name!r} has no cases")
    gain, lo, hi = _gain([c.reason_rank == 1 for c in cases], [c.direct_rank == 1 for c in cases])
    return CostPoint(name, kind, float(np.mean([c.tokens for c in cases])), float(np.mean([c.seconds for c in cases])),
                     gain, lo, hi, len(cases))


def sampling_points(by_n: dict[int, Sequence[dict]], name: str = "sampling") -> list[CostPoint]:
    """One point per N from ``{N: evaluate_sampling records}``: the centroid's P@1 gain over direct."""
    out = []
    for n, records in sorted(by_n.items()):
        records = list(records)
        gain, lo, hi = _gain([r["centroid"]["rank"] == 1 for r in records], [r["direct"]["rank"] == 1 for r in records])
        tokens = float(np.mean([sum(s["tokens"] for s in r["samples"]) for r in records]))
        out.append(CostPoint(f"{name}, N={n} (centroid)", "sampling", tokens, None, gain, lo, hi, len(records)))
    return out


MARKERS = {"rge": ("circle", "#4f46e5"), "embed-rl": ("diamond", "#db2777"), "sampling": ("square", "#f59e0b")}


def _label_layout(points: list[CostPoint]) -> tuple[dict[int, str], dict[int, str], list[float], list[float]]:
    """Each point's label and text position, and the axes' ranges. Points whose labels would overlap
    share one, stacked line by line above the first of them (QA: four names piled up near 22-30 tokens);
    a label near a side grows inwards, so it is not cut at the plot's edge (QA: "...N=8 (c")."""
    if not points:
        return {}, {}, [0.0, 1.0], [-5.0, 5.0]
    xs = np.array([p.tokens for p in points], dtype=float)
    ys = 100 * np.array([p.gain for p in points], dtype=float)
    lows, highs = 100 * np.array([p.low for p in points]), 100 * np.array([p.high for p in points])
    x_span = max(xs.max() - xs.min(), 1.0)
    x_range = [xs.min() - 0.08 * x_span, xs.max() + 0.08 * x_span]
    y_low, y_high = min(lows.min(), 0.0), max(highs.max(), 0.0)
    y_span = max(y_high - y_low, 1.0)
    y_range = [y_low - 0.05 * y_span, y_high + 0.35 * y_span]  # room for stacked labels above the points
    reach = np.array([0.25 * (x_range[1] - x_range[0]), 0.12 * (y_range[1] - y_range[0])])
    labels: dict[int, str] = {}
    anchors: list[int] = []
    for i in np.argsort(xs, kind="stable"):
        first = next((a for a in anchors if (np.abs([xs[a] - xs[i], ys[a] - ys[i]]) < reach).all()), None)
        if first is None:
            anchors.append(i)
            labels[id(points[i])] = points[i].name
        else:
            labels[id(points[first])] += "<br>" + points[i].name
            labels[id(points[i])] = ""
    positions = {}
    for i, p in enumerate(points):
        side = (xs[i] - x_range[0]) / (x_range[1] - x_range[0])
        positions[id(p)] = "top right" if side < 0.2 else "top left" if side > 0.8 else "top center"
    return labels, positions, x_range, y_range


def cost_figure(points: Iterable[CostPoint], highlight: str | None = None):
    """Plotly: P@1 gain over direct (points, 95 % intervals) against generated tokens per query."""
    import plotly.graph_objects as go

    fig = go.Figure()
    points = list(points)
    labels, positions, x_range, y_range = _label_layout(points)
    for kind, (symbol, colour) in MARKERS.items():
        part = [p for p in points if p.kind == kind]
        if not part:
            continue
        fig.add_trace(go.Scatter(
            x=[p.tokens for p in part], y=[100 * p.gain for p in part], mode="markers+text", name=kind,
            text=[labels[id(p)] for p in part], textposition=[positions[id(p)] for p in part],
            textfont={"size": 11}, hovertext=[p.name for p in part],
            error_y={"type": "data", "symmetric": False, "array": [100 * (p.high - p.gain) for p in part],
                     "arrayminus": [100 * (p.gain - p.low) for p in part], "thickness": 1.2, "width": 3},
            marker={"symbol": symbol, "size": [16 if p.name == highlight else 11 for p in part], "color": colour,
                    "line": {"width": [2 if p.name == highlight else 0.5 for p in part], "color": "black"}},
            customdata=[[p.n, "-" if p.seconds is None else f"{1000 * p.seconds:.0f} ms"] for p in part],
            hovertemplate="%{hovertext}<br>%{x:.1f} tokens per query, %{customdata[1]}<br>gain %{y:+.1f} points "
                          "(%{customdata[0]} queries)<extra></extra>"))
    fig.add_hline(y=0, line_dash="dot", line_color="#6b7280")
    fig.update_layout(template="plotly_white", height=380, margin={"l": 60, "r": 20, "t": 40, "b": 50},
                      xaxis_title="generated tokens per query", yaxis_title="P@1 gain over direct (points, 95% CI)",
                      xaxis={"range": x_range}, yaxis={"range": y_range},
                      title={"text": "What reasoning costs and buys", "font": {"size": 14}},
                      legend={"orientation": "h", "y": 1.08, "x": 1, "xanchor": "right"})
    return fig


__all__ = ["CostPoint", "cost_figure", "run_point", "sampling_points"]
