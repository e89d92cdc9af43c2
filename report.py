"""Where the model looks: heatmaps drawn over the picture, the pointing game, and a self-contained HTML page of
answers.

Off the reading path: the machinery behind `predict.py --explain` and `--report`, and finetune.py's
dev_report.html. Each question gets two maps over the image patches:
- the relevancy of each patch to the top answer (relevancy.py: Chefer et al., ICCV 2021), followed through
  every attention layer of both streams: the first map, the one the page draws and the pointing game reports first;
- the [CLS] token's raw attention in one layer: for Ko-METER the text stream's cross-attention in a co-attention
  layer (METER, Dou et al., CVPR 2022, §3.2), the softmax over the image tokens averaged over the heads, taken
  from model.py's Attention itself (attention_of below); for ViLT (Kim et al., ICML 2021) the
  text-to-image block of one layer's self-attention. It shows where one layer looks, not how much each patch
  decides the answer (Abnar & Zuidema, ACL 2020, "Quantifying Attention Flow in Transformers").
Neither is a proof: the pointing game below measures how often a map peaks on the object a question asks about.

    python predict.py --ckpt out/finetune_demo/pretrained --image demo_data/images/shapes/shapes_000907.jpg \
        --question "파란색 원은 어디에 있나요?" --explain map.png   # after python finetune.py --demo; 1 s on CPU

The page (one HTML file, thumbnails embedded as base64 JPEG, CSS only: no script, no network) groups the
questions by answer type, with the accuracy per type at the top and the mistakes first in each group.
"""

import base64
import functools
import html
import io
import math
import os
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

import checkpoints
import data
import formats
import image_files
import relevancy

EXPLAIN_SIDE = 288     # pixels per panel of an --explain picture: the picture, then its two maps
MARGIN, GAP = 16, 12   # pixels around and between the panels
THUMBNAIL_SIDE = 160   # pixels of a thumbnail on the page
JPEG_QUALITY = 80
PAGE_MAP = 0           # the map a thumbnail shows: 0 = relevancy to the answer, 1 = the [CLS] token's attention
MAP_NAMES = ("relevancy to the answer", "[CLS] token's attention")
# Turbo-like colour map (Mikhailov, 2019, "Turbo, an improved rainbow colormap"): indigo where a map is lowest,
# through blue, cyan, green and orange, to red where it is highest. Evenly spaced stops, linear in between.
COLOUR_STOPS = np.array([(48, 18, 59), (70, 117, 237), (27, 207, 212), (97, 252, 108), (254, 185, 56),
                         (215, 38, 4)], dtype=np.float32)
OPACITY = (0.15, 0.55)  # the map's share of a pixel where it is at its minimum and where it is at its maximum
# Fonts with Hangul, tried in this order when --font is not given: Pillow's own font has no Korean glyphs.
HANGUL_FONTS = [
    "/usr/share/fonts/truetype/nanum/NanumGothic.ttf",             # Debian / Ubuntu: fonts-nanum
    "/usr/share/fonts/opentype/noto/NotoSansCJK-Regular.ttc",      # Debian / Ubuntu: fonts-noto-cjk
    "/usr/share/fonts/google-noto-cjk/NotoSansCJK-Regular.ttc",    # Fedora
    "/usr/share/fonts/noto-cjk/NotoSansCJK-Regular.ttc",           # Arch
    "/System/Library/Fonts/AppleSDGothicNeo.ttc",                  # macOS
    "C:/Windows/Fonts/malgun.ttf",                                 # Windows: Malgun Gothic
]


# ----------------------------------------------------------------------------------------------
# From the model: answers and the attention maps behind them


def attention_of(model, layer):
    """The model.Attention whose probabilities hold the text-to-image attention of layer index `layer`: Ko-METER's
    text stream's cross-attention in a co-attention layer, or one of ViLT's blocks' self-attention."""
    return model.text_layers[layer].cross_attention if model.cfg.arch == "meter" else model.blocks[layer].attention


def text_to_image(model, probs, text_tokens):
    """attention_of's probabilities -> the text-to-image part [B, heads, T, 1+N]: how each text token spreads its
    attention over the image tokens. Ko-METER's are that already; of ViLT's, whose rows sum to 1 over text and
    image keys together, the text-to-image block, a row of which sums to at most 1."""
    if model.cfg.arch == "meter":
        return probs
    return probs[:, :, :text_tokens, text_tokens:]  # [B, heads, T+1+N, T+1+N] -> [B, heads, T, 1+N]


