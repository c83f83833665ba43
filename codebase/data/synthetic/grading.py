"""The grading rules of the synthetic tree: grades follow the lesions drawn.

  RG 4  neovascular tufts or a preretinal haemorrhage (PDR)
  RG 3  at least SEVERE_HAEMORRHAGES haemorrhages (dots, blots and flames count alike)
  RG 2  any haemorrhage, hard exudate or soft exudate (with microaneurysms)
  RG 1  microaneurysms only
  RG 0  no lesion
  MER 2 a hard exudate within one optic-disc diameter of the fovea; 1 hard exudates, all further
        away; 0 no hard exudate.

The class mixes of the grading and segmentation sets are skewed like IDRiD's (RG 0 and 2 dominate
the grading set; every segmentation image shows DR lesions and hard exudates).
"""
from __future__ import annotations

SEVERE_HAEMORRHAGES = 10

# Grading-set class mix (skewed like IDRiD: RG 0 and 2 dominate) and MER mix when RG >= 2.
RG_MIX = (0.30, 0.10, 0.28, 0.18, 0.14)
MER_MIX_WITH_LESIONS = (0.15, 0.30, 0.55)
# Segmentation images all show DR lesions (as in IDRiD): RG 2-4, always hard exudates.
SEG_RG_MIX = (0.0, 0.0, 0.45, 0.30, 0.25)
SEG_MER_MIX = (0.0, 0.35, 0.65)


def retinopathy_grade(counts: dict[str, int]) -> int:
    """RG from the lesions drawn: counts of MA, HE, EX, SE, NV (tufts), PRH (preretinal)."""
    if counts.get("NV", 0) or counts.get("PRH", 0):
        return 4
    if counts.get("HE", 0) >= SEVERE_HAEMORRHAGES:
        return 3
    if counts.get("HE", 0) or counts.get("EX", 0) or counts.get("SE", 0):
        return 2
    return 1 if counts.get("MA", 0) else 0


def macular_edema_risk(exudate_distances: list[float]) -> int:
    """MER from each hard exudate's nearest distance to the fovea, in disc diameters."""
    if not exudate_distances:
        return 0
    return 2 if min(exudate_distances) <= 1.0 else 1
