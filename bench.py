"""How fast is a Ko-METER training step, how far from what the hardware can do, and how much faster than METER's
way of computing the same losses? On synthetic inputs, after warm-up, median of timed repetitions.

Off the reading path. Reports: the pretraining step (MLM + ITM, forward, backward, AdamW) done this project's
way (the image encoder once, MLM logits only where a token is masked) and METER's way (two full forward
passes, MLM logits everywhere), their losses (identical) and speed ratio; model FLOPs per sample counted from
the config; achieved FLOP/s against the device's measured matrix-multiply ceiling (the model FLOP
utilisation); the VQA fine-tuning step at 384 px; VQA inference; image loading per worker against what the
step consumes. On CUDA it finds the largest micro-batch that fits and projects the paper's runs.

    python bench.py --config tiny                          # seconds on a laptop CPU
    python bench.py --config base --batch 2                # the base model on CPU, a few minutes
    python bench.py --config base --device cuda --dtype bf16 [--compile [layers|step]]   # the README's GPU check
    python bench.py --memory --config base                 # activation memory per sample, 224/384/576 px
    python bench.py --data                                 # image loading only, one worker
"""

import argparse
import math
import os
import subprocess
import sys
import resource
import statistics
import tempfile
import time
from dataclasses import replace

import numpy as np
import torch
from PIL import Image

import data
from finetune import FINETUNE_LR_MULTIPLIERS, vqa_losses
from model import CONFIGS, build_model, build_optimizer
from training import COMPILE_MODES, Objective, compile_layers, compile_step, recompute_layers
from pretrain import (PRETRAIN_LR_MULTIPLIERS, add_pretrain_targets, objective_means, pretrain_losses,
                      pretrain_losses_two_pass)


# -----------------------------------------------------------------------------
# Model FLOPs, counted analytically: a matrix product of [m, k] @ [k, n] costs 2*m*n*k.

def layer_flops(tokens, width, ffn_width, context_tokens=0):
    """One transformer layer over `tokens` tokens; with cross-attention to `context_tokens` when > 0."""
    flops = 2 * tokens * width * 4 * width           # self-attention: q, k, v and output projections
    flops += 2 * 2 * tokens * tokens * width         # scores q k^T and probabilities @ v
    if context_tokens:
        flops += 2 * tokens * width * 2 * width      # cross-attention: q and output projections
        flops += 2 * context_tokens * width * 2 * width  # k and v of the other stream
        flops += 2 * 2 * tokens * context_tokens * width
    return flops + 2 * 2 * tokens * width * ffn_width  # feed-forward in and out


def forward_flops(cfg, text_tokens, masked_tokens, image_passes=1, text_passes=2, mlm_everywhere=False):
    """Forward FLOPs of one pretraining sample: `image_passes` vision encoder runs, `text_passes` text
    encoder + fusion runs (masked text for MLM, clean text for ITM), and the MLM head on the masked
    tokens (or on every token, METER's way)."""
    patches = cfg.num_patches
    image_tokens = 1 + patches
    vision = 2 * patches * 3 * cfg.patch_size ** 2 * cfg.vision_width  # patch embedding
    vision += cfg.vision_layers * layer_flops(image_tokens, cfg.vision_width, 4 * cfg.vision_width)
    text = cfg.text_layers * layer_flops(text_tokens, cfg.text_width, cfg.text_ffn_width)
    hidden = cfg.hidden_size
    fusion = 2 * text_tokens * cfg.text_width * hidden + 2 * image_tokens * cfg.vision_width * hidden
    fusion += cfg.fusion_layers * (layer_flops(text_tokens, hidden, cfg.fusion_ffn_width, image_tokens)
                                   + layer_flops(image_tokens, hidden, cfg.fusion_ffn_width, text_tokens))
    fusion += 2 * 2 * hidden * hidden  # two poolers
    mlm_tokens = text_tokens if mlm_everywhere else masked_tokens
    heads = 2 * mlm_tokens * (hidden * hidden + hidden * cfg.vocab_size) + 2 * 2 * hidden * 2
    return image_passes * vision + text_passes * (text + fusion) + heads