def layer_count(model):
    """The layers whose text-to-image attention can be shown: co-attention layer pairs, or ViLT's blocks."""
    return model.cfg.fusion_layers if model.cfg.arch == "meter" else model.cfg.vilt_layers


def layer_index(model, number):
    """--layer N (1 = the first layer, None = the last) -> the index attention_of takes."""
    count = layer_count(model)
    if number is None:
        return count - 1
    if not 1 <= number <= count:
        raise ValueError(f"--layer {number}: the model has {count} layers to show (1 to {count})")
    return number - 1


def describe_layer(model, index):
    """What the two maps are, with the attention's layer index `index`, in words, for a caption."""
    count = layer_count(model)
    if model.cfg.arch == "meter":
        attention = (f"text stream's cross-attention to the image, co-attention layer {index + 1} of {count}, "
                     f"mean of {model.cfg.fusion_heads} heads")
    else:
        attention = (f"text-to-image block of ViLT's attention, layer {index + 1} of {count}, "
                     f"mean of {model.cfg.vision_heads} heads")
    return f"relevancy: every attention layer, for the top answer (Chefer et al., 2021); attention: {attention}"


@torch.no_grad()
def answer_batch(model, tokenizer, answer_vocab, max_len, image_paths, questions, top=5, attention_layer=None,
                 dtype="fp32"):
    """(top answers [[(answer, probability), ...] per question], maps [B, 2, side, side], or None when
    attention_layer is None: the relevancy of each patch to the top answer (shares of the patches' total), and the
    [CLS] token's attention in the layer with index attention_layer (layer_index; its share per patch of the
    token's whole row, which also reaches the image's class token, and for ViLT the text tokens)). The inputs
    must be usable (predict.Answerer.check); the model in eval mode.
    Probabilities are the VQA head's sigmoids (it is trained with binary cross-entropy), computed in fp32 even
    under dtype "bf16" (bf16 autocast for the model)."""
    device = next(model.parameters()).device
    pixels = torch.stack([data.load_image(path, model.cfg.image_size) for path in image_paths])  # [B, 3, S, S]
    pixels = pixels.to(device)
    input_ids, attention_mask = (tensor.to(device) for tensor in tokenizer.encode(questions, max_len))  # [B, T] each
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=dtype == "bf16"):
        if attention_layer is None:
            logits, maps = model.vqa_head(model(pixels, input_ids, attention_mask)["cls_feats"]), None
        else:  # one pass with gradients: the relevancy, and the layer's attention among the probabilities it kept
            logits, relevance, kept = relevancy.relevancy_maps(model, pixels, input_ids, attention_mask)  # [B, N]
            probs = text_to_image(model, kept[attention_of(model, attention_layer)], input_ids.shape[1])
            attention = probs.float().mean(dim=1)[:, 0, 1:]  # [B, heads, T, 1+N] -> the [CLS] row over patches [B, N]
            maps = torch.stack([relevance, attention], dim=1)  # [B, 2, N]
            side = math.isqrt(maps.shape[-1])
            maps = maps.reshape(maps.shape[0], 2, side, side).cpu()  # [B, 2, N] -> [B, 2, side, side], row by row
    probabilities = torch.sigmoid(logits.float())  # [B, num_answers]
    values, indices = probabilities.topk(min(top, len(answer_vocab)), dim=-1)  # [B, top]
    top_answers = [[(answer_vocab[index], value) for index, value in zip(row_indices.tolist(), row_values.tolist())]
                   for row_indices, row_values in zip(indices, values)]
    return top_answers, maps


# ----------------------------------------------------------------------------------------------
# Drawing: a map over the picture


def colour_map(values):
    """[H, W] floats in [0, 1] -> [H, W, 3] uint8 colours along COLOUR_STOPS."""
    stops = np.linspace(0.0, 1.0, len(COLOUR_STOPS))
    channels = [np.interp(values, stops, COLOUR_STOPS[:, channel]) for channel in range(3)]  # 3 x [H, W]
    return np.stack(channels, axis=-1).astype(np.uint8)  # [H, W, 3]


def model_view(image_path, side):
    """The square the model sees (CLIP's resize and center crop), at `side` pixels."""
    return data.resize_center_crop(image_files.open_rgb(image_path, min_side=side), side)


