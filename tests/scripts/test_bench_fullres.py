"""The full-resolution benchmark runs end to end at a tiny size (timings and scores are not asserted)."""
import pytest

from benchmarks import bench_fullres

pytestmark = pytest.mark.slow  # trains two small models and times sliding-window inference


def test_bad_centre_weights_are_refused(capsys):
    for value in ("XX=2", "MA=0", "MA"):
        with pytest.raises(SystemExit):
            bench_fullres.parse(["--centre-weight", value])
        assert f"--centre-weight '{value}': expected" in capsys.readouterr().err


def test_fullres_benchmark_smoke_run(capsys, monkeypatch):
    built = []

    class Recorded(bench_fullres.PatchSegmentationDataset):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

    monkeypatch.setattr(bench_fullres, "PatchSegmentationDataset", Recorded)
    assert bench_fullres.main(["--smoke", "--time-matched", "--dice-on-absent", "true", "--centre-weight", "MA=3",
                               "--lesion-position", "anywhere"]) == 0
    assert built and all(d.sample_weights.tolist() == [3, 1, 1, 1, 1] and d.lesion_position == "anywhere"
                         for d in built)
    printed = capsys.readouterr().out
    assert ("Patches: 50% of crops drawn on a lesion pixel (kind weights MA 3, HE 1, EX 1, SE 1, OD 1; the pixel "
            "anywhere in the crop); loss: soft Dice of lesions absent from a batch kept") in printed
    for row in ("whole, resized", "patches, lesion-aware", "MA AUPR", "OD Dice", "lesion-aware: ratio", "first / cached", "training epoch",
                "Sliding-window inference", "96x144", "peak RSS MiB"):
        assert row in printed
    scored = [line.split()[2] for line in printed.splitlines() if line.startswith(("whole, resized", "patches, lesion"))]
    assert scored == ["1", "2", "1", "2"]  # --smoke scores each arm after every step (--eval-every 1)
    matched = [line.split() for line in printed.splitlines() if line.startswith("patches, same training time")]
    assert len(matched) == 1 and int(matched[0][4]) >= 1  # scored once, after its own number of steps
    assert "patches, same training time: ratio" in printed
