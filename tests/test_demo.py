"""Tests of the demo's two synthetic worlds and its commands (CPU, seconds): the bars world writes the same
bytes for a seed in any process, in layouts the readers take, with all four answer types and answers that
follow from its pictures; it runs end to end (pretraining, then fine-tuning over two seeds); --world gives
each world its own folders; --seeds puts its runs side by side and the tables report mean ± spread.

    python -m pytest -q tests/test_demo.py
"""

import dataclasses
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from safetensors.torch import save_file

import bars_world
import check
import demo_data
import data
import demo
import finetune
import formats
import pretrain
import pretrain_encoders
import report
import torch
import training
from model import CONFIGS

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY_SIZES = {"caption_images": 40, "vqa_train_images": 30, "vqa_dev_images": 10, "questions_per_image": 4,
              "image_size": 64, "vocab_size": 200}
TRAINING_FLAGS = ["--config", "tiny", "--batch", "8", "--steps", "4", "--max-len", "40", "--log-every", "2",
                  "--eval-every", "2", "--save-every", "4", "--workers", "0"]


@pytest.fixture(scope="module")
def bars_set(tmp_path_factory):
    return demo_data.make_demo(str(tmp_path_factory.mktemp("bars") / "demo_data_bars"), world="bars", **TINY_SIZES)


def files_of(root):
    return {str(path.relative_to(root)): path.read_bytes() for path in sorted(Path(root).rglob("*")) if path.is_file()}


def test_bars_world_is_deterministic_in_any_process(bars_set, tmp_path):
    root = Path(bars_set["captions"]).parent
    script = (f"import demo_data; demo_data.make_demo({str(tmp_path / 'again')!r}, world='bars', "
              + ", ".join(f"{name}={value}" for name, value in TINY_SIZES.items()) + ")")
    environment = {**os.environ, "PYTHONHASHSEED": "12345"}  # another set order: bytes must not depend on it
    subprocess.run([sys.executable, "-c", script], cwd=REPO, env=environment, check=True)
    first, again = files_of(root), files_of(tmp_path / "again")
    assert first == again and len(first) == 40 + 30 + 10 + 6  # pictures, then 5 JSON files and the marker
    assert any(name.startswith("images/bars/bars_") for name in first)
    other = demo_data.make_demo(tmp_path / "other", seed=1, world="bars", **TINY_SIZES)
    assert Path(other["vqa_train"]).read_bytes() != Path(bars_set["vqa_train"]).read_bytes()


def test_bars_layouts_are_read_with_all_four_answer_types(bars_set):
    captions, bad = check.check_entries(formats.read_captions(bars_set["captions"], bars_set["images"]), 0)
    assert len(captions) == 40 * 5 and not bad
    assert {entry["split"] for entry in captions} == {"train2014", "val2014"}
    train, _ = check.check_entries(formats.read_vqa(bars_set["vqa_train"], bars_set["images"]), 0)
    dev, _ = check.check_entries(formats.read_vqa(bars_set["vqa_dev"], bars_set["images"]), 0)
    assert len(train) == 30 * 4 and len(dev) == 10 * 4
    assert not {entry["image"] for entry in train} & {entry["image"] for entry in dev}
    assert {entry["answer_type"] for entry in train} == set(formats.ANSWER_TYPES)
    for entry in [*train, *dev]:  # the stored type is also the one the readers infer from the answer
        assert formats.answer_type_of({"answers": entry["answers"]}) == entry["answer_type"]
    tokenizer = data.Tokenizer.load(bars_set["tokenizer"])
    ids, _ = tokenizer.encode([entry["caption"] for entry in captions], 200)
    assert not (ids == tokenizer.unk_id).any()
    assert tokenizer.decode(ids[0]) == captions[0]["caption"]


