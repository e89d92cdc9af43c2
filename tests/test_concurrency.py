"""Tests of several processes on one machine: two writers of one cache file, a writer killed in the middle of an
atomic write, two jobs and torchrun's processes started together on an empty cache (one of them parses and checks,
the others map what it cached), and errors that name the real cause.

    python -m pytest -q tests/test_concurrency.py
"""

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import checkpoints
import columns
import demo_data
import formats
from test_data import save_jpeg

REPO = Path(__file__).resolve().parent.parent
ARRAYS = {"numbers": np.arange(200_000, dtype=np.int64), "bytes": np.frombuffer(b"abc" * 1000, dtype=np.uint8)}
META, SOURCES = {"what": "a test"}, ["/nowhere"]

# A writer of ARRAYS (saved in argv[4]) to the cache file argv[1] that pauses between writing and renaming until
# argv[3] writers have written, each marking that in the folder argv[2]: the writes overlap for certain.
OVERLAPPING_WRITER = f"""
import os, sys, time
sys.path.insert(0, {str(REPO)!r})
import numpy as np
import columns
path, ready, writers, arrays = sys.argv[1], sys.argv[2], int(sys.argv[3]), dict(np.load(sys.argv[4]))
rename = os.replace
def rename_once_all_have_written(source, target):
    open(os.path.join(ready, str(os.getpid())), "w").close()
    deadline = time.time() + 60
    while len(os.listdir(ready)) < writers and time.time() < deadline:
        time.sleep(0.01)
    rename(source, target)
os.replace = rename_once_all_have_written
columns.write_columns(path, arrays, {META!r}, {SOURCES!r})
"""


def temporaries(folder):
    return sorted(name for name in os.listdir(folder) if name.endswith(".tmp"))


def test_two_writers_of_one_cache_file_both_succeed_and_readers_see_it_whole(tmp_path):
    folder, ready = tmp_path / "cache", tmp_path / "ready"
    folder.mkdir()
    ready.mkdir()
    path = folder / "questions-one-0123456789abcdef.columns"
    np.savez(tmp_path / "arrays.npz", **ARRAYS)
    writers = [subprocess.Popen([sys.executable, "-c", OVERLAPPING_WRITER, str(path), str(ready), "2",
                                 str(tmp_path / "arrays.npz")], stderr=subprocess.PIPE, text=True) for _ in range(2)]
    reads = 0
    while any(writer.poll() is None for writer in writers):  # a reader meanwhile: the whole file or none
        read = columns.read_columns(path)
        if read is not None:
            reads += 1
            assert read[1] == META and all(np.array_equal(read[0][name], ARRAYS[name]) for name in ARRAYS)
        time.sleep(0.005)
    for writer in writers:
        assert writer.wait() == 0, writer.stderr.read()
    assert len(os.listdir(ready)) == 2  # both had written before either renamed
    single = tmp_path / "single" / path.name
    columns.write_columns(single, ARRAYS, META, SOURCES)
    assert path.read_bytes() == single.read_bytes() and temporaries(folder) == []


def run_until_killed(code):
    """Run `code` in a child that kills itself with SIGKILL at its end; returns the child's pid."""
    child = subprocess.Popen([sys.executable, "-c", f"import os, signal, sys\nsys.path.insert(0, {str(REPO)!r})\n"
                              f"import checkpoints\n{code}\nos.kill(os.getpid(), signal.SIGKILL)"],
                             stderr=subprocess.PIPE, text=True)
    assert child.wait() == -signal.SIGKILL, child.stderr.read()
    return child.pid


