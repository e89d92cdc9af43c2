"""The training machinery pretrain.py and finetune.py share: flags, schedule, data order, processes, logs.

Off the reading path: the two training scripts call into this file so that their loops stay one screen
long. Read it when you need to know how a flag behaves, why a resumed run replays exactly the batches it
would have seen, how torchrun's processes split a batch, or what is in metrics.jsonl and curves.png.
Checkpoint files are checkpoints.py's.

    python -c "import training; print([round(training.lr_at(s, 10, 1.0), 2) for s in range(11)])"

Choices where the papers are silent:
- Every random draw of an update (MLM masks, ITM pairs, dropout) is seeded from (seed, step, micro-batch
  index), and the data order is a fixed function of the seed (epoch e is the permutation drawn from
  (seed, e)), so no random state needs saving: resuming at step k replays what the uninterrupted run did,
  and K processes with micro-batches of m match one process accumulating K micro-batches of m.
- Data parallelism is PyTorch's DistributedDataParallel under torchrun, one process per GPU, on one node or
  several (torchrun --nnodes). Each process backpropagates its share of the global mean loss; DDP averages
  gradients over processes, so the loss is multiplied by the number of processes first (see `backward`).
  Gradients are all-reduced only on the last micro-batch of a step, overlapped with its backward pass.
- The learning-rate schedule is transformers' get_linear_schedule_with_warmup, which METER uses: update 0
  runs at lr 0, the peak is reached after 10% of the updates, then a linear decay to 0.
- No gradient clipping (METER uses none); the gradient norm is logged.
- SIGTERM or SIGINT (a scheduler's preemption, Ctrl-C) ends the current step, saves a checkpoint and exits
  with the command that resumes; data-loading workers ignore both, so the step in flight can finish.
"""

import dataclasses
import functools
import hashlib
import json
import math
import os
import signal
import socket
import sys
import time

import torch
import torch.distributed as distributed
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open
from torch.utils.checkpoint import checkpoint
from tqdm import tqdm

import demo
from checkpoints import atomic_write, read_json, write_json, write_jsonl
from formats import read_json_or_jsonl
from load_weights import initialise_encoders
from model import CONFIGS, PostNormLayer, PreNormBlock, build_model

WARMUP_SHARE = 0.1
COMPILE_MODES = ["layers", "step"]  # --compile's: every transformer layer, or the whole forward pass and losses


# ----------------------------------------------------------------------------------------------
# Command line: the same training flags in both scripts


def add_training_flags(parser, defaults, demo_defaults):
    """The flags both training scripts take. Flags whose default depends on --demo are parsed as None and
    filled in by `parse_flags`."""

    def default_text(name):
        def shown(value):
            return "a third of --steps" if value is None else value  # finetune.py's --eval-every
        return f"(default: {shown(defaults.get(name))}; with --demo: {shown(demo_defaults.get(name))})"

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
    parser.add_argument("--eval-every", type=int, help=f"steps between held-out evaluations {default_text('eval_every')}")
    parser.add_argument("--save-every", type=int, help=f"steps between checkpoints {default_text('save_every')}")
    parser.add_argument("--out", help=f"output folder {default_text('out')}")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --out exactly where it stopped")
    parser.add_argument("--overwrite", action="store_true", help="start afresh in an --out that holds a run "
                        "(without it such a folder is refused; --demo runs overwrite their own folders)")
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="compute dtype: bf16 autocast or plain fp32 "
                        "(default: bf16 on CUDA, fp32 on CPU); weights, optimizer state and losses stay fp32")
    parser.add_argument("--workers", type=int, help=f"data loading processes {default_text('workers')}")
    parser.add_argument("--compile", nargs="?", const="layers", choices=COMPILE_MODES, help="torch.compile every "
                        "transformer layer (layers, what a bare --compile means) or the whole step: the forward pass "
                        "and the losses as one graph, its backward pass compiled with it (step)")
    parser.add_argument("--recompute", action="store_true", help="recompute each layer's activations in the "
                        "backward pass instead of keeping them: about a third more compute, far less memory")
    parser.add_argument("--max-bad-share", type=float, default=0.05,
                        help="stop when more than this share of the entries is unusable (default: 0.05)")


