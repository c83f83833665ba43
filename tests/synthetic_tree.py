"""The synthetic IDRiD tree every test session generates once (tests/conftest.py's synthetic_root).

Size is (W, H); counts per split. Grading train quotas give every RG and MER class at least once.
A plain module, so test files import it by name (two conftest.py files would both be "conftest").
"""
SYNTHETIC_TREE = {"seed": 0, "size": (192, 128), "seg_train": 4, "seg_test": 2, "grade_train": 10, "grade_test": 5}

# The synthetic external trees (tests/conftest.py's external_trees): images per split and (W, H). FGADR's
# images are large enough for predict.py's sliding windows over a 96x128-trained run (at least twice
# its size in both sides).
EXTERNAL_TREES = {"aptos": {"count": 3, "size": (96, 64)}, "eyepacs": {"count": 3, "size": (96, 64)},
                  "messidor2": {"count": 3, "size": (96, 64)}, "ddr": {"count": 3, "size": (96, 64)},
                  "fgadr": {"count": 3, "size": (256, 256)}}
