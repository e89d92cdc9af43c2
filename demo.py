"""The demo's tables: `python finetune.py --demo` fine-tunes three times and prints the paper's comparisons.

On top of the training scripts: it calls pretrain.train and finetune.train, the way a user would run them one
after another, on the synthetic sets of demo_data.py. finetune.py hands it its command line when --demo asks
for the tables (or --seeds for several runs); `python demo.py` takes the same flags.

    python demo.py                   # = python finetune.py --demo: about 8 min on 2 CPU cores
    python demo.py --world bars --seeds 3

The three runs, at equal steps: Ko-METER from the demo pretraining (out/pretrain_demo/, made first when
missing), Ko-METER without it, and the ViLT baseline without it. Then the tables, as mean ± standard deviation
over the seeds, beside what the question's words alone score.

Choices:
- The "question only" row answers each dev question with the most frequent training answer of the same
  words: a model that does not beat it has learned the questions, not the pictures.
- --seeds N runs seeds --seed .. --seed + N - 1 of every fine-tuning from the same pretrained model; the
  spread is the sample standard deviation over those runs.
"""

import os
import sys
import unicodedata
from collections import Counter

import finetune
import formats
import pretrain
import training
from checkpoints import read_json
from demo_data import demo_pretrained, make_demo, world_suffix
from formats import ANSWER_TYPES


def run_finetune_demo(args, argv):
    """`python finetune.py --demo`: three fine-tuning runs at equal steps, each --seeds times, then the paper's
    tables. Pretrains first when the world's out/pretrain_demo*/ has no checkpoint."""
    pretrained = demo_pretrained(args.world)
    if not os.path.exists(pretrained):
        print(f"{pretrained} is missing: running the pretraining demo first")
        pretrain_flags = ["--demo", "--world", args.world] + (["--demo-dir", args.demo_dir] if args.demo_dir else [])
        pretrain.train(pretrain.parse_args(pretrain_flags))
    out = output_folder(args)
    cells = [("with pretraining", os.path.join(out, "pretrained"), ["--pretrained", pretrained]),
             ("without pretraining", os.path.join(out, "scratch"), []),
             ("ViLT without pretraining", os.path.join(out, "vilt"), ["--arch", "vilt"])]
    results = run_cells(cells, args, argv)
    print_demo_tables(results, question_only_results(args))


def run_seeds(args, argv):
    """`--seeds N` on a single fine-tuning: N runs, then their mean and spread."""
    results = run_cells([("fine-tuned", output_folder(args), [])], args, argv)
    print_demo_tables(results, question_only_results(args))


def output_folder(args):
    """--out, else finetune.py's default (the demo's gets the world's suffix, as settle_flags gives it)."""
    if args.out:
        return args.out
    return finetune.FINETUNE_DEMO_DEFAULTS["out"] + world_suffix(args.world) if args.demo else finetune.FINETUNE_DEFAULTS["out"]


def run_cells(cells, args, argv):
    """Fine-tune every (label, out, extra flags) cell with seeds --seed .. --seed + --seeds - 1: the first
    seed's run in out, the others in out_seed<s>. Returns {label: [results.json of each seed]}."""
    results = {}
    for seed in range(args.seed, args.seed + args.seeds):
        for label, out, extra in cells:
            out = out if seed == args.seed else f"{out}_seed{seed}"
            print(f"\n== fine-tuning {label}, seed {seed} ==")
            finetune.train(finetune.parse_args([*argv, "--out", out, "--seed", str(seed), *extra]))  # the last wins
            results.setdefault(label, []).append(read_json(os.path.join(out, "results.json")))
    return results


