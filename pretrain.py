"""Pretraining: masked language modelling (MLM) + image-text matching (ITM) on Korean captions.

Third stop of the reading path (model.py -> data.py -> pretrain.py -> finetune.py). METER §4 pretrains with
MLM and ITM, added with equal weight; Ko-METER does the same on AIHub's Korean COCO captions (batch 256, 40
tokens, 224 px, 40,000 steps, base lr 1e-5, fusion and heads at 5x). Here: the recipe, the two objectives, the
third classic one (CLIP's contrastive loss, which made the encoders METER starts from; pretrain_encoders.py uses
it), the held-out evaluation and the training loop; the machinery it calls is in training.py and checkpoints.py.

    python pretrain.py --demo      # the tiny config on the synthetic demo set, minutes on 2 CPU cores
    python pretrain.py --help      # every flag and its default

The paper's run, on one GPU, or data-parallel with torchrun (--batch stays the global batch):

    python pretrain.py --captions coco/MSCOCO_train_val_Korean.json.part0 --images coco/ --tokenizer klue/tokenizer.json \
        --clip clip/model.safetensors --text klue/model.safetensors
    torchrun --nproc_per_node 8 pretrain.py ...

Choices where the papers are silent:
- One pass per batch (`pretrain_losses`) gives the same losses and gradients as METER's two passes
  (`pretrain_losses_two_pass`) up to dropout's random masks (tests check it with dropout off).
- ITM negatives come from the same micro-batch (the images whose encoder output is at hand). METER's code
  draws each negative image at random from the whole data set (one more image encoder pass per negative).
- The demo recipe (batch 64, 500 steps, base lr 2e-4) starts from the demo's encoders (pretrain_encoders.py,
  made first: `python pretrain_encoders.py --demo`), as the paper starts from CLIP and KLUE RoBERTa.
- The held-out split (the "split": "val" lines of metrics.jsonl) is 2% of the images, at most 1,000,
  taken from COCO's val2014 when the file has it.
"""

import argparse
import functools
import math

import torch
import torch.nn.functional as F

import checkpoints
import check
import data
import formats
import training
from load_weights import build_fresh_model
from model import build_optimizer

# The recipe: METER's learning-rate multipliers; the paper's defaults and the laptop demo's.
PRETRAIN_LR_MULTIPLIERS = {"vision": 1.0, "text": 1.0, "fusion": 5.0, "heads": 5.0}
PRETRAIN_DEFAULTS = {
    "config": "base", "batch": 256, "steps": 40000, "lr": 1e-5, "max_len": 40,
    "log_every": 50, "eval_every": 2000, "save_every": 2000, "out": "pretrain_out", "workers": "auto",
}
PRETRAIN_DEMO_DEFAULTS = {  # what --demo changes: the tiny config on the synthetic set, minutes on a CPU
    "config": "tiny", "batch": 64, "steps": 500, "lr": 2e-4,
    "log_every": 25, "eval_every": 100, "save_every": 250, "out": "out/pretrain_demo", "workers": 0,
    "clip": "out/encoders_demo{world}/clip/model.safetensors", "text": "out/encoders_demo{world}/roberta/model.safetensors",
}  # the encoders of pretrain_encoders.py --demo ({world}: the world's suffix), as the paper starts from CLIP and KLUE
HELD_OUT_SHARE = 0.02  # share of the images kept out of training for the validation curves
HELD_OUT_MAX_IMAGES = 1000


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Ko-METER pretraining with MLM + ITM.")
    training.add_demo_flags(parser, "make the synthetic demo set if missing and pretrain the tiny config on it")
    parser.add_argument("--captions", help="captions: AIHub Korean MSCOCO JSON or JSONL {image, caption}")
    parser.add_argument("--images", help="image root the caption file's paths are relative to")
    parser.add_argument("--tokenizer", help="tokenizer.json or vocab.txt (KLUE WordPiece)")
    training.add_encoder_flags(parser)
    training.add_training_flags(parser, PRETRAIN_DEFAULTS, PRETRAIN_DEMO_DEFAULTS)
    return training.parse_flags(parser, argv, required=("captions", "images", "tokenizer"))


