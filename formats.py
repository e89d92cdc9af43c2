"""Data sets as they are downloaded: the file formats, and `check`, which finds what is unusable in them.

Off the reading path: read it when you bring a new data set (this is the file to edit) or when `check` or a
training script refuses yours. Every reader returns plain entries, the only thing data.py needs:
  captions  {"image": path, "caption": str, "image_id": str, "split": str}
  questions {"image": path, "question": str, "answers": [str, ...], "answer_type": one of ANSWER_TYPES,
             "question_id": ..., "image_id": str}
The layout of a file is detected from its content:
  AIHub Korean MSCOCO captions   [{"file_path", "id", "captions", "caption_ko": [...]}, ...]
  AIHub 생활 및 거주환경 VQA      {"images": [{image_id, image, category}], "question": [{..., answer, answer_type}]}
  AIHub 시각정보 질의응답         question / annotation / images files in one folder, joined on their ids
  VQA v2 / KVQA question lists   [{question, answers: [{answer, answer_confidence}], answer_type, image}, ...]
  the project's own JSONL        {"image", "caption"} or {"image", "question", "answers", "answer_type"}

    python formats.py check --vqa demo_data/vqa_train.json --images demo_data/images   # after python demo.py

Choices where the data sets' documents are silent:
- Readers keep every entry, unusable ones included; `check_entries` separates them by reason (missing,
  unreadable or truncated image, empty text, no answer), and a run stops when more than --max-bad-share
  of its entries are unusable.
- A data set's own answer_type wins when it is one of the known spellings (Korean or English); otherwise the
  type follows from the most frequent answer: 예/아니오/아니요/네, a numeral (3, 3개, 세 마리, 셋), 알 수 없음,
  or 그 외.
"""

import argparse
import concurrent.futures
import json
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

ANSWER_TYPES = ["예/아니오", "숫자", "알 수 없음", "그 외"]  # the Ko-METER paper's four answer types
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255)



# ----------------------------------------------------------------------------------------------
# Image files of every kind -> RGB


def to_rgb(image):
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled to 8 bits."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32) / 257.0           # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def open_rgb(path, min_side=None):
    """Decode an image file to an RGB Pillow image, EXIF rotation applied.

    With min_side, a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, libjpeg's DCT scaling)
    that keeps both sides >= min_side: much less work for a 224 or 384 crop of a large photo.
    """
    path = str(path)
    try:
        with Image.open(path) as image:
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: image too large ({image.width}x{image.height} pixels, "
                                 f"limit {Image.MAX_IMAGE_PIXELS}; decompression bomb?)")
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: image too large ({error})") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path}: unreadable image ({error})") from None
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(f"{path}: unreadable image ({error})") from None


# ----------------------------------------------------------------------------------------------
# Readers: the layout is detected from the content


def read_json_or_jsonl(path):
    """A JSON value, or the list of objects of a JSON-lines file."""
    with open(path, encoding="utf-8-sig") as file:
        text = file.read()
    if Path(path).suffix.lower() != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            if not text.lstrip().startswith("{"):
                raise ValueError(f"{path}: not valid JSON ({error})") from None
    records = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_number} is not valid JSON ({error})") from None
    return records

IMAGE_KEYS = ("image", "image_path", "file_path", "img_path")


def layout_of(data, path):
    """Name the layout of a loaded file, or refuse it naming the keys found."""
    if isinstance(data, dict):
        keys = set(data)
        if "images" in keys and "question" in keys:
            return "aihub_living_vqa"
        if "annotations" in keys:
            return "annotation_part"
        if "questions" in keys:
            first = next((record for record in data["questions"] if isinstance(record, dict)), {})
            return "question_list" if {"answers", "answer"} & set(first) else "question_part"
        if "images" in keys:
            return "image_part"
    elif isinstance(data, list):
        if not data:
            raise ValueError(f"{path}: the file holds no entries")
        keys = set()
        for record in data[:20]:
            keys |= set(record) if isinstance(record, dict) else set()
        if "caption_ko" in keys and "file_path" in keys:
            return "aihub_coco_captions"
        if "caption" in keys and keys & set(IMAGE_KEYS):
            return "jsonl_captions"
        if "question" in keys and keys & {"answers", "answer"} and keys & set(IMAGE_KEYS):
            return "question_list"
    else:
        keys = set()
    raise ValueError(
        f"{path}: unknown layout; found keys {sorted(keys)}; expected AIHub MSCOCO captions "
        "(file_path, caption_ko), AIHub VQA (images, question | questions, annotations, images), "
        "a question list (question, answers, image) or JSONL (image, caption)"
    )


