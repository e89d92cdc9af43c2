"""Data sets as they are downloaded: the file formats, the image files, and `check`, which counts what is usable.

Off the reading path: read it when you bring a new data set (this is the file to edit) or when `check` or a
training script refuses yours. The readers return `Entries`: rows in columns (numpy arrays and one UTF-8
buffer per column, no Python object per row, so a million questions take tens of megabytes and DataLoader
workers share them untouched), where `entries[i]` is a plain dict:
  captions  {"image": path, "caption": str, "image_id": str, "split": str}
  questions {"image": path, "question": str, "answers": [str, ...], "answer_type": one of ANSWER_TYPES,
             "question_id": as in the file, "source": the label file}
The layout of a file is detected from its content (README, "Data (AIHub)", shows where the files go):
  AIHub 261 Korean MSCOCO captions  [{"file_path", "id", "captions", "caption_ko": [...]}], maybe in byte-split
                                    pieces X.json.part0 ... X.json.part10 (pass the first piece or a glob)
  AIHub 101 생활 및 거주환경 VQA     {"images": [{image_id, image, category}], "question": [{..., answer, answer_type}]}
  AIHub 104 시각정보 질의응답        question / annotation / images files (names may carry a prefix) per folder
  KVQA and VQA-v2-style lists       [{image, question, answers: [{answer, answer_confidence}], answer_type}]
  the project's own JSONL           {"image", "caption"} or {"image", "question", "answers", "answer_type"}
Images are found by file name anywhere under --images. Parsed labels and image checks are cached (see
cache_folder): a second start reads a million questions in seconds.

    python formats.py check --vqa demo_data/vqa_train.json --images demo_data/images   # after python demo.py

Choices where the data sets' documents are silent:
- Empty Korean captions are skipped and counted apart. Every other unusable entry (missing, unreadable or
  truncated image, empty question, no answer) is kept for `find_bad_entries` to name, and a run stops when
  more than --max-bad-share of the entries are unusable.
- An image is found by its file name under --images, whatever the folders in between. When several files share
  the name, the one whose folders name the entry's own folders, its category, or the label file's folders
  (less a leading "[라벨]"-style tag, a trailing "_1" and ".zip") wins; a tie is refused, naming both files.
- Question ids need only be unique inside one label file or triplet (AIHub 104 starts them afresh in every
  folder); a repeat inside one is refused. A list without ids (KVQA) uses the image file's stem, numbered
  "#2", "#3" when an image has several questions.
- Every annotator answer counts, whatever its answer_confidence (as in the VQA metric); the answer
  "unanswerable" (KVQA, VizWiz) is read as 알 수 없음.
- A data set's own answer_type wins when it is one of the known spellings (Korean or English); an unknown
  spelling is counted and reported, and the type follows from the most frequent answer: 예/아니오/아니요/네,
  a numeral (3, 3개, 세 마리, 셋), 알 수 없음, or 그 외.
- Byte-split pieces are joined in the order of their numbers (part10 after part9); a gap is refused.
- Tokenizer files: the file's own padding and truncation are switched off (data.Tokenizer pads); a
  tokenizer.json whose normaliser strips accents (which takes Hangul apart into jamo) gets KLUE's cased,
  non-stripping BERT normaliser instead, with a note on stderr.
- Images: transparent pixels are composited on white; 16-bit grey is scaled by 1/257; float images are
  clipped to 0..255; EXIF orientation is applied; an image over Image.MAX_IMAGE_PIXELS is refused.
"""

import argparse
import collections
import concurrent.futures
import contextlib
import dataclasses
import functools
import glob
import hashlib
import json
import mmap
import os
import re
import sys
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps
from tqdm import tqdm

# Batches of short captions gain nothing from the library's thread pool, and a pool started before
# DataLoader workers fork makes every worker print a warning.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer as BackendTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers  # noqa: E402