def overlay(picture, heat):
    """The picture with a map [side, side] over it: stretched from its minimum (0) to its maximum (1), upsampled
    bilinearly to the picture, coloured, and blended in more strongly where it is high."""
    values = heat.float().numpy()
    values = (values - values.min()) / max(float(values.max() - values.min()), 1e-12)
    upsampled = np.asarray(Image.fromarray(values, mode="F").resize(picture.size, Image.Resampling.BILINEAR))
    upsampled = np.clip(upsampled, 0.0, 1.0)  # [H, W]
    opacity = (OPACITY[0] + (OPACITY[1] - OPACITY[0]) * upsampled)[:, :, None]  # [H, W] -> [H, W, 1]
    blended = (1 - opacity) * np.asarray(picture, dtype=np.float32) + opacity * colour_map(upsampled)
    return Image.fromarray(np.round(blended).astype(np.uint8))


@functools.lru_cache(maxsize=1)
def hangul_font_path():
    """The first of HANGUL_FONTS on this machine, or None (with one warning)."""
    for path in HANGUL_FONTS:
        if os.path.isfile(path):
            return path
    print("warning: no font with Hangul found (install fonts-nanum or fonts-noto-cjk, or pass --font FILE): "
          "Korean text on the picture will show as boxes", file=sys.stderr)
    return None


def load_font(size, font_path=None):
    path = font_path or hangul_font_path()
    if path is None:
        return ImageFont.load_default(size)
    try:
        return ImageFont.truetype(path, size)
    except OSError as error:
        raise ValueError(f"{path}: not a usable font ({error})") from None


def wrapped(draw, text, font, width):
    """text cut into lines no wider than `width` pixels, at spaces where possible."""
    lines = []
    for word in text.split():
        candidate = f"{lines[-1]} {word}" if lines else word
        if lines and draw.textlength(candidate, font=font) <= width:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines or [""]


def explain_picture(image_path, question, top_answers, maps, layer_description, font_path=None):
    """The --explain picture: the answer with its probability and the question on top; then the picture as the
    model sees it, alone and under its two maps (relevancy to the answer, the [CLS] token's attention), each
    captioned with the least and the most that one patch gets of it (answer_batch says of what) and coloured from
    its own minimum to its own maximum; then the colour scale and what the maps are."""
    width = 3 * EXPLAIN_SIDE + 2 * GAP + 2 * MARGIN
    large, small = load_font(24, font_path), load_font(15, font_path)
    scratch = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    answer, probability = top_answers[0]
    header = [(f"{answer}   {probability:.3f}", large)]
    header += [(line, small) for line in wrapped(scratch, f"Q: {question}", small, width - 2 * MARGIN)]
    if len(top_answers) > 1:
        runners_up = ", ".join(f"{other} {other_probability:.3f}" for other, other_probability in top_answers[1:])
        header += [(line, small) for line in wrapped(scratch, f"next: {runners_up}", small, width - 2 * MARGIN)]
    line_heights = [font.size + 8 for _, font in header]
    panels_top = MARGIN + sum(line_heights) + 4
    scale_top = panels_top + EXPLAIN_SIDE + 2 * (small.size + 6) + 10  # room for two lines of caption
    footer = wrapped(scratch, layer_description, small, width - 2 * MARGIN)
    canvas = Image.new("RGB", (width, scale_top + 38 + len(footer) * (small.size + 6)), "white")
    draw = ImageDraw.Draw(canvas)
    y = MARGIN
    for (text, font), height in zip(header, line_heights):
        draw.text((MARGIN, y), text, fill="black", font=font)
        y += height
    picture = model_view(image_path, EXPLAIN_SIDE)
    panels = [(picture, "the picture, as the model sees it")]
    panels += [(overlay(picture, heat), f"{name}: {100 * heat.min():.2f}% to {100 * heat.max():.2f}% of it per patch")
               for heat, name in zip(maps, MAP_NAMES)]
    for column, (panel, caption) in enumerate(panels):
        left = MARGIN + column * (EXPLAIN_SIDE + GAP)
        canvas.paste(panel, (left, panels_top))
        for line_number, line in enumerate(wrapped(draw, caption, small, EXPLAIN_SIDE)):
            line_top = panels_top + EXPLAIN_SIDE + 6 + line_number * (small.size + 6)
            draw.text((left, line_top), line, fill="black", font=small)
    scale = Image.fromarray(colour_map(np.tile(np.linspace(0.0, 1.0, 200), (12, 1))))  # [12, 200] -> [12, 200, 3]
    draw.text((MARGIN, scale_top), "least", fill="black", font=small)
    canvas.paste(scale, (MARGIN + 48, scale_top + 3))
    draw.text((MARGIN + 256, scale_top), "most (each map from its own minimum to its maximum)",
              fill="black", font=small)
    for line_number, line in enumerate(footer):
        draw.text((MARGIN, scale_top + 26 + line_number * (small.size + 6)), line, fill="dimgray", font=small)
    return canvas


