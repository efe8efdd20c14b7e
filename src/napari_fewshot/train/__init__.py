"""Self-supervised training: superpixel pseudo-labels, episodes, the trainer (``napari-fewshot train``).

Nothing here is needed to segment; the engine only reads the model files it writes.
"""