SPECIAL_TOKENS = ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")  # ids 0..4 in KLUE's vocabulary
ANSWER_TYPES = ["예/아니오", "숫자", "알 수 없음", "그 외"]  # the Ko-METER paper's four answer types
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255)
IMAGE_PROBLEMS = ("", "missing image", "unknown image", "unreadable image", "truncated image", "image too large")
BAD_REASONS = IMAGE_PROBLEMS + ("empty question", "no answer")  # code 0: usable
UNCHECKED = 255  # an image's problem code before it is checked


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
    """Decode an image file to an RGB Pillow image, EXIF rotation applied; any failure to decode is a
    ValueError naming the file.

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
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(f"{path}: unreadable image ({error})") from None
    except Exception as error:  # Pillow raises what it likes: OSError, SyntaxError, NotImplementedError (DDS) ...
        raise ValueError(f"{path}: unreadable image ({type(error).__name__}: {error})") from None


def image_problem(path):
    """None for a usable image, else the reason: missing / unreadable / truncated / too large. Any failure
    to decode is the image's own problem, never an exception.

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
    except Exception as error:  # OSError, SyntaxError, ValueError, NotImplementedError (DDS), ...
        return "truncated image" if "truncated" in str(error) else "unreadable image"
    return None


# ----------------------------------------------------------------------------------------------
# Tokenizer files: tokenizer.json or KLUE's vocab.txt


def bert_normalizer():
    """KLUE's normaliser: cased, and no accent stripping (stripping splits Hangul into jamo)."""
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                      lowercase=False)


def has_jamo(text):
    """True when text holds conjoining or compatibility jamo (a Hangul syllable taken apart)."""
    return any("\u1100" <= char <= "\u11ff" or "\u3130" <= char <= "\u318f" for char in text)


def read_tokenizer(path):
    """(a `tokenizers` WordPiece tokenizer, the file it came from) for tokenizer.json or vocab.txt, or a folder
    holding either (tokenizer.json wins). data.Tokenizer wraps it."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("tokenizer.json", "vocab.txt") if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path}: holds neither tokenizer.json nor vocab.txt")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"{path}: tokenizer file not found")
    if path.suffix == ".json":
        try:
            backend = BackendTokenizer.from_file(str(path))
        except Exception as error:  # the library raises a plain Exception for a bad file
            raise ValueError(f"{path}: not a tokenizers JSON file ({error})") from None
    else:
        backend = wordpiece_from_vocab(path)
    if backend.normalizer is not None and has_jamo(backend.normalizer.normalize_str("한국어")):
        print(f"note: {path}: its normaliser splits Hangul into jamo; using KLUE's (cased, no accent stripping) "
              "instead", file=sys.stderr)
        backend.normalizer = bert_normalizer()
    backend.no_padding()
    backend.no_truncation()
    if backend.decoder is None:
        backend.decoder = decoders.WordPiece(prefix="##")
    return backend, path


def wordpiece_from_vocab(path):
    """A BERT WordPiece tokenizer from a vocab.txt (one piece per line, line number = id)."""
    vocab = {}
    with open(path, encoding="utf-8") as file:
        for index, line in enumerate(file):
            vocab[line.rstrip("\r\n")] = index
    if "[UNK]" not in vocab:
        raise ValueError(f"{path}: the vocabulary lacks the special token [UNK]")
    backend = BackendTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                                max_input_chars_per_word=100))
    backend.normalizer = bert_normalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([token for token in SPECIAL_TOKENS if token in vocab])  # ids unchanged
    return backend


# ----------------------------------------------------------------------------------------------
# Columns: many strings in one buffer, and entries as per-row codes into tables of distinct values


class TextColumn:
    """Strings in one UTF-8 buffer: string i is data[offsets[i]:offsets[i + 1]]."""

    def __init__(self, offsets, data):
        self.offsets, self.data = offsets, data  # int64 [n + 1], uint8 [bytes]

    @classmethod
    def of(cls, strings):
        encoded = [text.encode("utf-8") for text in strings]
        offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
        np.cumsum([len(item) for item in encoded], out=offsets[1:])
        return cls(offsets, np.frombuffer(b"".join(encoded), dtype=np.uint8))

    @classmethod
    def joined(cls, columns):
        """The strings of `columns`, one column after the other."""
        starts = np.cumsum([0] + [len(column.data) for column in columns[:-1]])
        offsets = np.concatenate([np.zeros(1, np.int64)] + [column.offsets[1:] + start
                                                            for column, start in zip(columns, starts)])
        return cls(offsets, np.concatenate([column.data for column in columns]))

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, index):
        return self.data[self.offsets[index]:self.offsets[index + 1]].tobytes().decode("utf-8")

    def tolist(self):
        blob, ends = self.data.tobytes(), self.offsets.tolist()
        return [blob[start:end].decode("utf-8") for start, end in zip(ends, ends[1:])]


Field = collections.namedtuple("Field", "codes values")  # per-row int32 codes into a TextColumn of values

CAPTION_FIELDS = ("text", "image_id", "split")
QUESTION_FIELDS = ("text", "question_id", "answer_type")


@dataclasses.dataclass
class Columns:
    """Everything a set of entries holds, shared by every view of it (see Entries)."""
    kind: str                      # "captions" or "questions"
    fields: dict                   # name -> Field: CAPTION_FIELDS or QUESTION_FIELDS, and "source" (label file)
    image_codes: np.ndarray        # [rows] position of the image in `index`, or len(index) + k: missing_images[k]
    index: "ImageIndex"
    missing_images: list           # image paths the labels give that are not under the images root
    notes: dict                    # empty_captions: count; unknown_types: {spelling: count}
    answers: Field = None          # questions: the answer codes of every row, one row after the other
    answer_starts: np.ndarray = None  # [rows + 1]: row r's answers are answers.codes[starts[r]:starts[r + 1]]


def counts_by_value(codes, values):
    """Counter {value: how many of `codes` point at it}."""
    counts = np.bincount(codes, minlength=len(values))
    total = Counter()
    for code in np.flatnonzero(counts).tolist():
        total[values[code]] += int(counts[code])
    return total


def value_hits(values, test):
    """[distinct values] bool: which of a column's distinct values pass `test`, a predicate or a collection."""
    if not callable(test):
        test = set(test).__contains__
    return np.array([bool(test(value)) for value in values.tolist()], dtype=bool)


