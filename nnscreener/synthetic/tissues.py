"""Tissue classes of the synthetic CT phantom and their attenuation in Hounsfield units.

Each voxel of the phantom's anatomy carries one :class:`Tissue` id. Its HU value is the tissue's mean for the
patient's contrast phase (jittered per patient) plus a smooth texture of the tissue's amplitude; blur and scanner
noise come later (:mod:`nnscreener.synthetic.noise`). Values follow typical clinical CT: fat about -100 HU,
lung parenchyma about -850 HU, muscle 40-60 HU, liver 55-65 HU unenhanced and about 110 HU portal-venous, bone
200-1000 HU.
"""
from __future__ import annotations

from enum import IntEnum
from typing import Dict, Tuple

import numpy as np

PHASES = ("unenhanced", "arterial", "venous")


class Tissue(IntEnum):
    """Tissue ids of the anatomy map (uint8)."""

    AIR = 0
    PAD = 1  # foam mattress under the patient
    TABLE_SHELL = 2  # carbon-fibre shell of the couch
    TABLE_CORE = 3  # foam core of the couch
    SKIN = 4
    FAT = 5  # subcutaneous fat
    MUSCLE = 6
    LUNG = 7
    AIRWAY_LUMEN = 8
    AIRWAY_WALL = 9
    PULMONARY_VESSEL = 10
    ARTERIAL_BLOOD = 11  # aorta, pulmonary trunk, heart chambers
    VENOUS_BLOOD = 12  # caval veins
    MYOCARDIUM = 13
    CORTICAL_BONE = 14
    CANCELLOUS_BONE = 15
    DISC = 16
    CARTILAGE = 17  # costal cartilage
    SPINAL_CANAL = 18
    LIVER = 19
    GALLBLADDER = 20
    SPLEEN = 21
    KIDNEY_CORTEX = 22
    KIDNEY_MEDULLA = 23
    BOWEL_WALL = 24
    BOWEL_FLUID = 25
    BOWEL_GAS = 26
    FECES = 27
    VISCERAL_FAT = 28  # mediastinal, pericardial, abdominal and renal-sinus fat (same attenuation as FAT)


# (unenhanced, arterial, venous) mean HU, texture amplitude (HU), per-patient jitter of the mean (HU)
_HU_TABLE: Dict[Tissue, Tuple[Tuple[float, float, float], float, float]] = {
    Tissue.AIR: ((-1000.0, -1000.0, -1000.0), 0.0, 0.0),
    Tissue.PAD: ((-930.0, -930.0, -930.0), 10.0, 20.0),
    Tissue.TABLE_SHELL: ((250.0, 250.0, 250.0), 30.0, 60.0),
    Tissue.TABLE_CORE: ((-960.0, -960.0, -960.0), 5.0, 10.0),
    Tissue.SKIN: ((35.0, 40.0, 40.0), 5.0, 5.0),
    Tissue.FAT: ((-100.0, -100.0, -100.0), 6.0, 8.0),
    Tissue.MUSCLE: ((48.0, 55.0, 58.0), 5.0, 5.0),
    Tissue.LUNG: ((-860.0, -860.0, -860.0), 18.0, 25.0),
    Tissue.AIRWAY_LUMEN: ((-995.0, -995.0, -995.0), 2.0, 3.0),
    Tissue.AIRWAY_WALL: ((30.0, 40.0, 40.0), 5.0, 10.0),
    Tissue.PULMONARY_VESSEL: ((40.0, 260.0, 160.0), 5.0, 20.0),
    Tissue.ARTERIAL_BLOOD: ((42.0, 300.0, 165.0), 5.0, 25.0),
    Tissue.VENOUS_BLOOD: ((40.0, 110.0, 150.0), 8.0, 20.0),
    Tissue.MYOCARDIUM: ((45.0, 110.0, 100.0), 6.0, 10.0),
    Tissue.CORTICAL_BONE: ((900.0, 900.0, 900.0), 60.0, 120.0),
    Tissue.CANCELLOUS_BONE: ((260.0, 260.0, 260.0), 35.0, 50.0),
    Tissue.DISC: ((85.0, 85.0, 85.0), 6.0, 8.0),
    Tissue.CARTILAGE: ((120.0, 120.0, 120.0), 10.0, 15.0),
    Tissue.SPINAL_CANAL: ((22.0, 22.0, 22.0), 4.0, 5.0),
    Tissue.LIVER: ((58.0, 75.0, 110.0), 5.0, 6.0),
    Tissue.GALLBLADDER: ((12.0, 12.0, 12.0), 3.0, 5.0),
    Tissue.SPLEEN: ((48.0, 120.0, 115.0), 5.0, 6.0),
    Tissue.KIDNEY_CORTEX: ((35.0, 185.0, 170.0), 6.0, 15.0),
    Tissue.KIDNEY_MEDULLA: ((30.0, 80.0, 160.0), 6.0, 15.0),
    Tissue.BOWEL_WALL: ((40.0, 85.0, 90.0), 6.0, 8.0),
    Tissue.BOWEL_FLUID: ((15.0, 15.0, 15.0), 5.0, 8.0),
    Tissue.BOWEL_GAS: ((-990.0, -990.0, -990.0), 5.0, 5.0),
    Tissue.FECES: ((-80.0, -80.0, -80.0), 120.0, 30.0),
    Tissue.VISCERAL_FAT: ((-100.0, -100.0, -100.0), 6.0, 0.0),
}

NUM_TISSUES = len(Tissue)
assert set(_HU_TABLE) == set(Tissue)


def tissue_names() -> Dict[int, str]:
    """Tissue id -> lower-case name, e.g. ``{7: "lung", ...}``."""
    return {int(t): t.name.lower() for t in Tissue}


def sample_tissue_hu(phase: str, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Per-patient HU lookup tables.

    Args:
        phase: contrast phase, one of :data:`PHASES`.
        rng: the patient's random generator.

    Returns:
        ``(mean_hu, texture_hu)``: two float32 arrays of length :data:`NUM_TISSUES`, indexed by tissue id: the
        tissue's mean HU for this patient and the amplitude (HU) of its smooth texture.
    """
    k = PHASES.index(phase)
    mean = np.zeros(NUM_TISSUES, np.float32)
    texture = np.zeros(NUM_TISSUES, np.float32)
    for tissue in Tissue:
        means, amplitude, jitter = _HU_TABLE[tissue]
        mean[tissue] = means[k] + rng.uniform(-jitter, jitter)
        texture[tissue] = amplitude
    mean[Tissue.VISCERAL_FAT] = mean[Tissue.FAT]
    return mean, texture
