"""The synthetic demo sets: Korean captions and questions about generated pictures, in the AIHub layouts.

Off the reading path: it exists so that `--demo` runs everywhere with no download. Read it when you want to
know what the demo's tables are measured on, or to make a demo set of another size. There are two worlds,
made by separate code so that a result is not an artefact of one generator: coloured shapes in the quarters
of a picture (this file) and coloured bars with dots (bars_world.py). For either it writes:
  MSCOCO_train_val_Korean.json   AIHub Korean MSCOCO captions (file_path under images/, caption_ko x 5)
  vqa_train.json, vqa_dev.json   AIHub 생활 및 거주환경 VQA labels, on other pictures
  images/{train2014,val2014}/COCO_*.jpg, images/<world>/<world>_*.jpg
  tokenizer.json                 a KLUE-style WordPiece vocabulary learned from the world's own text
and, after `python finetune.py --demo [--world bars] [--seeds N]`, prints the paper's tables as mean ±
standard deviation over the seeds, beside what the question's words alone score.

    python demo.py --out demo_data     # about 1 s on CPU; the same seed writes the same bytes

Choices:
- Pictures hold 1 to 4 shapes, one per quarter; shapes and colours often repeat, so that counts vary.
- Every caption describes the whole picture, each in its own words: a caption that is also true of most
  other pictures ("there is no red shape") would make many ITM negatives secretly positive.
- Questions of the four answer types (숫자, 예/아니오, 그 외 about colours, shapes and positions, and
  unanswerable ones about what a picture cannot tell) are answered by the picture.
- The tokenizer's WordPiece vocabulary is learned in a few lines of Python (the algorithm of tokenizers'
  WordPieceTrainer, ties broken alphabetically): the library's trainer breaks ties by hash-map order and
  gives a different vocabulary from run to run.
- The "question only" row answers each dev question with the most frequent training answer of the same
  words: a model that does not beat it has learned the questions, not the pictures.
- --seeds N runs seeds --seed .. --seed + N - 1 of every fine-tuning from the same pretrained model; the
  spread is the sample standard deviation over those runs.
"""

import argparse
import json
import os
import random
import time
import unicodedata
from collections import Counter
from pathlib import Path

import torch.distributed as distributed
from PIL import Image, ImageDraw
from tokenizers import Tokenizer as BackendTokenizer
from tokenizers import decoders, models, pre_tokenizers, processors

import bars_world
import formats
from checkpoints import write_json
from data import Tokenizer
from formats import ANSWER_TYPES, SPECIAL_TOKENS, bert_normalizer

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


