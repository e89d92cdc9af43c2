"""VQA fine-tuning: a classifier over the most frequent answers, on the fused [CLS] features.

Last stop of the reading path (model.py -> data.py -> pretrain.py -> finetune.py). METER §4 fine-tunes VQA as
classification over the training answers with soft-score targets and binary cross-entropy; Ko-METER does it on
AIHub's Korean VQA (3,811 answers) and reports accuracy overall and per answer type. Here: the loss, the
evaluation, the model set-up and the training loop (machinery as for pretrain.py).

    python finetune.py --demo   # the demo's three stages and the paper's tables: about 10 min on 2 CPU cores

--demo hands over to demo.py: the demo's encoders and pretraining when missing, then three fine-tunings at equal
steps (from that pretraining; without it, from the same encoders; ViLT without it) and the paper's tables;
--seeds N repeats each run, --world bars uses the second world. The paper's:

    python finetune.py --train vqa/train --dev-size 3000 --images vqa/images --tokenizer klue/tokenizer.json \
        --pretrained pretrain_out/ --image-size 384 --batch 512 --micro-batch 64 --steps 10250

Without --pretrained, --clip/--text give the paper's "without pretraining" run (with neither, outside --demo,
every weight starts random). --pretrained builds the model its checkpoint holds (load_weights.load_meter) and --image-size resizes
its position embeddings. --out receives the checkpoint, answers.json (index = class), best/, results.json,
dev_predictions.jsonl, metrics.jsonl, curves.png and dev_report.html (report.py: every dev question with its
answers and the relevancy map of each, for the final model; a run stopped by a signal leaves none). results.json
also gets the controls that show whether answers come from the picture: "question_only" (the words alone),
"wrong_picture" (each question shown another dev picture) and "pointing" (the pointing game, --dev-objects).

Choices where the papers are silent:
- Exact-match accuracy compares the predicted answer with the most frequent annotator answer (the first
  given on a tie); a dev question whose answers are all outside the vocabulary counts, and scores 0.
- The MLM and ITM heads get no gradient from VQA: frozen, and kept in the saved model (a pretrained
  checkpoint's as they were).
- The demo's answers are colours, counts and positions, so its RandAugment keeps only the operations that
  leave them true (--augment safe); real photographs get METER's full set.
- A new VQA head's bias starts at each answer's log-odds among the training answers (METER starts it at 0):
  the best constant under binary cross-entropy, so that the first steps learn to tell questions apart.
"""

import argparse
import functools
import math
import os
import sys
from collections import Counter

import torch
import torch.nn.functional as F

import checkpoints
import check
import data
import formats
import report
import training
from load_weights import build_fresh_model, check_model_fits, load_meter
from model import build_optimizer

