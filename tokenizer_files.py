"""Tokenizer files: KLUE's tokenizer.json or vocab.txt, read into a `tokenizers` WordPiece tokenizer.

Off the reading path: data.Tokenizer wraps what `read_tokenizer` returns. Read it when your tokenizer file is
refused or splits Hangul strangely.

    python -c "import tokenizer_files; print(tokenizer_files.read_tokenizer('demo_data/tokenizer.json')[1])"

Choices where the documents are silent:
- The file's own padding and truncation are switched off (data.Tokenizer pads).
- A tokenizer.json whose normaliser strips accents (which takes Hangul apart into jamo) gets KLUE's cased,
  non-stripping BERT normaliser instead, with a note on stderr.
"""

import os
import sys
from pathlib import Path

# Batches of short captions gain nothing from the library's thread pool, and a pool started before
# DataLoader workers fork makes every worker print a warning.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer as BackendTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers  # noqa: E402

SPECIAL_TOKENS = ("[CLS]", "[PAD]", "[SEP]", "[UNK]", "[MASK]")  # ids 0..4 in KLUE's vocabulary


def bert_normalizer():
    """KLUE's normaliser: cased, and no accent stripping (stripping splits Hangul into jamo)."""
    return normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=False,
                                      lowercase=False)


def has_jamo(text):
    """True when text holds conjoining or compatibility jamo (a Hangul syllable taken apart)."""
    return any("\u1100" <= char <= "\u11ff" or "\u3130" <= char <= "\u318f" for char in text)


def read_tokenizer(path):
    """(a `tokenizers` WordPiece tokenizer, the file it came from) for tokenizer.json or vocab.txt, or a folder
    holding either (tokenizer.json wins). data.Tokenizer wraps it."""
    path = Path(path)
    if path.is_dir():
        found = [path / name for name in ("tokenizer.json", "vocab.txt") if (path / name).is_file()]
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
    else:
        backend = wordpiece_from_vocab(path)
    if backend.normalizer is not None and has_jamo(backend.normalizer.normalize_str("한국어")):
        print(f"note: {path}: its normaliser splits Hangul into jamo; using KLUE's (cased, no accent stripping) "
              "instead", file=sys.stderr)
        backend.normalizer = bert_normalizer()
    backend.no_padding()
    backend.no_truncation()
    if backend.decoder is None:
        backend.decoder = decoders.WordPiece(prefix="##")
    return backend, path


def wordpiece_from_vocab(path):
    """A BERT WordPiece tokenizer from a vocab.txt (one piece per line, line number = id)."""
    vocab = {}
    with open(path, encoding="utf-8") as file:
        for index, line in enumerate(file):
            vocab[line.rstrip("\r\n")] = index
    if "[UNK]" not in vocab:
        raise ValueError(f"{path}: the vocabulary lacks the special token [UNK]")
    backend = BackendTokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##",
                                                max_input_chars_per_word=100))
    backend.normalizer = bert_normalizer()
    backend.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    backend.decoder = decoders.WordPiece(prefix="##")
    backend.add_special_tokens([token for token in SPECIAL_TOKENS if token in vocab])  # ids unchanged
    return backend
