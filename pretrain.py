"""Ko-METER pretraining: masked language modelling (MLM) + image-text matching (ITM).

Follows SPEC §3 (objectives) and §4 (optimisation), i.e. METER (Dou et al., CVPR 2022) §3.2 and the
Ko-METER paper's pretraining on AIHub Korean COCO captions. Runs on a laptop CPU in a few minutes:

    python pretrain.py --demo       # tiny config on the synthetic demo set, about 5 min on 2 cores

The demo recipe (batch 64, 500 steps, base lr 2e-4, so 1e-3 for fusion and heads) follows SPEC §8:
ITM needs a batch of about 64 and sits at chance for a few hundred steps before it takes off
(on the demo set around step 250), while MLM accuracy rises from the first steps. Outputs go to
out/pretrain_demo/: model.safetensors (+ resume state), metrics.jsonl, curves.png.

The full run of the paper (batch 256, text length 40, 224 px, 40,000 steps, base lr 1e-5):

    python pretrain.py --captions MSCOCO_train_val_Korean.json --images coco/ \
        --tokenizer klue/tokenizer.json --clip clip/model.safetensors --text klue/model.safetensors

    torchrun --nproc_per_node 8 pretrain.py ...   # data parallel, --batch stays the global batch

Choices this file makes where the SPEC is silent:
- One pass per batch (`pretrain_losses`): the image encoder runs once and feeds both objectives, the
  MLM and ITM texts share one text-encoder and fusion batch, and the MLM vocabulary projection runs
  only on the masked positions. `pretrain_losses_two_pass` is METER's way (two full forward passes);
  both give the same losses and gradients (tests check it); bench.py measures the difference.
- Every random draw of an update (MLM masks, ITM pairs, dropout) is seeded from (seed, step,
  micro-batch index) and the data order is a fixed function of the seed (epoch e is the permutation
  drawn from (seed, e)), so no RNG state needs saving: resuming at step k replays exactly what the
  uninterrupted run would have done, and K processes with micro-batches of m match one process
  accumulating K micro-batches of m. ITM negatives come from the same micro-batch (the images whose
  encoder output is at hand), as in METER, where each GPU pairs inside its own batch.
- The MLM loss is the mean over the masked tokens of the whole global batch and the ITM loss the
  mean over its samples: each micro-batch divides its summed losses by those global counts, so the
  gradients of the micro-batches (and of the processes) add up to the gradient of the global mean.
- Checkpoints: OUT/step_NNNNNN/ holds model.safetensors (config in its metadata), optimizer.safetensors
  (AdamW's exp_avg, exp_avg_sq and step per parameter name) and training_state.json (step, flags,
  samples seen); OUT/model.safetensors etc. are links to the latest. The held-out split (for the
  "split": "val" lines of metrics.jsonl) is 2% of the images, at most 1,000, from COCO's val2014.
- Data parallelism is written out: each process computes the gradient of its share of the global
  mean loss and the gradients are summed across processes with one all-reduce per step (what
  DistributedDataParallel does, without overlapping it with the backward pass).
- No gradient clipping (METER uses none); the gradient norm is logged.
- Learning-rate schedule exactly as transformers' get_linear_schedule_with_warmup, which METER uses:
  update 0 runs at lr 0, the peak is reached after 10% of the updates, then a linear decay to 0.
"""

import argparse
import dataclasses
import functools
import hashlib
import json
import math
import os
import shutil
import sys
import time

import torch
import torch.distributed as distributed
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFont
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from tqdm import tqdm

import data
from load_weights import initialise_encoders, save_model
from model import CONFIGS, build_model, compile_layers

PRETRAIN_LR_MULTIPLIERS = {"vision": 1.0, "text": 1.0, "fusion": 5.0, "heads": 5.0}
ADAMW_BETAS = (0.9, 0.98)
ADAMW_EPS = 1e-8
WEIGHT_DECAY = 0.01
WARMUP_SHARE = 0.1
HELD_OUT_SHARE = 0.02  # share of the images kept out of training for the validation curves
HELD_OUT_MAX_IMAGES = 1000
SNAPSHOTS_KEPT = 2  # step_NNNNNN/ folders kept beside the latest checkpoint

# Defaults of the paper's run and of the laptop demo; a flag given on the command line wins.
PRETRAIN_DEFAULTS = {
    "config": "base", "batch": 256, "steps": 40000, "lr": 1e-5, "max_len": 40,
    "log_every": 50, "eval_every": 2000, "save_every": 2000, "out": "pretrain_out", "workers": 4,
}
PRETRAIN_DEMO_DEFAULTS = {
    "config": "tiny", "batch": 64, "steps": 500, "lr": 2e-4, "max_len": 40,
    "log_every": 25, "eval_every": 100, "save_every": 250, "out": "out/pretrain_demo", "workers": 0,
}


