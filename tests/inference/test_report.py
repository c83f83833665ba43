"""inference/report.py without trained runs: figures embedded as PNG data, sections, escaping."""
import base64
import re

import numpy as np
from matplotlib.figure import Figure

from inference.report import SECTIONS, comparison_html, png_data_uri

REPORT = {"data_root": "data", "device": "cpu", "machine": "test machine",
          "runs": [{"name": "a<b", "kind": "classifier", "grading": {"rg_confusion": [[2, 1], [0, 3]]}},
                   {"name": "moe", "kind": "multitask", "grading": {"mer_confusion": [[1, 0], [1, 1]]},
                    "routing_usage": {"segmentation_ma": [1.0, 0.0], "classification_rg": [0.5, 0.5]}}]}
TABLES = [("Accuracy", ["", "a<b"], [["RG accuracy", "0.833"]])]


def test_png_data_uri_is_the_figures_png():
    figure = Figure(figsize=(1, 1))
    figure.subplots().plot([0, 1], [1, 0])
    uri = png_data_uri(figure)
    assert uri.startswith("data:image/png;base64,")
    assert base64.b64decode(uri.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_comparison_html_has_every_section_and_embeds_every_figure():
    curves = {"moe": {"MA": (np.array([1.0, 0.5]), np.array([0.5, 1.0]))}, "a<b": {}}
    page = comparison_html(REPORT, TABLES, {}, curves, {}, "cpu")
    assert [h for h in re.findall(r"<h2>([^<]*)</h2>", page)] == list(SECTIONS)
    assert "<td>RG accuracy</td><td>0.833</td>" in page
    assert "a&lt;b" in page and "a<b" not in page  # names are escaped
    sources = re.findall(r'src="([^"]*)"', page)
    assert len(sources) == 2 + 1 + 1  # two confusion figures, precision-recall, routing
    assert all(src.startswith("data:image/png;base64,") for src in sources)


def test_comparison_html_says_what_is_missing():
    page = comparison_html({**REPORT, "runs": []}, [], {}, {}, {}, "cpu")
    for missing in ("no grading run", "no segmentation run", "no multi-task run"):
        assert missing in page
    assert "src=" not in page