def thumbnail(image_path, heat, box=None):
    """A base64 JPEG of the map over the picture, THUMBNAIL_SIDE pixels square, with the box of the object the
    question asks about outlined when there is one."""
    picture = overlay(model_view(image_path, THUMBNAIL_SIDE), heat)
    if box is not None:
        with Image.open(image_path) as original:
            left, top, scale = view_of(original.size, THUMBNAIL_SIDE)
        ImageDraw.Draw(picture).rectangle([(box[0] - left) / scale, (box[1] - top) / scale, (box[2] - left) / scale,
                                           (box[3] - top) / scale], outline="white", width=2)
    buffer = io.BytesIO()
    picture.save(buffer, "JPEG", quality=JPEG_QUALITY)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


# ----------------------------------------------------------------------------------------------
# Controls: what the words alone score, and whether a map peaks on the object a question asks about


def question_only(train_entries, dev_entries, reference_answer):
    """What a question's words alone score: each dev question answered with the most frequent training answer of
    the same question (of all training questions when the question is new), right when it is the question's
    reference_answer (finetune.reference_answer, the rule of results.json), in the shape of results.json's
    "overall" and "by_type" (accuracy, n). A model that looks at the picture must do better."""
    by_question, overall = {}, Counter()
    for entry in train_entries:
        by_question.setdefault(entry["question"], Counter()).update(entry["answers"])
        overall.update(entry["answers"])
    hits = {answer_type: [] for answer_type in formats.ANSWER_TYPES}
    for entry in dev_entries:
        guess = by_question.get(entry["question"], overall).most_common(1)[0][0]
        hits[entry["answer_type"]].append(guess == reference_answer(entry["answers"]))
    every = [hit for type_hits in hits.values() for hit in type_hits]
    return {"overall": {"accuracy": sum(every) / max(len(every), 1), "n": len(every)},
            "by_type": {answer_type: {"accuracy": sum(type_hits) / max(len(type_hits), 1), "n": len(type_hits)}
                        for answer_type, type_hits in hits.items()}}


def read_objects(path):
    """--dev-objects: {question id: [left, top, right, bottom]} in pixels; ValueError naming the file and the first
    entry that is not four numbers with left < right and top < bottom."""
    objects = checkpoints.read_json(path)
    if not isinstance(objects, dict):
        raise ValueError(f"{path}: expected a JSON object {{question id: [left, top, right, bottom]}}, "
                         f"found a {type(objects).__name__}")
    for question_id, box in objects.items():
        if not (isinstance(box, list) and len(box) == 4 and all(isinstance(value, (int, float)) for value in box)
                and box[0] < box[2] and box[1] < box[3]):
            raise ValueError(f"{path}: entry {question_id!r}: {box!r} is not a box [left, top, right, bottom]")
    return objects


def view_of(size, side):
    """(left, top, picture pixels per unit): where the model's square view (CLIP's center crop,
    data.resize_center_crop) of a picture of size (width, height) lies in it, the view cut into `side` units a side
    (a thumbnail's pixels, or the model's patches)."""
    width, height = size
    short = min(width, height)
    return (width - short) / 2, (height - short) / 2, short / side


def patches_under(box, size, side):
    """[side * side] bool, the patches row by row: those of the model's view that overlap box [left, top, right,
    bottom], in pixels of a picture of size (width, height). Overlap, not the patch's centre: a box narrower than
    a patch (a thin bar, a bottle) may hold no patch centre, and then no map could ever point at it."""
    left, top, scale = view_of(size, side)
    edges = torch.arange(side + 1, dtype=torch.float32) * scale  # [side + 1] patch edges, view -> picture pixels
    across = (left + edges[:-1] < box[2]) & (left + edges[1:] > box[0])  # [side] columns overlapping the box
    down = (top + edges[:-1] < box[3]) & (top + edges[1:] > box[1])  # [side] rows overlapping the box
    return (down[:, None] & across[None, :]).flatten()  # [side, side] -> [side * side]


