"""bench/train.py's output: the printed table and the summary rows bench/report.py collects.

Apart from the benchmark itself (data, the peers' and trimtab's training children) so that
each file reads as one thing; both work on the result rows bench/train.py builds.
"""


def show(rows: list[dict]) -> None:
    fmt = "{:<9} {:<27} {:>8} {:>7} {:>10} {:>9} {:>9} {:>8} {:>8} {:>9}"
    head = ("compare", "side", "train s", "ex/s", "last loss", "held-out", "peak MiB", "tokens")
    print(fmt.format(*head, "GFLOP/s", "% ceiling"))

    def num(v: float | None, f: str) -> str:
        return "-" if v is None else format(v, f)

    for r in rows:
        print(
            fmt.format(
                r["comparison"],
                r["label"],
                num(r["seconds"], ".1f"),
                num(r["examples_per_s"], ".2f"),
                num(r["train_loss"], ".4f"),
                num(r.get("heldout_loss"), ".4f"),
                num(r["peak_rss_mib"], ".0f"),
                r["tokens"],
                num(r.get("gflops"), ".1f"),
                num(r.get("share_of_ceiling") and 100 * r["share_of_ceiling"], ".1f"),
            )
        )


def memory_note(mine: float, other: float) -> str:
    return f"peak memory {mine:.0f} MiB vs {other:.0f} ({other / mine:.2f}x)"


def summary_rows(rows: list[dict], precision: str) -> list[dict]:
    """One row per (comparison, peer or variant) in the schema bench/report.py collects."""
    out = []
    for comp in dict.fromkeys(r["comparison"] for r in rows):
        group = [r for r in rows if r["comparison"] == comp]
        mine = next(r for r in group if r["side"] == "trimtab")
        model, method = mine["model"], mine["method"]
        for other in (r for r in group if r is not mine):
            variant = other["side"].startswith("trimtab:")
            ceiling = mine.get("share_of_ceiling")
            out.append(
                {
                    "stage": "training",
                    "name": f"{comp} ({model} {method})",
                    "peer": other["label"],
                    "peer_figure": round(other["examples_per_s"], 2),
                    "trimtab_figure": round(mine["examples_per_s"], 2),
                    "unit": "examples/s",
                    "higher_is_better": True,
                    "ratio": other["seconds"] / mine["seconds"],
                    "ceiling": None
                    if ceiling is None
                    else f"{100 * ceiling:.0f}% of {mine['ceiling_gflops']:.0f} GFLOP/s "
                    f"({precision} matmul at the model's shapes, {mine['ceiling_tokens']} "
                    "tokens)",
                    "precision": precision,
                    "note": memory_note(mine["peak_rss_mib"], other["peak_rss_mib"])
                    + ("; a trimtab variant, not a peer" if variant else ""),
                }
            )
    return out
