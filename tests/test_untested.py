"""Behaviours no other test reached (CPU, seconds): a crash in the middle of a write, a changed flag on --resume,
the messages of the batch and model checks, a second Ctrl-C, SIGTERM during fine-tuning, metrics lines written
after the checkpoint a run resumes from, predict.py's flag errors, and markup in questions and answers on the
report page.

    python -m pytest -q tests/test_untested.py
"""

import argparse
import dataclasses
import html.parser
import json
import os
import signal
import types

import pytest
import torch
from safetensors.torch import load_file

import checkpoints
import finetune
import load_weights
import predict
import pretrain
import report
import training
from model import CONFIGS, build_model, build_optimizer
from test_oracles import single_thread, soft_question_set, textured_photo, wordpiece_tokenizer  # noqa: F401 (fixtures)
from test_pretrain import make_caption_set, run_arguments


@pytest.fixture(scope="module")
def caption_set(tmp_path_factory):
    return make_caption_set(str(tmp_path_factory.mktemp("captions")))


# ----------------------------------------------------------------------------------------------
# Atomic writes


def test_a_crash_in_the_middle_of_a_write_leaves_the_previous_file(tmp_path):
    path = tmp_path / "results.json"
    checkpoints.write_json(path, {"step": 1})
    with pytest.raises(TypeError):  # json.dump has written the first keys when it meets the object
        checkpoints.write_json(path, {"step": 2, "history": list(range(1000)), "broken": object()})
    assert json.loads(path.read_text(encoding="utf-8")) == {"step": 1}
    checkpoints.write_json(path, {"step": 3})  # what the crash left beside it does not stand in the way
    assert json.loads(path.read_text(encoding="utf-8")) == {"step": 3}


def test_a_crash_while_saving_a_checkpoint_leaves_the_previous_one(tmp_path, monkeypatch):
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(CONFIGS["tiny"], vision_layers=1, text_layers=1, fusion_layers=1))
    optimizer = build_optimizer(model, 1e-3, {"vision": 1.0, "text": 1.0, "fusion": 1.0, "heads": 1.0})
    state = {"args": {"max_len": 16}}
    checkpoints.save_checkpoint(str(tmp_path), 2, model, optimizer, state)
    saved = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(1.0)
    real_save_file = checkpoints.save_file

    def disk_full(tensors, path, metadata=None):  # half the file written, then the write fails
        real_save_file(tensors, path, metadata=metadata)
        with open(path, "r+b") as file:
            file.truncate(os.path.getsize(path) // 2)
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoints, "save_file", disk_full)
    with pytest.raises(OSError, match="No space left"):
        checkpoints.save_checkpoint(str(tmp_path), 4, model, optimizer, state)
    monkeypatch.setattr(checkpoints, "save_file", real_save_file)
    fresh = build_model(dataclasses.replace(CONFIGS["tiny"], vision_layers=1, text_layers=1, fusion_layers=1))
    restored = checkpoints.load_checkpoint(str(tmp_path), fresh, build_optimizer(fresh, 1e-3, {
        "vision": 1.0, "text": 1.0, "fusion": 1.0, "heads": 1.0}))
    assert restored["step"] == 2
    assert all(torch.equal(fresh.state_dict()[name], tensor) for name, tensor in saved.items())
    assert load_file(tmp_path / "model.safetensors").keys() == saved.keys()


# ----------------------------------------------------------------------------------------------
# Flags and sizes that do not fit, in one line


def test_resume_refuses_a_changed_recipe():
    saved = {"config": "tiny", "batch": 8, "micro_batch": 4, "steps": 6, "lr": 1e-3, "seed": 0, "image_size": 64,
             "max_len": 16}
    checkpoints.check_resume_args(argparse.Namespace(**saved, workers=2), saved)  # other flags may change
    for name, flag, value in [("config", "--config", "base"), ("batch", "--batch", 16), ("micro_batch", "--micro-batch", 2),
                              ("steps", "--steps", 12),
                              ("lr", "--lr", 2e-3), ("seed", "--seed", 1), ("image_size", "--image-size", 32),
                              ("max_len", "--max-len", 20)]:
        with pytest.raises(ValueError) as error:
            checkpoints.check_resume_args(argparse.Namespace(**{**saved, name: value}), saved)
        assert f"{flag} is {value}" in str(error.value) and f"used {saved[name]}" in str(error.value)


def settled_batch(batch, micro_batch, world_size):
    """--micro-batch as settle_flags gives it, on parsed flags of pretrain.py."""
    flags = pretrain.parse_args(["--captions", "c.json", "--images", "i", "--tokenizer", "t.json", "--batch", str(batch),
                                 *(["--micro-batch", str(micro_batch)] if micro_batch else [])])
    return training.settle_flags(flags, pretrain.PRETRAIN_DEFAULTS, pretrain.PRETRAIN_DEMO_DEFAULTS, 0, world_size,
                                 torch.device("cpu")).micro_batch


