"""Coded concepts (SNOMED CT) for structure names, as DICOM SEG describes its segments.

A segment of a DICOM SEG carries a category and a type code beside its label.
Well-known organ names (``liver``, ``Spleen``, ``kidney_left``, ``inferior vena
cava``, ...) map to their SNOMED CT anatomy concept; any other name (a tumour, a
sub-structure, a name in another language) is described as plain "Tissue", its
label keeping the name.  Only whole names are matched: ``liver tumour`` is not
coded as the liver.
"""

from __future__ import annotations

import re

from pydicom.sr.coding import Code
from pydicom.sr.codedict import codes

#: Normalised structure names (see :func:`normalise`) -> SNOMED CT keyword of pydicom's code dictionary.
ANATOMY: dict[str, str] = {
    "adrenal": "AdrenalGland",
    "adrenal gland": "AdrenalGland",
    "aorta": "Aorta",
    "bladder": "Bladder",
    "brain": "Brain",
    "colon": "Colon",
    "duodenum": "Duodenum",
    "esophagus": "Esophagus",
    "femur": "Femur",
    "gall bladder": "Gallbladder",
    "gallbladder": "Gallbladder",
    "heart": "Heart",
    "inferior vena cava": "InferiorVenaCava",
    "ivc": "InferiorVenaCava",
    "kidney": "Kidney",
    "liver": "Liver",
    "lung": "Lung",
    "oesophagus": "Esophagus",
    "pancreas": "Pancreas",
    "portal vein": "PortalVein",
    "prostate": "Prostate",
    "rectum": "Rectum",
    "sacrum": "Sacrum",
    "small bowel": "SmallIntestine",
    "small intestine": "SmallIntestine",
    "spinal cord": "SpinalCord",
    "spleen": "Spleen",
    "sternum": "Sternum",
    "stomach": "Stomach",
    "thyroid": "Thyroid",
    "trachea": "Trachea",
    "urinary bladder": "Bladder",
    "uterus": "Uterus",
}

#: Category of a coded anatomy concept, and category and type of any other name.
ANATOMICAL_STRUCTURE: Code = codes.SCT.AnatomicalStructure
TISSUE: Code = codes.SCT.Tissue

_SIDE = re.compile(r"\b(left|right)\b")


def normalise(name: str) -> str:
    """``"Kidney_Left"`` -> ``"kidney"``: lower case, ``_``/``-`` as spaces, no side, single spaces."""
    words = re.sub(r"[_\-\s]+", " ", name.lower())
    return " ".join(_SIDE.sub(" ", words).split())


def anatomy_codes(name: str) -> tuple[Code, Code]:
    """The (category, type) codes of a segment named ``name``.

    ``(Anatomical Structure, <organ>)`` for a name in :data:`ANATOMY` (either
    side of a paired organ: the side stays in the segment's label), else
    ``(Tissue, Tissue)``.
    """
    keyword = ANATOMY.get(normalise(name))
    if keyword is None:
        return TISSUE, TISSUE
    return ANATOMICAL_STRUCTURE, getattr(codes.SCT, keyword)
