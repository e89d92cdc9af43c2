"""The readers at the paper's scale: a synthetic AIHub 104-style VQA set of any size, and the start-up time and
memory of `formats.py check` and `finetune.py` on it: the table at the end of README's "Data (AIHub)".

Not a test (pytest collects only test_*.py): the figures depend on the machine, so they go in the README, not in
an assertion. The set follows the layout of the real download once unpacked (README, "Data (AIHub)"): one
question/annotation/images triplet per <category>/<level> folder, ids starting afresh in every folder, images
in one folder per category, found by file name; a few answer types in a spelling the reader does not know.
Memory is the summed PSS of finetune.py's whole process tree (main process and DataLoader workers; a shared
page counts once) from /proc/PID/smaps_rollup, sampled every 0.5 s, at step 1 and after --steps steps; CPU is
the tree's user + system time (ended children included), which tells the work apart from the machine's load.

    python tests/scale.py --questions 1000000 --images 20000 --steps 300 --batch 8   # README's table
    python tests/scale.py --questions 20000 --images 2000 --steps 20      # a few minutes on 2 cores
    python tests/scale.py --epoch-only     # memory through a whole epoch of dataset items, images not decoded
"""

import argparse
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
import demo_data

CATEGORIES = ["가구", "가전", "음식", "동물", "식물", "교통", "의류", "운동", "건물", "풍경"]
LEVELS = ["level1", "level2", "level3"]
COLOURS = ["빨간색", "파란색", "초록색", "노란색", "검은색", "흰색", "회색", "갈색"]
THINGS = ["의자", "책상", "컵", "고양이", "강아지", "자동차", "나무", "가방", "모자", "신발", "창문", "시계"]
PLACES = ["왼쪽", "오른쪽", "가운데", "위쪽", "아래쪽", "앞쪽", "뒤쪽"]
UNKNOWN_TYPE_SHARE = 0.05  # questions whose answer_type is spelled "단답형", a spelling the reader does not know


def question_and_answer(rng):
    """(question, answer, answer_type as the annotation spells it)."""
    thing, colour, place = rng.choice(THINGS), rng.choice(COLOURS), rng.choice(PLACES)
    where = f"{place}에서 {rng.randint(1, 10**6)}번째로 보이는"  # nearly every question is different, as in the real sets
    kind = rng.random()
    if kind < 0.3:
        return f"{where} 것은 {colour} {thing}인가요?", rng.choice(["예", "아니요"]), "yes/no"
    if kind < 0.55:
        return f"{where} {thing}는 몇 개 있나요?", f"{rng.randint(1, 12)}개", "number"
    if kind < 0.6:
        return f"{where} {thing}의 주인은 누구인가요?", "알 수 없음", "unanswerable"
    answer = rng.choice([colour, place, f"{colour} {thing}", f"{place} {thing}", f"{colour} {rng.choice(THINGS)}"])
    spelling = "단답형" if rng.random() < UNKNOWN_TYPE_SHARE / 0.4 else "other"
    return f"{where} {thing} 옆에는 무엇이 있나요?", answer, spelling