def test_batch_sizes_that_do_not_divide_are_refused(caption_set, tmp_path):
    with pytest.raises(ValueError, match="--batch 10 is not divisible by the 4 processes"):
        settled_batch(10, None, 4)
    with pytest.raises(ValueError, match="--micro-batch 4 does not divide the 6 samples per process"):
        settled_batch(12, 4, 2)
    assert settled_batch(12, None, 2) == 6 and settled_batch(12, 3, 2) == 3
    with pytest.raises(SystemExit) as stop:  # the same check, as the command line meets it
        pretrain.main(run_arguments(caption_set, tmp_path / "run", "--micro-batch", "3"))
    assert str(stop.value.code) == "error: --micro-batch 3 does not divide the 8 samples per process"


def test_a_model_that_does_not_fit_the_tokenizer_or_the_text_length_is_refused():
    model = types.SimpleNamespace(cfg=dataclasses.replace(CONFIGS["tiny"], vocab_size=40))  # pad id 1, 66 positions
    fits = types.SimpleNamespace(vocab_size=40, pad_id=1, source="tokenizer.json")
    load_weights.check_model_fits(model, fits, 64)  # fits: no error
    for tokenizer, max_len, expected in [
            (types.SimpleNamespace(vocab_size=41, pad_id=1, source="tokenizer.json"), 64,
             "tokenizer.json: tokenizer vocabulary of 41 does not fit the 40 word embeddings of the model"),
            (types.SimpleNamespace(vocab_size=40, pad_id=0, source="tokenizer.json"), 64,
             "tokenizer.json: [PAD] is id 0, the model's pad id is 1"),
            (fits, 65, "--max-len 65 exceeds the 64 text positions of the model")]:
        with pytest.raises(ValueError) as error:
            load_weights.check_model_fits(model, tokenizer, max_len)
        assert str(error.value) == expected


# ----------------------------------------------------------------------------------------------
# Stopping: a second Ctrl-C, SIGTERM during fine-tuning


def test_a_second_ctrl_c_stops_at_once(tmp_path):
    before = signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)
    folder_flags = argparse.Namespace(out=str(tmp_path / "run"), resume=False, overwrite=False)
    run = training.RunFolder(folder_flags, 0)
    os.kill(os.getpid(), signal.SIGTERM)
    os.kill(os.getpid(), signal.SIGTERM)  # a second SIGTERM changes nothing
    assert run.stop_requested == "SIGTERM"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    run.finish()
    run = training.RunFolder(folder_flags, 0)
    os.kill(os.getpid(), signal.SIGINT)  # the first Ctrl-C asks for a stop after the step
    assert run.stop_requested == "SIGINT"
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGINT)
    run.finish()
    assert (signal.getsignal(signal.SIGINT), signal.getsignal(signal.SIGTERM)) == before
    assert not (tmp_path / "run" / "running.json").exists()  # released


def test_sigterm_during_finetuning_saves_and_resumes_exactly(soft_question_set, tmp_path, monkeypatch, single_thread):
    arguments = ["--train", soft_question_set["train"], "--dev", soft_question_set["dev"],
                 "--images", soft_question_set["images"], "--tokenizer", soft_question_set["tokenizer"],
                 "--config", "tiny", "--batch", "8", "--micro-batch", "4", "--steps", "3", "--max-len", "16",
                 "--log-every", "1", "--eval-every", "3", "--save-every", "3", "--workers", "0", "--lr", "2e-4",
                 "--augment", "safe"]
    finetune.main([*arguments, "--out", str(tmp_path / "straight")])
    calls = {"count": 0}
    original = finetune.vqa_losses

    def terminated_in_step_two(model, *rest, **keywords):
        calls["count"] += model.training
        if calls["count"] == 3:  # first micro-batch of step 2
            os.kill(os.getpid(), signal.SIGTERM)
        return original(model, *rest, **keywords)

    monkeypatch.setattr(finetune, "vqa_losses", terminated_in_step_two)
    with pytest.raises(SystemExit) as stop:
        finetune.main([*arguments, "--out", str(tmp_path / "stopped")])
    message = str(stop.value.code)
    assert message.startswith("stopped by SIGTERM after step 2") and message.endswith("--resume")
    assert json.loads((tmp_path / "stopped" / "training_state.json").read_text())["step"] == 2
    assert not (tmp_path / "stopped" / "running.json").exists()
    monkeypatch.setattr(finetune, "vqa_losses", original)
    finetune.main([*arguments, "--out", str(tmp_path / "stopped"), "--resume"])
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "stopped" / "model.safetensors")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    for name in ("results.json", "metrics.jsonl"):
        rows = [(tmp_path / run / name).read_text(encoding="utf-8") for run in ("straight", "stopped")]
        if name == "metrics.jsonl":  # the same lines, but for the time each step took
            rows = [[{key: value for key, value in json.loads(line).items() if key != "samples_per_s"}
                     for line in text.splitlines()] for text in rows]
        assert rows[0] == rows[1], name


