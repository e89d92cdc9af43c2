"""Encoder pretraining: encoders that already see and read, made on a caption set, before METER pretraining.

A training script beside pretrain.py, stage 1 of the recipe (encoders -> METER pretraining -> VQA fine-tuning).
The paper starts METER pretraining from CLIP ViT-B/16, trained with image-text contrastive learning on 400 M
pairs (Radford et al., ICML 2021), and from KLUE RoBERTa, trained with MLM on 63 GB of Korean text. Neither can be
trained on a laptop, and METER pretraining from random encoders must teach vision from nothing; so this script
stands in for both: it trains a vision encoder and a text encoder together with CLIP's objective (§2.3,
pretrain.contrastive_loss) on a caption set, and writes them in the key layouts of the real downloads:

    OUT/clip/model.safetensors      Hugging Face CLIP's vision tower (vision_model.…), with config.json
    OUT/roberta/model.safetensors   Hugging Face RobertaModel (embeddings.…, encoder.layer.N.…), with config.json
                                    and the tokenizer

pretrain.py and finetune.py read them with --clip / --text through load_weights.load_clip / load_text, exactly
as they read the real files (their --demo recipes do so from out/encoders_demo/, out/encoders_demo_bars/ for
--world bars). The two folders are written at the end of the run: a run stopped early leaves a checkpoint to
--resume, not encoders.

    python pretrain_encoders.py --demo     # the tiny config on the demo's captions, about 1 min on 2 CPU cores
    python pretrain_encoders.py --captions my/captions.jsonl --images my/images --tokenizer my/tokenizer.json \
        --config tiny --out my_encoders    # any caption set, with pretrain.py's data flags

Choices where the papers are silent:
- Each embedding is the mean of its encoder's tokens (padding left out), projected without bias to the fusion's
  width (CLIP projects to 512); the projections are not written out. CLIP reads the [CLS] token instead: from
  random weights the tiny encoders' [CLS] tokens moved too slowly (in the demo the loss stayed at ln B, chance,
  for the first 50 steps; with the mean of the tokens it had fallen to 2.6 by then), and METER's fusion reads
  every token, which the mean trains.
- The vision encoder has the config's vision_layers blocks (2 in the tiny config, 11 in base), all of which
  Ko-METER keeps. METER drops the last of CLIP's 12, which matters little at that depth; a tiny encoder trained
  with 4 blocks and read after 2 lost what it had learnt of the shapes (measured: the METER pretraining's MLM
  named a shape at a position 36% of the time, chance 25%). ViLT's deeper stream (4 blocks) starts its first 2
  from this file and the others fresh.
- Every pair of the batch off the diagonal is a negative, even where it matches: two captions of one picture,
  or two pictures with the same caption (a short inventory such as "빨간색 원 하나가 있다." fits many). CLIP
  does the same; at 400 M pairs such collisions are rare, on a small set they keep R@1 below 1.
  There is no gradient accumulation (--micro-batch must be the batch per process: the loss compares every
  pair of the batch, which micro-batches cannot add up), and under torchrun each process contrasts its own batch.
- The held-out images are pretrain.py's (split_held_out); their curve is image->text and text->image retrieval
  R@1 among all held-out captions and pictures (the "val" lines' accuracies), the training line's the same
  within each batch.
"""

import argparse
import functools
import math
import os
from dataclasses import replace

import torch
import torch.nn as nn
import torch.nn.functional as F

import checkpoints
import check
import data
import formats
import training
from load_weights import check_model_fits, save_clip_vision, save_roberta
from model import CONFIGS, ClipVision, RobertaText, build_optimizer, init_weights
from pretrain import contrastive_loss, split_held_out

ENCODER_LR_MULTIPLIERS = {"vision": 1.0, "text": 1.0, "fusion": 1.0, "heads": 1.0}  # fusion: projections, scale
ENCODER_DEFAULTS = {
    "config": "base", "batch": 256, "steps": 10000, "lr": 5e-4, "max_len": 40,
    "log_every": 50, "eval_every": 1000, "save_every": 1000, "out": "encoders_out", "workers": 4,
}
ENCODER_DEMO_DEFAULTS = {  # what --demo changes: the tiny config on the synthetic captions, minutes on a CPU
    "config": "tiny", "batch": 64, "steps": 400, "lr": 5e-4,
    "log_every": 25, "eval_every": 50, "save_every": 400, "out": "out/encoders_demo", "workers": 0,
}
INITIAL_TEMPERATURE = 0.07  # CLIP's: the similarity scale starts at 1 / 0.07


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=(
        "Stage 1 of 3: pretrain a vision encoder and a text encoder with image-text contrastive learning (CLIP "
        "§2.3) on a caption set, and write them as Hugging Face CLIP vision and RoBERTa files (OUT/clip/, "
        "OUT/roberta/) for pretrain.py and finetune.py --clip / --text. It stands in for the paper's CLIP "
        "ViT-B/16 (contrastive, 400 M pairs) and KLUE RoBERTa (MLM, 63 GB), which a laptop cannot train."))
    training.add_demo_flags(parser, "make the synthetic demo set if missing and train the tiny config's "
                            "encoders on its captions")
    parser.add_argument("--captions", help="captions: AIHub Korean MSCOCO JSON or JSONL {image, caption}")
    parser.add_argument("--images", help="image root the caption file's paths are relative to")
    parser.add_argument("--tokenizer", help="tokenizer.json or vocab.txt (KLUE WordPiece)")
    training.add_training_flags(parser, ENCODER_DEFAULTS, ENCODER_DEMO_DEFAULTS)
    return training.parse_flags(parser, argv, required=("captions", "images", "tokenizer"))


