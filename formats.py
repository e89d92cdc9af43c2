"""The data sets' layouts as they are downloaded, and the parsers that read them into entries.

Off the reading path: read it when you bring a new data set (this is the file to edit: a layout is detected
from a file's content in `layout_of`, and parsed by one small function each) or when a training script refuses
yours. The readers return columns.Entries; `python check.py` counts what is usable.
  AIHub 261 Korean MSCOCO captions  [{"file_path", "id", "captions", "caption_ko": [...]}], maybe in byte-split
                                    pieces X.json.part0 ... X.json.part10 (pass the first piece or a glob)
  AIHub 101 생활 및 거주환경 VQA     {"images": [{image_id, image, category}], "question": [{..., answer, answer_type}]}
  AIHub 104 시각정보 질의응답        question / annotation / images files (names may carry a prefix) per folder
  KVQA and VQA-v2-style lists       [{image, question, answers: [{answer, answer_confidence}], answer_type}]
  the project's own JSONL           {"image", "caption"} or {"image", "question", "answers", "answer_type"}
Images are found by file name anywhere under --images (image_index.py). Parsed labels are cached
(columns.cache_folder): a second start reads a million questions in seconds, and the processes of one machine
(torchrun's, or two jobs started together) parse them once.

    python -c "import formats; print(len(formats.read_vqa('demo_data/vqa_dev.json', 'demo_data/images')))"

Choices where the data sets' documents are silent:
- Empty Korean captions are skipped and counted apart. Every other unusable entry (missing, unreadable or
  truncated image, empty question, no answer) is kept for check.py to name.
- Question ids need only be unique inside one label file or triplet (AIHub 104 starts them afresh in every
  folder); a repeat inside one is refused. A list without ids (KVQA) uses the image file's stem, numbered
  "#2", "#3" when an image has several questions.
- Every annotator answer counts, whatever its answer_confidence (as in the VQA metric); the answer
  "unanswerable" (KVQA, VizWiz) is read as 알 수 없음.
- A data set's own answer_type wins when it is one of the known spellings (Korean or English); an unknown
  spelling is counted and reported, and the type follows from the most frequent answer: 예/아니오/아니요/네,
  a numeral (3, 3개, 세 마리, 셋), 알 수 없음, or 그 외.
- Byte-split pieces are joined in the order of their numbers (part10 after part9); a gap is refused.
"""

import collections
import concurrent.futures
import contextlib
import functools
import glob
import json
import os
import re
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np

from columns import (CAPTION_FIELDS, QUESTION_FIELDS, Columns, Entries, Field, TextColumn, cache_folder, cache_lock,
                     cache_path, file_stamp, read_columns, write_columns)
from image_index import ImageIndex, folder_words

ANSWER_TYPES = ["예/아니오", "숫자", "알 수 없음", "그 외"]  # the Ko-METER paper's four answer types


# ----------------------------------------------------------------------------------------------
# Label files: what a --captions / --vqa argument names, and the units parsed (and cached) as one

LABEL_SUFFIXES = (".json", ".jsonl")
PIECE = re.compile(r"(.+\.jsonl?)\.part(\d+)", re.IGNORECASE)
TRIPLET_FILE = re.compile(r"(.*?)[_-]?(question|annotation|image)s?", re.IGNORECASE)
TRIPLET_ROLES = ("question", "annotation", "image")

LabelUnit = collections.namedtuple("LabelUnit", "name files triplet")
LabelUnit.__doc__ = """A label file, the pieces of a byte-split file in order, or the question, annotation and
images files of one triplet (triplet=True). `name` is the file that names its entries."""


def read_json_or_jsonl(path):
    """A JSON value, or the list of objects of a JSON-lines file. `path` may also be the list of the pieces of a
    byte-split file, read as their concatenation."""
    pieces = [path] if isinstance(path, (str, os.PathLike)) else list(path)
    name = str(pieces[0])
    raw = b"".join(Path(piece).read_bytes() for piece in pieces)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise ValueError(f"{name}: not UTF-8 text ({error})") from None
    if not re.sub(r"\.part\d+$", "", name).lower().endswith(".jsonl"):
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            if not text.lstrip().startswith("{"):
                raise ValueError(f"{name}: not valid JSON ({error})") from None
    records = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{name}: line {line_number} is not valid JSON ({error})") from None
    return records


def is_label_file(path):
    hidden = any(part.startswith(".") or part == "__MACOSX" for part in path.parts)
    return not hidden and (path.suffix.lower() in LABEL_SUFFIXES or bool(PIECE.fullmatch(path.name)))


