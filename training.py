"""The training machinery pretrain.py and finetune.py share: flags, schedule, data order, processes, logs.

Off the reading path: the two training scripts show their own step (learning rate, forward, backward under
DDP, update) and call into this file for the rest. Read it when you need to know how a flag gets its value,
why a resumed run replays exactly the batches it would have seen, how torchrun's processes split a batch, or
what is in metrics.jsonl. Checkpoint files are checkpoints.py's, the curves curves.py's.

    python -c "import training; print([round(training.lr_at(s, 10, 1.0), 2) for s in range(11)])"

Choices where the papers are silent:
- Every random draw of an update (MLM masks, ITM pairs, dropout) is seeded from (seed, step, micro-batch
  index), and the data order is a fixed function of the seed (epoch e is the permutation drawn from
  (seed, e)), so no random state needs saving: resuming at step k replays what the uninterrupted run did,
  and K processes with micro-batches of m match one process accumulating K micro-batches of m.
- Data parallelism is PyTorch's DistributedDataParallel under torchrun, one process per GPU, on one node or
  several (torchrun --nnodes).
- The learning-rate schedule is METER's (transformers' polynomial decay with warmup, power 1, which is linear):
  update 0 runs at lr 0, the peak is reached after 10% of the updates, then a linear decay to 0.
- No gradient clipping (METER uses none); the gradient norm is logged.
- SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) ends the current step, saves a checkpoint and exits
  with the command that resumes; data-loading workers ignore both, so the step in flight can finish.
- Any other end of a command (a full disk, a killed worker, a dead torchrun process, a bug) is failures.py's:
  one line, no process left behind.
- --workers left unset is what the machine has: one data-loading worker per core this process may use (the
  cores shared among the processes of the machine), at most MAX_AUTO_WORKERS, none on a single core.
"""

import argparse
import ctypes
import functools
import hashlib
import json
import math
import os
import signal
import socket
import sys
import time
from datetime import timedelta

import torch
import torch.distributed as distributed
from torch.utils.checkpoint import checkpoint

import failures
from checkpoints import process_alive, read_json, write_json, write_jsonl
from curves import draw_curves
from demo_data import WORLDS, make_demo, world_suffix
from formats import read_json_or_jsonl
from model import CONFIGS, PostNormLayer, PreNormBlock

WARMUP_SHARE = 0.1
COMPILE_MODES = ["layers", "step"]  # --compile's: every transformer layer, or the whole forward pass and losses
PROCESS_0_WAIT = timedelta(minutes=30)  # the longest the other torchrun processes wait for process 0's own work
MAX_AUTO_WORKERS = 8  # --workers auto: enough to feed the base step on a GPU (README, "Speed")
PR_SET_PDEATHSIG = 1  # Linux prctl option: the signal a process gets when its parent dies


# ----------------------------------------------------------------------------------------------
# Command line: the same flags in both scripts, and the one place where a flag left unset gets its value