# ----------------------------------------------------------------------------------------------
# The two objectives


def add_pretrain_targets(batch, tokenizer, generator):
    """Draw the random targets of one batch: MLM masks and ITM pairs (CPU tensors)."""
    masked_ids, mlm_labels = data.mask_tokens(batch["input_ids"], tokenizer, generator)
    image_index, itm_labels = data.itm_pairs(batch["image_ids"], generator)
    return {**batch, "masked_ids": masked_ids, "mlm_labels": mlm_labels,
            "image_index": image_index, "itm_labels": itm_labels}


def pretrain_losses_two_pass(model, batch, mlm_normaliser=None, itm_normaliser=None):
    """MLM + ITM the textbook way, as METER computes them: two full forward passes.

    batch: pixels [B, 3, S, S], input_ids / attention_mask [B, T] and the targets of `add_pretrain_targets`:
    masked_ids [B, T], mlm_labels [B, T] (-100 where not masked), image_index [B], itm_labels [B]."""
    attention_mask = batch["attention_mask"]
    # MLM: the masked texts with their own images; predict the original token wherever one was masked
    mlm_feats = model(batch["pixels"], batch["masked_ids"], attention_mask)["text_feats"]  # [B, T, H]
    is_masked = batch["mlm_labels"] != -100  # [B, T]
    mlm_logits = model.mlm_head(mlm_feats)[is_masked]  # [B, T, vocab] -> [M, vocab]
    # ITM: the clean texts with half of the images swapped for another sample's; matched or not?
    paired_pixels = batch["pixels"][batch["image_index"]]  # [B, 3, S, S]
    itm_logits = model.itm_head(model(paired_pixels, batch["input_ids"], attention_mask)["cls_feats"])  # [B, 2]
    return losses_from_logits(mlm_logits, batch["mlm_labels"][is_masked], itm_logits, batch["itm_labels"],
                              mlm_normaliser, itm_normaliser)


def pretrain_losses(model, batch, mlm_normaliser=None, itm_normaliser=None):
    """The same losses in one pass, about a quarter less work at 224 px.

    CLIP has no dropout, so the image encoder's output is the same in both of METER's passes: it runs once,
    and the ITM rows gather it by image_index (half their own image, half another row's). The texts of both objectives go through the text
    encoder and the fusion together, as one batch of 2B: every row is computed as in two passes, but each
    matrix product is twice as tall and each weight gradient is computed once."""
    batch_size = batch["input_ids"].shape[0]
    # (For ViLT, model.vision and model.text are the embeddings and fuse runs its single stream: same calls.)
    image_hidden = model.vision(batch["pixels"])  # [B, 1+N, W], shared by both objectives
    texts = torch.cat([batch["masked_ids"], batch["input_ids"]])  # [2B, T]: MLM texts, then ITM texts
    attention_mask = batch["attention_mask"].repeat(2, 1)  # [B, T] -> [2B, T]
    images = torch.cat([image_hidden, image_hidden[batch["image_index"]]])  # [2B, 1+N, W], ITM rows permuted
    fused = model.fuse(model.text(texts, attention_mask), attention_mask, images)

    is_masked = batch["mlm_labels"] != -100  # [B, T]
    mlm_logits = model.mlm_head(fused["text_feats"][:batch_size][is_masked])  # [M, H] -> [M, vocab], masked only
    itm_logits = model.itm_head(fused["cls_feats"][batch_size:])  # [B, 2H] -> [B, 2]
    return losses_from_logits(mlm_logits, batch["mlm_labels"][is_masked], itm_logits, batch["itm_labels"],
                              mlm_normaliser, itm_normaliser)


