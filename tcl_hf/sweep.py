"""Re-run the paper's table: recipes × seeds, one run after another through the trainer ``train.py`` uses, then
the mean ± std over seeds beside TCL's published test accuracy.

    python -m tcl_hf.sweep RECIPE... [--seeds 0,1,2] [--out DIR] [key=value ...]
    accelerate launch [its flags] -m tcl_hf.sweep RECIPE...      # every process takes part in every run

Run ``s`` of ``recipes/x.yaml`` lives in ``DIR/x/seed<s>``. The sweep can be stopped and started again at any
point: a run whose folder holds its ``summary.json`` and ``label_issues.csv`` is finished and skipped, one whose
folder holds a ``config.yaml`` or checkpoints otherwise is resumed (``train.resume=true``), any other starts
afresh. ``DIR/sweep.md`` and ``DIR/sweep.csv`` are written (main process) after every sweep, also one stopped by
an error in a run; they count only finished runs made with the sweep's own settings. A sweep refused before its
first run (a bad key, a finished run with other settings) leaves them as they were.
"""
from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

from .command import is_main_process, run_command
from .data.registry import paper_test_acc
from .errors import TCLError, one_line
from .verdict import VERDICT_OK, summary_verdict
from .rundir import CONFIG_FILE, LABEL_ISSUES_FILE, SUMMARY_FILE, atomic_write_text

METRICS = ("test_acc", "noise_auc", "label_acc")

SWEEP_MD, SWEEP_CSV = "sweep.md", "sweep.csv"

# Keys the sweep sets itself for every run.
SWEEP_KEYS = ("seed", "output_dir", "train.resume")

FINISHED, HALF_FINISHED, FRESH = "finished", "half-finished", "fresh"


@dataclass
class PlannedRun:
    recipe: Path
    seed: int
    folder: Path
    overrides: list[str]   # the user's keys plus the sweep's seed and output_dir
    config: object         # its validated Config, loaded once when planned: the checks, the run and the table share it

    @property
    def name(self) -> str:
        return f"{self.recipe.stem} seed {self.seed}"


# ---- planning ----------------------------------------------------------------------------------------------------
def run_folder(out: Path, recipe: Path, seed: int) -> Path:
    return out / recipe.stem / f"seed{seed}"


def plan(recipes: list[Path], seeds: list[int], out: Path, overrides: list[str]) -> list[PlannedRun]:
    """Every run in order (recipe by recipe, seed by seed), each configuration validated before any run starts."""
    from .config import load_config, parse_override

    fixed = [text for text in overrides if parse_override(text)[0] in SWEEP_KEYS]
    if fixed:
        raise TCLError(f"{fixed[0]}: the sweep sets {', '.join(SWEEP_KEYS)} itself; choose seeds with --seeds "
                       f"and the folder with --out")
    stems = [r.stem for r in recipes]
    twice = sorted({s for s in stems if stems.count(s) > 1})
    if twice:
        raise TCLError(f"two recipes named {twice[0]}.yaml: their runs would share {out / twice[0]}; rename one")
    runs = []
    for recipe in recipes:
        for seed in seeds:
            folder = run_folder(out, recipe, seed)
            keys = [*overrides, f"seed={seed}", f"output_dir={folder}"]
            cfg = load_config(recipe, keys)  # a bad key stops the sweep now, not hours later
            run = PlannedRun(recipe, seed, folder, keys, cfg)
            if cfg.hub.repo_id:
                # Every run would push to one repo, and a failed push on the main process alone would leave the
                # other processes waiting in the next run.
                raise TCLError(f"{recipe}: hub.repo_id={cfg.hub.repo_id!r}: the sweep does not push; push a "
                               f"run afterwards with python -m tcl_hf.export RUN_DIR --push REPO_ID")
            runs.append(run)
    return runs


def run_state(folder: Path) -> str:
    """finished, half-finished (config.yaml or checkpoints) or fresh. The label report is written after the
    summary: a run stopped between the two is resumed, which publishes it."""
    from .rundir import checkpoint_dirs

    if (folder / SUMMARY_FILE).is_file() and (folder / LABEL_ISSUES_FILE).is_file():
        return FINISHED
    if (folder / CONFIG_FILE).is_file() or checkpoint_dirs(folder):
        return HALF_FINISHED
    return FRESH


