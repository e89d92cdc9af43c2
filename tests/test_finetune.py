"""Tests of finetune.py and predict.py on a tiny demo set (CPU, seconds): a fine-tuning run from a
pretraining checkpoint writes results.json in the shape the README documents, dev_predictions.jsonl and best/;
a ViLT run without pretraining carves its own dev split; predict.py answers one question and a
JSONL file and reports bad input in one line."""

import dataclasses
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

import demo_data
import data
import formats
import finetune
import predict
import pretrain
from model import CONFIGS, build_model, build_optimizer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAINING_FLAGS = ["--config", "tiny", "--batch", "8", "--micro-batch", "4", "--steps", "4", "--max-len", "16",
                  "--log-every", "2", "--eval-every", "2", "--save-every", "2", "--workers", "0"]


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return demo_data.make_demo(str(root / "demo_data"), caption_images=40, vqa_train_images=40, vqa_dev_images=10,
                          questions_per_image=4, image_size=64, vocab_size=200)


@pytest.fixture(scope="module")
def finetuned(demo_set, tmp_path_factory):
    """A 3-step pretraining, then 4 steps of fine-tuning from it with dev evaluation every 2 steps."""
    root = tmp_path_factory.mktemp("runs")
    pretrain.main(["--captions", demo_set["captions"], "--images", demo_set["images"], "--tokenizer",
                   demo_set["tokenizer"], *TRAINING_FLAGS, "--steps", "3", "--out", str(root / "pretrain")])
    finetune.main(["--train", demo_set["vqa_train"], "--dev", demo_set["vqa_dev"], "--images", demo_set["images"],
                   "--tokenizer", demo_set["tokenizer"], "--pretrained", str(root / "pretrain"), "--lr", "1e-4",
                   *TRAINING_FLAGS, "--augment", "safe", "--out", str(root / "finetune")])
    return root / "finetune"