def add_training_flags(parser, recipe, demo_recipe):
    """The flags both training scripts take. Those whose default is the script's recipe (`recipe`, and
    `demo_recipe` over it with --demo) are parsed as None and get their value in `settle_flags`."""

    def default_text(name):
        def shown(value):
            return "a third of --steps" if value is None else value  # finetune.py's --eval-every
        demo_value = demo_recipe.get(name, recipe.get(name))
        return f"(default: {shown(recipe.get(name))}; with --demo: {shown(demo_value)})"

    parser.add_argument("--config", choices=sorted(CONFIGS), help=f"model size {default_text('config')}")
    parser.add_argument("--batch", type=int, help=f"global batch size, over all processes {default_text('batch')}")
    parser.add_argument("--micro-batch", type=int, help="samples per forward/backward pass; the global batch is "
                        "reached by gradient accumulation (default: the batch divided by the number of processes)")
    parser.add_argument("--steps", type=int, help=f"number of optimizer updates {default_text('steps')}")
    parser.add_argument("--lr", type=float, help=f"base learning rate of the encoders; fusion and heads use "
                        f"multiples of it {default_text('lr')}")
    parser.add_argument("--image-size", type=int, help="image side in pixels (default: the model's)")
    parser.add_argument("--max-len", type=int, help=f"text length in tokens, [CLS] and [SEP] included {default_text('max_len')}")
    parser.add_argument("--seed", type=int, default=0, help="seed of initialisation, data order, masks and dropout (default: 0)")
    parser.add_argument("--log-every", type=int, help=f"steps between log lines {default_text('log_every')}")
    parser.add_argument("--eval-every", type=int, help=f"steps between held-out (pretraining) or dev (fine-tuning) "
                        f"evaluations {default_text('eval_every')}")
    parser.add_argument("--save-every", type=int, help=f"steps between checkpoints {default_text('save_every')}")
    parser.add_argument("--out", help=f"output folder {default_text('out')}")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run "
                        "(without it such a folder is refused; --demo runs overwrite their own folders)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="compute dtype: bf16 autocast or plain fp32 "
                        "(default: bf16 on CUDA, fp32 on CPU); weights, optimizer state and losses stay fp32")
    parser.add_argument("--workers", type=int, help=f"data loading processes {default_text('workers')}; auto: one "
                        f"per core, the cores shared among the machine's processes, at most {MAX_AUTO_WORKERS}, "
                        "none on a single core")
    parser.add_argument("--compile", nargs="?", const="layers", choices=COMPILE_MODES, help="torch.compile every "
                        "transformer layer (layers, what a bare --compile means) or the whole step: the forward pass "
                        "and the losses as one graph, its backward pass compiled with it (step)")
    parser.add_argument("--recompute", action="store_true", help="recompute each layer's activations in the "
                        "backward pass instead of keeping them: about a third more compute, far less memory")
    parser.add_argument("--max-bad-share", type=float, default=0.05,
                        help="stop when more than this share of the entries is unusable (default: 0.05)")


def add_encoder_flags(parser, condition=""):
    """--clip, --text and --arch: the fresh model that load_weights.build_fresh_model makes."""
    parser.add_argument("--clip", help=f"{condition}CLIP ViT-B/16 safetensors for the image encoder (default: random)")
    parser.add_argument("--text", help=f"{condition}KLUE RoBERTa safetensors for the text encoder (default: random)")
    parser.add_argument("--arch", choices=["meter", "vilt"], default="meter", help=f"{condition}Ko-METER (two "
                        "streams + co-attention) or the ViLT single-stream baseline (default: meter)")


def add_demo_flags(parser, demo_help, seeds=False):
    """--demo, --demo-dir and --world (and --seeds for finetune.py): the flags of the synthetic demo."""
    parser.add_argument("--demo", action="store_true", help=demo_help)
    parser.add_argument("--demo-dir", help="where the demo set lives (default: demo_data, or demo_data_<world>)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes", help="with --demo: the synthetic "
                        "world, shapes (shapes_world.py) or bars (bars_world.py); each has its own data and output "
                        "folders (default: shapes)")
    if seeds:
        parser.add_argument("--seeds", type=at_least_one, default=1, help="run each fine-tuning this many times, "
                            "with seeds --seed, --seed + 1, ..., and print the mean ± standard deviation; the runs "
                            "after the first go to OUT_seed<s> (default: 1)")


def at_least_one(text):
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return int(text)


def parse_flags(parser, argv, required):
    """Parse the command line and refuse a run without the `required` flags unless it is a demo."""
    args = parser.parse_args(argv)
    for name in required if not args.demo else ():
        if getattr(args, name) is None:
            parser.error(f"--{name} is required (or use --demo)")
    return args


