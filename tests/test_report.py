"""Tests of the attention maps and the page of report.py, as predict.py and finetune.py use them (CPU, seconds):
the kept attention probabilities sum to 1 over the keys and leave the model's output as it was; a model built to
look at one patch shows that patch, at its place in the picture; a tiny fine-tuning run writes dev_report.html
with every dev question and the counts per answer type of results.json; predict.py --explain and --report work
for Ko-METER and ViLT checkpoints and report bad input in one line.

    python -m pytest -q tests/test_report.py
"""

import base64
import dataclasses
import html.parser
import io
import json
import os

import numpy as np
import pytest
import torch
from PIL import Image

import demo_data
import checkpoints
import data
import finetune
import formats
import predict
import relevancy
import report
from model import CONFIGS, build_model

FINETUNE_FLAGS = ["--config", "tiny", "--batch", "8", "--steps", "2", "--max-len", "16", "--log-every", "2",
                  "--eval-every", "2", "--save-every", "2", "--workers", "0", "--lr", "1e-4"]
SIDE = 8            # patches per side: the tiny config with 8 px patches (64 px images)
HOT_PATCH = (2, 5)  # (row, column) of the patch the pushed model looks at: not on a diagonal, so a transpose shows


@pytest.fixture(scope="module")
def demo_set(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    return demo_data.make_demo(str(root / "demo_data"), caption_images=4, vqa_train_images=24, vqa_dev_images=6,
                          questions_per_image=4, image_size=64, vocab_size=200)


@pytest.fixture(scope="module")
def finetuned(demo_set, tmp_path_factory):
    """2 steps of fine-tuning from random weights, one dev evaluation at the end (and the dev page)."""
    out = tmp_path_factory.mktemp("runs") / "finetune"
    finetune.main(["--train", demo_set["vqa_train"], "--dev", demo_set["vqa_dev"], "--images", demo_set["images"],
                   "--tokenizer", demo_set["tokenizer"], *FINETUNE_FLAGS, "--augment", "none", "--out", str(out)])
    return out


def tiny_inputs(cfg):
    torch.manual_seed(1)
    pixels = torch.randn(3, 3, cfg.image_size, cfg.image_size)
    input_ids = torch.tensor([[0, 5, 6, 7, 8, 2], [0, 9, 2, 1, 1, 1], [0, 10, 11, 2, 1, 1]])
    return pixels, input_ids, (input_ids != cfg.pad_id).long()


def write_checkpoint(model, folder, demo_set, answers):
    """A folder predict.py reads: model.safetensors, answers.json, the tokenizer."""
    checkpoints.write_folder(str(folder), model, {"max_len": "16"}, [demo_set["tokenizer"]],
                             json_files={"answers.json": answers})
    return folder


@pytest.mark.parametrize("arch", ["meter", "vilt"])
def test_kept_attention_sums_to_one_and_changes_nothing(arch):
    cfg = dataclasses.replace(CONFIGS["tiny"], arch=arch, num_answers=3)  # fast path on: keeping must leave it
    model = build_model(cfg).eval()
    pixels, input_ids, attention_mask = tiny_inputs(cfg)
    with torch.no_grad():
        plain = model(pixels, input_ids, attention_mask)
        for layer in range(report.layer_count(model)):
            attention = report.attention_of(model, layer)
            with relevancy.keeping_probabilities([attention]):
                out = model(pixels, input_ids, attention_mask)
                probs = report.text_to_image(model, attention.probs, input_ids.shape[1])
            heads = cfg.fusion_heads if arch == "meter" else cfg.vision_heads  # ViLT's blocks are CLIP's
            assert probs.shape == (3, heads, input_ids.shape[1], 1 + cfg.num_patches)  # [B, heads, T, 1+N]
            for name in plain:
                torch.testing.assert_close(out[name], plain[name], rtol=1e-5, atol=1e-5)
            if arch == "meter":  # cross-attention: each text token's row is a distribution over the image tokens
                torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:3]))
            else:  # the text-to-image block is part of rows that sum to 1 over text and image keys
                assert (probs.sum(-1) <= 1 + 1e-6).all()
        attention = model.text_layers[-1].cross_attention if arch == "meter" else model.blocks[-1].attention
        with relevancy.keeping_probabilities([attention]):
            model(pixels, input_ids, attention_mask)
            probs = attention.probs
    torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:3]))
    if arch == "vilt":  # padded text keys get nothing
        padded_keys = torch.cat([attention_mask, torch.ones(3, 1 + cfg.num_patches, dtype=torch.long)], dim=1) == 0
        assert probs.permute(0, 3, 1, 2)[padded_keys].abs().max() == 0  # [B, heads, T', S] -> [B, S, heads, T']
    assert attention.keep_probs is False and attention.probs is None  # back on the fast path