# ----------------------------------------------------------------------------------------------
# Command line, shared with finetune.py


def add_training_flags(parser, defaults, demo_defaults):
    """The TRAINING FLAGS of SPEC §7, the same names in pretrain.py and finetune.py.
    Flags whose default depends on --demo are parsed as None and filled in by `fill_defaults`."""

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
    parser.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when available)")
    parser.add_argument("--workers", type=int, help=f"data loading processes {default_text('workers')}")
    parser.add_argument("--compile", action="store_true", help="compile the model with torch.compile")
    parser.add_argument("--max-bad-share", type=float, default=0.05,
                        help="stop when more than this share of the entries is unusable (default: 0.05)")


def add_encoder_flags(parser, condition=""):
    """--clip, --text and --arch: the fresh model that `build_fresh_model` makes."""
    parser.add_argument("--clip", help=f"{condition}CLIP ViT-B/16 safetensors for the image encoder (default: random)")
    parser.add_argument("--text", help=f"{condition}KLUE RoBERTa safetensors for the text encoder (default: random)")
    parser.add_argument("--arch", choices=["meter", "vilt"], default="meter", help=f"{condition}Ko-METER (two "
                        "streams + co-attention) or the ViLT single-stream baseline (default: meter)")


def fill_defaults(args, defaults, demo_defaults):
    """Give every flag left unset its default, the demo's when --demo is set."""
    chosen = demo_defaults if args.demo else defaults
    for name, value in chosen.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    return args


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Ko-METER pretraining with MLM + ITM (SPEC §3, §4).")
    parser.add_argument("--demo", action="store_true",
                        help="make the synthetic demo set if missing and pretrain the tiny config on it")
    parser.add_argument("--demo-dir", default="demo_data", help="where the demo set lives (default: demo_data)")
    parser.add_argument("--captions", help="captions: AIHub Korean MSCOCO JSON or JSONL {image, caption}")
    parser.add_argument("--images", help="image root the caption file's paths are relative to")
    parser.add_argument("--tokenizer", help="tokenizer.json or vocab.txt (KLUE WordPiece)")
    add_encoder_flags(parser)
    add_training_flags(parser, PRETRAIN_DEFAULTS, PRETRAIN_DEMO_DEFAULTS)
    args = fill_defaults(parser.parse_args(argv), PRETRAIN_DEFAULTS, PRETRAIN_DEMO_DEFAULTS)
    if not args.demo:
        for flag in ("captions", "images", "tokenizer"):
            if getattr(args, flag) is None:
                parser.error(f"--{flag} is required (or use --demo)")
    return args


# ----------------------------------------------------------------------------------------------
# Objectives (SPEC §3)


def add_pretrain_targets(batch, tokenizer, generator):
    """Draw the random targets of one batch: MLM masks and ITM pairs (CPU tensors)."""
    masked_ids, mlm_labels = data.mask_tokens(batch["input_ids"], tokenizer, generator)
    image_index, itm_labels = data.itm_pairs(batch["image_ids"], generator)
    return {**batch, "masked_ids": masked_ids, "mlm_labels": mlm_labels,
            "image_index": image_index, "itm_labels": itm_labels}


def _losses_from_logits(mlm_logits, mlm_targets, itm_logits, itm_labels, mlm_normaliser, itm_normaliser):
    """Shared tail of both ways: summed cross-entropies, the loss to backpropagate, means and accuracies.

    The loss is sum / normaliser for each objective. With the default normalisers (this batch's counts)
    that is the usual mean; the training loop passes the counts of the whole global batch instead, so
    that the micro-batch losses (and the processes' losses) add up to the mean over the global batch."""
    mlm_loss_sum = F.cross_entropy(mlm_logits.float(), mlm_targets, reduction="sum")
    itm_loss_sum = F.cross_entropy(itm_logits.float(), itm_labels, reduction="sum")
    mlm_count = torch.tensor(float(mlm_targets.numel()), device=mlm_logits.device)
    itm_count = torch.tensor(float(itm_labels.numel()), device=itm_logits.device)
    mlm_normaliser = mlm_count.clamp(min=1) if mlm_normaliser is None else mlm_normaliser
    itm_normaliser = itm_count.clamp(min=1) if itm_normaliser is None else itm_normaliser
    return {
        "loss": mlm_loss_sum / mlm_normaliser + itm_loss_sum / itm_normaliser,
        "mlm_loss": mlm_loss_sum.detach() / mlm_count.clamp(min=1),
        "mlm_acc": (mlm_logits.argmax(-1) == mlm_targets).float().sum() / mlm_count.clamp(min=1),
        "itm_loss": itm_loss_sum.detach() / itm_count.clamp(min=1),
        "itm_acc": (itm_logits.argmax(-1) == itm_labels).float().sum() / itm_count.clamp(min=1),
        "mlm_count": mlm_count,
        "itm_count": itm_count,
    }


