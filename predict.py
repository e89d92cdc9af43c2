"""Answer Korean questions about images with a fine-tuned Ko-METER (or ViLT) checkpoint.

--ckpt takes finetune.py's output folder (or its best/ folder) or a model.safetensors file; the answer
vocabulary (answers.json) and the tokenizer (tokenizer.json or vocab.txt) are read from beside it.
Probabilities are the VQA head's sigmoids: the head is trained with binary cross-entropy, one
independent yes/no per answer, so they need not add up to 1.

    python predict.py --ckpt out/finetune_demo/pretrained --image demo_data/images/shapes/shapes_000901.jpg \
        --question "사진에 마름모가 몇 개 있나요?"      # after python finetune.py --demo; ~10 ms after loading
    python predict.py --ckpt out/finetune_demo/pretrained --questions questions.jsonl --images demo_data/images \
        --out answers.jsonl

The JSONL input holds one {"image": path relative to --images, "question": str} per line (a
"question_id" is copied through); each output line adds "prediction" and "top" ([[answer,
probability], ...]), or "error" for a question that could not be answered (missing or unreadable
image, empty question), which is also reported on stderr.
"""

import argparse
import os
import sys
import time

import torch
from safetensors import safe_open

import checkpoints
import data
import formats
from load_weights import load_meter

DEFAULT_MAX_LEN = 40


class Answerer:
    """A loaded checkpoint: model, tokenizer, answer vocabulary; answers batches of (image, question)."""

    def __init__(self, checkpoint, device="cpu"):
        model_path = checkpoints.resolve_checkpoint(checkpoint)
        folder = os.path.dirname(os.path.abspath(model_path))
        answers_path = os.path.join(folder, "answers.json")
        if not os.path.isfile(answers_path):
            raise FileNotFoundError(f"{answers_path}: answer vocabulary not found beside the checkpoint")
        self.answers = checkpoints.read_json(answers_path)
        self.tokenizer = data.Tokenizer.load(folder)
        with safe_open(model_path, "pt") as file:
            self.max_len = int(file.metadata().get("max_len", DEFAULT_MAX_LEN))
        self.model = load_meter(model_path, verbose=False).to(device).eval()
        if self.model.vqa_head is None or self.model.cfg.num_answers != len(self.answers):
            raise ValueError(f"{model_path}: the VQA head has {self.model.cfg.num_answers} answers but "
                             f"{answers_path} lists {len(self.answers)}")
        self.device = device

    @torch.no_grad()
    def answer(self, image_paths, questions, top=5):
        """[[(answer, probability), ...] per question]; raises ValueError/FileNotFoundError on bad input."""
        for image_path, question in zip(image_paths, questions):
            if not question.strip():
                raise ValueError(f"{image_path}: the question is empty")
            if not os.path.isfile(image_path):
                raise FileNotFoundError(f"{image_path}: image not found")
            problem = formats.image_problem(image_path)
            if problem:
                raise ValueError(f"{image_path}: {problem}")
        size = self.model.cfg.image_size
        pixels = torch.stack([data.load_image(path, size) for path in image_paths]).to(self.device)  # [B, 3, S, S]
        input_ids, attention_mask = self.tokenizer.encode(questions, self.max_len)  # [B, T] each
        cls_feats = self.model(pixels, input_ids.to(self.device), attention_mask.to(self.device))["cls_feats"]
        probabilities = torch.sigmoid(self.model.vqa_head(cls_feats).float())  # [B, num_answers]
        values, indices = probabilities.topk(min(top, len(self.answers)), dim=-1)  # [B, top]
        return [[(self.answers[index], value) for index, value in zip(row_indices.tolist(), row_values.tolist())]
                for row_indices, row_values in zip(indices, values)]


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
    args = parser.parse_args(argv)
    if args.questions:
        if not args.out:
            parser.error("--questions needs --out")
    elif args.image is None or args.question is None:
        parser.error("give --image and --question, or --questions and --out")
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        answerer = Answerer(args.ckpt, args.device)
        if args.questions:
            count, errors = answer_file(answerer, args.questions, args.images, args.out, args.batch, args.top)
            print(f"{count} questions answered into {args.out}" + (f", {errors} with errors" if errors else ""))
            return
        start = time.perf_counter()
        top_answers = answerer.answer([args.image], [args.question], args.top)[0]
        milliseconds = 1000 * (time.perf_counter() - start)
        for answer, probability in top_answers:
            print(f"{probability:.3f}  {answer}")
        print(f"({milliseconds:.0f} ms)")
    except (ValueError, FileNotFoundError) as error:
        sys.exit(f"error: {error}")


if __name__ == "__main__":
    main()
