"""CLIP's BPE vocabulary as a transformers `CLIPTokenizer`, and a tiny random CLIP text model for tests.

CLIP's own tokenizer (openai/CLIP `simple_tokenizer.py`, copied into open_clip) ships only the merges file
`bpe_simple_vocab_16e6.txt.gz`; the token ids follow from it: 256 byte characters, the same with the
end-of-word marker `</w>`, one token per merge in rank order, then <|startoftext|> and <|endoftext|>.
Building the vocabulary the same way gives ids equal to CLIP's without downloading anything.
"""

import gzip
import importlib.util
from functools import lru_cache
from pathlib import Path

import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

BPE_FILENAME = "bpe_simple_vocab_16e6.txt.gz"
# simple_tokenizer.py keeps merges[1 : 49152 - 256 - 2 + 1]: line 0 is a header, and the vocabulary of
# 49408 = 2·256 byte tokens + 48894 merges + 2 specials is what the CLIP text models were trained with.
NUM_MERGES = 49152 - 256 - 2
START_TOKEN, END_TOKEN = "<|startoftext|>", "<|endoftext|>"
CLIP_CONTEXT_LENGTH = 77  # CLIP's text transformer has 77 positions


def bytes_to_unicode() -> dict[int, str]:
    """CLIP/GPT-2's reversible byte -> printable-unicode table (avoids whitespace/control characters)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    others = [b for b in range(256) if b not in printable]
    codes = printable + [256 + n for n in range(len(others))]
    return dict(zip(printable + others, map(chr, codes)))


def default_bpe_path() -> Path:
    """The BPE merges file inside the installed `open_clip_torch` (located without importing open_clip)."""
    spec = importlib.util.find_spec("open_clip")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"CLIP's {BPE_FILENAME} ships with open_clip_torch; install it with "
            "`pip install --no-deps open_clip_torch`, or pass bpe_path to a copy of the file."
        )
    path = Path(next(iter(spec.submodule_search_locations))) / BPE_FILENAME
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} is missing from the open_clip_torch install; reinstall open_clip_torch."
        )
    return path


@lru_cache(maxsize=2)
def clip_vocab_and_merges(bpe_path: Path) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """CLIP's token -> id table and its ranked merges, built from the gzip merges file."""
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : NUM_MERGES + 1]]
    byte_chars = list(bytes_to_unicode().values())
    tokens = (
        byte_chars
        + [c + "</w>" for c in byte_chars]
        + ["".join(m) for m in merges]
        + [START_TOKEN, END_TOKEN]
    )
    return {token: i for i, token in enumerate(tokens)}, merges


def build_clip_tokenizer(bpe_path: str | Path | None = None) -> CLIPTokenizer:
    """A `CLIPTokenizer` whose ids equal CLIP's (pads with <|endoftext|>, as the SD tokenizers do)."""
    vocab, merges = clip_vocab_and_merges(Path(bpe_path) if bpe_path is not None else default_bpe_path())
    return CLIPTokenizer(vocab=dict(vocab), merges=list(merges), model_max_length=CLIP_CONTEXT_LENGTH)


def write_tiny_clip(
    folder: str | Path,
    hidden_size: int = 32,
    num_layers: int = 2,
    num_heads: int = 2,
    seed: int = 0,
    bpe_path: str | Path | None = None,
) -> Path:
    """Save CLIP's real tokenizer and a random-init tiny `CLIPTextModel` in `save_pretrained` layout.

    Real CLIP weights are not reachable offline; tests load this folder through the same
    `from_pretrained` path users take for `openai/clip-vit-large-patch14`.
    """
    folder = Path(folder)
    tokenizer = build_clip_tokenizer(bpe_path)
    config = CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=4 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        max_position_embeddings=CLIP_CONTEXT_LENGTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