def test_bars_answers_follow_from_the_picture():
    rng = random.Random(0)
    size, unit = 96, 0.22 * 96
    for _ in range(200):
        bars = bars_world.bars_scene(rng)
        assert 2 <= len(bars) <= 4 and [bar["slot"] for bar in bars] == sorted({bar["slot"] for bar in bars})
        picture = np.asarray(bars_world.draw_bars(bars, size, rng)).astype(int)
        for bar in bars:  # the bar's colour fills its slot up to its height, and no higher
            centre = round((bar["slot"] + 0.5) * size / 4)
            colour = np.array(bars_world.BAR_COLOURS[bar["colour"]][1])
            column = np.abs(picture[:, centre - 2:centre + 3] - colour).sum(axis=2).min(axis=1) < 40
            top = 0.86 * size - bar["level"] * unit
            assert column[round(top) + 2:round(0.86 * size) - 2].all() and not column[:round(top) - 2].any()
            dot = np.abs(picture[:round(top), centre - 2:centre + 3] - np.array(bars_world.DOT_COLOUR)).sum(axis=2) < 40
            assert dot.any() == bar["dot"]
        for question, answer, answer_type, box in bars_world.bars_questions(bars, rng, 6):
            assert formats.answer_type_of({"answers": [answer]}) == answer_type
            if box is not None:  # the box of the one bar asked about holds that bar's colour and nothing outside
                left, top, right, bottom = (round(value) for value in box)
                inside = picture[top + 1:bottom - 1, left + 1:right - 1]
                asked = next(bar for bar in bars if bar["box"] == box)
                colour = np.array(bars_world.BAR_COLOURS[asked["colour"]][1])
                assert (np.abs(inside - colour).sum(axis=2) < 40).mean() > 0.5
            if question == "맨 왼쪽 막대는 무슨 색인가요?":
                assert box == bars[0]["box"]
            if question == "막대는 모두 몇 개인가요?":
                assert answer == f"{len(bars)}개"
            if question == "맨 왼쪽 막대는 무슨 색인가요?":
                assert answer == bars[0]["colour"]
            if question.endswith("막대보다 높나요?"):
                first, second = question.split(" 막대")[0], question.split("가 ")[1].split(" 막대")[0]
                levels = {bar["colour"]: bar["level"] for bar in bars}
                assert answer == ("예" if levels[first] > levels[second] else "아니오")
        korean, english = bars_world.bars_captions(bars, rng)
        assert len(set(korean)) == 5 and len(english) == 5


def test_bars_world_end_to_end(bars_set, tmp_path, capsys):
    """Pretraining, then fine-tuning from it over two seeds (finetune.py --seeds hands over to demo.py): the runs
    side by side, then the tables."""
    data_flags = ["--images", bars_set["images"], "--tokenizer", bars_set["tokenizer"]]
    pretrain.main(["--captions", bars_set["captions"], *data_flags, *TRAINING_FLAGS, "--out", str(tmp_path / "pre")])
    out = tmp_path / "finetune"
    demo.main(["--train", bars_set["vqa_train"], "--dev", bars_set["vqa_dev"], *data_flags, *TRAINING_FLAGS,
                   "--pretrained", str(tmp_path / "pre"), "--augment", "safe", "--seeds", "2", "--out", str(out)])
    for folder in (out, tmp_path / "finetune_seed1"):
        results = json.loads((folder / "results.json").read_text(encoding="utf-8"))
        assert results["overall"]["n"] == 40 and [row["step"] for row in results["history"]] == [2, 4]
    state = json.loads((tmp_path / "finetune_seed1" / "training_state.json").read_text(encoding="utf-8"))
    assert state["args"]["seed"] == 1
    printed = capsys.readouterr().out
    assert "mean ± sd over 2 seeds" in printed and "question only" in printed and "fine-tuned" in printed


def settled(script, argv, recipe, demo_recipe, monkeypatch):
    """The flags as train sees them after settle_flags, without making a demo set."""
    monkeypatch.setattr(training, "make_demo", lambda folder, seed, world: {
        key: os.path.join(folder, key) for key in ("captions", "vqa_train", "vqa_dev", "images", "tokenizer",
                                                   "dev_objects")})
    return training.settle_flags(script.parse_args(argv), recipe, demo_recipe, 0, 1, torch.device("cpu"))


