"""Ko-METER VQA fine-tuning and evaluation (SPEC §5, optimisation as SPEC §4).

A classifier over the most frequent training answers, on cls_feats; soft-score targets; binary
cross-entropy times the number of answers; the heads learn at 50x and the fusion at 5x the base lr.
Exact-match accuracy and VQA score on a dev split, overall and per answer type, as the paper's tables.
The whole training machinery (optimizer, schedule, data order, checkpoints, resume, data
parallelism, metrics, curves) is pretrain.py's.

    python finetune.py --demo   # CPU: the paper's comparisons on the demo set, about 2.5 min on 2 cores
                                # (plus about 8 min for the pretraining demo when out/pretrain_demo/ lacks it)

The demo fine-tunes the tiny config three times at equal steps, on the same data and seed:
Ko-METER from the demo pretraining checkpoint (pretraining it first when out/pretrain_demo/ lacks
one), Ko-METER without pretraining, and ViLT (single stream, SPEC §2.6) without pretraining; then
prints accuracy at 1/3, 2/3 and 3/3 of the steps, accuracy per answer type, and Ko-METER vs ViLT.
The demo's answers are colours, counts and positions, so its RandAugment keeps only the operations
that leave them true (SPEC §8: --augment safe).

The paper's run:

    python finetune.py --train vqa/train --dev-size 3000 --images vqa/images --tokenizer klue/tokenizer.json \
        --pretrained pretrain_out/ --image-size 384 --batch 512 --steps 10250

Without --pretrained, --clip/--text give the paper's "without pretraining" run; with neither,
every weight starts random (warned). With --pretrained, the checkpoint decides the architecture and
sizes (--config and --arch are not used) and --image-size resizes its position embeddings.

Outputs in --out: model.safetensors and the resume state (as pretrain.py), answers.json (the
answer vocabulary, index = class), the tokenizer file, best/ (the checkpoint with the best dev
accuracy), results.json (SPEC §7), dev_predictions.jsonl, metrics.jsonl and curves.png.
Exact-match accuracy compares the predicted answer with the most frequent annotator answer (the
first given on a tie); a dev question whose answers are all outside the vocabulary counts, scoring 0.
"""

import argparse
import functools
import json
import math
import os
import shutil
import sys
import time
import unicodedata
from collections import Counter

import torch
import torch.nn.functional as F
from tqdm import tqdm

import data
import pretrain
from load_weights import load_meter, save_model
from model import compile_layers

FINETUNE_LR_MULTIPLIERS = {"vision": 1.0, "text": 1.0, "fusion": 5.0, "heads": 50.0}
FINETUNE_DEFAULTS = {
    "config": "base", "batch": 512, "steps": 10250, "lr": 5e-6, "max_len": 40,
    "log_every": 50, "eval_every": None, "save_every": 1000, "out": "finetune_out", "workers": 4,
    "augment": "all",
}
FINETUNE_DEMO_DEFAULTS = {
    "config": "tiny", "batch": 32, "steps": 300, "lr": 1e-4, "max_len": 40,
    "log_every": 25, "eval_every": None, "save_every": 300, "out": "out/finetune_demo", "workers": 0,
    "augment": "safe",
}
AUGMENT_OPERATIONS = {"all": data.RandAugment.ALL_OPS, "safe": data.RandAugment.SAFE_FOR_COLOUR_AND_COUNT, "none": ()}
DEMO_PRETRAINED = os.path.join("out", "pretrain_demo", "model.safetensors")