def pretrain_losses(model, batch, mlm_normaliser=None, itm_normaliser=None):
    """MLM + ITM losses with the image encoder run once (SPEC §3).

    batch: pixels [B, 3, S, S], input_ids / attention_mask [B, T] and the targets of
    `add_pretrain_targets` (masked_ids [B, T], mlm_labels [B, T] with -100 where not masked,
    image_index [B], itm_labels [B]). Returns the dict of `_losses_from_logits`.

    The texts of both objectives go through the text encoder and the fusion together, as one batch of
    2B: the masked texts with their true images (MLM), then the clean texts with half of the images
    swapped (ITM). Every row is computed as in two separate passes, but each matrix product is twice as
    tall and each weight gradient is computed once instead of twice and added up."""
    batch_size = batch["input_ids"].shape[0]
    image_hidden = model.vision(batch["pixels"])  # [B, 1+N, W], shared by both objectives
    texts = torch.cat([batch["masked_ids"], batch["input_ids"]])  # [2B, T]: MLM texts, then ITM texts
    attention_mask = batch["attention_mask"].repeat(2, 1)  # [B, T] -> [2B, T]
    images = torch.cat([image_hidden, image_hidden[batch["image_index"]]])  # [2B, 1+N, W], ITM rows permuted
    fused = model.fuse(model.text(texts, attention_mask), attention_mask, images)

    # MLM on the first half; the vocabulary projection only where a token was masked
    is_masked = batch["mlm_labels"] != -100  # [B, T]
    mlm_logits = model.mlm_head(fused["text_feats"][:batch_size][is_masked])  # [M, H] -> [M, vocab]
    mlm_targets = batch["mlm_labels"][is_masked]  # [M]
    # ITM on the second half
    itm_logits = model.itm_head(fused["cls_feats"][batch_size:])  # [B, 2H] -> [B, 2]
    return _losses_from_logits(mlm_logits, mlm_targets, itm_logits, batch["itm_labels"],
                               mlm_normaliser, itm_normaliser)


def pretrain_losses_two_pass(model, batch, mlm_normaliser=None, itm_normaliser=None):
    """The same losses computed METER's way: two full forward passes (the images of the ITM pass go
    through the image encoder again) and MLM logits over every position. For comparison and bench.py."""
    attention_mask = batch["attention_mask"]
    mlm_feats = model(batch["pixels"], batch["masked_ids"], attention_mask)["text_feats"]  # [B, T, H]
    all_mlm_logits = model.mlm_head(mlm_feats)  # [B, T, vocab]
    is_masked = batch["mlm_labels"] != -100  # [B, T]
    mlm_logits = all_mlm_logits[is_masked]  # [M, vocab]
    mlm_targets = batch["mlm_labels"][is_masked]  # [M]

    paired_pixels = batch["pixels"][batch["image_index"]]  # [B, 3, S, S]
    cls_feats = model(paired_pixels, batch["input_ids"], attention_mask)["cls_feats"]  # [B, 2H]
    itm_logits = model.itm_head(cls_feats)  # [B, 2]
    return _losses_from_logits(mlm_logits, mlm_targets, itm_logits, batch["itm_labels"],
                               mlm_normaliser, itm_normaliser)


# ----------------------------------------------------------------------------------------------
# Optimisation (SPEC §4), shared with finetune.py


def build_optimizer(model, base_lr, lr_multipliers, weight_decay=WEIGHT_DECAY):
    """AdamW with one parameter group per (model part, decay or not).

    Each group remembers its parameter names (for saving the optimizer state by name) and its
    lr_multiplier (the training loop sets group["lr"] = lr_at(...) * group["lr_multiplier"])."""
    groups = {}
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        part = model.part_of(name)
        decays = not model.no_weight_decay(name)
        if (part, decays) not in groups:
            groups[(part, decays)] = {
                "params": [], "names": [], "part": part,
                "weight_decay": weight_decay if decays else 0.0,
                "lr_multiplier": lr_multipliers[part],
                "lr": base_lr * lr_multipliers[part],
            }
        groups[(part, decays)]["params"].append(parameter)
        groups[(part, decays)]["names"].append(name)
    # fused: one kernel updates every parameter; the update of a few hundred million parameters is
    # memory-bound, and the default per-tensor loop reads and writes them several times (6x slower on CPU)
    return torch.optim.AdamW(list(groups.values()), lr=base_lr, betas=ADAMW_BETAS, eps=ADAMW_EPS, fused=True)