def settle_flags(args, recipe, demo_recipe, rank, world_size, device):
    """A copy of the flags with every one left unset given its value. Flags with one fixed default (--seed 0,
    --max-bad-share 0.05, --arch meter, ...) have it in their argparse definition; every value that depends on
    the script, on --demo or on the machine is given here, and only here:
    - with --demo, the demo set of --world (made by process 0 while the others wait) gives the data flags,
      and its folders get the world's suffix;
    - the script's recipe gives the rest (`demo_recipe` over it with --demo); --eval-every left unset in
      finetune.py's recipe means thirds of the run, the paper's table;
    - --dtype: bf16 on CUDA, fp32 elsewhere; --micro-batch: the batch divided by the number of processes;
      --workers "auto" in the recipe: what the machine has (`auto_workers`).
    --image-size is left as given: the model decides it (its config, or a pretrained checkpoint's)."""
    settled = argparse.Namespace(**vars(args))
    if args.demo:
        settled.demo_dir = args.demo_dir or "demo_data" + world_suffix(args.world)
        settled.out = args.out or demo_recipe["out"] + world_suffix(args.world)
        if rank != 0:  # process 0 makes the demo set while the others wait
            wait_for_process_0(world_size)
        paths = make_demo(settled.demo_dir, seed=0, world=args.world)
        if rank == 0:
            wait_for_process_0(world_size)
        for flag, key in [("captions", "captions"), ("train", "vqa_train"), ("dev", "vqa_dev"),
                          ("images", "images"), ("tokenizer", "tokenizer"), ("dev_objects", "dev_objects")]:
            if hasattr(args, flag) and getattr(args, flag) is None:
                setattr(settled, flag, paths[key])
        settled.overwrite = True  # a demo's folders are its own
    for name, value in {**recipe, **(demo_recipe if args.demo else {})}.items():
        if getattr(settled, name) is None:
            setattr(settled, name, value.format(world=world_suffix(args.world)) if isinstance(value, str) else value)
    settled.eval_every = settled.eval_every or math.ceil(settled.steps / 3)
    settled.workers = auto_workers() if settled.workers == "auto" else settled.workers
    settled.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    if settled.batch % world_size:
        raise ValueError(f"--batch {settled.batch} is not divisible by the {world_size} processes")
    per_process = settled.batch // world_size
    settled.micro_batch = args.micro_batch or per_process
    if per_process % settled.micro_batch:
        raise ValueError(f"--micro-batch {settled.micro_batch} does not divide the {per_process} samples per process")
    return settled


def auto_workers():
    """Data-loading workers for this process: one per core it may use, the cores shared among the processes of
    this machine (torchrun's LOCAL_WORLD_SIZE), at most MAX_AUTO_WORKERS; none when that leaves one core, where a
    worker would only take turns with the main process."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    per_process = cores // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return min(per_process, MAX_AUTO_WORKERS) if per_process > 1 else 0


# ----------------------------------------------------------------------------------------------
# The learning-rate schedule


def lr_at(step, total_steps, peak_lr, warmup_share=WARMUP_SHARE):
    """Learning rate of update number `step` (0-based): linear warmup from 0 over the first 10% of the
    updates, then linear decay to 0."""
    warmup_steps = max(1, round(warmup_share * total_steps))
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


# ----------------------------------------------------------------------------------------------
# Deterministic data order, and the loaders


def derived_seed(*parts):
    """A 63-bit seed from (seed, step, micro-batch index, ...): independent streams for every draw."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seeded_generator(*parts):
    return torch.Generator().manual_seed(derived_seed(*parts))


class ShuffledStream(torch.utils.data.Dataset):
    """An endless, deterministic stream over a data set: epoch e is the permutation drawn from (seed, e),
    and position p of the stream is item permutation[p mod N] of epoch p // N. The stream position of a
    step is step * batch, so the data order needs no saved state."""

    def __init__(self, dataset, seed):
        self.dataset = dataset
        self.seed = seed
        self.epoch = None
        self.permutation = None

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, position):
        epoch, offset = divmod(position, len(self.dataset))
        if epoch != self.epoch:
            self.epoch = epoch
            self.permutation = torch.randperm(len(self.dataset), generator=seeded_generator(self.seed, "epoch", epoch))
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(epoch)
        return self.dataset[int(self.permutation[offset])]