FINETUNE_PANELS = [
    ("loss", [("train BCE x answers", "train", "loss")], None),
    ("accuracy", [("train VQA score", "train", "vqa_score"), ("dev accuracy", "dev", "accuracy"),
                  ("dev VQA score", "dev", "vqa_score")], 1.0),
]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Ko-METER VQA fine-tuning (SPEC §5).")
    parser.add_argument("--demo", action="store_true", help="fine-tune the tiny config on the demo set: with and "
                        "without pretraining and ViLT, at equal steps, and print the paper's tables")
    parser.add_argument("--demo-dir", default="demo_data", help="where the demo set lives (default: demo_data)")
    parser.add_argument("--train", help="training questions: an AIHub VQA label file or folder, or JSONL")
    parser.add_argument("--dev", help="dev questions (default: carve --dev-size questions out of --train by image)")
    parser.add_argument("--dev-size", type=int, default=3000, help="dev questions carved from --train when --dev "
                        "is not given (default: 3000, the paper's)")
    parser.add_argument("--images", help="image root the label files' paths are relative to")
    parser.add_argument("--tokenizer", help="tokenizer.json or vocab.txt (KLUE WordPiece)")
    parser.add_argument("--pretrained", help="Ko-METER checkpoint (file or pretraining output folder) to start from")
    pretrain.add_encoder_flags(parser, "without --pretrained: ")
    parser.add_argument("--answers", type=int, default=3811,
                        help="answer classes: the most frequent training answers (default: 3811, the paper's)")
    parser.add_argument("--augment", choices=sorted(AUGMENT_OPERATIONS),
                        help="RandAugment operations on training images: all (METER's), safe (keeps colours, "
                        "counts and positions, SPEC §8) or none (default: all; with --demo: safe)")
    pretrain.add_training_flags(parser, FINETUNE_DEFAULTS, FINETUNE_DEMO_DEFAULTS)
    args = pretrain.fill_defaults(parser.parse_args(argv), FINETUNE_DEFAULTS, FINETUNE_DEMO_DEFAULTS)
    args.eval_every = args.eval_every or math.ceil(args.steps / 3)  # the paper's table: thirds of the run
    if not args.demo:
        for flag in ("train", "images", "tokenizer"):
            if getattr(args, flag) is None:
                parser.error(f"--{flag} is required (or use --demo)")
    return args


# ----------------------------------------------------------------------------------------------
# Loss and evaluation (SPEC §5)


def vqa_losses(model, batch, normaliser=None):
    """Binary cross-entropy with logits against the soft scores, averaged over the B x A entries and
    multiplied by A (METER's loss), i.e. its sum divided by B. The training loop passes the global
    batch size as normaliser so that micro-batch losses add up to the global mean."""
    cls_feats = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])["cls_feats"]  # [B, D]
    logits = model.vqa_head(cls_feats).float()  # [B, num_answers]
    targets = batch["targets"]  # [B, num_answers], soft scores
    loss_sum = F.binary_cross_entropy_with_logits(logits, targets, reduction="sum")
    count = torch.tensor(float(len(targets)), device=logits.device)
    predicted_scores = targets.gather(1, logits.argmax(-1, keepdim=True)).squeeze(1)  # [B]
    return {
        "loss": loss_sum / (count if normaliser is None else normaliser),
        "mean_loss": loss_sum.detach() / count,
        "vqa_score": predicted_scores.mean(),
        "count": count,
    }


def reference_answer(answers):
    """The answer exact-match accuracy compares with: the most frequent one (the first given on a tie)."""
    return Counter(answers).most_common(1)[0][0] if answers else ""


@torch.no_grad()
def evaluate_vqa(model, loader, entries, answer_vocab, device):
    """(results, predictions): accuracy, VQA score and n overall and per answer type, and one row per
    question. Every entry counts, answers outside the vocabulary included (they score 0)."""
    model.eval()
    predictions = []
    for batch in loader:
        batch = pretrain.to_device(batch, device)
        with pretrain.autocast(device):
            cls_feats = model(batch["pixels"], batch["input_ids"], batch["attention_mask"])["cls_feats"]
            predicted = model.vqa_head(cls_feats).argmax(-1).tolist()  # [B]
        for index, answer_index in zip(batch["indices"].tolist(), predicted):
            entry = entries[index]
            prediction = answer_vocab[answer_index]
            predictions.append({
                "question_id": entry["question_id"], "question": entry["question"], "prediction": prediction,
                "answers": entry["answers"], "answer_type": entry["answer_type"],
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
                           for answer_type in data.ANSWER_TYPES}}
    return results, predictions


# ----------------------------------------------------------------------------------------------
# Model and data set-up


def resolve_pretrained(path):
    """A checkpoint file, or the model.safetensors of an output folder."""
    if os.path.isdir(path):
        path = os.path.join(path, "model.safetensors")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: pretrained checkpoint not found")
    return path