def lr_at(step, total_steps, peak_lr, warmup_share=WARMUP_SHARE):
    """Learning rate of update number `step` (0-based): linear warmup from 0 over the first 10% of the
    updates, then linear decay to 0 (transformers' get_linear_schedule_with_warmup)."""
    warmup_steps = max(1, round(warmup_share * total_steps))
    if step < warmup_steps:
        return peak_lr * step / warmup_steps
    return peak_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def gradient_norm(parameters):
    """L2 norm of all gradients together (no clipping)."""
    gradients = [parameter.grad for parameter in parameters if parameter.grad is not None]
    return torch.nn.utils.get_total_norm(gradients).item() if gradients else 0.0


def sum_gradients_across_processes(parameters):
    """Data parallelism: each process backpropagated its share of the global mean loss, so the sum of
    the processes' gradients is the gradient of the global mean."""
    handles = [distributed.all_reduce(parameter.grad, async_op=True)
               for parameter in parameters if parameter.grad is not None]
    for handle in handles:
        handle.wait()


# ----------------------------------------------------------------------------------------------
# Determinism, data order and processes, shared with finetune.py


def derived_seed(*parts):
    """A 63-bit seed from (seed, step, micro-batch index, ...): independent streams for every draw."""
    digest = hashlib.sha256("/".join(str(part) for part in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def seeded_generator(*parts):
    return torch.Generator().manual_seed(derived_seed(*parts))


class ShuffledStream(torch.utils.data.Dataset):
    """An endless, deterministic stream over a data set: epoch e is the permutation drawn from
    (seed, e), and position p of the stream is item permutation[p mod N] of epoch p // N.
    The stream position of a step is step * batch, so the data order needs no saved state."""

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
    The global batch of step s is stream positions [s * batch, (s + 1) * batch); process r takes the
    r-th of world_size equal slices (like DistributedSampler) and cuts it into micro-batches."""

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
    """Resolve --micro-batch and refuse sizes that do not divide evenly."""
    if args.batch % world_size:
        raise ValueError(f"--batch {args.batch} is not divisible by the {world_size} processes")
    per_process = args.batch // world_size
    args.micro_batch = args.micro_batch or per_process
    if per_process % args.micro_batch:
        raise ValueError(f"--micro-batch {args.micro_batch} does not divide the {per_process} samples per process")
    return per_process // args.micro_batch


def make_loader(dataset, collate, args, start_step, rank, world_size):
    """DataLoader yielding this process's micro-batches for the steps start_step .. args.steps."""
    sampler = StepBatches(start_step, args.steps, args.batch, args.micro_batch, rank, world_size)
    return torch.utils.data.DataLoader(
        ShuffledStream(dataset, args.seed), batch_sampler=sampler, collate_fn=collate,
        num_workers=args.workers, persistent_workers=False,
        generator=torch.Generator().manual_seed(args.seed),  # worker seeds; keeps the global RNG untouched
    )


def setup_processes(device_name):
    """(rank, world_size, device). Under torchrun (WORLD_SIZE > 1) joins the process group:
    nccl on CUDA, gloo on CPU."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = torch.device(device_name or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda" and world_size > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    if world_size > 1 and not distributed.is_initialized():
        distributed.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return rank, world_size, device


def all_reduce_sum(tensor, world_size):
    if world_size > 1:
        distributed.all_reduce(tensor)
    return tensor


def broadcast_parameters(model, world_size):
    """Start every process from process 0's weights."""
    if world_size > 1:
        for tensor in model.state_dict().values():
            distributed.broadcast(tensor, 0)


def to_device(batch, device):
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


def autocast(device):
    """bf16 autocast on CUDA, plain float32 elsewhere."""
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=device.type == "cuda")


def say(rank, message):
    """Print on process 0 only, without breaking the progress bar."""
    if rank == 0:
        tqdm.write(message)


# ----------------------------------------------------------------------------------------------
# Checkpoints and resume state, shared with finetune.py


def atomic_write_json(value, path):
    temporary = f"{path}.tmp"
    with open(temporary, "w", encoding="utf-8") as file:
        json.dump(value, file, ensure_ascii=False, indent=1)
    os.replace(temporary, path)


def optimizer_tensors(optimizer):
    """AdamW state flattened by parameter name: NAME.exp_avg, NAME.exp_avg_sq, NAME.step."""
    tensors = {}
    for group in optimizer.param_groups:
        for name, parameter in zip(group["names"], group["params"]):
            for key, value in optimizer.state.get(parameter, {}).items():
                tensors[f"{name}.{key}"] = value.detach().to("cpu").contiguous()
    return tensors


def load_optimizer_tensors(optimizer, tensors, path):
    """Inverse of `optimizer_tensors`. A parameter without saved state never had a gradient (the MLM
    and ITM heads while fine-tuning VQA) and stays without. The step count goes where torch's own
    load_state_dict puts it: beside the parameter for the fused AdamW, on the CPU otherwise."""
    names = {name for group in optimizer.param_groups for name in group["names"]}
    step_on_device = optimizer.defaults.get("fused") or optimizer.defaults.get("capturable")
    unknown = sorted({key.rpartition(".")[0] for key in tensors} - names)
    if unknown:
        raise ValueError(f"{path}: optimizer state for parameters the model lacks: {', '.join(unknown[:3])}")
    for group in optimizer.param_groups:
        for name, parameter in zip(group["names"], group["params"]):
            keys = [key for key in tensors if key.rpartition(".")[0] == name]
            if not keys:
                continue
            optimizer.state[parameter] = {
                key.rpartition(".")[2]: tensors[key] if key.endswith(".step") and not step_on_device
                else tensors[key].to(parameter.device)
                for key in keys
            }


def save_checkpoint(out_dir, step, model, optimizer, state, extra_files=()):
    """Write step_NNNNNN/ (model.safetensors, optimizer.safetensors, training_state.json and the
    extra files such as tokenizer.json) under a temporary name, rename it into place, then point the
    top-level OUT/ files at it (hard links, renamed into place; training_state.json last). A crash at
    any moment leaves the previous checkpoint whole. Keeps the last SNAPSHOTS_KEPT snapshots."""
    snapshot = os.path.join(out_dir, f"step_{step:06d}")
    temporary = f"{snapshot}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    save_model(model, os.path.join(temporary, "model.safetensors"),
               {"step": str(step), "max_len": str(state["args"]["max_len"])})
    save_file(optimizer_tensors(optimizer), os.path.join(temporary, "optimizer.safetensors"))
    for path in extra_files:
        shutil.copy2(path, os.path.join(temporary, os.path.basename(path)))
    with open(os.path.join(temporary, "training_state.json"), "w", encoding="utf-8") as file:
        json.dump({**state, "step": step}, file, ensure_ascii=False, indent=1)
    shutil.rmtree(snapshot, ignore_errors=True)
    os.replace(temporary, snapshot)
    for name in ["model.safetensors", "optimizer.safetensors", "training_state.json"]:
        link = os.path.join(out_dir, f"{name}.tmp")
        if os.path.exists(link):
            os.remove(link)
        try:
            os.link(os.path.join(snapshot, name), link)
        except OSError:
            shutil.copy2(os.path.join(snapshot, name), link)
        os.replace(link, os.path.join(out_dir, name))
    snapshots = sorted(name for name in os.listdir(out_dir) if name.startswith("step_") and not name.endswith(".tmp"))
    for name in snapshots[:-SNAPSHOTS_KEPT]:
        shutil.rmtree(os.path.join(out_dir, name))
    return snapshot


