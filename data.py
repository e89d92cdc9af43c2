"""Data for Ko-METER: tokenizer, image loading, AIHub readers, validation, MLM/ITM and VQA batches.

Everything the training scripts read goes through this file. It follows SPEC.md:
  §2.1 image preprocessing (CLIP resize + center crop + normalisation) and RandAugment,
  §2.3 the KLUE WordPiece tokenizer, §3 MLM (whole-word masking) and ITM pairs,
  §5 VQA answer vocabulary, soft scores, answer types and the dev split,
  §6 the data formats (AIHub Korean MSCOCO, AIHub 생활 및 거주환경 VQA, AIHub 시각정보 질의응답,
     VQA v2 / KVQA question lists, the project's own JSONL), §7 the `data.py` commands,
  §8 why the demo data set turns RandAugment's colour and count-changing operations off.

Run on CPU in a few seconds:
    python data.py demo --out demo_data
    python data.py check --captions demo_data/MSCOCO_train_val_Korean.json --images demo_data/images
    python data.py check --vqa demo_data/vqa_train.json --images demo_data/images
    python data.py bench

Sections, in reading order: tokenizer; images and RandAugment; readers; validation;
MLM/ITM batches; VQA targets; demo data set; loading benchmark; command line.

Choices this file makes where the SPEC is silent:
- Tokenizer: [CLS] and [SEP] are added here, not by the file's post-processor, and the file's own
  padding/truncation settings are switched off, so tokenizer.json and vocab.txt behave the same.
  A tokenizer.json whose normaliser decomposes Hangul into jamo (accent stripping on) gets the
  cased, non-stripping BERT normaliser KLUE uses instead, with a note on stderr.
- train_tokenizer learns its WordPiece vocabulary in a few lines of Python (the algorithm of
  tokenizers' WordPieceTrainer, ties broken alphabetically), because the library's trainer gives
  a different vocabulary from run to run and the demo must be the same bytes for the same seed.
  The tokenizer itself is built and saved with the `tokenizers` classes.
- Masking never picks any of the five special tokens ([UNK] included). When a batch would get no
  selected token at all, one random word is selected so the MLM loss stays defined.
- Images: transparent pixels are composited on white (what a browser shows on a white page);
  16-bit grey images (modes I;16*, I) are scaled by 1/257 to 8 bits; float images are clipped to
  [0, 255]. EXIF orientation is applied. An image over Image.MAX_IMAGE_PIXELS is refused.
- RandAugment runs on the decoded picture before resize and crop (as in METER), magnitudes on the
  usual 0..30 scale (level = M / 30): Rotate 30°·level, ShearX/Y 0.3·level, TranslateX/Y
  0.45·level of the side, Posterize 8 − round(4·level) bits, Solarize at 256 − 256·level,
  SolarizeAdd +110·level below 128, Color/Contrast/Brightness/Sharpness 1 ± 0.9·level; geometric
  and enhancement operations take a random sign; empty area is filled with grey (128, 128, 128).
- Readers keep every entry, unusable ones included; check_entries separates them. Entries get the
  answer type already mapped to one of ANSWER_TYPES.
"""

import argparse
import concurrent.futures
import json
import os
import random
import re
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageEnhance, ImageOps

# Batches of short captions gain nothing from the library's thread pool, and a pool started before
# DataLoader workers fork makes every worker print a warning.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, normalizers, pre_tokenizers, processors

ANSWER_TYPES = ["예/아니오", "숫자", "알 수 없음", "그 외"]
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
SPECIAL_TOKENS = ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")  # ids 0..4 in KLUE's vocabulary


# ----------------------------------------------------------------------------------------------
# Tokenizer (SPEC §2.3)


def bert_normalizer():
    """KLUE's normaliser: cased, and no accent stripping (stripping splits Hangul into jamo)."""
    return normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=True, strip_accents=False, lowercase=False
    )


def has_jamo(text):
    """True when text holds conjoining or compatibility jamo (a Hangul syllable taken apart)."""
    return any("\u1100" <= char <= "\u11ff" or "\u3130" <= char <= "\u318f" for char in text)


