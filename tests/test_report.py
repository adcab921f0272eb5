"""scripts/report.py: on a real tiny run and multirun, and on hand-made dirs for ranking and failed jobs."""
from __future__ import annotations

import csv
import importlib.util
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import ROOT, tiny_overrides

REPORT = ROOT / "scripts" / "report.py"


def load_report():
    spec = importlib.util.spec_from_file_location("facegen_report", REPORT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load_report()


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory) -> Path:
    """A real two-job multirun of two epochs each (so there are sample grids over epochs)."""
    sweep = tmp_path_factory.mktemp("report") / "sweep"
    overrides = tiny_overrides("trainer.epochs=2", "data.num_images=48", "trainer.num_threads=1")
    result = subprocess.run([sys.executable, "-m", "facegen.train", "-m", *overrides, "loss.kl_weight=0.5,1",
                             f"hydra.sweep.dir={sweep}"], cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return sweep


def run_report(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(REPORT), *map(str, args)], capture_output=True, text=True, timeout=300)


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as im:
        im.verify()
    with Image.open(path) as im:
        return im.size


def final(job: Path, key: str) -> float:
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r][-1]


def test_report_of_one_run(tiny_sweep, tmp_path):
    result = run_report(tiny_sweep / "0", "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    written = [Path(line) for line in result.stdout.split()]
    assert [p.name for p in written] == ["losses.png", "metrics.png", "training.png", "samples.png",
                                         "reconstructions.png"]
    assert all(p.parent == tmp_path / "out" for p in written)
    width, height = png_size(tmp_path / "out" / "samples.png")
    assert width > 1.6 * height  # the grids of epochs 1 and 2, side by side
    assert all(png_size(p)[0] > 300 for p in written)


def test_report_of_a_multirun_ranks_every_job(tiny_sweep):
    result = run_report(tiny_sweep)
    assert result.returncode == 0, result.stderr
    out = tiny_sweep / "report"
    assert {Path(line).name for line in result.stdout.split()} == {
        "losses.png", "metrics.png", "val_loss_vs_params.png", "samples_final.png", "jobs.csv", "jobs.md"}
    for name in ("losses.png", "metrics.png", "val_loss_vs_params.png", "samples_final.png"):
        png_size(out / name)
    with open(out / "jobs.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2  # one row per job
    assert {r["job"]: float(r["loss.kl_weight"]) for r in rows} == {"0": 0.5, "1": 1.0}
    losses = [float(r["val/loss"]) for r in rows]
    assert losses == sorted(losses)  # best first
    for r in rows:
        assert float(r["val/loss"]) == pytest.approx(final(tiny_sweep / r["job"], "val/loss"))
        assert r["status"] == "ok" and int(r["steps"]) == final(tiny_sweep / r["job"], "step")
    table = (out / "jobs.md").read_text().splitlines()
    assert sum(line.startswith("|") for line in table) == 2 + 2  # header, rule, two jobs


def make_job(sweep: Path, num: int, overrides: list[str], records: list[dict] | None, epochs: int = 0) -> Path:
    """A job dir as Hydra and the trainer leave it; records=None: the job died before logging."""
    job = sweep / str(num)
    (job / ".hydra").mkdir(parents=True)
    (job / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (job / ".hydra" / "config.yaml").write_text(yaml.safe_dump({"optimized_metric": None}))
    if records is not None:
        (job / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    for epoch in range(1, epochs + 1):
        (job / "samples").mkdir(exist_ok=True)
        Image.new("RGB", (20, 20), (10 * epoch, 0, 0)).save(job / "samples" / f"epoch_{epoch:03d}.png")
    return job


def records(val_loss: float, mse: float) -> list[dict]:
    return [{"step": 1, "epoch": 0.5, "loss/kl": 2.0, "gate/discriminator": 1.0},
            {"step": 2, "epoch": 1, "val/loss": val_loss + 1, "val/recon_mse": mse + 1},
            {"step": 4, "epoch": 2, "val/loss": val_loss, "val/recon_mse": mse}]


def test_jobs_are_ranked_by_the_metric_and_a_dead_job_is_listed_last(tmp_path):
    sweep = tmp_path / "sweep"
    make_job(sweep, 0, ["trainer.epochs=2", "model=dcgan"], records(3.0, 0.1), epochs=2)
    make_job(sweep, 1, ["trainer.epochs=2", "model=resnet"], records(1.0, 0.3), epochs=2)
    make_job(sweep, 2, ["trainer.epochs=2", "model=seed_vae"], None)
    make_job(sweep, 10, ["trainer.epochs=2", "model=resnet"], records(2.0, 0.2))

    table, swept, metric = report.job_table(report.job_dirs(sweep), None, maximize=False)
    assert swept == ["model"] and metric == "val/loss"  # trainer.epochs is the same in every job
    assert list(table["job"]) == ["1", "10", "0", "2"]
    assert list(table["status"]) == ["ok", "ok", "ok", "no metrics"]
    assert list(table["val/recon_mse"][:3]) == [0.3, 0.2, 0.1]

    by_mse, _, _ = report.job_table(report.job_dirs(sweep), "val/recon_mse", maximize=True)
    assert list(by_mse["job"]) == ["1", "10", "0", "2"]
    by_mse, _, _ = report.job_table(report.job_dirs(sweep), "val/recon_mse", maximize=False)
    assert list(by_mse["job"]) == ["0", "10", "1", "2"]

    assert report.main([str(sweep), "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "val_loss_vs_params.png").is_file()  # a categorical axis: model names
    last_row = (tmp_path / "out" / "jobs.md").read_text().splitlines()[-1]
    assert re.match(r"\|\s*2\s*\|", last_row) and "no metrics" in last_row


def test_many_epochs_are_subsampled_keeping_the_first_and_last(tmp_path):
    job = make_job(tmp_path / "sweep", 0, [], records(1.0, 0.1), epochs=20)
    labels = [label for label, _ in report.epoch_images(job, "samples")]
    assert len(labels) == report.MAX_GRIDS and labels[0] == "epoch 1" and labels[-1] == "epoch 20"


def test_nothing_to_report_is_a_clear_error(tmp_path, capsys):
    assert report.main([str(tmp_path / "missing")]) == 2
    assert "no such directory" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert report.main([str(tmp_path / "empty")]) == 2
    assert "no job dirs" in capsys.readouterr().err