# The recipe: METER's VQA multipliers (the new head learns 50x faster than the encoders) and defaults.
FINETUNE_LR_MULTIPLIERS = {"vision": 1.0, "text": 1.0, "fusion": 5.0, "heads": 50.0}
FINETUNE_DEFAULTS = {
    "config": "base", "batch": 512, "steps": 10250, "lr": 5e-6, "max_len": 40,
    "log_every": 50, "eval_every": None, "save_every": 1000, "out": "finetune_out", "workers": "auto",  # None: thirds
    "augment": "all",
}  # the image size is the model's (224) unless --image-size: the paper's run passes 384
FINETUNE_DEMO_DEFAULTS = {  # what --demo changes: the tiny config on the synthetic set, minutes on a CPU
    "config": "tiny", "batch": 32, "steps": 1000, "lr": 1e-4,
    "log_every": 100, "save_every": 1000, "out": "out/finetune_demo", "workers": 0, "augment": "safe",
    "clip": "out/encoders_demo{world}/clip/model.safetensors", "text": "out/encoders_demo{world}/roberta/model.safetensors",
}  # the encoders of pretrain_encoders.py --demo ({world}: the world's suffix)
AUGMENT_OPERATIONS = {"all": data.RandAugment.ALL_OPS, "safe": data.RandAugment.SAFE_FOR_COLOUR_AND_COUNT, "none": ()}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Ko-METER VQA fine-tuning.")
    training.add_demo_flags(parser, "fine-tune the tiny config on the demo set: with and without pretraining and "
                            "ViLT, at equal steps, and print the paper's tables (demo.py)", seeds=True)
    parser.add_argument("--train", help="training questions: an AIHub VQA label file or folder, or JSONL")
    parser.add_argument("--dev", help="dev questions (default: carve --dev-size questions out of --train by image)")
    parser.add_argument("--dev-size", type=int, default=3000, help="dev questions carved from --train when --dev "
                        "is not given (default: 3000, the paper's)")
    parser.add_argument("--images", help="image root the label files' paths are relative to")
    parser.add_argument("--tokenizer", help="tokenizer.json or vocab.txt (KLUE WordPiece)")
    parser.add_argument("--pretrained", help="Ko-METER checkpoint (file or pretraining output folder) to start from")
    training.add_encoder_flags(parser, "without --pretrained: ")
    parser.add_argument("--dev-objects", help="JSON {question id: [left, top, right, bottom]}: the one object each of "
                        "these dev questions asks about, in pixels of its picture; the pointing game of results.json "
                        "and dev_report.html counts how often the maps peak inside (with --demo: the demo's)")
    parser.add_argument("--answers", type=int, default=3811,
                        help="answer classes: the most frequent training answers (default: 3811, the paper's)")
    parser.add_argument("--augment", choices=sorted(AUGMENT_OPERATIONS),
                        help="RandAugment operations on training images: all (METER's), safe (keeps colours, "
                        "counts and positions) or none (default: all; with --demo: safe)")
    training.add_training_flags(parser, FINETUNE_DEFAULTS, FINETUNE_DEMO_DEFAULTS)
    return training.parse_flags(parser, argv, required=("train", "images", "tokenizer"))


# ----------------------------------------------------------------------------------------------
# Loss and evaluation


def vqa_losses(model, batch, normaliser=None):
    """Binary cross-entropy with logits against the soft scores, averaged over the B x A entries and
    multiplied by A (METER's loss), i.e. its sum divided by B. The training loop passes the global batch size
    as normaliser, so that micro-batch losses add up to the global mean."""
    cls_feats = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])["cls_feats"]  # [B, 2H]
    logits = model.vqa_head(cls_feats).float()  # [B, num_answers], fp32 for the loss
    targets = batch["targets"]  # [B, num_answers], soft scores in [0, 1]
    loss_sum = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    count = float(len(targets))
    predicted_scores = targets.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)  # [B]: score of the argmax
    return {"loss": loss_sum / (count if normaliser is None else normaliser), "loss_sum": loss_sum.detach(),
            "vqa_score_sum": predicted_scores.sum(), "count": torch.tensor(count, device=logits.device)}


def vqa_means(sums):
    """The training line's loss and VQA score from the named sums of any number of batches."""
    return {"loss": sums["loss_sum"] / sums["count"], "vqa_score": sums["vqa_score_sum"] / sums["count"]}


def reference_answer(answers):
    """The answer exact-match accuracy compares with: the most frequent one (the first given on a tie)."""
    return Counter(answers).most_common(1)[0][0] if answers else ""


@torch.no_grad()
def evaluate_vqa(model, loader, entries, answer_vocab, args, device):
    """(results, predictions): accuracy, VQA score and n overall and per answer type, and one row per
    question. Every entry counts, answers outside the vocabulary included (they score 0)."""
    model.eval()
    predictions = []
    for batch in loader:
        batch = training.to_device(batch, device)
        with torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16"):
            cls_feats = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])["cls_feats"]
            predicted = model.vqa_head(cls_feats).argmax(-1).tolist()  # [B]
        for index, answer_index in zip(batch["indices"].tolist(), predicted):
            entry, prediction = entries[index], answer_vocab[answer_index]
            predictions.append({
                "question_id": entry["question_id"], "question": entry["question"], "image": entry["image"],
                "prediction": prediction, "answers": entry["answers"], "answer_type": entry["answer_type"],
                "correct": prediction == reference_answer(entry["answers"]),
                "score": data.answer_scores(entry["answers"]).get(prediction, 0.0) if entry["answers"] else 0.0,
            })
    model.train()

    def summary(rows):
        count = len(rows)
        return {"accuracy": sum(row["correct"] for row in rows) / max(count, 1),
                "vqa_score": sum(row["score"] for row in rows) / max(count, 1), "n": count}

    results = {"overall": summary(predictions),
               "by_type": {answer_type: summary([row for row in predictions if row["answer_type"] == answer_type])
                           for answer_type in formats.ANSWER_TYPES}}  # 예/아니오, 숫자, 알 수 없음, 그 외
    return results, predictions


