"""Writes the built-in model's example embedding: resources/workflows/builtin/embeddings/
red-star.safetensors, the built-in text encoder's own token vectors for "red star" (2 vectors),
in diffusers' learned_embeds layout ({"<red-star>": [2, width]}).

    python -m tools.builtin.embedding

Not a trained textual inversion: an embedding made of the vectors the words already have, so
`embedding:red-star` in a prompt must give exactly what the words "red star" give
(tests/test_embeddings.py checks it), which shows the embedding path end to end with no
download.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

MODEL = ROOT / "resources" / "models" / "loom-shapes"
OUT = ROOT / "resources" / "workflows" / "builtin" / "embeddings" / "red-star.safetensors"
WORDS = "red star"


def main() -> None:
    from safetensors.torch import save_file
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(MODEL / "tokenizer"), local_files_only=True)
    encoder = CLIPTextModel.from_pretrained(str(MODEL / "text_encoder"), local_files_only=True,
                                            use_safetensors=True)
    ids = tokenizer(WORDS, add_special_tokens=False).input_ids
    vectors = encoder.get_input_embeddings().weight[ids].detach().clone().contiguous()
    OUT.parent.mkdir(parents=True, exist_ok=True)
    save_file({"<red-star>": vectors}, str(OUT),
              metadata={"words": WORDS, "made_by": "tools/builtin/embedding.py"})
    print(f"{OUT.relative_to(ROOT)}: {len(ids)} vectors of width {vectors.shape[1]} "
          f"({vectors.dtype})")


if __name__ == "__main__":
    main()
