"""The synthetic demo sets: a world's pictures, Korean captions and questions, in the AIHub layouts.

Off the reading path: it exists so that `--demo` runs everywhere with no download. Read it when you want to
know what the demo's tables are measured on, or to make a demo set of another size. There are two worlds,
made by separate code so that a result is not an artefact of one generator: coloured shapes in the quarters
of a picture (shapes_world.py) and coloured bars with dots (bars_world.py). For either it writes:
  MSCOCO_train_val_Korean.json   AIHub Korean MSCOCO captions (file_path under images/, caption_ko x 5)
  vqa_train.json, vqa_dev.json   AIHub 생활 및 거주환경 VQA labels, on other pictures
  vqa_dev_objects.json           {dev question id: [left, top, right, bottom]}: in pixels, where the one object a
                                 question asks about is drawn (the pointing game, finetune.py --dev-objects)
  images/{train2014,val2014}/COCO_*.jpg, images/<world>/<world>_*.jpg
  tokenizer.json                 a KLUE-style WordPiece vocabulary learned from the world's own text

    python demo_data.py --out demo_data     # about 1 s on CPU; the same seed writes the same bytes

Choices:
- The tokenizer's WordPiece vocabulary is learned in a few lines of Python (the algorithm of tokenizers'
  WordPieceTrainer, ties broken alphabetically): the library's trainer breaks ties by hash-map order and
  gives a different vocabulary from run to run.
"""

import argparse
import json
import os
import random
import time
from collections import Counter
from pathlib import Path

from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

import bars_world
import shapes_world
from checkpoints import write_json
from tokenizer_files import SPECIAL_TOKENS, bert_normalizer

# The worlds make_demo can write: (scene(rng), draw(scene, image_size, rng), captions(scene, rng) -> (Korean,
# English), questions(scene, rng, count) -> [(question, answer, answer type, box of the one object it asks about
# or None)], version of its data). draw records each object's box in the scene it draws.
WORLDS = {
    "shapes": (shapes_world.demo_scene, shapes_world.draw_scene, shapes_world.demo_captions,
               shapes_world.demo_questions, shapes_world.DEMO_VERSION),
    "bars": (bars_world.bars_scene, bars_world.draw_bars, bars_world.bars_captions, bars_world.bars_questions,
             bars_world.BARS_VERSION),
}