def add_encoder_flags(parser, condition=""):
    """--clip, --text and --arch: the fresh model that `build_fresh_model` makes."""
    parser.add_argument("--clip", help=f"{condition}CLIP ViT-B/16 safetensors for the image encoder (default: random)")
    parser.add_argument("--text", help=f"{condition}KLUE RoBERTa safetensors for the text encoder (default: random)")
    parser.add_argument("--arch", choices=["meter", "vilt"], default="meter", help=f"{condition}Ko-METER (two "
                        "streams + co-attention) or the ViLT single-stream baseline (default: meter)")


def parse_flags(parser, argv, defaults, demo_defaults, required):
    """Parse the command line; give every flag left unset its default (the demo's with --demo, whose data and
    output folders follow --world) and refuse a run without the `required` flags unless it is a demo."""
    args = parser.parse_args(argv)
    demo.follow_world(args, demo_defaults["out"])
    for name, value in (demo_defaults if args.demo else defaults).items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    args.overwrite = args.overwrite or args.demo
    for name in required if not args.demo else ():
        if getattr(args, name) is None:
            parser.error(f"--{name} is required (or use --demo)")
    return args


# ----------------------------------------------------------------------------------------------
# Schedule and gradients


def lr_at(step, total_steps, peak_lr, warmup_share=WARMUP_SHARE):
    """Learning rate of update number `step` (0-based): linear warmup from 0 over the first 10% of the
    updates, then linear decay to 0."""
    warmup_steps = max(1, round(warmup_share * total_steps))
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def gradient_norm(parameters):
    """L2 norm of all gradients together (no clipping)."""
    gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
    return torch.nn.utils.get_total_norm(gradients).item() if gradients else 0.0


# ----------------------------------------------------------------------------------------------
# Deterministic data order


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


def check_batch_sizes(args, world_size):
    """Resolve --micro-batch and refuse sizes that do not divide evenly; returns micro-batches per step."""
    if args.batch % world_size:
        raise ValueError(f"--batch {args.batch} is not divisible by the {world_size} processes")
    per_process = args.batch // world_size
    args.micro_batch = args.micro_batch or per_process
    if per_process % args.micro_batch:
        raise ValueError(f"--micro-batch {args.micro_batch} does not divide the {per_process} samples per process")
    return per_process // args.micro_batch


def ignore_stop_signals(worker_id):
    """DataLoader workers leave SIGINT and SIGTERM to the main process, which finishes its step first."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def make_loader(dataset, collate, args, device, start_step=None, rank=0, world_size=1):
    """With start_step: the training DataLoader, this process's micro-batches for steps start_step ..
    args.steps in the deterministic order. Without: a plain in-order loader for evaluation."""
    workers = {"num_workers": args.workers, "worker_init_fn": ignore_stop_signals,
               "pin_memory": device.type == "cuda", "collate_fn": collate}
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


def autocast(device, dtype):
    """bf16 autocast when dtype is "bf16" (matrix products in bf16, softmax, norms and losses in fp32)."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=dtype == "bf16")


# ----------------------------------------------------------------------------------------------
# Processes: torchrun and DistributedDataParallel


def setup_processes(args):
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group: nccl on
    CUDA, gloo on CPU; LOCAL_RANK picks the GPU on each node. Also resolves --dtype."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world_size > 1 and not distributed.is_initialized():
        distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    args.dtype = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    return rank, world_size, device


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
    """The module the loop calls: Objective, its layers recomputed in the backward pass with --recompute and
    compiled with --compile layers, inside DistributedDataParallel when there are processes, and all of it
    compiled with --compile step."""
    if args.recompute:
        recompute_layers(model)
    if args.compile == "layers":
        compile_layers(model)
    objective = Objective(model, losses)
    if world_size > 1:
        device_ids = [device] if device.type == "cuda" else None
        objective = torch.nn.parallel.DistributedDataParallel(objective, device_ids=device_ids)
    return compile_step(objective) if args.compile == "step" else objective


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


