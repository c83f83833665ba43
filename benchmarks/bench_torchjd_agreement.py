"""The hand-written PCGrad and CAGrad against torchjd's: agreement and time per call, on random Gram
matrices (2 to 7 tasks, a third with a strong conflict between two tasks).

    python benchmarks/bench_torchjd_agreement.py               # 300 matrices
    python benchmarks/bench_torchjd_agreement.py --smoke       # 20 matrices; what the tests run

PCGrad: torchjd draws each task's order of the others from torch's global generator; the same
orders are replayed into the project's `pcgrad_coefficients`. CAGrad: torchjd's `CAGradWeighting`
solves the dual with cvxpy (CLARABEL); its rows are printed only where cvxpy and clarabel are
installed (pip install "torchjd[cagrad]==0.18.0"). The time per call is the process's CPU time for
the coefficients alone (steadier than wall time on a shared machine); a training step spends
seconds in its backward passes besides.
"""
import argparse
import importlib.util
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import print_table  # noqa: E402
from codebase.training.weighting.cagrad import cagrad_coefficients  # noqa: E402
from codebase.training.weighting.pcgrad import pcgrad_coefficients  # noqa: E402


def random_grams(count, seed=0):
    generator = torch.Generator().manual_seed(seed)
    grams = []
    for index in range(count):
        tasks = int(torch.randint(2, 8, (), generator=generator))
        size = int(torch.randint(tasks, 60, (), generator=generator))
        grads = torch.randn(tasks, size, generator=generator, dtype=torch.float64)
        grads = grads * torch.empty(tasks, 1, dtype=torch.float64).uniform_(0.05, 5, generator=generator)
        if index % 3 == 0:
            grads[1] = -0.7 * grads[0] + 0.1 * torch.randn(size, generator=generator, dtype=torch.float64)
        grams.append(grads @ grads.T)
    return grams


def ms_per_call(function, grams):
    """CPU milliseconds per call (this process, all its threads), over ``grams``."""
    started = time.process_time()
    for gram in grams:
        function(gram)
    return 1e3 * (time.process_time() - started) / len(grams)


def pcgrad_rows(grams):
    from torchjd.aggregation import PCGradWeighting
    theirs_of, worst = PCGradWeighting(), 0.0
    for gram in grams:
        count = gram.shape[0]
        torch.manual_seed(7)
        theirs = theirs_of(gram)
        torch.manual_seed(7)
        orders = [[j for j in torch.randperm(count).tolist() if j != i] for i in range(count)]
        ours = pcgrad_coefficients(gram, orders).sum(dim=0)
        worst = max(worst, float((ours - theirs).abs().max() / theirs.abs().max()))

    def ours_of(gram):
        count = gram.shape[0]
        return pcgrad_coefficients(gram, [[j for j in range(count) if j != i] for i in range(count)]).sum(dim=0)
    return [["PCGrad", "-", f"{worst:.1e}", "-", f"{ms_per_call(ours_of, grams):.2f}",
             f"{ms_per_call(theirs_of, grams):.2f}"]]


def cagrad_rows(grams):
    from torchjd.aggregation import CAGradWeighting
    rows = []
    for c in (0.2, 0.4, 0.8):
        theirs_of, lowest_cosine, worst_gap = CAGradWeighting(c=c), 1.0, 0.0
        for gram in grams:
            ours, theirs = torch.from_numpy(cagrad_coefficients(gram.numpy(), c)), theirs_of(gram)
            norm_ours, norm_theirs = float(ours @ gram @ ours) ** 0.5, float(theirs @ gram @ theirs) ** 0.5
            lowest_cosine = min(lowest_cosine, float(ours @ gram @ theirs) / (norm_ours * norm_theirs))
            worst_ours, worst_theirs = float((gram @ ours).min()) / norm_ours, float((gram @ theirs).min()) / norm_theirs
            worst_gap = max(worst_gap, abs(worst_ours - worst_theirs) / float(gram.mean()) ** 0.5)
        rows.append([f"CAGrad c={c}", f"{lowest_cosine:.6f}", "-", f"{worst_gap:.1e}",
                     f"{ms_per_call(lambda gram: cagrad_coefficients(gram.numpy(), c), grams):.2f}",
                     f"{ms_per_call(theirs_of, grams):.2f}"])
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--matrices", type=int, default=300, help="random Gram matrices (default 300)")
    parser.add_argument("--smoke", action="store_true", help="20 matrices: checks the script runs")
    args = parser.parse_args(argv)
    grams = random_grams(20 if args.smoke else args.matrices)
    rows = pcgrad_rows(grams)
    if all(importlib.util.find_spec(package) for package in ("cvxpy", "clarabel")):
        rows += cagrad_rows(grams)
    else:
        print('torchjd\'s CAGrad needs cvxpy and clarabel (pip install "torchjd[cagrad]==0.18.0"): its rows are left out')
    print_table(f"Hand-written against torchjd 0.18 on {len(grams)} random Gram matrices (2 to 7 tasks)",
                ["method", "lowest cosine", "max coefficient difference (relative)",
                 "max worst-task improvement difference (per |g0|)", "ours CPU ms/call", "torchjd CPU ms/call"], rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