def pointing_game(rows, peaks, insides):
    """The pointing game (Zhang et al., ECCV 2016, "Top-down neural attention by excitation backprop") of each row
    that asks about one object, into row["pointing"]: "hits", one per map, whether the patch where the map peaks
    lies over the object's box (patches_under); "chance", the share of patches that do (the hit rate of a map
    that peaks at a patch drawn at random); "other questions", one per map, how often the maps of the picture's
    questions about anything else (another object, or none) peak there (None without any). A map drawn to whatever
    stands out in the picture, whatever is asked, hits as often for those questions as for its own; a map that
    follows the question hits more often. Questions about the same object (the same box) are left out: their maps
    should hit it too.
    rows: each with its "image" and "box" (None when it asks about no one object); peaks: [rows][maps] the flat
    index of each map's peak; insides: {row index: patches_under its box}."""
    rows_of_image = {}
    for index, row in enumerate(rows):
        rows_of_image.setdefault(row["image"], []).append(index)
    for index, row in enumerate(rows):
        inside = insides.get(index)
        if inside is None:
            row["pointing"] = None
            continue
        others = [peaks[other] for other in rows_of_image[row["image"]]
                  if other != index and rows[other]["box"] != row["box"]]  # [others][maps]
        row["pointing"] = {"hits": [bool(inside[peak]) for peak in peaks[index]],
                           "chance": inside.float().mean().item(),
                           "other questions": [sum(bool(inside[other[map_index]]) for other in others) / len(others)
                                               for map_index in range(len(peaks[index]))] if others else None}


def pointing_results(rows):
    """The pointing game over the rows that ask about one object: n, the chance level, and for each map the share
    of hits and the hit rate of the picture's questions about other things (over the rows whose picture has any;
    pointing_game), overall and per answer type (types with such questions only)."""
    def summary(group):
        compared = [row for row in group if row["pointing"]["other questions"] is not None]
        return {"n": len(group), "chance": sum(row["pointing"]["chance"] for row in group) / max(len(group), 1),
                **{name: sum(row["pointing"]["hits"][index] for row in group) / max(len(group), 1)
                   for index, name in enumerate(MAP_NAMES)},
                **{f"{name}, other questions": sum(row["pointing"]["other questions"][index] for row in compared)
                   / max(len(compared), 1) for index, name in enumerate(MAP_NAMES)}}

    pointed = [row for row in rows if row["pointing"]]
    by_type = {answer_type: [row for row in pointed if row["answer_type"] == answer_type]
               for answer_type in formats.ANSWER_TYPES}
    return {"overall": summary(pointed),
            "by_type": {answer_type: summary(group) for answer_type, group in by_type.items() if group}}


# ----------------------------------------------------------------------------------------------
# The page


PAGE_STYLE = """
body { font-family: "Noto Sans KR", "Apple SD Gothic Neo", "Malgun Gothic", NanumGothic, sans-serif;
       margin: 24px; color: #222; }
h1 { font-size: 22px; margin-bottom: 4px; }
.about { color: #555; font-size: 14px; max-width: 960px; }
table.summary { border-collapse: collapse; margin: 16px 0 24px; }
table.summary th, table.summary td { padding: 4px 14px; border-bottom: 1px solid #ddd; text-align: right; }
table.summary th:first-child, table.summary td:first-child { text-align: left; }
table.summary tr.overall td { font-weight: bold; border-top: 2px solid #888; }
h2 { font-size: 18px; border-bottom: 2px solid #ccc; padding-bottom: 4px; margin-top: 32px; }
.cards { display: flex; flex-wrap: wrap; gap: 12px; }
.card { width: 200px; border: 1px solid #ddd; border-left: 6px solid #aaa; border-radius: 4px; padding: 8px;
        font-size: 13px; }
.card.wrong { border-left-color: #d62728; background: #fff6f6; }
.card.right { border-left-color: #2ca02c; }
.card img { width: 160px; height: 160px; display: block; margin-bottom: 6px; }
.question { font-weight: bold; margin: 4px 0; }
.verdict { margin: 4px 0; }
.wrong .verdict { color: #b01e1e; }
.right .verdict { color: #1d7a1d; }
ol.top { list-style: none; padding: 0; margin: 4px 0 0; }
ol.top li { position: relative; z-index: 0; margin: 2px 0; padding: 1px 4px; display: flex;
            justify-content: space-between; }
ol.top li .bar { position: absolute; left: 0; top: 0; bottom: 0; background: #dbe7f5; z-index: -1; }
ol.top li.reference { font-weight: bold; }
.id { color: #999; font-size: 11px; }
.pointing { color: #555; font-size: 12px; }
"""