def pieces_of(joined):
    """The pieces joined.part0, joined.part1, ... beside each other, in any order."""
    return [Path(piece) for piece in glob.glob(glob.escape(str(joined)) + ".part*") if PIECE.fullmatch(Path(piece).name)]


def label_files(path, what):
    """The files a --captions / --vqa argument names: a file, a folder (searched through), a glob, or a
    byte-split file (its first piece, or the name it has once joined)."""
    text = str(path)
    if os.path.isdir(text):
        files = [file for file in Path(text).rglob("*") if file.is_file() and is_label_file(file.relative_to(text))]
    elif os.path.isfile(text):  # AIHub's own names hold brackets ("[라벨]..."): a path that exists is no glob
        piece = PIECE.fullmatch(os.path.basename(text))
        files = pieces_of(Path(text).parent / piece.group(1)) if piece else [Path(text)]
    elif glob.has_magic(text):
        files = [Path(file) for file in glob.glob(text) if os.path.isfile(file)]
    else:
        files = pieces_of(text)
    if not files:
        raise FileNotFoundError(f"{path}: {what} not found")
    return sorted(files)


def label_units(path, what):
    """The units of the label files `path` names, in path order: single files, byte-split files (pieces in the
    order of their numbers) and question/annotation/images triplets (files of one folder and name prefix)."""
    units, pieces, triplets = [], {}, {}
    for file in label_files(path, what):
        piece = PIECE.fullmatch(file.name)
        role = TRIPLET_FILE.fullmatch(file.stem) if file.suffix.lower() == ".json" else None
        if piece:
            pieces.setdefault(file.parent / piece.group(1), []).append((int(piece.group(2)), file))
        elif role:
            roles = triplets.setdefault((file.parent, role.group(1)), {})
            name = role.group(2).lower()
            if name in roles:
                raise ValueError(f"{file.parent}: two {name} files with the prefix '{role.group(1)}': "
                                 f"{roles[name].name} and {file.name}")
            roles[name] = file
        else:
            units.append(LabelUnit(str(file), (str(file),), False))
    for joined, numbered in pieces.items():
        numbers = sorted(number for number, _ in numbered)
        if numbers != list(range(len(numbers))):
            gap = min(set(range(len(numbers) + 1)) - set(numbers))
            raise ValueError(f"{joined}: byte-split into pieces {', '.join(f'part{n}' for n in numbers)}, "
                             f"but part{gap} is missing")
        units.append(LabelUnit(str(joined) + ".part0", tuple(str(file) for _, file in sorted(numbered)), False))
    for (folder, prefix), roles in triplets.items():
        if len(roles) == 1:
            file = next(iter(roles.values()))
            units.append(LabelUnit(str(file), (str(file),), False))
            continue
        missing = [role for role in TRIPLET_ROLES if role not in roles]
        if missing:
            raise ValueError(f"{folder}: incomplete question/annotation/images triplet '{prefix}', missing the "
                             f"{missing[0]}{'s' if missing[0] == 'image' else ''} file")
        units.append(LabelUnit(str(roles["question"]), tuple(str(roles[role]) for role in TRIPLET_ROLES), True))
    return sorted(units)


# ----------------------------------------------------------------------------------------------
# Parsing one unit: the layout is detected from the content

IMAGE_KEYS = ("image", "image_path", "file_path", "img_path")
UNANSWERABLE = "알 수 없음"


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


def records_of(records, path, what):
    """The objects of a list, refusing anything else naming the entry."""
    if not isinstance(records, list):
        raise ValueError(f"{path}: '{what}' is not a list")
    for number, record in enumerate(records):
        if not isinstance(record, dict):
            raise ValueError(f"{path}: {what} entry {number} is not an object: {str(record)[:60]}")
        yield record


def image_name_of(record):
    """The image path a record gives (folders as written, "/" separators), "" if none."""
    return str(next((record[key] for key in IMAGE_KEYS if record.get(key)), "")).replace("\\", "/")


def image_ref(image_record):
    """<category>/<image> of an AIHub images record: the category folder helps tell images of one name apart."""
    name, category = image_name_of(image_record), image_record.get("category")
    return f"{category}/{name}" if category and name else name


