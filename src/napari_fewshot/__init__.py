"""napari-fewshot: few-shot segmentation of CT and MRI volumes in napari."""

__version__ = "0.1.0"