def losses_from_logits(mlm_logits, mlm_targets, itm_logits, itm_labels, mlm_normaliser, itm_normaliser):
    """The loss to backpropagate and the named sums the logs are made of.

    Each objective's loss is its summed cross-entropy / normaliser; the default normalisers, this batch's
    counts, give the usual means (the training loop passes others: see `train`). Logits are cast to fp32
    first: a softmax over 32,000 classes in bf16 loses the small probabilities."""
    mlm_loss_sum = F.cross_entropy(mlm_logits.float(), mlm_targets, reduction="sum")
    itm_loss_sum = F.cross_entropy(itm_logits.float(), itm_labels, reduction="sum")
    mlm_count, itm_count = float(mlm_targets.numel()), float(itm_labels.numel())
    mlm_normaliser = max(mlm_count, 1.0) if mlm_normaliser is None else mlm_normaliser
    itm_normaliser = max(itm_count, 1.0) if itm_normaliser is None else itm_normaliser
    return {
        "loss": mlm_loss_sum / mlm_normaliser + itm_loss_sum / itm_normaliser,
        "mlm_loss_sum": mlm_loss_sum.detach(), "itm_loss_sum": itm_loss_sum.detach(),
        "mlm_correct": (mlm_logits.argmax(-1) == mlm_targets).sum(), "itm_correct": (itm_logits.argmax(-1) == itm_labels).sum(),
        "mlm_count": torch.tensor(mlm_count, device=mlm_logits.device), "itm_count": torch.tensor(itm_count, device=itm_logits.device),
    }


def objective_means(sums):
    """Loss and accuracy of each objective from the named sums of any number of batches."""
    mlm_count, itm_count = max(float(sums["mlm_count"]), 1.0), max(float(sums["itm_count"]), 1.0)
    return {"mlm_loss": float(sums["mlm_loss_sum"]) / mlm_count, "mlm_acc": float(sums["mlm_correct"]) / mlm_count,
            "itm_loss": float(sums["itm_loss_sum"]) / itm_count, "itm_acc": float(sums["itm_correct"]) / itm_count}


def contrastive_loss(image_embeddings, text_embeddings, log_scale):
    """Image-text contrastive learning (ITC), the objective CLIP's encoders learned from (Radford et al. 2021, §2.3
    and Figure 3), beside MLM and ITM the third classic one; pretrain_encoders.py trains the demo's encoders with
    it. In a batch of B matched (image, text) pairs, each image must pick its own text among the B texts, and each
    text its own image: every off-diagonal pair is a negative.

    image_embeddings, text_embeddings [B, D]; log_scale: the learned log of the inverse temperature, used capped
    at 100 as in CLIP. Returns the symmetric cross-entropy and how many rows found their pair, each way."""
    with torch.autocast(image_embeddings.device.type, enabled=False):  # in fp32: at a scale of 100, bf16 cosines
        images = F.normalize(image_embeddings.float(), dim=-1)         # would move the logits by up to 0.4
        texts = F.normalize(text_embeddings.float(), dim=-1)
        logits = log_scale.float().clamp(max=math.log(100)).exp() * images @ texts.T  # [B, B]: scaled cosines
    pairs = torch.arange(len(logits), device=logits.device)  # the matched text of image i is text i: the diagonal
    loss = (F.cross_entropy(logits, pairs) + F.cross_entropy(logits.T, pairs)) / 2  # rows: image->text, columns:
    return {"loss": loss, "image_to_text_correct": (logits.argmax(dim=1) == pairs).sum(),  # text->image
            "text_to_image_correct": (logits.argmax(dim=0) == pairs).sum()}


# ----------------------------------------------------------------------------------------------
# Held-out evaluation


