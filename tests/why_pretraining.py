"""The measurements behind README's "Does pretraining help?" section, its "Why, measured" table: the demo
pretraining of one world with a copy of the model at every save, and demo fine-tunings from one of those copies
(or from none), with METER's learning-rate multipliers or the warmup share changed, probed as they train.

Not a test (pytest collects only test_*.py): each command is minutes of CPU, and what it measures goes in the
README. A fine-tuning from a pretrained copy writes probe.jsonl beside its results: at step 0 and after steps
25, 50, 100, 200 and 300, the held-out ITM accuracy read through the ITM head that pretraining trained (kept,
frozen, in the fine-tuned model) and how far the weights of each part have moved (the norm of the change over
the norm of the pretrained weights).

    python pretrain_encoders.py --demo --world bars                # first, when missing: the encoders it starts from
    python tests/why_pretraining.py pretrain --world bars          # 500 steps, a copy every 100 (3 min, 2 cores)
    python tests/why_pretraining.py finetune --world bars --start 500 --seed 1            # a pretrained run
    python tests/why_pretraining.py finetune --world bars --seed 1                        # the same from scratch
    python tests/why_pretraining.py finetune --world bars --start 500 --fusion 1 --heads 10   # gentler lr
    python tests/why_pretraining.py finetune --world bars --start 500 --warmup 0.3
    python tests/why_pretraining.py finetune --world bars --start 500 --encoders 0 --fusion 0  # heads only

Any other flag goes to finetune.py (for example --steps 600 or --augment none). Everything lands in
out/why_<world>/.
"""

import argparse
import functools
import json
import shutil
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import demo_data
import checkpoints  # noqa: E402
import data  # noqa: E402
import finetune  # noqa: E402
import formats  # noqa: E402
import pretrain  # noqa: E402
import training  # noqa: E402
from load_weights import load_meter  # noqa: E402
from model import part_of  # noqa: E402

PROBE_STEPS = (25, 50, 100, 200, 300)


def run_pretraining(world, extra):
    """The demo pretraining of `world`, saving every 100 steps, with each saved model copied to copy_<step>/."""
    out = Path("out") / f"why_{world}" / "pretrain"
    save_checkpoint = checkpoints.save_checkpoint

    def save_and_copy(folder, step, *rest, **keywords):
        saved = save_checkpoint(folder, step, *rest, **keywords)
        (out / f"copy_{step}").mkdir(parents=True, exist_ok=True)
        shutil.copy2(out / "model.safetensors", out / f"copy_{step}" / "model.safetensors")
        return saved

    checkpoints.save_checkpoint = save_and_copy
    pretrain.train(pretrain.parse_args(["--demo", "--world", world, "--out", str(out), "--save-every", "100",
                                        *extra]))


def held_out_probe(paths, start_model, max_len, probe_path):
    """probe(model, step): one probe.jsonl line, the held-out ITM accuracy and each part's relative change."""
    tokenizer = data.Tokenizer.load(paths["tokenizer"])
    _, held_out = pretrain.split_held_out(formats.read_captions(paths["captions"], paths["images"]), 0)  # as pretraining
    probe_args = argparse.Namespace(seed=0, micro_batch=64, workers=0, dtype="fp32")
    collate = functools.partial(data.collate_captions, tokenizer=tokenizer, max_len=max_len)
    loader = training.make_loader(data.CaptionDataset(held_out, start_model.cfg.image_size), collate, probe_args,
                                  torch.device("cpu"))
    start_state = start_model.state_dict()

    def probe(model, step):
        means = pretrain.evaluate_pretraining(model, loader, tokenizer, probe_args, torch.device("cpu"))
        moved, size = {}, {}
        for name, value in model.state_dict().items():
            if name in start_state and start_state[name].shape == value.shape and value.is_floating_point():
                part = part_of(name)
                moved[part] = moved.get(part, 0.0) + (value - start_state[name]).pow(2).sum().item()
                size[part] = size.get(part, 0.0) + start_state[name].pow(2).sum().item()
        with open(probe_path, "a", encoding="utf-8") as file:
            file.write(json.dumps({"step": step, "itm_acc": means["itm_acc"], "mlm_acc": means["mlm_acc"],
                                   "moved": {part: (moved[part] / max(size[part], 1e-12)) ** 0.5 for part in moved}})
                       + "\n")

    return probe


def run_finetuning(options, extra):
    """One demo fine-tuning of options.world, from pretraining copy options.start or from scratch."""
    name = f"start{options.start or 'none'}_seed{options.seed}" + "".join(
        f"_{flag}{getattr(options, flag)}" for flag in ("encoders", "fusion", "heads", "warmup")
        if getattr(options, flag) is not None) + "".join("_" + part.lstrip("-") for part in extra)
    out = Path("out") / f"why_{options.world}" / name
    flags = ["--demo", "--world", options.world, "--seed", str(options.seed), "--out", str(out), *extra]
    start = Path("out") / f"why_{options.world}" / "pretrain" / f"copy_{options.start}"
    args = finetune.parse_args(flags + (["--pretrained", str(start)] if options.start else []))
    for part, multiplier in (("vision", options.encoders), ("text", options.encoders), ("fusion", options.fusion),
                             ("heads", options.heads)):
        if multiplier is not None:
            finetune.FINETUNE_LR_MULTIPLIERS[part] = multiplier
    if options.warmup is not None:
        training.lr_at = functools.partial(training.lr_at, warmup_share=options.warmup)
    if options.start:
        demo_dir = args.demo_dir or "demo_data" + demo_data.world_suffix(options.world)
        paths = demo_data.make_demo(demo_dir, seed=0, world=options.world)  # the demo set (made when missing)
        out.mkdir(parents=True, exist_ok=True)
        (out / "probe.jsonl").unlink(missing_ok=True)
        start_model = load_meter(checkpoints.resolve_checkpoint(str(start)), verbose=False)
        probe = held_out_probe(paths, start_model, args.max_len, out / "probe.jsonl")
        built = {}
        build_finetune_model, train_line = finetune.build_finetune_model, training.RunLog.train_line

        def build_and_probe(*arguments, **keywords):
            built["model"] = build_finetune_model(*arguments, **keywords)
            probe(built["model"], 0)
            return built["model"]

        def log_and_probe(log, step, *rest):
            train_line(log, step, *rest)
            if step in PROBE_STEPS:
                probe(built["model"], step)

        finetune.build_finetune_model, training.RunLog.train_line = build_and_probe, log_and_probe
    finetune.train(args)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("what", choices=["pretrain", "finetune"])
    parser.add_argument("--world", choices=["shapes", "bars"], default="shapes")
    parser.add_argument("--start", type=int, help="finetune: the pretraining step whose copy to start from "
                        "(default: none, from scratch)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--encoders", type=float, help="finetune: the encoders' lr multiplier (default 1)")
    parser.add_argument("--fusion", type=float, help="finetune: the fusion's lr multiplier (default 5)")
    parser.add_argument("--heads", type=float, help="finetune: the heads' lr multiplier (default 50)")
    parser.add_argument("--warmup", type=float, help="finetune: the share of the steps spent warming up (default 0.1)")
    options, extra = parser.parse_known_args()
    if options.what == "pretrain":
        run_pretraining(options.world, extra)
    else:
        run_finetuning(options, extra)


if __name__ == "__main__":
    main()