class DualEncoder(nn.Module):
    """CLIP's two towers with this project's encoders: pixels -> ClipVision and text -> RobertaText, each the mean
    of its tokens projected into one space; log_scale is the learned similarity scale."""

    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.vision = ClipVision(cfg)
        self.text = RobertaText(cfg)
        self.image_projection = nn.Linear(cfg.vision_width, cfg.hidden_size, bias=False)
        self.text_projection = nn.Linear(cfg.text_width, cfg.hidden_size, bias=False)
        self.log_scale = nn.Parameter(torch.tensor(math.log(1 / INITIAL_TEMPERATURE)))
        init_weights(self)

    def embed_images(self, pixels):
        return self.image_projection(self.vision(pixels).mean(dim=1))  # [B, 1+N, Wv] -> [B, Wv] -> [B, H]

    def embed_texts(self, input_ids, attention_mask):
        weights = (attention_mask / attention_mask.sum(dim=1, keepdim=True))[:, :, None]  # [B, T, 1], 0 on padding
        mean = (self.text(input_ids, attention_mask) * weights).sum(dim=1)  # [B, T, Wt] -> [B, Wt]
        return self.text_projection(mean)  # [B, H]


def build_dual_encoder(args, tokenizer):
    """The --config's encoders, with the tokenizer's vocabulary."""
    config = CONFIGS[args.config]
    config = replace(config, vocab_size=tokenizer.vocab_size, image_size=args.image_size or config.image_size)
    torch.manual_seed(args.seed)
    model = DualEncoder(config)
    check_model_fits(model, tokenizer, args.max_len)
    return model


def encoder_losses(model, batch):
    """The contrastive loss of one batch, and the sums its log lines are made of."""
    images = model.embed_images(batch["pixels"])
    texts = model.embed_texts(batch["input_ids"], batch["attention_mask"])
    out = contrastive_loss(images, texts, model.log_scale)
    count = torch.tensor(float(len(images)), device=images.device)
    return {**out, "loss_sum": out["loss"].detach() * count, "count": count}


def encoder_means(sums):
    count = max(sums["count"], 1.0)
    return {"loss": sums["loss_sum"] / count, "image_to_text_acc": sums["image_to_text_correct"] / count,
            "text_to_image_acc": sums["text_to_image_correct"] / count}


@torch.no_grad()
def evaluate_retrieval(model, loader, args, device):
    """Retrieval R@1 on the held-out captions: each picture's nearest caption must be one of its own (image ->
    text), each caption's nearest picture its own (text -> image), among all of them."""
    model.eval()
    image_embeddings, text_embeddings, image_ids = [], [], []
    for batch in loader:
        batch = training.to_device(batch, device)
        with torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16"):
            image_embeddings.append(model.embed_images(batch["pixels"]).float())
            text_embeddings.append(model.embed_texts(batch["input_ids"], batch["attention_mask"]).float())
        image_ids += batch["image_ids"]
    model.train()
    codes, first_row = {}, []  # picture -> its number; the first caption row of each picture, in number order
    for row, image_id in enumerate(image_ids):
        if image_id not in codes:
            codes[image_id] = len(codes)
            first_row.append(row)
    caption_images = torch.tensor([codes[image_id] for image_id in image_ids])  # [C]: each caption's picture
    images = F.normalize(torch.cat(image_embeddings)[first_row], dim=-1)  # [I, H]
    texts = F.normalize(torch.cat(text_embeddings), dim=-1)  # [C, H]
    similarity = (images @ texts.T).cpu()  # [I, C]
    return {"image_to_text_acc": (caption_images[similarity.argmax(dim=1)] == torch.arange(len(codes))).float().mean().item(),
            "text_to_image_acc": (similarity.argmax(dim=0) == caption_images).float().mean().item()}