def wrong_pictures(entries, seed):
    """{image: another image}, the wrong-picture control: the entries' images in a seeded order, each showing the
    next one's picture (the last the first's), so that no question keeps its own (pictures are told apart by
    path). A model that answers from the picture falls to or below what the words alone score (it answers for
    the picture it is shown); one that answers from the words does not move."""
    images = sorted({entry["image"] for entry in entries})
    if len(images) < 2:
        raise ValueError(f"the dev questions are about {len(images)} picture: the wrong-picture control needs two")
    order = torch.randperm(len(images), generator=training.seeded_generator(seed, "wrong pictures")).tolist()
    return {images[order[index]]: images[order[(index + 1) % len(order)]] for index in range(len(order))}


def dev_means(results):
    """The dev line: accuracy and VQA score overall, and the accuracy of each answer type."""
    return {"accuracy": results["overall"]["accuracy"], "vqa_score": results["overall"]["vqa_score"],
            **{f"{answer_type} accuracy": result["accuracy"] for answer_type, result in results["by_type"].items()}}


# ----------------------------------------------------------------------------------------------
# Model and data set-up


def build_finetune_model(args, tokenizer, num_answers, rank):
    """From --pretrained (its config, a new VQA head), or a fresh model with CLIP/KLUE or random encoders.
    The MLM and ITM heads get no gradient from VQA: they are frozen (and DDP then waits for no gradient)."""
    if args.pretrained:  # the checkpoint decides the architecture and sizes; --config and --arch do not apply
        torch.manual_seed(args.seed)  # the new VQA head's initialisation, as build_fresh_model seeds a fresh model
        model = load_meter(checkpoints.resolve_checkpoint(args.pretrained), image_size=args.image_size,
                           num_answers=num_answers, verbose=rank == 0)
        check_model_fits(model, tokenizer, args.max_len)
    else:
        model = build_fresh_model(args, tokenizer, rank, num_answers)
    model.mlm_head.requires_grad_(False)
    model.itm_head.requires_grad_(False)
    return model


def start_from_answer_prior(model, entries, answer_vocab):
    """A new answer classifier (its bias all zero) starts from each answer's log-odds among the training answers,
    the constant that binary cross-entropy would first learn: its first steps then tell questions apart, instead
    of pushing every logit down together (in the demo that drove a pretrained fusion's features of all questions
    to one point, where they stayed: dev accuracy 14%, one answer for every question, at three learning rates)."""
    if model.vqa_head.classifier.bias.any():
        return
    counts = entries.answer_counts()  # {answer: times given}
    share = torch.tensor([counts.get(answer, 0) for answer in answer_vocab]) / max(sum(counts.values()), 1)
    share = share.clamp(1e-6, 1 - 1e-6)
    with torch.no_grad():
        model.vqa_head.classifier.bias.copy_(torch.log(share / (1 - share)))


def read_questions(args, rank):
    """(train, dev) usable entries; dev is carved out of train by image when --dev is not given."""
    train_entries = check.read_usable(formats.read_vqa(args.train, args.images), args.max_bad_share, rank)
    if args.dev:
        return train_entries, check.read_usable(formats.read_vqa(args.dev, args.images), args.max_bad_share, rank)
    return data.split_dev(train_entries, args.dev_size, args.seed)


# ----------------------------------------------------------------------------------------------
# Training


