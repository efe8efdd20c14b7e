"""Benchmarks on labelled volumes (``napari-fewshot evaluate``): the engine and the peers side by side.

Protocols choose the painted and scored slices, methods segment, metrics score in
millimetres, and the run measures time and memory in one process.  Nothing here
is needed to segment.
"""
