"""Every number the reading path computes, against an oracle from outside the project (CPU, seconds).

The reference of each test is not the project's own code: the MLM and ITM losses are F.cross_entropy on the logits
of a plain forward pass, the VQA loss is binary cross-entropy written out and the soft scores are written by hand
(answers like ["a", "a", "b"], and ties), CLIP's preprocessing is transformers' CLIPImageProcessor on a textured,
non-square picture, and whole words are the `tokenizers` library's Encoding.word_ids. Two tiny runs check that
pretraining and fine-tuning (with soft scores in the loss) make their losses fall.

The `check_*` functions are the bodies of the tests: tests/test_mutants.py runs them against broken versions of
the functions and expects each to fail.

    python -m pytest -q tests/test_oracles.py
"""

import argparse
import dataclasses
import functools
import json
import os
import random
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import models, pre_tokenizers

import data
import demo_data
import finetune
import formats
import pretrain
from model import CONFIGS, build_model

# OpenAI CLIP's normalisation, written here rather than taken from data.py
OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# A tiny WordPiece tokenizer made here: several words split into pieces; ids 0..4 the special tokens

SPECIALS = ["[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]"]
PIECES = ["빨간", "파란", "노란", "##색", "원", "##이", "##은", "##을", "사각", "삼각", "##형", "두", "세", "개",
          "##가", "있", "##다", "##나요", "왼쪽", "오른쪽", "##에", "위", "아래", "몇", "사진", "큰", "작", "##은데",
          ".", "?"]
TEXTS = ["빨간색 원이 두 개 있다.", "파란색 사각형은 왼쪽에 있다.", "사진에 삼각형이 몇 개 있나요?",
         "노란색 원은 오른쪽 아래에 있다.", "큰 사각형이 세 개 있다.", "작은데 빨간색 삼각형을 위에",
         "파란색 원이 몇 개 있나요?", "노란색 삼각형은 왼쪽 위에 있다."]


@functools.lru_cache(maxsize=None)
def wordpiece_tokenizer():
    """data.Tokenizer over a `tokenizers` WordPiece with the vocabulary above (no file, no training)."""
    vocab = {token: index for index, token in enumerate(SPECIALS + PIECES)}
    backend = BackendTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##"))
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.add_special_tokens(SPECIALS)
    return data.Tokenizer(backend, "test vocabulary")


def encoded_words(tokenizer, texts, max_len=40):
    """(input_ids [B, T], words [B, T]): the word each token belongs to by Encoding.word_ids (-1 for [CLS], [SEP]
    and [PAD]), laid out as Tokenizer.encode lays out the ids: [CLS] pieces [SEP] [PAD]..."""
    input_ids, _ = tokenizer.encode(texts, max_len)
    words = torch.full(input_ids.shape, -1)
    for row, text in enumerate(texts):
        encoding = tokenizer.backend.encode(text, add_special_tokens=False)
        word_ids = encoding.word_ids[:max_len - 2]
        assert input_ids[row, 1:1 + len(word_ids)].tolist() == encoding.ids[:max_len - 2]
        words[row, 1:1 + len(word_ids)] = torch.tensor([-1 if word is None else word for word in word_ids])
    return input_ids, words


def word_selection(labels, words):
    """Per row {word: (tokens selected, tokens in the word)} for every word that has a selected token."""
    selected = labels != -100
    rows = []
    for row in range(labels.shape[0]):
        counts = {}
        for word in words[row][selected[row]].tolist():
            counts[word] = (int((selected[row] & (words[row] == word)).sum()), int((words[row] == word).sum()))
        rows.append(counts)
    return rows


# ----------------------------------------------------------------------------------------------
# MLM masking: whole words by Encoding.word_ids, the rate of the probability argument, no special ids