def _differences(run: PlannedRun) -> list[str]:
    """The keys in which the run saved in ``run.folder`` differs from the planned one."""
    from .config import to_dict
    from .rundir import OUTCOME_NEUTRAL, read_saved_config, run_differences

    saved = read_saved_config(run.folder, "output_dir")
    # A finished run's length counts too (a resume may change it, a table may not mix it).
    return run_differences(saved, to_dict(run.config), OUTCOME_NEUTRAL)


def _check_finished(run: PlannedRun) -> None:
    """A finished run is only skipped when it is the run asked for: a table must not mix other settings in."""
    differ = _differences(run)
    if differ:
        raise TCLError(f"{run.folder} holds a finished run with other settings ({', '.join(differ[:4])}); "
                       f"choose another --out or move that folder aside")


# ---- running -----------------------------------------------------------------------------------------------------
def _fresh_accelerate_state() -> None:
    """Each run builds its own Accelerator, but accelerate keeps one state per process and refuses a later run's
    other mixed precision. Forgetting that state lets the next run start as in a new process; the process group,
    kept by every run (run_job's keep_process_group), is taken over by the next one."""
    from accelerate.state import AcceleratorState, GradientState

    AcceleratorState._reset_state(reset_partial_state=True)
    GradientState._reset_state()


def _end_process_group() -> None:
    """What a single run's end_training does, once after the sweep's last run."""
    dist = sys.modules.get("torch.distributed")  # not imported: no run started, no group to end
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def run_all(runs: list[PlannedRun], say=print) -> None:
    """Run every planned run not yet finished (the finished ones were checked to be the runs asked for, before the
    sweep began). Every process takes the same decisions: they depend only on files that no run writes before all
    processes are inside its trainer (whose first step is a collective)."""
    for number, run in enumerate(runs, start=1):
        state = run_state(run.folder)
        say(f"[{number}/{len(runs)}] {run.name}: {state} ({run.folder})")
        if state == FINISHED:
            continue
        from .job import run_job  # only when something trains: a finished sweep only tabulates

        cfg = copy.deepcopy(run.config)  # the run may change its copy; the table still compares with the planned one
        cfg.train.resume = state == HALF_FINISHED
        _fresh_accelerate_state()
        try:
            run_job(cfg, keep_process_group=True)
        except TCLError as exc:
            raise TCLError(f"{run.name}: {one_line(exc)}") from None


