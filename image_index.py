"""Images under a root, found by file name, and each file checked once.

Off the reading path: formats.py finds every entry's image through an `ImageIndex`; check.py asks it which
images are usable. AIHub's images arrive in per-category zips that unpack in many ways, so an image is found by
its file name anywhere under --images, whatever the folders in between.

    python -c "import image_index; print(len(image_index.ImageIndex.of('demo_data/images')))"   # after a demo

Choices where the data sets' documents are silent:
- When several files share a name, the one whose folders name the entry's own folders, its category, or the
  label file's folders (less a leading "[라벨]"-style tag, a trailing "_1" and ".zip") wins (formats.py); a tie
  is refused, naming both files.
- The walk and the check results are cached (columns.py): the walk serves while no folder under the root
  changes, a check result while its file keeps its size and modification time.
"""

import concurrent.futures
import os
import re
import sys
import time

import numpy as np
from tqdm import tqdm

from columns import TextColumn, cache_folder, cache_lock, cache_path, read_columns, write_columns
from image_files import IMAGE_PROBLEMS, image_problem

UNCHECKED = 255  # an image's problem code before it is checked


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
    its size and modification time. One process at a time walks or checks a root (columns.cache_lock)."""

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
        with cache_lock("images", root):
            cached = cls.cached(root)
            if cached is not None and folders_unchanged(root, cached.folders):
                return cached
            files, folders = walk_files(root)
            paths = TextColumn.of([path for path, _, _ in files])
            index = cls(root, {"paths.offsets": paths.offsets, "paths.data": paths.data,
                               "sizes": np.array([size for _, size, _ in files], dtype=np.int64),
                               "mtimes": np.array([mtime for _, _, mtime in files], dtype=np.int64),
                               "problems": np.full(len(files), UNCHECKED, dtype=np.uint8)}, folders)
            if cached is not None:  # keep the results of files that did not change
                index.keep_results_of(cached)
            index.save()
        return index

    @classmethod
    def cached(cls, root):
        """The index of root as cached, None when there is none (whether its folders changed since is the
        caller's question)."""
        cached = read_columns(cache_path("images", root))
        if cached is None or cached[1]["root"] != root:
            return None
        return cls(root, cached[0], cached[1]["folders"])

    def keep_results_of(self, previous):
        """Take the check results of `previous` for the files whose size and modification time did not change."""
        position_of = {path: position for position, path in enumerate(previous.paths.tolist())}
        for position, path in enumerate(self.paths.tolist()):
            old = position_of.get(path)
            if old is not None and (previous.sizes[old], previous.mtimes[old]) == (self.sizes[position],
                                                                                  self.mtimes[position]):
                self.problems[position] = previous.problems[old]

    def same_files(self, other):
        return (np.array_equal(self.paths.offsets, other.paths.offsets)
                and np.array_equal(self.paths.data, other.paths.data))

    def take(self, other):
        """Hold `other`'s arrays in place of this index's own."""
        self.folders, self.paths, self.sizes, self.mtimes, self.problems = (
            other.folders, other.paths, other.sizes, other.mtimes, other.problems)

    def save(self):
        """Cache the index, then hold the cached arrays (mapped: every process shares their pages)."""
        arrays, _ = write_columns(cache_path("images", self.root),
                                  {"paths.offsets": self.paths.offsets, "paths.data": self.paths.data,
                                   "sizes": self.sizes, "mtimes": self.mtimes, "problems": self.problems},
                                  {"root": self.root, "folders": self.folders}, [self.root])
        self.take(ImageIndex(self.root, arrays, self.folders))

    def positions_by_name(self, names):
        """{file name: [positions]} for the wanted names."""
        found = {}
        for position, path in enumerate(self.paths.tolist()):
            name = path.rpartition("/")[2]
            if name in names:
                found.setdefault(name, []).append(position)
        return found

    def stale(self, positions):
        """[(position, (size, mtime_ns) now)] of the files at `positions` not checked at their present size and
        modification time ((-1, -1): the file is gone)."""
        stale = []
        for position in positions.tolist():
            try:
                stat = os.stat(os.path.join(self.root, self.paths[position]))
                stamp = (stat.st_size, stat.st_mtime_ns)
            except OSError:
                stamp = (-1, -1)
            if self.problems[position] == UNCHECKED or stamp != (self.sizes[position], self.mtimes[position]):
                stale.append((position, stamp))
        return stale

    def check(self, positions, workers=None):
        """Problem codes of the files at `positions`. A file checked before keeps its result while its size and
        modification time are unchanged; the others are checked now, in up to one process per core (Pillow holds
        the GIL for much of the work on small images, so threads would not use the cores), and cached. Another
        process checking the same root meanwhile is waited for, and its results taken."""
        if not self.stale(positions):
            return self.problems[positions]
        with cache_lock("images", self.root):
            cached = ImageIndex.cached(self.root)
            if cached is not None and cached.same_files(self):  # checked by another process meanwhile, maybe
                self.take(cached)
            stale = self.stale(positions)
            if stale:
                started = time.perf_counter()
                self.sizes, self.mtimes, self.problems = self.sizes.copy(), self.mtimes.copy(), self.problems.copy()
                paths = [os.path.join(self.root, self.paths[position]) for position, _ in stale]
                with concurrent.futures.ProcessPoolExecutor(workers or min(16, os.cpu_count() or 1)) as pool:
                    problems = list(tqdm(pool.map(image_problem, paths, chunksize=64), total=len(paths),
                                         desc="checking images", unit=" images", disable=None, leave=False))
                for (position, (size, mtime)), problem in zip(stale, problems):
                    self.problems[position] = IMAGE_PROBLEMS.index(problem or "")
                    self.sizes[position], self.mtimes[position] = size, mtime
                self.save()
                print(f"checked {len(stale):,} image{'s' if len(stale) > 1 else ''} in "
                      f"{time.perf_counter() - started:.1f} s, cached in {cache_folder()}", file=sys.stderr, flush=True)
        return self.problems[positions]