class Entries:
    """Caption or question entries: a view of some rows of a Columns. `entries[i]` is entry i as a dict (see
    the file's docstring), `entries[a:b]` and `select` give views; the other methods work on whole columns,
    evaluating a predicate once per distinct value, never once per row."""

    def __init__(self, columns, rows):
        self.columns, self.rows, self.kind = columns, rows, columns.kind

    def __len__(self):
        return len(self.rows)

    def __iter__(self):
        return (self[index] for index in range(len(self)))

    def __getitem__(self, index):
        if not isinstance(index, (int, np.integer)):
            return self.select(index)
        row = int(self.rows[index])
        columns = self.columns
        values = {name: field.values[field.codes[row]] for name, field in columns.fields.items()}
        image = self.image_path(columns.image_codes[row])
        if self.kind == "captions":
            return {"image": image, "caption": values["text"], "image_id": values["image_id"], "split": values["split"]}
        codes = columns.answers.codes[columns.answer_starts[row]:columns.answer_starts[row + 1]]
        return {"image": image, "question": values["text"], "answers": [columns.answers.values[code] for code in codes],
                "answer_type": values["answer_type"], "question_id": json.loads(values["question_id"]),
                "source": values["source"]}

    def select(self, which):
        """The view of the rows `which` picks from this view: a boolean mask, indices or a slice."""
        return Entries(self.columns, self.rows[which])

    def image_path(self, code):
        """The image file of an image code: under the images root, or where the labels say it should be."""
        index = self.columns.index
        if code < len(index):
            return os.path.join(index.root, index.paths[code])
        missing = self.columns.missing_images[code - len(index)]
        return os.path.join(index.root, missing) if missing else ""

    def value(self, name, index):
        field = self.columns.fields[name]
        return field.values[field.codes[self.rows[index]]]

    def column(self, name):
        """Per-row codes of "image" or a field: rows with equal codes hold equal values (one image file)."""
        codes = self.columns.image_codes if name == "image" else self.columns.fields[name].codes
        return codes[self.rows]

    def value_counts(self, name):
        """Counter {value: rows} of a field."""
        return counts_by_value(self.column(name), self.columns.fields[name].values)

    def distinct(self, name):
        """The sorted distinct values of a field."""
        return sorted(self.value_counts(name))

    def empty(self, name):
        """Mask of the rows whose field value is the empty string (no string is decoded)."""
        offsets = self.columns.fields[name].values.offsets
        return (offsets[1:] == offsets[:-1])[self.column(name)]

    def matching(self, name, test):
        """Mask of the rows whose field value passes `test`: a predicate, or a collection the value must be in."""
        return value_hits(self.columns.fields[name].values, test)[self.column(name)]

    def answer_codes(self):
        """(the answer codes of this view's rows, one row after the other; the row each belongs to)."""
        starts = self.columns.answer_starts
        first, counts = starts[self.rows], starts[self.rows + 1] - starts[self.rows]
        owners = np.repeat(np.arange(len(self.rows)), counts)
        within = np.arange(len(owners)) - np.repeat(np.cumsum(counts) - counts, counts)
        return self.columns.answers.codes[np.repeat(first, counts) + within], owners

    def answer_counts(self):
        """Counter {answer: how often annotators gave it} over this view's rows."""
        return counts_by_value(self.answer_codes()[0], self.columns.answers.values)

    def any_answer(self, test):
        """Mask of the rows with at least one answer that passes `test` (as in `matching`)."""
        codes, owners = self.answer_codes()
        mask = np.zeros(len(self), dtype=bool)
        mask[owners[value_hits(self.columns.answers.values, test)[codes]]] = True
        return mask

    def answer_count(self):
        """Answers per row."""
        starts = self.columns.answer_starts
        return starts[self.rows + 1] - starts[self.rows]


