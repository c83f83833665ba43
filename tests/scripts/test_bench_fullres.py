"""The full-resolution benchmark runs end to end at a tiny size (timings and scores are not asserted)."""
import pytest

from benchmarks import bench_fullres

pytestmark = pytest.mark.slow  # trains two small models and times sliding-window inference


def test_fullres_benchmark_smoke_run(capsys):
    assert bench_fullres.main(["--smoke", "--time-matched", "--dice-on-absent", "true"]) == 0
    printed = capsys.readouterr().out
    for row in ("whole, resized", "patches, lesion-aware", "MA AUPR", "OD Dice", "lesion-aware: ratio", "first / cached", "training epoch",
                "Sliding-window inference", "96x144", "peak RSS MiB"):
        assert row in printed
    scored = [line.split()[2] for line in printed.splitlines() if line.startswith(("whole, resized", "patches, lesion"))]
    assert scored == ["1", "2", "1", "2"]  # --smoke scores each arm after every step (--eval-every 1)
    matched = [line.split() for line in printed.splitlines() if line.startswith("patches, same training time")]
    assert len(matched) == 1 and int(matched[0][4]) >= 1  # scored once, after its own number of steps
    assert "patches, same training time: ratio" in printed
