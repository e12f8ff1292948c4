#!/usr/bin/env python3
"""Baseline throughput of plain sentence-transformers on a Parquet corpus.

Requirements: ``pip install sentence-transformers pyarrow``.

Usage:
    python3 scripts/st-baseline.py --model /work/models/all-MiniLM-L6-v2 \\
        --input corpus.parquet --column text --threads 2 --batch-size 64

Runs on CPU with torch.set_num_threads(N), warms up on the first 64 rows,
then times ``model.encode(texts, batch_size=..., normalize_embeddings=True)``
over all rows (sentence-transformers sorts inputs by length internally).
Prints one JSON line:

    {"st_rows_per_s": ..., "rows": ..., "threads": ..., "seconds": ...,
     "peak_rss_bytes": ...}

peak_rss_bytes is resource.getrusage(RUSAGE_SELF).ru_maxrss * 1024 (Linux
reports ru_maxrss in KiB); it covers the whole process, including loading
the Parquet column and the model.
"""

import argparse
import json
import resource
import time


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="sentence-transformers model dir")
    ap.add_argument("--input", required=True, help="Parquet file")
    ap.add_argument("--column", default="text", help="text column (default: text)")
    ap.add_argument("--threads", type=int, required=True, help="torch intra-op threads")
    ap.add_argument("--batch-size", type=int, default=64)
    args = ap.parse_args()

    import pyarrow.parquet as pq
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(args.threads)

    table = pq.read_table(args.input, columns=[args.column])
    texts = ["" if t is None else t for t in table.column(args.column).to_pylist()]
    del table

    model = SentenceTransformer(args.model, device="cpu")

    model.encode(
        texts[:64],
        batch_size=args.batch_size,
        normalize_embeddings=True,
        show_progress_bar=False,
    )

    t0 = time.perf_counter()
    emb = model.encode(
        texts,
        batch_size=args.batch_size,
        normalize_embeddings=True,
        show_progress_bar=False,
    )
    seconds = time.perf_counter() - t0
    assert len(emb) == len(texts)

    print(json.dumps({
        "st_rows_per_s": len(texts) / seconds if seconds > 0 else None,
        "rows": len(texts),
        "threads": args.threads,
        "seconds": seconds,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
    }))


if __name__ == "__main__":
    main()