# ----------------------------------------------------------------------------------------------
# The cache: parsed label files and image checks, one file each, mapped read-only on the next start

CACHE_ENV = "KO_METER_CACHE"
CACHE_VERSION = 1
ALIGN = 64


def cache_folder():
    """$KO_METER_CACHE, else ko-meter/ in $XDG_CACHE_HOME or ~/.cache. Deleting it is always safe: what is
    missing is parsed and checked again."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(CACHE_ENV) or os.path.join(base, "ko-meter")


def cache_path(what, key):
    """The cache file of one label unit or images root, named after its path: a changed file replaces it."""
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    stem = re.sub(r"[^\w.-]+", "_", os.path.basename(key.rstrip("/\\")))[:60]
    return os.path.join(cache_folder(), f"{what}-{stem}-{digest}.columns")


def write_columns(path, arrays, meta):
    """1-D arrays in one file: a JSON header line (meta, and where each array starts), then each array's
    bytes at a 64-byte boundary, so that `read_columns` maps them without reading them."""
    layout, offset = [], 0
    for name, array in arrays.items():
        layout.append([name, array.dtype.str, len(array), offset])
        offset += -(-array.nbytes // ALIGN) * ALIGN
    header = json.dumps({"version": CACHE_VERSION, "meta": meta, "arrays": layout},
                        ensure_ascii=False).encode("utf-8") + b"\n"
    start = -(-len(header) // ALIGN) * ALIGN
    from checkpoints import atomic_write  # imported here: checkpoints imports torch, which `check` does not need
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "wb") as file:
            file.write(header.ljust(start, b" "))
            for (_, _, _, array_offset), array in zip(layout, arrays.values()):
                file.seek(start + array_offset)
                file.write(np.ascontiguousarray(array).data)
    except OSError as error:
        raise ValueError(f"{path}: cannot write the cache ({error}); set {CACHE_ENV} to a writable folder") from None


def read_columns(path):
    """(arrays, meta) of a cache file, mapped read-only (its pages are shared by every process that maps it);
    None when the file is absent, damaged or of another version."""
    try:
        with open(path, "rb") as file:
            line = file.readline()
            header = json.loads(line)
            if header.get("version") != CACHE_VERSION:
                return None
            buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        start = -(-len(line) // ALIGN) * ALIGN
        arrays = {name: np.frombuffer(buffer, dtype, length, start + offset) if length else np.zeros(0, dtype)
                  for name, dtype, length, offset in header["arrays"]}
    except (OSError, ValueError, KeyError):
        return None
    return arrays, header["meta"]


def file_stamp(path):
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]


# ----------------------------------------------------------------------------------------------
# Images under a root, found by file name


def walk_files(root):
    """([(relative path, size, mtime_ns)] sorted by path, [[relative folder, mtime_ns]]) of every file under
    root, one scandir per folder; names starting with "." are skipped."""
    files, folders, pending = [], [], [""]
    while pending:
        relative = pending.pop()
        folder = os.path.join(root, relative)
        folders.append([relative, os.stat(folder).st_mtime_ns])
        with os.scandir(folder) as scan:
            for item in scan:
                if item.name.startswith("."):
                    continue
                path = f"{relative}/{item.name}" if relative else item.name
                if item.is_dir():
                    pending.append(path)
                elif item.is_file():
                    stat = item.stat()
                    files.append((path, stat.st_size, stat.st_mtime_ns))
    files.sort()
    return files, folders


def folders_unchanged(root, folders):
    """True while no folder under root was changed (adding, removing or renaming a file changes its folder)."""
    try:
        return all(os.stat(os.path.join(root, relative)).st_mtime_ns == mtime for relative, mtime in folders)
    except OSError:
        return False


FOLDER_TAG = re.compile(r"(?:\[[^\]]*\]\s*)?(.*?)(?:_\d+)?(?:\.zip)?", re.IGNORECASE)


def folder_words(path):
    """The folder names of a path, less a leading "[라벨]"-style tag, a trailing "_1" and ".zip": the words that
    tell two image files of one name apart."""
    return {FOLDER_TAG.fullmatch(part).group(1) for part in re.split(r"[/\\]", str(path))[:-1] if part}


class ImageIndex:
    """Every file under an images root: relative paths (sorted), sizes, modification times, and each file's
    check result (a code into IMAGE_PROBLEMS, UNCHECKED until checked). The root is walked once and the index
    cached; the cache serves while no folder under the root changes, and a check result while its file keeps
    its size and modification time."""

    def __init__(self, root, arrays, folders):
        self.root, self.folders = root, folders
        self.paths = TextColumn(arrays["paths.offsets"], arrays["paths.data"])
        self.sizes, self.mtimes, self.problems = arrays["sizes"], arrays["mtimes"], arrays["problems"]

    def __len__(self):
        return len(self.paths)

    @classmethod
    def of(cls, root):
        root = os.path.abspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: images folder not found")
        cached = read_columns(cache_path("images", root))
        if cached and cached[1]["root"] == root and folders_unchanged(root, cached[1]["folders"]):
            return cls(root, cached[0], cached[1]["folders"])
        files, folders = walk_files(root)
        paths = TextColumn.of([path for path, _, _ in files])
        index = cls(root, {"paths.offsets": paths.offsets, "paths.data": paths.data,
                           "sizes": np.array([size for _, size, _ in files], dtype=np.int64),
                           "mtimes": np.array([mtime for _, _, mtime in files], dtype=np.int64),
                           "problems": np.full(len(files), UNCHECKED, dtype=np.uint8)}, folders)
        if cached:  # keep the results of files that did not change
            index.keep_results_of(cls(root, cached[0], cached[1]["folders"]), files)
        index.save()
        return index

    def keep_results_of(self, previous, files):
        position_of = {path: position for position, path in enumerate(previous.paths.tolist())}
        for position, (path, size, mtime) in enumerate(files):
            old = position_of.get(path)
            if old is not None and previous.sizes[old] == size and previous.mtimes[old] == mtime:
                self.problems[position] = previous.problems[old]

    def save(self):
        write_columns(cache_path("images", self.root),
                      {"paths.offsets": self.paths.offsets, "paths.data": self.paths.data, "sizes": self.sizes,
                       "mtimes": self.mtimes, "problems": self.problems}, {"root": self.root, "folders": self.folders})

    def positions_by_name(self, names):
        """{file name: [positions]} for the wanted names."""
        found = {}
        for position, path in enumerate(self.paths.tolist()):
            name = path.rpartition("/")[2]
            if name in names:
                found.setdefault(name, []).append(position)
        return found

    def check(self, positions, workers=None):
        """Problem codes of the files at `positions`. A file checked before keeps its result while its size and
        modification time are unchanged; the others are checked now, in up to one process per core (Pillow holds
        the GIL for much of the work on small images, so threads would not use the cores), and cached."""
        stale = []
        for position in positions.tolist():
            try:
                stat = os.stat(os.path.join(self.root, self.paths[position]))
                stamp = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                stamp = (-1, -1)
            if self.problems[position] == UNCHECKED or stamp != (self.sizes[position], self.mtimes[position]):
                stale.append((position, stamp))
        if stale:
            self.sizes, self.mtimes, self.problems = self.sizes.copy(), self.mtimes.copy(), self.problems.copy()
            paths = [os.path.join(self.root, self.paths[position]) for position, _ in stale]
            with concurrent.futures.ProcessPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:
                problems = list(tqdm(pool.map(image_problem, paths, chunksize=64), total=len(paths),
                                     desc="checking images", unit=" images", disable=None, leave=False))
            for (position, (size, mtime)), problem in zip(stale, problems):
                self.problems[position] = IMAGE_PROBLEMS.index(problem or "")
                self.sizes[position], self.mtimes[position] = size, mtime
            self.save()
        return self.problems[positions]


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
    parser's Python objects out of the training process."""
    keys = [unit_key(kind, unit) for unit in units]
    todo = [number for number, (unit, key) in enumerate(zip(units, keys)) if cached_part(kind, unit, key) is None]
    parse_here = sum(size for number in todo for _, size, _ in keys[number][1]) <= PARSE_HERE_BYTES
    with contextlib.nullcontext() if parse_here else \
            concurrent.futures.ProcessPoolExecutor(min(len(todo), os.cpu_count() or 1)) as pool:
        parsed = (map if parse_here else pool.map)(parse_unit, [kind] * len(todo), [units[n] for n in todo])
        for number, (arrays, notes) in zip(todo, parsed):  # written here: the workers need not import torch
            write_columns(cache_path(kind, os.path.abspath(units[number].name)), arrays, {"key": keys[number], **notes})
    parts = [cached_part(kind, unit, key) for unit, key in zip(units, keys)]
    if None in parts:
        raise ValueError(f"{cache_folder()}: the cache cannot be read back; set {CACHE_ENV} to another folder")
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


