"""Algorithms on numpy/torch arrays; no napari or Qt imports."""