def train(args):
    # ---- set-up: processes, then every flag left unset gets its value, in one visible call
    rank, world_size, device = training.setup_processes(args.device)
    args = training.settle_flags(args, FINETUNE_DEFAULTS, FINETUNE_DEMO_DEFAULTS, rank, world_size, device)
    accumulation_steps = args.batch // world_size // args.micro_batch  # per process and step (sizes divide: settled)
    run = training.RunFolder(args, rank)  # claims --out; catches SIGTERM / SIGINT from here on
    tokenizer = data.Tokenizer.load(args.tokenizer)
    train_entries, dev_entries = read_questions(args, rank)
    objects = report.read_objects(args.dev_objects) if args.dev_objects else None  # a bad file stops the run here
    answers_path = os.path.join(args.out, "answers.json")
    answer_vocab = (checkpoints.read_json(answers_path) if args.resume
                    else data.build_answer_vocab(train_entries, args.answers))
    train_entries = data.drop_unanswerable(train_entries, answer_vocab)
    if rank == 0:
        print(f"questions: {len(train_entries)} for training, {len(dev_entries)} dev; {len(answer_vocab)} answers")

    model = build_finetune_model(args, tokenizer, len(answer_vocab), rank)
    start_from_answer_prior(model, train_entries, answer_vocab)
    model.to(device)
    optimizer = build_optimizer(model, args.lr, FINETUNE_LR_MULTIPLIERS)
    run.check_room_for(model)  # refuse a disk under --out without room for one checkpoint
    state = checkpoints.resume(args, model, optimizer) if args.resume else {"step": 0, "history": [], "best_accuracy": -1.0}
    start_step, history, best_accuracy = state["step"], state["history"], state["best_accuracy"]
    # objective: what the loop calls; ddp: the DistributedDataParallel module under torchrun, else None (pretrain.py)
    objective, ddp = training.wrap_objective(model, vqa_losses, args, world_size, device)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]

    collate = functools.partial(data.collate_vqa, tokenizer=tokenizer, max_len=args.max_len)
    image_size = model.cfg.image_size  # --image-size, else the model's (a pretrained checkpoint's own)
    operations = AUGMENT_OPERATIONS[args.augment]
    augment = data.RandAugment(num_ops=2, magnitude=9, ops=operations) if operations else None
    train_set = data.VqaDataset(train_entries, answer_vocab, image_size, augment=augment, seed=args.seed)
    loader = iter(training.make_loader(train_set, collate, args, device, start_step, rank, world_size))
    dev_loader = training.make_loader(data.VqaDataset(dev_entries, answer_vocab, image_size), collate, args, device)
    wrong_picture_loader = training.make_loader(data.VqaDataset(
        dev_entries, answer_vocab, image_size, picture_of=wrong_pictures(dev_entries, args.seed)), collate, args, device)
    if rank == 0:
        checkpoints.write_json(answers_path, answer_vocab)
        saved_files = [checkpoints.copy_tokenizer(tokenizer.source, args.out), answers_path]
        log = training.RunLog(args, start_step)
    logged_sums = {}

    model.train()
    for step in range(start_step, args.steps):
        lr = training.lr_at(step, args.steps, args.lr)  # set by hand each step, as in pretrain.py
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]

        # ---- forward and backward over this process's micro-batches of the endless, seeded stream; each
        # loss is divided by the global batch size, so that they add up to the global mean (see pretrain.py)
        step_sums = {}
        first_index = rank * accumulation_steps  # position of this process's first micro-batch in the global batch
        for index in range(accumulation_steps):
            # dropout seeded by (seed, step, micro-batch): a resumed run draws the masks the first run drew
            torch.manual_seed(training.derived_seed(args.seed, step, first_index + index, "dropout"))
            if ddp is not None:  # all-reduce in backward only on the last micro-batch (what ddp.no_sync() sets)
                ddp.require_backward_grad_sync = index == accumulation_steps - 1
            with torch.autocast(device.type, torch.bfloat16, enabled=args.dtype == "bf16"):  # --dtype bf16
                losses = objective(training.to_device(next(loader), device), normaliser=args.batch)
            # DDP averages the processes' gradients where the global mean needs their sum: undo its division
            (losses.pop("loss") * world_size).backward()
            training.add_sums(step_sums, losses)
        # a stop signal ends the run after this step: the flag travels with the sums so all processes agree
        step_sums["stop"] = torch.tensor(float(run.stop_requested is not None), device=device)
        sums = training.sum_across_processes(step_sums, world_size)  # {name: float}, all processes added
        if not math.isfinite(sums["loss_sum"]):
            raise FloatingPointError(f"loss is not finite at step {step + 1} ({sums['loss_sum']})")
        completed, stopping = step + 1, sums.pop("stop") > 0
        is_last = completed == args.steps
        log_now = completed % args.log_every == 0 or is_last
        # the gradient norm, logged only: max_norm=inf measures and never clips (METER does not clip)
        grad_norm = torch.nn.utils.clip_grad_norm_(parameters, math.inf).item() if log_now else None

        # ---- the update
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        training.add_sums(logged_sums, sums)

        # ---- what the step leaves behind: a log line, a dev evaluation, a checkpoint (process 0 only)
        if rank == 0 and log_now:
            log.train_line(completed, lr, vqa_means(logged_sums), grad_norm)
            logged_sums = {}
        evaluating = (completed % args.eval_every == 0 or is_last)
        if rank == 0 and evaluating:
            results = evaluate_and_keep_best(model, dev_loader, dev_entries, answer_vocab, args, device, completed,
                                             history, best_accuracy, saved_files)
            best_accuracy = max(best_accuracy, results["overall"]["accuracy"])
            log.eval_line(completed, "dev", dev_means(results))
        saving = completed % args.save_every == 0 or is_last or stopping
        if rank == 0 and saving:
            checkpoints.save_checkpoint(args.out, completed, model, optimizer, {
                "args": vars(args), "world_size": world_size, "samples_seen": completed * args.batch,
                "history": history, "best_accuracy": best_accuracy}, saved_files)
            log.saved(completed)
        if evaluating or saving:  # the others wait for process 0's evaluation and checkpoint here
            training.wait_for_process_0(world_size)
        if stopping:  # raises SystemExit with the command that resumes
            run.stop(completed, run.stop_requested)
    if rank == 0:  # the final model: the controls, and the dev questions as one page with the attention maps
        controls = {"question_only": report.question_only(train_entries, dev_entries, reference_answer),
                    "wrong_picture": evaluate_vqa(model, wrong_picture_loader, dev_entries, answer_vocab, args, device)[0]}
        rows = report.write_report(os.path.join(args.out, "dev_report.html"), model, tokenizer, answer_vocab,
                                   args.max_len, dev_entries, reference_answer,
                                   f"{args.out}: dev questions after {args.steps} steps", objects=objects,
                                   controls=controls)
        results = checkpoints.read_json(os.path.join(args.out, "results.json"))
        checkpoints.write_json(os.path.join(args.out, "results.json"), {
            **results, **controls, "pointing": report.pointing_results(rows)})
    run.finish()
    if rank == 0:
        print(f"done: {args.out}/results.json, dev_report.html, dev_predictions.jsonl, model.safetensors, best/")
    return model