# ----------------------------------------------------------------------------------------------
# What is unusable, and the summary check and the training scripts print


def find_bad_entries(entries, workers=None):
    """(usable entries, [(reason, entries)]) with the reasons in BAD_REASONS order; no limit applied. Each image
    file is checked once (ImageIndex.check)."""
    columns, index = entries.columns, entries.columns.index
    codes = entries.column("image")
    problems = np.zeros(len(index) + len(columns.missing_images), dtype=np.uint8)
    found = np.unique(codes[codes < len(index)])
    problems[found] = index.check(found, workers)
    problems[len(index):] = [BAD_REASONS.index("missing image" if path else "unknown image")
                             for path in columns.missing_images]
    reasons = problems[codes]
    if entries.kind == "questions":
        reasons[(reasons == 0) & entries.empty("text")] = BAD_REASONS.index("empty question")
        reasons[(reasons == 0) & (entries.answer_count() == 0)] = BAD_REASONS.index("no answer")
    bad = [(reason, entries.select(reasons == code)) for code, reason in enumerate(BAD_REASONS)
           if code and (reasons == code).any()]
    return entries.select(reasons == 0), bad


def count_of(number, noun):
    return f"{number:,} {noun}{'' if number == 1 else 's'}"


def entry_name(entries, index):
    """Label file and entry, for a line that names an unusable entry."""
    source = entries.value("source", index)
    if entries.kind == "captions":
        return f"{source} image id {entries.value('image_id', index)}"
    return f"{source} question {entries.value('question_id', index)}"


