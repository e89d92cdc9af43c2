"""Tests for formats.py: the AIHub downloads and KVQA as they arrive, written by each test as small files in the
folder layouts of the real sets (README, "Data (AIHub)"); images found by file name; the cache; what check
prints; every bad input refused or counted in one line that names the file and the entry.

    python -m pytest -q tests/test_formats.py
"""

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import check
import columns
import image_files
import data  # noqa: E402
import formats  # noqa: E402
from test_data import save_jpeg, save_truncated_jpeg  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
COLLECTIONS = ["개인생활환경 이미지 수집", "노인 생활거주환경 이미지 수집", "실내 가전 및 가구배치 이미지 수집",
               "어린이 생활거주환경 이미지 수집"]


@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    """Every test gets its own empty cache folder."""
    folder = tmp_path / "cache"
    monkeypatch.setenv(columns.CACHE_ENV, str(folder))
    return folder


def write_json(path, value):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


def cached_kilobytes(cache):
    return f"{sum(path.stat().st_size for path in cache.glob('*.columns')) / 1e3:.1f}"


def run_check(*arguments, script="formats.py"):
    return subprocess.run([sys.executable, str(REPO / script), "check", *map(str, arguments)],
                          capture_output=True, text=True, env={**os.environ})


# ---------------------------------------------------------------------------------------------
# AIHub 261 Korean MSCOCO captions, byte-split into pieces