class Tokenizer:
    """A WordPiece tokenizer with KLUE's special tokens, on top of the `tokenizers` library."""

    def __init__(self, backend, source):
        special_ids = []
        for token in SPECIAL_TOKENS:
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise ValueError(f"{source}: the vocabulary lacks the special token {token}")
            special_ids.append(token_id)
        self.cls_id, self.pad_id, self.sep_id, self.unk_id, self.mask_id = special_ids
        if backend.normalizer is not None and has_jamo(backend.normalizer.normalize_str("한국어")):
            print(f"note: {source}: its normaliser splits Hangul into jamo; using KLUE's "
                  "(cased, no accent stripping) instead", file=sys.stderr)
            backend.normalizer = bert_normalizer()
        backend.no_padding()
        backend.no_truncation()
        if backend.decoder is None:
            backend.decoder = decoders.WordPiece(prefix="##")
        self.backend = backend
        self.source = str(source)
        vocab = backend.get_vocab(with_added_tokens=True)
        self.vocab_size = max(vocab.values()) + 1
        self.continuation = torch.zeros(self.vocab_size, dtype=torch.bool)  # True for "##" pieces
        for token, token_id in vocab.items():
            if token.startswith("##"):
                self.continuation[token_id] = True
        self.special = torch.zeros(self.vocab_size, dtype=torch.bool)
        self.special[special_ids] = True
        self.normal_ids = torch.tensor(sorted(set(vocab.values()) - set(special_ids)))

    @classmethod
    def load(cls, path):
        """Load tokenizer.json or vocab.txt (or a folder holding either; tokenizer.json wins)."""
        path = Path(path)
        if path.is_dir():
            candidates = [path / "tokenizer.json", path / "vocab.txt"]
            found = [candidate for candidate in candidates if candidate.is_file()]
            if not found:
                raise FileNotFoundError(f"{path}: holds neither tokenizer.json nor vocab.txt")
            path = found[0]
        if not path.is_file():
            raise FileNotFoundError(f"{path}: tokenizer file not found")
        if path.suffix == ".json":
            try:
                backend = BackendTokenizer.from_file(str(path))
            except Exception as error:  # the library raises a plain Exception for a bad file
                raise ValueError(f"{path}: not a tokenizers JSON file ({error})") from None
            return cls(backend, path)
        return cls(cls.backend_from_vocab(path), path)

    @staticmethod
    def backend_from_vocab(path):
        """A BERT WordPiece tokenizer from a vocab.txt (one piece per line, line number = id)."""
        vocab = {}
        with open(path, encoding="utf-8") as file:
            for index, line in enumerate(file):
                vocab[line.rstrip("\r\n")] = index
        if "[UNK]" not in vocab:
            raise ValueError(f"{path}: the vocabulary lacks the special token [UNK]")
        backend = BackendTokenizer(models.WordPiece(
            vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100
        ))
        backend.normalizer = bert_normalizer()
        backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        backend.decoder = decoders.WordPiece(prefix="##")
        backend.add_special_tokens([token for token in SPECIAL_TOKENS if token in vocab])  # ids unchanged
        return backend

    def encode(self, texts, max_len):
        """[CLS] pieces [SEP], truncated to max_len, padded to the batch's longest with [PAD]."""
        if max_len < 2:
            raise ValueError(f"max_len {max_len}: needs room for [CLS] and [SEP]")
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        rows = [[self.cls_id] + encoding.ids[: max_len - 2] + [self.sep_id] for encoding in encodings]
        length = max(len(row) for row in rows)
        input_ids = torch.full((len(rows), length), self.pad_id, dtype=torch.long)  # [B, T]
        attention_mask = torch.zeros((len(rows), length), dtype=torch.long)         # [B, T]
        for row_index, row in enumerate(rows):
            input_ids[row_index, : len(row)] = torch.tensor(row)
            attention_mask[row_index, : len(row)] = 1
        return input_ids, attention_mask

    def decode(self, ids):
        """Text of a list or 1-D tensor of ids, special tokens left out."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        return self.backend.decode([token_id for token_id in ids if not self.special[token_id]])

    def word_starts(self, input_ids):
        """[B, T] True where a token starts a word (it is not a "##" continuation piece)."""
        return ~self.continuation[input_ids]


def learn_wordpiece_vocab(texts, vocab_size):
    """WordPiece vocabulary learned as tokenizers' WordPieceTrainer does (start from characters,
    "##" on non-initial ones; repeatedly merge the most frequent adjacent pair), with ties broken
    alphabetically so the result is the same in every run. The library's own trainer breaks ties
    by hash-map order and gives different vocabularies from run to run."""
    normalizer, pre_tokenizer = bert_normalizer(), pre_tokenizers.BertPreTokenizer()
    word_counts = Counter(word for text in texts
                          for word, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(text)))
    pieces_of = {word: [word[0]] + ["##" + char for char in word[1:]] for word in sorted(word_counts)}
    vocab = list(SPECIAL_TOKENS) + sorted({piece for pieces in pieces_of.values() for piece in pieces})
    known = set(vocab)
    while len(vocab) < vocab_size:
        pair_counts = Counter()
        for word, pieces in pieces_of.items():
            for pair in zip(pieces, pieces[1:]):
                pair_counts[pair] += word_counts[word]
        if not pair_counts:
            break
        (left, right), _ = min(pair_counts.items(), key=lambda item: (-item[1], item[0]))
        merged = left + right[2:]  # right is always a "##" piece
        if merged not in known:
            known.add(merged)
            vocab.append(merged)
        for word, pieces in pieces_of.items():
            joined, index = [], 0
            while index < len(pieces):
                if index + 1 < len(pieces) and (pieces[index], pieces[index + 1]) == (left, right):
                    joined.append(merged)
                    index += 2
                else:
                    joined.append(pieces[index])
                    index += 1
            pieces_of[word] = joined
    return vocab


def train_tokenizer(texts, path, vocab_size):
    """Train a KLUE-style WordPiece tokenizer on a small corpus and write it to path
    (tokenizer.json: special tokens at ids 0..4, BERT normaliser and pre-tokeniser, [CLS] $A [SEP])."""
    vocab = {token: token_id for token_id, token in enumerate(learn_wordpiece_vocab(texts, vocab_size))}
    backend = BackendTokenizer(models.WordPiece(
        vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100
    ))
    backend.normalizer = bert_normalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens(list(SPECIAL_TOKENS))
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    backend.save(str(path))
    return Tokenizer(backend, path)


# ----------------------------------------------------------------------------------------------
# Images (SPEC §2.1) and RandAugment

PIXEL_SCALE = (1.0 / (255.0 * np.array(CLIP_STD))).astype(np.float32).reshape(3, 1, 1)  # uint8 -> normalised
PIXEL_OFFSET = (-np.array(CLIP_MEAN) / np.array(CLIP_STD)).astype(np.float32).reshape(3, 1, 1)
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
ALPHA_MODES = ("RGBA", "RGBa", "LA", "La", "PA")
WHITE = (255, 255, 255)


def to_rgb(image):
    """Any Pillow mode -> RGB: alpha composited on white, 16-bit scaled to 8 bits."""
    if image.mode in SIXTEEN_BIT_MODES:
        values = np.asarray(image).astype(np.float32) / 257.0           # 0..65535 -> 0..255
        image = Image.fromarray(np.clip(values + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode in ALPHA_MODES or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGB", rgba.size, WHITE)
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if image.mode != "RGB":
        return image.convert("RGB")
    return image


def open_rgb(path, min_side=None):
    """Decode an image file to an RGB Pillow image, EXIF rotation applied.

    With min_side, a JPEG is decoded at a reduced scale (1/2, 1/4 or 1/8, libjpeg's DCT scaling)
    that keeps both sides >= min_side: much less work for a 224 or 384 crop of a large photo.
    """
    path = str(path)
    try:
        with Image.open(path) as image:
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                raise ValueError(f"{path}: image too large ({image.width}x{image.height} pixels, "
                                 f"limit {Image.MAX_IMAGE_PIXELS}; decompression bomb?)")
            if min_side and image.format == "JPEG":
                image.draft("RGB", (min_side, min_side))
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
            return to_rgb(image)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except Image.DecompressionBombError as error:
        raise ValueError(f"{path}: image too large ({error})") from None
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path}: unreadable image ({error})") from None
    except ValueError as error:
        if str(error).startswith(path):
            raise
        raise ValueError(f"{path}: unreadable image ({error})") from None


def resize_center_crop(image, size):
    """Shorter side to size (bicubic), then the center size x size crop, as CLIP does.

    Resizing only the source box that lands in the crop gives the same pixels as resizing the
    whole picture and cropping afterwards, with less work.
    """
    width, height = image.size
    if width <= height:
        new_width, new_height = size, int(size * height / width)
    else:
        new_width, new_height = int(size * width / height), size
    left = int(round((new_width - size) / 2.0))
    top = int(round((new_height - size) / 2.0))
    x_scale, y_scale = width / new_width, height / new_height
    box = (left * x_scale, top * y_scale, (left + size) * x_scale, (top + size) * y_scale)
    return image.resize((size, size), Image.Resampling.BICUBIC, box=box)


def to_pixels(image):
    """RGB Pillow image [S, S] -> CLIP-normalised FloatTensor [3, S, S]: one multiply-add per
    value ((x / 255 - mean) / std folded into x * scale + offset), written channel-first at once."""
    channels = np.asarray(image, dtype=np.uint8).transpose(2, 0, 1)          # [S, S, 3] -> [3, S, S] view
    pixels = np.empty(channels.shape, dtype=np.float32)
    np.multiply(channels, PIXEL_SCALE, out=pixels)
    pixels += PIXEL_OFFSET
    return torch.from_numpy(pixels)


def load_image(path, size, augment=None, rng=None):
    """Image file -> CLIP-normalised FloatTensor [3, size, size].

    augment: a RandAugment applied to the decoded picture with rng (a random.Random; a fresh
    unseeded one when None).
    """
    image = open_rgb(path, min_side=size)
    if augment is not None:
        image = augment(image, rng if rng is not None else random.Random())
    return to_pixels(resize_center_crop(image, size))


GREY = (128, 128, 128)


def signed(value, rng):
    return -value if rng.random() < 0.5 else value


def affine(image, coefficients):
    return image.transform(image.size, Image.Transform.AFFINE, coefficients,
                           resample=Image.Resampling.BILINEAR, fillcolor=GREY)


def enhance(enhancer, image, level, rng):
    return enhancer(image).enhance(1 + signed(0.9 * level, rng))


def solarize_add(image, level):
    added = int(110 * level)
    table = [min(255, value + added) if value < 128 else value for value in range(256)]
    return image.point(table * 3)


class RandAugment:
    """RandAugment (Cubuk et al. 2020) as METER fine-tunes VQA with it: num_ops random operations
    (with replacement) at one magnitude. Deterministic given the random.Random passed in.
    """

    OPERATIONS = {
        "AutoContrast": lambda image, level, rng: ImageOps.autocontrast(image),
        "Equalize": lambda image, level, rng: ImageOps.equalize(image),
        "Rotate": lambda image, level, rng: image.rotate(
            signed(30 * level, rng), resample=Image.Resampling.BILINEAR, fillcolor=GREY),
        "Posterize": lambda image, level, rng: ImageOps.posterize(image, max(1, 8 - round(4 * level))),
        "Solarize": lambda image, level, rng: ImageOps.solarize(image, 256 - int(256 * level)),
        "SolarizeAdd": lambda image, level, rng: solarize_add(image, level),
        "Color": lambda image, level, rng: enhance(ImageEnhance.Color, image, level, rng),
        "Contrast": lambda image, level, rng: enhance(ImageEnhance.Contrast, image, level, rng),
        "Brightness": lambda image, level, rng: enhance(ImageEnhance.Brightness, image, level, rng),
        "Sharpness": lambda image, level, rng: enhance(ImageEnhance.Sharpness, image, level, rng),
        "ShearX": lambda image, level, rng: affine(image, (1, signed(0.3 * level, rng), 0, 0, 1, 0)),
        "ShearY": lambda image, level, rng: affine(image, (1, 0, 0, signed(0.3 * level, rng), 1, 0)),
        "TranslateX": lambda image, level, rng: affine(
            image, (1, 0, signed(0.45 * level * image.width, rng), 0, 1, 0)),
        "TranslateY": lambda image, level, rng: affine(
            image, (1, 0, 0, 0, 1, signed(0.45 * level * image.height, rng))),
    }
    ALL_OPS = tuple(OPERATIONS)
    # SPEC §8: keeps colours (no Color/Solarize/Posterize/Equalize/AutoContrast) and keeps every
    # object in frame (no Shear/Translate), so colour, count and position answers stay true.
    SAFE_FOR_COLOUR_AND_COUNT = ("Rotate", "Contrast", "Brightness", "Sharpness")

    def __init__(self, num_ops=2, magnitude=9, ops=None):
        self.num_ops = num_ops
        self.level = magnitude / 30.0
        self.ops = tuple(ops) if ops is not None else self.ALL_OPS
        unknown = [name for name in self.ops if name not in self.OPERATIONS]
        if unknown or not self.ops:
            raise ValueError(f"RandAugment ops {list(self.ops)}: unknown {unknown}; "
                             f"choose from {list(self.ALL_OPS)}")

    def __call__(self, image, rng):
        for name in rng.choices(self.ops, k=self.num_ops):
            image = self.OPERATIONS[name](image, self.level, rng)
        return image


# ----------------------------------------------------------------------------------------------
# Readers (SPEC §6): the layout is detected from the content


def read_json_or_jsonl(path):
    """A JSON value, or the list of objects of a JSON-lines file."""
    with open(path, encoding="utf-8-sig") as file:
        text = file.read()
    if Path(path).suffix.lower() != ".jsonl":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            if not text.lstrip().startswith("{"):
                raise ValueError(f"{path}: not valid JSON ({error})") from None
    records = []
    for line_number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}: line {line_number} is not valid JSON ({error})") from None
    return records


IMAGE_KEYS = ("image", "image_path", "file_path", "img_path")


def layout_of(data, path):
    """Name the layout of a loaded file, or refuse it naming the keys found."""
    if isinstance(data, dict):
        keys = set(data)
        if "images" in keys and "question" in keys:
            return "aihub_living_vqa"
        if "annotations" in keys:
            return "annotation_part"
        if "questions" in keys:
            first = next((record for record in data["questions"] if isinstance(record, dict)), {})
            return "question_list" if {"answers", "answer"} & set(first) else "question_part"
        if "images" in keys:
            return "image_part"
    elif isinstance(data, list):
        if not data:
            raise ValueError(f"{path}: the file holds no entries")
        keys = set()
        for record in data[:20]:
            keys |= set(record) if isinstance(record, dict) else set()
        if "caption_ko" in keys and "file_path" in keys:
            return "aihub_coco_captions"
        if "caption" in keys and keys & set(IMAGE_KEYS):
            return "jsonl_captions"
        if "question" in keys and keys & {"answers", "answer"} and keys & set(IMAGE_KEYS):
            return "question_list"
    else:
        keys = set()
    raise ValueError(
        f"{path}: unknown layout; found keys {sorted(keys)}; expected AIHub MSCOCO captions "
        "(file_path, caption_ko), AIHub VQA (images, question | questions, annotations, images), "
        "a question list (question, answers, image) or JSONL (image, caption)"
    )


def image_path_of(record, images_root, category=None):
    name = next((record[key] for key in IMAGE_KEYS if record.get(key)), "")
    if not name:
        return ""
    if category:
        return os.path.join(os.path.abspath(images_root), str(category), str(name))
    return os.path.join(os.path.abspath(images_root), str(name))


def read_captions(path, images_root):
    """Caption entries {"image", "caption", "image_id", "split"} of an AIHub MSCOCO JSON or a
    JSONL file. One entry per caption; empty captions are kept for check_entries to report.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: caption file not found")
    data = read_json_or_jsonl(path)
    layout = layout_of(data, path)
    entries = []
    if layout == "aihub_coco_captions":
        for record in data:
            captions = record.get("caption_ko") or [""]
            captions = [captions] if isinstance(captions, str) else captions
            file_path = str(record.get("file_path", ""))
            image = image_path_of(record, images_root)
            image_id = str(record.get("id", file_path))
            split = file_path.split("/")[0] if "/" in file_path else ""
            for caption in captions:
                entries.append({"image": image, "caption": (caption or "").strip(),
                                "image_id": image_id, "split": split})
    elif layout == "jsonl_captions":
        for record in data:
            image = image_path_of(record, images_root)
            entries.append({"image": image, "caption": (record.get("caption") or "").strip(),
                            "image_id": str(record.get("image_id", image)),
                            "split": str(record.get("split", ""))})
    else:
        raise ValueError(f"{path}: holds VQA questions ({layout}), not captions")
    return entries


def answers_of(record):
    """Annotator answers of a record: "answers" (strings or {"answer": …}), else "answer" or
    "multiple_choice_answer"; empty answers dropped."""
    answers = record.get("answers")
    if answers is None:
        answers = record.get("answer", record.get("multiple_choice_answer"))
    if answers is None:
        return []
    if isinstance(answers, (str, int, float)):
        answers = [answers]
    texts = [str(answer.get("answer", "") if isinstance(answer, dict) else answer).strip()
             for answer in answers]
    return [text for text in texts if text]


def vqa_entry(record, image, answers, question_id, image_id):
    entry = {"image": image, "question": str(record.get("question") or "").strip(),
             "answers": answers, "answer_type": record.get("answer_type"),
             "question_id": question_id, "image_id": str(image_id)}
    entry["answer_type"] = answer_type_of(entry)
    return entry


def aihub_image_path(images, image_id, images_root):
    """<images root>/<category>/<image> of the AIHub images record of image_id ("" if none)."""
    record = images.get(image_id)
    return image_path_of(record, images_root, record.get("category")) if record else ""


def read_living_vqa(data, images_root):
    """AIHub 생활 및 거주환경 VQA: {"images": [...], "question": [...]}."""
    images = {record.get("image_id"): record for record in data["images"]}
    entries = []
    for record in data["question"]:
        image = aihub_image_path(images, record.get("image_id"), images_root)
        entries.append(vqa_entry(record, image, answers_of(record),
                                 record.get("question_id"), record.get("image_id")))
    return entries


def read_question_list(data, path, images_root):
    """VQA v2 / KVQA-style list, or the project's JSONL: each entry holds question, answers, image."""
    records = data["questions"] if isinstance(data, dict) else data
    entries = []
    for index, record in enumerate(records):
        image = image_path_of(record, images_root)
        question_id = record.get("question_id", record.get("id", f"{path.name}:{index}"))
        entries.append(vqa_entry(record, image, answers_of(record), question_id,
                                 record.get("image_id", image)))
    return entries


def join_triplet(folder, parts, images_root):
    """AIHub 시각정보 질의응답: question, annotation and images files joined on their ids."""
    missing = [name for name in ("question_part", "annotation_part", "image_part") if name not in parts]
    if missing:
        raise ValueError(f"{folder}: incomplete question/annotation/images triplet, missing the "
                         f"{', '.join(name.split('_')[0] for name in missing)} file")
    annotations = {record.get("question_id"): record
                   for data in parts["annotation_part"] for record in data["annotations"]}
    images = {record.get("image_id"): record for data in parts["image_part"] for record in data["images"]}
    entries = []
    for data in parts["question_part"]:
        for record in data["questions"]:
            annotation = annotations.get(record.get("question_id"), {})
            image = aihub_image_path(images, record.get("image_id"), images_root)
            merged = {**record, "answer_type": annotation.get("answer_type", record.get("answer_type"))}
            entries.append(vqa_entry(merged, image, answers_of(annotation),
                                     record.get("question_id"), record.get("image_id")))
    return entries


def read_vqa(path, images_root):
    """VQA entries {"image", "question", "answers", "answer_type", "question_id", "image_id"} of a
    label file or a folder of them (searched recursively; 시각정보 triplets are joined per folder).
    """
    path = Path(path)
    if path.is_dir():
        files = sorted(file for file in path.rglob("*") if file.suffix.lower() in (".json", ".jsonl"))
        if not files:
            raise FileNotFoundError(f"{path}: no .json or .jsonl label files in the folder")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: VQA file or folder not found")
    entries, parts_by_folder = [], {}
    for file in files:
        data = read_json_or_jsonl(file)
        layout = layout_of(data, file)
        if layout == "aihub_living_vqa":
            entries += read_living_vqa(data, images_root)
        elif layout == "question_list":
            entries += read_question_list(data, file, images_root)
        elif layout.endswith("_part"):
            if not path.is_dir():
                raise ValueError(f"{file}: one file of a question/annotation/images triplet; "
                                 "pass the folder that holds all three")
            parts_by_folder.setdefault(file.parent, {}).setdefault(layout, []).append(data)
        else:
            raise ValueError(f"{file}: holds captions ({layout}), not VQA questions")
    for folder, parts in parts_by_folder.items():
        entries += join_triplet(folder, parts, images_root)
    return entries


# ----------------------------------------------------------------------------------------------
# Validation: find unusable entries fast, skip and count them


def image_problem(path):
    """None for a usable image, else the reason: missing / unreadable / truncated / too large.

    A JPEG is decoded at 1/8 scale (every byte of the stream is still read, so truncation shows).
    """
    if not path:
        return "unknown image"
    if not os.path.isfile(path):
        return "missing image"
    try:
        with Image.open(path) as image:
            if Image.MAX_IMAGE_PIXELS and image.width * image.height > Image.MAX_IMAGE_PIXELS:
                return "image too large"
            if image.format == "JPEG":
                image.draft(image.mode, (1, 1))
            image.load()
    except Image.DecompressionBombError:
        return "image too large"
    except (OSError, SyntaxError, ValueError) as error:
        return "truncated image" if "truncated" in str(error) else "unreadable image"
    return None


def find_bad_entries(entries, workers=None):
    """(good entries, [(reason, name), …]) without any limit; each image is checked once."""
    paths = sorted({entry["image"] for entry in entries})
    workers = workers or min(16, 2 * (os.cpu_count() or 1))
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # Pillow decodes without the GIL
        problems = dict(zip(paths, pool.map(image_problem, paths)))
    good, bad = [], []
    for entry in entries:
        is_vqa = "question" in entry
        entry_id = str(entry["question_id"] if is_vqa else entry["image_id"])
        problem = problems[entry["image"]]
        if problem:
            bad.append((problem, entry["image"] or entry_id))
        elif not (entry["question"] if is_vqa else entry["caption"]):
            bad.append(("empty text", entry_id))
        elif is_vqa and not entry["answers"]:
            bad.append(("no answer", entry_id))
        else:
            good.append(entry)
    return good, bad


def check_entries(entries, max_bad_share=0.05, workers=None):
    """(good entries, bad [(reason, name)]); ValueError when more than max_bad_share are bad."""
    if not entries:
        raise ValueError("no entries to check")
    good, bad = find_bad_entries(entries, workers)
    refuse_too_many_bad(bad, len(entries), max_bad_share)
    return good, bad


def refuse_too_many_bad(bad, total, max_bad_share):
    if len(bad) > max_bad_share * total:
        reason, name = bad[0]
        raise ValueError(f"{len(bad)} of {total} entries are unusable ({len(bad) / total:.1%}, "
                         f"more than the allowed {max_bad_share:.1%}); first: {reason}: {name}")


# ----------------------------------------------------------------------------------------------
# MLM and ITM batches (SPEC §3)


def mask_tokens(input_ids, tokenizer, generator, probability=0.15, whole_word=True):
    """(masked_ids, labels) for MLM: words are selected with `probability`; each selected token
    becomes [MASK] (80%), a random non-special id (10%) or stays (10%); labels -100 elsewhere.

    A word is a piece plus its following "##" pieces (whole_word) or every single piece.
    """
    batch, length = input_ids.shape
    candidates = ~tokenizer.special[input_ids]                                     # [B, T]
    starts = tokenizer.word_starts(input_ids) & candidates if whole_word else candidates
    word_index = torch.cumsum(starts.long(), dim=1)                                # [B, T], 0 before word 1
    start_drawn = starts & (torch.rand(input_ids.shape, generator=generator) < probability)
    word_chosen = torch.zeros((batch, length + 1), dtype=torch.long)              # [B, words + 1]
    word_chosen.scatter_reduce_(1, word_index, start_drawn.long(), reduce="amax")
    selected = word_chosen.gather(1, word_index).bool() & candidates              # [B, T]
    if not selected.any() and starts.any():
        start_positions = starts.nonzero()                                         # [W, 2]
        row, column = start_positions[torch.randint(len(start_positions), (1,), generator=generator)][0]
        selected[row] = (word_index[row] == word_index[row, column]) & candidates[row]
    action = torch.rand(input_ids.shape, generator=generator)
    random_ids = tokenizer.normal_ids[
        torch.randint(len(tokenizer.normal_ids), input_ids.shape, generator=generator)]
    masked_ids = input_ids.clone()
    masked_ids[selected & (action < 0.8)] = tokenizer.mask_id
    to_random = selected & (action >= 0.8) & (action < 0.9)
    masked_ids[to_random] = random_ids[to_random]
    labels = torch.where(selected, input_ids, torch.full_like(input_ids, -100))
    return masked_ids, labels


def itm_pairs(image_ids, generator):
    """(image_index [B], itm_labels [B]): B // 2 random rows keep their own image (label 1); the
    others take another row's image, one with a different image_id wherever the batch has one."""
    size = len(image_ids)
    codes = {}
    image_codes = torch.tensor([codes.setdefault(image_id, len(codes)) for image_id in image_ids])
    matched = torch.zeros(size, dtype=torch.bool)
    matched[torch.randperm(size, generator=generator)[: size // 2]] = True
    different_image = image_codes[:, None] != image_codes[None, :]                # [B, B]
    other_row = ~torch.eye(size, dtype=torch.bool)                                # [B, B]
    allowed = torch.where(different_image.any(dim=1, keepdim=True), different_image, other_row)
    if size == 1:
        allowed = torch.ones((1, 1), dtype=torch.bool)
    negative_index = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)  # [B]
    image_index = torch.where(matched, torch.arange(size), negative_index)
    return image_index, matched.long()


class CaptionDataset(torch.utils.data.Dataset):
    """Caption entries -> {"pixels" [3, S, S], "caption", "image_id"} (no augmentation)."""

    def __init__(self, entries, image_size):
        self.entries = entries
        self.image_size = image_size

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        entry = self.entries[index]
        return {"pixels": load_image(entry["image"], self.image_size),
                "caption": entry["caption"], "image_id": entry["image_id"]}


def collate_captions(items, tokenizer, max_len):
    input_ids, attention_mask = tokenizer.encode([item["caption"] for item in items], max_len)
    return {"pixels": torch.stack([item["pixels"] for item in items]),          # [B, 3, S, S]
            "input_ids": input_ids, "attention_mask": attention_mask,
            "image_ids": [item["image_id"] for item in items]}


# ----------------------------------------------------------------------------------------------
# VQA targets (SPEC §5)


def answer_scores(answers):
    """{answer: soft score}: min(1, 0.3 · annotators who gave it); a lone answer scores 1."""
    counts = Counter(answers)
    if len(answers) == 1:
        return {answers[0]: 1.0}
    return {answer: min(1.0, 3 * count / 10) for answer, count in counts.items()}


def build_answer_vocab(entries, num_answers):
    """The num_answers most frequent annotator answers (ties: alphabetical, so order-free)."""
    counts = Counter(answer for entry in entries for answer in entry["answers"])
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return [answer for answer, _ in ranked[:num_answers]]


def drop_unanswerable(entries, answer_vocab):
    """Training keeps only questions with at least one answer in the vocabulary (SPEC §5)."""
    known = set(answer_vocab)
    return [entry for entry in entries if any(answer in known for answer in entry["answers"])]


TYPE_SYNONYMS = {
    "예/아니오": "예/아니오", "예/아니요": "예/아니오", "네/아니오": "예/아니오", "네/아니요": "예/아니오",
    "yes/no": "예/아니오", "yes_no": "예/아니오", "yesno": "예/아니오", "y/n": "예/아니오",
    "숫자": "숫자", "수": "숫자", "개수": "숫자", "number": "숫자", "count": "숫자", "counting": "숫자",
    "알수없음": "알 수 없음", "unanswerable": "알 수 없음", "unknown": "알 수 없음",
    "그외": "그 외", "기타": "그 외", "other": "그 외", "others": "그 외",
}
YES_NO_ANSWERS = {"예", "아니오", "아니요", "네"}
COUNTERS = ("개|명|마리|대|권|장|잔|병|그루|송이|채|척|켤레|벌|살|층|번|개월|년|시|분|초|칸|줄|쌍|"
            "가지|곳|군데|인분|조각|판|통|알|포기|자루|인|점|줄기|쪽|회")
NATIVE_ALONE = "(?:열|스물|서른|마흔|쉰)?(?:하나|둘|셋|넷|다섯|여섯|일곱|여덟|아홉)|열|스물|서른|마흔|쉰"
NATIVE_ATTRIBUTIVE = "(?:열|스물|서른|마흔|쉰)?(?:한|두|세|네|다섯|여섯|일곱|여덟|아홉)|열|스무|서른|마흔|쉰"
NUMERAL = re.compile(
    rf"^(?:\d+(?:[.,]\d+)?\s*(?:{COUNTERS})?|(?:{NATIVE_ALONE})|"
    rf"(?:{NATIVE_ATTRIBUTIVE}|[일이삼사오육칠팔구십백천만]+)\s*(?:{COUNTERS})|영)$"
)


def answer_type_of(entry):
    """One of ANSWER_TYPES: the entry's own answer_type when it is one (or a synonym), else by
    its most frequent answer: 예/아니오/아니요/네, a numeral (3, 3개, 세 마리, 셋), 알 수 없음, other."""
    field = entry.get("answer_type")
    if field is not None:
        key = re.sub(r"\s+", "", str(field)).lower()
        for name, answer_type in TYPE_SYNONYMS.items():
            if key == re.sub(r"\s+", "", name):
                return answer_type
    answers = entry.get("answers") or []
    if not answers:
        return "그 외"
    answer = Counter(answers).most_common(1)[0][0].strip().rstrip(".")
    if answer in YES_NO_ANSWERS:
        return "예/아니오"
    if NUMERAL.match(answer):
        return "숫자"
    if re.sub(r"\s+", "", answer) == "알수없음":
        return "알 수 없음"
    return "그 외"


def split_dev(entries, dev_size, seed):
    """(train, dev) by image: images in a seeded random order go to dev until it holds at least
    dev_size questions; no image is in both; the same for the same entries and seed."""
    image_ids = sorted({entry["image_id"] for entry in entries})
    if dev_size >= len(entries) or len(image_ids) < 2:
        raise ValueError(f"dev split: {dev_size} dev questions asked of {len(entries)} questions "
                         f"on {len(image_ids)} images; need fewer questions or more images")
    random.Random(seed).shuffle(image_ids)
    questions_per_image = Counter(entry["image_id"] for entry in entries)
    dev_images, dev_count = set(), 0
    for image_id in image_ids[:-1]:
        if dev_count >= dev_size:
            break
        dev_images.add(image_id)
        dev_count += questions_per_image[image_id]
    train = [entry for entry in entries if entry["image_id"] not in dev_images]
    dev = [entry for entry in entries if entry["image_id"] in dev_images]
    return train, dev


class VqaDataset(torch.utils.data.Dataset):
    """VQA entries -> {"pixels", "question", "targets" [num_answers], "question_id", "index"}.

    With augment, item i of epoch e is augmented with random.Random(f"{seed}:{e}:{i}"): the same
    in every worker and every run. set_epoch reaches DataLoader workers that are started per
    epoch (persistent_workers=False, the default).
    """

    def __init__(self, entries, answer_vocab, image_size, augment=None, seed=0):
        self.entries = entries
        self.num_answers = len(answer_vocab)
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        answer_index = {answer: index for index, answer in enumerate(answer_vocab)}
        self.target_slots = []  # per entry: (answer indices, soft scores)
        for entry in entries:
            scores = answer_scores(entry["answers"]) if entry["answers"] else {}
            known = [(answer_index[answer], score) for answer, score in scores.items() if answer in answer_index]
            self.target_slots.append(([index for index, _ in known], [score for _, score in known]))

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        entry = self.entries[index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}") if self.augment else None
        targets = torch.zeros(self.num_answers)
        answer_indices, scores = self.target_slots[index]
        targets[answer_indices] = torch.tensor(scores, dtype=torch.float32)
        return {"pixels": load_image(entry["image"], self.image_size, self.augment, rng),
                "question": entry["question"], "targets": targets,
                "question_id": entry["question_id"], "index": index}


def collate_vqa(items, tokenizer, max_len):
    input_ids, attention_mask = tokenizer.encode([item["question"] for item in items], max_len)
    return {"pixels": torch.stack([item["pixels"] for item in items]),          # [B, 3, S, S]
            "input_ids": input_ids, "attention_mask": attention_mask,
            "targets": torch.stack([item["targets"] for item in items]),        # [B, num_answers]
            "question_ids": [item["question_id"] for item in items],
            "indices": torch.tensor([item["index"] for item in items])}


# ----------------------------------------------------------------------------------------------
# Demo data set: coloured shapes, Korean captions and questions in the AIHub formats

DEMO_COLOURS = {"빨간색": ("red", (214, 39, 40)), "파란색": ("blue", (31, 89, 214)),
                "초록색": ("green", (40, 160, 60)), "노란색": ("yellow", (240, 200, 20))}
DEMO_SHAPES = {"원": "circle", "사각형": "square", "삼각형": "triangle", "마름모": "diamond"}
DEMO_SIZES = {"큰": ("big", 0.36), "작은": ("small", 0.24)}  # radius as a share of a quarter's side
DEMO_POSITIONS = {(0, 0): "왼쪽 위", (1, 0): "오른쪽 위", (0, 1): "왼쪽 아래", (1, 1): "오른쪽 아래"}
NATIVE_ATTRIBUTIVE_WORDS = {1: "한", 2: "두", 3: "세", 4: "네"}
NATIVE_ALONE_WORDS = {1: "하나", 2: "둘", 3: "셋", 4: "넷"}
ENGLISH_NUMBERS = {1: "one", 2: "two", 3: "three", 4: "four"}
UNKNOWABLE_QUESTIONS = ["이 사진은 언제 찍었나요?", "이 사진을 찍은 사람은 누구인가요?",
                        "도형은 무엇으로 만들어졌나요?", "이 사진은 어느 나라에서 찍었나요?",
                        "도형의 무게는 얼마인가요?"]
DEMO_VERSION = 1


def with_particle(word, after_consonant, after_vowel):
    """Attach a Korean particle pair (이/가, 은/는, 과/와) by the last syllable's final consonant."""
    last = word[-1]
    has_final = "가" <= last <= "힣" and (ord(last) - ord("가")) % 28 != 0
    return word + (after_consonant if has_final else after_vowel)


def join_with_and(phrases):
    """["빨간색 원 두 개", "파란색 사각형 하나"] -> "빨간색 원 두 개와 파란색 사각형 하나"."""
    return " ".join([with_particle(phrase, "과", "와") for phrase in phrases[:-1]] + [phrases[-1]])


def counted(noun, count):
    return f"{noun} {NATIVE_ALONE_WORDS[1]}" if count == 1 else f"{noun} {NATIVE_ATTRIBUTIVE_WORDS[count]} 개"


def demo_scene(rng):
    """1-4 objects, one per quarter of the picture; shapes and colours often repeat (for counts)."""
    cells = rng.sample(list(DEMO_POSITIONS), rng.choice([1, 2, 2, 3, 3, 4]))
    objects = []
    for cell in cells:
        reuse = objects and rng.random() < 0.4
        shape = rng.choice(objects)["shape"] if reuse else rng.choice(list(DEMO_SHAPES))
        reuse = objects and rng.random() < 0.4
        colour = rng.choice(objects)["colour"] if reuse else rng.choice(list(DEMO_COLOURS))
        objects.append({"shape": shape, "colour": colour, "size": rng.choice(list(DEMO_SIZES)),
                        "cell": cell, "position": DEMO_POSITIONS[cell]})
    return objects


def draw_scene(objects, image_size, rng):
    grey = rng.randint(225, 250)
    image = Image.new("RGB", (image_size, image_size), (grey, grey, grey))
    draw = ImageDraw.Draw(image)
    quarter = image_size / 2
    for thing in objects:
        radius = DEMO_SIZES[thing["size"]][1] * quarter
        slack = quarter / 2 - radius - 0.08 * quarter  # keep a margin to the picture's edge
        x = (thing["cell"][0] + 0.5) * quarter + rng.uniform(-slack, slack)
        y = (thing["cell"][1] + 0.5) * quarter + rng.uniform(-slack, slack)
        fill = DEMO_COLOURS[thing["colour"]][1]
        if thing["shape"] == "원":
            draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
        elif thing["shape"] == "사각형":
            half = 0.85 * radius
            draw.rectangle([x - half, y - half, x + half, y + half], fill=fill)
        elif thing["shape"] == "삼각형":
            corners = [(x, y - radius), (x + radius, y + 0.8 * radius), (x - radius, y + 0.8 * radius)]
            draw.polygon(corners, fill=fill)
        else:
            corners = [(x, y - radius), (x + 0.8 * radius, y), (x, y + radius), (x - 0.8 * radius, y)]
            draw.polygon(corners, fill=fill)
    return image


def demo_captions(objects, rng):
    """Five varied Korean captions naming colours, shapes, counts, sizes and positions; English
    captions of the same inventory."""
    groups = Counter((thing["colour"], thing["shape"]) for thing in objects)
    shape_counts = Counter(thing["shape"] for thing in objects)
    colour_counts = Counter(thing["colour"] for thing in objects)
    total = NATIVE_ATTRIBUTIVE_WORDS[len(objects)]
    inventory = join_with_and([counted(f"{colour} {shape}", count) for (colour, shape), count in groups.items()])
    # Every caption describes the whole picture, each in its own words: a caption that is also true of
    # most other pictures ("there is no red shape") would make many ITM negatives secretly positive.
    shape_tally = ", ".join(f"{with_particle(shape, '이', '가')} {NATIVE_ATTRIBUTIVE_WORDS[count]} 개"
                            for shape, count in shape_counts.items())
    colour_tally = join_with_and([counted(f"{colour} 도형", count) for colour, count in colour_counts.items()])
    templates = [
        f"{with_particle(inventory, '이', '가')} {rng.choice(['있다.', '보인다.', '그려져 있다.'])}",
        f"{shape_tally} 있고, {with_particle(colour_tally, '이', '가')} 있다.",
        rng.choice([f"도형 {total} 개, {with_particle(inventory, '이', '가')} 있다.",
                    f"회색 배경 위에 도형 {total} 개, {with_particle(inventory, '이', '가')} 그려져 있다."]),
        ", ".join(f"{thing['position']}에는 "
                  f"{with_particle(' '.join([thing['size'], thing['colour'], thing['shape']]), '이', '가')}"
                  for thing in objects) + " 있다.",
        with_particle(join_with_and([f"{thing['size']} {thing['colour']} {thing['shape']}" for thing in objects]),
                      "이", "가") + " 있다.",
    ]
    absent_colours = [colour for colour in DEMO_COLOURS if colour not in colour_counts]
    absent_shapes = [shape for shape in DEMO_SHAPES if shape not in shape_counts]
    if absent_colours:
        templates.append(f"{with_particle(rng.choice(absent_colours) + ' 도형', '은', '는')} 없고, "
                         f"{with_particle(inventory, '이', '가')} 있다.")
    elif absent_shapes:
        templates.append(f"{with_particle(rng.choice(absent_shapes), '은', '는')} 보이지 않고, "
                         f"{with_particle(inventory, '이', '가')} 보인다.")
    korean = rng.sample(templates, 5)
    english_groups = [f"{ENGLISH_NUMBERS[count] if count > 1 else 'a'} {DEMO_COLOURS[colour][0]} "
                      f"{DEMO_SHAPES[shape]}{'s' if count > 1 else ''}"
                      for (colour, shape), count in groups.items()]
    english_inventory = english_groups[-1]
    if len(english_groups) > 1:
        english_inventory = ", ".join(english_groups[:-1]) + " and " + english_inventory
    english = [f"The picture shows {english_inventory}.", f"A picture of {english_inventory}.",
               f"{english_inventory.capitalize()} on a grey background.",
               f"{ENGLISH_NUMBERS[len(objects)].capitalize()} simple shapes.",
               f"Simple shapes: {english_inventory}."]
    return korean, english


def demo_question(kind, objects, rng):
    """(question, answer, answer type) of one kind, answered by the picture."""
    shapes, colours = list(DEMO_SHAPES), list(DEMO_COLOURS)
    if kind == "숫자":
        variant = rng.randrange(3)
        if variant == 0:
            shape = rng.choice([thing["shape"] for thing in objects] if rng.random() < 0.85 else shapes)
            count = sum(thing["shape"] == shape for thing in objects)
            return f"사진에 {with_particle(shape, '이', '가')} 몇 개 있나요?", f"{count}개", kind
        if variant == 1:
            colour = rng.choice([thing["colour"] for thing in objects] if rng.random() < 0.85 else colours)
            count = sum(thing["colour"] == colour for thing in objects)
            return f"{colour} 도형은 몇 개인가요?", f"{count}개", kind
        return "도형은 모두 몇 개인가요?", f"{len(objects)}개", kind
    if kind == "예/아니오":
        thing = rng.choice(objects)
        if rng.random() < 0.5:  # half the time about an object that is there, else about any
            colour, shape = thing["colour"], thing["shape"]
        else:
            colour, shape = rng.choice(colours), rng.choice(shapes)
        variant = rng.randrange(3)
        if variant == 0:
            found = any(other["colour"] == colour and other["shape"] == shape for other in objects)
            question = f"{colour} {with_particle(shape, '이', '가')} 있나요?"
        elif variant == 1:
            found = any(other["shape"] == shape for other in objects)
            question = f"{with_particle(shape, '이', '가')} 있나요?"
        else:
            position = rng.choice(list(DEMO_POSITIONS.values()))
            found = any(other["shape"] == shape and other["position"] == position for other in objects)
            question = f"{position}에 {with_particle(shape, '이', '가')} 있나요?"
        return question, "예" if found else "아니오", kind
    if kind == "그 외":
        thing = rng.choice(objects)
        variant = rng.randrange(3)
        if variant == 0:
            return f"{thing['position']}에 있는 도형은 무슨 색인가요?", thing["colour"], kind
        name = f"{thing['colour']} {thing['shape']}"
        unique = sum(f"{other['colour']} {other['shape']}" == name for other in objects) == 1
        if variant == 1 or not unique:
            return f"{thing['position']}에 있는 도형은 어떤 모양인가요?", thing["shape"], kind
        return f"{with_particle(name, '은', '는')} 어디에 있나요?", thing["position"], kind
    return rng.choice(UNKNOWABLE_QUESTIONS), "알 수 없음", kind


def demo_questions(objects, rng, count):
    kinds, weights = ["숫자", "예/아니오", "그 외", "알 수 없음"], [0.27, 0.3, 0.33, 0.1]
    questions, seen = [], set()
    while len(questions) < count:
        question = demo_question(rng.choices(kinds, weights)[0], objects, rng)
        if question[0] not in seen:
            seen.add(question[0])
            questions.append(question)
    return questions


def write_json(path, data):
    Path(path).write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")


def make_demo(out_dir, seed=0, caption_images=2000, vqa_train_images=900, vqa_dev_images=125,
              questions_per_image=4, image_size=96, vocab_size=300):
    """Write the synthetic Korean shapes data set; return {"captions", "vqa_train", "vqa_dev",
    "images", "tokenizer"} paths. Same seed and sizes -> same bytes; an existing complete demo
    made with the same settings (demo_done.json) is reused as it is.

    out_dir/MSCOCO_train_val_Korean.json   AIHub MSCOCO captions, file_path under images/
    out_dir/vqa_train.json, vqa_dev.json   AIHub 생활 및 거주환경 VQA labels (different images)
    out_dir/images/{train2014,val2014}/COCO_*.jpg and images/shapes/shapes_*.jpg
    out_dir/tokenizer.json                 WordPiece trained on the demo's text
    """
    out = Path(out_dir)
    settings = {"seed": seed, "caption_images": caption_images, "vqa_train_images": vqa_train_images,
                "vqa_dev_images": vqa_dev_images, "questions_per_image": questions_per_image,
                "image_size": image_size, "vocab_size": vocab_size, "version": DEMO_VERSION}
    paths = {"captions": str(out / "MSCOCO_train_val_Korean.json"), "vqa_train": str(out / "vqa_train.json"),
             "vqa_dev": str(out / "vqa_dev.json"), "images": str(out / "images"),
             "tokenizer": str(out / "tokenizer.json")}
    marker = out / "demo_done.json"
    if marker.is_file():
        complete = all(os.path.exists(path) for path in paths.values())
        if complete and json.loads(marker.read_text(encoding="utf-8")) == settings:
            return paths
        marker.unlink()
        for folder in ("train2014", "val2014", "shapes"):  # a demo's own images, made for other settings
            for old_image in sorted((out / "images" / folder).glob("*.jpg")):
                old_image.unlink()
    texts = []
    caption_rng = random.Random(f"{seed}:captions")
    caption_records = []
    for image_id in range(1, caption_images + 1):
        split = "val2014" if image_id > 0.95 * caption_images else "train2014"
        file_path = f"{split}/COCO_{split}_{image_id:012d}.jpg"
        objects = demo_scene(caption_rng)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        draw_scene(objects, image_size, caption_rng).save(out / "images" / file_path, quality=95)
        korean, english = demo_captions(objects, caption_rng)
        caption_records.append({"file_path": file_path, "id": image_id, "captions": english,
                                "caption_ko": korean})
        texts += korean
    write_json(paths["captions"], caption_records)
    vqa_rng = random.Random(f"{seed}:vqa")
    (out / "images" / "shapes").mkdir(parents=True, exist_ok=True)
    first_image = 1
    for name, image_count in (("vqa_train", vqa_train_images), ("vqa_dev", vqa_dev_images)):
        images, questions = [], []
        for image_id in range(first_image, first_image + image_count):
            objects = demo_scene(vqa_rng)
            file_name = f"shapes_{image_id:06d}.jpg"
            draw_scene(objects, image_size, vqa_rng).save(out / "images" / "shapes" / file_name, quality=95)
            images.append({"image_id": image_id, "image": file_name, "category": "shapes",
                           "width": image_size, "height": image_size})
            for number, (question, answer, answer_type) in enumerate(
                    demo_questions(objects, vqa_rng, questions_per_image)):
                questions.append({"image_id": image_id, "question_id": image_id * 100 + number,
                                  "question": question, "answer": answer, "answer_type": answer_type})
                texts += [question, answer]
        write_json(paths[name], {"images": images, "question": questions})
        first_image += image_count
    train_tokenizer(texts, paths["tokenizer"], vocab_size)
    write_json(marker, settings)
    return paths


# ----------------------------------------------------------------------------------------------
# Loading benchmark: naive Pillow path vs this file's path


def naive_load(path, size):
    """The straightforward path: full decode, resize, crop, then normalise in separate steps."""
    image = Image.open(path).convert("RGB")
    width, height = image.size
    scale = size / min(width, height)
    new_size = (max(size, int(width * scale)), max(size, int(height * scale)))
    image = image.resize(new_size, Image.Resampling.BICUBIC)
    left, top = (image.width - size) // 2, (image.height - size) // 2
    image = image.crop((left, top, left + size, top + size))
    pixels = torch.from_numpy(np.array(image)).permute(2, 0, 1).float() / 255.0      # [3, S, S]
    return (pixels - torch.tensor(CLIP_MEAN).view(3, 1, 1)) / torch.tensor(CLIP_STD).view(3, 1, 1)


def bench_loading(num_images=100, size=224, seed=0, photo_size=(640, 480)):
    """Images/s of one worker, JPEG photos (COCO-sized 640x480 by default, made in a temporary
    folder) -> [3, size, size]; naive path vs load_image. Returns a dict of the numbers."""
    rng = np.random.default_rng(seed)
    results = {"num_images": num_images, "size": size, "photo": f"{photo_size[0]}x{photo_size[1]}"}
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for index in range(num_images):
            coarse = Image.fromarray(rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
            coarse = coarse.resize(photo_size, Image.Resampling.BICUBIC)       # smooth regions
            grain = rng.normal(0, 10, (photo_size[1], photo_size[0], 3))      # and texture
            photo = Image.fromarray(np.clip(np.asarray(coarse) + grain, 0, 255).astype(np.uint8))
            paths.append(os.path.join(folder, f"photo_{index:04d}.jpg"))
            photo.save(paths[-1], quality=90)
        for name, load in (("naive", naive_load), ("project", load_image)):
            load(paths[0], size)
            start = time.perf_counter()
            for path in paths:
                load(path, size)
            results[f"{name}_images_per_s"] = num_images / (time.perf_counter() - start)
    torch.set_num_threads(threads)
    results["speedup"] = results["project_images_per_s"] / results["naive_images_per_s"]
    return results


# ----------------------------------------------------------------------------------------------
# Command line


def run_check(args):
    if args.captions:
        entries = read_captions(args.captions, args.images)
    else:
        entries = read_vqa(args.vqa, args.images)
    if not entries:
        raise ValueError(f"{args.captions or args.vqa}: no entries")
    good, bad = find_bad_entries(entries, args.workers)
    print(f"entries: {len(entries)}")
    print(f"images: {len({entry['image'] for entry in good})}")
    if args.captions:
        print(f"captions: {len(good)}")
    else:
        print(f"questions: {len(good)}")
        type_counts = Counter(entry["answer_type"] for entry in good)
        for answer_type in ANSWER_TYPES:
            print(f"{answer_type}: {type_counts[answer_type]}")
        print(f"answers: {len({answer for entry in good for answer in entry['answers']})}")
    print(f"bad: {len(bad)}")
    for reason, name in bad:
        print(f"bad {reason}: {name}")
    refuse_too_many_bad(bad, len(entries), args.max_bad_share)


def main(argv=None):
    parser = argparse.ArgumentParser(description="Ko-METER data: demo data set, data checks, loading benchmark.")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="write the synthetic Korean shapes data set and its tokenizer")
    demo.add_argument("--out", required=True, help="folder to write the demo into (created if needed)")
    demo.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes")
    check = commands.add_parser("check", help="count entries and list unusable ones (exit 0 while usable)")
    source = check.add_mutually_exclusive_group(required=True)
    source.add_argument("--captions", help="caption file: AIHub MSCOCO JSON or JSONL (image, caption)")
    source.add_argument("--vqa", help="VQA label file or folder of them (any layout of SPEC §6)")
    check.add_argument("--images", required=True, help="images root the label files' paths are relative to")
    check.add_argument("--max-bad-share", type=float, default=0.05,
                       help="fail when more than this share of entries is unusable (default 0.05)")
    check.add_argument("--workers", type=int, default=None,
                       help="threads checking images (default: 2 per CPU core, at most 16)")
    bench = commands.add_parser("bench", help="images/s of one worker: naive Pillow path vs this file's path")
    bench.add_argument("--num-images", type=int, default=100, help="640x480 JPEGs to make and load (default 100)")
    bench.add_argument("--size", type=int, default=224, help="output side in pixels (default 224)")
    bench.add_argument("--photo-width", type=int, default=640, help="width of the test JPEGs (default 640)")
    bench.add_argument("--photo-height", type=int, default=480, help="height of the test JPEGs (default 480)")
    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            start = time.perf_counter()
            paths = make_demo(args.out, args.seed)
            for name, path in paths.items():
                print(f"{name}: {path}")
            print(f"seconds: {time.perf_counter() - start:.1f}")
        elif args.command == "check":
            run_check(args)
        else:
            photo_size = (args.photo_width, args.photo_height)
            results = bench_loading(args.num_images, args.size, photo_size=photo_size)
            for name, value in results.items():
                print(f"{name}: {value:.1f}" if isinstance(value, float) else f"{name}: {value}")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
