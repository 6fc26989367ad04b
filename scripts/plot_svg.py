#!/usr/bin/env python3
"""Scatter/line plot of a CSV as a standalone SVG (no plotting library needed).

Used by bench/*_table.sh for the ppl-vs-bpw figures of docs/results.md. One panel per
--y column, one marker colour per --group value, points labelled by --label.

  scripts/plot_svg.py --csv t.csv --x bpw --y ppl_tinystories,ppl_wikitext2 \
      --group act --label config --out docs/fig.svg --title "FGMP on stories260K"

Rows whose x or y is empty or not a number are skipped. Exit 2 on a missing column.
"""
import argparse
import csv
import html
import math
import sys

PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf"]


def nice_ticks(lo, hi, n=5):
    """About n round tick values covering [lo, hi]."""
    if hi <= lo:
        hi = lo + 1.0
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    t = math.floor(lo / step) * step
    ticks = []
    while t <= hi + 1e-9 * step:
        if t >= lo - 1e-9 * step:
            ticks.append(round(t, 10))
        t += step
    return ticks


def panel(rows, x, y, group, label, ox, oy, w, h, groups):
    """SVG elements of one panel with its top-left corner at (ox, oy)."""
    pts = []
    for r in rows:
        try:
            pts.append((float(r[x]), float(r[y]), r.get(group, ""), r.get(label, "")))
        except (ValueError, KeyError):
            continue
    out = []
    if not pts:
        return out
    xs = [p[0] for p in pts]
    ys = [p[1] for p in pts]
    pad_x = (max(xs) - min(xs)) * 0.08 or 0.5
    pad_y = (max(ys) - min(ys)) * 0.12 or 0.5
    x0, x1 = min(xs) - pad_x, max(xs) + pad_x
    y0, y1 = min(ys) - pad_y, max(ys) + pad_y
    L, R, T, B = 60, 20, 30, 45  # margins
    pw, ph = w - L - R, h - T - B

    def sx(v):
        return ox + L + (v - x0) / (x1 - x0) * pw

    def sy(v):
        return oy + T + (1 - (v - y0) / (y1 - y0)) * ph

    out.append(f'<rect x="{ox + L}" y="{oy + T}" width="{pw}" height="{ph}" fill="none" stroke="#333"/>')
    for t in nice_ticks(x0, x1):
        out.append(f'<line x1="{sx(t):.1f}" y1="{oy + T + ph}" x2="{sx(t):.1f}" y2="{oy + T + ph + 4}" stroke="#333"/>')
        out.append(f'<text x="{sx(t):.1f}" y="{oy + T + ph + 16}" text-anchor="middle" font-size="11">{t:g}</text>')
    for t in nice_ticks(y0, y1):
        out.append(f'<line x1="{ox + L - 4}" y1="{sy(t):.1f}" x2="{ox + L}" y2="{sy(t):.1f}" stroke="#333"/>')
        out.append(f'<line x1="{ox + L}" y1="{sy(t):.1f}" x2="{ox + L + pw}" y2="{sy(t):.1f}" stroke="#ddd"/>')
        out.append(f'<text x="{ox + L - 6}" y="{sy(t) + 4:.1f}" text-anchor="end" font-size="11">{t:g}</text>')
    out.append(f'<text x="{ox + L + pw / 2}" y="{oy + h - 8}" text-anchor="middle" font-size="12">{html.escape(x)}</text>')
    out.append(f'<text x="{ox + 14}" y="{oy + T + ph / 2}" text-anchor="middle" font-size="12" '
               f'transform="rotate(-90 {ox + 14} {oy + T + ph / 2})">{html.escape(y)}</text>')
    for g in groups:
        gp = sorted((p for p in pts if p[2] == g), key=lambda p: p[0])
        colour = PALETTE[groups.index(g) % len(PALETTE)]
        for px, py, _, lab in gp:
            out.append(f'<circle cx="{sx(px):.1f}" cy="{sy(py):.1f}" r="4" fill="{colour}"/>')
            out.append(f'<text x="{sx(px) + 6:.1f}" y="{sy(py) - 5:.1f}" font-size="9" fill="{colour}">'
                       f'{html.escape(lab)}</text>')
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--csv", required=True)
    ap.add_argument("--x", required=True)
    ap.add_argument("--y", required=True, help="comma-separated columns, one panel each")
    ap.add_argument("--group", default="")
    ap.add_argument("--label", default="")
    ap.add_argument("--title", default="")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    with open(a.csv, newline="") as f:
        rows = list(csv.DictReader(f))
    ys = a.y.split(",")
    cols = set(rows[0].keys()) if rows else set()
    for c in [a.x] + ys + ([a.group] if a.group else []) + ([a.label] if a.label else []):
        if c not in cols:
            print(f"plot_svg.py: {a.csv}: no column '{c}'", file=sys.stderr)
            return 2
    groups = []
    for r in rows:
        g = r.get(a.group, "")
        if g not in groups:
            groups.append(g)
    pw, ph = 520, 380
    W, H = pw * len(ys), ph + 60
    el = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" font-family="sans-serif">',
          f'<rect width="{W}" height="{H}" fill="white"/>',
          f'<text x="{W / 2}" y="20" text-anchor="middle" font-size="15">{html.escape(a.title)}</text>']
    for i, y in enumerate(ys):
        el += panel(rows, a.x, y, a.group, a.label, i * pw, 30, pw, ph, groups)
    for i, g in enumerate(groups):  # legend
        if a.group:
            el.append(f'<circle cx="{70 + i * 170}" cy="{H - 14}" r="5" fill="{PALETTE[i % len(PALETTE)]}"/>')
            el.append(f'<text x="{80 + i * 170}" y="{H - 10}" font-size="12">{html.escape(a.group)} = '
                      f'{html.escape(g)}</text>')
    el.append("</svg>")
    with open(a.out + ".tmp", "w") as f:
        f.write("\n".join(el) + "\n")
    import os
    os.replace(a.out + ".tmp", a.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
