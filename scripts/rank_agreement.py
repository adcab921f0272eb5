"""Does a metric rank runs the way you do? Checks every sample metric against your own judgement.

You look at the sample grids of some checkpoints and mark each one good (say: faces) or bad (no
faces, mush, noise). For every metric of `facegen.evaluate` that has a direction, this counts the
(good, bad) pairs it orders right: a metric you can trust to pick the better run gets all of them.

    python scripts/rank_agreement.py runs.csv --real ../shared/data/fer2013/validation \\
        --train ../shared/data/fer2013/train [--feature-net FILE] [--num-samples 1000]

runs.csv: columns `name,checkpoint,judged` with judged = good or bad (a header line, one run per
line). Samples are drawn with seed 0 at temperature 1, against `--num-samples` faces of --real (a
seeded subset). Without --feature-net the default net of the --train faces is used (trained and
cached on first use, as `facegen.evaluate` does). Prints one JSON object: per metric, the pairs
ordered right; per run, every metric.
"""
from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

JUDGEMENTS = ("good", "bad")


def read_runs(path: Path) -> list[dict[str, str]]:
    """The runs file: name, checkpoint, judged (good|bad); errors name the file and the line."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise SystemExit(f"{path}: no runs (expected a header `name,checkpoint,judged` and one run per line)")
    missing = {"name", "checkpoint", "judged"} - set(rows[0])
    if missing:
        raise SystemExit(f"{path}: missing column(s) {', '.join(sorted(missing))}; "
                         "the header must be `name,checkpoint,judged`")
    for i, row in enumerate(rows, start=2):
        row["judged"] = (row["judged"] or "").strip().lower()   # a short line leaves it None
        if row["judged"] not in JUDGEMENTS:
            raise SystemExit(f"{path}, line {i}: judged={row['judged']!r}; write good or bad")
        if not (row["checkpoint"] or "").strip():
            raise SystemExit(f"{path}, line {i}: no checkpoint; give its path in the second column")
        checkpoint = Path(row["checkpoint"].strip())
        if not checkpoint.is_absolute():
            checkpoint = (path.parent / checkpoint) if (path.parent / checkpoint).exists() else checkpoint
        if not checkpoint.is_file():
            raise SystemExit(f"{path}, line {i}: checkpoint {row['checkpoint']} not found")
        row["checkpoint"] = str(checkpoint)
    if {r["judged"] for r in rows} != set(JUDGEMENTS):
        raise SystemExit(f"{path}: need at least one good and one bad run to compare")
    return rows


def score(value: float, direction: str) -> float:
    """A number where lower is better, from a metric's value and its direction."""
    if direction == "lower":
        return value
    if direction == "higher":
        return -value
    if direction == "near 1":
        return abs(math.log(value)) if value > 0 else math.inf
    raise ValueError(f"no direction {direction!r}")


def pair_agreement(values: dict[str, float], judged: dict[str, str], direction: str) -> tuple[int, int]:
    """(pairs ordered right, all pairs): each good run against each bad one; a tie counts as wrong."""
    good = [n for n in values if judged[n] == "good"]
    bad = [n for n in values if judged[n] == "bad"]
    right = sum(score(values[g], direction) < score(values[b], direction) for g in good for b in bad)
    return right, len(good) * len(bad)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", type=Path, help="CSV: name,checkpoint,judged (good|bad)")
    parser.add_argument("--real", required=True, help="folder or CSV of the real faces to compare with")
    parser.add_argument("--train", help="the faces the default feature net is trained on (needed without --feature-net)")
    parser.add_argument("--feature-net", help="a feature net file (facegen.train_features)")
    parser.add_argument("--num-samples", type=int, default=1000)
    parser.add_argument("--cache-dir", default=str(ROOT / "data" / "cache"))
    args = parser.parse_args()
    if not args.feature_net and not args.train:
        parser.error("give --train (the default net's training faces) or --feature-net FILE")

    import torch

    from facegen.checkpoint import load_model
    from facegen.evaluate import _direction
    from facegen.explore import limit_faces, sample
    from facegen.metrics import compute_metrics, default_feature_net

    def read_faces(path: str, flag: str):
        from facegen.data.base import DataError
        from facegen.data.csv_reader import read_faces_csv
        from facegen.data.folder import read_image_folder
        p = Path(path)
        try:
            return read_faces_csv(p, cache_dir=args.cache_dir) if p.suffix == ".csv" else \
                read_image_folder(p, cache_dir=args.cache_dir)
        except DataError as e:
            parser.error(f"{flag} {path}: {e}")

    runs = read_runs(args.runs)
    real = limit_faces(read_faces(args.real, "--real"), args.num_samples, 0).images
    net = default_feature_net(None if args.feature_net else read_faces(args.train, "--train"), cache_dir=args.cache_dir,
                              path=args.feature_net)
    cache: dict = {}
    per_run: dict[str, dict] = {}
    for run in runs:
        model = load_model(run["checkpoint"])
        fake, _ = sample(model, args.num_samples, 1.0, 0)
        with torch.no_grad():
            values = compute_metrics(fake, real, net, real_cache=cache)
        per_run[run["name"]] = {"judged": run["judged"], **values}
        print(f"{run['name']}: {run['judged']}, measured", file=sys.stderr, flush=True)
    judged = {r["name"]: r["judged"] for r in runs}
    metrics = {}
    for key in per_run[runs[0]["name"]]:
        direction = _direction(key)
        if not direction:
            continue
        vals = {n: float(v[key]) for n, v in per_run.items()}
        right, total = pair_agreement(vals, judged, direction)
        metrics[key] = {"pairs_right": right, "pairs": total, "share": round(right / total, 3)}
    print(json.dumps({"num_samples": args.num_samples, "feature_net_hash": per_run[runs[0]["name"]]["feature_net_hash"],
                      "metrics": metrics,
                      "runs": {n: {k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                               for n, r in per_run.items()}}, indent=1))


if __name__ == "__main__":
    main()