def bad_line(reason, rows, examples=3):
    """'missing image: 3 images, 15 captions — a.jpg, b.jpg, c.jpg, …': a count and the first few names."""
    noun = rows.kind[:-1]
    if reason in IMAGE_PROBLEMS and reason != "unknown image":
        codes, first = np.unique(rows.column("image"), return_index=True)
        in_order = codes[np.argsort(first)]
        names = [os.path.basename(rows.image_path(code)) for code in in_order[:examples]]
        count, named = f"{count_of(len(codes), 'image')}, {count_of(len(rows), noun)}", len(codes)
    else:
        names = [entry_name(rows, index) for index in range(min(examples, len(rows)))]
        count, named = count_of(len(rows), noun), len(rows)
    return f"{reason}: {count} — {', '.join(names)}{', …' if named > examples else ''}"


def summary_lines(entries, good, bad):
    """What `check` prints and the training scripts print before their first step: one `name: value` line per
    count, the notes, then one line per reason entries are unusable, and where the cache is."""
    lines = [f"entries: {len(entries)}", f"images: {len(np.unique(good.column('image')))}",
             f"{entries.kind}: {len(good)}"]
    notes = entries.columns.notes
    if entries.kind == "captions":
        lines.append(f"empty captions skipped: {notes['empty_captions']}")
    else:
        type_counts = good.value_counts("answer_type")
        lines += [f"{answer_type}: {type_counts[answer_type]}" for answer_type in ANSWER_TYPES]
        lines.append(f"answers: {len(good.answer_counts())}")
        lines += [f"answer type '{spelling}' not known: {count_of(count, 'question')}, type inferred from the answer"
                  for spelling, count in notes["unknown_types"].most_common()]
    lines.append(f"bad: {sum(len(rows) for _, rows in bad)}")
    lines += [bad_line(reason, rows) for reason, rows in bad]
    lines.append(f"cache: {cache_folder()} (parsed labels and image checks; delete it to redo both)")
    return lines