def test_results_follow_the_spec(finetuned, demo_set):
    results = json.loads((finetuned / "results.json").read_text(encoding="utf-8"))
    assert set(results) == {"steps", "overall", "by_type", "history", "question_only", "wrong_picture", "pointing"}
    assert results["steps"] == 4
    for control in ("question_only", "wrong_picture"):  # the controls, in the shape of the results themselves
        assert set(results[control]) == {"overall", "by_type"} and list(results[control]["by_type"]) == formats.ANSWER_TYPES
        assert results[control]["overall"]["n"] == results["overall"]["n"]
    assert results["pointing"]["overall"]["n"] == 0  # no --dev-objects, no question names its object
    dev_questions = len(formats.read_vqa(demo_set["vqa_dev"], demo_set["images"]))
    assert results["overall"]["n"] == dev_questions
    assert list(results["by_type"]) == formats.ANSWER_TYPES
    assert sum(result["n"] for result in results["by_type"].values()) == dev_questions
    for result in [results["overall"], *results["by_type"].values()]:
        assert set(result) == {"accuracy", "vqa_score", "n"}
        assert 0 <= result["accuracy"] <= 1 and 0 <= result["vqa_score"] <= 1
    assert [row["step"] for row in results["history"]] == [2, 4]
    rows = [json.loads(line) for line in (finetuned / "dev_predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rows) == dev_questions
    assert {"question_id", "question", "prediction", "answers", "answer_type", "score"} <= set(rows[0])
    # accuracy and VQA score worked out from each prediction and its answers: exact match with the most frequent
    # answer (the first given on a tie), and min(1, 0.3 x the annotators who gave it), or 1 for the lone answer
    def right(row):
        return row["prediction"] == max(row["answers"], key=row["answers"].count)

    def score(row):
        given = row["answers"].count(row["prediction"])
        return float(given) if len(row["answers"]) == 1 else min(1.0, 0.3 * given)

    for answer_type, result in [("overall", results["overall"]), *results["by_type"].items()]:
        chosen = [row for row in rows if answer_type in ("overall", row["answer_type"])]
        assert result["n"] == len(chosen)
        assert result["accuracy"] == pytest.approx(sum(map(right, chosen)) / max(len(chosen), 1))
        assert result["vqa_score"] == pytest.approx(sum(map(score, chosen)) / max(len(chosen), 1))
    assert results["history"][-1]["accuracy"] == pytest.approx(sum(map(right, rows)) / len(rows))
    assert results["history"][-1]["vqa_score"] == pytest.approx(sum(map(score, rows)) / len(rows))
    answers = json.loads((finetuned / "answers.json").read_text(encoding="utf-8"))
    assert all(row["prediction"] in answers for row in rows)
    for name in ["model.safetensors", "optimizer.safetensors", "training_state.json", "tokenizer.json",
                 "metrics.jsonl", "curves.png", "best/model.safetensors", "best/answers.json", "best/tokenizer.json"]:
        assert (finetuned / name).exists(), name


def test_wrong_picture_control_shows_every_question_another_picture(demo_set):
    dev = formats.read_vqa(demo_set["vqa_dev"], demo_set["images"])
    other = finetune.wrong_pictures(dev, seed=0)
    images = {entry["image"] for entry in dev}
    assert set(other) == images and set(other.values()) == images  # every dev picture shown once, elsewhere
    assert all(other[image] != image for image in images)
    assert finetune.wrong_pictures(dev, seed=0) == other
    vocab = data.build_answer_vocab(dev, 20)
    right = data.VqaDataset(dev, vocab, 64)
    wrong = data.VqaDataset(dev, vocab, 64, picture_of=other)
    for index in range(len(dev)):
        shown, own = wrong[index], right[index]
        assert not torch.equal(shown["pixels"], own["pixels"])
        assert torch.equal(shown["pixels"], data.load_image(other[dev[index]["image"]], 64))
        assert shown["question"] == own["question"] and torch.equal(shown["targets"], own["targets"])
    with pytest.raises(ValueError, match="needs two"):  # one picture cannot be shown another: refused, not skipped
        finetune.wrong_pictures([{"image": "only.jpg"}, {"image": "only.jpg"}], seed=0)


def test_finetune_resumes_exactly_with_its_history(demo_set, tmp_path, monkeypatch):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise equal runs need one thread (see tests/test_pretrain.py)
    arguments = ["--train", demo_set["vqa_train"], "--dev", demo_set["vqa_dev"], "--images", demo_set["images"],
                 "--tokenizer", demo_set["tokenizer"], *TRAINING_FLAGS]
    finetune.main([*arguments, "--out", str(tmp_path / "straight")])
    calls = {"count": 0}
    original = finetune.vqa_losses

    def crash_in_step_three(model, *rest, **keywords):
        calls["count"] += model.training
        if calls["count"] == 5:  # first micro-batch of step 3
            raise RuntimeError("simulated crash")
        return original(model, *rest, **keywords)

    monkeypatch.setattr(finetune, "vqa_losses", crash_in_step_three)
    with pytest.raises(SystemExit, match="RuntimeError: simulated crash"):
        finetune.main([*arguments, "--out", str(tmp_path / "crashed")])
    monkeypatch.setattr(finetune, "vqa_losses", original)
    finetune.main([*arguments, "--out", str(tmp_path / "crashed"), "--resume"])
    torch.set_num_threads(threads)
    straight = load_file(tmp_path / "straight" / "model.safetensors")
    resumed = load_file(tmp_path / "crashed" / "model.safetensors")
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    assert (json.loads((tmp_path / "straight" / "results.json").read_text(encoding="utf-8"))
            == json.loads((tmp_path / "crashed" / "results.json").read_text(encoding="utf-8")))


def test_vilt_without_pretraining_and_a_carved_dev_split(demo_set, tmp_path):
    finetune.main(["--train", demo_set["vqa_train"], "--dev-size", "30", "--images", demo_set["images"],
                   "--tokenizer", demo_set["tokenizer"], "--arch", "vilt", *TRAINING_FLAGS, "--steps", "2",
                   "--out", str(tmp_path / "vilt")])
    results = json.loads((tmp_path / "vilt" / "results.json").read_text(encoding="utf-8"))
    assert results["overall"]["n"] >= 30
    state = json.loads((tmp_path / "vilt" / "training_state.json").read_text(encoding="utf-8"))
    assert state["args"]["arch"] == "vilt"


def test_vqa_loss_is_bce_times_answers_and_accumulates(finetuned, demo_set):
    answerer = predict.Answerer(str(finetuned))
    model = answerer.model.eval()
    entries = formats.read_vqa(demo_set["vqa_train"], demo_set["images"])[:8]
    dataset = data.VqaDataset(entries, answerer.answers, model.cfg.image_size)
    batch = data.collate_vqa([dataset[index] for index in range(8)], answerer.tokenizer, 16)
    losses = finetune.vqa_losses(model, batch)
    logits = model.vqa_head(model(batch["pixels"], batch["input_ids"], batch["attention_mask"])["cls_feats"])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, batch["targets"]) * len(answerer.answers)
    torch.testing.assert_close(losses["loss"], expected)
    halves = [{key: value[start:start + 4] for key, value in batch.items()} for start in (0, 4)]
    total = sum(finetune.vqa_losses(model, half, 8)["loss"] for half in halves)
    torch.testing.assert_close(total, expected)


def test_finetune_parameter_groups_give_heads_fifty_times():
    model = build_model(dataclasses.replace(CONFIGS["tiny"], num_answers=5))
    optimizer = build_optimizer(model, 5e-6, finetune.FINETUNE_LR_MULTIPLIERS)
    rates = {group["part"]: group["lr"] for group in optimizer.param_groups}
    assert rates == pytest.approx({"vision": 5e-6, "text": 5e-6, "fusion": 2.5e-5, "heads": 2.5e-4})


def test_predict_one_question(finetuned, demo_set, capsys):
    entry = formats.read_vqa(demo_set["vqa_dev"], demo_set["images"])[0]
    predict.main(["--ckpt", str(finetuned), "--image", entry["image"], "--question", entry["question"], "--top", "3"])
    *lines, timing = capsys.readouterr().out.strip().splitlines()
    assert len(lines) == 3 and re.fullmatch(r"\(\d+ ms\)", timing)
    answers = json.loads((finetuned / "answers.json").read_text(encoding="utf-8"))
    for line in lines:
        probability, answer = line.split(None, 1)
        assert 0 <= float(probability) <= 1 and answer in answers


def test_predict_reports_bad_input_in_one_line(finetuned, demo_set, tmp_path):
    entry = formats.read_vqa(demo_set["vqa_dev"], demo_set["images"])[0]
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not a picture")
    for image, question, expected in [(str(tmp_path / "missing.jpg"), "몇 개인가요?", "image not found"),
                                      (str(broken), "몇 개인가요?", "unreadable image"),
                                      (entry["image"], "  ", "question is empty")]:
        with pytest.raises(SystemExit) as stop:
            predict.main(["--ckpt", str(finetuned / "model.safetensors"), "--image", image, "--question", question])
        message = str(stop.value.code)
        assert message.startswith("error: ") and expected in message and "\n" not in message
    with pytest.raises(SystemExit) as stop:
        predict.main(["--ckpt", str(tmp_path), "--image", entry["image"], "--question", "몇 개인가요?"])
    assert str(stop.value.code).startswith("error: ") and "checkpoint not found" in str(stop.value.code)


def test_predict_a_questions_file(finetuned, demo_set, tmp_path, capsys):
    entries = formats.read_vqa(demo_set["vqa_dev"], demo_set["images"])[:3]
    questions = tmp_path / "questions.jsonl"
    records = [{"image": os.path.relpath(entry["image"], demo_set["images"]), "question": entry["question"],
                "question_id": entry["question_id"]} for entry in entries]
    records.append({"image": "missing.jpg", "question": "몇 개인가요?", "question_id": "bad"})
    questions.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    out = tmp_path / "answers.jsonl"
    predict.main(["--ckpt", str(finetuned), "--questions", str(questions), "--images", demo_set["images"],
                  "--out", str(out), "--batch", "2"])
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [row["question_id"] for row in rows] == [record["question_id"] for record in records]
    assert all("prediction" in row and len(row["top"]) == 5 for row in rows[:3])
    assert "error" in rows[3] and "prediction" not in rows[3]
    captured = capsys.readouterr()
    assert "1 with errors" in captured.out and captured.err.count("error: ") == 1


def test_finetune_help_documents_its_flags(capsys):
    with pytest.raises(SystemExit):
        finetune.parse_args(["--help"])
    printed = capsys.readouterr().out
    for flag in ["--train", "--dev", "--dev-size", "--images", "--tokenizer", "--pretrained", "--clip", "--text",
                 "--arch", "--answers", "--augment", "--batch", "--micro-batch", "--eval-every", "--resume", "--demo"]:
        assert flag in printed


def test_vqa_step_under_bf16_autocast_matches_fp32(finetuned, demo_set):
    answerer = predict.Answerer(str(finetuned))
    model = answerer.model.eval()
    entries = formats.read_vqa(demo_set["vqa_train"], demo_set["images"])[:8]
    dataset = data.VqaDataset(entries, answerer.answers, model.cfg.image_size)
    batch = data.collate_vqa([dataset[index] for index in range(8)], answerer.tokenizer, 16)
    full = finetune.vqa_losses(model, batch)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = finetune.vqa_losses(model, batch)
    half["loss"].backward()
    assert half["loss"].dtype == torch.float32
    torch.testing.assert_close(half["loss"], full["loss"].detach(), rtol=1e-2, atol=1e-2)
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters() if parameter.grad is not None)