def image_path_of(record, images_root, category=None):
    name = next((record[key] for key in IMAGE_KEYS if record.get(key)), "")
    if not name:
        return ""
    if category:
        return os.path.join(os.path.abspath(images_root), str(category), str(name))
    return os.path.join(os.path.abspath(images_root), str(name))


def read_captions(path, images_root):
    """Caption entries {"image", "caption", "image_id", "split"} of an AIHub MSCOCO JSON or a
    JSONL file. One entry per caption; empty captions are kept for check_entries to report.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption file not found")
    data = read_json_or_jsonl(path)
    layout = layout_of(data, path)
    entries = []
    if layout == "aihub_coco_captions":
        for record in data:
            captions = record.get("caption_ko") or [""]
            captions = [captions] if isinstance(captions, str) else captions
            file_path = str(record.get("file_path", ""))
            image = image_path_of(record, images_root)
            image_id = str(record.get("id", file_path))
            split = file_path.split("/")[0] if "/" in file_path else ""
            for caption in captions:
                entries.append({"image": image, "caption": (caption or "").strip(),
                                "image_id": image_id, "split": split})
    elif layout == "jsonl_captions":
        for record in data:
            image = image_path_of(record, images_root)
            entries.append({"image": image, "caption": (record.get("caption") or "").strip(),
                            "image_id": str(record.get("image_id", image)),
                            "split": str(record.get("split", ""))})
    else:
        raise ValueError(f"{path}: holds VQA questions ({layout}), not captions")
    return entries


def answers_of(record):
    """Annotator answers of a record: "answers" (strings or {"answer": …}), else "answer" or
    "multiple_choice_answer"; empty answers dropped."""
    answers = record.get("answers")
    if answers is None:
        answers = record.get("answer", record.get("multiple_choice_answer"))
    if answers is None:
        return []
    if isinstance(answers, (str, int, float)):
        answers = [answers]
    texts = [str(answer.get("answer", "") if isinstance(answer, dict) else answer).strip()
             for answer in answers]
    return [text for text in texts if text]


def vqa_entry(record, image, answers, question_id, image_id):
    entry = {"image": image, "question": str(record.get("question") or "").strip(),
             "answers": answers, "answer_type": record.get("answer_type"),
             "question_id": question_id, "image_id": str(image_id)}
    entry["answer_type"] = answer_type_of(entry)
    return entry


def aihub_image_path(images, image_id, images_root):
    """<images root>/<category>/<image> of the AIHub images record of image_id ("" if none)."""
    record = images.get(image_id)
    return image_path_of(record, images_root, record.get("category")) if record else ""


def read_living_vqa(data, images_root):
    """AIHub 생활 및 거주환경 VQA: {"images": [...], "question": [...]}."""
    images = {record.get("image_id"): record for record in data["images"]}
    entries = []
    for record in data["question"]:
        image = aihub_image_path(images, record.get("image_id"), images_root)
        entries.append(vqa_entry(record, image, answers_of(record),
                                 record.get("question_id"), record.get("image_id")))
    return entries


def read_question_list(data, path, images_root):
    """VQA v2 / KVQA-style list, or the project's JSONL: each entry holds question, answers, image."""
    records = data["questions"] if isinstance(data, dict) else data
    entries = []
    for index, record in enumerate(records):
        image = image_path_of(record, images_root)
        question_id = record.get("question_id", record.get("id", f"{path.name}:{index}"))
        entries.append(vqa_entry(record, image, answers_of(record), question_id,
                                 record.get("image_id", image)))
    return entries


def join_triplet(folder, parts, images_root):
    """AIHub 시각정보 질의응답: question, annotation and images files joined on their ids."""
    missing = [name for name in ("question_part", "annotation_part", "image_part") if name not in parts]
    if missing:
        raise ValueError(f"{folder}: incomplete question/annotation/images triplet, missing the "
                         f"{', '.join(name.split('_')[0] for name in missing)} file")
    annotations = {record.get("question_id"): record
                   for data in parts["annotation_part"] for record in data["annotations"]}
    images = {record.get("image_id"): record for data in parts["image_part"] for record in data["images"]}
    entries = []
    for data in parts["question_part"]:
        for record in data["questions"]:
            annotation = annotations.get(record.get("question_id"), {})
            image = aihub_image_path(images, record.get("image_id"), images_root)
            merged = {**record, "answer_type": annotation.get("answer_type", record.get("answer_type"))}
            entries.append(vqa_entry(merged, image, answers_of(annotation),
                                     record.get("question_id"), record.get("image_id")))
    return entries