def refuse_too_many_bad(total, bad, max_bad_share):
    count = sum(len(rows) for _, rows in bad)
    if count > max_bad_share * total:
        raise ValueError(f"{count} of {total} entries are unusable ({count / total:.1%}, more than the allowed "
                         f"{max_bad_share:.1%}): " + "; ".join(bad_line(reason, rows) for reason, rows in bad))


def check_entries(entries, max_bad_share=0.05, workers=None):
    """(usable entries, bad [(reason, entries)]); ValueError when more than max_bad_share are unusable."""
    if not len(entries):
        raise ValueError("no entries to check")
    good, bad = find_bad_entries(entries, workers)
    refuse_too_many_bad(len(entries), bad, max_bad_share)
    return good, bad


def read_usable(entries, max_bad_share, rank=0):
    """The usable entries, after printing the summary on stderr; too many unusable ones stop the run."""
    good, bad = find_bad_entries(entries)
    if rank == 0:
        for line in summary_lines(entries, good, bad):
            print(line, file=sys.stderr)
    refuse_too_many_bad(len(entries), bad, max_bad_share)
    return good


def run_check(args):
    if args.captions:
        entries = read_captions(args.captions, args.images)
    else:
        entries = read_vqa(args.vqa, args.images)
    good, bad = find_bad_entries(entries, args.workers)
    for line in summary_lines(entries, good, bad):
        print(line)
    refuse_too_many_bad(len(entries), bad, args.max_bad_share)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Ko-METER data sets: count entries and name the unusable ones.")
    commands = parser.add_subparsers(dest="command", required=True)
    check = commands.add_parser("check", help="count entries and name unusable ones (exit 0 while usable)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", help="caption file: AIHub MSCOCO JSON (or its first .part0 piece, or a "
                        "glob of the pieces) or JSONL (image, caption)")
    source.add_argument("--vqa", help="VQA label file or folder of them (any layout in this file's docstring)")
    check.add_argument("--images", required=True, help="images root: every image is found by file name under it")
    check.add_argument("--max-bad-share", type=float, default=0.05,
                       help="fail when more than this share of entries is unusable (default 0.05)")
    check.add_argument("--workers", type=int, default=None,
                       help="processes checking images (default: one per CPU core, at most 16)")
    args = parser.parse_args(argv)
    try:
        run_check(args)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
