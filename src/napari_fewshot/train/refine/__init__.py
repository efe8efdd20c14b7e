"""PCCS: semi-supervised refinement from the slices a user labelled and the unlabelled rest (``napari-fewshot refine``).

``losses`` (supervised, uncertainty, consistency), ``prototypes`` (signed-distance
iso-layer prototypes, their contrastive loss), ``memory`` (the teacher's class
prototypes, Sinkhorn assignment), ``teacher`` (the mean teacher), ``data`` (labelled
and unlabelled slices from volumes), ``trainer`` (the run).  Applying a refined
model is :mod:`napari_fewshot.core.refined`.
"""