def train(args):
    # ---- set-up: processes, then every flag left unset gets its value, in one visible call
    rank, world_size, device = training.setup_processes(args.device)
    args = training.settle_flags(args, ENCODER_DEFAULTS, ENCODER_DEMO_DEFAULTS, rank, world_size, device)
    if args.micro_batch != args.batch // world_size:
        raise ValueError(f"--micro-batch {args.micro_batch}: the contrastive loss compares every pair of a batch, "
                         f"so a process's batch ({args.batch // world_size}) cannot be split into micro-batches")
    run = training.RunFolder(args, rank)  # claims --out; catches SIGTERM / SIGINT from here on
    tokenizer = data.Tokenizer.load(args.tokenizer)
    entries = check.read_usable(formats.read_captions(args.captions, args.images), args.max_bad_share, rank)
    train_entries, held_out_entries = split_held_out(entries, args.seed)
    model = build_dual_encoder(args, tokenizer).to(device)
    optimizer = build_optimizer(model, args.lr, ENCODER_LR_MULTIPLIERS)
    run.check_room_for(model)  # refuse a disk under --out without room for one checkpoint
    start_step = checkpoints.resume(args, model, optimizer)["step"] if args.resume else 0
    objective, ddp = training.wrap_objective(model, encoder_losses, args, world_size, device)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]

    collate = functools.partial(data.collate_captions, tokenizer=tokenizer, max_len=args.max_len)
    image_size = model.cfg.image_size
    loader = iter(training.make_loader(data.CaptionDataset(train_entries, image_size), collate, args, device,
                                       start_step, rank, world_size))
    held_out_loader = training.make_loader(data.CaptionDataset(held_out_entries, image_size), collate, args, device)
    if rank == 0:
        pictures = len(held_out_entries.distinct("image_id"))
        print(f"captions: {len(train_entries)} for training, {len(held_out_entries)} held out on {pictures} pictures "
              f"(R@1 by chance: 1 in {pictures} each way)")
        saved_files = [checkpoints.copy_tokenizer(tokenizer.source, args.out)]
        log = training.RunLog(args, start_step)
    logged_sums = {}

    model.train()
    for step in range(start_step, args.steps):
        lr = training.lr_at(step, args.steps, args.lr)  # set by hand each step, as in pretrain.py
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]

        # ---- forward and backward of this process's batch; under torchrun DDP averages the processes' gradients
        torch.manual_seed(training.derived_seed(args.seed, step, rank, "dropout"))
        with torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16"):
            losses = objective(training.to_device(next(loader), device))
        losses.pop("loss").backward()
        step_sums = {name: value.detach().float() for name, value in losses.items()}
        step_sums["stop"] = torch.tensor(float(run.stop_requested is not None), device=device)
        sums = training.sum_across_processes(step_sums, world_size)
        if not math.isfinite(sums["loss_sum"]):
            raise FloatingPointError(f"loss is not finite at step {step + 1} ({encoder_means(sums)})")
        completed, stopping = step + 1, sums.pop("stop") > 0
        is_last = completed == args.steps
        log_now = completed % args.log_every == 0 or is_last
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, math.inf).item() if log_now else None

        # ---- the update
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():  # CLIP caps the scale at 100: the parameter too, so that Adam cannot carry it past
            model.log_scale.clamp_(max=math.log(100))
        training.add_sums(logged_sums, sums)

        # ---- what the step leaves behind: a log line, a held-out evaluation, a checkpoint (process 0 only)
        if rank == 0 and log_now:
            log.train_line(completed, lr, {**encoder_means(logged_sums), "scale": model.log_scale.exp().item()},
                           grad_norm)
            logged_sums = {}
        evaluating = held_out_entries and (completed % args.eval_every == 0 or is_last)
        if rank == 0 and evaluating:
            log.eval_line(completed, "val", evaluate_retrieval(model, held_out_loader, args, device))
        saving = completed % args.save_every == 0 or is_last or stopping
        if rank == 0 and saving:
            checkpoints.save_checkpoint(args.out, completed, model, optimizer, {
                "args": vars(args), "world_size": world_size, "samples_seen": completed * args.batch}, saved_files)
            log.saved(completed)
        if evaluating or saving:  # the others wait for process 0's evaluation and checkpoint here
            training.wait_for_process_0(world_size)
        if stopping:  # raises SystemExit with the command that resumes
            run.stop(completed, run.stop_requested)
    if rank == 0:  # the encoders in the real downloads' layouts: what --clip and --text take
        clip_path = save_clip_vision(model.vision, os.path.join(args.out, "clip"), image_size)
        text_path = save_roberta(model.text, os.path.join(args.out, "roberta"), tokenizer.pad_id)
        checkpoints.copy_tokenizer(tokenizer.source, os.path.join(args.out, "roberta"))
    run.finish()
    if rank == 0:
        print(f"done: --clip {clip_path} --text {text_path}")
    return model


def main(argv=None):
    args = parse_args(argv)
    training.run_command(lambda: train(args))


if __name__ == "__main__":
    main()