def load_checkpoint(out_dir, model, optimizer):
    """Restore the model and optimizer saved by `save_checkpoint`; returns the training state JSON."""
    state_path = os.path.join(out_dir, "training_state.json")
    if not os.path.exists(state_path):
        raise FileNotFoundError(f"{state_path}: no checkpoint to resume from")
    with open(state_path, encoding="utf-8") as file:
        state = json.load(file)
    folder = os.path.join(out_dir, f"step_{state['step']:06d}")
    folder = folder if os.path.isdir(folder) else out_dir
    model.load_state_dict(load_file(os.path.join(folder, "model.safetensors")))
    optimizer_path = os.path.join(folder, "optimizer.safetensors")
    load_optimizer_tensors(optimizer, load_file(optimizer_path), optimizer_path)
    return state


RESUME_MUST_MATCH = ["config", "batch", "steps", "lr", "seed", "image_size", "max_len"]


def check_resume_args(args, saved_args):
    """Resuming is exact only with the same recipe: refuse a changed flag."""
    for name in RESUME_MUST_MATCH:
        if saved_args.get(name) != getattr(args, name):
            raise ValueError(f"--resume: --{name.replace('_', '-')} is {getattr(args, name)} "
                             f"but the saved run used {saved_args.get(name)}")


# ----------------------------------------------------------------------------------------------
# Metrics and curves, shared with finetune.py


