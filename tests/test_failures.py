"""Tests of how a run ends when something fails (failures.py): a full disk, a killed data-loading worker, a dead
torchrun process, a non-finite loss, and damaged checkpoint files. Each fault ends the run at once with a non-zero
exit and one line (the cause, the last good checkpoint, the command that resumes), no traceback and no process
left behind, and the last checkpoint resumes. Tiny config on the caption set of test_pretrain.py, a few steps."""

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
import warnings
from types import SimpleNamespace

import pytest
import torch

import checkpoints
import failures
import load_weights
import predict
import pretrain
import training
from test_pretrain import REPO, make_caption_set, run_arguments

ENVIRONMENT = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
TORCHRUN_TRACEBACK = 'Traceback (most recent call last):\n  File "<frozen runpy>"'  # torchrun's own, at its end
PROMPT_SECONDS = 10  # a failed run ends this soon after its fault (the torchrun case: failures.PEER_TIMEOUT)

# pretrain.py with a fault planted in it: the fault prints "fault at <time>" when it strikes
FAULTY_PRETRAIN = """
import errno, os, sys, time
import checkpoints, pretrain

def say_fault():
    print(f"fault at {time.time()}", flush=True)

FAULT

sys.argv = ["pretrain.py", *sys.argv[1:]]
pretrain.main()
"""
NAN_IN_STEP_THREE = """
calls = {"count": 0}
original = pretrain.pretrain_losses

def poisoned(model, *arguments, **keywords):
    calls["count"] += model.training
    losses = original(model, *arguments, **keywords)
    if calls["count"] == 5:  # first micro-batch of step 3
        say_fault()
        losses["mlm_loss_sum"] = losses["mlm_loss_sum"] * float("nan")
    return losses

pretrain.pretrain_losses = poisoned
"""
DISK_FULL_AT_SECOND_CHECKPOINT = """
writes = {"count": 0}
original = checkpoints.save_file

def full_disk(tensors, path, **keywords):
    writes["count"] += 1
    if writes["count"] == 3:  # the second checkpoint's first file (each has a model and an optimizer file)
        say_fault()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
    return original(tensors, path, **keywords)

checkpoints.save_file = full_disk
"""


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The runs in this process take one thread, as the subprocesses do (OMP_NUM_THREADS=1): on a busy machine
    two threads per run only wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory):
    return make_caption_set(str(tmp_path_factory.mktemp("captions")))


@pytest.fixture(scope="module")
def finished_run(caption_set, tmp_path_factory):
    """A 6-step run that keeps step_000004/ and step_000006/, for the damaged-file tests to copy."""
    out = tmp_path_factory.mktemp("finished") / "run"
    pretrain.main(run_arguments(caption_set, out))
    return out