def read_vqa(path, images_root):
    """VQA entries {"image", "question", "answers", "answer_type", "question_id", "image_id"} of a
    label file or a folder of them (searched recursively; 시각정보 triplets are joined per folder).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(file for file in path.rglob("*") if file.suffix.lower() in (".json", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: no .json or .jsonl label files in the folder")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: VQA file or folder not found")
    entries, parts_by_folder = [], {}
    for file in files:
        data = read_json_or_jsonl(file)
        layout = layout_of(data, file)
        if layout == "aihub_living_vqa":
            entries += read_living_vqa(data, images_root)
        elif layout == "question_list":
            entries += read_question_list(data, file, images_root)
        elif layout.endswith("_part"):
            if not path.is_dir():
                raise ValueError(f"{file}: one file of a question/annotation/images triplet; "
                                 "pass the folder that holds all three")
            parts_by_folder.setdefault(file.parent, {}).setdefault(layout, []).append(data)
        else:
            raise ValueError(f"{file}: holds captions ({layout}), not VQA questions")
    for folder, parts in parts_by_folder.items():
        entries += join_triplet(folder, parts, images_root)
    return entries

TYPE_SYNONYMS = {
    "예/아니오": "예/아니오", "예/아니요": "예/아니오", "네/아니오": "예/아니오", "네/아니요": "예/아니오",
    "yes/no": "예/아니오", "yes_no": "예/아니오", "yesno": "예/아니오", "y/n": "예/아니오",
    "숫자": "숫자", "수": "숫자", "개수": "숫자", "number": "숫자", "count": "숫자", "counting": "숫자",
    "알수없음": "알 수 없음", "unanswerable": "알 수 없음", "unknown": "알 수 없음",
    "그외": "그 외", "기타": "그 외", "other": "그 외", "others": "그 외",
}

YES_NO_ANSWERS = {"예", "아니오", "아니요", "네"}

COUNTERS = ("개|명|마리|대|권|장|잔|병|그루|송이|채|척|켤레|벌|살|층|번|개월|년|시|분|초|칸|줄|쌍|"
            "가지|곳|군데|인분|조각|판|통|알|포기|자루|인|점|줄기|쪽|회")

NATIVE_ALONE = "(?:열|스물|서른|마흔|쉰)?(?:하나|둘|셋|넷|다섯|여섯|일곱|여덟|아홉)|열|스물|서른|마흔|쉰"

NATIVE_ATTRIBUTIVE = "(?:열|스물|서른|마흔|쉰)?(?:한|두|세|네|다섯|여섯|일곱|여덟|아홉)|열|스무|서른|마흔|쉰"

NUMERAL = re.compile(
    rf"^(?:\d+(?:[.,]\d+)?\s*(?:{COUNTERS})?|(?:{NATIVE_ALONE})|"
    rf"(?:{NATIVE_ATTRIBUTIVE}|[일이삼사오육칠팔구십백천만]+)\s*(?:{COUNTERS})|영)$"
)


def answer_type_of(entry):
    """One of ANSWER_TYPES: the entry's own answer_type when it is one (or a synonym), else by
    its most frequent answer: 예/아니오/아니요/네, a numeral (3, 3개, 세 마리, 셋), 알 수 없음, other."""
    field = entry.get("answer_type")
    if field is not None:
        key = re.sub(r"\s+", "", str(field)).lower()
        for name, answer_type in TYPE_SYNONYMS.items():
            if key == re.sub(r"\s+", "", name):
                return answer_type
    answers = entry.get("answers") or []
    if not answers:
        return "그 외"
    answer = Counter(answers).most_common(1)[0][0].strip().rstrip(".")
    if answer in YES_NO_ANSWERS:
        return "예/아니오"
    if NUMERAL.match(answer):
        return "숫자"
    if re.sub(r"\s+", "", answer) == "알수없음":
        return "알 수 없음"
    return "그 외"


def image_problem(path):
    """None for a usable image, else the reason: missing / unreadable / truncated / too large.

    A JPEG is decoded at 1/8 scale (every byte of the stream is still read, so truncation shows).
    """
    if not path:
        return "unknown image"
    if not os.path.isfile(path):
        return "missing image"
    try:
        with Image.open(path) as image:
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                return "image too large"
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except Image.DecompressionBombError:
        return "image too large"
    except (OSError, SyntaxError, ValueError) as error:
        return "truncated image" if "truncated" in str(error) else "unreadable image"
    return None


def find_bad_entries(entries, workers=None):
    """(good entries, [(reason, name), …]) without any limit; each image is checked once."""
    paths = sorted({entry["image"] for entry in entries})
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # Pillow decodes without the GIL
        problems = dict(zip(paths, pool.map(image_problem, paths)))
    good, bad = [], []
    for entry in entries:
        is_vqa = "question" in entry
        entry_id = str(entry["question_id"] if is_vqa else entry["image_id"])
        problem = problems[entry["image"]]
        if problem:
            bad.append((problem, entry["image"] or entry_id))
        elif not (entry["question"] if is_vqa else entry["caption"]):
            bad.append(("empty text", entry_id))
        elif is_vqa and not entry["answers"]:
            bad.append(("no answer", entry_id))
        else:
            good.append(entry)
    return good, bad


def check_entries(entries, max_bad_share=0.05, workers=None):
    """(good entries, bad [(reason, name)]); ValueError when more than max_bad_share are bad."""
    if not entries:
        raise ValueError("no entries to check")
    good, bad = find_bad_entries(entries, workers)
    refuse_too_many_bad(bad, len(entries), max_bad_share)
    return good, bad


def read_usable(entries, max_bad_share, rank=0):
    """The usable entries; the unusable ones are summarised on stderr, and too many stop the run."""
    good, bad = check_entries(entries, max_bad_share)
    if bad and rank == 0:
        print(f"{len(bad)} of {len(entries)} entries unusable, skipped:", file=sys.stderr)
        for line in bad_summary(bad):
            print(f"  {line}", file=sys.stderr)
    return good


def bad_summary(bad, examples=3):
    """One line per reason: how many entries, and the first few names."""
    names_by_reason = {}
    for reason, name in bad:
        names_by_reason.setdefault(reason, {}).setdefault(os.path.basename(str(name)), 0)
        names_by_reason[reason][os.path.basename(str(name))] += 1
    lines = []
    for reason, counts in names_by_reason.items():
        shown = ", ".join(list(counts)[:examples]) + (", …" if len(counts) > examples else "")
        lines.append(f"{reason}: {sum(counts.values())} entries — {shown}")
    return lines


def refuse_too_many_bad(bad, total, max_bad_share):
    if len(bad) > max_bad_share * total:
        reason, name = bad[0]
        raise ValueError(f"{len(bad)} of {total} entries are unusable ({len(bad) / total:.1%}, "
                         f"more than the allowed {max_bad_share:.1%}); first: {reason}: {name}")


def run_check(args):
    if args.captions:
        entries = read_captions(args.captions, args.images)
    else:
        entries = read_vqa(args.vqa, args.images)
    if not entries:
        raise ValueError(f"{args.captions or args.vqa}: no entries")
    good, bad = find_bad_entries(entries, args.workers)
    print(f"entries: {len(entries)}")
    print(f"images: {len({entry['image'] for entry in good})}")
    if args.captions:
        print(f"captions: {len(good)}")
    else:
        print(f"questions: {len(good)}")
        type_counts = Counter(entry["answer_type"] for entry in good)
        for answer_type in ANSWER_TYPES:
            print(f"{answer_type}: {type_counts[answer_type]}")
        print(f"answers: {len({answer for entry in good for answer in entry['answers']})}")
    print(f"bad: {len(bad)}")
    for reason, name in bad:
        print(f"bad {reason}: {name}")
    refuse_too_many_bad(bad, len(entries), args.max_bad_share)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Ko-METER data sets: count entries and list the unusable ones.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="count entries and list unusable ones (exit 0 while usable)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", help="caption file: AIHub MSCOCO JSON or JSONL (image, caption)")
    source.add_argument("--vqa", help="VQA label file or folder of them (any layout in this file's docstring)")
    check.add_argument("--images", required=True, help="images root the label files' paths are relative to")
    check.add_argument("--max-bad-share", type=float, default=0.05,
                       help="fail when more than this share of entries is unusable (default 0.05)")
    check.add_argument("--workers", type=int, default=None,
                       help="threads checking images (default: 2 per CPU core, at most 16)")
    args = parser.parse_args(argv)
    try:
        run_check(args)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