def test_world_chooses_the_folders(monkeypatch):
    def finetune_flags(*argv):
        return settled(finetune, list(argv), finetune.FINETUNE_DEFAULTS, finetune.FINETUNE_DEMO_DEFAULTS, monkeypatch)

    def pretrain_flags(*argv):
        return settled(pretrain, list(argv), pretrain.PRETRAIN_DEFAULTS, pretrain.PRETRAIN_DEMO_DEFAULTS, monkeypatch)

    shapes, bars = finetune_flags("--demo"), finetune_flags("--demo", "--world", "bars")
    assert (shapes.demo_dir, shapes.out) == ("demo_data", os.path.join("out", "finetune_demo"))
    assert (bars.demo_dir, bars.out) == ("demo_data_bars", os.path.join("out", "finetune_demo_bars"))
    assert bars.train == os.path.join("demo_data_bars", "vqa_train") and bars.config == "tiny" and bars.max_len == 40
    assert bars.dev_objects == os.path.join("demo_data_bars", "dev_objects")
    assert (shapes.clip, bars.text) == ("out/encoders_demo/clip/model.safetensors",
                                        "out/encoders_demo_bars/roberta/model.safetensors")
    assert pretrain_flags("--demo", "--world", "bars").clip == "out/encoders_demo_bars/clip/model.safetensors"
    assert finetune_flags("--demo", "--clip", "mine.safetensors").clip == "mine.safetensors"
    assert (shapes.eval_every, shapes.micro_batch, shapes.dtype) == (334, 32, "fp32")  # thirds of 1000 steps
    assert pretrain_flags("--demo", "--world", "bars").out == os.path.join("out", "pretrain_demo_bars")
    assert pretrain_flags("--demo", "--world", "bars", "--out", "elsewhere").out == "elsewhere"
    real = pretrain_flags("--captions", "c.json", "--images", "i", "--tokenizer", "t.json")
    assert (real.config, real.batch, real.steps, real.lr, real.out) == ("base", 256, 40000, 1e-5, "pretrain_out")
    assert real.clip is None and real.text is None  # a real run starts from random encoders unless told
    assert demo_data.demo_pretrained("bars") == os.path.join("out", "pretrain_demo_bars", "model.safetensors")
    assert finetune.parse_args(["--demo", "--seeds", "3"]).seeds == 3
    with pytest.raises(SystemExit):
        finetune.parse_args(["--demo", "--seeds", "0"])


def results_with(accuracy, question_only=0.25):
    def scored(value):
        return {"overall": {"accuracy": value, "vqa_score": value, "n": 4},
                "by_type": {answer_type: {"accuracy": value, "vqa_score": value, "n": 1}
                            for answer_type in formats.ANSWER_TYPES}}

    history = [{"step": step, "accuracy": accuracy, "vqa_score": accuracy} for step in (10, 20, 30)]
    pointing = {"n": 2, "chance": 0.125, "relevancy to the answer": accuracy, "[CLS] token's attention": accuracy / 2,
                "relevancy to the answer, other questions": 0.375, "[CLS] token's attention, other questions": 0.5}
    return {"steps": 30, **scored(accuracy), "history": history, "question_only": scored(question_only),
            "wrong_picture": scored(accuracy / 4), "pointing": {"overall": pointing, "by_type": {"그 외": pointing}}}


def made_first(monkeypatch):
    """A stand-in for the demo set of the bars, its tokenizer written now: what demo.py compares the stages with."""
    Path("demo_data_bars").mkdir()
    Path("demo_data_bars", "tokenizer.json").write_text("{}", encoding="utf-8")
    monkeypatch.setattr(demo, "make_demo", lambda folder, world: {"tokenizer": os.path.join(folder, "tokenizer.json")})


