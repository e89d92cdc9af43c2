"""Answer Korean questions about images with a fine-tuned Ko-METER (or ViLT) checkpoint.

--ckpt takes finetune.py's output folder (or its best/ folder) or a model.safetensors file; the answer
vocabulary (answers.json) and the tokenizer (tokenizer.json or vocab.txt) are read from beside it.
Probabilities are the VQA head's sigmoids: the head is trained with binary cross-entropy, one
independent yes/no per answer, so they need not add up to 1.

    python predict.py --ckpt out/finetune_demo/pretrained --image demo_data/images/shapes/shapes_000901.jpg \
        --question "사진에 마름모가 몇 개 있나요?"      # after python finetune.py --demo; ~10 ms after loading
    python predict.py --ckpt out/finetune_demo/pretrained --questions questions.jsonl --images demo_data/images \
        --out answers.jsonl
    python predict.py --ckpt out/finetune_demo/pretrained --image demo_data/images/shapes/shapes_000907.jpg \
        --question "파란색 원은 어디에 있나요?" --explain map.png     # what the answer drew on (report.py)
    python predict.py --ckpt out/finetune_demo/pretrained --questions demo_data/vqa_dev.json \
        --images demo_data/images --report report.html             # one HTML page: answers, maps, accuracy by type

The JSONL input holds one {"image": path relative to --images, "question": str} per line (a
"question_id" is copied through); each output line adds "prediction" and "top" ([[answer,
probability], ...]), or "error" for a question that could not be answered (missing or unreadable
image, empty question), which is also reported on stderr.

--explain writes the picture with two maps over its patches drawn on it: how much each patch went into the
answer (relevancy.py, through every layer) and where the question's [CLS] token looks (last fusion layer, or
--layer N). --report reads --questions in any VQA layout formats.py knows and writes a self-contained page of
the answers with the relevancy maps, judged against the reference answers when the file has them. Both are
drawn by report.py.
"""

import argparse
import os
import sys
import time

from safetensors import safe_open

import checkpoints
import data
import failures
import formats
import image_files
import report
from finetune import reference_answer
from load_weights import load_meter

DEFAULT_MAX_LEN = 40


class Answerer:
    """A loaded checkpoint: model, tokenizer, answer vocabulary; answers batches of (image, question)."""

    def __init__(self, checkpoint, device="cpu", dtype="fp32"):
        model_path = checkpoints.resolve_checkpoint(checkpoint)
        self.checkpoint = checkpoint
        self.dtype = dtype  # "bf16": the model runs under bf16 autocast, the probabilities stay fp32
        folder = os.path.dirname(os.path.abspath(model_path))
        answers_path = os.path.join(folder, "answers.json")
        if not os.path.isfile(answers_path):
            raise FileNotFoundError(f"{answers_path}: answer vocabulary not found beside the checkpoint")
        self.answers = checkpoints.read_json(answers_path)
        self.tokenizer = data.Tokenizer.load(folder)
        self.model = load_meter(model_path, verbose=False).to(device).eval()  # refuses a damaged file in one line
        with safe_open(model_path, "pt") as file:
            self.max_len = int(file.metadata().get("max_len", DEFAULT_MAX_LEN))
        if self.model.vqa_head is None or self.model.cfg.num_answers != len(self.answers):
            raise ValueError(f"{model_path}: the VQA head has {self.model.cfg.num_answers} answers but "
                             f"{answers_path} lists {len(self.answers)}")

    def answer(self, image_paths, questions, top=5):
        """[[(answer, probability), ...] per question]; raises ValueError/FileNotFoundError on bad input."""
        self.check(image_paths, questions)
        top_answers, _ = report.answer_batch(self.model, self.tokenizer, self.answers, self.max_len, image_paths,
                                             questions, top, dtype=self.dtype)
        return top_answers

    def explain(self, image_path, question, layer, top=5):
        """(top answers, maps [2, side, side]: each patch's relevancy to the top answer, and where the [CLS] token
        looks in the layer with index `layer`, report.layer_index)."""
        self.check([image_path], [question])
        top_answers, maps = report.answer_batch(self.model, self.tokenizer, self.answers, self.max_len, [image_path],
                                                [question], top, layer, self.dtype)
        return top_answers[0], maps[0]

    @staticmethod
    def check(image_paths, questions):
        """Raise ValueError/FileNotFoundError, in one line, for an empty question or a missing or unreadable image."""
        for image_path, question in zip(image_paths, questions):
            if not question.strip():
                raise ValueError(f"{image_path}: the question is empty")
            if not os.path.isfile(image_path):
                raise FileNotFoundError(f"{image_path}: image not found")
            problem = image_files.image_problem(image_path)
            if problem:
                raise ValueError(f"{image_path}: {problem}")