def build_finetune_model(args, tokenizer, num_answers, rank):
    """From --pretrained (its config; new VQA head), or a fresh model with CLIP/KLUE or random encoders."""
    if args.pretrained:
        torch.manual_seed(args.seed)
        model = load_meter(resolve_pretrained(args.pretrained), image_size=args.image_size,
                           num_answers=num_answers, verbose=rank == 0)
    else:
        model = pretrain.build_fresh_model(args, tokenizer, rank, num_answers)
    pretrain.check_model_fits(model, tokenizer, args)
    return model


def read_questions(path, images_root, max_bad_share, what, rank):
    entries = data.read_vqa(path, images_root)
    entries, bad = data.check_entries(entries, max_bad_share=max_bad_share)
    if bad:
        pretrain.say(rank, f"{what}: {len(bad)} unusable questions skipped (first: {bad[0][0]}: {bad[0][1]})")
    return entries


def load_answer_vocab(out_dir, train_entries, num_answers, resume):
    """The answer vocabulary: built from the training answers, or read back from OUT on resume."""
    path = os.path.join(out_dir, "answers.json")
    if resume:
        with open(path, encoding="utf-8") as file:
            return json.load(file)
    return data.build_answer_vocab(train_entries, num_answers)


def write_results(out_dir, steps, results, history, predictions):
    pretrain.atomic_write_json({"steps": steps, **results, "history": history}, os.path.join(out_dir, "results.json"))
    temporary = os.path.join(out_dir, "dev_predictions.jsonl.tmp")
    with open(temporary, "w", encoding="utf-8") as file:
        for row in predictions:
            file.write(json.dumps(row, ensure_ascii=False) + "\n")
    os.replace(temporary, os.path.join(out_dir, "dev_predictions.jsonl"))


def save_best(out_dir, model, step, results, extra_files, max_len):
    """OUT/best/: the model with the best dev accuracy so far, with what predict.py needs beside it."""
    best = os.path.join(out_dir, "best")
    temporary = f"{best}.tmp"
    shutil.rmtree(temporary, ignore_errors=True)
    os.makedirs(temporary)
    save_model(model, os.path.join(temporary, "model.safetensors"), {"step": str(step), "max_len": str(max_len)})
    for path in extra_files:
        shutil.copy2(path, os.path.join(temporary, os.path.basename(path)))
    pretrain.atomic_write_json({"step": step, **results}, os.path.join(temporary, "results.json"))
    shutil.rmtree(best, ignore_errors=True)
    os.replace(temporary, best)


# ----------------------------------------------------------------------------------------------
# Training


