"""What a batch is made of, in the order it is made: text, pixels, MLM masks and ITM pairs, VQA targets.

Second stop of the reading path (model.py -> data.py -> pretrain.py -> finetune.py). Sections:
  1. the KLUE WordPiece tokenizer: [CLS] pieces [SEP], padded;
  2. CLIP's image preprocessing (resize the short side, center crop, normalise) and RandAugment;
  3. pretraining targets: whole-word MLM masking and ITM pairs, half of them matched (METER §4);
  4. caption and VQA datasets and their collates, the answer vocabulary, soft scores and the dev split.
Reading the AIHub files into entries is formats.py's job; the synthetic demo set is demo_data.py's.

    python demo_data.py --out demo_data   # first, once: the demo set and its tokenizer (1 s on CPU)
    python -c "import data; print(data.Tokenizer.load('demo_data/tokenizer.json').encode(['빨간색 원이 있다.'], 40))"

Choices where the papers are silent:
- Tokenizer: [CLS] and [SEP] are added here, not by the file's post-processor, so tokenizer.json and vocab.txt
  behave the same.
- Masking never picks a special token ([UNK] included). A batch that would get no masked token at all gets
  one random word masked, so the MLM loss stays defined.
- RandAugment runs on the decoded picture before resize and crop (as METER's does), magnitude M on the
  usual 0..30 scale (level = M / 30); each operation's strength at level 1 is in RandAugment.OPERATIONS;
  geometric and enhancement operations take a random sign; uncovered area is grey.
- A large JPEG is decoded at 1/2, 1/4 or 1/8 scale when both sides stay at least the target size
  (image_files.open_rgb's min_side), then resized as CLIP does: much less work, nearly the same pixels.
"""

import os
import random
import sys
from collections import Counter

import numpy as np
import torch
from PIL import Image, ImageEnhance, ImageOps

from image_files import open_rgb  # image files of every kind -> RGB
from tokenizer_files import SPECIAL_TOKENS, read_tokenizer  # tokenizer.json or vocab.txt

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ----------------------------------------------------------------------------------------------
# 1. Tokenizer: KLUE's WordPiece ("##" marks a piece that continues a word)


class Tokenizer:
    """A WordPiece tokenizer with KLUE's special tokens, on top of the `tokenizers` library. Reading
    tokenizer.json or vocab.txt is tokenizer_files.read_tokenizer's job; this class adds [CLS] and [SEP], pads, and
    knows which ids are special and which pieces continue a word (what MLM masking needs)."""

    def __init__(self, backend, source):
        """backend: a `tokenizers.Tokenizer` with no padding or truncation of its own; source: its file."""
        special_ids = []
        for token in SPECIAL_TOKENS:
            token_id = backend.token_to_id(token)
            if token_id is None:
                raise ValueError(f"{source}: the vocabulary lacks the special token {token}")
            special_ids.append(token_id)
        self.cls_id, self.pad_id, self.sep_id, self.unk_id, self.mask_id = special_ids  # SPECIAL_TOKENS' order
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
        """tokenizer.json or vocab.txt, or a folder holding either (tokenizer.json wins)."""
        return cls(*read_tokenizer(path))

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


# ----------------------------------------------------------------------------------------------
# 2. Pixels: CLIP's preprocessing, and RandAugment for VQA fine-tuning

PIXEL_SCALE = (1.0 / (255.0 * np.array(CLIP_STD))).astype(np.float32).reshape(3, 1, 1)  # uint8 -> normalised
PIXEL_OFFSET = (-np.array(CLIP_MEAN) / np.array(CLIP_STD)).astype(np.float32).reshape(3, 1, 1)


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
    """Image file -> CLIP-normalised FloatTensor [3, size, size]; `augment` (a RandAugment) runs on the decoded
    picture with rng (a random.Random; a fresh unseeded one when None)."""
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
    # For data whose answers are colours, counts or positions (the demo set): no colour operation
    # (Color/Solarize/Posterize/Equalize/AutoContrast) and no shift or shear (Shear/Translate); Rotate turns by
    # at most 9 degrees at magnitude 9, which keeps objects in place and in frame.
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
# 3. Pretraining targets: MLM masks and ITM pairs