def make_set(out, questions, images, seed=0):
    """Write out/images/<category>/<category>_NNNNNN.jpg and out/labels/<category>/<level>/{..}_{question,
    annotation,images}.json with `questions` questions in all, and out/tokenizer.json. Kept when complete."""
    out = Path(out)
    marker = out / "made.json"
    settings = {"questions": questions, "images": images, "seed": seed}
    if marker.is_file() and json.loads(marker.read_text()) == settings:
        return out
    shutil.rmtree(out, ignore_errors=True)
    rng = random.Random(seed)
    per_category = images // len(CATEGORIES)
    for category in CATEGORIES:
        folder = out / "images" / category
        folder.mkdir(parents=True)
        for number in range(per_category):
            picture = Image.new("RGB", (64, 48), tuple(rng.randrange(256) for _ in range(3)))
            picture.paste(tuple(rng.randrange(256) for _ in range(3)), (rng.randrange(32), rng.randrange(24), 48, 40))
            picture.save(folder / f"{category}_{number:06d}.jpg", quality=80)
    texts, folders = [], [(category, level) for category in CATEGORIES for level in LEVELS]
    for number, (category, level) in enumerate(folders):
        count = questions // len(folders) + (number < questions % len(folders))
        image_records = [{"image_id": image_id, "image": f"{category}_{image_id - 1:06d}.jpg", "category": category}
                         for image_id in range(1, per_category + 1)]
        question_records, annotation_records = [], []
        for question_id in range(1, count + 1):
            question, answer, spelling = question_and_answer(rng)
            image_id = rng.randint(1, per_category)
            question_records.append({"question_id": question_id, "image_id": image_id, "question": question})
            annotation_records.append({"question_id": question_id, "image_id": image_id, "answer_type": spelling,
                                       "multiple_choice_answer": answer, "answer_confidence": "yes"})
            if len(texts) < 20000:
                texts += [question, answer]
        folder = out / "labels" / category / level
        folder.mkdir(parents=True)
        prefix = f"{category}_{level}"
        for name, value in (("question", {"questions": question_records}),
                            ("annotation", {"annotations": annotation_records}), ("images", {"images": image_records})):
            (folder / f"{prefix}_{name}.json").write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    demo_data.train_tokenizer(texts, out / "tokenizer.json", vocab_size=400)
    marker.write_text(json.dumps(settings))
    return out


def tree_pss(pid):
    """Summed PSS in bytes of a process and all its descendants (0 once it has ended)."""
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    parent = int(file.read().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(parent, []).append(int(entry))
    total, pending = 0, [pid]
    while pending:
        process = pending.pop()
        pending += children.get(process, [])
        try:
            with open(f"/proc/{process}/smaps_rollup") as file:
                total += next(int(line.split()[1]) * 1024 for line in file if line.startswith("Pss:"))
        except (OSError, StopIteration):
            continue
    return total


def tree_cpu(pid):
    """CPU seconds (user + system) used so far by a process and its descendants, ended children included."""
    ticks, pending = 0, [pid]
    children = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as file:
                    children.setdefault(int(file.read().rsplit(")", 1)[1].split()[1]), []).append(int(entry))
            except (OSError, IndexError, ValueError):
                continue
    while pending:
        process = pending.pop()
        pending += children.get(process, [])
        try:
            with open(f"/proc/{process}/stat") as file:
                fields = file.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(value) for value in fields[11:15])  # utime, stime, cutime, cstime
    return ticks / os.sysconf("SC_CLK_TCK")


def run_measured(command, env, marks, stop_at=None):
    """Run a command, sampling its tree's PSS; returns {mark: (seconds, PSS then, peak PSS so far, CPU seconds
    so far)} for the first stdout line starting with each of `marks`, and "end". The run is ended once `stop_at`
    is seen."""
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               cwd=REPO, bufsize=1)
    os.set_blocking(process.stdout.fileno(), False)
    seen, peak, output = {}, 0, []
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    try:
        while True:
            line = process.stdout.readline()
            if line:
                output.append(line)
                for mark in marks:
                    if line.startswith(mark) and mark not in seen:
                        pss = tree_pss(process.pid)
                        peak = max(peak, pss)
                        seen[mark] = (time.perf_counter() - start, pss, peak, tree_cpu(process.pid))
                if stop_at in seen:
                    break
                continue
            if process.poll() is not None:
                break
            peak = max(peak, tree_pss(process.pid))
            time.sleep(0.5)
    finally:
        if process.poll() is None:  # stopped on purpose, or this script was interrupted: end the run too
            process.kill()
            process.wait()
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    seen["end"] = (time.perf_counter() - start, 0, peak, cpu)
    if process.returncode and stop_at not in seen:
        sys.exit("".join(output[-30:]) + f"\n{command[1]} failed (exit {process.returncode})")
    return seen, "".join(output)