class StepBatches:
    """Batch sampler over a ShuffledStream: for each step from start_step, this process's micro-batches.
    The global batch of step s is stream positions [s * batch, (s + 1) * batch); process r takes the r-th
    of world_size equal slices (like DistributedSampler) and cuts it into micro-batches."""

    def __init__(self, start_step, total_steps, batch_size, micro_batch_size, rank, world_size):
        self.start_step, self.total_steps = start_step, total_steps
        self.batch_size, self.micro_batch_size = batch_size, micro_batch_size
        self.rank, self.world_size = rank, world_size
        self.per_process = batch_size // world_size

    def __len__(self):
        return (self.total_steps - self.start_step) * (self.per_process // self.micro_batch_size)

    def __iter__(self):
        for step in range(self.start_step, self.total_steps):
            first = step * self.batch_size + self.rank * self.per_process
            for start in range(first, first + self.per_process, self.micro_batch_size):
                yield list(range(start, start + self.micro_batch_size))


def worker_signals(worker_id):
    """A DataLoader worker leaves SIGINT and SIGTERM to the main process, which finishes its step first, and on
    Linux dies with it (a SIGKILL the kernel sends when the main process ends, however it ends): no worker outlives
    a killed main process, nor holds its torchrun connections open. A failing main process ends its workers with
    SIGKILL itself (failures.end_helper_processes)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def make_loader(dataset, collate, args, device, start_step=None, rank=0, world_size=1):
    """With start_step: the training DataLoader, this process's micro-batches for steps start_step ..
    args.steps in the deterministic order. Without: a plain in-order loader for evaluation."""
    workers = {"num_workers": args.workers, "worker_init_fn": worker_signals, "pin_memory": device.type == "cuda",
               "collate_fn": collate, "multiprocessing_context": failures.WORKER_CONTEXT if args.workers else None}
    if start_step is None:  # evaluation: the same workers serve every evaluation of the run
        return torch.utils.data.DataLoader(dataset, batch_size=args.micro_batch,
                                           persistent_workers=args.workers > 0, **workers)
    sampler = StepBatches(start_step, args.steps, args.batch, args.micro_batch, rank, world_size)
    return torch.utils.data.DataLoader(
        ShuffledStream(dataset, args.seed), batch_sampler=sampler,
        generator=torch.Generator().manual_seed(args.seed), **workers)  # worker seeds; the global RNG untouched


def to_device(batch, device):
    """Tensors to the device; from pinned memory the copy runs while the GPU works."""
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


# ----------------------------------------------------------------------------------------------
# Processes: torchrun and DistributedDataParallel


def setup_processes(device_flag):
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl on
    CUDA, gloo on CPU; LOCAL_RANK picks the GPU on each node. A collective that waits longer than
    failures.PEER_TIMEOUT for another process fails: a dead process ends the others."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(device_flag or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world_size > 1 and not distributed.is_initialized():
        distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo",
                                       timeout=failures.PEER_TIMEOUT)
        SLOW_GROUP.append(distributed.new_group(timeout=PROCESS_0_WAIT))  # for wait_for_process_0
    return rank, world_size, device


SLOW_GROUP = []  # the process group of wait_for_process_0, made by setup_processes


def wait_for_process_0(world_size):
    """Every process waits here until all have arrived, up to PROCESS_0_WAIT rather than failures.PEER_TIMEOUT:
    where process 0 alone does work that may take minutes (the demo set, a held-out evaluation, a checkpoint)."""
    if world_size > 1:
        distributed.barrier(group=SLOW_GROUP[-1])


class Objective(torch.nn.Module):
    """A model and its loss function as one module: DistributedDataParallel must see the whole forward
    pass of a step in its own forward to know when the gradients are ready to be all-reduced."""

    def __init__(self, model, losses):
        super().__init__()
        self.model = model
        self.losses = losses

    def forward(self, batch, **normalisers):
        return self.losses(self.model, batch, **normalisers)


def wrap_objective(model, losses, args, world_size, device):
    """(the module the loop calls, the DDP module or None). The first is Objective, its layers recomputed in the
    backward pass with --recompute and compiled with --compile layers, inside DistributedDataParallel when there
    are processes, and all of it compiled with --compile step. The loop sets the DDP module's own
    require_backward_grad_sync flag, which torch.compile's wrapper would not pass on."""
    if args.recompute:
        recompute_layers(model)
    if args.compile == "layers":
        compile_layers(model)
    objective = Objective(model, losses)
    if world_size > 1:
        device_ids = [device] if device.type == "cuda" else None
        objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
    ddp = objective if world_size > 1 else None
    return (compile_step(objective) if args.compile == "step" else objective), ddp


def compile_step(objective):
    """torch.compile the whole Objective: the model's forward pass and the losses as one graph, and their backward
    pass compiled from it by AOTAutograd. Under DDP it compiles the DDP module, PyTorch's supported way, which
    splits the graph at the gradient buckets so that all-reduces still overlap the backward pass.

    PyTorch's automatic dynamic shapes: the first step compiles for its text length and MLM normaliser, the
    first one that differs compiles once more with them dynamic, and every later step reuses that. (dynamic=True,
    every size dynamic from the start, fails in inductor on the symbolic image size with torch 2.13.)"""
    # the MLM logits are taken at the masked tokens only, a size the data decides: traced as a size of its own
    # rather than breaking the step into three graphs there
    torch._dynamo.config.capture_dynamic_output_shape_ops = True
    return torch.compile(objective)


def compile_layers(model):
    """torch.compile every transformer layer in place. The model's own Python (the encoders' loops, fuse)
    stays eager, so model.vision, model.text and model.fuse, called alone or together, all run compiled
    layers."""
    for module in model.modules():
        if isinstance(module, (PreNormBlock, PostNormLayer)):
            module.compile()


def recompute_layers(model):
    """Trade compute for memory: every transformer layer keeps only its input for the backward pass and runs
    its forward again there (torch.utils.checkpoint, non-reentrant, dropout replayed with the same random
    state, so the gradients are the same). Lets large micro-batches fit at 384 and 576 px."""
    for module in model.modules():
        if isinstance(module, (PreNormBlock, PostNormLayer)):
            module.forward = functools.partial(checkpoint, module.forward, use_reentrant=False)


def sum_across_processes(sums, world_size):
    """{name: tensor} added up over processes -> {name: float}; the names travel in a fixed order."""
    names = sorted(sums)
    stacked = torch.stack([sums[name].double() for name in names])
    if world_size > 1:
        distributed.all_reduce(stacked)
    return dict(zip(names, stacked.tolist()))


def add_sums(total, sums):
    """total[name] += sums[name], tensors or floats alike."""
    for name, value in sums.items():
        total[name] = total.get(name, 0) + value
    return total


def run_command(command):
    """Run a training command so that however it ends, it ends at once, in one line, with no data-loading worker
    left behind: bad input says what is wrong; any other failure also names the last good checkpoint and the
    command that resumes (failures.py); a stop signal's line says the same after its checkpoint."""
    failures.RUN.clear()
    handlers = {number: signal.getsignal(number) for number in (signal.SIGTERM, signal.SIGINT, signal.SIGCHLD)}
    try:
        command()
    except BaseException as error:
        # the run is ending: a stop signal now could only cut its last line, and torch's SIGCHLD handler would
        # raise again, mid-line, for the worker whose death is being reported
        for number in handlers:
            signal.signal(number, signal.SIG_DFL if number == signal.SIGCHLD else signal.SIG_IGN)
        line = None if isinstance(error, SystemExit) else failures.exit_line(error)  # before the workers are killed
        failures.end_helper_processes()
        if line is None:
            raise
        # printed here, while the stop signals are ignored: under torchrun the survivors get a SIGTERM when a
        # process dies, and one that came after the handlers below are restored would cut the line off unprinted
        print(line, file=sys.stderr, flush=True)
        raise SystemExit(failures.ExitLine(line)) from error
    finally:
        if distributed.is_initialized():
            distributed.destroy_process_group()
        for number, handler in handlers.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)  # None: set outside Python


