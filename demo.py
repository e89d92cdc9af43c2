"""The demo's tables: `python finetune.py --demo` runs the three stages and prints the paper's comparisons.

On top of the training scripts: it calls pretrain_encoders.train, pretrain.train and finetune.train, the way a
user would run them one after another, on the synthetic sets of demo_data.py. finetune.py hands it its command
line when --demo asks for the tables (or --seeds for several runs); `python demo.py` takes the same flags.

    python demo.py                   # = python finetune.py --demo: about 10 min on 2 CPU cores
    python demo.py --world bars --seeds 3

The stages: the encoders (pretrain_encoders.py, out/encoders_demo/, made when missing or older than the demo set),
METER pretraining from them (out/pretrain_demo/, made when missing, older than the encoders or of another tiny
config than model.py's), then three fine-tunings at equal steps: Ko-METER from that pretraining, Ko-METER without
it (from the same encoders) and the ViLT baseline without it. Then the tables, as mean ± standard deviation over
the seeds, with the controls every fine-tuning writes into its results.json (what the words alone score; the same
model shown another picture), the pointing game of the relevancy and attention maps, and the minutes each stage
took.

Choices:
- The "question only" row answers each dev question with the most frequent training answer of the same
  words: a model that does not beat it has learned the questions, not the pictures. The "wrong picture" row under
  each model is that model answering every dev question with another dev picture: a model that looks falls to
  or below the question-only line (it answers for the picture it sees).
- --seeds N runs seeds --seed .. --seed + N - 1 of every fine-tuning from the same pretrained model; the
  spread is the sample standard deviation over those runs.
"""

import os
import sys
import time
import unicodedata
from dataclasses import replace

import finetune
import pretrain
import pretrain_encoders
import report
import training
from checkpoints import read_json
from demo_data import demo_pretrained, make_demo, world_suffix
from formats import ANSWER_TYPES
from load_weights import config_from_metadata, read_safetensors
from model import CONFIGS


def run_finetune_demo(args, argv):
    """`python finetune.py --demo`: the encoder stage and METER pretraining when their output is missing (or older
    than what it starts from; for the pretraining, also when of another tiny config), then three fine-tuning runs at
    equal steps, each --seeds times, and the paper's tables, with the controls and the time of each stage."""
    minutes = {}
    demo_flags = ["--demo", "--world", args.world] + (["--demo-dir", args.demo_dir] if args.demo_dir else [])
    encoders = [pretrain.PRETRAIN_DEMO_DEFAULTS[flag].format(world=world_suffix(args.world)) for flag in ("clip", "text")]
    # the demo set first: a new version of its world (or a deleted one) makes its encoders stale
    demo_dir = args.demo_dir or "demo_data" + world_suffix(args.world)
    made = os.path.getmtime(make_demo(demo_dir, world=args.world)["tokenizer"])
    if not all(os.path.exists(path) and os.path.getmtime(path) >= made for path in encoders):
        print(f"{encoders[0]} is missing or older than the demo set: running the encoder stage first")
        minutes["encoders (pretrain_encoders.py)"] = [timed(
            lambda: pretrain_encoders.train(pretrain_encoders.parse_args(demo_flags)))]
    pretrained = demo_pretrained(args.world)
    if (not os.path.exists(pretrained) or os.path.getmtime(pretrained) < max(map(os.path.getmtime, encoders))
            or not has_tiny_config(pretrained)):
        print(f"{pretrained} is missing, older than the encoders or of another tiny config: running the pretraining "
              f"demo first")
        minutes["METER pretraining (pretrain.py)"] = [timed(lambda: pretrain.train(pretrain.parse_args(demo_flags)))]
    out = output_folder(args)
    cells = [("with pretraining", os.path.join(out, "pretrained"), ["--pretrained", pretrained]),
             ("without pretraining", os.path.join(out, "scratch"), []),
             ("ViLT without pretraining", os.path.join(out, "vilt"), ["--arch", "vilt"])]
    results = run_cells(cells, args, argv, minutes)
    print_demo_tables(results)
    print_minutes(minutes)


def has_tiny_config(checkpoint):
    """Whether a demo checkpoint's model has this version's tiny config (the vocabulary aside: the demo's tokenizer
    sets it). A pretraining made before the config changed is made again, so that the three fine-tunings compare
    models of one config. (The encoders are checked by date only: their files are loaded by shape.)"""
    try:
        saved = config_from_metadata(read_safetensors(checkpoint)[1], checkpoint)
    except (ValueError, KeyError):  # cut short, not safetensors, or no Ko-METER config: made again too
        return False
    return replace(saved, vocab_size=CONFIGS["tiny"].vocab_size) == CONFIGS["tiny"]


def run_seeds(args, argv):
    """`--seeds N` on a single fine-tuning: N runs, then their mean and spread."""
    minutes = {}
    print_demo_tables(run_cells([("fine-tuned", output_folder(args), [])], args, argv, minutes))
    print_minutes(minutes)


def output_folder(args):
    """--out, else finetune.py's default (the demo's gets the world's suffix, as settle_flags gives it)."""
    if args.out:
        return args.out
    return finetune.FINETUNE_DEMO_DEFAULTS["out"] + world_suffix(args.world) if args.demo else finetune.FINETUNE_DEFAULTS["out"]


