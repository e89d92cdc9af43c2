"""Training curves as a PNG, drawn with Pillow from metrics.jsonl: what every checkpoint leaves in OUT/curves.png.

Off the reading path: the training scripts redraw the picture at every checkpoint. Read it to change what the
picture shows: one chart of the losses, one of the accuracies and VQA scores, in the manner of the Ko-METER
paper's Figure 2.

    python -c "import curves; curves.draw_curves([{'step': s, 'loss': 1 / s} for s in range(1, 9)], 'c.png')"
"""

import math

from PIL import Image, ImageDraw, ImageFont

from checkpoints import atomic_write

CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def curve_panels(records):
    """What draw_curves shows of metrics.jsonl: the losses in one chart, and the accuracies and VQA scores
    (overall, not per answer type) in another on a 0..1 axis; one line per (split, name), in the order met."""
    series = {"loss": [], "accuracy": []}
    for row in records:
        split = row.get("split", "train")
        for name in row:
            if " " in name:  # a per-type accuracy ("숫자 accuracy")
                continue
            panel = "loss" if name.endswith("loss") else "accuracy" if name.endswith(("acc", "accuracy", "score")) \
                else None
            if panel and (f"{name} ({split})", split, name) not in series[panel]:
                series[panel].append((f"{name} ({split})", split, name))
    return [("loss", series["loss"], None), ("accuracy", series["accuracy"], 1.0)]


def draw_curves(records, image_path, panels=None):
    """Training curves in the manner of the paper's Figure 2, drawn with Pillow.

    records: metrics rows; panels: [(title, [(label, split, key), ...], y_max or None), ...] (default:
    curve_panels), one chart per panel, one line per (split, key) series against "step"; the y axis starts at
    0 and ends at y_max (1 for accuracies) or at the largest value. The legend goes in the upper right corner,
    or the lower right one when the curves end high."""
    panels = panels or curve_panels(records)
    panel_width, panel_height, margin = 520, 360, 56
    image = Image.new("RGB", (panel_width * len(panels), panel_height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for panel_index, (title, series_list, y_max) in enumerate(panels):
        left = panel_index * panel_width + margin
        right, top, bottom = (panel_index + 1) * panel_width - 16, 30, panel_height - 40
        series = []
        for label, split, key in series_list:
            points = [(row["step"], row[key]) for row in records
                      if row.get("split", "train") == split and isinstance(row.get(key), (int, float))
                      and math.isfinite(row[key])]
            series.append((label, points))
        all_points = [point for _, points in series for point in points]
        draw.text((left, 8), title, fill="black", font=font)
        draw.rectangle([left, top, right, bottom], outline="black")
        if not all_points:
            continue
        x_low, x_high = min(x for x, _ in all_points), max(x for x, _ in all_points)
        y_low, y_high = min(0.0, min(y for _, y in all_points)), y_max or max(y for _, y in all_points)
        x_high, y_high = max(x_high, x_low + 1), max(y_high, y_low + 1e-6)

        def to_pixel(x, y):
            return (left + (x - x_low) / (x_high - x_low) * (right - left),
                    bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

        for tick in range(5):
            y_value = y_low + (y_high - y_low) * tick / 4
            y_pixel = to_pixel(x_low, y_value)[1]
            draw.line([left - 4, y_pixel, left, y_pixel], fill="black")
            draw.text((left - margin + 4, y_pixel - 6), f"{y_value:.3g}", fill="black", font=font)
            x_value = x_low + (x_high - x_low) * tick / 4
            x_pixel = to_pixel(x_value, y_low)[0]
            draw.line([x_pixel, bottom, x_pixel, bottom + 4], fill="black")
            draw.text((x_pixel - 12, bottom + 8), f"{x_value:.0f}", fill="black", font=font)
        draw.text(((left + right) // 2 - 12, bottom + 22), "step", fill="black", font=font)
        last_heights = [to_pixel(*points[-1])[1] for _, points in series if points]
        curves_end_high = sum(last_heights) / len(last_heights) < (top + bottom) / 2
        legend_top = bottom - 6 - 14 * len(series) if curves_end_high else top + 6
        for series_index, (label, points) in enumerate(series):
            colour = CURVE_COLOURS[series_index % len(CURVE_COLOURS)]
            pixels = [to_pixel(x, y) for x, y in points]
            if len(pixels) > 1:
                draw.line(pixels, fill=colour, width=2)
            for x_pixel, y_pixel in pixels[-1:] if len(pixels) > 1 else pixels:
                draw.ellipse([x_pixel - 3, y_pixel - 3, x_pixel + 3, y_pixel + 3], fill=colour)
            legend_y = legend_top + 14 * series_index
            draw.line([right - 150, legend_y + 6, right - 130, legend_y + 6], fill=colour, width=3)
            draw.text((right - 124, legend_y), label, fill="black", font=font)
    with atomic_write(image_path, "wb") as file:
        image.save(file, format="PNG")