def start(command):
    return subprocess.Popen(command, env=ENVIRONMENT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def finish(process, seconds=60):
    """(exit status, output, time of the exit) of a started process, killed if it outlives `seconds`."""
    try:
        output, _ = process.communicate(timeout=seconds)
    except subprocess.TimeoutExpired:
        process.kill()
        output, _ = process.communicate()
    return process.returncode, output, time.time()


def run_with_fault(fault, arguments):
    """(exit status, output, seconds from the fault to the exit) of pretrain.py with `fault` planted in it."""
    program = FAULTY_PRETRAIN.replace("FAULT", fault)
    status, output, ended = finish(start([sys.executable, "-c", program, *arguments]))
    fault_lines = [line for line in output.splitlines() if line.startswith("fault at ")]
    assert fault_lines, output[-3000:]
    return status, output, ended - float(fault_lines[0].split()[-1])


def run_until(command, line_start, strike):
    """Start `command`, wait for a line starting with `line_start`, call strike(process); (exit status, output,
    seconds from the strike to the exit)."""
    process = start(command)
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(line_start):
            break
    struck = time.time()
    strike(process)
    status, output, ended = finish(process)
    return status, "".join(seen) + output, ended - struck


def left_behind(marker):
    """Processes whose command line holds `marker` (a run's --out: data-loading workers share their parent's)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as file:
                if marker.encode() in file.read():
                    found.append(int(pid))
        except OSError:
            pass
    return found


def error_line(output):
    lines = [line for line in output.splitlines() if line.startswith("error")]
    assert len(lines) == 1, output[-3000:]
    return lines[0]


def assert_ended_cleanly(status, output, seconds, out, limit=PROMPT_SECONDS):
    assert status != 0 and seconds < limit, (status, seconds, output[-3000:])
    assert "Traceback" not in output, output[-3000:]
    time.sleep(0.2)  # the kernel reaps the last children
    assert not left_behind(str(out))


def assert_resumable(out, last_step):
    """The last good checkpoint the line names is the newest snapshot, and whole: what --resume reads of it."""
    assert checkpoints.snapshot_folders(str(out))[0] == str(out / f"step_{last_step:06d}")
    state, model_tensors, optimizer_tensors = checkpoints.read_snapshot(str(out / f"step_{last_step:06d}"))
    assert state["step"] == last_step and model_tensors and optimizer_tensors


def assert_resumes(caption_set, out, last_step):
    """The same, and --resume from it runs to the end."""
    assert_resumable(out, last_step)
    pretrain.main(run_arguments(caption_set, out, "--resume"))
    assert json.loads((out / "training_state.json").read_text())["step"] == 6


def tmpfs_available(folder):
    """Whether this machine lets a test mount a small tmpfs in a mount namespace of its own."""
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {folder}"],
                           capture_output=True)
    return probe.returncode == 0


# ----------------------------------------------------------------------------------------------
# The faults


def test_non_finite_loss_ends_at_once_and_resumes(caption_set, tmp_path):
    out = tmp_path / "run"
    status, output, seconds = run_with_fault(NAN_IN_STEP_THREE, run_arguments(caption_set, out))
    line = error_line(output)
    assert line.startswith("error: loss is not finite at step 3")
    assert f"last good checkpoint: {out / 'step_000002'} (step 2); resume with: python pretrain.py" in line
    assert line.endswith("--resume")
    assert_ended_cleanly(status, output, seconds, out)
    assert_resumes(caption_set, out, 2)


def test_full_disk_removes_the_checkpoint_it_could_not_write(caption_set, tmp_path):
    """The second checkpoint meets a full disk, with two data-loading workers running: on a 40 MB tmpfs where the
    test may mount one (a checkpoint of the tiny model takes 25 MB), else through a save_file that raises ENOSPC."""
    arguments = run_arguments(caption_set, tmp_path / "disk" / "run", "--workers", "2")
    (tmp_path / "disk").mkdir()
    if tmpfs_available(tmp_path / "disk"):
        command = shlex.join([sys.executable, os.path.join(REPO, "pretrain.py"), *arguments])
        script = (f"mount -t tmpfs -o size=40m tmpfs {tmp_path / 'disk'} && {{ {command}; status=$?; "
                  f"cp -a {tmp_path / 'disk' / 'run'} {tmp_path / 'copy'}; exit $status; }}")
        status, output, seconds = run_until(["unshare", "-rm", "sh", "-c", script], "step 4/", lambda process: None)
        out = tmp_path / "copy"
    else:
        status, output, seconds = run_with_fault(DISK_FULL_AT_SECOND_CHECKPOINT, arguments)
        out = tmp_path / "disk" / "run"
    line = error_line(output)
    assert line.startswith(f"error: the disk under {tmp_path / 'disk' / 'run'} is full: ")
    assert "one checkpoint needs 24.6 MB" in line and "(step 2); resume with: " in line
    assert_ended_cleanly(status, output, seconds, tmp_path / "disk" / "run")
    assert sorted(name for name in os.listdir(out) if name.startswith("step_")) == ["step_000002"]
    assert_resumes(caption_set, out, 2)


def test_a_disk_without_room_for_a_checkpoint_is_refused_before_the_run(caption_set, tmp_path, monkeypatch):
    monkeypatch.setattr(failures.shutil, "disk_usage", lambda path: SimpleNamespace(free=10_000_000))
    with pytest.raises(SystemExit) as stop:
        pretrain.main(run_arguments(caption_set, tmp_path / "run"))
    assert str(stop.value.code) == (f"error: the disk under {tmp_path / 'run'} is full: 10.0 MB free, one checkpoint "
                                    "needs 24.6 MB")
    assert not (tmp_path / "run" / "training_state.json").exists()


def test_a_killed_data_loading_worker_ends_the_run(caption_set, tmp_path):
    """What the out-of-memory killer does: SIGKILL to one of the two workers."""
    out = tmp_path / "run"
    command = [sys.executable, os.path.join(REPO, "pretrain.py"), *run_arguments(caption_set, out, "--workers", "2")]

    def kill_a_worker(process):  # the training loader's first worker, started before the held-out loader's
        workers = [int(pid) for pid in os.listdir("/proc") if pid.isdigit() and parent_of(pid) == process.pid]
        os.kill(min(workers), signal.SIGKILL)

    status, output, seconds = run_until(command, "step 3 val", kill_a_worker)  # after the checkpoint of step 2
    line = error_line(output)
    assert "was killed by signal 9 (SIGKILL): out of memory? try fewer --workers or a smaller --micro-batch" in line
    assert f"last good checkpoint: {out / 'step_000002'} (step 2); resume with: " in line and line.endswith("--resume")
    assert_ended_cleanly(status, output, seconds, out)
    assert_resumable(out, 2)


class WorkerReportedLate:
    """A worker whose death the kernel reports `delay` seconds after its connection broke, as a SIGKILLed one's."""

    def __init__(self, delay):
        self.pid, self.reported = 12345, time.monotonic() + delay

    @property
    def exitcode(self):
        return -signal.SIGKILL if time.monotonic() >= self.reported else None


def test_a_broken_connection_waits_for_the_workers_death(monkeypatch):
    """The killed worker's connection breaks before its death is reported: the run must name the death, not the
    ConnectionResetError (the race that made test_a_killed_data_loading_worker_ends_the_run fail now and then)."""
    monkeypatch.setitem(failures.RUN, "workers", [WorkerReportedLate(0.2)])
    cause = failures.describe(ConnectionResetError(104, "Connection reset by peer"))
    assert cause.startswith("data-loading worker (pid 12345) was killed by signal 9 (SIGKILL): out of memory?")
    monkeypatch.setitem(failures.RUN, "workers", [WorkerReportedLate(60)])  # alive: the wait ends, the error named
    started = time.monotonic()
    assert failures.describe(ConnectionResetError(104, "Connection reset by peer")).startswith("ConnectionResetError")
    assert time.monotonic() - started < failures.WORKER_SETTLE_SECONDS + 1


def test_one_of_two_torchrun_processes_killed_ends_the_other(caption_set, tmp_path):
    """Two gloo processes with a data-loading worker each; process 1 is killed with SIGKILL. Process 0 ends within
    failures.PEER_TIMEOUT, in one line, and torchrun with it. (torchrun prints its own summary, a traceback of
    its own ChildFailedError, after the processes' lines: that one is torchrun's, not the run's.)"""
    out = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(REPO, "pretrain.py"), *run_arguments(caption_set, out, "--workers", "1")]

    def kill_process_one(process):
        main_processes = [int(pid) for pid in left_behind(str(out)) if parent_of(str(pid)) == process.pid]
        victim = [pid for pid in main_processes if environment_of(pid).get("RANK") == "1"]
        os.kill(victim[0], signal.SIGKILL)

    status, output, seconds = run_until(command, "step 3 val", kill_process_one)  # after the checkpoint of step 2
    run_output = output.split(TORCHRUN_TRACEBACK)[0]  # what the run's processes printed, before torchrun's summary
    line = error_line(run_output)
    assert line.startswith("error in process 0 of 2: another process of the run died or stopped answering")
    assert f"last good checkpoint: {out / 'step_000002'} (step 2); resume with: " in line and line.endswith("--resume")
    # The killed process's data-loading worker can outlive it by a moment, and the thread that hands its batches'
    # file descriptors over then prints the reset connection (torchrun labels it [rank1]): the last words of the
    # process killed, not a failure of process 0 to end cleanly.
    survivor_output = "".join(line for line in run_output.splitlines(keepends=True) if not line.startswith("[rank1]"))
    assert_ended_cleanly(status, survivor_output, seconds, out, limit=failures.PEER_TIMEOUT.total_seconds())
    assert_resumable(out, 2)


