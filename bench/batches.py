"""Time the encoding of the MARC English training reviews for training (sft and classify).

Prints how long ``encode_sft`` and ``encode_classify`` take on the 12,465 reviews with
SmolLM2's tokenizer (best of --repeat), and the padding share of length-grouped batches.
Timing lives here, not in the tests: wall-clock limits fail on a busy machine.

    .venv/bin/python bench/batches.py [--marc ../shared/data/marc] [--repeat 3]
"""

import argparse
import csv
import time
from pathlib import Path

from trimtab.data.prepared import encode_classify, encode_sft, label_names
from trimtab.models.registry import load_tokenizer
from trimtab.training.batches import LengthGroupedSampler

REPO = Path(__file__).resolve().parent.parent


def best_of(repeat: int, run) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
    return best, out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--marc", type=Path, default=REPO.parent / "shared" / "data" / "marc")
    parser.add_argument("--model", default="smollm2-135m")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with open(args.marc / "en" / "train.csv", newline="", encoding="utf-8") as f:
        records = [
            {"prompt": row["review_body"] + "\n\n###\n\n", "completion": " " + row["stars"]}
            for row in csv.DictReader(f)
        ]
    tokenizer = load_tokenizer(args.model)
    sft_s, encoded = best_of(args.repeat, lambda: encode_sft(records, tokenizer, 256))
    labels = label_names(records)
    cls_s, _ = best_of(args.repeat, lambda: encode_classify(records, tokenizer, 256, labels))
    lengths = [len(e.input_ids) for e in encoded]  # type: ignore[union-attr]
    batches = LengthGroupedSampler(lengths, batch_size=16, seed=0).batches(0)
    padded = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    print(f"{len(records):,} reviews, tokenizer {args.model}")
    print(f"encode_sft      {sft_s:.2f} s ({len(records) / sft_s:,.0f} examples/s)")
    print(f"encode_classify {cls_s:.2f} s ({len(records) / cls_s:,.0f} examples/s)")
    print(f"padding share of length-grouped batches of 16: {1 - sum(lengths) / padded:.1%}")


if __name__ == "__main__":
    main()
