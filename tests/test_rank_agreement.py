"""scripts/rank_agreement.py: counting the (good, bad) pairs a metric orders right, and its runs file."""
from __future__ import annotations

import importlib.util

import pytest

from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("facegen_rank_agreement", ROOT / "scripts" / "rank_agreement.py")
ra = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ra)


def test_pairs_are_counted_in_each_metrics_direction():
    judged = {"a": "good", "b": "good", "c": "bad", "d": "bad"}
    # lower is better: a beats both bad runs, b beats only d
    assert ra.pair_agreement({"a": 1.0, "b": 5.0, "c": 3.0, "d": 10.0}, judged, "lower") == (3, 4)
    # higher is better: the same numbers read the other way round
    assert ra.pair_agreement({"a": 1.0, "b": 5.0, "c": 3.0, "d": 10.0}, judged, "higher") == (1, 4)
    # near 1 compares the size of the log: 0.9 and 1.2 are nearer than 0.5 (|log| 0.69) and 2.5
    assert ra.pair_agreement({"a": 0.9, "b": 1.2, "c": 0.5, "d": 2.5}, judged, "near 1") == (4, 4)
    assert ra.pair_agreement({"a": 0.9, "b": 0.4, "c": 0.5, "d": 3.0}, judged, "near 1") == (3, 4)
    # a tie is not an order
    assert ra.pair_agreement({"a": 2.0, "b": 2.0, "c": 2.0, "d": 3.0}, judged, "lower") == (2, 4)


def test_runs_file_errors_name_the_line_and_what_to_do(tmp_path):
    ckpt = tmp_path / "last.pt"
    ckpt.write_bytes(b"x")
    f = tmp_path / "runs.csv"
    f.write_text(f"name,checkpoint,judged\nvae,{ckpt},good\ngan,last.pt,Bad\n")
    rows = ra.read_runs(f)        # a path relative to the file, any case of good/bad
    assert [(r["name"], r["judged"]) for r in rows] == [("vae", "good"), ("gan", "bad")]
    assert rows[1]["checkpoint"] == str(ckpt)
    head = "name,checkpoint,judged\n"
    for body, message in [
        (f"{head}vae,{ckpt}\n", r"line 2: judged=''; write good or bad"),         # a short line: no judgement
        (f"{head}vae,{ckpt},fine\n", r"line 2: judged='fine'; write good or bad"),
        (f"{head}vae,{ckpt},good\ngan,,bad\n", "line 3: no checkpoint; give its path"),
        (f"{head}vae,{ckpt},good\ngan,missing.pt,bad\n", "line 3: checkpoint missing.pt not found"),
        (f"{head}vae,{ckpt},good\n", "at least one good and one bad"),
        (f"name,path\nvae,{ckpt}\n", "missing column.*checkpoint, judged"),
    ]:
        f.write_text(body)
        with pytest.raises(SystemExit, match=message):
            ra.read_runs(f)