def check_mask_tokens_selects_whole_words_at_the_rate_asked(probability=0.4, draws=150):
    tokenizer = wordpiece_tokenizer()
    input_ids, words = encoded_words(tokenizer, TEXTS)
    assert max(int((words[0] == word).sum()) for word in range(words.max() + 1)) > 1  # words of several pieces
    assert not (input_ids == tokenizer.unk_id).any()
    allowed = set(range(len(SPECIALS), len(SPECIALS) + len(PIECES))) | {tokenizer.mask_id}
    word_count = sum(len(set(row.tolist()) - {-1}) for row in words)
    generator = torch.Generator().manual_seed(0)
    selected_words = 0
    for _ in range(draws):
        masked_ids, labels = data.mask_tokens(input_ids, tokenizer, generator, probability)
        selected = labels != -100
        assert (words[selected] >= 0).all(), "only tokens of words are selected, never [CLS], [SEP] or [PAD]"
        assert torch.equal(labels[selected], input_ids[selected])
        assert torch.equal(masked_ids[~selected], input_ids[~selected])
        replaced_by = set(masked_ids[selected].tolist())
        assert replaced_by <= allowed, f"a selected token became a special id: {sorted(replaced_by - allowed)}"
        for counts in word_selection(labels, words):
            assert all(chosen == size for chosen, size in counts.values()), "a word is selected in part"
            selected_words += len(counts)
    share = selected_words / (draws * word_count)
    assert abs(share - probability) < 0.04, f"{share:.3f} of the words selected, asked {probability}"


def check_mask_tokens_fallback_masks_one_whole_word(draws=30):
    tokenizer = wordpiece_tokenizer()
    texts = ["빨간색 원이", "파란색 사각형은", "삼각형이 노란색"]  # every word of several pieces
    input_ids, words = encoded_words(tokenizer, texts)
    generator = torch.Generator().manual_seed(0)
    for _ in range(draws):
        _, labels = data.mask_tokens(input_ids, tokenizer, generator, probability=0.0)
        selections = [counts for counts in word_selection(labels, words) if counts]
        assert len(selections) == 1 and len(selections[0]) == 1, f"not one word: {selections}"
        (chosen, size), = selections[0].values()
        assert chosen == size > 1, f"{chosen} of the {size} pieces of the word selected"


def test_mask_tokens_selects_whole_words_at_the_rate_asked():
    check_mask_tokens_selects_whole_words_at_the_rate_asked(0.4)
    check_mask_tokens_selects_whole_words_at_the_rate_asked(0.15)


def test_mask_tokens_fallback_masks_one_whole_word():
    check_mask_tokens_fallback_masks_one_whole_word()


# ----------------------------------------------------------------------------------------------
# ITM pairs


def check_itm_pairs(draws=300):
    image_ids = ["a", "a", "b", "c", "d", "e"]
    generator = torch.Generator().manual_seed(0)
    negatives = {row: [] for row in range(len(image_ids))}
    for _ in range(draws):
        image_index, labels = data.itm_pairs(image_ids, generator)
        assert labels.tolist().count(1) == len(image_ids) // 2
        for row, (index, label) in enumerate(zip(image_index.tolist(), labels.tolist())):
            if label == 1:
                assert index == row
            else:
                assert image_ids[index] != image_ids[row]
                negatives[row].append(index)
    for row, drawn in negatives.items():  # a negative is any row of another image, each about as often
        others = [index for index, image_id in enumerate(image_ids) if image_id != image_ids[row]]
        assert set(drawn) == set(others), f"row {row}: negatives {sorted(set(drawn))}, rows of other images {others}"
        assert min(drawn.count(index) for index in others) > 0.5 * len(drawn) / len(others)
    image_index, labels = data.itm_pairs(["only"], torch.Generator().manual_seed(0))
    assert image_index.tolist() == [0] and labels.tolist() == [1], "one row keeps its own image: a matched pair"


def test_itm_pairs_draw_any_other_image_and_label_what_they_show():
    check_itm_pairs()


# ----------------------------------------------------------------------------------------------
# MLM + ITM losses against F.cross_entropy