def split_held_out(entries, seed):
    """Carve a held-out caption split by image (no image on both sides), from val2014 when there is one."""
    image_ids = entries.distinct("image_id")  # sorted; entries are columns.Entries (see data.py's datasets section)
    in_val = entries.matching("split", lambda split: split.startswith("val"))  # [N] bool
    candidates = entries.select(in_val).distinct("image_id") or image_ids
    # 2% of the images, at least 1, at most 1,000, and never every candidate (one stays in training)
    count = min(len(candidates) - 1, HELD_OUT_MAX_IMAGES, max(1, round(HELD_OUT_SHARE * len(image_ids))))
    order = torch.randperm(len(candidates), generator=training.seeded_generator(seed, "held out")).tolist()
    held_out = entries.matching("image_id", [candidates[index] for index in order[:max(count, 0)]])  # [N] bool
    return entries.select(~held_out), entries.select(held_out)


@torch.no_grad()
def evaluate_pretraining(model, loader, tokenizer, args, device):
    """MLM and ITM loss and accuracy on the held-out captions, with the same masks and pairs every time."""
    model.eval()
    sums = {}
    for batch_index, batch in enumerate(loader):
        batch = add_pretrain_targets(batch, tokenizer, training.seeded_generator(args.seed, "val", batch_index))
        with torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16"):
            losses = pretrain_losses(model, training.to_device(batch, device))
        training.add_sums(sums, {name: value for name, value in losses.items() if name != "loss"})
    model.train()
    return objective_means(sums)


# ----------------------------------------------------------------------------------------------
# Training