def train(args):
    rank, world_size, device = pretrain.setup_processes(args.device)
    accumulation_steps = pretrain.check_batch_sizes(args, world_size)
    if args.demo:
        paths = data.make_demo(args.demo_dir, seed=0)
        args.train = args.train or paths["vqa_train"]
        args.dev = args.dev or paths["vqa_dev"]
        args.images = args.images or paths["images"]
        args.tokenizer = args.tokenizer or paths["tokenizer"]
    tokenizer = data.Tokenizer.load(args.tokenizer)
    train_entries = read_questions(args.train, args.images, args.max_bad_share, "train", rank)
    if args.dev:
        dev_entries = read_questions(args.dev, args.images, args.max_bad_share, "dev", rank)
    else:
        train_entries, dev_entries = data.split_dev(train_entries, args.dev_size, args.seed)
    answer_vocab = load_answer_vocab(args.out, train_entries, args.answers, args.resume)
    train_entries = data.drop_unanswerable(train_entries, answer_vocab)
    pretrain.say(rank, f"questions: {len(train_entries)} for training, {len(dev_entries)} dev; "
                       f"{len(answer_vocab)} answer classes")

    model = build_finetune_model(args, tokenizer, len(answer_vocab), rank)
    model.to(device)
    optimizer = pretrain.build_optimizer(model, args.lr, FINETUNE_LR_MULTIPLIERS)
    start_step, history, best_accuracy = 0, [], -1.0
    if args.resume:
        state = pretrain.load_checkpoint(args.out, model, optimizer)
        pretrain.check_resume_args(args, state["args"])
        start_step, history, best_accuracy = state["step"], state["history"], state["best_accuracy"]
        pretrain.say(rank, f"resuming {args.out} at step {start_step}")
    pretrain.broadcast_parameters(model, world_size)
    parameters = [parameter for parameter in model.parameters() if parameter.requires_grad]
    if args.compile:
        compile_layers(model)

    os.makedirs(args.out, exist_ok=True)
    answers_path = os.path.join(args.out, "answers.json")
    if rank == 0:
        tokenizer_copy = pretrain.copy_tokenizer(args.tokenizer, args.out)
        pretrain.atomic_write_json(answer_vocab, answers_path)
        metrics = pretrain.MetricsLog(os.path.join(args.out, "metrics.jsonl"), start_step if args.resume else None)
        extra_files = [tokenizer_copy, answers_path]
    saved_args = dict(vars(args))

    collate = functools.partial(data.collate_vqa, tokenizer=tokenizer, max_len=args.max_len)
    operations = AUGMENT_OPERATIONS[args.augment]
    augment = data.RandAugment(num_ops=2, magnitude=9, ops=operations) if operations else None
    train_set = data.VqaDataset(train_entries, answer_vocab, args.image_size, augment=augment, seed=args.seed)
    dev_loader = torch.utils.data.DataLoader(data.VqaDataset(dev_entries, answer_vocab, args.image_size),
                                             batch_size=args.micro_batch, collate_fn=collate, num_workers=args.workers)
    loader = iter(pretrain.make_loader(train_set, collate, args, start_step, rank, world_size))
    last_saved = f"step {start_step}" if args.resume else "none"

    model.train()
    progress = tqdm(range(start_step, args.steps), initial=start_step, total=args.steps,
                    disable=rank != 0, dynamic_ncols=True)
    logged_time, logged_step = time.time(), start_step
    logged_sums = torch.zeros(3, dtype=torch.float64)  # sums since the last log line
    for step in progress:
        lr = pretrain.lr_at(step, args.steps, args.lr)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_multiplier"]

        step_sums = torch.zeros(3, device=device)  # loss sum, VQA score sum, questions
        for micro_index in range(accumulation_steps):
            global_index = rank * accumulation_steps + micro_index
            batch = pretrain.to_device(next(loader), device)
            torch.manual_seed(pretrain.derived_seed(args.seed, step, global_index, "dropout"))
            with pretrain.autocast(device):
                losses = vqa_losses(model, batch, args.batch)
            losses["loss"].backward()  # gradients add up over the micro-batches: sum = grad of the global mean
            step_sums += torch.stack([losses["mean_loss"] * losses["count"], losses["vqa_score"] * losses["count"],
                                      losses["count"]]).detach()
        if world_size > 1:
            pretrain.sum_gradients_across_processes(parameters)
        step_sums = pretrain.all_reduce_sum(step_sums, world_size).cpu().double()
        mean_loss, mean_score = (step_sums[0] / step_sums[2]).item(), (step_sums[1] / step_sums[2]).item()
        if not math.isfinite(mean_loss):
            raise ValueError(f"loss is not finite at step {step + 1} ({mean_loss}): training stopped, "
                             f"last good checkpoint: {last_saved} in {args.out}")
        completed = step + 1
        is_last = completed == args.steps
        grad_norm = pretrain.gradient_norm(parameters) if completed % args.log_every == 0 or is_last else None
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        progress.set_postfix(loss=f"{mean_loss:.3f}", score=f"{mean_score:.3f}")
        logged_sums += step_sums

        if rank == 0 and grad_norm is not None:
            mean_loss, mean_score = (logged_sums[:2] / logged_sums[2]).tolist()  # since the last log line
            logged_sums.zero_()
            elapsed = time.time() - logged_time
            samples_per_s = (completed - logged_step) * args.batch / max(elapsed, 1e-9)
            eta = (args.steps - completed) * elapsed / max(completed - logged_step, 1)
            logged_time, logged_step = time.time(), completed
            metrics.write({"step": completed, "split": "train", "lr": lr, "loss": mean_loss, "vqa_score": mean_score,
                           "grad_norm": grad_norm, "samples_per_s": samples_per_s})
            pretrain.say(rank, f"step {completed}/{args.steps} | lr {lr:.2e} | loss {mean_loss:.4f} | train VQA "
                               f"score {mean_score:.3f} | grad norm {grad_norm:.3f} | {samples_per_s:.1f} samples/s "
                               f"| ETA {pretrain.format_duration(eta)}")
        if rank == 0 and (completed % args.eval_every == 0 or is_last):
            results, predictions = evaluate_vqa(model, dev_loader, dev_entries, answer_vocab, device)
            overall = results["overall"]
            history.append({"step": completed, "accuracy": overall["accuracy"], "vqa_score": overall["vqa_score"]})
            metrics.write({"step": completed, "split": "dev", **{key: overall[key] for key in ("accuracy", "vqa_score")}})
            write_results(args.out, args.steps, results, history, predictions)
            pretrain.say(rank, f"step {completed} dev | accuracy {overall['accuracy']:.4f} | VQA score "
                               f"{overall['vqa_score']:.4f} | " + " | ".join(
                                   f"{name} {result['accuracy']:.3f}" for name, result in results["by_type"].items()))
            if overall["accuracy"] > best_accuracy:
                best_accuracy = overall["accuracy"]
                save_best(args.out, model, completed, results, extra_files, args.max_len)
        if rank == 0 and (completed % args.save_every == 0 or is_last):
            pretrain.save_checkpoint(args.out, completed, model, optimizer,
                                     {"args": saved_args, "world_size": world_size, "samples_seen": completed * args.batch,
                                      "history": history, "best_accuracy": best_accuracy}, extra_files)
            pretrain.draw_curves(metrics.read(), os.path.join(args.out, "curves.png"), FINETUNE_PANELS)
            last_saved = f"step {completed}"
    progress.close()
    pretrain.say(rank, f"done: {args.out}/results.json, dev_predictions.jsonl, model.safetensors, best/")
    return model


