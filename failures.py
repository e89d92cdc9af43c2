"""How a run ends when something fails: at once, in one line, with no process left behind and nothing lost.

Off the reading path: read it when a run has ended with an `error:` line and you want to know what the line
means, or how a failure is kept from leaving a process idle on a GPU. training.run_command sends every failure
of a training command here. Whatever it was (a full disk, a killed data-loading worker, a dead torchrun process,
a bug), the process ends within seconds with exit status 1 and one line on stderr: the cause, the last good
checkpoint, and the command that resumes from it.

    error: the disk under out/run is full: 18.0 MB free, one checkpoint needs 23.8 MB; last good checkpoint:
    out/run/step_000002 (step 2); resume with: python pretrain.py --demo --out out/run --resume

Choices:
- Bad input (a ValueError or FileNotFoundError of the scripts' own checks) gets the cause alone: resuming would
  meet it again.
- Data-loading workers ignore SIGTERM and SIGINT (training.worker_signals), so that a preempted run's last step
  can finish; Python's exit would then wait for them forever. A failing process kills them with SIGKILL first.
- The causes the line knows by name: a full disk (with the size of one checkpoint), a data-loading worker that
  died (of what signal; for SIGKILL, the out-of-memory killer's, what to change), an error inside a worker,
  another torchrun process gone. Any other exception is named by its type and first line, and its whole
  traceback is kept in OUT/traceback.txt.
- Under torchrun a collective waits at most PEER_TIMEOUT for the other processes, so that when one dies the
  others end within it. Where process 0 alone works for longer (the demo set, an evaluation, a checkpoint),
  the others wait in training.wait_for_process_0 instead, up to 30 minutes; with --compile, each process's
  first step, which compiles, must fit in PEER_TIMEOUT of the others'.
- A run refuses to start when the disk under --out cannot hold one checkpoint.
"""

import errno
import multiprocessing
import os
import re
import shlex
import shutil
import signal
import sys
import time
import traceback
from datetime import timedelta

import checkpoints

PEER_TIMEOUT = timedelta(seconds=60)  # the longest a torchrun process waits in a collective for the others
WORKER_JOIN_SECONDS = 5  # how long a killed data-loading worker is waited for
WORKER_SETTLE_SECONDS = 2  # how long a broken connection to a worker waits for the kernel to report it dead
DISK_FULL = os.strerror(errno.ENOSPC)  # "No space left on device", also inside safetensors' own errors
SIGNAL_HINTS = {  # what a data-loading worker's death by these signals usually means
    signal.SIGKILL: ": out of memory? try fewer --workers or a smaller --micro-batch",  # the out-of-memory killer's
    signal.SIGBUS: ": out of shared memory? enlarge /dev/shm (docker run --shm-size) or use fewer --workers",
}

# What the exit line of a failing run names, filled in as the run goes: "out" by training.claim_output_folder,
# "checkpoint_bytes" by check_free_space, "workers" by WorkerContext. training.run_command empties it before each
# command.
RUN = {}


# ----------------------------------------------------------------------------------------------
# Before the run: room for a checkpoint


def check_free_space(out, model, rank):
    """Refuse to start a run whose --out cannot hold one more checkpoint (the exit line of a full disk, at once)."""
    RUN["checkpoint_bytes"] = checkpoints.checkpoint_bytes(model)
    if rank == 0 and shutil.disk_usage(out).free < RUN["checkpoint_bytes"]:
        raise ValueError(disk_full_message(out))


def disk_full_message(out):
    free = shutil.disk_usage(out).free
    needed = RUN["checkpoint_bytes"]
    return f"the disk under {out} is full: {megabytes(free)} free, one checkpoint needs {megabytes(needed)}"


def megabytes(count):
    return f"{count / 1e6:.1f} MB"


# ----------------------------------------------------------------------------------------------
# Data-loading workers that can be told apart


class WorkerContext(type(multiprocessing.get_context())):
    """The default way of starting processes, for data-loading workers (training.make_loader passes it to the
    DataLoader): every worker it starts is kept in RUN["workers"], so that a failure can say which one died and of
    what."""

    class Process(type(multiprocessing.get_context()).Process):
        def start(self):
            super().start()
            RUN.setdefault("workers", []).append(self)


WORKER_CONTEXT = WorkerContext()


# ----------------------------------------------------------------------------------------------
# Ending a failed run


def end_helper_processes():
    """SIGKILL this process's data-loading workers and wait for them: they ignore SIGTERM, which is all that
    Python's own exit would send them. Their deaths are not errors here, so torch's SIGCHLD check is off meanwhile."""
    torch_check = signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    children = multiprocessing.active_children()
    for child in children:
        child.kill()
    for child in children:
        child.join(WORKER_JOIN_SECONDS)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL if torch_check is None else torch_check)


class ExitLine(int):
    """The exit status 1 of a failed command, carrying its one line, which training.run_command has printed
    already: SystemExit(ExitLine(line)) ends the process with status 1 and prints nothing more (Python prints a
    SystemExit's code only when it is not an int), while a caller that catches it reads the line with str()."""

    def __new__(cls, line):
        status = super().__new__(cls, 1)
        status.line = line
        return status

    def __str__(self):
        return self.line


