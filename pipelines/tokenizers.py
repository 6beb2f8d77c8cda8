"""Tokenizers built offline: CLIP from the BPE vocabulary open-clip-torch ships, and a small T5-style one.

Nothing here downloads. The CLIP tokenizer is a ``transformers.CLIPTokenizer`` whose vocabulary and
merges are rebuilt from ``open_clip.tokenizer.default_bpe()`` exactly the way open_clip's own
``SimpleTokenizer`` builds them, so a pipeline saved with it loads with plain
``DiffusionPipeline.from_pretrained`` and gives the same token ids as ``open_clip.get_tokenizer``.

open_clip cleans text with ``ftfy.fix_text`` and ``html.unescape`` before splitting. A saved
Hugging Face tokenizer cannot run Python, so the normaliser reproduces the parts of that cleaning
that change ids for ordinary prompts: curly quotes, Latin ligatures, full-width ASCII and HTML
entities. What it cannot reproduce is ftfy's repair of mis-decoded text ("mojibake" such as
``cafÃ©``); such prompts may tokenize differently, which is documented in docs/models.md.

Padding follows Stable Diffusion 1.x (pad with ``<|endoftext|>``); open_clip pads with id 0. The ids
of the text itself, from ``<|startoftext|>`` to ``<|endoftext|>``, are identical.

The T5-style tokenizer is a Unigram model trained with the ``tokenizers`` library on a small bundled
corpus (``t5_corpus.txt``). It exists so SD3 and Flux tiny pipelines have a real, working
``T5TokenizerFast``; it is not the T5 vocabulary and is meant for tiny models only.
"""

from __future__ import annotations

import functools
import gzip
import html.entities
import json
import logging
from pathlib import Path

from tokenizers import Regex, normalizers
from transformers import CLIPTokenizer, T5TokenizerFast

logger = logging.getLogger(__name__)

CLIP_MAX_LENGTH = 77
T5_CORPUS = Path(__file__).with_name("t5_corpus.txt")
T5_VOCAB_SIZE = 600

# ftfy.fix_text's "uncurl_quotes" and "fix_latin_ligatures" steps.
_QUOTES = {"\u201c": '"', "\u201d": '"', "\u201e": '"', "\u201f": '"', "\u2033": '"',
           "\u2018": "'", "\u2019": "'", "\u201a": "'", "\u201b": "'", "\u2032": "'"}
_LIGATURES = {"\ufb00": "ff", "\ufb01": "fi", "\ufb02": "fl", "\ufb03": "ffi", "\ufb04": "ffl",
              "\ufb05": "ſt", "\ufb06": "st", "\u0132": "IJ", "\u0133": "ij", "\u0149": "ʼn",
              "\u01c4": "DŽ", "\u01c5": "Dž", "\u01c6": "dž", "\u01c7": "LJ", "\u01c8": "Lj",
              "\u01c9": "lj", "\u01ca": "NJ", "\u01cb": "Nj", "\u01cc": "nj"}


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte -> printable character table (same as open_clip's)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


@functools.lru_cache(maxsize=1)
def clip_vocabulary() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """(vocab, merges) rebuilt from open-clip-torch's bundled BPE file, as open_clip does."""
    from open_clip.tokenizer import default_bpe

    with gzip.open(default_bpe()) as handle:
        lines = handle.read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = list(_bytes_to_unicode().values())
    tokens = symbols + [symbol + "</w>" for symbol in symbols]
    tokens += ["".join(merge) for merge in merges]
    tokens += ["<|startoftext|>", "<|endoftext|>"]
    return {token: index for index, token in enumerate(tokens)}, [(a, b) for a, b in merges]


def _html_entity_rules() -> list[normalizers.Normalizer]:
    # Named entities that end in ';' (what html.unescape resolves reliably), plus numeric quotes.
    rules: list[normalizers.Normalizer] = []
    for name, text in sorted(html.entities.html5.items()):
        if name.endswith(";") and name[:-1].isalnum():
            rules.append(normalizers.Replace(f"&{name}", text))
    rules.append(normalizers.Replace(Regex(r"&#0*39;"), "'"))
    rules.append(normalizers.Replace(Regex(r"&#0*34;"), '"'))
    return rules


def _clip_normalizer() -> normalizers.Normalizer:
    """The cleaning open_clip applies (ftfy + html.unescape + whitespace + lower), as far as it is static."""
    rules: list[normalizers.Normalizer] = [normalizers.NFC()]
    rules += _html_entity_rules()
    for source, target in {**_QUOTES, **_LIGATURES}.items():
        rules.append(normalizers.Replace(source, target))
    # ftfy's fix_character_width: full-width ASCII (U+FF01..U+FF5E) and the ideographic space.
    for code in range(0xFF01, 0xFF5F):
        rules.append(normalizers.Replace(chr(code), chr(code - 0xFEE0)))
    rules.append(normalizers.Replace("\u3000", " "))
    rules += [normalizers.Replace(Regex(r"\s+"), " "), normalizers.Strip(), normalizers.Lowercase()]
    return normalizers.Sequence(rules)


def build_clip_tokenizer(max_length: int = CLIP_MAX_LENGTH) -> CLIPTokenizer:
    """The real CLIP BPE tokenizer, built from local files only."""
    vocab, merges = clip_vocabulary()
    tokenizer = CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=max_length)
    tokenizer.backend_tokenizer.normalizer = _clip_normalizer()
    return tokenizer


def save_clip_tokenizer(directory: Path, max_length: int = CLIP_MAX_LENGTH) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    build_clip_tokenizer(max_length).save_pretrained(str(directory))
    return directory


def build_t5_tokenizer(vocab_size: int = T5_VOCAB_SIZE) -> T5TokenizerFast:
    """A small Unigram tokenizer in T5's layout (<pad>=0, </s>=1, <unk>=2), trained on the bundled corpus."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    text = T5_CORPUS.read_text(encoding="utf-8").splitlines()
    model = Tokenizer(models.Unigram())
    model.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Replace(Regex(r"\s+"), " ")])
    model.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always", split=True)
    trainer = trainers.UnigramTrainer(
        vocab_size=vocab_size, special_tokens=["<pad>", "</s>", "<unk>"], unk_token="<unk>", shrinking_factor=0.75,
        # Every printable ASCII character stays in the vocabulary, so no ASCII text maps to <unk>.
        initial_alphabet=[chr(code) for code in range(33, 127)],
    )
    model.train_from_iterator(text, trainer=trainer)
    pieces = [(str(piece), float(score)) for piece, score in json.loads(model.to_str())["model"]["vocab"]]
    tokenizer = T5TokenizerFast(vocab=pieces, extra_ids=0, model_max_length=512)
    tokenizer.backend_tokenizer.normalizer = model.normalizer
    return tokenizer


def save_t5_tokenizer(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    build_t5_tokenizer().save_pretrained(str(directory))
    return directory


def clean_prompt(text: str) -> str:
    """open_clip's own text cleaning (ftfy, HTML entities, whitespace), without lowercasing.

    The engine applies it to every prompt, so a pipeline's CLIP tokenizer sees exactly what
    open_clip's tokenizer would, even for text the saved normaliser cannot repair (mojibake).
    """
    from open_clip.tokenizer import basic_clean, whitespace_clean

    return whitespace_clean(basic_clean(text))