# ----------------------------------------------------------------------------------------------
# The demo: the paper's comparisons on the synthetic set


def run_demo(args, argv):
    """Three fine-tuning runs at equal steps, then the paper's tables for the demo set."""
    pretrained = DEMO_PRETRAINED
    if not os.path.exists(pretrained):
        print(f"{pretrained} is missing: running the pretraining demo first")
        pretrain.main(["--demo", "--demo-dir", args.demo_dir])
    runs = [("with pretraining", "pretrained", ["--pretrained", pretrained]),
            ("without pretraining", "scratch", []),
            ("ViLT without pretraining", "vilt", ["--arch", "vilt"])]
    results = {}
    for label, folder, extra in runs:
        print(f"\n== fine-tuning {label} ==")
        run_args = parse_args([*argv, "--out", os.path.join(args.out, folder), *extra])  # the last --out wins
        train(run_args)
        with open(os.path.join(run_args.out, "results.json"), encoding="utf-8") as file:
            results[label] = json.load(file)
    print_demo_tables(results)


def right_aligned(text, columns):
    """Pad on the left to `columns` terminal columns; a Hangul syllable takes two."""
    width = sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)
    return " " * max(columns - width, 0) + text


def print_demo_tables(results):
    with_pretraining, without = results["with pretraining"], results["without pretraining"]
    steps = [row["step"] for row in with_pretraining["history"]]
    print("\ndev accuracy after fine-tuning steps (the paper's first table)")
    print(f"{'':<24}" + "".join(f"{step:>9}" for step in steps))
    for label in ("with pretraining", "without pretraining"):
        print(f"{label:<24}" + "".join(f"{row['accuracy']:>9.4f}" for row in results[label]["history"]))
    print("\naccuracy by answer type, % (the paper's second table)")
    print(f"{'':<24}" + "".join(right_aligned(answer_type, 12) for answer_type in data.ANSWER_TYPES))
    for label, result in (("with pretraining", with_pretraining), ("without pretraining", without)):
        print(f"{label:<24}" + "".join(f"{100 * result['by_type'][answer_type]['accuracy']:>12.2f}"
                                       for answer_type in data.ANSWER_TYPES))
    print("\nKo-METER vs ViLT, dev accuracy %, both without pretraining (the paper's last comparison)")
    print(f"{'Ko-METER':<24}{100 * without['overall']['accuracy']:>9.2f}")
    print(f"{'ViLT':<24}{100 * results['ViLT without pretraining']['overall']['accuracy']:>9.2f}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    if args.demo and not (args.pretrained or args.arch != "meter" or args.resume):
        pretrain.run_command(lambda: run_demo(args, argv))  # plain --demo: the three runs and the tables
    else:
        pretrain.run_command(lambda: train(args))


if __name__ == "__main__":
    main()