def exit_line(error):
    """The one line a failed command ends with. Bad input (a ValueError or FileNotFoundError of the main process)
    says what is wrong; any other failure of a run with an output folder also names the last good checkpoint and
    the command that resumes from it (or starts again, when there is none yet)."""
    world_size, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    who = f"error in process {rank} of {world_size}" if world_size > 1 else "error"
    cause, out = describe(error), RUN.get("out")
    if out is None or is_bad_input(error):
        return f"{who}: {cause}"
    kept = keep_traceback(error, out, rank)
    if kept:
        cause += f" (traceback in {kept})"
    snapshot = last_good_checkpoint(out)
    if snapshot is None:
        return f"{who}: {cause}; no checkpoint saved yet; start again with: {command_line(resume=False)}"
    step = checkpoints.read_json(os.path.join(snapshot, checkpoints.STATE_FILE))["step"]
    return f"{who}: {cause}; last good checkpoint: {snapshot} (step {step}); resume with: {command_line(resume=True)}"


def is_bad_input(error):
    """A refusal by the scripts' own checks, which resuming would meet again; an error inside a data-loading worker
    comes back as its own type but is not one."""
    return isinstance(error, (ValueError, FileNotFoundError)) and "in DataLoader worker process" not in str(error)


def describe(error):
    """What went wrong, in one line, for the causes a long run meets; any other exception by its type and first line.
    A data-loading worker that died is the cause whatever the exception it left in the main process (torch's
    RuntimeError, or a ConnectionResetError when it died handing over a batch)."""
    text = str(error)
    dead_workers = workers_that_died(error)
    failed_worker = re.search(r"in DataLoader worker process (\d+)", text)  # torch's words for an exception in one
    if isinstance(error, KeyboardInterrupt):
        return "stopped at once by a second Ctrl-C"
    if DISK_FULL in text or (isinstance(error, OSError) and error.errno == errno.ENOSPC):
        return disk_full_message(RUN["out"]) if "checkpoint_bytes" in RUN else f"the disk is full ({first_line(text)})"
    if dead_workers:
        return worker_death_message(dead_workers[0])
    if failed_worker:
        return f"data-loading worker {failed_worker.group(1)} failed: {text.strip().splitlines()[-1]}"
    if isinstance(error, RuntimeError) and ("gloo" in text or "NCCL" in text):
        return f"another process of the run died or stopped answering ({first_line(text).split('. ')[0]})"
    if isinstance(error, (ValueError, FileNotFoundError, FloatingPointError)):  # the scripts' own words
        return first_line(text)
    return f"{type(error).__name__}: {first_line(text)}"


def workers_that_died(error):
    """The data-loading workers that ended with a failure. A killed worker's end of its connection closes a moment
    before the kernel reports it dead, so after a broken connection this waits up to WORKER_SETTLE_SECONDS for
    that report: otherwise the ConnectionResetError would be named instead of the worker's death."""
    workers = RUN.get("workers", [])
    deadline = time.monotonic() + (WORKER_SETTLE_SECONDS if isinstance(error, (ConnectionError, EOFError)) else 0)
    while True:
        dead = [worker for worker in workers if worker.exitcode not in (None, 0)]
        if dead or time.monotonic() >= deadline:
            return dead
        time.sleep(0.01)


def worker_death_message(worker):
    """Which data-loading worker died, and of what; for the signals that usually mean too little memory, what to
    change."""
    if worker.exitcode > 0:
        return f"data-loading worker (pid {worker.pid}) exited with status {worker.exitcode}"
    number = signal.Signals(-worker.exitcode)
    return (f"data-loading worker (pid {worker.pid}) was killed by signal {number.value} ({number.name})"
            + SIGNAL_HINTS.get(number, ""))


def first_line(text):
    """The first line of an error's text, without gloo's source position."""
    line = next((line for line in text.strip().splitlines() if line.strip()), "")
    return re.sub(r"^\[[^\]]*\.(cc|cpp):\d+\] ", "", line.strip())


def keep_traceback(error, out, rank):
    """Write the traceback of an unexpected error to OUT/traceback.txt (traceback_process<rank>.txt under torchrun);
    the path, or None for a full disk or when it cannot be written."""
    if DISK_FULL in str(error) or isinstance(error, (KeyboardInterrupt, FloatingPointError)):
        return None
    path = os.path.join(out, "traceback.txt" if rank == 0 else f"traceback_process{rank}.txt")
    try:
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(traceback.format_exception(error))
    except OSError:
        return None
    return path


def last_good_checkpoint(out):
    """The newest step_NNNNNN/ folder of `out` whose files are whole (checkpoints.check_snapshot), or None."""
    for folder in checkpoints.snapshot_folders(out):
        try:
            checkpoints.check_snapshot(folder)
        except (OSError, ValueError):
            continue
        return folder
    return None


def command_line(resume):
    """This process's command line again, with --resume (or without it, to start again)."""
    arguments = [argument for argument in sys.argv[1:] if argument not in ("--resume", "--overwrite")]
    return shlex.join(["python", os.path.basename(sys.argv[0]), *arguments, *(["--resume"] if resume else [])])