@pytest.fixture
def coco(tmp_path):
    """COCO 2014 images under coco/, and MSCOCO_train_val_Korean.json split into part0 ... part10."""
    root = tmp_path / "coco"
    for image_id in (1, 2, 3):
        save_jpeg(root / "train2014" / f"COCO_train2014_{image_id:012d}.jpg")
    save_truncated_jpeg(root / "val2014" / "COCO_val2014_000000000005.jpg")
    records = [{"file_path": f"train2014/COCO_train2014_{image_id:012d}.jpg", "id": image_id,
                "captions": ["a red square"], "caption_ko": ["빨간 사각형", "붉은 네모가 있다", ""]}
               for image_id in (1, 2, 3)]
    records.append({"file_path": "train2014/COCO_train2014_000000000004.jpg", "id": 4, "captions": ["x"],
                    "caption_ko": ["없는 사진", "사진이 없다"]})
    records.append({"file_path": "val2014/COCO_val2014_000000000005.jpg", "id": 5, "captions": ["x"],
                    "caption_ko": ["깨진 사진"]})
    records.append({"file_path": "train2014/COCO_train2014_000000000001.jpg", "id": 1, "captions": ["x"],
                    "caption_ko": ["", "  "]})
    whole = json.dumps(records, ensure_ascii=False).encode("utf-8")
    download = tmp_path / "download"
    download.mkdir()
    size = -(-len(whole) // 11)
    for number in range(11):
        (download / f"MSCOCO_train_val_Korean.json.part{number}").write_bytes(whole[number * size:(number + 1) * size])
    return download / "MSCOCO_train_val_Korean.json.part0", root


def test_caption_pieces_are_joined_in_natural_order(coco):
    first_piece, root = coco
    entries = formats.read_captions(first_piece, root)
    assert [entry["caption"] for entry in entries] == ["빨간 사각형", "붉은 네모가 있다"] * 3 + [
        "없는 사진", "사진이 없다", "깨진 사진"]
    assert entries[0] == {"image": str(root / "train2014" / "COCO_train2014_000000000001.jpg"),
                          "caption": "빨간 사각형", "image_id": "1", "split": "train2014"}
    assert entries.columns.notes["empty_captions"] == 5  # skipped, not bad entries
    for other_spelling in (str(first_piece)[:-len(".part0")], str(first_piece)[:-1] + "*"):
        assert list(formats.read_captions(other_spelling, root)) == list(entries)
    good, bad = check.check_entries(entries, max_bad_share=0.5)
    assert len(good) == 6 and [(reason, len(rows)) for reason, rows in bad] == [("missing image", 2),
                                                                              ("truncated image", 1)]


def test_a_missing_piece_is_refused(coco):
    first_piece, root = coco
    Path(str(first_piece)[:-1] + "5").unlink()
    with pytest.raises(ValueError) as error:
        formats.read_captions(first_piece, root)
    assert "MSCOCO_train_val_Korean.json" in one_line(error) and "part5 is missing" in str(error.value)


def test_check_prints_counts_then_bad_entries_grouped(coco, cache):
    first_piece, root = coco
    for script in ("check.py", "formats.py", "data.py"):  # formats.py check, data.py check: the older spellings
        result = run_check("--captions", first_piece, "--images", root, "--max-bad-share", "0.5", script=script)
        assert result.returncode == 0, result.stderr
        assert result.stdout.splitlines() == [
            "entries: 9", "images: 3", "captions: 6", "empty captions skipped: 5", "bad: 3",
            "missing image: 1 image, 2 captions — COCO_train2014_000000000004.jpg",
            "truncated image: 1 image, 1 caption — COCO_val2014_000000000005.jpg",
            f"cache: {cache} (2 files, {cached_kilobytes(cache)} kB of parsed labels and image checks; "
            "delete it to redo both)"]
    refused = run_check("--captions", first_piece, "--images", root)
    assert refused.returncode == 1 and refused.stderr.count("\n") == 1
    assert refused.stderr.startswith("error: 3 of 9 entries are unusable (33.3%, more than the allowed 5.0%): "
                                     "missing image: 1 image, 2 captions — COCO_train2014_000000000004.jpg; "
                                     "truncated image")


def test_bad_lines_count_images_and_entries_and_name_the_first_few(tmp_path):
    lines = [{"image": f"gone_{number % 4}.jpg", "question": "무엇?", "answers": ["컵"]} for number in range(6)]
    lines += [{"image": "gone_0.jpg", "question": " ", "answers": ["컵"], "question_id": "blank"}]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    (tmp_path / "images").mkdir()
    _, bad = check.find_bad_entries(formats.read_vqa(tmp_path / "q.jsonl", tmp_path / "images"))
    assert [check.bad_line(reason, rows) for reason, rows in bad] == [
        "missing image: 4 images, 7 questions — gone_0.jpg, gone_1.jpg, gone_2.jpg, …"]
    assert check.count_of(1, "image") == "1 image" and check.count_of(12345, "question") == "12,345 questions"


def test_read_usable_prints_the_summary_and_stops_naming_share_and_examples(coco, capsys):
    first_piece, root = coco
    entries = formats.read_captions(first_piece, root)
    assert capsys.readouterr().err.startswith("parsed 11 label files (9 captions) in ")
    good = check.read_usable(entries, max_bad_share=0.5)
    printed = capsys.readouterr().err.splitlines()
    assert printed[0].startswith("checked 4 images in ")  # the first time only
    assert len(good) == 6 and printed[1] == "entries: 9" and "truncated image: 1 image, 1 caption" in printed[-2]
    with pytest.raises(ValueError) as error:
        check.read_usable(entries, max_bad_share=0.1)
    assert "33.3%, more than the allowed 10.0%" in one_line(error) and "COCO_train2014_000000000004.jpg" in str(error.value)


def test_jsonl_captions(tmp_path):
    save_jpeg(tmp_path / "img" / "sub" / "a.jpg")
    lines = [{"image": "sub/a.jpg", "caption": "고양이"}, {"image": "a.jpg", "caption": "강아지", "image_id": "7"},
             {"image": "a.jpg", "caption": ""}]
    (tmp_path / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    entries = formats.read_captions(tmp_path / "captions.jsonl", tmp_path / "img")
    assert [entry["caption"] for entry in entries] == ["고양이", "강아지"]
    assert entries[1]["image_id"] == "7" and entries[1]["image"] == str(tmp_path / "img" / "sub" / "a.jpg")
    assert entries.columns.notes["empty_captions"] == 1


# ---------------------------------------------------------------------------------------------
# AIHub 101 생활 및 거주환경 기반 VQA: labels per image collection, images/<collection>/<category>/<file>


@pytest.fixture
def living(tmp_path):
    """Training/ as unpacked: one label zip per collection, the images of all four under one root. Two
    collections hold a picture of the same name and category, told apart by the label file's folder."""
    training = tmp_path / "생활 및 거주환경 기반 VQA" / "Training"
    pictures = [("IMG_0001.jpg", "거실"), ("IMG_0001.jpg", "거실"), ("K_0001.jpg", "주방"), ("C_0001.jpg", "놀이방")]
    for collection, (name, category), colour in zip(COLLECTIONS, pictures, [(200, 0, 0), (0, 200, 0), (0, 0, 200),
                                                                             (200, 200, 0)]):
        save_jpeg(training / "images" / collection / category / name, colour=colour)
        zip_name = f"[라벨]{collection}" + ("_1" if collection.startswith("실내") else "")
        write_json(training / "labels" / zip_name / "label_0001.json", {
            "images": [{"image_id": 1, "image": name, "category": category, "weather": "맑음"}],
            "question": [
                {"image_id": 1, "question_id": 11, "question": "소파가 있나요?", "answer": "예", "answer_type": "yes/no"},
                {"image_id": 1, "question_id": 12, "question": "의자는 몇 개인가요?", "answer": "세 개", "answer_type": None},
                {"image_id": 2, "question_id": 13, "question": "무엇인가요?", "answer": "컵", "answer_type": "단답형"}]})
    return training


def test_living_environment_collections_under_one_root(living):
    entries = formats.read_vqa(living / "labels", living / "images")
    assert len(entries) == 12
    for number, collection in enumerate(COLLECTIONS):
        first = entries[3 * number]
        assert Path(first["image"]).relative_to(living / "images").parts[0] == collection
        assert first["source"].endswith("label_0001.json") and collection in first["source"]
        assert (first["question"], first["answers"], first["answer_type"], first["question_id"]) == (
            "소파가 있나요?", ["예"], "예/아니오", 11)
        assert entries[3 * number + 1]["answer_type"] == "숫자"
    colours = {collection: image_files.open_rgb(entries[3 * number]["image"]).getpixel((0, 0))
               for number, collection in enumerate(COLLECTIONS)}
    assert colours[COLLECTIONS[0]][0] > 150 and colours[COLLECTIONS[1]][1] > 150  # the right IMG_0001.jpg each
    good, bad = check.find_bad_entries(entries)
    assert len(good) == 8 and [(reason, len(rows)) for reason, rows in bad] == [("unknown image", 4)]
    lines = check.summary_lines(entries, good, bad)
    assert "answer type '단답형' not known: 4 questions, type inferred from the answer" in lines
    first_label = living / "labels" / f"[라벨]{COLLECTIONS[0]}" / "label_0001.json"
    assert any(line.startswith(f"unknown image: 4 questions — {first_label} question 13, ") for line in lines)


def test_a_single_living_environment_file(living):
    label = living / "labels" / f"[라벨]{COLLECTIONS[2]}_1" / "label_0001.json"
    entries = formats.read_vqa(label, living / "images")
    assert len(entries) == 3 and entries[0]["image"].endswith(os.path.join("주방", "K_0001.jpg"))


# ---------------------------------------------------------------------------------------------
# AIHub 104 시각정보 기반 질의응답: a question/annotation/images triplet per <category>/<level> folder


def write_triplet(folder, prefix, category, questions, extra_annotation=None):
    """questions: [(question_id, image_id, question, answer or None, answer_type)]; images 1 and 2 of the
    category, ids starting afresh in every folder as in the real set."""
    annotations = [{"question_id": question_id, "image_id": image_id, "multiple_choice_answer": answer,
                    "answer_confidence": "yes", "answer_type": answer_type}
                   for question_id, image_id, _, answer, answer_type in questions if answer is not None]
    write_json(folder / f"{prefix}question.json", {"questions": [
        {"question_id": question_id, "image_id": image_id, "question": question}
        for question_id, image_id, question, _, _ in questions]})
    write_json(folder / f"{prefix}annotation.json", {"annotations": annotations + (extra_annotation or [])})
    write_json(folder / f"{prefix}images.json", {"images": [
        {"image_id": image_id, "image": f"{category}_{image_id:04d}.jpg", "category": category} for image_id in (1, 2)]})


@pytest.fixture
def visual(tmp_path):
    """Labels of two categories and levels (one triplet without a name prefix); the images once in one flat
    folder and once in a folder per category."""
    labels = tmp_path / "시각정보 기반 질의응답" / "labels"
    write_triplet(labels / "음식" / "level1", "음식_level1_", "음식", [
        (1, 1, "무슨 음식인가요?", "김밥", "other"), (2, 2, "접시는 몇 개인가요?", "2개", "number"),
        (3, 1, "답이 없는 질문", None, "other")])
    write_triplet(labels / "음식" / "level2", "", "음식", [(1, 2, "김이 있나요?", "네", "단답형")])
    write_triplet(labels / "동물" / "level1", "동물_level1_", "동물", [
        (1, 1, "무슨 동물인가요?", "고양이", "other"), (2, 2, "다리는 몇 개인가요?", "네 개", "단답형")])
    for category in ("음식", "동물"):
        for image_id in (1, 2):
            name = f"{category}_{image_id:04d}.jpg"
            save_jpeg(tmp_path / "flat" / name)
            save_jpeg(tmp_path / "by_category" / category / name)
    return labels, tmp_path / "flat", tmp_path / "by_category"


def test_visual_triplets_join_inside_each_folder_only(visual):
    labels, flat, by_category = visual
    for root in (flat, by_category):
        entries = formats.read_vqa(labels, root)
        rows = [(Path(entry["source"]).parent.name, entry["question_id"], Path(entry["image"]).name, entry["answers"],
                 entry["answer_type"]) for entry in entries]
        assert rows == [("level1", 1, "동물_0001.jpg", ["고양이"], "그 외"), ("level1", 2, "동물_0002.jpg", ["네 개"], "숫자"),
                        ("level1", 1, "음식_0001.jpg", ["김밥"], "그 외"), ("level1", 2, "음식_0002.jpg", ["2개"], "숫자"),
                        ("level1", 3, "음식_0001.jpg", [], "그 외"), ("level2", 1, "음식_0002.jpg", ["네"], "예/아니오")]
        good, bad = check.find_bad_entries(entries)
        assert [(reason, [entry["question"] for entry in rows]) for reason, rows in bad] == [("no answer", ["답이 없는 질문"])]
        lines = check.summary_lines(entries, good, bad)
        assert "answer type '단답형' not known: 2 questions, type inferred from the answer" in lines
        assert f"no answer: 1 question — {labels / '음식' / 'level1' / '음식_level1_question.json'} question 3" in lines


def test_a_repeated_question_id_inside_one_folder_is_refused(visual):
    labels, flat, _ = visual
    folder = labels / "동물" / "level1"
    write_triplet(folder, "동물_level1_", "동물", [(1, 1, "무슨 동물인가요?", "고양이", "other"),
                                                (1, 2, "다리는 몇 개인가요?", None, "number")])
    with pytest.raises(ValueError) as error:
        formats.read_vqa(labels, flat)
    assert one_line(error).startswith(str(folder / "동물_level1_question.json")) and "question_id 1 " in str(error.value)
    write_triplet(folder, "동물_level1_", "동물", [(1, 1, "무슨 동물인가요?", "고양이", "other")],
                  extra_annotation=[{"question_id": 1, "multiple_choice_answer": "개"}])
    with pytest.raises(ValueError) as error:
        formats.read_vqa(labels, flat)
    assert one_line(error).startswith(str(folder / "동물_level1_annotation.json")) and "question_id 1 " in str(error.value)


def test_incomplete_triplets_are_refused_naming_the_folder(visual):
    labels, flat, _ = visual
    (labels / "음식" / "level1" / "음식_level1_images.json").unlink()
    with pytest.raises(ValueError) as error:
        formats.read_vqa(labels, flat)
    assert one_line(error) == (f"{labels / '음식' / 'level1'}: incomplete question/annotation/images triplet "
                               "'음식_level1', missing the images file")
    (labels / "음식" / "level1" / "음식_level1_annotation.json").unlink()
    with pytest.raises(ValueError) as error:
        formats.read_vqa(labels, flat)
    assert "음식_level1_question.json: one file of a question/annotation/images triplet" in one_line(error)


# ---------------------------------------------------------------------------------------------
# Images by file name


def test_an_ambiguous_image_name_is_refused_naming_both_files(tmp_path):
    save_jpeg(tmp_path / "images" / "a" / "same.jpg")
    save_jpeg(tmp_path / "images" / "b" / "same.jpg")
    questions = [{"image": "same.jpg", "question": "무엇인가요?", "answers": ["컵"], "question_id": "q7"}]
    (tmp_path / "q.jsonl").write_text(json.dumps(questions[0], ensure_ascii=False), encoding="utf-8")
    with pytest.raises(ValueError) as error:
        formats.read_vqa(tmp_path / "q.jsonl", tmp_path / "images")
    assert one_line(error) == (f"{tmp_path / 'q.jsonl'}: question \"q7\": image file name 'same.jpg' is ambiguous "
                               f"under {tmp_path / 'images'}: a/same.jpg and b/same.jpg")
    (tmp_path / "q.jsonl").write_text(json.dumps({**questions[0], "image": "b/same.jpg"}), encoding="utf-8")
    assert formats.read_vqa(tmp_path / "q.jsonl", tmp_path / "images")[0]["image"] == str(tmp_path / "images" / "b" / "same.jpg")


def test_images_are_found_whatever_the_folders_in_between(tmp_path):
    save_jpeg(tmp_path / "images" / "deep" / "er" / "x.jpg")
    (tmp_path / "q.jsonl").write_text(json.dumps({"image": "elsewhere/x.jpg", "question": "무엇?", "answers": ["컵"]}),
                                      encoding="utf-8")
    entry = formats.read_vqa(tmp_path / "q.jsonl", tmp_path / "images")[0]
    assert entry["image"] == str(tmp_path / "images" / "deep" / "er" / "x.jpg") and entry["question_id"] == "x"
    with pytest.raises(FileNotFoundError, match="nowhere: images folder not found"):
        formats.read_vqa(tmp_path / "q.jsonl", tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# KVQA


def kvqa_record(image, question, answers, answer_type, answerable=1):
    return {"image": image, "source": "kvqa", "question": question, "answerable": answerable, "answer_type": answer_type,
            "answers": [{"answer": answer, "answer_confidence": confidence} for answer, confidence in answers]}


def test_kvqa_records(tmp_path):
    for name in ("KVQA_190712_00143.jpg", "VizWiz_train_000000008148.jpg", "KVQA_190712_00200.jpg"):
        save_jpeg(tmp_path / "KVQA" / "images" / name)
    records = [
        kvqa_record("KVQA_190712_00143.jpg", "방에 있는 사람은 뭘 하고 있지?",
                    [("피아노", "yes")] * 3 + [("unanswerable", "maybe"), ("게임", "maybe")] + [("피아노 연주", "no")] * 5, "other"),
        kvqa_record("VizWiz_train_000000008148.jpg", "이것은 무엇인가요?", [("unanswerable", "no")] * 10, "unanswerable", 0),
        kvqa_record("KVQA_190712_00200.jpg", "불이 켜져 있나요?", [("네", "yes")] * 10, "네/아니요"),
        kvqa_record("KVQA_190712_00200.jpg", "사람이 몇 명인가요?", [("2", "yes")] * 7 + [("두 명", "yes")] * 3, "number"),
    ]
    write_json(tmp_path / "KVQA" / "KVQA_annotations.json", records)
    entries = formats.read_vqa(tmp_path / "KVQA" / "KVQA_annotations.json", tmp_path / "KVQA" / "images")
    assert [entry["question_id"] for entry in entries] == ["KVQA_190712_00143", "VizWiz_train_000000008148",
                                                           "KVQA_190712_00200", "KVQA_190712_00200#2"]
    assert [entry["answer_type"] for entry in entries] == ["그 외", "알 수 없음", "예/아니오", "숫자"]
    assert entries[1]["answers"] == ["알 수 없음"] * 10 and len(entries[0]["answers"]) == 10
    assert data.answer_scores(entries[0]["answers"]) == {"피아노": 0.9, "알 수 없음": 0.3, "게임": 0.3, "피아노 연주": 1.0}
    assert not check.find_bad_entries(entries)[1]


def test_the_projects_own_jsonl(tmp_path):
    save_jpeg(tmp_path / "c.jpg")
    own = {"image": "c.jpg", "question": "사과가 몇 개?", "answers": ["셋"], "question_id": "q1"}
    (tmp_path / "own.jsonl").write_text(json.dumps(own, ensure_ascii=False) + "\n", encoding="utf-8")
    entry = formats.read_vqa(tmp_path / "own.jsonl", tmp_path)[0]
    assert entry["answer_type"] == "숫자" and entry["question_id"] == "q1"


# ---------------------------------------------------------------------------------------------
# Bad input: one line naming the file and the entry


def test_unknown_layouts_and_wrong_kinds_are_refused(tmp_path, coco):
    write_json(tmp_path / "odd.json", {"data": [], "version": 2})
    with pytest.raises(ValueError) as error:
        formats.read_vqa(tmp_path / "odd.json", tmp_path)
    assert one_line(error).startswith(f"{tmp_path / 'odd.json'}: unknown layout; found keys ['data', 'version']")
    write_json(tmp_path / "odd_list.json", [{"img": "a.jpg", "text": "x"}])
    with pytest.raises(ValueError, match=r"found keys \['img', 'text'\]"):
        formats.read_captions(tmp_path / "odd_list.json", tmp_path)
    with pytest.raises(ValueError, match="not VQA questions"):
        formats.read_vqa(coco[0], coco[1])
    write_json(tmp_path / "list.json", [{"image": "a.jpg", "question": "무엇?", "answers": ["컵"]}, "oops"])
    with pytest.raises(ValueError) as error:
        formats.read_vqa(tmp_path / "list.json", tmp_path)
    assert one_line(error) == f"{tmp_path / 'list.json'}: question entry 1 is not an object: oops"
    (tmp_path / "broken.jsonl").write_text('{"image": "a.jpg", "caption": "x"}\n{"image": \n', encoding="utf-8")
    with pytest.raises(ValueError) as error:
        formats.read_captions(tmp_path / "broken.jsonl", tmp_path)
    assert one_line(error).startswith(f"{tmp_path / 'broken.jsonl'}: line 2 is not valid JSON")
    with pytest.raises(FileNotFoundError, match="caption file not found"):
        formats.read_captions(tmp_path / "nothing.json", tmp_path)


def dds_without_pixel_format(path):
    """A DDS header whose pixel format flags are 0: Pillow raises NotImplementedError opening it."""
    header = (struct.pack("<3I", 0, 4, 4) + bytes(56) + struct.pack("<4I", 32, 0, 0, 0)).ljust(120, b"\0")
    Path(path).write_bytes(b"DDS " + struct.pack("<I", 124) + header)


def test_any_decoding_failure_is_the_images_problem(tmp_path):
    dds_without_pixel_format(tmp_path / "texture.dds")
    with pytest.raises(NotImplementedError):
        Image.open(tmp_path / "texture.dds")
    assert image_files.image_problem(str(tmp_path / "texture.dds")) == "unreadable image"
    with pytest.raises(ValueError) as error:
        image_files.open_rgb(tmp_path / "texture.dds")
    assert one_line(error) == f"{tmp_path / 'texture.dds'}: unreadable image (NotImplementedError: Unknown pixel format flags 0)"
    save_jpeg(tmp_path / "images" / "fine.jpg")
    dds_without_pixel_format(tmp_path / "images" / "texture.dds")
    lines = [{"image": name, "question": "무엇?", "answers": ["컵"]} for name in ("texture.dds", "fine.jpg")]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    good, bad = check.find_bad_entries(formats.read_vqa(tmp_path / "q.jsonl", tmp_path / "images"))
    assert len(good) == 1 and check.bad_line(*bad[0]) == "unreadable image: 1 image, 1 question — texture.dds"


# ---------------------------------------------------------------------------------------------
# The cache


def test_parsed_labels_are_cached_and_a_changed_file_invalidates_its_part(visual, cache, monkeypatch):
    labels, flat, _ = visual
    first = list(formats.read_vqa(labels, flat))
    assert sorted(path.name.split("-")[0] for path in cache.glob("*.columns")) == ["images"] + ["questions"] * 3
    parsed = []
    parse_unit = formats.parse_unit
    monkeypatch.setattr(formats, "parse_unit", lambda kind, unit: parsed.append(unit.name) or parse_unit(kind, unit))
    assert list(formats.read_vqa(labels, flat)) == first and parsed == []
    write_triplet(labels / "음식" / "level2", "", "음식", [(1, 2, "김이 있나요?", "아니요", "yes/no"), (2, 1, "새 질문", "1개", "number")])
    again = list(formats.read_vqa(labels, flat))
    assert parsed == [str(labels / "음식" / "level2" / "question.json")]  # the other two triplets come from the cache
    assert again[:-2] == first[:-1] and [entry["answers"] for entry in again[-2:]] == [["아니요"], ["1개"]]


def test_a_damaged_cache_file_is_rebuilt_and_one_of_a_removed_label_file_is_removed(visual, cache, capsys):
    labels, flat, _ = visual
    first = list(formats.read_vqa(labels, flat))
    capsys.readouterr()
    parts = sorted(cache.glob("questions-*.columns"))
    damaged = bytearray(parts[0].read_bytes())
    damaged[-1] ^= 1  # one bit of the last array
    parts[0].write_bytes(damaged)
    parts[1].write_bytes(parts[1].read_bytes()[:200])  # cut short
    assert list(formats.read_vqa(labels, flat)) == first
    assert capsys.readouterr().err.startswith("parsed 6 label files (")  # the two triplets, parsed again
    for name in ("question", "annotation", "images"):
        (labels / "음식" / "level2" / f"{name}.json").unlink()
    entries = formats.read_vqa(labels, flat)
    line = check.summary_lines(entries, *check.find_bad_entries(entries))[-1]  # check and training runs print it
    assert sorted(path.name.rsplit("-", 1)[0] for path in cache.glob("*.columns")) == [
        "images-flat", "questions-동물_level1_question.json", "questions-음식_level1_question.json"]
    size = sum(path.stat().st_size for path in cache.glob("*.columns"))
    assert line == f"cache: {cache} (3 files, {size / 1e3:.1f} kB of parsed labels and image checks; delete it to redo both)"


def test_image_checks_and_the_walk_are_cached(tmp_path):
    folder = tmp_path / "images" / "photos"
    for name in ("a.jpg", "b.jpg"):
        save_jpeg(folder / name)
    lines = [{"image": name, "question": "무엇?", "answers": ["컵"]} for name in ("a.jpg", "b.jpg", "c.jpg")]
    (tmp_path / "q.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")

    def bad_reasons():
        _, bad = check.find_bad_entries(formats.read_vqa(tmp_path / "q.jsonl", tmp_path / "images"))
        return [(reason, [Path(entry["image"]).name for entry in rows]) for reason, rows in bad]

    assert bad_reasons() == [("missing image", ["c.jpg"])]
    stamp = os.stat(folder / "a.jpg")
    (folder / "a.jpg").write_bytes(b"x" * stamp.st_size)  # broken, but the same size and time: not checked again
    os.utime(folder / "a.jpg", ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    assert bad_reasons() == [("missing image", ["c.jpg"])]
    os.utime(folder / "a.jpg", ns=(stamp.st_atime_ns, stamp.st_mtime_ns + 10**9))  # its time changed: checked
    save_jpeg(folder / "c.jpg")
    folder_time = os.stat(folder).st_mtime_ns + 10**9  # a folder's time has coarse steps; make the change visible
    os.utime(folder, ns=(folder_time, folder_time))
    assert bad_reasons() == [("unreadable image", ["a.jpg"])]


def test_large_label_sets_are_parsed_in_worker_processes(visual, monkeypatch):
    labels, flat, _ = visual
    here = list(formats.read_vqa(labels, flat))
    monkeypatch.setenv(columns.CACHE_ENV, str(flat.parent / "other_cache"))
    monkeypatch.setattr(formats, "PARSE_HERE_BYTES", 0)
    assert list(formats.read_vqa(labels, flat)) == here
    write_triplet(labels / "동물" / "level1", "동물_level1_", "동물", [(1, 1, "a", "b", "other"), (1, 1, "c", "d", "other")])
    with pytest.raises(ValueError, match="question_id 1 appears more than once"):
        formats.read_vqa(labels, flat)


# ---------------------------------------------------------------------------------------------
# Entries in columns


def test_entries_views_and_column_operations(visual):
    labels, flat, _ = visual
    entries = formats.read_vqa(labels, flat)
    assert [entry["question_id"] for entry in entries[1:3]] == [2, 1] and entries[-1]["question"] == "김이 있나요?"
    mask = entries.matching("answer_type", lambda answer_type: answer_type == "숫자")
    assert [entry["answers"] for entry in entries.select(mask)] == [["네 개"], ["2개"]]
    assert entries.answer_counts() == {"고양이": 1, "네 개": 1, "김밥": 1, "2개": 1, "네": 1}
    assert entries.any_answer({"네", "김밥"}.__contains__).tolist() == [False, False, True, False, False, True]
    assert entries.answer_count().tolist() == [1, 1, 1, 1, 0, 1]
    assert entries.distinct("answer_type") == ["그 외", "숫자", "예/아니오"]
    assert len(np.unique(entries.column("image"))) == 4
