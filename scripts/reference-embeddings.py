#!/usr/bin/env python3
"""Generate sentence-transformers reference embeddings for the Rust embedder test.

Embeds a fixed list of sentences with the Python sentence-transformers library
(CPU, ``normalize_embeddings=True``) and writes them as JSON, so the Rust
embedder can be checked against the reference implementation.

Requirements: ``pip install sentence-transformers`` (pulls in torch and
transformers). No network access is needed if the model directory is local.

Usage:
    python3 scripts/reference-embeddings.py MODEL_DIR OUTPUT_JSON

Example:
    python3 scripts/reference-embeddings.py /work/models/all-MiniLM-L6-v2 \\
        inference/tests/fixtures/all-minilm-l6-v2-reference.json

MODEL_DIR is a sentence-transformers model directory (config.json,
model.safetensors, tokenizer.json, sentence_bert_config.json, modules.json,
1_Pooling/config.json). The output has the form:

    {"model": "sentence-transformers/all-MiniLM-L6-v2",
     "generated_by": "sentence-transformers <v>, torch <v>",
     "max_seq_length": 256,
     "sentences": [...],
     "embeddings": [[384 floats], ...]}

The script also prints the cosine similarity of the first two sentences
("A man is eating food." / "A man is eating a piece of bread.").
"""

import json
import sys

MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"

# A paragraph repeated deterministically; 12 copies is far beyond 300
# wordpieces, so truncation at max_seq_length (256) matters.
_LONG_PARAGRAPH = (
    "The quick brown fox jumps over the lazy dog while the distributed "
    "scheduler assigns tasks to workers across the cluster, and every "
    "object is stored once in the shared object store before being read "
    "by downstream consumers."
)
LONG_TEXT = " ".join([_LONG_PARAGRAPH] * 12)

SENTENCES = [
    "A man is eating food.",
    "A man is eating a piece of bread.",
    "Café naïve résumé — déjà vu in Zürich.",
    "",
    "Hello",
    LONG_TEXT,
    "Order #4521 shipped on 2024-03-15 at 09:30: 3 items, $1,299.99 total (incl. 8.5% tax)!",
    "The committee met on Tuesday afternoon to review the proposed budget for "
    "next year, and after a long discussion they agreed to increase funding "
    "for the public library and the city parks.",
]


def main(argv):
    if len(argv) != 3:
        sys.stderr.write(__doc__)
        return 2
    model_dir, out_path = argv[1], argv[2]

    import sentence_transformers
    import torch
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device="cpu")
    emb = model.encode(
        SENTENCES,
        batch_size=len(SENTENCES),
        normalize_embeddings=True,
        convert_to_numpy=True,
    )

    tok = model.tokenizer
    long_pieces = len(tok(LONG_TEXT, add_special_tokens=False, verbose=False)["input_ids"])
    if long_pieces <= 300:
        raise SystemExit(f"long text only has {long_pieces} wordpieces; need > 300")

    cos = float(emb[0].astype("float64") @ emb[1].astype("float64"))

    out = {
        "model": MODEL_NAME,
        "generated_by": (
            f"sentence-transformers {sentence_transformers.__version__}, "
            f"torch {torch.__version__}"
        ),
        "max_seq_length": int(model.max_seq_length),
        "sentences": SENTENCES,
        "embeddings": [[float(x) for x in row] for row in emb],
    }
    with open(out_path, "w", encoding="utf-8") as f:
        json.dump(out, f, ensure_ascii=False, indent=1)
        f.write("\n")

    print(f"wrote {len(SENTENCES)} embeddings of dim {emb.shape[1]} to {out_path}")
    print(f"long text: {long_pieces} wordpieces (max_seq_length {model.max_seq_length})")
    print(f"cos({SENTENCES[0]!r}, {SENTENCES[1]!r}) = {cos:.6f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