def backward(objective, loss, world_size, last_micro_batch):
    """Backpropagate one micro-batch. Its loss is its share of the global mean, so the gradients of the
    micro-batches add up to the gradient of the global mean (the loss is divided by the global counts, not
    averaged per micro-batch). DDP averages over processes where we need the sum, hence the factor; and it
    all-reduces only on the step's last micro-batch (nanoGPT's require_backward_grad_sync)."""
    if world_size > 1:
        # with --compile step the DDP module is inside torch.compile's wrapper: the flag is DDP's own
        getattr(objective, "_orig_mod", objective).require_backward_grad_sync = last_micro_batch
        loss = loss * world_size
    loss.backward()


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
    """Run a training command: expected bad input ends it with one line, and processes are released."""
    try:
        command()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    finally:
        if distributed.is_initialized():
            distributed.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# Stopping on a signal, and output folders that hold a run


class StopSignal:
    """Catches SIGTERM and SIGINT: `requested` turns true and the loop ends after its step, with a checkpoint.
    A second Ctrl-C stops at once."""

    def __init__(self):
        self.requested = None
        self.previous = {}

    def __enter__(self):
        for number in (signal.SIGTERM, signal.SIGINT):
            self.previous[number] = signal.signal(number, self.handle)
        return self

    def handle(self, number, frame):
        if self.requested and number == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = signal.Signals(number).name

    def __exit__(self, *exception):
        for number, handler in self.previous.items():
            signal.signal(number, handler)


def resume_command():
    """The command line that resumes this run: the same arguments plus --resume."""
    arguments = [argument for argument in sys.argv[1:] if argument not in ("--resume", "--overwrite")]
    return " ".join(["python", os.path.basename(sys.argv[0]), *arguments, "--resume"])


def claim_output_folder(args, rank):
    """Refuse an --out that holds a run (finished or not) unless --resume or --overwrite says what to do
    with it, and one that a live process on this machine is training into. Marks the folder as running."""
    if rank != 0:
        return
    os.makedirs(args.out, exist_ok=True)
    lock_path = os.path.join(args.out, "running.json")
    if os.path.exists(lock_path):
        lock = read_json(lock_path)
        if lock.get("host") == socket.gethostname() and lock.get("pid") != os.getpid() and process_alive(lock.get("pid")):
            raise ValueError(f"{args.out}: process {lock['pid']} on this machine is training into it; "
                             "choose another --out or stop that run first")
    state_path = os.path.join(args.out, "training_state.json")
    if os.path.exists(state_path) and not (args.resume or args.overwrite):
        state = read_json(state_path)
        finished = state["step"] >= state["args"]["steps"]
        raise ValueError(f"{args.out} holds a {'finished' if finished else 'stopped'} run (step {state['step']} of "
                         f"{state['args']['steps']}): add --resume to continue it or --overwrite to start again")
    write_json(lock_path, {"host": socket.gethostname(), "pid": os.getpid()})


def stop_after_signal(signal_name, step, args, rank):
    """End the run after the checkpoint of `step`, saying how to resume it."""
    release_output_folder(args, rank)
    raise SystemExit(f"stopped by {signal_name or 'a signal to another process'} after step {step}, checkpoint "
                     f"saved in {args.out}; resume with: {resume_command()}")


def release_output_folder(args, rank):
    if rank == 0 and os.path.exists(os.path.join(args.out, "running.json")):
        os.remove(os.path.join(args.out, "running.json"))


def process_alive(pid):
    try:
        os.kill(int(pid), 0)
    except (OSError, TypeError, ValueError):
        return False
    return True


# ----------------------------------------------------------------------------------------------
# Logging: progress, metrics.jsonl and curves.png


def say(rank, message):
    """Print on process 0 only, without breaking the progress bar."""
    if rank == 0:
        tqdm.write(message)