def train(args):
    # ---- set-up: processes, then every flag left unset gets its value, in one visible call
    rank, world_size, device = training.setup_processes(args.device)
    args = training.settle_flags(args, PRETRAIN_DEFAULTS, PRETRAIN_DEMO_DEFAULTS, rank, world_size, device)
    accumulation_steps = args.batch // world_size // args.micro_batch  # per process and step (sizes divide: settled)
    run = training.RunFolder(args, rank)  # claims --out; catches SIGTERM / SIGINT from here on
    tokenizer = data.Tokenizer.load(args.tokenizer)
    entries = check.read_usable(formats.read_captions(args.captions, args.images), args.max_bad_share, rank)
    train_entries, held_out_entries = split_held_out(entries, args.seed)
    if rank == 0:
        print(f"captions: {len(train_entries)} for training, {len(held_out_entries)} held out")
    model = build_fresh_model(args, tokenizer, rank)  # model.build_model, encoders from --clip / --text
    model.to(device)
    optimizer = build_optimizer(model, args.lr, PRETRAIN_LR_MULTIPLIERS)
    run.check_room_for(model)  # refuse a disk under --out without room for one checkpoint
    start_step = checkpoints.resume(args, model, optimizer)["step"] if args.resume else 0
    # objective: the model and its losses as one module, what the loop calls; ddp: it in DistributedDataParallel
    objective, ddp = training.wrap_objective(model, pretrain_losses, args, world_size, device)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]

    collate = functools.partial(data.collate_captions, tokenizer=tokenizer, max_len=args.max_len)
    image_size = model.cfg.image_size  # --image-size, else the config's
    # an endless stream in a seeded order from start_step: each step, slice `rank` of the global batch as
    # accumulation_steps micro-batches of --micro-batch; the held-out loader is one pass, same batch size
    loader = iter(training.make_loader(data.CaptionDataset(train_entries, image_size), collate, args, device,
                                       start_step, rank, world_size))
    held_out_loader = training.make_loader(data.CaptionDataset(held_out_entries, image_size), collate, args, device)
    if rank == 0:
        saved_files = [checkpoints.copy_tokenizer(tokenizer.source, args.out)]  # what a checkpoint folder needs
        log = training.RunLog(args, start_step)
    logged_sums = {}

    model.train()
    for step in range(start_step, args.steps):
        # ---- the learning rate of this update, set by hand: 10% warmup from 0, then linear decay to 0, times
        # each group's multiplier
        lr = training.lr_at(step, args.steps, args.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]

        # ---- the targets of this process's micro-batches (from the endless, seeded stream of the loader)
        first_index = rank * accumulation_steps  # position of this process's first micro-batch in the global batch
        micro_batches = [add_pretrain_targets(next(loader), tokenizer, torch.Generator().manual_seed(
            training.derived_seed(args.seed, step, first_index + index, "targets"))) for index in range(accumulation_steps)]
        # The loss must be the mean over the whole global batch, however it is cut into micro-batches and
        # processes. Each micro-batch's loss is therefore its summed cross-entropy divided by a global count:
        # the MLM loss by the masked tokens of the global batch (counted here, added up over processes),
        # the ITM loss by the global batch size. Summed over micro-batches and processes, these losses are the
        # global means, and so are their gradients, added up in .grad by the backward passes (hence all the
        # micro-batches are drawn first: the masked count must be known before the first forward pass).
        masked = sum((batch["mlm_labels"] != -100).sum() for batch in micro_batches).to(device)
        masked_count = max(training.sum_across_processes({"masked": masked}, world_size)["masked"], 1.0)

        # ---- forward and backward, micro-batch by micro-batch
        step_sums = {}
        for index, batch in enumerate(micro_batches):
            # dropout seeded by (seed, step, micro-batch): a resumed run draws the masks the first run drew
            torch.manual_seed(training.derived_seed(args.seed, step, first_index + index, "dropout"))
            if ddp is not None:  # all-reduce in backward only on the last micro-batch (what ddp.no_sync() sets)
                ddp.require_backward_grad_sync = index == accumulation_steps - 1
            with torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16"):  # --dtype bf16
                losses = objective(training.to_device(batch, device), mlm_normaliser=masked_count,
                                   itm_normaliser=args.batch)
            # DDP averages the processes' gradients where the global mean needs their sum: undo its division
            (losses.pop("loss") * world_size).backward()
            training.add_sums(step_sums, losses)
        # a stop signal ends the run after this step: the flag travels with the sums so all processes agree
        step_sums["stop"] = torch.tensor(float(run.stop_requested is not None), device=device)
        sums = training.sum_across_processes(step_sums, world_size)  # {name: float}, all processes added
        if not all(math.isfinite(sums[name]) for name in ("mlm_loss_sum", "itm_loss_sum")):
            raise FloatingPointError(f"loss is not finite at step {step + 1} ({objective_means(sums)})")
        completed, stopping = step + 1, sums.pop("stop") > 0
        is_last = completed == args.steps
        log_now = completed % args.log_every == 0 or is_last
        # the gradient norm, logged only: max_norm=inf measures and never clips (METER does not clip)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, math.inf).item() if log_now else None

        # ---- the update
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        training.add_sums(logged_sums, sums)

        # ---- what the step leaves behind: a log line, a held-out evaluation, a checkpoint (process 0 only)
        if rank == 0 and log_now:
            log.train_line(completed, lr, objective_means(logged_sums), grad_norm)
            logged_sums = {}
        evaluating = held_out_entries and (completed % args.eval_every == 0 or is_last)
        if rank == 0 and evaluating:
            log.eval_line(completed, "val", evaluate_pretraining(model, held_out_loader, tokenizer, args, device))
        saving = completed % args.save_every == 0 or is_last or stopping
        if rank == 0 and saving:
            checkpoints.save_checkpoint(args.out, completed, model, optimizer, {
                "args": vars(args), "world_size": world_size, "samples_seen": completed * args.batch}, saved_files)
            log.saved(completed)
        if evaluating or saving:  # the others wait for process 0's evaluation and checkpoint here
            training.wait_for_process_0(world_size)
        if stopping:  # raises SystemExit with the command that resumes
            run.stop(completed, run.stop_requested)
    run.finish()
    if rank == 0:
        print(f"done: {args.out}/model.safetensors, metrics.jsonl, curves.png")
    return model


def main(argv=None):
    args = parse_args(argv)
    training.run_command(lambda: train(args))


if __name__ == "__main__":
    main()