def mask_tokens(input_ids, tokenizer, generator, probability=0.15):
    """(masked_ids, labels) for MLM: words are selected with `probability`; each selected token
    becomes [MASK] (80%), a random non-special id (10%) or stays (10%); labels -100 elsewhere.

    A word is a piece plus its following "##" pieces (whole-word masking). Worked example:
        tokens       [CLS]  빨간  ##색   원   [SEP] [PAD]
        starts         0     1     0     1     0     0     (candidates: not special)
        word_index     0     1     1     2     2     2     (cumsum of starts: the word each token belongs to)
    a draw at each word start picks words; every token takes its word's draw back through word_index, and the
    "& candidates" drops [SEP] and [PAD], which share the last word's index. Drawing at every position and
    keeping the starts' draws keeps the random stream the same shape whatever the words.
    """
    batch, length = input_ids.shape
    candidates = ~tokenizer.special[input_ids]                                     # [B, T]
    starts = tokenizer.word_starts(input_ids) & candidates                        # [B, T]
    word_index = torch.cumsum(starts.long(), dim=1)                                # [B, T], 0 before word 1
    start_drawn = starts & (torch.rand(input_ids.shape, generator=generator) < probability)
    word_chosen = torch.zeros((batch, length + 1), dtype=torch.long)              # [B, T + 1]: at most T words
    word_chosen.scatter_reduce_(1, word_index, start_drawn.long(), reduce="amax")  # 1 where a word was drawn
    selected = word_chosen.gather(1, word_index).bool() & candidates              # [B, T]: its tokens
    if not selected.any() and starts.any():
        start_positions = starts.nonzero()                                         # [words, 2]: (row, column)
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
    others take another row's image (label 0), one with a different image_id wherever the batch has one. Only a
    batch whose rows all show one image pairs a row with the same picture under label 0; a batch of one row
    keeps its image (label 1)."""
    size = len(image_ids)
    if size == 1:
        return torch.zeros(1, dtype=torch.long), torch.ones(1, dtype=torch.long)
    codes = {}
    image_codes = torch.tensor([codes.setdefault(image_id, len(codes)) for image_id in image_ids])
    matched = torch.zeros(size, dtype=torch.bool)
    matched[torch.randperm(size, generator=generator)[: size // 2]] = True
    different_image = image_codes[:, None] != image_codes[None, :]                # [B, B]
    other_row = ~torch.eye(size, dtype=torch.bool)                                # [B, B]
    allowed = torch.where(different_image.any(dim=1, keepdim=True), different_image, other_row)
    negative_index = torch.multinomial(allowed.float(), 1, generator=generator).squeeze(1)  # [B]
    image_index = torch.where(matched, torch.arange(size), negative_index)
    return image_index, matched.long()


# ----------------------------------------------------------------------------------------------
# 4. Datasets and collates: captions for pretraining, questions with soft-score targets for VQA
#
# The entries that formats.py reads are a columns.Entries: rows in columns rather than one dict per question (a
# million questions take megabytes, shared by the DataLoader workers). entries[i] is entry i as a dict; the
# rest works on whole columns: answer_counts() {answer: count}, any_answer(values) and matching(field, test)
# give boolean masks [N], distinct(field) the sorted values, column("image") a number per image file, and
# select(mask) the entries a mask keeps.


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


def answer_scores(answers):
    """{answer: soft score}: METER's soft target (near VQA's metric), min(1, 0.3 x the annotators who gave it), so an answer 4 of 10
    annotators gave is fully right and one given once 0.3 right. A data set with one answer per question (the
    AIHub sets) gives that answer 1."""
    counts = Counter(answers)
    if len(answers) == 1:
        return {answers[0]: 1.0}
    return {answer: min(1.0, 3 * count / 10) for answer, count in counts.items()}


def build_answer_vocab(entries, num_answers):
    """The num_answers answers annotators gave most often (ties: alphabetical, so the file's order is irrelevant)."""
    ranked = sorted(entries.answer_counts().items(), key=lambda item: (-item[1], item[0]))
    return [answer for answer, _ in ranked[:num_answers]]


def drop_unanswerable(entries, answer_vocab):
    """Training keeps only questions with at least one answer in the vocabulary (METER's VQA recipe)."""
    return entries.select(entries.any_answer(answer_vocab))


def split_dev(entries, dev_size, seed):
    """(train, dev) by image file: images in a seeded random order (of their paths) go to dev until it holds at
    least dev_size questions; no image is in both; the same for the same entries and seed."""
    images = entries.column("image")  # [N] the image file of each question as a number: same file, same number
    image_codes, questions_per_image = np.unique(images, return_counts=True)
    if dev_size >= len(entries) or len(image_codes) < 2:
        raise ValueError(f"dev split: {dev_size} dev questions asked of {len(entries)} questions "
                         f"on {len(image_codes)} images; need fewer questions or more images")
    order = list(range(len(image_codes)))
    random.Random(seed).shuffle(order)
    dev_images, dev_count = [], 0
    for position in order[:-1]:  # the last image always stays in training
        if dev_count >= dev_size:
            break
        dev_images.append(image_codes[position])
        dev_count += int(questions_per_image[position])
    in_dev = np.isin(images, dev_images)
    return entries.select(~in_dev), entries.select(in_dev)


class VqaDataset(torch.utils.data.Dataset):
    """VQA entries -> {"pixels", "question", "targets" [num_answers], "question_id", "index"}; with picture_of,
    "pixels" are those of the picture it names instead of the entry's own (the wrong-picture control).

    With augment, item i of epoch e is augmented with random.Random(f"{seed}:{e}:{i}"): the same in every
    worker and every run. The training stream (training.ShuffledStream) calls set_epoch in each worker as it
    enters a new epoch.
    """

    def __init__(self, entries, answer_vocab, image_size, augment=None, seed=0, picture_of=None):
        self.entries = entries
        self.picture_of = picture_of  # {image: the image shown instead}: finetune.py's wrong-picture control
        self.num_answers = len(answer_vocab)
        self.image_size = image_size
        self.augment = augment
        self.seed = seed
        self.epoch = 0
        self.answer_index = {answer: index for index, answer in enumerate(answer_vocab)}

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.entries)

    def __getitem__(self, index):
        entry = self.entries[index]
        rng = random.Random(f"{self.seed}:{self.epoch}:{index}") if self.augment else None
        targets = torch.zeros(self.num_answers)
        for answer, score in (answer_scores(entry["answers"]) if entry["answers"] else {}).items():
            if answer in self.answer_index:
                targets[self.answer_index[answer]] = score
        image = self.picture_of[entry["image"]] if self.picture_of else entry["image"]
        return {"pixels": load_image(image, self.image_size, self.augment, rng),
                "question": entry["question"], "targets": targets,
                "question_id": entry["question_id"], "index": index}


def collate_vqa(items, tokenizer, max_len):
    input_ids, attention_mask = tokenizer.encode([item["question"] for item in items], max_len)
    return {"pixels": torch.stack([item["pixels"] for item in items]),          # [B, 3, S, S]
            "input_ids": input_ids, "attention_mask": attention_mask,
            "targets": torch.stack([item["targets"] for item in items]),        # [B, num_answers]
            "question_ids": [item["question_id"] for item in items],
            "indices": torch.tensor([item["index"] for item in items])}


if __name__ == "__main__":  # data.py is read, not run: its two commands live in demo_data.py and check.py
    script = {"demo": "demo_data.py", "check": "check.py"}.get(sys.argv[1] if sys.argv[1:] else "")
    if script:
        os.execv(sys.executable, [sys.executable, os.path.join(os.path.dirname(__file__) or ".", script), *sys.argv[2:]])
    print("data.py has no commands of its own: 'python demo_data.py --out DIR' (or 'data.py demo') writes the demo set, "
          "'python check.py --vqa F --images DIR' (or 'data.py check') checks a data set.")
