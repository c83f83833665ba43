"""Progress bars: a tqdm object on every rank, silent when disabled or with TQDM_DISABLE=1."""
from codebase.runtime.progress import progress


def test_bar_yields_everything_and_takes_a_postfix_when_silent(monkeypatch):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    bar = progress(range(3), "steps", total=3)
    assert bar.disable
    bar.set_postfix(loss=1.0)
    assert list(bar) == [0, 1, 2]


def test_enabled_on_the_main_process_unless_asked_not_to(monkeypatch):
    monkeypatch.delenv("TQDM_DISABLE", raising=False)
    assert not progress([], "shown").disable
    assert progress([], "hidden", enabled=False).disable