# ----------------------------------------------------------------------------------------------
# The output folder of a run, and stopping on a signal


class RunFolder:
    """--out for the length of a run, on every process. Made at the start of `train`, it
    - refuses an --out that holds a run (finished or not) unless --resume or --overwrite says what to do with
      it, and one that a live process on this machine is training into; marks the folder as running (process 0);
    - catches SIGTERM and SIGINT (a scheduler's preemption, Ctrl-C): `stop_requested` turns true and the loop
      ends after its step, with a checkpoint (`stop`). A second Ctrl-C stops at once.
    `finish` releases the folder and the signals at the end of a run."""

    def __init__(self, args, rank):
        self.out, self.rank, self.stop_requested = args.out, rank, None
        failures.RUN["out"] = args.out  # the folder a failure's exit line names
        if rank == 0:
            self.claim(args)
        self.previous_handlers = {number: signal.signal(number, self.handle) for number in (signal.SIGTERM, signal.SIGINT)}

    def claim(self, args):
        os.makedirs(args.out, exist_ok=True)
        lock_path = os.path.join(args.out, "running.json")
        if os.path.exists(lock_path):
            lock = read_json(lock_path)
            if lock.get("host") == socket.gethostname() and lock.get("pid") != os.getpid() and isinstance(lock.get("pid"), int) \
                    and process_alive(lock["pid"]):
                raise ValueError(f"{args.out}: process {lock['pid']} on this machine is training into it; "
                                 "choose another --out or stop that run first")
        state_path = os.path.join(args.out, "training_state.json")
        if os.path.exists(state_path) and not (args.resume or args.overwrite):
            state = read_json(state_path)
            finished = state["step"] >= state["args"]["steps"]
            raise ValueError(f"{args.out} holds a {'finished' if finished else 'stopped'} run (step {state['step']} of "
                             f"{state['args']['steps']}): add --resume to continue it or --overwrite to start again")
        write_json(lock_path, {"host": socket.gethostname(), "pid": os.getpid()})

    def check_room_for(self, model):
        """Refuse to start when the disk under --out cannot hold one checkpoint of `model`."""
        failures.check_free_space(self.out, model, self.rank)

    def handle(self, number, frame):
        if self.stop_requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.stop_requested = signal.Signals(number).name

    def stop(self, step, signal_name):
        """End the run after the checkpoint of `step`, saying how to resume it."""
        self.finish()
        raise SystemExit(f"stopped by {signal_name or 'a signal to another process'} after step {step}, checkpoint "
                         f"saved in {self.out}; resume with: {failures.command_line(resume=True)}")

    def finish(self):
        for number, handler in self.previous_handlers.items():
            signal.signal(number, handler)
        if self.rank == 0 and os.path.exists(os.path.join(self.out, "running.json")):
            os.remove(os.path.join(self.out, "running.json"))