# ----------------------------------------------------------------------------------------------
# Damaged checkpoints


def damage(path, how):
    if how == "truncated":
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
    elif how == "bit-flipped":
        with open(path, "r+b") as file:
            file.seek(os.path.getsize(path) // 2)
            byte = file.read(1)[0]
            file.seek(-1, os.SEEK_CUR)
            file.write(bytes([byte ^ 1]))
    else:
        os.remove(path)


@pytest.mark.parametrize("how, name", [("truncated", "model.safetensors"), ("bit-flipped", "optimizer.safetensors"),
                                       ("missing", "model.safetensors")])
def test_resume_passes_over_a_damaged_snapshot(finished_run, caption_set, tmp_path, capsys, how, name):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage(out / "step_000006" / name, how)
    pretrain.main(run_arguments(caption_set, out, "--resume"))
    printed = capsys.readouterr().out
    problem = "missing" if how == "missing" else "damaged file"
    assert f"resume: passing over {out / 'step_000006' / name}: {problem}" in printed
    assert f"resuming from {out / 'step_000004'}, the newest whole snapshot" in printed
    assert f"resuming {out} at step 4" in printed
    assert checkpoints.check_snapshot(str(out / "step_000006"))["step"] == 6  # written again, whole


def test_resume_refuses_when_no_snapshot_is_whole(finished_run, caption_set, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    damage(out / "step_000006" / "model.safetensors", "bit-flipped")
    damage(out / "step_000004" / "optimizer.safetensors", "truncated")
    with pytest.raises(SystemExit) as stop:
        pretrain.main(run_arguments(caption_set, out, "--resume"))
    message = str(stop.value.code)
    assert message.startswith(f"error: no whole checkpoint to resume from in {out} (") and "\n" not in message
    assert message.endswith("start again with --overwrite")


def test_inspect_and_predict_refuse_a_damaged_file_in_the_same_line(finished_run, caption_set, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(finished_run, out)
    (out / "answers.json").write_text('["예"]', encoding="utf-8")  # what predict.py reads before the weights
    damage(out / "model.safetensors", "bit-flipped")  # in a run, a link to step_000006/'s (copytree copied it)
    expected = (f"error: {out / 'model.safetensors'}: damaged file: its SHA-256 is not the one training_state.json "
                "recorded when it was saved (cut short or changed since)")
    with pytest.raises(SystemExit) as stop:
        load_weights.main(["inspect", str(out / "model.safetensors")])
    assert str(stop.value.code) == expected
    image = os.path.join(caption_set["images"], "image_000.png")
    with pytest.raises(SystemExit) as stop:
        predict.main(["--ckpt", str(out / "model.safetensors"), "--image", image, "--question", "몇 개인가요?"])
    assert str(stop.value.code) == expected


# ----------------------------------------------------------------------------------------------
# Quieter starts


@pytest.mark.parametrize("cores, processes, workers", [(1, 1, 0), (2, 1, 2), (2, 2, 0), (64, 1, 8), (16, 2, 8)])
def test_workers_default_to_what_the_machine_has(monkeypatch, cores, processes, workers):
    monkeypatch.setattr(training.os, "sched_getaffinity", lambda pid: set(range(cores)))
    monkeypatch.setenv("LOCAL_WORLD_SIZE", str(processes))
    args = pretrain.parse_args(["--captions", "c", "--images", "i", "--tokenizer", "t"])
    settled = training.settle_flags(args, pretrain.PRETRAIN_DEFAULTS, pretrain.PRETRAIN_DEMO_DEFAULTS, 0, 1,
                                    torch.device("cpu"))
    assert settled.workers == workers


def test_no_data_loader_warning_with_the_default_workers():
    """The DataLoader warns when it is given more workers than the machine has cores (the old default, 4, did on
    2 cores)."""
    args = pretrain.parse_args(["--captions", "c", "--images", "i", "--tokenizer", "t", "--batch", "8"])
    settled = training.settle_flags(args, pretrain.PRETRAIN_DEFAULTS, pretrain.PRETRAIN_DEMO_DEFAULTS, 0, 1,
                                    torch.device("cpu"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.make_loader(list(range(8)), None, settled, torch.device("cpu"), start_step=0)


# ----------------------------------------------------------------------------------------------
# Helpers of the tests


def parent_of(pid):
    with open(f"/proc/{pid}/stat") as file:
        return int(file.read().rsplit(") ", 1)[1].split()[1])


def environment_of(pid):
    with open(f"/proc/{pid}/environ", "rb") as file:
        pairs = [entry.split(b"=", 1) for entry in file.read().split(b"\0") if b"=" in entry]
    return {key.decode(): value.decode() for key, value in pairs}