def test_stages_older_than_the_demo_set_are_made_again(tmp_path, monkeypatch):
    """A new version of a world rewrites its demo set: encoders made before it (another world's pictures) and the
    pretraining made from them must be made again, not fine-tuned from."""
    monkeypatch.chdir(tmp_path)
    encoders = [pretrain.PRETRAIN_DEMO_DEFAULTS[flag].format(world="_bars") for flag in ("clip", "text")]
    for made in encoders + [demo_data.demo_pretrained("bars")]:
        Path(made).parent.mkdir(parents=True, exist_ok=True)
        Path(made).write_bytes(b"")
    time.sleep(0.05)
    made_first(monkeypatch)  # the demo set is newer than every stage
    stages = []

    def encoder_stage(args):
        stages.append("encoders")
        for path in encoders:
            Path(path).write_bytes(b"")

    monkeypatch.setattr(pretrain_encoders, "train", encoder_stage)
    monkeypatch.setattr(pretrain, "train", lambda args: stages.append("pretraining"))
    monkeypatch.setattr(demo, "run_cells", lambda *args: stages.append("fine-tunings") or {})
    monkeypatch.setattr(demo, "print_demo_tables", lambda results: None)
    argv = ["--demo", "--world", "bars"]
    demo.run_finetune_demo(finetune.parse_args(argv), argv)
    assert stages == ["encoders", "pretraining", "fine-tunings"]


def write_stages(world_suffix, **config_changes):
    """Stand-ins for the encoders and the pretraining of a world, made in that order (so nothing is older than what
    it starts from); the pretrained checkpoint carries the tiny config, with config_changes, in its metadata."""
    for path in [pretrain.PRETRAIN_DEMO_DEFAULTS[flag].format(world=world_suffix) for flag in ("clip", "text")]:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_bytes(b"")
    pretrained = demo_data.demo_pretrained(world_suffix.removeprefix("_") or "shapes")
    Path(pretrained).parent.mkdir(parents=True, exist_ok=True)
    config = {**dataclasses.asdict(CONFIGS["tiny"]), "vocab_size": 200, **config_changes}
    save_file({"weight": torch.zeros(1)}, pretrained, metadata={"config": json.dumps(config)})


