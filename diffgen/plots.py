"""Small charts drawn with Pillow (no plotting library needed): loss curves and sweep plots."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont

PALETTE = [(20, 60, 160), (200, 60, 40), (40, 150, 60), (150, 60, 170), (220, 140, 20),
           (20, 150, 160), (120, 120, 120), (0, 0, 0)]

Series = dict[str, tuple[list[float], list[float]]]


def line_chart(series: Series, title: str, x_label: str = "step", log_y: bool = True,
               log_x: bool = False, smooth: float = 0.0, size: tuple[int, int] = (720, 400)) -> Image.Image:
    """Lines of ys against xs, one per named series, with a legend. ``smooth`` > 0 also draws an
    exponential moving average (weight ``smooth`` on the past) over each series."""
    width, height = size
    left, right, top, bottom = 64, 180, 28, 36
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 6), title, fill="black", font=font)
    fx = math.log10 if log_x else (lambda v: v)
    fy = math.log10 if log_y else (lambda v: v)
    clean = {name: [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log_y)
                    and (x > 0 or not log_x)] for name, (xs, ys) in series.items()}
    points = [p for pts in clean.values() for p in pts]
    if len(points) < 2:
        draw.text((left, height // 2), "not enough data yet", fill="gray", font=font)
        return image
    x0, x1 = min(fx(p[0]) for p in points), max(fx(p[0]) for p in points)
    y0, y1 = min(fy(p[1]) for p in points), max(fy(p[1]) for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)
    plot_w, plot_h = width - left - right, height - top - bottom

    def to_px(x: float, y: float) -> tuple[float, float]:
        return left + (fx(x) - x0) / (x1 - x0) * plot_w, height - bottom - (fy(y) - y0) / (y1 - y0) * plot_h

    draw.rectangle([left, top, left + plot_w, top + plot_h], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        draw.text((4, height - bottom - frac * plot_h - 6), f"{10 ** value if log_y else value:.3g}",
                  fill="black", font=font)
        xv = x0 + frac * (x1 - x0)
        draw.text((left + frac * plot_w - 10, height - bottom + 6), f"{10 ** xv if log_x else xv:.4g}",
                  fill="black", font=font)
    draw.text((left + plot_w - 40, height - 14), x_label, fill="black", font=font)
    for i, (name, pts) in enumerate(clean.items()):
        colour = PALETTE[i % len(PALETTE)]
        if len(pts) > 1:
            faint = tuple(255 - (255 - c) // 3 for c in colour) if smooth else colour
            draw.line([to_px(x, y) for x, y in pts], fill=faint, width=1 if smooth else 2)
        if smooth and len(pts) > 1:
            average, line = None, []
            for x, y in pts:
                average = y if average is None else smooth * average + (1 - smooth) * y
                line.append(to_px(x, average))
            draw.line(line, fill=colour, width=2)
        for x, y in pts if len(pts) < 30 else []:
            px, py = to_px(x, y)
            draw.ellipse([px - 2, py - 2, px + 2, py + 2], fill=colour)
        draw.text((left + plot_w + 10, top + 14 * i), f"- {name}", fill=colour, font=font)
    return image
