"""Evaluate a trained run on its in-domain test split and on external datasets: generalization.

    python evaluate.py --run saved/mlt_demo --data aptos:data/aptos --data ddr:data/DDR
    python evaluate.py --run saved/classifier_demo --data auto:data/messidor2 --weights last --out results
    python evaluate.py --run saved/mlt_demo --in-domain idrid:data --data fgadr:data/FGADR --device cuda

The run (any of the three train scripts) is rebuilt from its config.json and its best.pth (model.pth
where it has none, or with --weights last). Each --data FORMAT:PATH names a dataset as distributed,
FORMAT one of idrid, aptos, eyepacs, messidor2, ddr, fgadr, or auto to recognise the tree
(codebase.data.formats; `python -m codebase.data.formats check PATH` validates one). The in-domain
row is --in-domain (default: IDRiD at the run's data.root). Each set's test split is evaluated, or
the whole set when it has none, on every metric its labels allow and the run predicts: RG accuracy
and quadratic kappa, MER (IDRiD only), referable DME (Messidor-2's label; IDRiD's MER 2; predicted
as MER 2), per lesion Dice and AUPR. A task a set cannot score is reported absent with the reason,
never as zero. Lesion maps are predicted as predict.py does (sliding windows over large images).
Every metric gets a bootstrap interval over the set's images, and each external set's difference
from in-domain its own interval (experiments.generalization).

Writes to --out (default <run>/generalization/): metrics.json (per dataset: the metrics with their
intervals, the gaps, the images scored, those left out with the reason, the absent tasks) and
generalization.md (one row per dataset, in-domain first), and prints the markdown. Exit code: 0
done, 2 bad input (a run, a dataset tree, an unreadable file; one line naming it).
"""
import argparse
import json
import sys
from pathlib import Path

from codebase.data.formats import dataset_argument, read_dataset
from codebase.errors import ProjectError
from codebase.runtime.atomic import atomic_write_text
from codebase.runtime.device import resolve_device
from experiments.dataset_records import dataset_records
from experiments.generalization import evaluate_datasets, markdown
from inference.runs import WEIGHTS, open_run


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished run folder, e.g. saved/mlt_demo")
    parser.add_argument("--data", type=dataset_argument, action="append", required=True, metavar="FORMAT:PATH",
                        help="an external dataset (repeatable)")
    parser.add_argument("--in-domain", type=dataset_argument, metavar="FORMAT:PATH",
                        help="the in-domain dataset (default idrid:<the run's data.root>)")
    parser.add_argument("--weights", choices=WEIGHTS, default="best",
                        help="best: best.pth, chosen on the validation split (model.pth where the run has none); "
                             "last: model.pth (default best)")
    parser.add_argument("--out", help="output folder (default <run>/generalization)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:N or mps (default auto)")
    parser.add_argument("--threshold", type=float, default=0.5, help="lesion probability threshold for Dice")
    parser.add_argument("--sliding", choices=("auto", "off"), default="auto",
                        help="lesion maps of large images by sliding windows as predict.py (auto, default), or "
                             "one forward at the trained size (off)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the resamples (default 0)")
    args = parser.parse_args(argv)
    if args.resamples < 1 or not 0 < args.threshold < 1:
        parser.error("--resamples must be at least 1 and --threshold a probability in (0, 1)")
    out = Path(args.out) if args.out else Path(args.run) / "generalization"
    try:
        if out.exists() and not out.is_dir():
            raise ProjectError(f"--out {out}: a file, expected a folder")
        device = resolve_device(args.device)
        run = open_run(args.run, device, args.weights)
        in_domain = args.in_domain or ("idrid", Path(run.config["data"]["root"]))
        datasets = [read_dataset(name, path) for name, path in [in_domain, *args.data]]
        evaluated = []
        for labelled in datasets:
            print(f"{labelled.format} at {labelled.root}: {len(labelled.evaluation_records())} image(s) of split "
                  f"{labelled.test_split or 'all'}", flush=True)
            evaluated.append((labelled, dataset_records(run, labelled, device, args.threshold, args.sliding)))
    except (ProjectError, ValueError, FileNotFoundError) as error:
        print("error: " + str(error).replace("\n", "\n  "), file=sys.stderr)
        return 2
    report = {"run": str(args.run), "kind": run.kind, "weights": run.weights_file, "resamples": args.resamples,
              "seed": args.seed, "level": 0.95, "threshold": args.threshold, "sliding": args.sliding,
              "synthetic": all((labelled.root / "synthetic.json").is_file() for labelled, _ in evaluated),
              "datasets": evaluate_datasets(evaluated, args.resamples, args.seed)}
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "metrics.json", json.dumps(report, indent=2, allow_nan=False))
    text = markdown(report)
    atomic_write_text(out / "generalization.md", text)
    print(text)
    print(f"written: {out / 'metrics.json'}, {out / 'generalization.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