@pytest.mark.parametrize("broken", [False, True])
def test_a_pretraining_of_another_tiny_config_is_made_again(tmp_path, monkeypatch, broken):
    """A demo pretrained before the tiny config changed (here with the fusion's former 2 heads) would be fine-tuned
    beside fresh models of the new config, and the comparison would no longer be at equal architectures; a file that
    is not safetensors at all is made again too, not read."""
    monkeypatch.chdir(tmp_path)
    made_first(monkeypatch)
    write_stages("_bars", fusion_heads=CONFIGS["tiny"].fusion_heads // 2)  # newer than the demo set
    if broken:
        Path(demo_data.demo_pretrained("bars")).write_bytes(b"cut short")
    stages = []
    monkeypatch.setattr(pretrain_encoders, "train", lambda args: stages.append("encoders"))
    monkeypatch.setattr(pretrain, "train", lambda args: stages.append("pretraining"))
    monkeypatch.setattr(demo, "run_cells", lambda *args: stages.append("fine-tunings") or {})
    monkeypatch.setattr(demo, "print_demo_tables", lambda results: None)
    argv = ["--demo", "--world", "bars"]
    demo.run_finetune_demo(finetune.parse_args(argv), argv)
    assert stages == ["pretraining", "fine-tunings"]


def test_demo_runs_every_cell_for_every_seed(tmp_path, monkeypatch, capsys):
    """run_finetune_demo's bookkeeping with a stand-in for training: folders, seeds, flags, tables."""
    monkeypatch.chdir(tmp_path)
    made_first(monkeypatch)
    write_stages("_bars")  # the encoders, then the pretraining from them, of this config: nothing to redo
    monkeypatch.setattr(pretrain, "train", lambda args: pytest.fail("the pretraining was up to date"))
    monkeypatch.setattr(pretrain_encoders, "train", lambda args: pytest.fail("the encoders were up to date"))
    runs = []

    def fake_train(args):
        runs.append((args.out, args.seed, args.pretrained, args.arch))
        accuracy = {"meter": 0.5 if args.pretrained else 0.4, "vilt": 0.3}[args.arch] + args.seed / 100
        os.makedirs(args.out, exist_ok=True)
        Path(args.out, "results.json").write_text(json.dumps(results_with(accuracy)), encoding="utf-8")

    argv = ["--demo", "--world", "bars", "--seeds", "2", "--seed", "3"]
    args = finetune.parse_args(argv)
    monkeypatch.setattr(finetune, "train", fake_train)
    demo.run_finetune_demo(args, argv)
    base = os.path.join("out", "finetune_demo_bars")
    pretrained = demo_data.demo_pretrained("bars")
    assert runs == [(os.path.join(base, "pretrained"), 3, pretrained, "meter"),
                    (os.path.join(base, "scratch"), 3, None, "meter"),
                    (os.path.join(base, "vilt"), 3, None, "vilt"),
                    (os.path.join(base, "pretrained_seed4"), 4, pretrained, "meter"),
                    (os.path.join(base, "scratch_seed4"), 4, None, "meter"),
                    (os.path.join(base, "vilt_seed4"), 4, None, "vilt")]
    printed = capsys.readouterr().out
    assert "mean ± sd over 2 seeds" in printed
    assert "53.50 ± 0.71" in printed and "43.50 ± 0.71" in printed and "33.50 ± 0.71" in printed
    assert "10.00 ± 0.00" in printed  # the gain, seed by seed
    assert "13.38 ± 0.18" in printed  # with pretraining, shown the wrong pictures: a quarter of 53.5
    assert "pointing game" in printed and "12.50" in printed and "minutes of wall time" in printed


def test_demo_tables_of_one_seed_with_the_words_alone(capsys):
    demo.print_demo_tables({"with pretraining": [results_with(0.6)], "without pretraining": [results_with(0.5)],
                            "ViLT without pretraining": [results_with(0.4)]})
    printed = capsys.readouterr().out
    assert "one seed" in printed and "±" not in printed
    for number in ("60.00", "50.00", "40.00", "10.00", "25.00", "15.00", "12.50", "37.50"):
        assert number in printed
    assert "숫자" in printed and "question only" in printed and "wrong picture" in printed
    assert "by chance" in printed and "other questions" in printed


def test_question_only_answers_from_the_words(tmp_path):
    images = tmp_path / "images"
    images.mkdir()

    def label_file(name, rows):
        records = [{"image_id": index, "question_id": index, "question": question, "answer": answer,
                    "answer_type": answer_type} for index, (question, answer, answer_type) in enumerate(rows)]
        path = tmp_path / name
        path.write_text(json.dumps({"images": [{"image_id": record["image_id"], "image": "a.jpg", "category": "c"}
                                               for record in records], "question": records}, ensure_ascii=False))
        return formats.read_vqa(str(path), str(images))

    train = label_file("train.json", [("점은 몇 개인가요?", "1개", "숫자"), ("점은 몇 개인가요?", "1개", "숫자"),
                                      ("점은 몇 개인가요?", "2개", "숫자"), ("보라색 막대가 있나요?", "예", "예/아니오")])
    dev = label_file("dev.json", [("점은 몇 개인가요?", "1개", "숫자"), ("점은 몇 개인가요?", "0개", "숫자"),
                                  ("새 질문인가요?", "1개", "그 외")])
    results = report.question_only(train, dev, finetune.reference_answer)
    assert results["overall"] == {"accuracy": 2 / 3, "n": 3}
    assert results["by_type"]["숫자"] == {"accuracy": 0.5, "n": 2} and results["by_type"]["그 외"]["accuracy"] == 1.0
    assert results["by_type"]["예/아니오"]["n"] == 0