def answers_of(record):
    """Annotator answers of a record: "answers" (strings or {"answer": …}), else "answer" or
    "multiple_choice_answer"; empty answers dropped, "unanswerable" read as 알 수 없음."""
    answers = record.get("answers")
    if answers is None:
        answers = record.get("answer", record.get("multiple_choice_answer"))
    if answers is None:
        return []
    if isinstance(answers, (str, int, float)):
        text = str(answers).strip()
        return [UNANSWERABLE if text.lower() == "unanswerable" else text] if text else []
    texts = [str(answer.get("answer", "") if isinstance(answer, dict) else answer).strip() for answer in answers]
    return [UNANSWERABLE if text.lower() == "unanswerable" else text for text in texts if text]


def interned(items):
    """(codes, distinct values in order of first appearance) of a list of strings."""
    table = {}
    codes = [table.setdefault(item, len(table)) for item in items]
    return np.array(codes, dtype=np.int32), TextColumn.of(table)


class RowWriter:
    """The rows of one unit as they are parsed, one list per field; `arrays` interns each field (codes into its
    distinct values) and packs them for the cache."""

    def __init__(self, kind, source):
        self.kind, self.source = kind, source
        self.fields = {name: [] for name in ("image",) + (CAPTION_FIELDS if kind == "captions" else QUESTION_FIELDS)}
        self.answers, self.answer_starts = [], [0]
        self.question_ids = set()
        self.notes = {"empty_captions": 0, "unknown_types": Counter()}

    def caption(self, image, caption, image_id, split):
        caption = str(caption or "").strip()
        if not caption:
            self.notes["empty_captions"] += 1
            return
        for name, value in (("image", image), ("text", caption), ("image_id", image_id), ("split", split)):
            self.fields[name].append(value)

    def question(self, image, question, answers, question_id, answer_type):
        """One question; question_id None: the image file's stem (numbered when the stem is taken)."""
        if question_id is None:
            base = os.path.splitext(image.rpartition("/")[2])[0] or "question"
            question_id, number = base, 2
            while question_id in self.question_ids:
                question_id, number = f"{base}#{number}", number + 1
        elif type(question_id) is not int and type(question_id) is not str:
            question_id = str(question_id)
        if question_id in self.question_ids:
            raise ValueError(f"{self.source}: question_id {question_id!r} appears more than once (ids must be "
                             "unique within one label file or triplet folder)")
        self.question_ids.add(question_id)
        known = known_answer_type(None if answer_type is None else str(answer_type))
        if known is None and answer_type not in (None, ""):
            self.notes["unknown_types"][str(answer_type)] += 1
        fields = self.fields
        fields["image"].append(image)
        fields["text"].append(str(question or "").strip())
        fields["question_id"].append(str(question_id) if type(question_id) is int
                                     else json.dumps(question_id, ensure_ascii=False))
        fields["answer_type"].append(known or inferred_answer_type(answers))
        self.answers += answers
        self.answer_starts.append(len(self.answers))

    def arrays(self):
        arrays = {}
        for name, items in self.fields.items():
            codes, values = interned(items)
            arrays.update({f"{name}.codes": codes, f"{name}.offsets": values.offsets, f"{name}.data": values.data})
        if self.kind == "questions":
            codes, values = interned(self.answers)
            arrays.update({"answers.codes": codes, "answers.offsets": values.offsets, "answers.data": values.data,
                           "answers.starts": np.array(self.answer_starts, dtype=np.int64)})
        return arrays


def parse_coco_captions(data, rows):
    """AIHub 261: one record per COCO image, file_path under the COCO root, Korean captions in caption_ko."""
    for record in records_of(data, rows.source, "caption"):
        file_path = image_name_of(record)
        captions = record.get("caption_ko")
        captions = [captions] if isinstance(captions, str) else list(captions or [""])
        split = file_path.split("/")[0] if "/" in file_path else ""
        for caption in captions:
            rows.caption(file_path, caption, str(record.get("id", file_path)), split)


def parse_caption_list(data, rows):
    for record in records_of(data, rows.source, "caption"):
        image = image_name_of(record)
        rows.caption(image, record.get("caption"), str(record.get("image_id", image)), str(record.get("split", "")))


def parse_living_vqa(data, rows):
    """AIHub 101: the questions of a label file joined with its images records on image_id."""
    images = {record.get("image_id"): image_ref(record) for record in records_of(data["images"], rows.source, "images")}
    for record in records_of(data["question"], rows.source, "question"):
        rows.question(images.get(record.get("image_id"), ""), record.get("question"), answers_of(record),
                      record.get("question_id"), record.get("answer_type"))