# ----------------------------------------------------------------------------------------------
# What a run tells: log lines on the terminal and in metrics.jsonl, curves.png


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def named_values(means):
    return " | ".join(f"{name} {value:.4f}" for name, value in means.items())


class RunLog:
    """OUT/metrics.jsonl and the terminal, under the same names: a training line every --log-every steps (loss
    and accuracy means over those steps, lr, gradient norm, samples per second, time left), an evaluation line
    ("val" in pretraining, "dev" in fine-tuning), and curves.png redrawn at each checkpoint. On resume, lines
    the interrupted run wrote after its checkpoint are dropped, so the file reads as one run."""

    def __init__(self, args, start_step):
        self.path, self.steps, self.batch = os.path.join(args.out, "metrics.jsonl"), args.steps, args.batch
        kept = [row for row in self.read() if row["step"] <= start_step] if args.resume else []
        write_jsonl(self.path, kept)
        self.last_step, self.last_time = start_step, time.time()
        if args.resume:
            print(f"resuming {args.out} at step {start_step}", flush=True)

    def read(self):
        return read_json_or_jsonl(self.path) if os.path.exists(self.path) else []

    def write(self, record):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def train_line(self, step, lr, means, grad_norm):
        elapsed, steps = time.time() - self.last_time, max(step - self.last_step, 1)
        self.last_step, self.last_time = step, time.time()
        samples_per_s = steps * self.batch / max(elapsed, 1e-9)
        self.write({"step": step, "split": "train", "lr": lr, **means, "grad_norm": grad_norm,
                    "samples_per_s": samples_per_s})
        print(f"step {step}/{self.steps} | lr {lr:.2e} | {named_values(means)} | grad norm {grad_norm:.3f} | "
              f"{samples_per_s:.1f} samples/s | ETA {format_duration((self.steps - step) * elapsed / steps)}", flush=True)

    def eval_line(self, step, split, means):
        self.write({"step": step, "split": split, **means})
        print(f"step {step} {split} | {named_values(means)}", flush=True)

    def saved(self, step):
        """A checkpoint of `step` is whole on disk: redraw the curves."""
        draw_curves(self.read(), os.path.join(os.path.dirname(self.path), "curves.png"))
