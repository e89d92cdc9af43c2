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

import numpy as np
from tqdm import tqdm

from columns import TextColumn, cache_path, read_columns, write_columns
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