class MetricsLog:
    """OUT/metrics.jsonl, one JSON object per logged step. On resume, lines written after the
    checkpoint (by the interrupted run) are dropped so the file reads as one run."""

    def __init__(self, path, resume_step=None):
        self.path = path
        kept = []
        if resume_step is not None and os.path.exists(path):
            with open(path, encoding="utf-8") as file:
                kept = [line for line in file if line.strip() and json.loads(line)["step"] <= resume_step]
        with open(path, "w", encoding="utf-8") as file:
            file.writelines(kept)

    def write(self, record):
        with open(self.path, "a", encoding="utf-8") as file:
            file.write(json.dumps(record, ensure_ascii=False) + "\n")

    def read(self):
        with open(self.path, encoding="utf-8") as file:
            return [json.loads(line) for line in file if line.strip()]


CURVE_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189), (140, 86, 75)]


def draw_curves(records, image_path, panels):
    """Training curves in the manner of the paper's Figure 2, drawn with Pillow.

    records: metrics rows; panels: [(title, [(label, split, key), ...], y_max or None), ...], one chart
    per panel, one line per (split, key) series against "step"; the y axis starts at 0 and ends at
    y_max (1 for accuracies) or at the largest value. The legend goes in the upper right corner, or the
    lower right one when the curves end high."""
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
    temporary = f"{image_path}.tmp.png"
    image.save(temporary)
    os.replace(temporary, image_path)


PRETRAIN_PANELS = [
    ("loss", [("MLM train", "train", "mlm_loss"), ("MLM val", "val", "mlm_loss"),
              ("ITM train", "train", "itm_loss"), ("ITM val", "val", "itm_loss")], None),
    ("accuracy", [("MLM train", "train", "mlm_acc"), ("MLM val", "val", "mlm_acc"),
                  ("ITM train", "train", "itm_acc"), ("ITM val", "val", "itm_acc")], 1.0),
]


def copy_tokenizer(tokenizer_path, out_dir):
    """Copy the tokenizer file (tokenizer.json or vocab.txt) into OUT, so that a checkpoint folder is
    self-contained; a folder given as --tokenizer contributes the file Tokenizer.load would read."""
    if os.path.isdir(tokenizer_path):
        names = [name for name in ("tokenizer.json", "vocab.txt") if os.path.isfile(os.path.join(tokenizer_path, name))]
        tokenizer_path = os.path.join(tokenizer_path, names[0])
    name = "vocab.txt" if tokenizer_path.endswith(".txt") else "tokenizer.json"
    copy = os.path.join(out_dir, name)
    if os.path.abspath(tokenizer_path) != os.path.abspath(copy):
        shutil.copy2(tokenizer_path, copy)
    return copy


def format_duration(seconds):
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


# ----------------------------------------------------------------------------------------------
# Model and data set-up


def text_embedding_rows(text_path):
    """Number of rows of the word embedding table in a text encoder checkpoint."""
    with safe_open(text_path, "pt") as file:
        for key in file.keys():
            if key.endswith("word_embeddings.weight"):
                return file.get_slice(key).get_shape()[0]
    raise ValueError(f"{text_path}: no word_embeddings.weight, not a RoBERTa checkpoint")


