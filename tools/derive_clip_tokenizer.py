"""Derive Hugging Face CLIP tokenizer files (vocab.json, merges.txt) from CLIP's BPE merges list.

The merges list `bpe_simple_vocab_16e6.txt.gz` ships with OpenAI's CLIP and open_clip. CLIP's
vocabulary is fully determined by it: the 256 byte symbols, the same with the end-of-word mark
`</w>`, one symbol per merge (the first 48,894 merges), and the two special tokens.

Usage: python tools/derive_clip_tokenizer.py BPE_GZ OUT_DIR
"""

from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

N_MERGES = 49152 - 256 - 2


def byte_symbols() -> list[str]:
    """GPT-2/CLIP's reversible byte -> printable unicode mapping, in byte order of the
    vocabulary."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return [chr(c) for c in codes]


def derive(bpe_gz: Path, out_dir: Path) -> None:
    lines = gzip.decompress(bpe_gz.read_bytes()).decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {tok: i for i, tok in enumerate(vocab_list)}
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    merges_text = "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n"
    (out_dir / "merges.txt").write_text(merges_text, encoding="utf-8")


if __name__ == "__main__":
    derive(Path(sys.argv[1]), Path(sys.argv[2]))