def parse_question_list(data, rows):
    """KVQA, VQA-v2-style lists and the project's JSONL: each record holds its question, answers and image."""
    records = data["questions"] if isinstance(data, dict) else data
    for record in records_of(records, rows.source, "question"):
        rows.question(image_name_of(record), record.get("question"), answers_of(record),
                      record.get("question_id", record.get("id")), record.get("answer_type"))


def parse_triplet(unit, rows):
    """AIHub 104: questions joined with their annotations (question_id) and images records (image_id) of the
    same triplet only."""
    parts = {}
    for file, role in zip(unit.files, ("question_part", "annotation_part", "image_part")):
        data = read_json_or_jsonl(file)
        layout = layout_of(data, file)
        if layout != role:
            raise ValueError(f"{file}: named as the {role.split('_')[0]}s of a triplet but holds {layout}")
        parts[role] = data
    annotations = {}
    for record in records_of(parts["annotation_part"]["annotations"], unit.files[1], "annotations"):
        question_id = record.get("question_id")
        if question_id in annotations:
            raise ValueError(f"{unit.files[1]}: question_id {question_id!r} appears more than once")
        annotations[question_id] = record
    images = {}  # image_id -> <category>/<image>
    for record in records_of(parts["image_part"]["images"], unit.files[2], "images"):
        known = images.setdefault(record.get("image_id"), image_ref(record))
        if known != image_ref(record):
            raise ValueError(f"{unit.files[2]}: image_id {record.get('image_id')!r} names two images: "
                             f"{known} and {image_ref(record)}")
    for record in records_of(parts["question_part"]["questions"], unit.files[0], "questions"):
        annotation = annotations.get(record.get("question_id"), {})
        rows.question(images.get(record.get("image_id"), ""), record.get("question"), answers_of(annotation),
                      record.get("question_id"), annotation.get("answer_type", record.get("answer_type")))


CAPTION_PARSERS = {"aihub_coco_captions": parse_coco_captions, "jsonl_captions": parse_caption_list}
QUESTION_PARSERS = {"aihub_living_vqa": parse_living_vqa, "question_list": parse_question_list}


def parse_unit(kind, unit):
    """(arrays, notes) of one unit's rows, image paths as the labels give them (found under the root later)."""
    rows = RowWriter(kind, unit.name)
    if unit.triplet:
        parse_triplet(unit, rows)
        return rows.arrays(), rows.notes
    data = read_json_or_jsonl(unit.files)
    layout = layout_of(data, unit.name)
    parsers = CAPTION_PARSERS if kind == "captions" else QUESTION_PARSERS
    if layout in parsers:
        parsers[layout](data, rows)
    elif kind == "captions":
        raise ValueError(f"{unit.name}: holds VQA questions ({layout}), not captions")
    elif layout.endswith("_part"):
        raise ValueError(f"{unit.name}: one file of a question/annotation/images triplet, but the other two "
                         "(same folder, same name prefix, ending in question/annotation/images.json) are not beside it")
    else:
        raise ValueError(f"{unit.name}: holds captions ({layout}), not VQA questions")
    return rows.arrays(), rows.notes


def unit_key(kind, unit):
    return [kind, [file_stamp(file) for file in unit.files]]


def cached_part(kind, unit, key):
    cached = read_columns(cache_path(kind, os.path.abspath(unit.name)))
    return cached if cached and cached[1]["key"] == key else None


PARSE_HERE_BYTES = 32 * 2**20  # label sets up to this size are parsed in this process


def load_parts(kind, units):
    """(arrays, notes) of every unit: from the cache while its files keep their sizes and modification times,
    else parsed and cached. Larger label sets are parsed in up to one process per core, which also keeps the
    parser's Python objects out of the training process. One process at a time parses a set of units (the
    others, torchrun's or another job's, wait and then map what it cached); it says so on stderr."""
    keys = [unit_key(kind, unit) for unit in units]
    with cache_lock(kind, "\n".join(os.path.abspath(unit.name) for unit in units)):
        parts = [cached_part(kind, unit, key) for unit, key in zip(units, keys)]
        todo = [number for number, part in enumerate(parts) if part is None]
        started, rows = time.perf_counter(), 0
        parse_here = sum(size for number in todo for _, size, _ in keys[number][1]) <= PARSE_HERE_BYTES
        with contextlib.nullcontext() if parse_here else \
                concurrent.futures.ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
            parsed = (map if parse_here else pool.map)(parse_unit, [kind] * len(todo), [units[n] for n in todo])
            for number, (arrays, notes) in zip(todo, parsed):  # written here: the workers need not import torch
                sources = [os.path.abspath(file) for file in units[number].files]
                parts[number] = write_columns(cache_path(kind, os.path.abspath(units[number].name)), arrays,
                                              {"key": keys[number], **notes}, sources)
                rows += len(arrays["text.codes"])
    if todo:
        files = sum(len(units[number].files) for number in todo)
        print(f"parsed {files} label file{'s' if files > 1 else ''} ({rows:,} {kind}) in "
              f"{time.perf_counter() - started:.1f} s, cached in {cache_folder()}", file=sys.stderr, flush=True)
    return parts


