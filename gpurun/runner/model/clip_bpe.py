"""CLIP tokenizers without the hub: the real CLIP BPE vocabulary (vendored) and a tiny byte-level one for tests.

Every Stable Diffusion text encoder (CLIP ViT-L, OpenCLIP ViT-H and ViT-bigG) uses the same 49,408-token BPE
vocabulary. It ships as `configs/bpe_simple_vocab_16e6.txt.gz`, copied once from the MIT-licensed PyPI wheel
`open-clip-torch` 3.3.0 (`open_clip/bpe_simple_vocab_16e6.txt.gz`; licence text in `configs/LICENSE-open_clip`).
From it we build the `vocab.json` / `merges.txt` pair transformers expects, exactly as open_clip's
`SimpleTokenizer` does: 256 byte symbols, the same with `</w>`, the 48,894 merges, then the two special tokens.
"""

from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

BPE_FILE = Path(__file__).parent / "configs" / "bpe_simple_vocab_16e6.txt.gz"
BOS, EOS = "<|startoftext|>", "<|endoftext|>"
#: open_clip keeps the first 49152 - 256 - 2 merge lines (the file has more)
_MERGE_COUNT = 49152 - 256 - 2


@functools.cache
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's reversible byte → printable-character table."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for byte in range(256):
        if byte not in printable:
            printable.append(byte)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, (chr(c) for c in chars), strict=True))


def _byte_symbols() -> list[str]:
    symbols = list(bytes_to_unicode().values())
    return symbols + [s + "</w>" for s in symbols]


@functools.cache
def real_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """The real CLIP vocabulary (49,408 ids) and merges, from the vendored BPE file."""
    lines = gzip.decompress(BPE_FILE.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _MERGE_COUNT + 1]]
    tokens = _byte_symbols() + ["".join(pair) for pair in merges] + [BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, merges  # type: ignore[return-value]


@functools.cache
def tiny_vocab() -> tuple[dict[str, int], list[tuple[str, str]]]:
    """A 514-token byte-level vocabulary (no merges): every text tokenizes to its characters. For tiny models."""
    tokens = [*_byte_symbols(), BOS, EOS]
    return {token: i for i, token in enumerate(tokens)}, []


def write_vocab_files(folder: Path, *, real: bool = True) -> None:
    """Write vocab.json and merges.txt (the classic CLIPTokenizer layout) into folder."""
    vocab, merges = real_vocab() if real else tiny_vocab()
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    body = "\n".join(f"{a} {b}" for a, b in merges)
    (folder / "merges.txt").write_text("#version: 0.2\n" + body + ("\n" if body else ""), encoding="utf-8")


def make_tokenizer(*, real: bool, pad_token: str = EOS, max_length: int = 77):  # -> transformers.CLIPTokenizer
    """A CLIPTokenizer built in-process. SD 1.x pads with the end token; SD 2.x and SDXL's second encoder with '!'."""
    from transformers import CLIPTokenizer

    vocab, merges = real_vocab() if real else tiny_vocab()
    return CLIPTokenizer(
        vocab=dict(vocab),
        merges=list(merges),
        unk_token=EOS,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=pad_token,
        model_max_length=max_length,
    )