# ----------------------------------------------------------------------------------------------
# metrics.jsonl on resume: the lines the crashed run wrote after its checkpoint are dropped


def test_resume_drops_the_metrics_lines_written_after_the_checkpoint(caption_set, tmp_path, monkeypatch, single_thread):
    arguments = run_arguments(caption_set, tmp_path / "run", "--log-every", "1", "--save-every", "4")
    calls = {"count": 0}
    original = pretrain.pretrain_losses

    def crash_in_step_six(model, *rest, **keywords):
        calls["count"] += model.training
        if calls["count"] == 11:  # first micro-batch of step 6: steps 5's line is written, its checkpoint is not
            raise RuntimeError("simulated crash")
        return original(model, *rest, **keywords)

    monkeypatch.setattr(pretrain, "pretrain_losses", crash_in_step_six)
    with pytest.raises(SystemExit, match="simulated crash"):  # run_command: one line, the cause in it
        pretrain.main(arguments)
    monkeypatch.setattr(pretrain, "pretrain_losses", original)
    lines = (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 3, 4, 5]  # step 3's val line, and step 5's
    pretrain.main([*arguments, "--resume"])
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [(row["step"], row["split"]) for row in rows] == [
        (1, "train"), (2, "train"), (3, "train"), (3, "val"), (4, "train"), (5, "train"), (6, "train"), (6, "val")]
    assert rows[:5] == [json.loads(line) for line in lines[:5]]

    with pytest.raises(SystemExit) as stop:  # and a changed recipe on --resume is refused before any step
        pretrain.main([*arguments, "--resume", "--lr", "2e-3"])
    assert str(stop.value.code) == "error: --resume: --lr is 0.002 but the saved run used 0.001"


# ----------------------------------------------------------------------------------------------
# predict.py: flags that do not go together


@pytest.mark.parametrize("flags, expected", [
    (["--questions", "q.jsonl"], "--questions needs --out or --report"),
    (["--questions", "q.jsonl", "--out", "a.jsonl", "--explain", "m.png"],
     "--explain goes with --image and --question"),
    (["--image", "a.jpg"], "give --image and --question, or --questions and --out or --report"),
    (["--question", "몇 개인가요?"], "give --image and --question, or --questions and --out or --report"),
    (["--image", "a.jpg", "--question", "몇 개인가요?", "--report", "r.html"], "--report goes with --questions"),
    (["--image", "a.jpg", "--question", "몇 개인가요?", "--layer", "1"], "--layer goes with --explain or --report"),
    (["--image", "a.jpg", "--question", "몇 개인가요?", "--top", "two"], "--top: invalid int value: 'two'"),
])
def test_predict_flags_that_do_not_go_together(flags, expected, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        predict.main(["--ckpt", str(tmp_path), *flags])
    assert stop.value.code == 2
    error = capsys.readouterr().err
    assert expected in error and error.startswith("usage: ")


# ----------------------------------------------------------------------------------------------
# The report page: markup in a question, an answer or a title is text


class TextAndTags(html.parser.HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.texts = set(), []

    def handle_starttag(self, tag, attrs):
        self.tags.add(tag)

    def handle_data(self, text):
        self.texts.append(text)


def test_markup_in_questions_and_answers_is_shown_as_text(tmp_path):
    tokenizer = wordpiece_tokenizer()
    answers = ["<i>예</i>", "a&b<br>"]
    torch.manual_seed(0)
    model = build_model(dataclasses.replace(CONFIGS["tiny"], vocab_size=tokenizer.vocab_size, vision_layers=1,
                                            text_layers=1, fusion_layers=1, num_answers=len(answers)))
    textured_photo(80, 64).save(tmp_path / "photo.png")
    entries = [{"question_id": "<u>1</u>", "question": "<b>&x</b>", "image": str(tmp_path / "photo.png"),
                "answers": ["<i>예</i>"], "answer_type": "예/아니오"},
               {"question_id": 2, "question": "<script>alert(1)</script>?", "image": str(tmp_path / "photo.png"),
                "answers": [], "answer_type": "그 외"}]
    page_path = tmp_path / "page.html"
    report.write_report(str(page_path), model, tokenizer, answers, 16, entries, finetune.reference_answer,
                        "<em>title</em> & more", top=2)
    page = TextAndTags()
    page.feed(page_path.read_text(encoding="utf-8"))
    assert not page.tags & {"b", "i", "u", "br", "em", "script"}, page.tags
    for text in ["<b>&x</b>", "<script>alert(1)</script>?", "<i>예</i>", "a&b<br>", "<em>title</em> & more"]:
        assert text in page.texts, text