def question_only_results(args):
    """What the words alone score: each dev question answered with the most frequent training answer of the
    same question (of all training questions when the question is new), overall and by type, in the shape of
    results.json; None without a --dev file. A model that looks at the picture must do better."""
    if args.demo:  # the demo set's files, as finetune.py's settle_flags finds them
        paths = make_demo(args.demo_dir or "demo_data" + world_suffix(args.world), seed=0, world=args.world)
        train_path, dev_path, images = paths["vqa_train"], paths["vqa_dev"], paths["images"]
    else:
        train_path, dev_path, images = args.train, args.dev, args.images
    if not dev_path:
        return None
    train_entries, dev_entries = formats.read_vqa(train_path, images), formats.read_vqa(dev_path, images)
    by_question, overall = {}, Counter()
    for entry in train_entries:
        by_question.setdefault(entry["question"], Counter()).update(entry["answers"])
        overall.update(entry["answers"])
    correct = {answer_type: [] for answer_type in ANSWER_TYPES}
    for entry in dev_entries:
        guess = by_question.get(entry["question"], overall).most_common(1)[0][0]
        correct[entry["answer_type"]].append(guess == Counter(entry["answers"]).most_common(1)[0][0])
    every = [hit for hits in correct.values() for hit in hits]
    return {"overall": {"accuracy": sum(every) / max(len(every), 1), "n": len(every)},
            "by_type": {answer_type: {"accuracy": sum(hits) / max(len(hits), 1), "n": len(hits)}
                        for answer_type, hits in correct.items()}}


def right_aligned(text, columns):
    """Pad on the left to `columns` terminal columns; a Hangul syllable takes two."""
    width = sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)
    return " " * max(columns - width, 0) + text


def mean_and_spread(values):
    """(mean, sample standard deviation; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, (sum((value - mean) ** 2 for value in values) / (len(values) - 1)) ** 0.5


def percent_text(values):
    """"45.40 ± 2.10" in percent (± one standard deviation over seeds), or "45.40" for one seed."""
    mean, spread = mean_and_spread([100 * value for value in values])
    return f"{mean:.2f} ± {spread:.2f}" if len(values) > 1 else f"{mean:.2f}"


def accuracy_of(result, column):
    """Accuracy of a results.json in a column of the tables: "overall" or an answer type."""
    return (result["overall"] if column == "overall" else result["by_type"][column])["accuracy"]


def print_demo_tables(results, question_only=None):
    """The paper's tables from {label: [results.json of each seed]}: accuracy after each evaluation step,
    by answer type (with the gain of pretraining seed by seed, and what the words alone score), and
    Ko-METER against ViLT, as mean ± standard deviation over the seeds."""
    seeds = len(next(iter(results.values())))
    over = f"mean ± sd over {seeds} seeds" if seeds > 1 else "one seed"
    labels = [label for label in results if label != "ViLT without pretraining"]
    steps = [row["step"] for row in results[labels[0]][0]["history"]]
    print(f"\ndev accuracy % after fine-tuning steps, {over} (the paper's first table)")
    print(f"{'':<24}" + "".join(f"{step:>16}" for step in steps))
    for label in labels:
        print(f"{label:<24}" + "".join(
            f"{percent_text([run['history'][index]['accuracy'] for run in results[label]]):>16}"
            for index in range(len(steps))))
    columns = ["overall", *ANSWER_TYPES]
    print(f"\naccuracy by answer type %, {over} (the paper's second table)")
    print(f"{'':<24}" + "".join(right_aligned(column, 16) for column in columns))
    rows = [(label, [[accuracy_of(run, column) for run in results[label]] for column in columns]) for label in labels]
    if {"with pretraining", "without pretraining"} <= set(results):
        pairs = list(zip(results["with pretraining"], results["without pretraining"]))
        rows.append(("gain, seed by seed", [[accuracy_of(with_run, column) - accuracy_of(without_run, column)
                                             for with_run, without_run in pairs] for column in columns]))
    if question_only:
        rows.append(("question only", [[accuracy_of(question_only, column)] for column in columns]))
    for label, values in rows:
        print(f"{label:<24}" + "".join(f"{percent_text(column_values):>16}" for column_values in values))
    if "ViLT without pretraining" in results:
        print(f"\nKo-METER vs ViLT, dev accuracy %, both without pretraining, {over} (the paper's last comparison)")
        for label, name in (("without pretraining", "Ko-METER"), ("ViLT without pretraining", "ViLT")):
            print(f"{name:<24}{percent_text([run['overall']['accuracy'] for run in results[label]]):>16}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--demo" not in argv and "--train" not in argv:  # bare `python demo.py`: the demo
        argv = ["--demo", *argv]
    args = finetune.parse_args(argv)
    plain_demo = not (args.pretrained or args.arch != "meter" or args.resume)
    training.run_command(lambda: run_finetune_demo(args, argv) if plain_demo else run_seeds(args, argv))


if __name__ == "__main__":
    main()