def test_a_crash_mid_write_keeps_the_old_file_and_the_next_writer_removes_the_temporary(tmp_path):
    results = tmp_path / "results.json"
    checkpoints.write_json(results, {"old": True})
    live = subprocess.Popen([sys.executable, "-c", f"import sys\nsys.path.insert(0, {str(REPO)!r})\n"
                             f"import checkpoints\nwith checkpoints.atomic_write({str(tmp_path / 'metrics.json')!r}) "
                             "as file:\n    print(file.name, flush=True); sys.stdin.readline(); file.write('{}')"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    live_temporary = Path(live.stdout.readline().strip()).name  # a writer still writing, all along

    def writers_of_temporaries():
        return sorted(int(checkpoints.TEMPORARY.fullmatch(name)["pid"]) for name in temporaries(tmp_path))

    killed = run_until_killed(f"writing = checkpoints.atomic_write({str(results)!r})\n"
                              "file = writing.__enter__(); file.write('{\"half\": '); file.flush()")
    assert json.loads(results.read_text()) == {"old": True}  # the destination keeps its old content
    assert writers_of_temporaries() == sorted([live.pid, killed])
    killed = run_until_killed(f"writing = checkpoints.atomic_path({str(tmp_path / 'step_000002')!r})\n"
                              "folder = writing.__enter__(); os.makedirs(folder)\n"
                              "open(os.path.join(folder, 'model.safetensors'), 'w').write('x')")
    assert writers_of_temporaries() == sorted([live.pid, killed])  # it removed the first killed writer's file
    assert not (tmp_path / "step_000002").exists()
    checkpoints.write_json(results, {"new": True})
    assert temporaries(tmp_path) == [live_temporary]  # the killed writer's folder is gone, the live one's file kept
    assert json.loads(results.read_text()) == {"new": True}
    live.communicate("\n")
    assert live.returncode == 0 and temporaries(tmp_path) == [] and (tmp_path / "metrics.json").read_text() == "{}"


def write_question_set(root, questions=300):
    """Three JSONL label files over 30 images."""
    for number in range(30):
        save_jpeg(root / "images" / f"{number:03d}.jpg")
    for part in range(3):
        lines = [{"image": f"{number % 30:03d}.jpg", "question": f"질문 {part} {number}", "answers": ["예"]}
                 for number in range(questions // 3)]
        (root / "labels").mkdir(parents=True, exist_ok=True)
        (root / "labels" / f"part{part}.jsonl").write_text("\n".join(json.dumps(line, ensure_ascii=False)
                                                                    for line in lines), encoding="utf-8")
    return root / "labels", root / "images"


def notes(stderr):
    """The lines that say what a process parsed and checked, wherever they start: two processes writing to one pipe
    may land one's line right after the other's unfinished one ("questions: 96parsed 1 label file ...")."""
    return re.findall(r"(?:parsed|checked) \d[^\n]*", stderr)


def test_two_jobs_started_together_on_an_empty_cache_both_succeed_and_parse_once(tmp_path):
    labels, images = write_question_set(tmp_path)
    environment = {**os.environ, columns.CACHE_ENV: str(tmp_path / "cache")}
    command = [sys.executable, str(REPO / "check.py"), "--vqa", str(labels), "--images", str(images)]
    jobs = [subprocess.Popen(command, env=environment, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for _ in range(2)]
    outputs = [job.communicate() for job in jobs]
    assert [job.returncode for job in jobs] == [0, 0], outputs
    assert outputs[0][0] == outputs[1][0] and "questions: 300" in outputs[0][0]
    said = notes(outputs[0][1]) + notes(outputs[1][1])
    assert sorted(line.split(" in ")[0] for line in said) == ["checked 30 images",
                                                              "parsed 3 label files (300 questions)"]


def test_torchrun_on_an_empty_cache_parses_and_checks_once(tmp_path):
    demo = demo_data.make_demo(str(tmp_path / "demo_data"), caption_images=4, vqa_train_images=24,
                               vqa_dev_images=6, questions_per_image=4, image_size=64, vocab_size=200)
    environment = {**os.environ, columns.CACHE_ENV: str(tmp_path / "cache"), "OMP_NUM_THREADS": "1",
                   "PYTHONPATH": str(REPO)}
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               str(REPO / "finetune.py"), "--train", demo["vqa_train"], "--dev", demo["vqa_dev"], "--images",
               demo["images"], "--tokenizer", demo["tokenizer"], "--config", "tiny", "--batch", "8", "--steps", "2",
               "--max-len", "16", "--log-every", "1", "--eval-every", "2", "--save-every", "2", "--workers", "0",
               "--out", str(tmp_path / "run")]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    said = [line.split(" in ")[0] for line in notes(result.stderr)]
    assert sorted(said) == ["checked 24 images", "checked 6 images", "parsed 1 label file (24 questions)",
                            "parsed 1 label file (96 questions)"], result.stderr[-3000:]
    assert (tmp_path / "run" / "model.safetensors").is_file()


def test_cache_errors_name_the_real_cause(tmp_path, monkeypatch):
    labels, images = write_question_set(tmp_path, questions=3)
    (tmp_path / "a_file").write_text("")
    monkeypatch.setenv(columns.CACHE_ENV, str(tmp_path / "a_file" / "cache"))
    with pytest.raises(ValueError) as error:
        formats.read_vqa(labels, images)
    message = str(error.value)
    assert "Not a directory" in message and columns.CACHE_ENV not in message and "\n" not in message
    monkeypatch.setattr(os, "access", lambda path, mode: False)  # what a folder of another user's reads as
    with pytest.raises(ValueError) as error:
        formats.read_vqa(labels, images)
    assert str(error.value) == (f"{tmp_path / 'a_file' / 'cache'}: the cache folder is not writable (Not a directory); "
                                f"set {columns.CACHE_ENV} to a writable folder")
