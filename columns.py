"""Entries in columns, and the disk cache that lets a second start map them instead of parsing again.

Off the reading path: formats.py's readers return `Entries`, and data.py's datasets index them. Rows live in
columns (numpy arrays, and one UTF-8 buffer per text column; no Python object per row), so a million questions
take tens of megabytes and DataLoader workers share them untouched. `entries[i]` is a plain dict:
  captions  {"image": path, "caption": str, "image_id": str, "split": str}
  questions {"image": path, "question": str, "answers": [str, ...], "answer_type": one of ANSWER_TYPES,
             "question_id": as in the file, "source": the label file}
A column holds per-row codes into a table of its distinct values, so a test over a column (`matching`,
`value_counts`) runs once per distinct value, never once per row.

    python -c "import columns; print(columns.cache_folder())"

Choices:
- The cache is one file per label unit or images root, named after its path, holding 1-D arrays at 64-byte
  boundaries behind a JSON header that names the files it was made from; it is mapped read-only, so every
  process shares its pages. Deleting the cache folder is always safe.
- Several processes on one machine (torchrun's, or unrelated jobs) make each cache file once: whoever holds
  its lock (`cache_lock`, a file lock in the cache folder) parses or checks and writes, the others wait and
  then map what it wrote. Each array carries a checksum: a damaged file reads as absent and is made again.
"""

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import json
import mmap
import os
import re
import zlib
from collections import Counter

import numpy as np


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
    index: object                  # the image_index.ImageIndex of the images root
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
CACHE_VERSION = 2
ALIGN = 64


def cache_folder():
    """$KO_METER_CACHE, else ko-meter/ in $XDG_CACHE_HOME or ~/.cache. Deleting it is always safe: what is
    missing is parsed and checked again."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.environ.get(CACHE_ENV) or os.path.join(base, "ko-meter")


def cache_path(what, key, suffix=".columns"):
    """The cache file of one label unit or images root, named after its path (its file name cut to 60 bytes):
    a changed file replaces it."""
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:16]
    name = re.sub(r"[^\w.-]+", "_", os.path.basename(key.rstrip("/\\")))
    stem = name.encode("utf-8")[:60].decode("utf-8", errors="ignore")
    return os.path.join(cache_folder(), f"{what}-{stem}-{digest}{suffix}")


def cache_error(path, error):
    """A one-line ValueError for an OSError met at a cache file, naming the cause: only a folder that cannot be
    written sends the user to another one."""
    folder = existing = os.path.dirname(os.path.abspath(path))
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    if not os.access(existing, os.W_OK | os.X_OK):
        return ValueError(f"{folder}: the cache folder is not writable ({error.strerror}); "
                          f"set {CACHE_ENV} to a writable folder")
    return ValueError(f"{path}: cannot write the cache ({error})")


@contextlib.contextmanager
def cache_lock(what, key):
    """Held by one process at a time (a file lock in the cache folder, released when the process ends, however
    it ends): the holder parses or checks `key` and caches it, the others wait, then find it cached."""
    path = cache_path(what, key, ".lock")
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        lock = open(path, "a")
    except OSError as error:
        raise cache_error(path, error) from None
    with lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except OSError as error:  # a network file system without locks
            raise cache_error(path, error) from None
        yield


def write_columns(path, arrays, meta, sources):
    """1-D arrays in one file: a JSON header line (the files they were made from, meta, and where each array
    starts and its checksum), then each array's bytes at a 64-byte boundary. Returns them as `read_columns`
    maps them back, so that the writer too shares the file's pages."""
    arrays = {name: np.ascontiguousarray(array) for name, array in arrays.items()}
    layout, offset = [], 0
    for name, array in arrays.items():
        layout.append([name, array.dtype.str, len(array), offset, zlib.crc32(array.data)])
        offset += -(-array.nbytes // ALIGN) * ALIGN
    header = json.dumps({"version": CACHE_VERSION, "sources": sources, "meta": meta, "arrays": layout},
                        ensure_ascii=False).encode("utf-8") + b"\n"
    start = -(-len(header) // ALIGN) * ALIGN
    from checkpoints import atomic_write  # imported here: checkpoints imports torch, which `check` does not need
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with atomic_write(path, "wb") as file:
            file.write(header.ljust(start, b" "))
            for (_, _, _, array_offset, _), array in zip(layout, arrays.values()):
                file.seek(start + array_offset)
                file.write(array.data)
    except OSError as error:
        raise cache_error(path, error) from None
    mapped = read_columns(path)
    if mapped is None:
        raise ValueError(f"{path}: the cache file just written cannot be read back whole")
    return mapped


def read_header(file):
    """The header of an open cache file as a dict, None when its first line is not a JSON object (damaged)."""
    try:
        header = json.loads(file.readline())
    except ValueError:
        return None
    return header if isinstance(header, dict) else None


def read_columns(path):
    """(arrays, meta) of a cache file, mapped read-only (its pages are shared by every process that maps it);
    None when the file is absent, of another version, or damaged (an array's checksum differs)."""
    try:
        with open(path, "rb") as file:
            header = read_header(file)
            if header is None or header.get("version") != CACHE_VERSION:
                return None
            start = -(-file.tell() // ALIGN) * ALIGN
            buffer = mmap.mmap(file.fileno(), 0, access=mmap.ACCESS_READ)
        arrays = {}
        for name, dtype, count, offset, checksum in header["arrays"]:
            array = np.frombuffer(buffer, dtype, count, start + offset) if count else np.zeros(0, dtype)
            if zlib.crc32(array.data) != checksum:
                return None
            arrays[name] = array
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return arrays, header["meta"]


def tidy_cache():
    """(files, bytes) the cache holds, once damaged files and those made from label files or an images folder
    that no longer exist are removed. Files of another version are left to it."""
    folder, files, size = cache_folder(), 0, 0
    for name in sorted(os.listdir(folder)) if os.path.isdir(folder) else []:
        path = os.path.join(folder, name)
        if not name.endswith(".columns"):
            continue
        try:
            with open(path, "rb") as file:
                header = read_header(file)
        except OSError:  # removed meanwhile by another process
            continue
        if header is None or (header.get("version") == CACHE_VERSION
                              and not all(os.path.exists(source) for source in header["sources"])):
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        files, size = files + 1, size + os.path.getsize(path)
    return files, size


def file_stamp(path):
    stat = os.stat(path)
    return [os.path.abspath(path), stat.st_size, stat.st_mtime_ns]