def test_two_processes_fine_tune_with_frozen_pretraining_heads(demo_set, finetuned, tmp_path):
    """Under torchrun the model is wrapped in DistributedDataParallel; the MLM and ITM heads of a pretrained
    checkpoint get no VQA gradient and are frozen, so DDP waits for none. Two processes match one."""
    pretrained = str(finetuned.parent / "pretrain")
    arguments = ["--train", demo_set["vqa_train"], "--dev", demo_set["vqa_dev"], "--images", demo_set["images"],
                 "--tokenizer", demo_set["tokenizer"], "--pretrained", pretrained, "--lr", "1e-4", *TRAINING_FLAGS,
                 "--steps", "2", "--eval-every", "2", "--augment", "none"]
    environment = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": REPO}
    finetune.main([*arguments, "--out", str(tmp_path / "single")])
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               os.path.join(REPO, "finetune.py"), *arguments, "--out", str(tmp_path / "parallel")]
    result = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=180)
    assert result.returncode == 0, result.stderr[-3000:]
    single = load_file(tmp_path / "single" / "model.safetensors")
    parallel = load_file(tmp_path / "parallel" / "model.safetensors")
    for name in single:
        torch.testing.assert_close(parallel[name], single[name], rtol=1e-4, atol=1e-5)


def test_predict_under_bf16_autocast_agrees_with_fp32(finetuned, demo_set):
    image = os.path.join(demo_set["images"], "shapes", "shapes_000041.jpg")
    questions = ["도형은 모두 몇 개인가요?", "빨간색 원이 있나요?"]
    full = predict.Answerer(str(finetuned)).answer([image, image], questions, top=3)
    half = predict.Answerer(str(finetuned), dtype="bf16").answer([image, image], questions, top=3)
    for full_row, half_row in zip(full, half):
        assert all(isinstance(probability, float) for _, probability in half_row)
        assert max(abs(full_probability - dict(half_row).get(answer, 0.0)) for answer, full_probability in full_row) < 0.02