def pushed_to_one_patch(cfg):
    """A tiny Ko-METER whose text stream looks at the brightest patch: the patch embedding measures brightness
    in dimension 0, every layer before the fusion's text cross-attention passes its input on (zeroed residual
    branches, identity projection), and that cross-attention scores a key by its dimension 0."""
    model = build_model(cfg).eval()
    width = cfg.vision_width
    with torch.no_grad():
        embeddings = model.vision.embeddings
        embeddings.patch.weight.zero_()
        embeddings.patch.weight[0] = 1.0 / (3 * cfg.patch_size ** 2)  # dimension 0 = mean normalised brightness
        embeddings.class_embedding.zero_()
        embeddings.position_embedding.zero_()
        residual_branches = [linear for block in model.vision.blocks for linear in (block.attention.out, block.mlp_out)]
        residual_branches += [linear for layer in model.image_layers
                              for linear in (layer.self_attention.out, layer.cross_attention.out, layer.ffn_out)]
        for linear in residual_branches:
            linear.weight.zero_()
            linear.bias.zero_()
        model.image_proj.weight.copy_(torch.eye(width))
        model.image_proj.bias.zero_()
        model.modality.weight.zero_()
        for layer in model.text_layers:
            attention = layer.cross_attention
            attention.query.weight.zero_()
            attention.query.bias.fill_(1.0)   # the same query for every token
            attention.key.weight.zero_()
            attention.key.weight[:, 0] = 1.0  # every key dimension reads the token's brightness
            attention.key.bias.zero_()
    return model