def make_demo(out_dir, seed=0, caption_images=2000, vqa_train_images=900, vqa_dev_images=125,
              questions_per_image=4, image_size=96, vocab_size=300, world="shapes"):
    """Write the synthetic Korean data set of a world (WORLDS); return {"captions", "vqa_train",
    "vqa_dev", "images", "tokenizer"} paths. Same world, seed and sizes -> same bytes; an existing
    complete demo made with the same settings (demo_done.json) is reused as it is.

    out_dir/MSCOCO_train_val_Korean.json   AIHub MSCOCO captions, file_path under images/
    out_dir/vqa_train.json, vqa_dev.json   AIHub 생활 및 거주환경 VQA labels (different images)
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
             "tokenizer": str(out / "tokenizer.json")}
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
            for number, (question, answer, answer_type) in enumerate(
                    questions_of(scene, vqa_rng, questions_per_image)):
                questions.append({"image_id": image_id, "question_id": image_id * 100 + number,
                                  "question": question, "answer": answer, "answer_type": answer_type})
                texts += [question, answer]
        write_json(paths[name], {"images": images, "question": questions})
        first_image += image_count
    train_tokenizer(texts, paths["tokenizer"], vocab_size)
    write_json(marker, settings)
    return paths


# The worlds make_demo can write: (scene(rng), draw(scene, image_size, rng), captions(scene, rng) -> (Korean,
# English), questions(scene, rng, count) -> [(question, answer, answer type)], version of its data).
WORLDS = {
    "shapes": (demo_scene, draw_scene, demo_captions, demo_questions, DEMO_VERSION),
    "bars": (bars_world.bars_scene, bars_world.draw_bars, bars_world.bars_captions, bars_world.bars_questions,
             bars_world.BARS_VERSION),
}


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
# --demo in the training scripts


def world_suffix(world):
    """What a world adds to the demo's folder names: nothing for the shapes (demo_data/, out/pretrain_demo/),
    _<world> for another, so that worlds do not overwrite each other."""
    return "" if world == "shapes" else f"_{world}"


def add_demo_flags(parser, demo_help, seeds=False):
    """--demo, --demo-dir and --world (and --seeds for finetune.py): the flags of the synthetic demo."""
    parser.add_argument("--demo", action="store_true", help=demo_help)
    parser.add_argument("--demo-dir", help="where the demo set lives (default: demo_data, or demo_data_<world>)")
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes", help="with --demo: the synthetic "
                        "world, shapes (demo.py) or bars (bars_world.py); each has its own data and output folders "
                        "(default: shapes)")
    if seeds:
        parser.add_argument("--seeds", type=at_least_one, default=1, help="run each fine-tuning this many times, "
                            "with seeds --seed, --seed + 1, ..., and print the mean ± standard deviation; the runs "
                            "after the first go to OUT_seed<s> (default: 1)")


def at_least_one(text):
    if int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text}: must be at least 1")
    return int(text)


def follow_world(args, demo_out):
    """--world names the demo's folders: --demo-dir and the demo's default --out (demo_out) get the world's
    suffix. Runs before the defaults are filled in, while an --out left unset is still None."""
    if args.demo_dir is None:
        args.demo_dir = "demo_data" + world_suffix(args.world)
    if args.demo and args.out is None:
        args.out = demo_out + world_suffix(args.world)


def use_demo_data(args, rank, world_size):
    """--demo: make the demo set of --world (process 0 makes it while the others wait) and fill in the data
    flags left unset: --captions, or --train and --dev; --images and --tokenizer."""
    if world_size > 1 and rank != 0:
        distributed.barrier()
    paths = make_demo(args.demo_dir, seed=0, world=args.world)
    if world_size > 1 and rank == 0:
        distributed.barrier()
    for flag, key in [("captions", "captions"), ("train", "vqa_train"), ("dev", "vqa_dev"), ("images", "images"),
                      ("tokenizer", "tokenizer")]:
        if hasattr(args, flag) and getattr(args, flag) is None:
            setattr(args, flag, paths[key])


def demo_pretrained(world):
    """Where `python pretrain.py --demo --world WORLD` leaves its model."""
    return os.path.join("out", "pretrain_demo" + world_suffix(world), "model.safetensors")


def run_finetune_demo(args, argv, parse_args, train):
    """`python finetune.py --demo`: three fine-tuning runs at equal steps, each --seeds times, then the paper's
    tables. Pretrains first when the world's out/pretrain_demo*/ has no checkpoint."""
    pretrained = demo_pretrained(args.world)
    if not os.path.exists(pretrained):
        import pretrain  # here, not at the top: pretrain.py imports this file
        print(f"{pretrained} is missing: running the pretraining demo first")
        pretrain.train(pretrain.parse_args(["--demo", "--demo-dir", args.demo_dir, "--world", args.world]))
    cells = [("with pretraining", os.path.join(args.out, "pretrained"), ["--pretrained", pretrained]),
             ("without pretraining", os.path.join(args.out, "scratch"), []),
             ("ViLT without pretraining", os.path.join(args.out, "vilt"), ["--arch", "vilt"])]
    results, run_args = run_cells(cells, args, argv, parse_args, train)
    print_demo_tables(results, question_only_results(run_args))


def run_seeds(args, argv, parse_args, train):
    """`--seeds N` on a single fine-tuning: N runs, then their mean and spread."""
    results, run_args = run_cells([("fine-tuned", args.out, [])], args, argv, parse_args, train)
    print_demo_tables(results, question_only_results(run_args))


def run_cells(cells, args, argv, parse_args, train):
    """Fine-tune every (label, out, extra flags) cell with seeds --seed .. --seed + --seeds - 1: the first
    seed's run in out, the others in out_seed<s>. Returns ({label: [results.json of each seed]}, the
    arguments of the last run)."""
    results = {}
    for seed in range(args.seed, args.seed + args.seeds):
        for label, out, extra in cells:
            out = out if seed == args.seed else f"{out}_seed{seed}"
            print(f"\n== fine-tuning {label}, seed {seed} ==")
            run_args = parse_args([*argv, "--out", out, "--seed", str(seed), *extra])  # the last one wins
            train(run_args)
            with open(os.path.join(run_args.out, "results.json"), encoding="utf-8") as file:
                results.setdefault(label, []).append(json.load(file))
    return results, run_args