def epoch_memory(root, workers, cache):
    """Tree PSS of this process and `workers` DataLoader workers through one whole epoch of finetune.py's
    VqaDataset items (entry, answers, soft-score targets), the image decoding replaced by a constant so that an
    epoch of a million questions takes minutes: what grew here, per question visited, would grow in training."""
    os.environ["KO_METER_CACHE"] = str(cache)
    import torch
    import data
    import formats
    entries = formats.read_vqa(root / "labels", root / "images")
    data.load_image = lambda path, size, augment=None, rng=None: torch.zeros(3, size, size)
    dataset = data.VqaDataset(entries, data.build_answer_vocab(entries, 3811), 8)
    loader = torch.utils.data.DataLoader(dataset, batch_size=256, shuffle=True, num_workers=workers,
                                         collate_fn=len, generator=torch.Generator().manual_seed(0))
    batches, seen, readings = len(loader), 0, []
    for number, size in enumerate(loader, 1):
        seen += size
        if number in (1, batches // 4, batches // 2, 3 * batches // 4, batches):
            readings.append(f"{seen / len(dataset):.0%} {gib(tree_pss(os.getpid()))}")
    return ", ".join(readings)


def gib(value):
    return f"{value / 2**30:.2f} GiB"


def main(argv=None):
    parser = argparse.ArgumentParser(description="Start-up time and memory of finetune.py on a synthetic "
                                     "AIHub 104-style set.")
    parser.add_argument("--questions", type=int, default=1_000_000)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=300, help="training steps of the first run; the second, "
                        "from the cache, stops at step 1 (default 300)")
    parser.add_argument("--batch", type=int, default=8, help="questions per training step (default 8)")
    parser.add_argument("--workers", type=int, default=4, help="DataLoader workers (default 4)")
    parser.add_argument("--out", default="/tmp/ko_meter_scale", help="where the set, the cache and the runs go")
    parser.add_argument("--epoch-only", action="store_true", help="only the memory through a whole epoch of "
                        "dataset items (the set and the cache are made first if missing)")
    args = parser.parse_args(argv)
    made = time.perf_counter()
    root = make_set(Path(args.out) / f"set_{args.questions}", args.questions, args.images)
    print(f"set: {root} ({time.perf_counter() - made:.0f} s to make or find)")
    cache = Path(args.out) / "cache"
    env = {**os.environ, "KO_METER_CACHE": str(cache), "PYTHONUNBUFFERED": "1"}
    check = [sys.executable, "formats.py", "check", "--vqa", str(root / "labels"), "--images", str(root / "images")]
    finetune = [sys.executable, "finetune.py", "--train", str(root / "labels"), "--images", str(root / "images"),
                "--tokenizer", str(root / "tokenizer.json"), "--config", "tiny", "--workers", str(args.workers),
                "--steps", str(args.steps), "--batch", str(args.batch), "--log-every", "1", "--eval-every", str(args.steps),
                "--save-every", str(args.steps), "--dev-size", "500", "--out", str(Path(args.out) / "run")]
    if args.epoch_only:
        print(f"one epoch of dataset items, {args.workers} workers, tree PSS: "
              + epoch_memory(root, args.workers, cache))
        return
    rows = []
    for label, command, clear in [("check, empty cache", check, True), ("check, cached", check, False),
                                  ("finetune, empty cache", finetune, True), ("finetune, cached", finetune, False)]:
        if clear:
            shutil.rmtree(cache, ignore_errors=True)
        shutil.rmtree(Path(args.out) / "run", ignore_errors=True)
        marks = ["step 1/", f"step {args.steps}/"] if command is finetune else ["bad:"]
        seen, output = run_measured(command, env, marks, stop_at=None if clear else "step 1/")
        if command is check:
            rows.append(f"{label:24s} {seen['end'][0]:6.1f} s to the end (CPU {seen['end'][3]:.1f} s), "
                        f"peak {gib(seen['end'][2])}")
            if clear:
                print(output)
        else:
            first = seen["step 1/"]
            rows.append(f"{label:24s} {first[0]:6.1f} s to step 1 (CPU {first[3]:.1f} s), PSS {gib(first[1])} "
                        f"(peak {gib(first[2])})")
            if clear:
                last = seen[f"step {args.steps}/"]
                rows[-1] += f"; step {args.steps}: PSS {gib(last[1])} (peak over the run {gib(seen['end'][2])})"
        print(rows[-1], flush=True)
    print(f"\n{args.questions:,} questions, {args.images:,} images, {args.workers} workers, tiny config, "
          f"{os.cpu_count()} CPU cores")
    print("\n".join(rows))
    print(f"one epoch of dataset items, tree PSS: {epoch_memory(root, args.workers, cache)}")


if __name__ == "__main__":
    main()
