"""Run a controlled experiment: every configuration of a grid x seeds, then one comparison.

    python run_experiments.py moe --seeds 3                      # synthetic demo data, saved/moe/
    python run_experiments.py moe --seeds 3 --data-root data --device cuda --out saved
    python run_experiments.py smoke --seeds 2 --set train.eval_batch_size=4
    python run_experiments.py weighting --seeds 1 --configs fixed,pcgrad   # part of a grid
    python run_experiments.py generalization --seeds 3           # in domain, held-out camera, external formats
    python run_experiments.py moe --seeds 3 --external ddr:data/DDR --external aptos:data/aptos

Grids live in experiments/grids.py (configuration -> train script + --set overrides, a reference
configuration, and the budget every configuration gets: input size, batch, optimizer steps).
Each run is a train-script subprocess writing <out>/<grid>/<configuration>/seed_<S>/; finished
runs are skipped and interrupted ones resumed, so re-running the same command carries on after a
kill. Then every run is evaluated on the same test split with per-image records (and on each
external dataset: the grid's own, e.g. the generalization grid's synthetic held-out camera and
external formats, written when absent, and every --external FORMAT:PATH), and
<out>/<grid>/results.md and results.json give per configuration and metric the mean and standard
deviation over seeds, a bootstrap interval over test images, the paired difference against the
reference, delta-m of the multi-task model against the single-task baselines, each configuration's
generalization gap on every external set with paired intervals against the reference
(experiments/external.py), and the cost.
Exit code: 0 done, 1 a run failed, 2 bad grid or settings, 3 stopped by --max-runs before every run
was trained, 130 interrupted (Ctrl-C; the running script keeps its last complete epoch).
"""
import argparse
import dataclasses
import sys
from pathlib import Path

from codebase.data.formats import dataset_argument, read_dataset
from codebase.data.formats.base import DatasetError
from codebase.data.idrid import IDRiDError, tree_present
from codebase.data.synthetic import ensure_dataset
from codebase.data.synthetic_formats import ensure_tree
from codebase.errors import run_tool
from codebase.runtime.device import resolve_device
from codebase.training.run_folder import OutputError, is_run_folder, refuse_run_records
from experiments import report
from experiments.budget import GridError, check_grid, training_images
from experiments.grids import GRIDS
from experiments.runner import plan_runs, train_all


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("grid", help=f"grid name in experiments/grids.py ({', '.join(GRIDS)})")
    parser.add_argument("--configs", help="comma-separated configurations of the grid to run and compare (default "
                                           "all); the reference is always included")
    parser.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 per configuration (default 3)")
    parser.add_argument("--data-root", help="dataset folder for training and testing (default: the grid's; a "
                                            "synthetic tree is generated there when the default is absent)")
    parser.add_argument("--out", default="saved", help="output folder; runs go to OUT/GRID/ (default saved)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every configuration (a key every grid script has); repeatable")
    parser.add_argument("--device", help="device for training and evaluation (default: the scripts' auto)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--bootstrap-seed", type=int, default=0, help="seed of the resamples (default 0)")
    parser.add_argument("--cost-images", type=int, default=2, help="test images the FLOPs are averaged over")
    parser.add_argument("--cost-repeats", type=int, default=5, help="timed forwards per latency")
    parser.add_argument("--external", type=dataset_argument, action="append", default=[], metavar="FORMAT:PATH",
                        help="also evaluate every run on this external dataset (repeatable; FORMAT as evaluate.py "
                             "takes it); the grid's own external sets come first")
    parser.add_argument("--max-runs", type=int, help="train at most N runs, then stop (exit code 3); re-run to go on")
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.resamples < 1:
        parser.error("--seeds and --resamples must be at least 1")
    return args


def select_configurations(name, grid, configs):
    """The grid restricted to the comma-separated ``configs`` (and its reference, and the configurations
    the chosen ones upcycle from); all when None."""
    if configs is None:
        return grid
    chosen = [c.strip() for c in configs.split(",") if c.strip()]
    unknown = [c for c in chosen if c not in grid.configurations]
    if unknown or not chosen:
        raise GridError(f"--configs {configs!r}: grid {name!r} has no configuration {', '.join(unknown) or '(none given)'}"
                        f"; it has {', '.join(grid.configurations)}")
    sources = {grid.configurations[c].upcycle_from for c in chosen}  # an upcycled run needs its source's
    return dataclasses.replace(grid, configurations={c: configuration for c, configuration in grid.configurations.items()
                                                     if c in chosen or c == grid.reference or c in sources})


def main(argv=None):
    """The runner's entry point: bad input (a grid, a setting, a damaged run folder) ends in one
    `error:` line and exit code 2 (codebase.errors.run_tool)."""
    return run_tool(lambda: run_grid(argv))


def run_grid(argv=None):
    args = parse_args(argv)
    try:
        if args.grid not in GRIDS:
            raise GridError(f"no grid {args.grid!r}; experiments/grids.py has {', '.join(GRIDS)}")
        out = Path(args.out).resolve()
        refuse_run_records("--out", out, folder=True)
        if is_run_folder(out / args.grid):
            raise GridError(f"--out {args.out}: the grid's folder {out / args.grid} is a run folder (it holds a "
                            "training's config.json or weights); choose another --out")
        grid = select_configurations(args.grid, GRIDS[args.grid], args.configs)
        check_grid(args.grid, grid, args.set)
        root = Path(args.data_root or grid.data_root).resolve()
        if args.data_root is None and grid.demo:
            ensure_dataset(root)
        if not tree_present(root):
            raise GridError(f"--data-root {root}: no IDRiD tree there (see data/README.md)")
        external = []
        for fmt, path in grid.external:
            if grid.demo:
                ensure_tree(fmt, path, count=grid.external_count)
            external.append((fmt, Path(path)))
        external = [read_dataset(fmt, path) for fmt, path in external + args.external]
        planned = plan_runs(args.grid, grid, range(args.seeds), out, root, training_images(root, grid.budget.validation), args.set)
        unfinished = train_all(planned, root, grid.demo, args.device, args.max_runs)
    except (GridError, IDRiDError, OutputError, DatasetError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    except RuntimeError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("[experiments] interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    if unfinished:
        print(f"[experiments] stopped after --max-runs {args.max_runs}: {unfinished} run(s) left; "
              "run the same command again to continue")
        return 3
    device = resolve_device(args.device or "auto")
    results = report.analyse(args.grid, grid, planned, root, device, args.resamples, args.bootstrap_seed,
                             cost_images=args.cost_images, cost_repeats=args.cost_repeats,
                             records_folder=out / args.grid / "records", external=external)
    written = report.write(results, out / args.grid, planned)
    print(report.markdown(results))
    print(f"written: {', '.join(map(str, written))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
