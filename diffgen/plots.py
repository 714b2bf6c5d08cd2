"""Small charts drawn with Pillow (no plotting library needed): the training loss curve."""

from __future__ import annotations

import math

from PIL import Image, ImageDraw, ImageFont


def line_chart(xs: list[float], ys: list[float], title: str, x_label: str = "step",
               log_y: bool = True, size: tuple[int, int] = (640, 360)) -> Image.Image:
    """A line chart of ys against xs (log-scaled y by default), with a smoothed overlay."""
    width, height = size
    left, right, top, bottom = 64, 16, 28, 36
    image = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    draw.text((left, 6), title, fill="black", font=font)
    points = [(x, y) for x, y in zip(xs, ys) if math.isfinite(y) and (y > 0 or not log_y)]
    if len(points) < 2:
        draw.text((left, height // 2), "not enough data yet", fill="gray", font=font)
        return image
    fy = (lambda v: math.log10(v)) if log_y else (lambda v: v)
    x0, x1 = min(p[0] for p in points), max(p[0] for p in points)
    y0, y1 = min(fy(p[1]) for p in points), max(fy(p[1]) for p in points)
    x1, y1 = (x1 if x1 > x0 else x0 + 1), (y1 if y1 > y0 else y0 + 1e-6)

    def to_px(x: float, y: float) -> tuple[float, float]:
        return (left + (x - x0) / (x1 - x0) * (width - left - right),
                height - bottom - (fy(y) - y0) / (y1 - y0) * (height - top - bottom))

    draw.rectangle([left, top, width - right, height - bottom], outline="black")
    for frac in (0.0, 0.5, 1.0):
        value = y0 + frac * (y1 - y0)
        label = f"{10 ** value:.3g}" if log_y else f"{value:.3g}"
        ypix = height - bottom - frac * (height - top - bottom)
        draw.text((4, ypix - 6), label, fill="black", font=font)
    draw.text((left, height - bottom + 6), f"{x0:g}", fill="black", font=font)
    draw.text((width - right - 60, height - bottom + 6), f"{x1:g} {x_label}", fill="black", font=font)
    draw.line([to_px(x, y) for x, y in points], fill=(170, 190, 230), width=1)
    smoothed, average = [], None
    for x, y in points:
        average = y if average is None else 0.95 * average + 0.05 * y
        smoothed.append(to_px(x, average))
    draw.line(smoothed, fill=(20, 60, 160), width=2)
    return image
