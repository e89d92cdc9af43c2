"""Tests for data.py: tokenizer, image decoding, batches, VQA targets, demo (readers: tests/test_formats.py).

Every test makes its own tiny data in tmp_path; nothing is downloaded. Run:
    python -m pytest -q tests/test_data.py
"""

import io
import json
import os
import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import normalizers

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import bench  # noqa: E402
import check  # noqa: E402
import data  # noqa: E402
import demo_data  # noqa: E402
import formats  # noqa: E402
import image_files  # noqa: E402
import shapes_world  # noqa: E402
import tokenizer_files  # noqa: E402

KOREAN_TEXTS = [
    "빨간색 원 두 개와 파란색 사각형 하나가 있다.",
    "사진에 원이 몇 개 있나요?",
    "왼쪽 위에는 큰 노란색 삼각형이 있다.",
    "초록색 마름모는 오른쪽 아래에 있습니다.",
    "한국어 문장을 토큰으로 나눈다.",
    "고양이 세 마리가 소파 위에서 자고 있다.",
] * 20


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    path = tmp_path_factory.mktemp("tokenizer") / "tokenizer.json"
    return data.Tokenizer.load(demo_data.train_tokenizer(KOREAN_TEXTS, path, vocab_size=100))


def save_jpeg(path, size=(48, 32), colour=(200, 30, 30), **options):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path, "JPEG", **options)
    return str(path)


