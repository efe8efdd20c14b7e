"""What kind of structure a label names: the groups a broad benchmark reports its means by.

One explicit table from label names (as ``labels.json`` spells them in
``../shared/data``; TotalSegmentator's names and the MNI template's tissues) to
kinds.  Names are matched case-insensitively as shell patterns (``rib_*``), in
the table's order; a name the table does not hold is of kind ``other``.
"""

from __future__ import annotations

from fnmatch import fnmatch

#: The kinds in the order reports list them, each with the label-name patterns of its structures.
#: Stomach counts as a large organ (bowel is the intestine); the spinal cord, thin and tubular, as a small organ;
#: cartilage (costal cartilages, intervertebral discs) as bone.
KINDS: dict[str, tuple[str, ...]] = {
    "large organ": ("liver", "spleen", "kidney_*", "stomach", "urinary_bladder", "lung*"),
    "small organ or gland": ("gallbladder", "pancreas", "adrenal_gland_*", "prostate", "spinal_cord"),
    "vessel": ("aorta", "inferior_vena_cava", "portal_vein_and_splenic_vein", "iliac_artery_*", "iliac_vena_*"),
    "bone": ("vertebrae*", "sacrum", "femur_*", "hip_*", "rib_*", "costal_cartilages", "intervertebral_discs"),
    "muscle": ("gluteus_*", "autochthon_*", "iliopsoas_*"),
    "bowel": ("small_bowel", "duodenum", "colon"),
    "brain tissue": ("grey matter", "white matter"),
}
#: The kind of a structure the table does not name.
OTHER = "other"


def kind(name: str) -> str:
    """The kind of the structure called ``name`` (a key of :data:`KINDS`, or :data:`OTHER`)."""
    for group, patterns in KINDS.items():
        if any(fnmatch(name.lower(), pattern) for pattern in patterns):
            return group
    return OTHER