def progress_bar(start_step, total_steps, rank):
    """A progress bar on a terminal; in a log file the log lines every --log-every steps say it all."""
    return tqdm(range(start_step, total_steps), initial=start_step, total=total_steps, dynamic_ncols=True,
                disable=rank != 0 or not sys.stderr.isatty())


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per logged step. On resume, lines written after the checkpoint
    (by the interrupted run) are dropped so the file reads as one run."""

    def __init__(self, path, resume_step=None):
        self.path = path
        write_jsonl(path, [row for row in self.read() if row["step"] <= resume_step] if resume_step is not None else [])

    def write(self, record):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def read(self):
        return read_json_or_jsonl(self.path) if os.path.exists(self.path) else []


class Throughput:
    """Samples per second and time left, over the steps since the last log line."""

    def __init__(self, step, total_steps, batch_size):
        self.step, self.total_steps, self.batch_size = step, total_steps, batch_size
        self.time = time.time()

    def measure(self, step):
        """(samples per second, time left as H:MM:SS) since the last call."""
        elapsed, steps = time.time() - self.time, max(step - self.step, 1)
        self.step, self.time = step, time.time()
        return steps * self.batch_size / max(elapsed, 1e-9), format_duration((self.total_steps - step) * elapsed / steps)


CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def log_step(metrics, step, args, lr, means, grad_norm, throughput):
    """The training line of every --log-every steps, `means` averaged over those steps: on the terminal and in
    metrics.jsonl, under the same names."""
    samples_per_s, time_left = throughput.measure(step)
    metrics.write({"step": step, "split": "train", "lr": lr, **means, "grad_norm": grad_norm,
                   "samples_per_s": samples_per_s})
    say(0, f"step {step}/{args.steps} | lr {lr:.2e} | {named_values(means)} | grad norm {grad_norm:.3f} | "
           f"{samples_per_s:.1f} samples/s | ETA {time_left}")


def log_evaluation(metrics, step, split, means):
    """An evaluation's line ("val" in pretraining, "dev" in fine-tuning): on the terminal and in metrics.jsonl."""
    metrics.write({"step": step, "split": split, **means})
    say(0, f"step {step} {split} | {named_values(means)}")


def named_values(means):
    return " | ".join(f"{name} {value:.4f}" for name, value in means.items())


def curve_panels(records):
    """What draw_curves shows of metrics.jsonl: the losses in one chart, and the accuracies and VQA scores
    (overall, not per answer type) in another on a 0..1 axis; one line per (split, name), in the order met."""
    series = {"loss": [], "accuracy": []}
    for row in records:
        split = row.get("split", "train")
        for name in row:
            if " " in name:  # a per-type accuracy ("숫자 accuracy")
                continue
            panel = "loss" if name.endswith("loss") else "accuracy" if name.endswith(("acc", "accuracy", "score")) \
                else None
            if panel and (f"{name} ({split})", split, name) not in series[panel]:
                series[panel].append((f"{name} ({split})", split, name))
    return [("loss", series["loss"], None), ("accuracy", series["accuracy"], 1.0)]


