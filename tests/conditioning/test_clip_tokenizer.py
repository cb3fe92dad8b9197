"""The CLIPTokenizer built from open_clip's BPE file gives CLIP's token ids, through save/from_pretrained."""

import gzip
import html

import pytest
import regex

from ldm_train.conditioning.clip_bpe import bytes_to_unicode, default_bpe_path

PROMPTS = [
    "a photo of a cat",
    "An astronaut riding a horse on Mars, 4k, trending on artstation!",
    "it's the dog's toy -- don't   touch",
    "café crème brûlée",
    "",
]
# Known ids of openai/clip-vit-large-patch14's tokenizer.
KNOWN = {"a photo of a cat": [49406, 320, 1125, 539, 320, 2368, 49407]}
SOT, EOT = 49406, 49407


class ReferenceBPE:
    """openai/CLIP's simple_tokenizer.SimpleTokenizer algorithm, read straight from the gzip merges file."""

    def __init__(self):
        merges = gzip.open(default_bpe_path()).read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = [tuple(m.split()) for m in merges]
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab = vocab + [v + "</w>" for v in vocab] + ["".join(m) for m in merges]
        vocab += ["<|startoftext|>", "<|endoftext|>"]
        self.encoder = {v: i for i, v in enumerate(vocab)}
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.pat = regex.compile(
            r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+""",
            regex.IGNORECASE,
        )

    def bpe(self, token: str) -> list[str]:
        word = (*token[:-1], token[-1] + "</w>")
        while len(word) > 1:
            pairs = {(a, b) for a, b in zip(word, word[1:])}
            first, second = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if (first, second) not in self.ranks:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and word[i] == first and word[i + 1] == second:
                    merged.append(first + second)
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = tuple(merged)
        return list(word)

    def encode(self, text: str) -> list[int]:
        # simple_tokenizer's cleaning without ftfy (the prompts here are already valid unicode).
        text = " ".join(html.unescape(html.unescape(text)).strip().split()).lower()
        ids = []
        for token in regex.findall(self.pat, text):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[t] for t in self.bpe(token))
        return [SOT, *ids, EOT]


@pytest.fixture(scope="module")
def reference():
    return ReferenceBPE()


def test_token_ids_match_clip_reference(clip_encoder, reference):
    ids = clip_encoder.tokenize(PROMPTS)["input_ids"]
    assert ids.shape == (len(PROMPTS), 77)
    for prompt, row in zip(PROMPTS, ids.tolist()):
        expected = reference.encode(prompt)
        assert row[: len(expected)] == expected, prompt
        assert all(t == EOT for t in row[len(expected) :]), "SD pads with <|endoftext|>"
    for prompt, expected in KNOWN.items():
        assert reference.encode(prompt) == expected


def test_long_prompts_are_truncated_to_77_tokens_ending_in_eot(clip_encoder):
    ids = clip_encoder.tokenize(["cat " * 200])["input_ids"]
    assert ids.shape == (1, 77)
    assert ids[0, 0].item() == SOT and ids[0, -1].item() == EOT