def test_a_model_pushed_to_one_patch_shows_it_there(demo_set, tmp_path):
    cfg = dataclasses.replace(CONFIGS["tiny"], num_answers=2, patch_size=64 // SIDE)
    model = pushed_to_one_patch(cfg)
    row, column = HOT_PATCH
    picture = np.zeros((cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    patch = cfg.patch_size
    picture[row * patch:(row + 1) * patch, column * patch:(column + 1) * patch] = 255  # one white patch on black
    image_path = tmp_path / "one_patch.png"
    Image.fromarray(picture).save(image_path)
    tokenizer = data.Tokenizer.load(demo_set["tokenizer"])
    for layer in (0, cfg.fusion_layers - 1):
        _, maps = report.answer_batch(model, tokenizer, ["예", "아니오"], 16, [str(image_path)], ["원이 있나요?"],
                                      attention_layer=layer)
        assert maps.shape == (1, 2, SIDE, SIDE)
        for heat in maps[0]:  # the relevancy to the answer and the [CLS] token's attention
            assert divmod(int(heat.argmax()), SIDE) == HOT_PATCH and heat.max() > 0.99
    drawn = np.asarray(report.overlay(report.model_view(str(image_path), report.EXPLAIN_SIDE), maps[0, 0]), dtype=float)
    redness = drawn[:, :, 0] - drawn[:, :, 2]
    hottest_row, hottest_column = np.unravel_index(redness.argmax(), redness.shape)
    scale = report.EXPLAIN_SIDE // SIDE  # drawn pixels per patch
    assert (hottest_row // scale, hottest_column // scale) == HOT_PATCH

    folder = write_checkpoint(model, tmp_path / "pushed", demo_set, ["예", "아니오"])
    explained = tmp_path / "map.png"
    predict.main(["--ckpt", str(folder), "--image", str(image_path), "--question", "원이 있나요?",
                  "--explain", str(explained), "--layer", "1"])
    with Image.open(explained) as written:
        assert written.format == "PNG" and written.width == 3 * report.EXPLAIN_SIDE + 2 * report.GAP + 2 * report.MARGIN


def test_pointing_game_hits_the_box_the_map_peaks_in(demo_set, tmp_path):
    """The model pushed to the bright patch: a question whose object box holds that patch is a hit, one whose box
    lies elsewhere a miss; the chance level is the box's share of patches, and the picture's other questions,
    whose maps peak at the same patch, score what a map drawn to the bright patch alone scores."""
    cfg = dataclasses.replace(CONFIGS["tiny"], num_answers=2, patch_size=64 // SIDE)
    model = pushed_to_one_patch(cfg)
    row, column = HOT_PATCH
    patch = cfg.patch_size
    picture = np.zeros((cfg.image_size, cfg.image_size, 3), dtype=np.uint8)
    picture[row * patch:(row + 1) * patch, column * patch:(column + 1) * patch] = 255
    image_path = str(tmp_path / "one_patch.png")
    Image.fromarray(picture).save(image_path)
    entries = [{"image": image_path, "question": question, "answers": ["예"], "answer_type": "예/아니오",
                "question_id": number} for number, question in enumerate(["원이 있나요?", "네모가 있나요?", "몇 개?"])]
    objects = {"0": [column * patch, row * patch, (column + 2) * patch, (row + 1) * patch],  # 2 patches, the hot one
               "1": [0, 0, 4 * patch, 4 * patch]}  # the top-left 16 patches
    rows = report.write_report(tmp_path / "page.html", model, data.Tokenizer.load(demo_set["tokenizer"]),
                               ["예", "아니오"], 16, entries, finetune.reference_answer, "pointing", objects=objects)
    assert rows[0]["pointing"] == {"hits": [True, True], "chance": 2 / 64, "other questions": [1.0, 1.0]}
    assert rows[1]["pointing"] == {"hits": [False, False], "chance": 16 / 64, "other questions": [0.0, 0.0]}
    assert rows[2]["pointing"] is None
    results = report.pointing_results(rows)
    assert results["overall"]["n"] == 2 and results["overall"]["relevancy to the answer"] == 0.5
    assert results["overall"]["chance"] == pytest.approx((2 / 64 + 16 / 64) / 2)
    assert list(results["by_type"]) == ["예/아니오"]
    text, _ = read_page(tmp_path / "page.html")
    assert "pointing game" in text and "peaks in the object" in text and "peaks outside the object" in text


def test_the_other_questions_control_leaves_out_questions_about_the_same_object():
    """One picture, a 2 x 2 grid: questions 0 and 1 ask about the object on patch 0, question 2 about the one on
    patch 3, question 3 about none. Question 0's control is the maps of questions 2 and 3 alone (peaks 3 and 0:
    one hit in two); counting question 1 (peak 0) as well would make it 2 in 3."""
    box_a, box_b = [0, 0, 1, 1], [1, 1, 2, 2]
    rows = [{"image": "p.png", "box": box} for box in (box_a, list(box_a), box_b, None)]
    peaks = [[0], [0], [3], [0]]
    insides = {0: torch.tensor([True, False, False, False]), 1: torch.tensor([True, False, False, False]),
               2: torch.tensor([False, False, False, True])}
    report.pointing_game(rows, peaks, insides)
    assert rows[0]["pointing"]["other questions"] == [0.5]
    assert rows[1]["pointing"]["other questions"] == [0.5]
    assert rows[2]["pointing"]["other questions"] == [0.0]  # questions 0, 1 and 3 all peak on patch 0
    assert rows[3]["pointing"] is None


def test_patches_under_a_box_follow_the_center_crop():
    """A wide picture is seen through its center square: a box on the crop's first column of patches lies under
    them alone, one left of the crop under none."""
    under = report.patches_under([32, 0, 40, 64], (128, 64), 8)  # the crop spans x 32..96, 8 px per patch
    assert under.reshape(8, 8)[:, 0].all() and under.sum() == 8
    assert not report.patches_under([0, 0, 30, 64], (128, 64), 8).any()


def test_a_box_smaller_than_a_patch_lies_under_one():
    """A box between two patch centres (8 px patches: centres at 4, 12, ...) lies under the patch it overlaps;
    counted by the centres, it would lie under none and no map could hit it."""
    under = report.patches_under([9, 17, 11, 19], (64, 64), 8)
    assert under.sum() == 1 and under.reshape(8, 8)[2, 1]


class PageReader(html.parser.HTMLParser):
    """The parts of the page the tests look at: cards, sections, summary rows, images, scripts."""

    def __init__(self):
        super().__init__()
        self.cards, self.sections, self.summary, self.images, self.tags = [], [], {}, [], set()
        self.in_question = False

    def handle_starttag(self, tag, attrs):
        attributes = dict(attrs)
        self.tags.add(tag)
        classes = (attributes.get("class") or "").split()
        if "card" in classes:
            self.cards.append({"id": attributes["data-question-id"], "type": attributes["data-answer-type"],
                               "verdict": classes[1], "section": len(self.sections) - 1, "question": ""})
        elif tag == "section":
            self.sections.append(attributes["data-answer-type"])
        elif tag == "tr" and "data-questions" in attributes:
            self.summary[attributes.get("data-answer-type", "all")] = int(attributes["data-questions"])
        elif tag == "img":
            self.images.append(attributes["src"])
        self.in_question = tag == "p" and "question" in classes

    def handle_data(self, text):
        if self.in_question:
            self.cards[-1]["question"] += text

    def handle_endtag(self, tag):
        self.in_question = False


def read_page(path):
    text = path.read_text(encoding="utf-8")
    reader = PageReader()
    reader.feed(text)
    return text, reader


def test_dev_report_has_every_question_and_the_counts_of_results_json(finetuned, demo_set):
    text, page = read_page(finetuned / "dev_report.html")
    results = json.loads((finetuned / "results.json").read_text(encoding="utf-8"))
    dev = formats.read_vqa(demo_set["vqa_dev"], demo_set["images"])
    assert sorted(card["id"] for card in page.cards) == sorted(str(entry["question_id"]) for entry in dev)
    by_id = {card["id"]: card for card in page.cards}
    assert all(by_id[str(entry["question_id"])]["question"] == entry["question"] for entry in dev)
    for answer_type, result in results["by_type"].items():
        cards = [card for card in page.cards if card["type"] == answer_type]
        assert page.summary[answer_type] == len(cards) == result["n"]
        assert sum(card["verdict"] == "right" for card in cards) == round(result["accuracy"] * result["n"])
        verdicts = [card["verdict"] for card in cards]
        assert verdicts == sorted(verdicts, key=lambda verdict: verdict != "wrong")  # the mistakes first
        if cards:
            assert {page.sections[card["section"]] for card in cards} == {answer_type}
    assert page.summary["all"] == results["overall"]["n"] == len(dev)
    assert len(page.images) == len(dev)
    for source in page.images:
        prefix = "data:image/jpeg;base64,"
        assert source.startswith(prefix)
        with Image.open(io.BytesIO(base64.b64decode(source[len(prefix):]))) as thumbnail:
            assert thumbnail.format == "JPEG" and thumbnail.size == (report.THUMBNAIL_SIDE, report.THUMBNAIL_SIDE)
    assert "script" not in page.tags and "http://" not in text and "https://" not in text


def test_predict_report_leaves_out_bad_questions_in_one_line(finetuned, demo_set, tmp_path, capsys):
    dev = formats.read_vqa(demo_set["vqa_dev"], demo_set["images"])[:5]
    records = [{"image": os.path.relpath(entry["image"], demo_set["images"]), "question": entry["question"],
                "answers": entry["answers"], "question_id": entry["question_id"]} for entry in dev]
    records.append({"image": "missing.jpg", "question": "몇 개인가요?", "answers": ["2"], "question_id": "bad"})
    records.append({"image": records[0]["image"], "question": "무슨 색인가요?", "question_id": "no reference"})
    questions = tmp_path / "questions.jsonl"
    questions.write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    page_path = tmp_path / "report.html"
    predict.main(["--ckpt", str(finetuned), "--questions", str(questions), "--images", demo_set["images"],
                  "--report", str(page_path), "--top", "3"])
    captured = capsys.readouterr()
    assert "6 questions on" in captured.out and "1 left out" in captured.out
    assert captured.err.count("error: ") == 1 and "missing.jpg" in captured.err
    _, page = read_page(page_path)
    verdicts = {card["id"]: card["verdict"] for card in page.cards}
    assert set(verdicts) == {str(entry["question_id"]) for entry in dev} | {"no reference"}
    assert verdicts["no reference"] == "unjudged"


def test_explain_for_vilt_and_bad_input_in_one_line(finetuned, demo_set, tmp_path, capsys):
    answers = json.loads((finetuned / "answers.json").read_text(encoding="utf-8"))
    torch.manual_seed(0)
    vilt = build_model(dataclasses.replace(CONFIGS["tiny"], arch="vilt", num_answers=len(answers)))
    vilt_folder = write_checkpoint(vilt, tmp_path / "vilt", demo_set, answers)
    no_head = write_checkpoint(build_model(CONFIGS["tiny"]), tmp_path / "no_head", demo_set, answers)
    entry = formats.read_vqa(demo_set["vqa_dev"], demo_set["images"])[0]
    explained = tmp_path / "vilt_map.png"
    predict.main(["--ckpt", str(vilt_folder), "--image", entry["image"], "--question", entry["question"],
                  "--explain", str(explained), "--layer", "4"])
    assert "the picture with its two maps" in capsys.readouterr().out and explained.is_file()
    for checkpoint, image, question, layer, expected in [
            (finetuned, str(tmp_path / "missing.jpg"), "몇 개인가요?", "2", "image not found"),
            (finetuned, entry["image"], " ", "2", "question is empty"),
            (finetuned, entry["image"], "몇 개인가요?", "3", "--layer 3: the model has 2 layers"),
            (no_head, entry["image"], "몇 개인가요?", "1", "the VQA head has 0 answers")]:
        with pytest.raises(SystemExit) as stop:
            predict.main(["--ckpt", str(checkpoint), "--image", image, "--question", question,
                          "--explain", str(tmp_path / "bad.png"), "--layer", layer])
        message = str(stop.value.code)
        assert message.startswith("error: ") and expected in message and "\n" not in message
    assert not (tmp_path / "bad.png").exists()


def test_dev_objects_file_is_checked_entry_by_entry(tmp_path):
    """A box that is not [left, top, right, bottom] is named with its file and entry, before any training."""
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"101": [1, 2, 30.5, 40]}), encoding="utf-8")
    assert report.read_objects(good) == {"101": [1, 2, 30.5, 40]}
    for content, named in [({"101": [1, 2, 30]}, "'101'"), ({"7": [30, 2, 1, 40]}, "'7'"), ([1, 2], "a list")]:
        bad = tmp_path / "bad.json"
        bad.write_text(json.dumps(content), encoding="utf-8")
        with pytest.raises(ValueError, match=f"{bad}.*{named}"):
            report.read_objects(bad)