def draw_curves(records, image_path, panels=None):
    """Training curves in the manner of the paper's Figure 2, drawn with Pillow.

    records: metrics rows; panels: [(title, [(label, split, key), ...], y_max or None), ...] (default:
    curve_panels), one chart per panel, one line per (split, key) series against "step"; the y axis starts at
    0 and ends at y_max (1 for accuracies) or at the largest value. The legend goes in the upper right corner,
    or the lower right one when the curves end high."""
    panels = panels or curve_panels(records)
    panel_width, panel_height, margin = 520, 360, 56
    image = Image.new("RGB", (panel_width * len(panels), panel_height), "white")
    draw = ImageDraw.Draw(image)
    font = ImageFont.load_default()
    for panel_index, (title, series_list, y_max) in enumerate(panels):
        left = panel_index * panel_width + margin
        right, top, bottom = (panel_index + 1) * panel_width - 16, 30, panel_height - 40
        series = []
        for label, split, key in series_list:
            points = [(row["step"], row[key]) for row in records
                      if row.get("split", "train") == split and isinstance(row.get(key), (int, float))
                      and math.isfinite(row[key])]
            series.append((label, points))
        all_points = [point for _, points in series for point in points]
        draw.text((left, 8), title, fill="black", font=font)
        draw.rectangle([left, top, right, bottom], outline="black")
        if not all_points:
            continue
        x_low, x_high = min(x for x, _ in all_points), max(x for x, _ in all_points)
        y_low, y_high = min(0.0, min(y for _, y in all_points)), y_max or max(y for _, y in all_points)
        x_high, y_high = max(x_high, x_low + 1), max(y_high, y_low + 1e-6)

        def to_pixel(x, y):
            return (left + (x - x_low) / (x_high - x_low) * (right - left),
                    bottom - (y - y_low) / (y_high - y_low) * (bottom - top))

        for tick in range(5):
            y_value = y_low + (y_high - y_low) * tick / 4
            y_pixel = to_pixel(x_low, y_value)[1]
            draw.line([left - 4, y_pixel, left, y_pixel], fill="black")
            draw.text((left - margin + 4, y_pixel - 6), f"{y_value:.3g}", fill="black", font=font)
            x_value = x_low + (x_high - x_low) * tick / 4
            x_pixel = to_pixel(x_value, y_low)[0]
            draw.line([x_pixel, bottom, x_pixel, bottom + 4], fill="black")
            draw.text((x_pixel - 12, bottom + 8), f"{x_value:.0f}", fill="black", font=font)
        draw.text(((left + right) // 2 - 12, bottom + 22), "step", fill="black", font=font)
        last_heights = [to_pixel(*points[-1])[1] for _, points in series if points]
        curves_end_high = sum(last_heights) / len(last_heights) < (top + bottom) / 2
        legend_top = bottom - 6 - 14 * len(series) if curves_end_high else top + 6
        for series_index, (label, points) in enumerate(series):
            colour = CURVE_COLOURS[series_index % len(CURVE_COLOURS)]
            pixels = [to_pixel(x, y) for x, y in points]
            if len(pixels) > 1:
                draw.line(pixels, fill=colour, width=2)
            for x_pixel, y_pixel in pixels[-1:] if len(pixels) > 1 else pixels:
                draw.ellipse([x_pixel - 3, y_pixel - 3, x_pixel + 3, y_pixel + 3], fill=colour)
            legend_y = legend_top + 14 * series_index
            draw.line([right - 150, legend_y + 6, right - 130, legend_y + 6], fill=colour, width=3)
            draw.text((right - 124, legend_y), label, fill="black", font=font)
    with atomic_write(image_path, "wb") as file:
        image.save(file, format="PNG")


# ----------------------------------------------------------------------------------------------
# A fresh model, and the checks that a model fits the tokenizer and the text length


def check_vocabulary_fits(tokenizer, rows, owner):
    """The tokenizer's ids must index the word embeddings: refuse a tokenizer that does not fit."""
    if rows != tokenizer.vocab_size:
        raise ValueError(f"{tokenizer.source}: tokenizer vocabulary of {tokenizer.vocab_size} does not fit the "
                         f"{rows} word embeddings of {owner}")


def text_embedding_rows(text_path):
    """Number of rows of the word embedding table in a text encoder checkpoint."""
    with safe_open(text_path, "pt") as file:
        for key in file.keys():
            if key.endswith("word_embeddings.weight"):
                return file.get_slice(key).get_shape()[0]
    raise ValueError(f"{text_path}: no word_embeddings.weight, not a RoBERTa checkpoint")


def build_fresh_model(args, tokenizer, rank, num_answers=0):
    """A --config / --arch model whose vocabulary is the tokenizer's; its encoders from --clip/--text when given, else
    random (warned).
    A tokenizer that does not fit the --text encoder is refused before anything is built."""
    if args.text:
        if not os.path.exists(args.text):
            raise FileNotFoundError(f"{args.text}: text encoder checkpoint not found")
        check_vocabulary_fits(tokenizer, text_embedding_rows(args.text), args.text)
    config = CONFIGS[args.config]
    config = dataclasses.replace(config, arch=args.arch, vocab_size=tokenizer.vocab_size, num_answers=num_answers,
                                 image_size=args.image_size or config.image_size)
    torch.manual_seed(args.seed)
    model = build_model(config)
    if args.clip or args.text:
        initialise_encoders(model, clip_path=args.clip, text_path=args.text, verbose=rank == 0)
    for flag, path, encoder in [("--clip", args.clip, "image"), ("--text", args.text, "text")]:
        if path is None and rank == 0:
            print(f"warning: no {flag}: the {encoder} encoder starts from random weights", file=sys.stderr)
    return model


def check_model_fits(model, tokenizer, args):
    """Refuse a tokenizer or a text length the model cannot take; --image-size becomes the model's."""
    check_vocabulary_fits(tokenizer, model.cfg.vocab_size, "the model")
    if tokenizer.pad_id != model.cfg.pad_id:  # RoBERTa's positions count from the pad id (model.TextEmbeddings)
        raise ValueError(f"{tokenizer.source}: [PAD] is id {tokenizer.pad_id}, the model's pad id is {model.cfg.pad_id}")
    if args.max_len > model.cfg.max_positions - 2:
        raise ValueError(f"--max-len {args.max_len} exceeds the {model.cfg.max_positions - 2} text positions of the model")
    args.image_size = model.cfg.image_size
