"""`check`: count a data set's usable entries and name the unusable ones; the summary every training run prints.

Off the reading path: read it when `check` or a training script refuses your data. An entry is unusable when its
image is missing, unknown, unreadable, truncated or too large (image_files.py), or when a question is empty or
has no answer; a run stops when more than --max-bad-share of the entries are unusable.

    python check.py --vqa demo_data/vqa_train.json --images demo_data/images   # after python demo_data.py

Choices:
- Each image file is checked once, in one process per core (Pillow holds the GIL on small images), and the
  result cached with the image index.
- Unusable entries are reported grouped by reason: a count and the first few names.
"""

import argparse
import os
import sys

import numpy as np

from columns import cache_folder, tidy_cache
from formats import ANSWER_TYPES, read_captions, read_vqa
from image_files import IMAGE_PROBLEMS

BAD_REASONS = IMAGE_PROBLEMS + ("empty question", "no answer")  # code 0: usable


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


def size_text(size):
    return f"{size / 1e6:,.1f} MB" if size >= 1e5 else f"{size / 1e3:.1f} kB"


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
    count, the notes, then one line per reason entries are unusable, and where the cache is and what it holds
    (files made from label files or images that no longer exist are removed first)."""
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
    files, size = tidy_cache()
    lines.append(f"cache: {cache_folder()} ({count_of(files, 'file')}, {size_text(size)} of parsed labels and "
                 "image checks; delete it to redo both)")
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
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", help="caption file: AIHub MSCOCO JSON (or its first .part0 piece, or a "
                        "glob of the pieces) or JSONL (image, caption)")
    source.add_argument("--vqa", help="VQA label file or folder of them (any layout in formats.py's docstring)")
    parser.add_argument("--images", required=True, help="images root: every image is found by file name under it")
    parser.add_argument("--max-bad-share", type=float, default=0.05,
                        help="fail when more than this share of entries is unusable (default 0.05)")
    parser.add_argument("--workers", type=int, default=None,
                        help="processes checking images (default: one per CPU core, at most 16)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parser.parse_args(argv[1:] if argv[:1] == ["check"] else argv)  # 'check', as data.py check says it
    try:
        run_check(args)
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