def save_truncated_jpeg(path):
    buffer = io.BytesIO()
    noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(buffer, "JPEG", quality=90)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_bytes(buffer.getvalue()[: len(buffer.getvalue()) // 2])
    return str(path)


# ---------------------------------------------------------------------------------------------
# Tokenizer


def test_tokenizer_json_ids_round_trip_and_encode(tokenizer, tmp_path):
    assert (tokenizer.cls_id, tokenizer.pad_id, tokenizer.sep_id, tokenizer.unk_id, tokenizer.mask_id) == (0, 1, 2, 3, 4)
    loaded = data.Tokenizer.load(tokenizer.source)
    text = "빨간색 원 두 개와 파란색 사각형 하나가 있다."
    input_ids, attention_mask = loaded.encode([text, "원"], max_len=40)
    assert input_ids[0, 0] == 0 and input_ids[0, attention_mask[0].sum() - 1] == 2
    assert input_ids[1].tolist()[3:] == [1] * (input_ids.shape[1] - 3) and attention_mask[1].sum() == 3
    assert loaded.decode(input_ids[0]) == text
    pieces = loaded.backend.encode(text, add_special_tokens=False).tokens
    assert not any(tokenizer_files.has_jamo(piece) for piece in pieces)
    assert "빨" in loaded.backend.get_vocab()
    short_ids, short_mask = loaded.encode([text], max_len=5)
    assert short_ids.shape == (1, 5) and short_ids[0, -1] == 2 and short_mask.all()


def test_accent_stripping_is_off_and_would_split_hangul():
    assert tokenizer_files.bert_normalizer().normalize_str("한국어") == "한국어"
    stripping = normalizers.BertNormalizer(strip_accents=True, lowercase=False)
    assert tokenizer_files.has_jamo(stripping.normalize_str("한국어"))


def test_vocab_txt_and_folder_load_like_tokenizer_json(tokenizer, tmp_path):
    vocab = tokenizer.backend.get_vocab()
    (tmp_path / "vocab.txt").write_text("\n".join(sorted(vocab, key=vocab.get)) + "\n", encoding="utf-8")
    from_vocab = data.Tokenizer.load(tmp_path / "vocab.txt")
    from_folder = data.Tokenizer.load(tmp_path)
    texts = KOREAN_TEXTS[:6] + ["처음 보는 낱말 훑어보기"]
    expected = tokenizer.encode(texts, 40)
    for loaded in (from_vocab, from_folder):
        assert loaded.vocab_size == tokenizer.vocab_size
        assert all(torch.equal(a, b) for a, b in zip(loaded.encode(texts, 40), expected))
        assert loaded.decode(expected[0][1]) == texts[1]


def test_file_padding_and_truncation_settings_are_ignored(tokenizer, tmp_path):
    backend = tokenizer_files.BackendTokenizer.from_file(str(tokenizer.source))
    backend.enable_padding(pad_id=1, pad_token="[PAD]", length=50)
    backend.enable_truncation(max_length=3)
    backend.save(str(tmp_path / "tokenizer.json"))
    loaded = data.Tokenizer.load(tmp_path / "tokenizer.json")
    assert torch.equal(loaded.encode(KOREAN_TEXTS[:2], 40)[0], tokenizer.encode(KOREAN_TEXTS[:2], 40)[0])


def test_a_normaliser_that_splits_hangul_is_replaced(tokenizer, tmp_path, capsys):
    backend = tokenizer_files.BackendTokenizer.from_file(str(tokenizer.source))
    backend.normalizer = normalizers.BertNormalizer(strip_accents=True, lowercase=True)
    backend.save(str(tmp_path / "tokenizer.json"))
    loaded = data.Tokenizer.load(tmp_path / "tokenizer.json")
    assert "jamo" in capsys.readouterr().err
    assert loaded.decode(loaded.encode([KOREAN_TEXTS[0]], 40)[0][0]) == KOREAN_TEXTS[0]


def test_tokenizer_refuses_missing_special_tokens(tmp_path):
    (tmp_path / "vocab.txt").write_text("[CLS]\n[PAD]\n[SEP]\n[UNK]\n원\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"\[MASK\]"):
        data.Tokenizer.load(tmp_path / "vocab.txt")
    with pytest.raises(FileNotFoundError):
        data.Tokenizer.load(tmp_path / "missing.json")


def test_word_starts_mark_continuation_pieces(tokenizer):
    input_ids, _ = tokenizer.encode(KOREAN_TEXTS[:6], 40)
    starts = tokenizer.word_starts(input_ids)
    for row_ids, row_starts in zip(input_ids.tolist(), starts.tolist()):
        for token_id, start in zip(row_ids, row_starts):
            assert start == (not tokenizer.backend.id_to_token(token_id).startswith("##"))
    assert not starts.all()  # the tiny vocabulary splits some words into several pieces


# ---------------------------------------------------------------------------------------------
# Images


def rgb_at(path, xy=(0, 0)):
    return image_files.open_rgb(path).getpixel(xy)


def test_every_image_kind_decodes_to_rgb(tmp_path):
    progressive = save_jpeg(tmp_path / "progressive.jpg", progressive=True, quality=95)
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(tmp_path / "cmyk.jpg", quality=95)
    Image.new("L", (16, 16), 90).save(tmp_path / "grey.jpg", quality=95)
    palette = Image.new("P", (16, 16), 0)
    palette.putpalette([10, 200, 30] + [0, 0, 0] * 255)
    palette.save(tmp_path / "palette.png")
    transparent_palette = palette.copy()
    transparent_palette.info["transparency"] = 0
    transparent_palette.save(tmp_path / "palette_transparent.png", transparency=0)
    rgba = Image.new("RGBA", (16, 16), (0, 0, 255, 0))
    rgba.putpixel((1, 1), (0, 0, 255, 255))
    rgba.save(tmp_path / "rgba.png")
    Image.fromarray(np.full((16, 16), 65535, dtype=np.uint16)).save(tmp_path / "sixteen.png")
    Image.fromarray(np.full((16, 16), 32896, dtype=np.uint16)).save(tmp_path / "sixteen_grey.png")

    assert all(abs(a - b) < 8 for a, b in zip(rgb_at(progressive), (200, 30, 30)))
    red = rgb_at(tmp_path / "cmyk.jpg")
    assert red[0] > 200 and red[1] < 50 and red[2] < 50
    assert all(abs(value - 90) < 4 for value in rgb_at(tmp_path / "grey.jpg"))
    assert rgb_at(tmp_path / "palette.png") == (10, 200, 30)
    assert rgb_at(tmp_path / "palette_transparent.png") == (255, 255, 255)
    assert rgb_at(tmp_path / "rgba.png") == (255, 255, 255)
    assert rgb_at(tmp_path / "rgba.png", (1, 1)) == (0, 0, 255)
    assert Image.open(tmp_path / "sixteen.png").mode.startswith("I")
    assert rgb_at(tmp_path / "sixteen.png") == (255, 255, 255)
    assert rgb_at(tmp_path / "sixteen_grey.png") == (128, 128, 128)
    for name in ("progressive.jpg", "cmyk.jpg", "grey.jpg", "palette.png", "rgba.png", "sixteen.png"):
        pixels = data.load_image(tmp_path / name, 24)
        assert pixels.shape == (3, 24, 24) and pixels.dtype == torch.float32


def test_exif_rotation_is_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (0, 0, 255))
    image.paste((255, 0, 0), (0, 0, 10, 20))  # red on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90° clockwise to display
    image.save(tmp_path / "rotated.jpg", quality=95, exif=exif)
    upright = image_files.open_rgb(tmp_path / "rotated.jpg")
    assert upright.size == (20, 40)
    top = upright.getpixel((10, 2))
    assert top[0] > 200 and top[2] < 60  # the left edge is now at the top


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    save_jpeg(tmp_path / "big.jpg", size=(100, 100))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(ValueError, match="big.jpg.*too large"):
        image_files.open_rgb(tmp_path / "big.jpg")
    assert image_files.image_problem(str(tmp_path / "big.jpg")) == "image too large"


def test_broken_and_missing_images_raise_one_line_errors(tmp_path):
    truncated = save_truncated_jpeg(tmp_path / "broken.jpg")
    (tmp_path / "text.jpg").write_text("not an image")
    with pytest.raises(ValueError, match="broken.jpg"):
        data.load_image(truncated, 32)
    with pytest.raises(ValueError, match="text.jpg: unreadable"):
        data.load_image(tmp_path / "text.jpg", 32)
    with pytest.raises(FileNotFoundError, match="nowhere.jpg"):
        data.load_image(tmp_path / "nowhere.jpg", 32)


def test_draft_decoding_matches_full_decoding(tmp_path):
    rng = np.random.default_rng(0)
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    coarse.resize((800, 600), Image.Resampling.BICUBIC).save(tmp_path / "photo.jpg", quality=92)
    assert image_files.open_rgb(tmp_path / "photo.jpg", min_side=224).size == (400, 300)  # decoded at 1/2
    drafted = data.load_image(tmp_path / "photo.jpg", 224)
    full = data.to_pixels(data.resize_center_crop(image_files.open_rgb(tmp_path / "photo.jpg"), 224))
    assert (drafted - full).abs().mean() < 0.03  # in normalised units: about 2 grey levels


def test_clip_preprocessing_normalises_and_center_crops(tmp_path):
    image = Image.new("RGB", (60, 30), (255, 255, 255))
    image.paste((0, 0, 0), (0, 0, 15, 30))  # black left quarter falls outside the center crop
    image.save(tmp_path / "wide.png")
    pixels = data.load_image(tmp_path / "wide.png", 20)
    white = (1 - torch.tensor(data.CLIP_MEAN)) / torch.tensor(data.CLIP_STD)
    assert pixels.shape == (3, 20, 20)
    assert torch.allclose(pixels[:, 10, 10], white, atol=1e-5)
    assert torch.allclose(pixels[:, :, 2:].mean(dim=(1, 2)), white, atol=0.02)


def test_randaugment_is_deterministic_and_keeps_shape(tmp_path):
    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 3), dtype=np.uint8))
    augment = data.RandAugment()
    first = augment(image, random.Random(7))
    assert first.size == image.size and first.mode == "RGB"
    assert first.tobytes() == augment(image, random.Random(7)).tobytes()
    outputs = {augment(image, random.Random(seed)).tobytes() for seed in range(6)}
    assert len(outputs) > 1
    for name in data.RandAugment.ALL_OPS:
        assert data.RandAugment(1, 9, ops=[name])(image, random.Random(0)).size == image.size
    assert len(data.RandAugment.ALL_OPS) == 14
    safe = data.RandAugment(ops=data.RandAugment.SAFE_FOR_COLOUR_AND_COUNT)
    assert not {"Color", "Solarize", "TranslateX"} & set(safe.ops)
    with pytest.raises(ValueError, match="Flip"):
        data.RandAugment(ops=["Flip"])
    save_jpeg(tmp_path / "a.jpg", size=(40, 40))
    one = data.load_image(tmp_path / "a.jpg", 32, augment, random.Random(3))
    assert torch.equal(one, data.load_image(tmp_path / "a.jpg", 32, augment, random.Random(3)))