def question_only_results(args):
    """What the words alone score: each dev question answered with the most frequent training answer of the
    same question (of all training questions when the question is new), overall and by type, in the shape of
    results.json; None without a --dev file. A model that looks at the picture must do better."""
    if not args.dev:
        return None
    train_entries, dev_entries = formats.read_vqa(args.train, args.images), formats.read_vqa(args.dev, args.images)
    by_question, overall = {}, Counter()
    for entry in train_entries:
        by_question.setdefault(entry["question"], Counter()).update(entry["answers"])
        overall.update(entry["answers"])
    correct = {answer_type: [] for answer_type in ANSWER_TYPES}
    for entry in dev_entries:
        guess = by_question.get(entry["question"], overall).most_common(1)[0][0]
        correct[entry["answer_type"]].append(guess == Counter(entry["answers"]).most_common(1)[0][0])
    every = [hit for hits in correct.values() for hit in hits]
    return {"overall": {"accuracy": sum(every) / max(len(every), 1), "n": len(every)},
            "by_type": {answer_type: {"accuracy": sum(hits) / max(len(hits), 1), "n": len(hits)}
                        for answer_type, hits in correct.items()}}


def right_aligned(text, columns):
    """Pad on the left to `columns` terminal columns; a Hangul syllable takes two."""
    width = sum(2 if unicodedata.east_asian_width(char) in "WF" else 1 for char in text)
    return " " * max(columns - width, 0) + text


def mean_and_spread(values):
    """(mean, sample standard deviation; 0 for one value)."""
    mean = sum(values) / len(values)
    if len(values) == 1:
        return mean, 0.0
    return mean, (sum((value - mean) ** 2 for value in values) / (len(values) - 1)) ** 0.5


def percent_text(values):
    """"45.40 ± 2.10" in percent (± one standard deviation over seeds), or "45.40" for one seed."""
    mean, spread = mean_and_spread([100 * value for value in values])
    return f"{mean:.2f} ± {spread:.2f}" if len(values) > 1 else f"{mean:.2f}"


def accuracy_of(result, column):
    """Accuracy of a results.json in a column of the tables: "overall" or an answer type."""
    return (result["overall"] if column == "overall" else result["by_type"][column])["accuracy"]


def print_demo_tables(results, question_only=None):
    """The paper's tables from {label: [results.json of each seed]}: accuracy after each evaluation step,
    by answer type (with the gain of pretraining seed by seed, and what the words alone score), and
    Ko-METER against ViLT, as mean ± standard deviation over the seeds."""
    seeds = len(next(iter(results.values())))
    over = f"mean ± sd over {seeds} seeds" if seeds > 1 else "one seed"
    labels = [label for label in results if label != "ViLT without pretraining"]
    steps = [row["step"] for row in results[labels[0]][0]["history"]]
    print(f"\ndev accuracy % after fine-tuning steps, {over} (the paper's first table)")
    print(f"{'':<24}" + "".join(f"{step:>16}" for step in steps))
    for label in labels:
        print(f"{label:<24}" + "".join(
            f"{percent_text([run['history'][index]['accuracy'] for run in results[label]]):>16}"
            for index in range(len(steps))))
    columns = ["overall", *ANSWER_TYPES]
    print(f"\naccuracy by answer type %, {over} (the paper's second table)")
    print(f"{'':<24}" + "".join(right_aligned(column, 16) for column in columns))
    rows = [(label, [[accuracy_of(run, column) for run in results[label]] for column in columns]) for label in labels]
    if {"with pretraining", "without pretraining"} <= set(results):
        pairs = list(zip(results["with pretraining"], results["without pretraining"]))
        rows.append(("gain, seed by seed", [[accuracy_of(with_run, column) - accuracy_of(without_run, column)
                                             for with_run, without_run in pairs] for column in columns]))
    if question_only:
        rows.append(("question only", [[accuracy_of(question_only, column)] for column in columns]))
    for label, values in rows:
        print(f"{label:<24}" + "".join(f"{percent_text(column_values):>16}" for column_values in values))
    if "ViLT without pretraining" in results:
        print(f"\nKo-METER vs ViLT, dev accuracy %, both without pretraining, {over} (the paper's last comparison)")
        for label, name in (("without pretraining", "Ko-METER"), ("ViLT without pretraining", "ViLT")):
            print(f"{name:<24}{percent_text([run['overall']['accuracy'] for run in results[label]]):>16}")


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write a synthetic Korean demo data set and its tokenizer.")
    parser.add_argument("--world", choices=sorted(WORLDS), default="shapes", help="shapes (this file) or bars "
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