def percent(right, judged):
    return f"{100 * right / judged:.1f}%" if judged else "–"


def card_html(row):
    """One question: thumbnail, question, verdict against the reference answer, top answers with bars."""
    verdict_class = {True: "right", False: "wrong", None: "unjudged"}[row["correct"]]
    if row["correct"] is None:
        verdict = "no reference answer"
    else:
        verdict = f"{'✓ right' if row['correct'] else '✗ wrong'} · reference: {html.escape(row['reference'])}"
    if row["pointing"]:
        peak = "in" if row["pointing"]["hits"][PAGE_MAP] else "outside"
        verdict += (f'<br><span class="pointing">map peaks {peak} the object\'s box (by chance: '
                    f'{100 * row["pointing"]["chance"]:.0f}%)</span>')
    answers = "".join(
        f'<li class="{"reference" if answer == row["reference"] else ""}">'
        f'<span class="bar" style="width: {100 * probability:.1f}%"></span>'
        f"<span>{html.escape(answer)}</span><span>{probability:.3f}</span></li>"
        for answer, probability in row["top"])
    return (f'<div class="card {verdict_class}" data-question-id="{html.escape(str(row["question_id"]))}" '
            f'data-answer-type="{html.escape(row["answer_type"])}">'
            f'<img src="data:image/jpeg;base64,{row["thumbnail"]}" alt="the map over the picture">'
            f'<p class="question">{html.escape(row["question"])}</p><p class="verdict">{verdict}</p>'
            f'<ol class="top">{answers}</ol><p class="id">{html.escape(os.path.basename(row["image"]))}</p></div>')


def controls_html(rows, controls):
    """Two tables under the summary: the accuracy of the controls ({name: results.json-shaped results}) beside the
    model's, per answer type; and the pointing game with its chance level, when questions name their object."""
    tables = []
    if controls:
        head = "".join(f"<th>{html.escape(column)}</th>" for column in ["accuracy", *formats.ANSWER_TYPES, "all"])
        lines = [f"<tr>{head}</tr>"]
        for name, results in controls.items():
            cells = [results["by_type"][answer_type] for answer_type in formats.ANSWER_TYPES] + [results["overall"]]
            label = html.escape(name.replace("_", " "))
            lines.append(f'<tr data-control="{html.escape(name)}"><td>{label}</td>' + "".join(
                f"<td>{percent(cell['accuracy'] * cell['n'], cell['n'])}</td>" for cell in cells) + "</tr>")
        tables.append(f'<table class="summary controls">{"".join(lines)}</table>')
    pointed = pointing_results(rows)
    if pointed["overall"]["n"]:
        names = [name for map_name in MAP_NAMES for name in (map_name, f"{map_name}, other questions")]
        lines = ["<tr><th>pointing game: peak in the box</th><th>questions</th>" + "".join(
            f"<th>{html.escape(name)}</th>" for name in names) + "<th>by chance</th></tr>"]
        for name, result in [*pointed["by_type"].items(), ("all", pointed["overall"])]:
            lines.append(f'<tr data-pointing="{html.escape(name)}"><td>{html.escape(name)}</td><td>{result["n"]}</td>'
                         + "".join(f"<td>{100 * result[column]:.1f}%</td>" for column in names)
                         + f"<td>{100 * result['chance']:.1f}%</td></tr>")
        tables.append(f'<table class="summary pointing">{"".join(lines)}</table>')
    return "".join(tables)