def timed(run):
    """Minutes of wall time `run()` takes."""
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) / 60


def run_cells(cells, args, argv, minutes):
    """Fine-tune every (label, out, extra flags) cell with seeds --seed .. --seed + --seeds - 1: the first
    seed's run in out, the others in out_seed<s>. Returns {label: [results.json of each seed]}; adds each run's
    minutes to `minutes` under "fine-tuning <label>"."""
    results = {}
    for seed in range(args.seed, args.seed + args.seeds):
        for label, out, extra in cells:
            out = out if seed == args.seed else f"{out}_seed{seed}"
            print(f"\n== fine-tuning {label}, seed {seed} ==")
            run_args = finetune.parse_args([*argv, "--out", out, "--seed", str(seed), *extra])  # the last wins
            minutes.setdefault(f"fine-tuning {label}", []).append(timed(lambda: finetune.train(run_args)))
            results.setdefault(label, []).append(read_json(os.path.join(out, "results.json")))
    return results


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


def print_demo_tables(results):
    """The paper's tables from {label: [results.json of each seed]}: accuracy after each evaluation step; by answer
    type, with each model's wrong-picture control under it, the gain of pretraining seed by seed and what the words
    alone score; Ko-METER against ViLT; and the pointing game. Mean ± standard deviation over the seeds."""
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
    print(f"\naccuracy by answer type %, {over} (the paper's second table; under each model, the same model shown "
          f"another dev picture)")
    print(f"{'':<24}" + "".join(right_aligned(column, 16) for column in columns))
    rows = []
    for label in labels:
        rows.append((label, [[accuracy_of(run, column) for run in results[label]] for column in columns]))
        rows.append(("  wrong picture", [[accuracy_of(run["wrong_picture"], column) for run in results[label]]
                                         for column in columns]))
    if {"with pretraining", "without pretraining"} <= set(results):
        pairs = list(zip(results["with pretraining"], results["without pretraining"]))
        rows.append(("gain, seed by seed", [[accuracy_of(with_run, column) - accuracy_of(without_run, column)
                                             for with_run, without_run in pairs] for column in columns]))
    question_only = results[labels[0]][0]["question_only"]
    rows.append(("question only", [[accuracy_of(question_only, column)] for column in columns]))
    for label, values in rows:
        print(f"{label:<24}" + "".join(f"{percent_text(column_values):>16}" for column_values in values))
    if "ViLT without pretraining" in results:
        print(f"\nKo-METER vs ViLT, dev accuracy %, both without pretraining, {over} (the paper's last comparison)")
        for label, name in (("without pretraining", "Ko-METER"), ("ViLT without pretraining", "ViLT")):
            print(f"{name:<24}{percent_text([run['overall']['accuracy'] for run in results[label]]):>16}")
    print_pointing_game(results, over)


def print_pointing_game(results, over):
    """The share of the questions about one object whose map (predict.py --explain's) peaks inside that object's
    box, per answer type: each model's relevancy map, under it how often the relevancy maps of the picture's
    questions about other things peak in that box, and the last layer's [CLS] attention; last, the chance level
    (the share of the picture's patches inside the box: a map that peaks anywhere)."""
    first = next(iter(results.values()))[0]["pointing"]
    if not first["overall"]["n"]:
        return
    columns = [*first["by_type"], "all"]

    def cells(run):
        return [run["pointing"]["by_type"][column] if column != "all" else run["pointing"]["overall"]
                for column in columns]

    relevancy, attention = report.MAP_NAMES
    print(f"\npointing game: questions about one object whose map peaks in its box %, {over} (the relevancy map; "
          f"under it, where the maps of the picture's questions about other things peak, and the last layer's [CLS] "
          f"attention)")
    print(f"{'':<24}" + "".join(right_aligned(f"{column} ({cell['n']})", 16) for column, cell in zip(columns, cells(
        next(iter(results.values()))[0]))))
    for label, runs in results.items():
        for name, shown in ((relevancy, label), (f"{relevancy}, other questions", "  other questions"),
                            (attention, "  [CLS] attention")):
            print(f"{shown:<24}" + "".join(f"{percent_text(values):>16}" for values in zip(
                *[[cell[name] for cell in cells(run)] for run in runs])))
    print(f"{'by chance':<24}" + "".join(f"{percent_text([cell['chance']]):>16}" for cell in cells(
        next(iter(results.values()))[0])))


def print_minutes(minutes):
    """The wall time of each stage this command ran, in minutes ({stage: [minutes of each run]}; fine-tunings: the
    mean over their seeds)."""
    print("\nminutes of wall time, each stage this command ran (fine-tunings: mean over the seeds)")
    for stage, values in minutes.items():
        print(f"{stage:<40}{sum(values) / len(values):>8.1f}")
    print(f"{'all of them':<40}{sum(map(sum, minutes.values())):>8.1f}")


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if "--demo" not in argv and "--train" not in argv:  # bare `python demo.py`: the demo
        argv = ["--demo", *argv]
    args = finetune.parse_args(argv)
    plain_demo = not (args.pretrained or args.arch != "meter" or args.resume)
    training.run_command(lambda: run_finetune_demo(args, argv) if plain_demo else run_seeds(args, argv))


if __name__ == "__main__":
    main()
