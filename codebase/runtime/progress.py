"""Progress bars: shown by rank 0 only, silent elsewhere and with TQDM_DISABLE=1."""
import os
from typing import Iterable

from tqdm import tqdm

from codebase.runtime import distributed


def progress(iterable: Iterable, desc: str = "", total: int | None = None, enabled: bool = True) -> tqdm:
    """A tqdm bar on rank 0 (when enabled; TQDM_DISABLE=1 turns all off), silent elsewhere.

    Always a tqdm object, so `set_postfix` works on every rank. Bars vanish when done; print
    other lines with `Run.log` (which uses tqdm.write) so they don't break a live bar.
    """
    disable = (not (enabled and distributed.is_main_process())
               or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes"))
    return tqdm(iterable, desc=desc, total=total, leave=False, dynamic_ncols=True, disable=disable)
