"""The synthetic IDRiD tree every test session generates once (tests/conftest.py's synthetic_root).

Size is (W, H); counts per split. Grading train quotas give every RG and MER class at least once.
A plain module, so test files import it by name (two conftest.py files would both be "conftest").
"""
SYNTHETIC_TREE = {"seed": 0, "size": (192, 128), "seg_train": 4, "seg_test": 2, "grade_train": 10, "grade_test": 5}
