"""Run reports without W&B: PNGs of the loss terms, the metrics and the sample grids of a run dir, and
for a multirun (or Optuna) dir the same curves for every job, the final metric against each swept
parameter and a table of the jobs sorted by that metric.

    python scripts/report.py outputs/2026-11-25/10-00-00             # one run
    python scripts/report.py outputs/multirun/2026-11-25/10-00-00    # a sweep
    python scripts/report.py DIR --metric val/recon_mse --out /tmp/report

Everything is read from the files the trainer and Hydra write: metrics.jsonl, samples/epoch_*.png,
reconstructions/epoch_*.png (and the step_*.png of a run stopped mid-epoch), .hydra/overrides.yaml and .hydra/config.yaml. Writes into DIR/report/
unless --out is given, and prints the path of every file it wrote.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.image as mpimg  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullFormatter  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

META = ("time", "step", "epoch")
TRAINING = ("gate/", "lr/", "perf/")  # per-step bookkeeping of the trainer, not losses or metrics
MAX_GRIDS = 8  # sample grids shown side by side; more epochs are subsampled evenly
MAX_LEGEND = 12  # jobs named in full in a legend; beyond that, by number only (jobs.md has the rest)


class ReportError(Exception):
    """The directory holds nothing to report on."""


# -- reading a run --------------------------------------------------------------------------------------
def read_metrics(run_dir: Path) -> pd.DataFrame:
    """metrics.jsonl as a frame: training rows (loss/*, gate/*, ...) and per-epoch rows (val/*) together."""
    path = run_dir / "metrics.jsonl"
    if not path.is_file() or path.stat().st_size == 0:
        return pd.DataFrame()
    return pd.read_json(path, lines=True, precise_float=True)


def loss_keys(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith("loss/")]


def training_keys(df: pd.DataFrame) -> list[str]:
    return [c for c in df.columns if c.startswith(TRAINING)]


def metric_keys(df: pd.DataFrame) -> list[str]:
    """Everything logged per epoch: val/* now, and any later metric namespace (fid/..., kid/...)."""
    return [c for c in df.columns if c not in META and not c.startswith(("loss/", *TRAINING))]


def read_overrides(job_dir: Path) -> dict[str, object]:
    """The job's command-line overrides (.hydra/overrides.yaml), parsed by Hydra into typed values."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    path = job_dir / ".hydra" / "overrides.yaml"
    lines = (yaml.safe_load(path.read_text()) or []) if path.is_file() else []
    parsed = OverridesParser.create().parse_overrides(lines)
    out: dict[str, object] = {}
    for o in parsed:
        value = o.value()
        out[o.key_or_group] = value if isinstance(value, (int, float, str, bool)) or value is None else str(value)
    return out


def optimized_metric(job_dir: Path) -> str:
    """The metric the job returned to its sweeper (optimized_metric in its config; null = val/loss)."""
    path = job_dir / ".hydra" / "config.yaml"
    if path.is_file():
        cfg = yaml.safe_load(path.read_text()) or {}
        if cfg.get("optimized_metric"):
            return str(cfg["optimized_metric"])
    return "val/loss"


def job_dirs(sweep_dir: Path) -> list[Path]:
    """The job dirs of a multirun: sub-folders with a .hydra/ folder, in job-number order."""
    jobs = [p for p in sweep_dir.iterdir() if p.is_dir() and (p / ".hydra").is_dir()]
    return sorted(jobs, key=lambda p: (0, int(p.name)) if p.name.isdigit() else (1, p.name))


def epoch_images(run_dir: Path, kind: str) -> list[tuple[str, Path]]:
    """(label, path) of <run dir>/<kind>/epoch_*.png, then the step_*.png a run stopped by its budget
    mid-epoch writes last; at most MAX_GRIDS, evenly spaced, last one kept."""
    paths = sorted((run_dir / kind).glob("epoch_*.png")) + sorted((run_dir / kind).glob("step_*.png"))
    if len(paths) > MAX_GRIDS:
        idx = sorted({round(i * (len(paths) - 1) / (MAX_GRIDS - 1)) for i in range(MAX_GRIDS)})
        paths = [paths[i] for i in idx]
    return [(f"{p.stem.split('_')[0]} {int(p.stem.split('_')[-1])}", p) for p in paths]


# -- drawing ---------------------------------------------------------------------------------------------
def plot_curves(runs: dict[str, pd.DataFrame], keys: list[str], x: str, path: Path, title: str) -> Path | None:
    """One subplot per key, one line per run; None when no run logged any of the keys."""
    if not keys:
        return None
    ncols = min(3, len(keys))
    nrows = math.ceil(len(keys) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        for label, df in runs.items():
            if key not in df.columns:
                continue
            series = df[[x, key]].dropna()
            if series.empty:
                continue
            ax.plot(series[x], series[key], marker="o" if len(series) < 12 else None, markersize=3,
                    linewidth=1.2, label=label)
        ax.set_title(key, fontsize=10)
        ax.set_xlabel(x)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys):]:
        ax.set_visible(False)
    fig.suptitle(title)
    fig.tight_layout()
    if len(runs) > 1:
        handles, labels = axes.flat[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8, frameon=False)
    return _save(fig, path)


def plot_images(images: list[tuple[str, Path]], path: Path, title: str) -> Path | None:
    """PNG grids side by side, each titled (an epoch, or a job of a sweep)."""
    if not images:
        return None
    fig, axes = plt.subplots(1, len(images), figsize=(3.0 * len(images), 3.4), squeeze=False,
                             layout="constrained")
    for ax, (label, p) in zip(axes.flat, images):
        ax.imshow(mpimg.imread(p), cmap="gray", interpolation="nearest")
        ax.set_title(label, fontsize=9)
        ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def plot_metric_vs_params(table: pd.DataFrame, params: list[str], metric: str, path: Path) -> Path | None:
    """The final metric against each swept parameter: one subplot each, log x for wide positive ranges."""
    if not params or table[metric].notna().sum() == 0:
        return None
    ncols = min(3, len(params))
    nrows = math.ceil(len(params) / ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, param in zip(axes.flat, params):
        rows = table[["job", param, metric]].dropna()
        numeric = pd.to_numeric(rows[param], errors="coerce")
        if numeric.notna().all() and not rows.empty:
            ax.scatter(numeric, rows[metric], s=30)
            xs = numeric
            if (numeric > 0).all() and numeric.max() / numeric.min() > 20:
                ax.set_xscale("log")
                ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
                ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
                ax.xaxis.set_minor_formatter(NullFormatter())
            else:
                ax.ticklabel_format(axis="x", style="sci", scilimits=(-3, 4))
        else:
            categories = sorted(rows[param].astype(str).unique())
            position = {c: i for i, c in enumerate(categories)}
            xs = [position[str(v)] for v in rows[param]]
            ax.scatter(xs, rows[metric], s=30)
            ax.set_xticks(range(len(categories)), categories, rotation=30, ha="right", fontsize=8)
        for x, y, job in zip(xs, rows[metric], rows["job"]):  # which job each point is (see jobs.md)
            ax.annotate(f"#{job}", (x, y), xytext=(4, 2), textcoords="offset points", fontsize=7)
        ax.set_xlabel(param)
        ax.set_ylabel(f"final {metric}")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(params):]:
        ax.set_visible(False)
    fig.suptitle(f"final {metric} per job against each swept parameter")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


# -- reports -------------------------------------------------------------------------------------------
def report_run(run_dir: Path, out: Path) -> list[Path]:
    """Curves and sample grids of one run dir."""
    df = read_metrics(run_dir)
    if df.empty:
        raise ReportError(f"{run_dir}: no metrics.jsonl (or an empty one): nothing was logged yet")
    runs = {run_dir.name: df}
    written = [
        plot_curves(runs, loss_keys(df), "step", out / "losses.png", f"loss terms: {run_dir}"),
        plot_curves(runs, metric_keys(df), "epoch", out / "metrics.png", f"metrics: {run_dir}"),
        plot_curves(runs, training_keys(df), "step", out / "training.png", f"gates, learning rates, speed: {run_dir}"),
        plot_images(epoch_images(run_dir, "samples"), out / "samples.png", "samples from a fixed z, by epoch"),
        plot_images(epoch_images(run_dir, "reconstructions"), out / "reconstructions.png",
                    "real | reconstruction pairs, by epoch"),
    ]
    return [p for p in written if p is not None]


def job_table(jobs: list[Path], metric: str | None, maximize: bool) -> tuple[pd.DataFrame, list[str], str]:
    """One row per job: its swept parameters, final metrics, steps and status, sorted best first."""
    overrides = {job: read_overrides(job) for job in jobs}
    metric = metric or optimized_metric(jobs[0])
    keys: list[str] = []
    for o in overrides.values():
        keys += [k for k in o if k not in keys]
    swept = [k for k in keys if len({repr(o.get(k)) for o in overrides.values()}) > 1] or (keys if len(jobs) == 1 else [])
    rows = []
    for job in jobs:
        df = read_metrics(job)
        finals = {k: df[k].dropna().iloc[-1] for k in metric_keys(df) if df[k].notna().any()} if not df.empty else {}
        value = finals.get(metric, float("nan"))
        status = "ok" if isinstance(value, (int, float)) and math.isfinite(value) else (
            "no metrics" if df.empty else f"no {metric}")
        rows.append({"job": job.name, **{k: overrides[job].get(k) for k in swept}, metric: value,
                     **{k: v for k, v in finals.items() if k != metric},
                     "steps": int(df["step"].max()) if "step" in df.columns and df["step"].notna().any() else 0,
                     "status": status})
    table = pd.DataFrame(rows)
    table[metric] = pd.to_numeric(table[metric], errors="coerce")
    table = table.sort_values(metric, ascending=not maximize, na_position="last", kind="stable")
    return table.reset_index(drop=True), swept, metric


def report_multirun(sweep_dir: Path, out: Path, metric: str | None = None, maximize: bool = False) -> list[Path]:
    """Every job's curves overlaid, the final metric against each swept parameter, and the jobs table."""
    jobs = job_dirs(sweep_dir)
    if not jobs:
        raise ReportError(f"{sweep_dir}: no job dirs (sub-folders with .hydra/) below it")
    table, swept, metric = job_table(jobs, metric, maximize)
    parts = {job: job_label(table[table["job"] == job.name].iloc[0], swept) for job in jobs}
    legend = {job: " ".join([f"#{job.name}", *parts[job]]) if len(jobs) <= MAX_LEGEND else f"#{job.name}"
              for job in jobs}
    runs = {legend[job]: df for job in jobs if not (df := read_metrics(job)).empty}
    frames = list(runs.values())
    losses = sorted({k for df in frames for k in loss_keys(df)})
    metrics = sorted({k for df in frames for k in metric_keys(df)})
    finals = [("\n".join([f"#{job.name}", *parts[job]]), imgs[-1][1])
              for job in jobs if (imgs := epoch_images(job, "samples"))]
    safe = metric.replace("/", "_")
    written = [
        plot_curves(runs, losses, "step", out / "losses.png", f"loss terms of every job: {sweep_dir}"),
        plot_curves(runs, metrics, "epoch", out / "metrics.png", f"metrics of every job: {sweep_dir}"),
        plot_metric_vs_params(table, swept, metric, out / f"{safe}_vs_params.png"),
        plot_images(finals, out / "samples_final.png", "last sample grid of every job"),
    ]
    out.mkdir(parents=True, exist_ok=True)
    csv_path, md_path = out / "jobs.csv", out / "jobs.md"
    table.to_csv(csv_path, index=False)
    order = "highest" if maximize else "lowest"
    md_path.write_text(f"# Jobs of {sweep_dir}\n\nSorted by final `{metric}`, {order} first; swept: "
                       f"{', '.join(f'`{k}`' for k in swept) or '(nothing)'}.\n\n"
                       + table.to_markdown(index=False, floatfmt=".6g") + "\n")
    return [p for p in written if p is not None] + [csv_path, md_path]


def job_label(row: pd.Series, swept: list[str]) -> list[str]:
    """`name=value` of each swept parameter, named by its last key part where that is unambiguous."""
    last = [k.rsplit(".", 1)[-1] for k in swept]
    names = [short if last.count(short) == 1 else key for key, short in zip(swept, last)]
    return [f"{name}={row[key]:.3g}" if isinstance(row[key], float) else f"{name}={row[key]}"
            for name, key in zip(names, swept)]


def is_run_dir(path: Path) -> bool:
    return (path / "metrics.jsonl").is_file()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dir", type=Path, help="a run dir (has metrics.jsonl) or a multirun/Optuna sweep dir")
    parser.add_argument("--out", type=Path, default=None, help="where to write (default: DIR/report)")
    parser.add_argument("--metric", default=None,
                        help="a multirun's ranking metric (default: the jobs' optimized_metric, else val/loss)")
    parser.add_argument("--maximize", action="store_true", help="higher --metric is better")
    args = parser.parse_args(argv)
    directory = args.dir
    out = args.out or directory / "report"
    try:
        if not directory.is_dir():
            raise ReportError(f"{directory}: no such directory")
        written = report_run(directory, out) if is_run_dir(directory) else report_multirun(
            directory, out, args.metric, args.maximize)
    except ReportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for path in written:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