def check_losses_from_logits():
    """Logits made by hand: 5 masked tokens of which 2 are predicted right, 8 ITM rows of which 5 are."""
    generator = torch.Generator().manual_seed(0)
    vocab = 11
    mlm_targets = torch.tensor([3, 7, 1, 9, 4])
    mlm_logits = torch.randn(5, vocab, generator=generator)
    mlm_logits[torch.arange(5), mlm_targets] = torch.tensor([5.0, 5.0, -5.0, -5.0, -5.0])  # rows 0, 1 right
    itm_labels = torch.tensor([1, 0, 1, 1, 0, 0, 1, 0])
    itm_logits = torch.randn(8, 2, generator=generator)
    itm_logits[torch.arange(8), itm_labels] = torch.tensor([3.0, 3.0, 3.0, 3.0, 3.0, -3.0, -3.0, -3.0])
    mlm_sum = F.cross_entropy(mlm_logits, mlm_targets, reduction="sum")
    itm_sum = F.cross_entropy(itm_logits, itm_labels, reduction="sum")
    for mlm_normaliser, itm_normaliser in [(None, None), (13.0, 16.0)]:
        losses = pretrain.losses_from_logits(mlm_logits.clone().requires_grad_(), mlm_targets,
                                             itm_logits.clone().requires_grad_(), itm_labels, mlm_normaliser,
                                             itm_normaliser)
        expected = (F.cross_entropy(mlm_logits, mlm_targets) + F.cross_entropy(itm_logits, itm_labels)
                    if mlm_normaliser is None else mlm_sum / mlm_normaliser + itm_sum / itm_normaliser)
        torch.testing.assert_close(losses["loss"].detach(), expected)
        torch.testing.assert_close(losses["mlm_loss_sum"], mlm_sum)
        torch.testing.assert_close(losses["itm_loss_sum"], itm_sum)
        assert (int(losses["mlm_correct"]), int(losses["itm_correct"])) == (2, 5)
        assert (float(losses["mlm_count"]), float(losses["itm_count"])) == (5.0, 8.0)


def test_losses_from_logits_are_cross_entropies():
    check_losses_from_logits()


def test_objective_and_vqa_means_are_sums_over_counts():
    means = pretrain.objective_means({"mlm_loss_sum": 6.0, "mlm_correct": 3.0, "mlm_count": 12.0,
                                      "itm_loss_sum": 2.0, "itm_correct": 5.0, "itm_count": 8.0})
    assert means == pytest.approx({"mlm_loss": 0.5, "mlm_acc": 0.25, "itm_loss": 0.25, "itm_acc": 0.625})
    assert finetune.vqa_means({"loss_sum": 3.0, "vqa_score_sum": 1.5, "count": 4.0}) == pytest.approx(
        {"loss": 0.75, "vqa_score": 0.375})


def tiny_model(seed=0, **changes):
    torch.manual_seed(seed)
    cfg = dataclasses.replace(CONFIGS["tiny"], vocab_size=len(SPECIALS) + len(PIECES), vision_layers=1,
                              text_layers=1, fusion_layers=1, **changes)
    return build_model(cfg).eval()  # eval: no dropout, so a second forward pass sees the same network