def evaluate_and_keep_best(model, dev_loader, dev_entries, answer_vocab, args, device, step, history, best, saved_files):
    """Dev results; appended to `history`, written to results.json and dev_predictions.jsonl, and best/ if better."""
    results, predictions = evaluate_vqa(model, dev_loader, dev_entries, answer_vocab, args, device)
    history.append({"step": step, **{key: results["overall"][key] for key in ("accuracy", "vqa_score")}})
    checkpoints.write_json(os.path.join(args.out, "results.json"), {"steps": args.steps, **results, "history": history})
    checkpoints.write_jsonl(os.path.join(args.out, "dev_predictions.jsonl"), predictions)
    if results["overall"]["accuracy"] > best:
        checkpoints.write_folder(os.path.join(args.out, "best"), model, {"step": str(step), "max_len": str(args.max_len)},
                                 saved_files, json_files={"results.json": {"step": step, **results}})
    return results


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    # --demo alone, or --seeds N: several runs and the tables, driven by demo.py (which calls train): hand it over
    plain_demo = args.demo and not (args.pretrained or args.arch != "meter" or args.resume)
    if plain_demo or args.seeds > 1:
        demo_script = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo.py")
        os.execv(sys.executable, [sys.executable, demo_script, *argv])
    training.run_command(lambda: train(args))


if __name__ == "__main__":
    main()
