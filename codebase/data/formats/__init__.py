"""The datasets the project reads, as a registry of formats: IDRiD (in-domain) and the public sets
researchers validate on (APTOS 2019, EyePACS, Messidor-2, DDR, FGADR).

Each format is one module here with ``NAME``, ``TITLE``, ``detect(root) -> bool`` and
``read(root) -> LabelledSet`` (codebase.data.formats.base); only these modules know the sets'
folder and file names. ``FORMAT:PATH`` arguments (``auto:PATH`` recognises the tree) go through
`parse_dataset_arg`; ``python -m codebase.data.formats check PATH [--format F]`` validates a tree.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from codebase.data.formats import aptos, ddr, eyepacs, fgadr, idrid_format, messidor2
from codebase.data.formats.base import DatasetError, LabelledSet

FORMATS = {module.NAME: module for module in (idrid_format, aptos, eyepacs, messidor2, ddr, fgadr)}


def detect_format(root) -> str:
    """The one format whose tree ``root`` holds; DatasetError when none or several match."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: data root not found, expected a folder holding one of the formats "
                           f"{', '.join(FORMATS)}")
    matches = [name for name, module in FORMATS.items() if module.detect(root)]
    if len(matches) != 1:
        found = f"it looks like {' and '.join(matches)}" if matches else "it holds none of their files"
        raise DatasetError(f"{root}: cannot recognise the dataset format ({found}); name it, one of "
                           f"{', '.join(FORMATS)}")
    return matches[0]


def read_dataset(format_name: str, root) -> LabelledSet:
    """The dataset at ``root`` read as ``format_name`` ("auto": recognised from the tree)."""
    if format_name == "auto":
        format_name = detect_format(root)
    if format_name not in FORMATS:
        raise DatasetError(f"format {format_name!r}: expected one of {', '.join(FORMATS)} or auto")
    return FORMATS[format_name].read(Path(root))


def parse_dataset_arg(text: str) -> tuple[str, Path]:
    """"FORMAT:PATH" -> (format or "auto", path); DatasetError naming the argument otherwise."""
    format_name, colon, path = str(text).partition(":")
    if not colon or not path or format_name not in (*FORMATS, "auto"):
        raise DatasetError(f"{text!r}: expected FORMAT:PATH with FORMAT one of {', '.join(FORMATS)} or auto "
                           "(e.g. ddr:data/DDR)")
    return format_name, Path(path)


def dataset_argument(text: str) -> tuple[str, Path]:
    """`parse_dataset_arg` as an argparse type: a bad argument is a usage error naming it."""
    try:
        return parse_dataset_arg(text)
    except DatasetError as error:
        raise argparse.ArgumentTypeError(str(error)) from None