def caption_batch(texts, seed):
    tokenizer = wordpiece_tokenizer()
    input_ids, attention_mask = tokenizer.encode(texts, 40)
    generator = torch.Generator().manual_seed(seed)
    batch = {"pixels": torch.randn(len(texts), 3, 64, 64, generator=generator), "input_ids": input_ids,
             "attention_mask": attention_mask, "image_ids": [str(index // 2) for index in range(len(texts))]}
    return pretrain.add_pretrain_targets(batch, tokenizer, generator)


def plain_pretrain_sums(model, batch):
    """MLM and ITM as plain forward passes and F.cross_entropy: sums and right predictions."""
    with torch.no_grad():
        mlm_logits = model.mlm_head(model(batch["pixels"], batch["masked_ids"], batch["attention_mask"])["text_feats"])
        itm_logits = model.itm_head(model(batch["pixels"][batch["image_index"]], batch["input_ids"],
                                          batch["attention_mask"])["cls_feats"])
    flat_logits, flat_labels = mlm_logits.flatten(0, 1), batch["mlm_labels"].flatten()
    masked = flat_labels != -100
    return {"mlm_loss_sum": F.cross_entropy(flat_logits, flat_labels, ignore_index=-100, reduction="sum"),
            "mlm_correct": (flat_logits[masked].argmax(-1) == flat_labels[masked]).sum(),
            "mlm_count": masked.sum().float(),
            "itm_loss_sum": F.cross_entropy(itm_logits, batch["itm_labels"], reduction="sum"),
            "itm_correct": (itm_logits.argmax(-1) == batch["itm_labels"]).sum(),
            "itm_count": torch.tensor(float(len(batch["itm_labels"])))}


def test_pretrain_losses_against_a_plain_forward_pass():
    model = tiny_model()
    batch = caption_batch(TEXTS, seed=1)
    expected = plain_pretrain_sums(model, batch)
    assert expected["mlm_count"] != expected["itm_count"]
    for mlm_normaliser, itm_normaliser in [(None, None), (17.0, 32.0)]:
        losses = pretrain.pretrain_losses(model, batch, mlm_normaliser, itm_normaliser)
        for name, value in expected.items():
            torch.testing.assert_close(losses[name].float(), value.float(), rtol=1e-4, atol=1e-5)
        mlm_normaliser = mlm_normaliser or expected["mlm_count"]
        itm_normaliser = itm_normaliser or expected["itm_count"]
        torch.testing.assert_close(losses["loss"].detach(), expected["mlm_loss_sum"] / mlm_normaliser
                                   + expected["itm_loss_sum"] / itm_normaliser, rtol=1e-4, atol=1e-5)


def test_held_out_means_weigh_every_token_and_sample_once():
    """evaluate_pretraining over batches of different sizes: the means over all masked tokens and all rows, not
    the mean of the batches' means (the targets it draws are read back from what reaches the losses)."""
    model = tiny_model()
    tokenizer = wordpiece_tokenizer()
    batches = []
    for size, seed in [(6, 0), (2, 1)]:
        input_ids, attention_mask = tokenizer.encode(TEXTS[:size], 40)
        batches.append({"pixels": torch.randn(size, 3, 64, 64, generator=torch.Generator().manual_seed(seed)),
                        "input_ids": input_ids, "attention_mask": attention_mask,
                        "image_ids": [str(index) for index in range(size)]})
    seen = []
    original = pretrain.pretrain_losses

    def spy(model, batch, *arguments, **keywords):
        seen.append(batch)
        return original(model, batch, *arguments, **keywords)

    args = argparse.Namespace(seed=0, dtype="fp32")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(pretrain, "pretrain_losses", spy)
        means = pretrain.evaluate_pretraining(model, batches, tokenizer, args, torch.device("cpu"))
    assert model.training  # evaluation puts the model back in training mode
    model.eval()
    sums = [plain_pretrain_sums(model, batch) for batch in seen]
    total = {name: sum(float(one[name]) for one in sums) for name in sums[0]}
    assert means == pytest.approx({"mlm_loss": total["mlm_loss_sum"] / total["mlm_count"],
                                   "mlm_acc": total["mlm_correct"] / total["mlm_count"],
                                   "itm_loss": total["itm_loss_sum"] / 8, "itm_acc": total["itm_correct"] / 8},
                                  rel=1e-4)


# ----------------------------------------------------------------------------------------------
# VQA: the loss with soft scores, the score of the prediction, exact match and ties


def check_vqa_losses_with_soft_scores():
    """Targets as VQA's soft scores give them, written by hand: ["a", "a", "b"] -> a 0.6, b 0.3; a tie
    ["a", "b"] -> 0.3 each. Each row's scores are placed so that what the model predicts is not the best answer
    in one row, the best in another, one of a tie in the third, and unscored in the last."""
    model = tiny_model(num_answers=4)
    generator = torch.Generator().manual_seed(3)
    tokenizer = wordpiece_tokenizer()
    input_ids, attention_mask = tokenizer.encode(TEXTS[:4], 40)
    batch = {"pixels": torch.randn(4, 3, 64, 64, generator=generator), "input_ids": input_ids,
             "attention_mask": attention_mask}
    with torch.no_grad():
        logits = model.vqa_head(model(batch["pixels"], input_ids, attention_mask)["cls_feats"])  # [4, 4]
    predicted = logits.argmax(-1).tolist()
    others = [[answer for answer in range(4) if answer != predicted[row]] for row in range(4)]
    targets = torch.zeros(4, 4)
    targets[0, predicted[0]], targets[0, others[0][0]] = 0.3, 0.6  # ["a", "a", "b"], the model says b
    targets[1, predicted[1]], targets[1, others[1][0]] = 0.6, 0.3  # ["a", "a", "b"], the model says a
    targets[2, predicted[2]], targets[2, others[2][1]] = 0.3, 0.3  # ["a", "b"]: a tie
    targets[3, others[3][2]] = 1.0                                 # one answer, not the model's
    batch["targets"] = targets
    # binary cross-entropy written out, summed over the answers, averaged over the questions
    probabilities = torch.sigmoid(logits.double())
    bce = -(targets * torch.log(probabilities) + (1 - targets) * torch.log(1 - probabilities))
    for normaliser in (None, 16.0):
        losses = finetune.vqa_losses(model, batch, normaliser)
        torch.testing.assert_close(losses["loss"].detach().double(), bce.sum() / (normaliser or 4), rtol=1e-5,
                                   atol=1e-6)
        torch.testing.assert_close(losses["loss_sum"].double(), bce.sum(), rtol=1e-5, atol=1e-6)
        assert float(losses["vqa_score_sum"]) == pytest.approx(0.3 + 0.6 + 0.3 + 0.0)
        assert float(losses["count"]) == 4.0


def test_vqa_loss_and_score_with_soft_scores():
    check_vqa_losses_with_soft_scores()


def test_reference_answer_is_the_most_frequent_then_the_first_given():
    assert finetune.reference_answer(["b", "a", "a", "b"]) == "b"
    assert finetune.reference_answer(["a", "b", "b"]) == "b"
    assert finetune.reference_answer(["c", "a", "b"]) == "c"
    assert finetune.reference_answer(["원"]) == "원"
    assert finetune.reference_answer([]) == ""


class FixedAnswers(torch.nn.Module):
    """A stand-in model whose answer to a question is written in its pixels: logits one-hot on that answer."""

    def __init__(self, num_answers):
        super().__init__()
        self.num_answers = num_answers

    def forward(self, pixels, input_ids, attention_mask):
        return {"cls_feats": pixels.flatten(1)[:, :1]}

    def vqa_head(self, cls_feats):
        return F.one_hot(cls_feats[:, 0].long(), self.num_answers).float()


def test_evaluate_vqa_accuracy_and_score_by_answer_type():
    vocab = ["a", "b", "c"]
    questions = [  # (answers, answer type, prediction, right by exact match, VQA score), worked out by hand
        (["a", "a", "b"], "그 외", "a", True, 0.6),
        (["a", "a", "b"], "그 외", "b", False, 0.3),
        (["b", "a"], "그 외", "b", True, 0.3),          # a tie: the first given is the reference
        (["b", "a"], "그 외", "a", False, 0.3),
        (["c"], "숫자", "c", True, 1.0),                # one answer: fully right
        (["z"], "숫자", "a", False, 0.0),               # no answer in the vocabulary: counts, scores 0
        (["a", "a", "a", "a", "b"], "숫자", "a", True, 1.0),  # four annotators: fully right
    ]
    entries = [{"question_id": index, "question": "무엇?", "image": f"{index}.png", "answers": answers,
                "answer_type": answer_type} for index, (answers, answer_type, *_) in enumerate(questions)]
    predictions = torch.tensor([float(vocab.index(prediction)) for _, _, prediction, _, _ in questions])
    loader = [{"pixels": predictions[start:start + 4].view(-1, 1, 1, 1),
               "input_ids": torch.zeros(len(predictions[start:start + 4]), 3, dtype=torch.long),
               "attention_mask": torch.ones(len(predictions[start:start + 4]), 3, dtype=torch.long),
               "indices": torch.arange(start, min(start + 4, len(questions)))} for start in (0, 4)]
    results, rows = finetune.evaluate_vqa(FixedAnswers(len(vocab)), loader, entries, vocab,
                                          argparse.Namespace(dtype="fp32"), torch.device("cpu"))
    assert [row["prediction"] for row in rows] == [prediction for _, _, prediction, _, _ in questions]
    assert [row["correct"] for row in rows] == [right for _, _, _, right, _ in questions]
    assert [row["score"] for row in rows] == pytest.approx([score for *_, score in questions])
    assert results["overall"] == pytest.approx({"accuracy": 4 / 7, "vqa_score": 3.5 / 7, "n": 7})
    assert results["by_type"]["그 외"] == pytest.approx({"accuracy": 0.5, "vqa_score": 1.5 / 4, "n": 4})
    assert results["by_type"]["숫자"] == pytest.approx({"accuracy": 2 / 3, "vqa_score": 2 / 3, "n": 3})
    assert results["by_type"]["예/아니오"]["n"] == 0


# ----------------------------------------------------------------------------------------------
# CLIP preprocessing against transformers' CLIPImageProcessor


def textured_photo(width, height, seed=0):
    """A non-square picture with detail at every scale: smooth random blobs plus two colour ramps, so that a crop
    one pixel off, a box in the wrong place or transposed axes all change many pixels."""
    rng = np.random.default_rng(seed)
    blobs = Image.fromarray(rng.integers(0, 256, (height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8))
    pixels = np.asarray(blobs.resize((width, height), Image.Resampling.BICUBIC)).astype(int)
    rows, columns = np.mgrid[0:height, 0:width]
    pixels[..., 0] = (pixels[..., 0] // 2 + columns * 200 // width) % 256
    pixels[..., 2] = (pixels[..., 2] // 2 + rows * 200 // height) % 256
    return Image.fromarray(pixels.astype(np.uint8))


@pytest.mark.parametrize("width, height", [(97, 61), (61, 97)])  # landscape and portrait
def test_clip_preprocessing_matches_clip_image_processor(tmp_path, width, height):
    """The reference is transformers' CLIP processor (its PIL backend), set up in code with CLIP's parameters.

    The sizes are chosen so that the crop offset is a whole number (9 px): where it is half a pixel, CLIP (as
    OpenAI ships it, torchvision's center_crop) rounds half to even and transformers rounds down, and
    data.resize_center_crop follows CLIP. Pixels may differ by a few grey levels where Pillow resizes the
    cropped box in the other order of its two passes (portrait pictures), never by a shifted crop."""
    transformers = pytest.importorskip("transformers", reason="transformers is needed for CLIP's own processor")
    processor_class = getattr(transformers, "CLIPImageProcessorPil", None) or transformers.CLIPImageProcessor
    size = 32
    processor = processor_class(size={"shortest_edge": size}, crop_size={"height": size, "width": size},
                                resample=Image.Resampling.BICUBIC, do_resize=True, do_center_crop=True,
                                do_rescale=True, rescale_factor=1 / 255, do_normalize=True,
                                image_mean=list(OPENAI_CLIP_MEAN), image_std=list(OPENAI_CLIP_STD), do_convert_rgb=True)
    photo = textured_photo(width, height)
    photo.save(tmp_path / "photo.png")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = torch.as_tensor(np.asarray(processor(images=photo, return_tensors="np")["pixel_values"][0]))
    pixels = data.load_image(tmp_path / "photo.png", size)
    assert pixels.shape == expected.shape == (3, size, size) and pixels.dtype == torch.float32
    difference = (pixels - expected).abs()
    grey_level = 1 / 255 / min(OPENAI_CLIP_STD)  # one grey level in normalised units
    assert difference.mean() < 0.5 * grey_level and difference.max() < 16 * grey_level, (
        f"mean {difference.mean() / grey_level:.2f}, max {difference.max() / grey_level:.1f} grey levels")


# ----------------------------------------------------------------------------------------------
# Losses fall: a few dozen steps of each script on a tiny data set made here


COLOURS = {"빨간": (220, 30, 30), "파란": (30, 60, 220), "노란": (230, 210, 30)}
TRAINING_FLAGS = ["--config", "tiny", "--batch", "8", "--max-len", "16", "--workers", "0", "--eval-every", "1000",
                  "--save-every", "1000"]


def make_pictures(root, count):
    """(image name, colour, count of circles) of `count` 48x48 pictures with 1-3 circles of one colour."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    rng = random.Random(0)
    pictures = []
    for index in range(count):
        colour, circles = rng.choice(list(COLOURS)), rng.randint(1, 3)
        image = Image.new("RGB", (48, 48), "white")
        draw = ImageDraw.Draw(image)
        for position in range(circles):
            draw.ellipse([4 + 14 * position, 16, 14 + 14 * position, 28], fill=COLOURS[colour])
        name = f"image_{index:03d}.png"
        image.save(os.path.join(root, "images", name))
        pictures.append((name, colour, circles))
    return pictures


def write_jsonl(path, records):
    with open(path, "w", encoding="utf-8") as file:
        file.writelines(json.dumps(record, ensure_ascii=False) + "\n" for record in records)
    return str(path)


@pytest.fixture(scope="module")
def soft_question_set(tmp_path_factory):
    """Questions whose annotators disagree (["2개", "2개", "3개"]), so that soft scores reach the loss."""
    root = str(tmp_path_factory.mktemp("questions"))
    records = []
    for index, (name, colour, circles) in enumerate(make_pictures(root, 28)):
        other = [other for other in COLOURS if other != colour][index % 2]
        records.append({"image": name, "question": "원은 무슨 색인가요?", "answers": [colour, colour, other],
                        "answer_type": "그 외", "question_id": 2 * index})
        records.append({"image": name, "question": "원은 몇 개인가요?", "question_id": 2 * index + 1,
                        "answers": [f"{circles}개"] * 3 + [f"{circles % 3 + 1}개"] * 2, "answer_type": "숫자"})
    texts = [record["question"] for record in records] + [answer for record in records for answer in record["answers"]]
    demo_data.train_tokenizer(texts, os.path.join(root, "tokenizer.json"), 60)
    return {"train": write_jsonl(os.path.join(root, "train.jsonl"), records[:48]),
            "dev": write_jsonl(os.path.join(root, "dev.jsonl"), records[48:]),
            "images": os.path.join(root, "images"), "tokenizer": os.path.join(root, "tokenizer.json")}


@pytest.fixture
def single_thread():
    """One thread: tiny models run no slower on one, and far faster when the cores are shared with other work."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def train_rows(out):
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"), encoding="utf-8")]
    return [row for row in rows if row["split"] == "train"]


def test_new_answer_head_starts_from_the_share_of_each_answer(soft_question_set):
    """sigmoid(bias) of the new VQA head is each answer's share of all the answers annotators gave, counted here
    from the file; a head that already has a bias (a fine-tuned checkpoint) keeps it."""
    entries = formats.read_vqa(soft_question_set["train"], soft_question_set["images"])
    given = [answer for line in open(soft_question_set["train"], encoding="utf-8") for answer in json.loads(line)["answers"]]
    answer_vocab = sorted(set(given))
    model = build_model(dataclasses.replace(CONFIGS["tiny"], vocab_size=60, num_answers=len(answer_vocab)))
    finetune.start_from_answer_prior(model, entries, answer_vocab)
    shares = torch.tensor([given.count(answer) / len(given) for answer in answer_vocab])
    torch.testing.assert_close(torch.sigmoid(model.vqa_head.classifier.bias.detach()), shares)
    with torch.no_grad():
        model.vqa_head.classifier.bias.fill_(0.5)
    finetune.start_from_answer_prior(model, entries, answer_vocab)
    assert bool((model.vqa_head.classifier.bias == 0.5).all())


def test_pretraining_loss_falls(tmp_path, single_thread):
    root = str(tmp_path / "captions")
    records = [{"image": name, "caption": caption, "image_id": name}
               for name, colour, circles in make_pictures(root, 24)
               for caption in (f"{colour} 원 {circles} 개가 있다", f"흰 바탕에 {colour} 원")]
    demo_data.train_tokenizer([record["caption"] for record in records], os.path.join(root, "tokenizer.json"), 60)
    pretrain.main(["--captions", write_jsonl(os.path.join(root, "captions.jsonl"), records),
                   "--images", os.path.join(root, "images"), "--tokenizer", os.path.join(root, "tokenizer.json"),
                   *TRAINING_FLAGS, "--steps", "30", "--lr", "1e-3", "--log-every", "5",
                   "--out", str(tmp_path / "run")])
    rows = train_rows(tmp_path / "run")
    assert [row["step"] for row in rows] == [5, 10, 15, 20, 25, 30]
    first, last = rows[0], rows[-1]
    assert last["mlm_loss"] < 0.8 * first["mlm_loss"], [row["mlm_loss"] for row in rows]
    assert last["mlm_loss"] + last["itm_loss"] < first["mlm_loss"] + first["itm_loss"]
    assert all(0.5 < row["itm_loss"] < 0.9 for row in rows)  # ITM at chance this early, as in the demo


def test_finetuning_loss_falls_with_soft_scores(soft_question_set, tmp_path, single_thread, monkeypatch):
    monkeypatch.setattr(finetune, "start_from_answer_prior", lambda *args: None)  # from an untrained head, bias 0
    finetune.main(["--train", soft_question_set["train"], "--dev", soft_question_set["dev"],
                   "--images", soft_question_set["images"], "--tokenizer", soft_question_set["tokenizer"],
                   *TRAINING_FLAGS, "--steps", "20", "--lr", "2e-4", "--log-every", "1", "--eval-every", "20",
                   "--save-every", "20", "--augment", "none", "--out", str(tmp_path / "run")])
    rows = train_rows(tmp_path / "run")
    losses = [row["loss"] for row in rows]
    assert len(losses) == 20
    assert sum(losses[-5:]) / 5 < 0.8 * losses[0], losses  # the first step's loss is the untrained model's
    assert all(0 <= row["vqa_score"] <= 1 for row in rows)