def build_fresh_model(args, tokenizer, rank, num_answers=0):
    """A --config / --arch model; its encoders from --clip/--text when given, else random (warned).
    A tokenizer whose vocabulary does not fit the --text encoder is refused before anything is built."""
    vocab_size = tokenizer.vocab_size
    if args.text:
        if not os.path.exists(args.text):
            raise FileNotFoundError(f"{args.text}: text encoder checkpoint not found")
        vocab_size = text_embedding_rows(args.text)
        if vocab_size != tokenizer.vocab_size:
            raise ValueError(f"{args.tokenizer}: tokenizer vocabulary of {tokenizer.vocab_size} does not fit the "
                             f"{vocab_size} word embeddings of {args.text}")
    config = CONFIGS[args.config]
    config = dataclasses.replace(config, arch=args.arch, vocab_size=vocab_size, num_answers=num_answers,
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
    if model.cfg.vocab_size != tokenizer.vocab_size:
        raise ValueError(f"{args.tokenizer}: tokenizer vocabulary of {tokenizer.vocab_size} does not fit the "
                         f"{model.cfg.vocab_size} word embeddings of the model")
    if args.max_len > model.cfg.max_positions - 2:
        raise ValueError(f"--max-len {args.max_len} exceeds the {model.cfg.max_positions - 2} text positions of the model")
    args.image_size = model.cfg.image_size


def split_held_out(entries, seed):
    """Carve a held-out caption split by image: HELD_OUT_SHARE of the images (at most
    HELD_OUT_MAX_IMAGES), drawn from the validation images (COCO's val2014) when the file has them."""
    image_ids = sorted({entry["image_id"] for entry in entries})
    candidates = sorted({entry["image_id"] for entry in entries if entry.get("split", "").startswith("val")}) or image_ids
    count = min(len(candidates) - 1, HELD_OUT_MAX_IMAGES, max(1, round(HELD_OUT_SHARE * len(image_ids))))
    order = torch.randperm(len(candidates), generator=seeded_generator(seed, "held out"))
    held_out = {candidates[index] for index in order[:max(count, 0)].tolist()}
    return ([entry for entry in entries if entry["image_id"] not in held_out],
            [entry for entry in entries if entry["image_id"] in held_out])


@torch.no_grad()
def evaluate_pretraining(model, loader, tokenizer, seed, device):
    """MLM and ITM loss/accuracy on the held-out captions, with the same masks and pairs every time."""
    model.eval()
    sums = torch.zeros(6, dtype=torch.float64)
    for batch_index, batch in enumerate(loader):
        batch = to_device(add_pretrain_targets(batch, tokenizer, seeded_generator(seed, "val", batch_index)), device)
        with autocast(device):
            losses = pretrain_losses(model, batch)
        sums += objective_sums(losses).double().cpu()
    model.train()
    return objective_means(sums)


def objective_sums(losses):
    """[mlm loss sum, mlm correct, mlm count, itm loss sum, itm correct, itm count] of one micro-batch."""
    return torch.stack([losses["mlm_loss"] * losses["mlm_count"], losses["mlm_acc"] * losses["mlm_count"],
                        losses["mlm_count"], losses["itm_loss"] * losses["itm_count"],
                        losses["itm_acc"] * losses["itm_count"], losses["itm_count"]]).detach()


def objective_means(sums):
    mlm_count, itm_count = max(sums[2].item(), 1.0), max(sums[5].item(), 1.0)
    return {"mlm_loss": sums[0].item() / mlm_count, "mlm_acc": sums[1].item() / mlm_count,
            "itm_loss": sums[3].item() / itm_count, "itm_acc": sums[4].item() / itm_count}


# ----------------------------------------------------------------------------------------------
# Training


def train(args):
    rank, world_size, device = setup_processes(args.device)
    accumulation_steps = check_batch_sizes(args, world_size)
    if args.demo:
        if world_size > 1 and rank != 0:
            distributed.barrier()  # process 0 makes the demo set, the others wait and then find it made
        paths = data.make_demo(args.demo_dir, seed=0)
        if world_size > 1 and rank == 0:
            distributed.barrier()
        args.captions = args.captions or paths["captions"]
        args.images = args.images or paths["images"]
        args.tokenizer = args.tokenizer or paths["tokenizer"]
    tokenizer = data.Tokenizer.load(args.tokenizer)
    entries = data.read_captions(args.captions, args.images)
    entries, bad_entries = data.check_entries(entries, max_bad_share=args.max_bad_share)
    train_entries, held_out_entries = split_held_out(entries, args.seed)
    say(rank, f"captions: {len(train_entries)} for training, {len(held_out_entries)} held out, "
              f"{len(bad_entries)} unusable skipped")
    model = build_fresh_model(args, tokenizer, rank)
    check_model_fits(model, tokenizer, args)
    model.to(device)
    collate = functools.partial(data.collate_captions, tokenizer=tokenizer, max_len=args.max_len)
    held_out_loader = torch.utils.data.DataLoader(
        data.CaptionDataset(held_out_entries, args.image_size), batch_size=args.micro_batch, collate_fn=collate)

    optimizer = build_optimizer(model, args.lr, PRETRAIN_LR_MULTIPLIERS)
    start_step = 0
    if args.resume:
        state = load_checkpoint(args.out, model, optimizer)
        check_resume_args(args, state["args"])
        start_step = state["step"]
        say(rank, f"resuming {args.out} at step {start_step}")
    broadcast_parameters(model, world_size)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if args.compile:
        compile_layers(model)

    os.makedirs(args.out, exist_ok=True)
    tokenizer_copy = copy_tokenizer(args.tokenizer, args.out) if rank == 0 else None
    if rank == 0:
        metrics = MetricsLog(os.path.join(args.out, "metrics.jsonl"), start_step if args.resume else None)
    saved_args = dict(vars(args))
    last_saved = f"step {start_step}" if args.resume else "none"

    loader = iter(make_loader(data.CaptionDataset(train_entries, args.image_size), collate, args,
                              start_step, rank, world_size))
    model.train()
    progress = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps,
                    disable=rank != 0, dynamic_ncols=True)
    logged_time, logged_step = time.time(), start_step
    logged_sums = torch.zeros(6, dtype=torch.float64)  # objective sums since the last log line
    for step in progress:
        lr = lr_at(step, args.steps, args.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]

        # Draw the targets of all micro-batches first: the MLM loss is a mean over the masked tokens
        # of the whole global batch, so every micro-batch divides by that global count.
        micro_batches = []
        for micro_index in range(accumulation_steps):
            global_index = rank * accumulation_steps + micro_index  # position of this micro-batch in the global batch
            generator = seeded_generator(args.seed, step, global_index, "targets")
            micro_batches.append((global_index, add_pretrain_targets(next(loader), tokenizer, generator)))
        masked_count = sum((batch["mlm_labels"] != -100).sum() for _, batch in micro_batches).to(device).float()
        masked_count = all_reduce_sum(masked_count, world_size).clamp(min=1)

        step_sums = torch.zeros(6, device=device)
        for global_index, batch in micro_batches:
            torch.manual_seed(derived_seed(args.seed, step, global_index, "dropout"))
            with autocast(device):
                losses = pretrain_losses(model, to_device(batch, device), masked_count, args.batch)
            losses["loss"].backward()  # gradients add up over the micro-batches: sum = grad of the global mean
            step_sums += objective_sums(losses)
        if world_size > 1:
            sum_gradients_across_processes(parameters)
        step_sums = all_reduce_sum(step_sums, world_size).cpu().double()
        means = objective_means(step_sums)
        if not (math.isfinite(means["mlm_loss"]) and math.isfinite(means["itm_loss"])):
            raise ValueError(f"loss is not finite at step {step + 1} (MLM {means['mlm_loss']}, ITM "
                             f"{means['itm_loss']}): training stopped, last good checkpoint: {last_saved} in {args.out}")
        completed = step + 1
        is_last = completed == args.steps
        grad_norm = gradient_norm(parameters) if completed % args.log_every == 0 or is_last else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(mlm=f"{means['mlm_loss']:.3f}", itm=f"{means['itm_loss']:.3f}",
                             itm_acc=f"{means['itm_acc']:.2f}")
        logged_sums += step_sums

        if rank == 0 and grad_norm is not None:
            means = objective_means(logged_sums)  # averaged over the steps since the last log line
            logged_sums.zero_()
            elapsed = time.time() - logged_time
            samples_per_s = (completed - logged_step) * args.batch / max(elapsed, 1e-9)
            eta = (args.steps - completed) * elapsed / max(completed - logged_step, 1)
            logged_time, logged_step = time.time(), completed
            metrics.write({"step": completed, "split": "train", "lr": lr, **means, "grad_norm": grad_norm,
                           "samples_per_s": samples_per_s})
            say(rank, f"step {completed}/{args.steps} | lr {lr:.2e} | MLM loss {means['mlm_loss']:.4f} "
                      f"acc {means['mlm_acc']:.3f} | ITM loss {means['itm_loss']:.4f} acc {means['itm_acc']:.3f} "
                      f"| grad norm {grad_norm:.3f} | {samples_per_s:.1f} samples/s | ETA {format_duration(eta)}")
        if rank == 0 and held_out_entries and (completed % args.eval_every == 0 or is_last):
            held_out = evaluate_pretraining(model, held_out_loader, tokenizer, args.seed, device)
            metrics.write({"step": completed, "split": "val", **held_out})
            say(rank, f"step {completed} held out | MLM loss {held_out['mlm_loss']:.4f} acc "
                      f"{held_out['mlm_acc']:.3f} | ITM loss {held_out['itm_loss']:.4f} acc {held_out['itm_acc']:.3f}")
        if rank == 0 and (completed % args.save_every == 0 or is_last):
            save_checkpoint(args.out, completed, model, optimizer, {"args": saved_args, "world_size": world_size,
                            "samples_seen": completed * args.batch}, [tokenizer_copy])
            draw_curves(metrics.read(), os.path.join(args.out, "curves.png"), PRETRAIN_PANELS)
            last_saved = f"step {completed}"
    progress.close()
    say(rank, f"done: {args.out}/model.safetensors, metrics.jsonl, curves.png")
    return model


def run_command(command):
    """Run a training command: expected bad input ends it with one line, and processes are released."""
    try:
        command()
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")
    finally:
        if distributed.is_initialized():
            distributed.destroy_process_group()


def main(argv=None):
    args = parse_args(argv)
    run_command(lambda: train(args))


if __name__ == "__main__":
    main()