def page_html(rows, title, about, controls=None):
    """The whole page: title, what the maps show, accuracy per answer type and the controls, then one section per
    type with its mistakes first (each group otherwise in the input's order)."""
    def tally(group):
        judged = [row for row in group if row["correct"] is not None]
        return len(group), sum(row["correct"] for row in judged), len(judged)

    groups = [(answer_type, [row for row in rows if row["answer_type"] == answer_type])
              for answer_type in formats.ANSWER_TYPES]
    summary = ["<tr><th>answer type</th><th>questions</th><th>right</th><th>accuracy</th></tr>"]
    sections = []
    for number, (answer_type, group) in enumerate(groups):
        count, right, judged = tally(group)
        name = f'<a href="#type-{number}">{html.escape(answer_type)}</a>' if group else html.escape(answer_type)
        summary.append(f'<tr data-answer-type="{html.escape(answer_type)}" data-questions="{count}"><td>{name}</td>'
                       f"<td>{count}</td><td>{right}</td><td>{percent(right, judged)}</td></tr>")
        if group:
            # mistakes, then questions without a reference, then right answers; sorted() keeps the input order within
            ordered = sorted(group, key=lambda row: {False: 0, None: 1, True: 2}[row["correct"]])
            heading = f"{html.escape(answer_type)} · {percent(right, judged)} right ({right} of {judged})"
            sections.append(f'<section id="type-{number}" data-answer-type="{html.escape(answer_type)}">'
                            f"<h2>{heading}</h2>"
                            f'<div class="cards">{"".join(card_html(row) for row in ordered)}</div></section>')
    count, right, judged = tally(rows)
    summary.append(f'<tr class="overall" data-questions="{count}"><td>all</td><td>{count}</td><td>{right}</td>'
                   f"<td>{percent(right, judged)}</td></tr>")
    return (f'<!DOCTYPE html>\n<html lang="ko"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
            f"<style>{PAGE_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f'<p class="about">{html.escape(about)}</p>'
            f'<table class="summary">{"".join(summary)}</table>{controls_html(rows, controls)}'
            f'{"".join(sections)}</body></html>\n')


def write_report(path, model, tokenizer, answer_vocab, max_len, entries, reference_answer, title, layer=None,
                 batch_size=32, top=3, objects=None, controls=None):
    """Answer VQA entries ({"image", "question", "answers", "answer_type", "question_id"}, usable) in batches and
    write the page to `path`. reference_answer(answers) is the answer a prediction must equal to count as right
    (finetune.reference_answer, the rule of results.json); entries without answers are shown unjudged.
    layer: --layer's number (1 = first, None = last). objects: {question id as a string: [left, top, right,
    bottom]}, the object a question asks about, in pixels of its picture (the pointing game); controls: {name:
    results} shown beside the accuracy (finetune.py's question-only and wrong-picture rows). Returns the rows the
    page shows, each with its "pointing" (pointing_game's {"hits", "chance", "other questions"}, or None)."""
    index = layer_index(model, layer)
    was_training = model.training
    model.eval()
    rows, peaks, insides = [], [], {}
    for start in range(0, len(entries), batch_size):
        batch = entries[start:start + batch_size]
        top_answers, maps = answer_batch(model, tokenizer, answer_vocab, max_len, [entry["image"] for entry in batch],
                                         [entry["question"] for entry in batch], top, index)
        for entry, answers, entry_maps in zip(batch, top_answers, maps):
            reference = reference_answer(entry["answers"]) if entry["answers"] else ""
            box = (objects or {}).get(str(entry["question_id"]))
            if box is not None:
                with Image.open(entry["image"]) as picture:
                    insides[len(rows)] = patches_under(box, picture.size, entry_maps.shape[-1])
            peaks.append(entry_maps.flatten(1).argmax(dim=1).tolist())  # [maps, side, side] -> [maps]
            rows.append({"question_id": entry["question_id"], "question": entry["question"], "image": entry["image"],
                         "box": box, "answer_type": entry["answer_type"], "reference": reference, "top": answers,
                         "correct": answers[0][0] == reference if reference else None,
                         "thumbnail": thumbnail(entry["image"], entry_maps[PAGE_MAP], box)})
    pointing_game(rows, peaks, insides)
    model.train(was_training)
    about = (f"{len(rows)} questions. Each picture is what the model sees, with the {MAP_NAMES[PAGE_MAP]} of each "
             f"image patch drawn on it, from indigo where it is least to red where it is most. Answers are the VQA "
             f"head's sigmoid probabilities, with bars; bold: the reference answer. Mistakes come first in each "
             f"answer type. "
             f"Controls: what the words alone score, and the same model shown another picture; the pointing game: how "
             f"often each map ({describe_layer(model, index)}) peaks on the object a question asks about (outlined "
             f"in white), against chance and against the maps of the picture's questions about other things.")
    with checkpoints.atomic_write(path) as file:
        file.write(page_html(rows, title, about, controls))
    return rows