# ---------------------------------------------------------------------------------------------
# Entries for the tests below (the readers and `check` are tested in tests/test_formats.py)


def write_jsonl(path, records):
    Path(path).write_text("".join(json.dumps(record, ensure_ascii=False) + "\n" for record in records), encoding="utf-8")
    return path


def question_entries(folder, records):
    """columns.Entries of question records {image, question, answers, ...}, through the project's JSONL."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    return formats.read_vqa(write_jsonl(Path(folder) / "questions.jsonl", records), folder)


# ---------------------------------------------------------------------------------------------
# MLM and ITM


def test_mask_tokens_rates_and_whole_words(tokenizer):
    texts = KOREAN_TEXTS[:6] * 4 + ["원"]  # the last row is mostly [PAD]
    input_ids, _ = tokenizer.encode(texts, 40)
    generator = torch.Generator().manual_seed(0)
    special = tokenizer.special[input_ids]
    # the words, as the tokenizers library groups the pieces (Encoding.word_ids), after [CLS]; -1 elsewhere
    word_index = torch.full(input_ids.shape, -1)
    for row, text in enumerate(texts):
        word_ids = tokenizer.backend.encode(text, add_special_tokens=False).word_ids[:38]
        word_index[row, 1:1 + len(word_ids)] = torch.tensor(word_ids)
    assert torch.equal(word_index >= 0, ~special)
    selected_total = masked_total = random_total = kept_total = 0
    for _ in range(300):
        masked_ids, labels = data.mask_tokens(input_ids, tokenizer, generator)
        selected = labels != -100
        assert not (selected & special).any()
        assert torch.equal(labels[selected], input_ids[selected])
        assert torch.equal(masked_ids[~selected], input_ids[~selected])
        for row in range(input_ids.shape[0]):  # a word is selected with all its pieces or not at all
            for word in word_index[row][selected[row]].unique().tolist():
                assert selected[row][word_index[row] == word].all()
        selected_total += selected.sum().item()
        masked_total += (masked_ids[selected] == tokenizer.mask_id).sum().item()
        kept_total += (masked_ids[selected] == input_ids[selected]).sum().item()
        random_total += ((masked_ids[selected] != tokenizer.mask_id) & (masked_ids[selected] != input_ids[selected])).sum().item()
    share = selected_total / (300 * (~special).sum().item())
    assert 0.13 < share < 0.17
    assert 0.77 < masked_total / selected_total < 0.83
    assert 0.08 < kept_total / selected_total < 0.12  # a random id can equal the original: both ≈ 10%
    assert 0.08 < random_total / selected_total < 0.12


def test_mask_tokens_always_selects_something(tokenizer):
    input_ids, _ = tokenizer.encode(["원"], 10)
    generator = torch.Generator().manual_seed(0)
    for _ in range(20):
        _, labels = data.mask_tokens(input_ids, tokenizer, generator, probability=0.0)
        assert (labels != -100).sum() == 1


def test_itm_pairs_half_matched_with_other_images():
    image_ids = ["a", "a", "b", "c", "c", "d", "e"]
    generator = torch.Generator().manual_seed(0)
    for _ in range(50):
        image_index, labels = data.itm_pairs(image_ids, generator)
        assert labels.sum() == 3 and labels.shape == (7,)
        for row, (index, label) in enumerate(zip(image_index.tolist(), labels.tolist())):
            assert (index == row) if label == 1 else (image_ids[index] != image_ids[row])
    same_image = data.itm_pairs(["x"] * 4, torch.Generator().manual_seed(1))
    assert same_image[1].sum() == 2
    assert all(index != row for row, (index, label) in enumerate(zip(*map(torch.Tensor.tolist, same_image))) if label == 0)
    first = data.itm_pairs(image_ids, torch.Generator().manual_seed(5))
    second = data.itm_pairs(image_ids, torch.Generator().manual_seed(5))
    assert all(torch.equal(a, b) for a, b in zip(first, second))


def test_caption_dataset_and_collate(tokenizer, tmp_path):
    for name in ("a.jpg", "b.jpg"):
        save_jpeg(tmp_path / name)
    captions = [{"image": "a.jpg", "caption": "빨간 사각형", "image_id": "1"},
                {"image": "a.jpg", "caption": "붉은 네모가 있다", "image_id": "1"},
                {"image": "b.jpg", "caption": "파란 원", "image_id": "2"}]
    dataset = data.CaptionDataset(formats.read_captions(write_jsonl(tmp_path / "captions.jsonl", captions), tmp_path), 16)
    batch = data.collate_captions([dataset[0], dataset[2]], tokenizer, 12)
    assert batch["pixels"].shape == (2, 3, 16, 16)
    assert batch["input_ids"].shape == batch["attention_mask"].shape and batch["input_ids"].shape[1] <= 12
    assert batch["image_ids"] == ["1", "2"]


# ---------------------------------------------------------------------------------------------
# VQA targets


def test_answer_scores_vocab_and_unanswerable(tmp_path):
    assert data.answer_scores(["예"]) == {"예": 1.0}
    scores = data.answer_scores(["a"] * 3 + ["b"] * 2 + ["c"] + ["d"] * 4)
    assert scores == {"a": 0.9, "b": 0.6, "c": 0.3, "d": 1.0}
    answers = [["예"], ["예", "아니오"], ["2개"], ["희귀"]]
    entries = question_entries(tmp_path, [{"image": f"{number}.jpg", "question": "무엇?", "answers": given}
                                          for number, given in enumerate(answers)])
    assert data.build_answer_vocab(entries, 3) == ["예", "2개", "아니오"]
    assert [entry["answers"] for entry in data.drop_unanswerable(entries, ["예", "2개"])] == answers[:3]


@pytest.mark.parametrize("entry, expected", [
    ({"answer_type": "yes/no", "answers": ["빨간색"]}, "예/아니오"),
    ({"answer_type": "number", "answers": ["x"]}, "숫자"),
    ({"answer_type": "기타", "answers": ["3"]}, "그 외"),
    ({"answer_type": "알 수 없음", "answers": ["예"]}, "알 수 없음"),
    ({"answer_type": "weird", "answers": ["아니요"]}, "예/아니오"),
    ({"answers": ["네"]}, "예/아니오"),
    ({"answers": ["12"]}, "숫자"),
    ({"answers": ["2개"]}, "숫자"),
    ({"answers": ["두 명"]}, "숫자"),
    ({"answers": ["세 마리"]}, "숫자"),
    ({"answers": ["네 개"]}, "숫자"),
    ({"answers": ["셋"]}, "숫자"),
    ({"answers": ["열두 개"]}, "숫자"),
    ({"answers": ["알 수 없음"]}, "알 수 없음"),
    ({"answers": ["원"]}, "그 외"),
    ({"answers": ["사각형"]}, "그 외"),
    ({"answers": ["소파", "소파", "2개"]}, "그 외"),
    ({"answers": []}, "그 외"),
])
def test_answer_type_of(entry, expected):
    assert formats.answer_type_of(entry) == expected


def test_split_dev_by_image_is_disjoint_and_deterministic(tmp_path):
    entries = question_entries(tmp_path, [{"image": f"img{index % 37}.jpg", "question": "무엇?", "answers": ["컵"],
                                           "question_id": index} for index in range(300)])
    train, dev = data.split_dev(entries, 50, seed=3)
    assert len(train) + len(dev) == 300 and len(dev) >= 50
    assert not {entry["image"] for entry in train} & {entry["image"] for entry in dev}
    again = data.split_dev(entries[::-1], 50, seed=3)
    assert {entry["question_id"] for entry in again[1]} == {entry["question_id"] for entry in dev}
    assert {entry["question_id"] for entry in data.split_dev(entries, 50, seed=4)[1]} != {entry["question_id"] for entry in dev}
    with pytest.raises(ValueError):
        data.split_dev(entries, 300, seed=0)


def test_vqa_dataset_targets_and_augmentation(tokenizer, tmp_path):
    rng = np.random.default_rng(2)
    Image.fromarray(rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)).save(tmp_path / "q.png")
    entries = question_entries(tmp_path, [
        {"image": "q.png", "question": "원이 몇 개 있나요?", "answers": ["2개"] * 2 + ["3개"], "answer_type": "숫자",
         "question_id": 5},
        {"image": "q.png", "question": "무엇?", "answers": ["희귀"], "answer_type": "그 외", "question_id": 6}])
    vocab = ["2개", "3개", "예"]
    dataset = data.VqaDataset(entries, vocab, 24, augment=data.RandAugment(), seed=1)
    item = dataset[0]
    assert torch.allclose(item["targets"], torch.tensor([0.6, 0.3, 0.0]))
    assert dataset[1]["targets"].sum() == 0
    assert torch.equal(item["pixels"], dataset[0]["pixels"])
    changed = [not torch.equal(item["pixels"], (dataset.set_epoch(epoch), dataset[0])[1]["pixels"]) for epoch in (1, 2, 3)]
    assert any(changed)
    batch = data.collate_vqa([dataset[0], dataset[1]], tokenizer, 16)
    assert batch["pixels"].shape == (2, 3, 24, 24) and batch["targets"].shape == (2, 3)
    assert batch["question_ids"] == [5, 6] and batch["indices"].tolist() == [0, 1]


# ---------------------------------------------------------------------------------------------
# Demo data set and benchmark


def test_demo_is_deterministic_readable_and_reused(tmp_path):
    sizes = {"caption_images": 12, "vqa_train_images": 8, "vqa_dev_images": 4}
    first = demo_data.make_demo(tmp_path / "one", seed=5, **sizes)
    demo_data.make_demo(tmp_path / "two", seed=5, **sizes)
    files_one = sorted(path.relative_to(tmp_path / "one") for path in (tmp_path / "one").rglob("*") if path.is_file())
    files_two = sorted(path.relative_to(tmp_path / "two") for path in (tmp_path / "two").rglob("*") if path.is_file())
    assert files_one == files_two and len(files_one) == 12 + 8 + 4 + 6  # pictures, then 5 JSON files and the marker
    for relative in files_one:
        assert (tmp_path / "one" / relative).read_bytes() == (tmp_path / "two" / relative).read_bytes(), relative
    assert set(first) == {"captions", "vqa_train", "vqa_dev", "images", "tokenizer", "dev_objects"}
    stamp = os.path.getmtime(first["captions"])
    assert demo_data.make_demo(tmp_path / "one", seed=5, **sizes) == first
    assert os.path.getmtime(first["captions"]) == stamp

    captions, bad = check.check_entries(formats.read_captions(first["captions"], first["images"]), max_bad_share=0)
    assert len(captions) == 60 and not bad
    train, _ = check.check_entries(formats.read_vqa(first["vqa_train"], first["images"]), max_bad_share=0)
    dev, _ = check.check_entries(formats.read_vqa(first["vqa_dev"], first["images"]), max_bad_share=0)
    assert len(train) == 32 and len(dev) == 16
    assert not {entry["image"] for entry in train} & {entry["image"] for entry in dev}
    tokenizer = data.Tokenizer.load(first["tokenizer"])
    assert (tokenizer.cls_id, tokenizer.pad_id, tokenizer.sep_id, tokenizer.unk_id, tokenizer.mask_id) == (0, 1, 2, 3, 4)
    assert tokenizer.decode(tokenizer.encode([captions[0]["caption"]], 40)[0][0]) == captions[0]["caption"]
    assert data.load_image(train[0]["image"], 64).shape == (3, 64, 64)

    other = demo_data.make_demo(tmp_path / "three", seed=6, **sizes)
    assert Path(other["captions"]).read_bytes() != Path(first["captions"]).read_bytes()


def test_demo_answers_follow_from_the_picture(tmp_path):
    rng = random.Random(0)
    for _ in range(200):
        objects = shapes_world.demo_scene(rng)
        image = shapes_world.draw_scene(objects, 64, rng)  # drawing records each object's box
        for question, answer, answer_type, box in shapes_world.demo_questions(objects, rng, 4):
            assert formats.answer_type_of({"answers": [answer]}) == answer_type
            if question.startswith("도형은 모두"):
                assert answer == f"{len(objects)}개"
            for thing in objects:  # the box of a question about a position is the object's there, in its quarter
                if question.startswith(thing["position"] + "에 있는"):
                    assert box == thing["box"]
                    x, y = thing["cell"]
                    assert x * 32 <= box[0] < box[2] <= (x + 1) * 32 and y * 32 <= box[1] < box[3] <= (y + 1) * 32
        for thing in objects:  # every object's colour is visible in its quarter
            x, y = thing["cell"]
            quarter = np.asarray(image)[y * 32:(y + 1) * 32, x * 32:(x + 1) * 32].reshape(-1, 3)
            colour = np.array(shapes_world.DEMO_COLOURS[thing["colour"]][1])
            assert (np.abs(quarter - colour).sum(axis=1) < 30).sum() > 20
        korean, _ = shapes_world.demo_captions(objects, rng)
        assert len(set(korean)) == 5


def test_bench_loading_reports_both_paths(tmp_path):
    results = bench.bench_loading(num_images=3, size=32)
    assert {"naive_images_per_s", "project_images_per_s", "speedup"} <= set(results)
    rng = np.random.default_rng(3)  # textured and not square: a crop or box in the wrong place changes pixels
    coarse = Image.fromarray(rng.integers(0, 256, (12, 16, 3), dtype=np.uint8))
    coarse.resize((64, 48), Image.Resampling.BICUBIC).save(tmp_path / "sample.jpg", quality=95)
    sample = str(tmp_path / "sample.jpg")
    assert (bench.naive_load(sample, 32) - data.load_image(sample, 32)).abs().max() < 0.1
