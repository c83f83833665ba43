"""``python -m codebase.data.formats check PATH [--format F]``: validate a dataset tree of any
format and print what it holds (images per split, grade histograms, lesion masks per lesion, what
was left out and why, the tasks it cannot score), or every problem found, naming the file.
"""
from __future__ import annotations

import argparse
import sys
from collections import Counter

from tqdm import tqdm

from codebase.data.formats import FORMATS, read_dataset
from codebase.data.formats.base import GRADE_CLASSES, GRADE_KEYS, LabelledSet
from codebase.data.idrid import LESIONS
from codebase.data.images import ImageFileError, read_mask, verify_image


def summarise(labelled: LabelledSet, problems: list[str], verify: bool = True) -> dict:
    """Per split: graded images and their histograms, lesion images and non-empty masks per lesion.
    verify: decode every image (at 1/8 scale) and every mask (checking its size), adding problems."""
    splits: dict = {}
    for split in labelled.splits():
        records = [record for record in labelled.records if record.split == split]
        graded = [record for record in records if record.retinopathy_grade is not None]
        annotated = [record for record in records if record.mask_paths is not None]
        masks = Counter()
        for record in tqdm(records, desc=f"check {labelled.format} {split}", leave=False, disable=not verify):
            size = None
            if verify:
                try:
                    size = verify_image(record.image_path)
                except ImageFileError as error:
                    problems.extend(error.problems)
            for lesion, path in (record.mask_paths or {}).items():
                if path is None or lesion not in labelled.lesions:
                    continue
                try:
                    if not verify or read_mask(path, size, record.mask_thresholds.get(lesion, 1)).any():
                        masks[lesion] += 1
                except ImageFileError as error:
                    problems.extend(error.problems)
        splits[split] = {"graded": len(graded), "lesion_images": len(annotated),
                         "masks": {lesion: masks[lesion] for lesion in labelled.lesions}}
        for key in labelled.grades:
            splits[split][key] = [sum(record.grade(key) == value for record in graded)
                                  for value in range(GRADE_CLASSES[key])]
    left_out = [[split, reason, count] for (split, reason), count in labelled.left_out.items()]
    return {"format": labelled.format, "root": str(labelled.root), "splits": splits,
            "evaluated": labelled.test_split or "all", "left_out": left_out, "absent": dict(labelled.absent)}


def format_summary(summary: dict) -> str:
    title = FORMATS[summary["format"]].TITLE
    grades = [key for key in GRADE_KEYS if any(key in info for info in summary["splits"].values())]
    lesions = [lesion for lesion in LESIONS if any(lesion in info["masks"] for info in summary["splits"].values())]
    lines = [f"{title} ({summary['format']}) at {summary['root']}", ""]
    if grades:
        header = "Grading         images  " + "   ".join(f"{key.upper()} 0..{GRADE_CLASSES[key] - 1}".ljust(
            5 * GRADE_CLASSES[key]) for key in grades)
        lines.append(header.rstrip())
        for split, info in summary["splits"].items():
            if info["graded"]:
                cells = "   ".join(" ".join(f"{n:>4}" for n in info[key]) for key in grades)
                lines.append(f"  {split:<14}{info['graded']:>6}  {cells}")
        lines.append("")
    if lesions:
        lines.append("Lesions         images  " + "  ".join(f"{lesion:>3}" for lesion in lesions)
                     + "   (images whose mask is not empty)")
        for split, info in summary["splits"].items():
            if info["lesion_images"]:
                cells = "  ".join(f"{info['masks'][lesion]:>3}" for lesion in lesions)
                lines.append(f"  {split:<14}{info['lesion_images']:>6}  {cells}")
        lines.append("")
    evaluated = summary["evaluated"]
    lines.append("Evaluated: " + ("the whole set (no test split)" if evaluated == "all" else f"the {evaluated} split"))
    for split, reason, count in summary["left_out"]:
        lines.append(f"Left out: {count} image(s) of {split}, {reason}")
    reasons: dict = {}
    for task, reason in summary["absent"].items():
        reasons.setdefault(reason, []).append(task)
    lines += [f"Absent: {', '.join(tasks)} ({reason})" for reason, tasks in reasons.items()]
    return "\n".join(lines)


def check(root, format_name: str = "auto") -> tuple[dict | None, list[str]]:
    """(summary, problems) of the tree at ``root``; every file is decoded once."""
    problems: list[str] = []
    try:
        labelled = read_dataset(format_name, root)
    except ImageFileError as error:  # DatasetError, or IDRiD's IDRiDError
        return None, error.problems
    return summarise(labelled, problems), problems


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m codebase.data.formats",
                                     description="Dataset tools for every format the project reads")
    commands = parser.add_subparsers(dest="command", required=True)
    check_parser = commands.add_parser("check", help="verify a dataset tree; print a summary or every problem")
    check_parser.add_argument("root", help="the dataset's folder")
    check_parser.add_argument("--format", default="auto", choices=[*FORMATS, "auto"],
                              help="the dataset's format (default auto: recognised from the tree)")
    args = parser.parse_args(argv)
    summary, problems = check(args.root, args.format)
    if problems:
        print(f"{len(problems)} problem(s) in {args.root}:", file=sys.stderr)
        for problem in problems:
            print(f"  - {problem}", file=sys.stderr)
        return 1
    print(format_summary(summary))
    return 0
