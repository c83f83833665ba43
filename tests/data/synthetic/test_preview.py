"""The preview grid and the statistics table."""
from PIL import Image

from codebase.data import synthetic
from codebase.data.synthetic import cameras, preview


def test_preview_grid_has_a_row_per_camera(tmp_path):
    path = tmp_path / "grid.png"
    assert synthetic.main(["--preview", str(path), "--camera", "idrid,eyepacs"]) == 0
    width, height = Image.open(path).size
    assert (width, height) == (2 * len(preview.PREVIEW_TARGETS) * 432, 2 * 288)


def test_statistics_table_lists_every_camera_beside_the_reference(capsys):
    assert synthetic.main(["--stats", "--camera", "idrid,notched"]) == 0
    table = capsys.readouterr().out
    assert "| idrid | " in table and "| notched | " in table and "| reference |" in table
    assert "116.5/56.4/16.3 (yes)" in table and "(no)" in table
    stats = preview.camera_statistics("idrid", images=2)
    assert abs(stats["whole"] - cameras.CAMERAS["idrid"].mean_rgb).max() < 20
    assert 0.14 <= stats["disc"] <= 0.17 and 2 <= stats["fovea"][0] <= 3