# ----------------------------------------------------------------------------------------------
# Entries of all units: fields joined, images found under the root


def field_of(arrays, name):
    return Field(arrays[f"{name}.codes"], TextColumn(arrays[f"{name}.offsets"], arrays[f"{name}.data"]))


def joined_field(fields):
    """One field from several units' fields: their value tables one after the other, codes shifted to match."""
    shifts = np.cumsum([0] + [len(field.values) for field in fields[:-1]])
    codes = np.concatenate([field.codes + np.int32(shift) for field, shift in zip(fields, shifts)])
    return Field(codes.astype(np.int32), TextColumn.joined([field.values for field in fields]))


def row_name(kind, arrays, row):
    if kind == "captions":
        return f"image id {field_of(arrays, 'image_id').values[arrays['image_id.codes'][row]]}"
    return f"question {field_of(arrays, 'question_id').values[arrays['question_id.codes'][row]]}"


def find_images(kind, units, parts, index):
    """(per-row image codes, missing image paths): each image path the labels give is found under the root by
    its file name; among several files of that name, by the folders (see folder_words) of the path, of its
    category and of the label file. A tie is refused."""
    refs = [field_of(arrays, "image") for arrays, _ in parts]
    wanted = {ref.rpartition("/")[2] for field in refs for ref in field.values.tolist()}
    by_name = index.positions_by_name(wanted)
    missing, codes = {}, []
    for unit, (arrays, _), field in zip(units, parts, refs):
        label_words = folder_words(unit.name)
        positions = np.empty(len(field.values), dtype=np.int64)
        for code, ref in enumerate(field.values.tolist()):
            candidates = by_name.get(ref.rpartition("/")[2], [])
            if len(candidates) < 2:
                positions[code] = candidates[0] if candidates else len(index) + missing.setdefault(ref, len(missing))
                continue
            hints = label_words | folder_words(ref)
            scores = [len(folder_words(index.paths[candidate]) & hints) for candidate in candidates]
            best = [candidate for candidate, score in zip(candidates, scores) if score == max(scores)]
            if len(best) > 1:
                row = int(np.flatnonzero(arrays["image.codes"] == code)[0])
                raise ValueError(f"{unit.name}: {row_name(kind, arrays, row)}: image file name "
                                 f"'{ref.rpartition('/')[2]}' is ambiguous under {index.root}: "
                                 f"{index.paths[best[0]]} and {index.paths[best[1]]}")
            positions[code] = best[0]
        codes.append(positions[field.codes])
    return np.concatenate(codes).astype(np.int32), list(missing)


def merge_parts(kind, units, parts, index):
    """Entries of every unit, in unit order."""
    names = CAPTION_FIELDS if kind == "captions" else QUESTION_FIELDS
    fields = {name: joined_field([field_of(arrays, name) for arrays, _ in parts]) for name in names}
    rows = [len(arrays["text.codes"]) for arrays, _ in parts]
    fields["source"] = Field(np.repeat(np.arange(len(units), dtype=np.int32), rows),
                             TextColumn.of([unit.name for unit in units]))
    image_codes, missing = find_images(kind, units, parts, index)
    unknown_types = Counter()
    for _, notes in parts:
        unknown_types.update(notes["unknown_types"])
    notes = {"empty_captions": sum(notes["empty_captions"] for _, notes in parts), "unknown_types": unknown_types}
    columns = Columns(kind, fields, image_codes, index, missing, notes)
    if kind == "questions":
        starts = [arrays["answers.starts"] for arrays, _ in parts]
        shifts = np.cumsum([0] + [part_starts[-1] for part_starts in starts[:-1]])
        columns.answer_starts = np.concatenate([part_starts[:-1] + shift for part_starts, shift in zip(starts, shifts)]
                                               + [np.array([shifts[-1] + starts[-1][-1]])])
        columns.answers = joined_field([field_of(arrays, "answers") for arrays, _ in parts])
    return Entries(columns, np.arange(sum(rows)))