def vqa_forward_flops(cfg, text_tokens, num_answers):
    """Forward FLOPs of one VQA sample: both encoders and the fusion once, then the VQA head on cls_feats."""
    cls_width = 2 * cfg.hidden_size
    no_heads = forward_flops(cfg, text_tokens, 0, text_passes=1) - 2 * 2 * cfg.hidden_size * 2  # less the ITM head
    return no_heads + 2 * (cls_width * cls_width + cls_width * num_answers)


# -----------------------------------------------------------------------------
# Timing.

def synchronize(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def median_seconds(function, device, repeats, warmup):
    for _ in range(warmup):
        function()
    synchronize(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_ceiling(device, dtype):
    """FLOP/s of a large square matrix product: fp32 on CPU, bf16 on CUDA (what a step could reach)."""
    side = 8192 if device.type == "cuda" else 2048
    a = torch.randn(side, side, device=device, dtype=dtype)
    b = torch.randn(side, side, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, repeats=10 if device.type == "cuda" else 5, warmup=2)
    return 2 * side ** 3 / seconds


def peak_memory_gib(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # Linux reports KiB; whole process


def synthetic_tokenizer(vocab_size, folder):
    """A WordPiece tokenizer of vocab_size made-up pieces after KLUE's five special tokens."""
    path = os.path.join(folder, "vocab.txt")
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(f"{token}\n" for token in [*data.SPECIAL_TOKENS, *(f"p{index}" for index in
                                                                           range(vocab_size - len(data.SPECIAL_TOKENS)))])
    return data.Tokenizer.load(path)


def synthetic_batch(cfg, batch_size, text_tokens, device, tokenizer, seed=0):
    """Random pixels and full-length texts of random pieces; MLM masks and ITM pairs drawn as in training."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(data.SPECIAL_TOKENS), cfg.vocab_size, (batch_size, text_tokens), generator=generator)
    input_ids[:, 0], input_ids[:, -1] = tokenizer.cls_id, tokenizer.sep_id
    batch = {"pixels": torch.randn(batch_size, 3, cfg.image_size, cfg.image_size, generator=generator),
             "input_ids": input_ids, "attention_mask": torch.ones_like(input_ids), "image_ids": list(range(batch_size))}
    batch = add_pretrain_targets(batch, tokenizer, generator)
    return {name: value.to(device) for name, value in batch.items() if torch.is_tensor(value)}


# -----------------------------------------------------------------------------
# Data loading: the straightforward Pillow path against data.load_image.

def naive_load(path, size):
    """The straightforward path: full decode, resize, crop, then normalise in separate steps."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, int(width * scale)), max(size, int(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0      # [3, S, S]
    return (pixels - torch.tensor(data.CLIP_MEAN).view(3, 1, 1)) / torch.tensor(data.CLIP_STD).view(3, 1, 1)


def bench_loading(num_images=100, size=224, seed=0, photo_size=(640, 480)):
    """Images/s of one worker, JPEG photos (COCO-sized 640x480 by default, made in a temporary
    folder) -> [3, size, size]; naive path vs load_image. Returns a dict of the numbers."""
    rng = np.random.default_rng(seed)
    results = {"num_images": num_images, "size": size, "photo": f"{photo_size[0]}x{photo_size[1]}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(num_images):
            coarse = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
            coarse = coarse.resize(photo_size, Image.Resampling.BICUBIC)       # smooth regions
            grain = rng.normal(0, 10, (photo_size[1], photo_size[0], 3))      # and texture
            photo = Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8))
            paths.append(os.path.join(folder, f"photo_{index:04d}.jpg"))
            photo.save(paths[-1], quality=90)
        for name, load in (("naive", naive_load), ("project", data.load_image)):
            load(paths[0], size)
            start = time.perf_counter()
            for path in paths:
                load(path, size)
            results[f"{name}_images_per_s"] = num_images / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    results["speedup"] = results["project_images_per_s"] / results["naive_images_per_s"]
    return results


def rate(value):
    """1,234 / 12.3 / 0.123: three significant digits at least, whatever the size."""
    return f"{value:,.0f}" if value >= 100 else f"{value:.3g}"


# -----------------------------------------------------------------------------
# Training steps on synthetic batches, and the largest micro-batch that fits.

def vqa_batch(cfg, batch_size, device, tokenizer, num_answers, seed=0):
    """A VQA batch: 16-token questions, soft-score targets with one right answer each."""
    batch = synthetic_batch(cfg, batch_size, 16, device, tokenizer, seed)
    targets = torch.zeros(batch_size, num_answers, device=device)
    targets[torch.arange(batch_size), torch.arange(batch_size) % num_answers] = 1.0
    return {"pixels": batch["pixels"], "input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
            "targets": targets}


def training_step(objective, optimizer, batch, device, dtype):
    """One update: forward and backward of objective(batch) under the compute dtype, then AdamW."""
    def run():
        with torch.autocast(device.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
            losses = objective(batch)
        losses["loss"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return run


def largest_batch(make_step, device, start=8, limit=1024):
    """The largest power-of-two micro-batch whose training step fits in the GPU's memory."""
    fits, batch_size = None, start
    while batch_size <= limit:
        try:
            make_step(batch_size)()
            synchronize(device)
            fits = batch_size
        except torch.OutOfMemoryError:
            break
        finally:
            torch.cuda.empty_cache()
        batch_size *= 2
    if fits is None:
        raise SystemExit(f"error: even a micro-batch of {start} does not fit in the GPU's memory")
    return fits


def resident_gib(field):
    """VmRSS (now) or VmHWM (the peak since the last reset) of this process, from /proc/self/status."""
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(field + ":")) / 2 ** 20


def activation_peak(args):
    """Peak memory (GiB) of one forward and backward pass above what the weights and gradients already hold.
    The --memory table's probe, one fresh process per setting. On the CPU the peak is the resident set's high-
    water mark (Linux's VmHWM, reset through /proc/self/clear_refs), on CUDA the allocator's peak."""
    device = torch.device(args.device)
    cfg = replace(CONFIGS[args.config], image_size=args.image_size or CONFIGS[args.config].image_size)
    model = build_model(cfg).to(device).train()
    if args.recompute:
        recompute_layers(model)
    tokenizer = synthetic_tokenizer(cfg.vocab_size, tempfile.mkdtemp())
    batch = synthetic_batch(cfg, args.batch, args.max_len, device, tokenizer)
    for parameter in model.parameters():
        parameter.grad = torch.zeros_like(parameter)  # the gradients' memory is there before the pass
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device) / 2 ** 30
    else:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")  # resets VmHWM to the current resident set
        before = resident_gib("VmRSS")
    pretrain_losses(model, batch)["loss"].backward()
    synchronize(device)
    peak = torch.cuda.max_memory_allocated(device) / 2 ** 30 if device.type == "cuda" else resident_gib("VmHWM")
    return peak - before


def memory_table(args):
    """Activation memory per sample of the pretraining step, with and without recomputation: the peak of one
    forward and backward pass of 2 samples, above the weights and gradients, halved."""
    print(f"activation memory per sample of the {args.config} pretraining step, fp32, {args.device} (GiB: the "
          "peak of a 2-sample forward and backward pass above the weights and gradients, halved)")
    print(f"{'image':>8} {'kept':>10} {'recomputed':>12} {'ratio':>7}")
    for size in (224, 384, 576):
        per_sample = {}
        for recompute in (False, True):
            command = [sys.executable, os.path.abspath(__file__), "--activation-peak", "--config", args.config,
                       "--device", args.device, "--image-size", str(size), "--batch", "2"]
            result = subprocess.run(command + (["--recompute"] if recompute else []), capture_output=True,
                                    text=True, check=True)
            per_sample[recompute] = float(result.stdout.split()[-1]) / 2
        print(f"{size:>6}px {per_sample[False]:>10.3f} {per_sample[True]:>12.3f} "
              f"{per_sample[False] / max(per_sample[True], 1e-9):>6.1f}x")


# -----------------------------------------------------------------------------

def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Speed of the Ko-METER training steps, VQA inference and data "
                                                 "loading, on synthetic inputs.")
    parser.add_argument("--config", choices=sorted(CONFIGS), default="tiny", help="model size (default tiny)")
    parser.add_argument("--batch", type=int, default=None, help="pretraining samples per step (default: 64 tiny, "
                        "2 base on CPU; on CUDA the largest power of two that fits)")
    parser.add_argument("--image-size", type=int, default=None, help="pixels per side (default: the config's)")
    parser.add_argument("--vqa-size", type=int, default=384, help="image side of the VQA fine-tuning step (default "
                        "384; METER's recipe uses 576)")
    parser.add_argument("--max-len", type=int, default=40, help="text tokens per sample (default 40, the paper's)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="cpu or cuda")
    parser.add_argument("--dtype", choices=["fp32", "bf16"], default=None,
                        help="compute dtype: bf16 autocast or fp32 (default: bf16 on CUDA, fp32 on CPU)")
    parser.add_argument("--compile", nargs="?", const="layers", choices=COMPILE_MODES, help="torch.compile every "
                        "transformer layer (layers, what a bare --compile means) or each training step whole (step), "
                        "as the training scripts' --compile does")
    parser.add_argument("--recompute", action="store_true", help="recompute layer activations in the backward pass")
    parser.add_argument("--repeats", type=int, default=None, help="timed repetitions (default 10 CUDA, 3 CPU)")
    parser.add_argument("--vqa-batch", type=int, default=None, help="large VQA inference batch (default 64/256)")
    parser.add_argument("--workers", type=int, default=16, help="data-loading workers the GPU host can run "
                        "(default 16: one per core of a 16-core host)")
    parser.add_argument("--skip-data", action="store_true", help="do not measure image loading")
    parser.add_argument("--data", action="store_true", help="measure image loading only: one worker, naive "
                        "Pillow path against data.load_image")
    parser.add_argument("--num-images", type=int, default=100, help="with --data: JPEGs to make and load (default 100)")
    parser.add_argument("--photo-size", default="640x480", help="with --data: size of the test JPEGs (default 640x480)")
    parser.add_argument("--memory", action="store_true", help="only the table of activation memory per sample at "
                        "224, 384 and 576 px, with and without --recompute")
    parser.add_argument("--activation-peak", action="store_true", help=argparse.SUPPRESS)  # --memory's probe
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.data:
        photo_size = tuple(int(side) for side in args.photo_size.split("x"))
        size = args.image_size or 224  # the paper's pretraining size, whatever --config
        for name, value in bench_loading(args.num_images, size, photo_size=photo_size).items():
            print(f"{name}: {value:.1f}" if isinstance(value, float) else f"{name}: {value}")
        return
    if args.activation_peak:
        print(f"activation_peak_gib: {activation_peak(args):.4f}")
        return
    if args.memory:
        memory_table(args)
        return

    device = torch.device(args.device)
    on_cuda = device.type == "cuda"
    dtype = torch.bfloat16 if (args.dtype or ("bf16" if on_cuda else "fp32")) == "bf16" else torch.float32
    cfg = CONFIGS[args.config]
    if args.image_size:
        cfg = replace(cfg, image_size=args.image_size)
    repeats = args.repeats or (10 if on_cuda else 3)
    warmup = 3 if args.compile else 1
    torch.manual_seed(0)
    if on_cuda:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def prepared(model):
        if args.recompute:
            recompute_layers(model)
        if args.compile == "layers":
            compile_layers(model)
        return model.to(device).train()

    def training_objective(model, losses_function):
        """The model and its losses as the training scripts call them; with --compile step, compiled whole."""
        objective = Objective(model, losses_function)
        return compile_step(objective) if args.compile == "step" else objective

    model = prepared(build_model(cfg))
    optimizer = build_optimizer(model, 1e-5, PRETRAIN_LR_MULTIPLIERS)
    tokenizer = synthetic_tokenizer(cfg.vocab_size, tempfile.mkdtemp())
    pretraining = training_objective(model, pretrain_losses)

    def pretraining_step(batch_size):
        return training_step(pretraining, optimizer, synthetic_batch(cfg, batch_size, args.max_len, device, tokenizer),
                             device, dtype)

    started = time.perf_counter()  # to the end of the first step at the benchmark's batch: --compile compiles there
    batch_size = args.batch or (largest_batch(pretraining_step, device) if on_cuda
                                else 2 if args.config == "base" else 64)
    batch = synthetic_batch(cfg, batch_size, args.max_len, device, tokenizer)
    step = training_step(pretraining, optimizer, batch, device, dtype)
    step()
    synchronize(device)
    first_step_seconds = time.perf_counter() - started
    masked_tokens = (batch["mlm_labels"] != -100).sum().item() / batch_size

    # identical losses: both ways on the same weights, without dropout and in fp32
    model.eval()
    with torch.no_grad():
        ours = objective_means(pretrain_losses(model, batch))
        meters = objective_means(pretrain_losses_two_pass(model, batch))
    loss_difference = max(abs(ours[name] - meters[name]) for name in ("mlm_loss", "itm_loss"))
    model.train()

    print(f"Ko-METER bench: config {args.config}, batch {batch_size}, image {cfg.image_size} px, "
          f"text {args.max_len} tokens, {device.type} "
          f"({torch.cuda.get_device_name(device) if on_cuda else f'{torch.get_num_threads()} threads'}), "
          f"{'bf16' if dtype == torch.bfloat16 else 'fp32'}{f', compiled {args.compile}' if args.compile else ''}"
          f"{', recomputed' if args.recompute else ''}, torch {torch.__version__}")
    ceiling = matmul_ceiling(device, dtype)
    ceiling_name = "bf16" if dtype == torch.bfloat16 else "fp32"
    if on_cuda:
        torch.cuda.reset_peak_memory_stats(device)
    seconds = median_seconds(step, device, repeats, warmup)
    memory = peak_memory_gib(device)
    meter_step = training_step(training_objective(model, pretrain_losses_two_pass), optimizer, batch, device, dtype)
    meter_seconds = median_seconds(meter_step, device, repeats, warmup)

    flops = 3 * forward_flops(cfg, args.max_len, masked_tokens)  # backward = twice the forward
    meter_flops = 3 * forward_flops(cfg, args.max_len, masked_tokens, image_passes=2, mlm_everywhere=True)
    achieved = flops * batch_size / seconds
    samples_per_s = batch_size / seconds
    rows = [
        ("pretraining step, this project (one image pass)", f"{rate(samples_per_s)} samples/s",
         f"{seconds * 1e3:,.0f} ms/step", f"peak memory {memory:.2f} GiB"),
        ("pretraining step, METER's way (two passes)", f"{rate(batch_size / meter_seconds)} samples/s",
         f"{meter_seconds * 1e3:,.0f} ms/step", f"speed-up {meter_seconds / seconds:.2f}x"),
        ("losses of the two ways", f"max difference {loss_difference:.1e}", "", ""),
        ("batch search and first pretraining step" if on_cuda and not args.batch else "first pretraining step",
         f"{first_step_seconds:,.1f} s", "compilation included" if args.compile else "", ""),
        ("model FLOPs per pretraining sample", f"{flops / 1e9:,.1f} GFLOP",
         f"METER's way {meter_flops / 1e9:,.1f} GFLOP", ""),
        ("achieved, pretraining", f"{achieved / 1e12:,.3f} TFLOP/s",
         f"{ceiling_name} matmul ceiling {ceiling / 1e12:,.3f} TFLOP/s", f"{achieved / ceiling:.0%} of ceiling"),
    ]
    if on_cuda:
        hours = 40000 * 256 / samples_per_s / 3600
        rows.append(("paper's pretraining, 256 x 40,000 steps", f"projected {hours:.1f} h",
                     f"micro-batch {batch_size}, {math.ceil(256 / batch_size)} per step", ""))
    del model, optimizer, batch, pretraining, step, meter_step

    num_answers = 3811
    vqa_cfg = replace(cfg, image_size=args.vqa_size if args.config == "base" else cfg.image_size, num_answers=num_answers)
    vqa_model = prepared(build_model(vqa_cfg))
    vqa_optimizer = build_optimizer(vqa_model, 5e-6, FINETUNE_LR_MULTIPLIERS)
    vqa_objective = training_objective(vqa_model, vqa_losses)

    def vqa_step(size):
        return training_step(vqa_objective, vqa_optimizer, vqa_batch(vqa_cfg, size, device, tokenizer, num_answers),
                             device, dtype)

    vqa_train_batch = largest_batch(vqa_step, device) if on_cuda else (1 if args.config == "base" else 32)
    vqa_step_seconds = median_seconds(vqa_step(vqa_train_batch), device, repeats, warmup)
    vqa_flops = 3 * vqa_forward_flops(vqa_cfg, 16, num_answers)
    vqa_achieved = vqa_flops * vqa_train_batch / vqa_step_seconds
    rows.append((f"VQA fine-tuning step, {vqa_cfg.image_size} px, batch {vqa_train_batch}",
                 f"{rate(vqa_train_batch / vqa_step_seconds)} samples/s", f"{vqa_achieved / 1e12:,.3f} TFLOP/s",
                 f"{vqa_achieved / ceiling:.0%} of ceiling"))
    if on_cuda:
        hours = 10250 * 512 / (vqa_train_batch / vqa_step_seconds) / 3600
        rows.append(("paper's fine-tuning, 512 x 10,250 steps", f"projected {hours:.1f} h", "", ""))

    vqa_model.eval()
    large = args.vqa_batch or (256 if on_cuda else 64)
    for size in (1, large):
        inputs = synthetic_batch(vqa_cfg, size, 16, device, tokenizer)

        def answer():
            with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=dtype == torch.bfloat16):
                vqa_model.vqa_head(vqa_model(inputs["pixels"], inputs["input_ids"], inputs["attention_mask"])
                                   ["cls_feats"])
        vqa_seconds = median_seconds(answer, device, repeats, warmup=1)
        rows.append((f"VQA inference, batch {size}", f"{rate(size / vqa_seconds)} questions/s",
                     f"{vqa_seconds * 1e3:,.1f} ms/batch", ""))

    if not args.skip_data:
        loading = bench_loading(size=cfg.image_size)
        per_worker = loading["project_images_per_s"]
        rows.append(("data loading, one worker (640x480 JPEG)", f"{per_worker:,.0f} images/s",
                     f"naive Pillow {loading['naive_images_per_s']:,.0f} images/s",
                     f"{per_worker / loading['naive_images_per_s']:.1f}x"))
        rows.append(("data: the pretraining step consumes", f"{rate(samples_per_s)} images/s",
                     f"{args.workers} workers give {per_worker * args.workers:,.0f}",
                     f"needs {math.ceil(samples_per_s / per_worker)} workers"))

    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip())


if __name__ == "__main__":
    main()
