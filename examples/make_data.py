"""Write the small example data set examples/data/{training,validation}.jsonl (prompt/completion rows, the columns
the bundled example job golden/seed/input maps: DAT002).  The text is generated here (arithmetic, spelling, sorting
and counting tasks): no download, no third-party text.  Deterministic: the same files every run.

    python examples/make_data.py [--out examples/data] [--train 320] [--validation 64]
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

WORDS = ("river", "lamp", "garden", "window", "orange", "pencil", "market", "bridge", "cloud", "forest", "engine",
         "candle", "harbor", "ladder", "meadow", "silver", "tunnel", "violin", "winter", "yellow")


def row(rng: random.Random) -> dict[str, str]:
    kind = rng.randrange(5)
    if kind == 0:
        a, b = rng.randrange(10, 100), rng.randrange(10, 100)
        return {"prompt": f"What is {a} plus {b}?", "completion": f"{a} plus {b} is {a + b}."}
    if kind == 1:
        a, b = rng.randrange(2, 13), rng.randrange(2, 13)
        return {"prompt": f"Multiply {a} by {b}.", "completion": f"{a} times {b} is {a * b}."}
    if kind == 2:
        w = rng.choice(WORDS)
        return {"prompt": f"Spell the word '{w}' backwards.", "completion": f"'{w}' backwards is '{w[::-1]}'."}
    if kind == 3:
        xs = rng.sample(range(1, 50), 5)
        return {"prompt": f"Sort these numbers from smallest to largest: {', '.join(map(str, xs))}.",
                "completion": f"In order: {', '.join(map(str, sorted(xs)))}."}
    w = rng.choice(WORDS)
    ch = rng.choice(sorted(set(w)))
    n = w.count(ch)
    return {"prompt": f"How many times does the letter '{ch}' occur in '{w}'?",
            "completion": f"The letter '{ch}' occurs {n} time{'s' if n != 1 else ''} in '{w}'."}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "data")
    ap.add_argument("--train", type=int, default=320)
    ap.add_argument("--validation", type=int, default=64)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name, n, seed in (("training", args.train, 1234), ("validation", args.validation, 4321)):
        rng = random.Random(seed)
        path = args.out / f"{name}.jsonl"
        path.write_text("".join(json.dumps(row(rng)) + "\n" for _ in range(n)), encoding="utf-8")
        print(f"wrote {n} rows to {path}")


if __name__ == "__main__":
    main()