# ---- the table ---------------------------------------------------------------------------------------------------
def _mean_std(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and sample standard deviation (n-1); no std for one value, nothing for none."""
    if not values:
        return None, None
    return statistics.fmean(values), (statistics.stdev(values) if len(values) > 1 else None)


def _finished_summary(run: PlannedRun) -> dict | None:
    """The summary of a finished run made with the planned settings, else None."""
    try:
        if run_state(run.folder) != FINISHED or _differences(run):
            return None
        summary = json.loads((run.folder / SUMMARY_FILE).read_text())
    except (TCLError, ValueError, OSError):
        return None  # not countable; the sweep names the problem when it reaches that run
    return summary if isinstance(summary, dict) else None


def aggregate(runs: list[PlannedRun]) -> list[dict]:
    """One row per recipe (in order) from its finished runs' summaries (accuracies as fractions, as summary.json)."""
    recipes = list(dict.fromkeys(run.recipe for run in runs))
    rows = []
    for recipe in recipes:
        planned = [run for run in runs if run.recipe == recipe]
        finished = [(run.seed, s) for run in planned if (s := _finished_summary(run)) is not None]
        summaries = [s for _, s in finished]
        row = {"recipe": recipe.stem, "seeds_done": len(summaries), "seeds": len(planned)}
        for key in METRICS:
            values = [float(s[key]) for s in summaries if isinstance(s.get(key), (int, float))]
            row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
        paper = paper_test_acc().get(recipe.stem)
        row["paper_test_acc"] = paper / 100 if paper is not None else None
        # Failed seeds stay in the mean (leaving them out would flatter the recipe) and are named beside it.
        row["failed_seeds"] = "; ".join(f"seed {seed} {verdict}" for seed, s in finished
                                        if (verdict := summary_verdict(s)) != VERDICT_OK)
        rows.append(row)
    return rows


def _shown(mean: float | None, std: float | None, scale: float, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean * scale:.{digits}f}" + (f" ± {std * scale:.{digits}f}" if std is not None else "")


def markdown(rows: list[dict]) -> str:
    lines = ["| recipe | seeds done | test acc. % | TCL paper % | noise AUC | label acc. % |",
             "|---|---|---|---|---|---|"]
    failed = [f"{r['recipe']}: {r['failed_seeds']}" for r in rows if r["failed_seeds"]]
    for r in rows:
        marked = f" ({r['failed_seeds'].count(';') + 1} failed)" if r["failed_seeds"] else ""
        lines.append(f"| {r['recipe']} | {r['seeds_done']}/{r['seeds']}{marked} | "
                     f"{_shown(r['test_acc_mean'], r['test_acc_std'], 100, 2)} | "
                     f"{_shown(r['paper_test_acc'], None, 100, 1)} | "
                     f"{_shown(r['noise_auc_mean'], r['noise_auc_std'], 1, 4)} | "
                     f"{_shown(r['label_acc_mean'], r['label_acc_std'], 100, 2)} |")
    note = ("Mean ± sample standard deviation (n−1) over the finished seeds; one seed: its value. TCL paper: the "
            "published test accuracy (WebVision: top-1 on its val set). label acc.: the model's predictions "
            "against the true training labels.")
    if failed:
        note += (" Seeds whose TCL failed (collapsed, or never left its warm-up: tcl_hf/verdict.py) or fell back to "
                 "CE after a collapse are counted in the mean; a failed seed's outputs are not to be trusted, a "
                 "fallen-back seed's are the CE baseline's: " + "; ".join(failed) + ".")
    return "\n".join(lines) + "\n\n" + note + "\n"


def write_tables(out: Path, rows: list[dict]) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    md, table = out / SWEEP_MD, out / SWEEP_CSV
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["recipe"], lineterminator="\n")
    writer.writeheader()
    writer.writerows({k: ("" if v is None else v) for k, v in r.items()} for r in rows)
    # A sweep killed while writing keeps the previous tables whole.
    atomic_write_text(md, markdown(rows))
    atomic_write_text(table, text.getvalue())
    return md, table


# ---- command line ------------------------------------------------------------------------------------------------
def _seeds(text: str) -> list[int]:
    try:
        seeds = [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        seeds = []
    if not seeds or min(seeds) < 0 or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"{text!r}: expected distinct seeds >= 0, comma-separated (e.g. 0,1,2)")
    return seeds


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m tcl_hf.sweep",
        description="Run recipes over several seeds (resumable) and tabulate mean ± std of test_acc, noise_auc "
                    "and label_acc beside TCL's published numbers.")
    parser.add_argument("items", nargs="+", metavar="RECIPE|key=value",
                        help="recipe files, then keys for every run (as train.py takes them)")
    parser.add_argument("--seeds", type=_seeds, default=[0, 1, 2], help="comma-separated seeds (default 0,1,2)")
    parser.add_argument("--out", type=Path, default=Path("runs/sweep"), help="the sweep's folder (default runs/sweep)")
    return parser


def _sweep(args: argparse.Namespace, main_process: bool) -> None:
    recipes = [Path(item) for item in args.items if "=" not in item]
    overrides = [item for item in args.items if "=" in item]
    say = print if main_process else (lambda *a, **k: None)
    if not recipes:
        raise TCLError("no recipe given; name at least one recipe file, e.g. recipes/cifar10_sym50.yaml")
    runs = plan(recipes, args.seeds, args.out, overrides)
    # Refused before any run: a sweep that cannot make its table leaves the table it had.
    for run in runs:
        if run_state(run.folder) == FINISHED:
            _check_finished(run)
    try:
        run_all(runs, say)
    finally:
        _end_process_group()
        if main_process:
            rows = aggregate(runs)
            md, _ = write_tables(args.out, rows)
            say(f"\n{markdown(rows)}\nwrote {md} and {args.out / SWEEP_CSV}")


def main(argv: list[str] | None = None) -> int:
    # Intermixed: keys may come after --seeds/--out as well as before.
    args = _parser().parse_intermixed_args(argv)
    return run_command(lambda: _sweep(args, is_main_process()), again="the same command (finished runs are skipped)",
                       intact="finished runs and checkpoints are intact")


if __name__ == "__main__":
    raise SystemExit(main())