def make_demo(out_dir, seed=0, caption_images=2000, vqa_train_images=900, vqa_dev_images=125,
              questions_per_image=4, image_size=96, vocab_size=300, world="shapes"):
    """Write the synthetic Korean data set of a world (WORLDS); return {"captions", "vqa_train",
    "vqa_dev", "images", "tokenizer", "dev_objects"} paths. Same world, seed and sizes -> same bytes; an existing
    complete demo made with the same settings (demo_done.json) is reused as it is.

    out_dir/MSCOCO_train_val_Korean.json   AIHub MSCOCO captions, file_path under images/
    out_dir/vqa_train.json, vqa_dev.json   AIHub 생활 및 거주환경 VQA labels (different images)
    out_dir/vqa_dev_objects.json           the boxes of the dev questions about one object
    out_dir/images/{train2014,val2014}/COCO_*.jpg and images/<world>/<world>_*.jpg
    out_dir/tokenizer.json                 WordPiece trained on the demo's text
    """
    out = Path(out_dir)
    scene_of, draw, captions_of, questions_of, version = WORLDS[world]
    settings = {"seed": seed, "caption_images": caption_images, "vqa_train_images": vqa_train_images,
                "vqa_dev_images": vqa_dev_images, "questions_per_image": questions_per_image,
                "image_size": image_size, "vocab_size": vocab_size, "version": version}
    if world != "shapes":  # the shapes world's settings stay as they were, so its demo_data/ is reused
        settings["world"] = world
    paths = {"captions": str(out / "MSCOCO_train_val_Korean.json"), "vqa_train": str(out / "vqa_train.json"),
             "vqa_dev": str(out / "vqa_dev.json"), "images": str(out / "images"),
             "tokenizer": str(out / "tokenizer.json"), "dev_objects": str(out / "vqa_dev_objects.json")}
    marker = out / "demo_done.json"
    if marker.is_file():
        complete = all(os.path.exists(path) for path in paths.values())
        if complete and json.loads(marker.read_text(encoding="utf-8")) == settings:
            return paths
        marker.unlink()
        for folder in ("train2014", "val2014", *WORLDS):  # a demo's own images, made for other settings
            for old_image in sorted((out / "images" / folder).glob("*.jpg")):
                old_image.unlink()
    texts = []
    caption_rng = random.Random(f"{seed}:captions")
    caption_records = []
    for image_id in range(1, caption_images + 1):
        split = "val2014" if image_id > 0.95 * caption_images else "train2014"
        file_path = f"{split}/COCO_{split}_{image_id:012d}.jpg"
        scene = scene_of(caption_rng)
        (out / "images" / split).mkdir(parents=True, exist_ok=True)
        draw(scene, image_size, caption_rng).save(out / "images" / file_path, quality=95)
        korean, english = captions_of(scene, caption_rng)
        caption_records.append({"file_path": file_path, "id": image_id, "captions": english,
                                "caption_ko": korean})
        texts += korean
    write_json(paths["captions"], caption_records)
    vqa_rng = random.Random(f"{seed}:vqa")
    objects = {}  # dev question id -> the box of the one object it asks about
    (out / "images" / world).mkdir(parents=True, exist_ok=True)
    first_image = 1
    for name, image_count in (("vqa_train", vqa_train_images), ("vqa_dev", vqa_dev_images)):
        images, questions = [], []
        for image_id in range(first_image, first_image + image_count):
            scene = scene_of(vqa_rng)
            file_name = f"{world}_{image_id:06d}.jpg"
            draw(scene, image_size, vqa_rng).save(out / "images" / world / file_name, quality=95)
            images.append({"image_id": image_id, "image": file_name, "category": world,
                           "width": image_size, "height": image_size})
            for number, (question, answer, answer_type, box) in enumerate(
                    questions_of(scene, vqa_rng, questions_per_image)):
                questions.append({"image_id": image_id, "question_id": image_id * 100 + number,
                                  "question": question, "answer": answer, "answer_type": answer_type})
                texts += [question, answer]
                if box is not None and name == "vqa_dev":
                    objects[str(image_id * 100 + number)] = box
        write_json(paths[name], {"images": images, "question": questions})
        first_image += image_count
    write_json(paths["dev_objects"], objects)
    train_tokenizer(texts, paths["tokenizer"], vocab_size)
    write_json(marker, settings)
    return paths


# ----------------------------------------------------------------------------------------------
# The demo's tokenizer


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
    (tokenizer.json: special tokens at ids 0..4, BERT normaliser and pre-tokeniser, [CLS] $A [SEP]); returns the path."""
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
    return path


def world_suffix(world):
    """What a world adds to the demo's folder names: nothing for the shapes (demo_data/, out/pretrain_demo/),
    _<world> for another, so that worlds do not overwrite each other."""
    return "" if world == "shapes" else f"_{world}"


def demo_pretrained(world):
    """Where `python pretrain.py --demo --world WORLD` leaves its model."""
    return os.path.join("out", "pretrain_demo" + world_suffix(world), "model.safetensors")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic Korean demo data set and its tokenizer.")
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes", help="shapes (shapes_world.py) or bars "
                        "(bars_world.py) (default: shapes)")
    parser.add_argument("--out", help="folder to write the demo into (default: demo_data, or demo_data_<world>)")
    parser.add_argument("--seed", type=int, default=0, help="random seed; the same seed writes the same bytes")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    out = args.out or "demo_data" + world_suffix(args.world)
    for name, path in make_demo(out, args.seed, world=args.world).items():
        print(f"{name}: {path}")
    print(f"seconds: {time.perf_counter() - start:.1f}")


if __name__ == "__main__":
    main()