def answer_file(answerer, questions_path, images_root, out_path, batch_size, top):
    """Answer every line of a JSONL file in batches; a bad line gets an "error" and a stderr line."""
    if not os.path.isfile(questions_path):
        raise FileNotFoundError(f"{questions_path}: questions file not found")
    records = formats.read_json_or_jsonl(questions_path)
    rows, errors = [], 0
    for start in range(0, len(records), batch_size):
        batch = records[start:start + batch_size]
        image_paths = [os.path.join(images_root, str(record.get("image", ""))) for record in batch]
        questions = [str(record.get("question") or "") for record in batch]
        try:
            results = answerer.answer(image_paths, questions, top)
        except (ValueError, FileNotFoundError):
            results = []  # answer one by one to tell the bad lines from the good
            for image_path, question in zip(image_paths, questions):
                try:
                    results.append(answerer.answer([image_path], [question], top)[0])
                except (ValueError, FileNotFoundError) as error:
                    results.append(error)
        for number, (record, result) in enumerate(zip(batch, results), start + 1):
            if isinstance(result, Exception):
                errors += 1
                print(f"error: {questions_path} line {number}: {result}", file=sys.stderr)
                rows.append({**record, "error": str(result)})
            else:
                rows.append({**record, "prediction": result[0][0],
                             "top": [[answer, round(probability, 4)] for answer, probability in result]})
    checkpoints.write_jsonl(out_path, rows)
    return len(rows), errors


def report_file(answerer, questions_path, images_root, report_path, layer, batch_size, top):
    """The page of report.py for a VQA file (any layout formats.read_vqa knows); unusable questions are left out,
    each with a stderr line. Returns (rows on the page, questions left out)."""
    entries, usable = formats.read_vqa(questions_path, images_root), []
    for number, entry in enumerate(entries, 1):
        try:
            answerer.check([entry["image"]], [entry["question"]])
            usable.append(entry)
        except (ValueError, FileNotFoundError) as error:
            print(f"error: {questions_path} question {number}: {error}", file=sys.stderr)
    rows = report.write_report(report_path, answerer.model, answerer.tokenizer, answerer.answers, answerer.max_len,
                               usable, reference_answer, f"{answerer.checkpoint}: {os.path.basename(questions_path)}",
                               layer, batch_size, top)
    return rows, len(entries) - len(usable)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description="Answer questions about images with a fine-tuned Ko-METER.")
    parser.add_argument("--ckpt", required=True, help="finetune.py output folder, or a model.safetensors beside "
                        "answers.json and the tokenizer")
    parser.add_argument("--image", help="one image file")
    parser.add_argument("--question", help="the question about --image")
    parser.add_argument("--questions", help="JSONL of {image, question[, question_id]} to answer in batches")
    parser.add_argument("--images", default=".", help="root of the JSONL's image paths (default: .)")
    parser.add_argument("--out", help="JSONL to write the answers of --questions to")
    parser.add_argument("--top", type=int, default=5, help="answers shown per question (default: 5)")
    parser.add_argument("--batch", type=int, default=32, help="questions per forward pass with --questions (default: 32)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    parser.add_argument("--dtype", choices=["bf16", "fp32"], help="bf16 autocast or plain fp32 (default: bf16 on "
                        "CUDA, fp32 on CPU)")
    parser.add_argument("--explain", help="with --image: PNG to write the picture to, with two maps drawn over it: "
                        "each patch's relevancy to the answer, and the [CLS] token's text-to-image attention")
    parser.add_argument("--report", help="with --questions: self-contained HTML page of the answers, relevancy maps "
                        "and accuracy per answer type")
    parser.add_argument("--layer", type=int, help="fusion layer (ViLT: block) whose [CLS] attention --explain "
                        "shows, 1 = the first (default: the last); the relevancy map runs through all of them")
    parser.add_argument("--font", help="TrueType/OpenType font with Hangul for --explain (default: the first of "
                        "report.HANGUL_FONTS found)")
    args = parser.parse_args(argv)
    if args.questions:
        if not (args.out or args.report):
            parser.error("--questions needs --out or --report")
        if args.explain:
            parser.error("--explain goes with --image and --question; use --report for --questions")
    elif args.image is None or args.question is None:
        parser.error("give --image and --question, or --questions and --out or --report")
    elif args.report:
        parser.error("--report goes with --questions; use --explain for one --image")
    if args.layer is not None and not (args.explain or args.report):
        parser.error("--layer goes with --explain or --report")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        answerer = Answerer(args.ckpt, args.device, args.dtype or ("bf16" if args.device.startswith("cuda") else "fp32"))
        if args.questions:
            if args.out:
                count, errors = answer_file(answerer, args.questions, args.images, args.out, args.batch, args.top)
                print(f"{count} questions answered into {args.out}" + (f", {errors} with errors" if errors else ""))
            if args.report:
                rows, left_out = report_file(answerer, args.questions, args.images, args.report, args.layer, args.batch,
                                             args.top)
                print(f"{len(rows)} questions on {args.report}" + (f", {left_out} left out" if left_out else ""))
            return
        start = time.perf_counter()
        if args.explain:
            layer = report.layer_index(answerer.model, args.layer)
            top_answers, maps = answerer.explain(args.image, args.question, layer, args.top)
        else:
            top_answers = answerer.answer([args.image], [args.question], args.top)[0]
        milliseconds = 1000 * (time.perf_counter() - start)
        for answer, probability in top_answers:
            print(f"{probability:.3f}  {answer}")
        print(f"({milliseconds:.0f} ms)")
        if args.explain:
            picture = report.explain_picture(args.image, args.question, top_answers, maps,
                                             report.describe_layer(answerer.model, layer), args.font)
            picture.save(args.explain)
            print(f"the picture with its two maps: {args.explain}")
    except Exception as error:  # bad input, a damaged checkpoint, or anything else: one line (failures.py)
        sys.exit(f"error: {failures.describe(error)}")


if __name__ == "__main__":
    main()