def read_entries(kind, path, images_root, what):
    units = label_units(path, what)
    parts = load_parts(kind, units)
    entries = merge_parts(kind, units, parts, ImageIndex.of(images_root))
    if not len(entries):
        raise ValueError(f"{path}: no {kind} found")
    return entries


def read_captions(path, images_root):
    """Caption entries (one per non-empty caption) of AIHub MSCOCO JSON, its byte-split pieces, or JSONL."""
    return read_entries("captions", path, images_root, "caption file")


def read_vqa(path, images_root):
    """Question entries of a label file or a folder of them (searched through), any layout of the docstring."""
    return read_entries("questions", path, images_root, "VQA file or folder")


# ----------------------------------------------------------------------------------------------
# Answer types

TYPE_SYNONYMS = {
    "예/아니오": "예/아니오", "예/아니요": "예/아니오", "네/아니오": "예/아니오", "네/아니요": "예/아니오",
    "yes/no": "예/아니오", "yes_no": "예/아니오", "yesno": "예/아니오", "y/n": "예/아니오",
    "숫자": "숫자", "수": "숫자", "개수": "숫자", "number": "숫자", "count": "숫자", "counting": "숫자",
    "알수없음": "알 수 없음", "unanswerable": "알 수 없음", "unknown": "알 수 없음",
    "그외": "그 외", "기타": "그 외", "other": "그 외", "others": "그 외",
}
TYPE_BY_SPELLING = {re.sub(r"\s+", "", spelling).lower(): answer_type for spelling, answer_type in TYPE_SYNONYMS.items()}

YES_NO_ANSWERS = {"예", "아니오", "아니요", "네"}

COUNTERS = ("개|명|마리|대|권|장|잔|병|그루|송이|채|척|켤레|벌|살|층|번|개월|년|시|분|초|칸|줄|쌍|"
            "가지|곳|군데|인분|조각|판|통|알|포기|자루|인|점|줄기|쪽|회")

NATIVE_ALONE = "(?:열|스물|서른|마흔|쉰)?(?:하나|둘|셋|넷|다섯|여섯|일곱|여덟|아홉)|열|스물|서른|마흔|쉰"

NATIVE_ATTRIBUTIVE = "(?:열|스물|서른|마흔|쉰)?(?:한|두|세|네|다섯|여섯|일곱|여덟|아홉)|열|스무|서른|마흔|쉰"

NUMERAL = re.compile(
    rf"^(?:\d+(?:[.,]\d+)?\s*(?:{COUNTERS})?|(?:{NATIVE_ALONE})|"
    rf"(?:{NATIVE_ATTRIBUTIVE}|[일이삼사오육칠팔구십백천만]+)\s*(?:{COUNTERS})|영)$"
)


@functools.lru_cache(maxsize=4096)
def known_answer_type(field):
    """The answer type a data set's own answer_type field spells (ANSWER_TYPES or a synonym), else None."""
    return None if field is None else TYPE_BY_SPELLING.get(re.sub(r"\s+", "", field).lower())


@functools.lru_cache(maxsize=65536)
def type_of_answer(answer):
    answer = answer.strip().rstrip(".")
    if answer in YES_NO_ANSWERS:
        return "예/아니오"
    if NUMERAL.match(answer):
        return "숫자"
    if re.sub(r"\s+", "", answer) == "알수없음":
        return "알 수 없음"
    return "그 외"


def inferred_answer_type(answers):
    """The type of the most frequent answer: 예/아니오/아니요/네, a numeral (3, 3개, 세 마리, 셋), 알 수 없음, other."""
    if not answers:
        return "그 외"
    return type_of_answer(answers[0] if len(answers) == 1 else Counter(answers).most_common(1)[0][0])


def answer_type_of(entry):
    """One of ANSWER_TYPES: the entry's own answer_type when it is one (or a synonym), else by its answers."""
    field = entry.get("answer_type")
    return known_answer_type(None if field is None else str(field)) or inferred_answer_type(entry.get("answers") or [])


if __name__ == "__main__":  # the check moved to check.py; the old command line still works
    if sys.argv[1:2] == ["check"]:
        os.execv(sys.executable, [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "check.py"),
                                  *sys.argv[2:]])
    sys.exit("formats.py has no commands: 'python check.py --vqa F --images DIR' checks a data set")
