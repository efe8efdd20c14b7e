"""benchmarks/registered.py: the engine's slices drawn by the registration peer, as a method evaluate runs."""

import numpy as np
from registered import RegisteredInside, registered_inside

from napari_fewshot.evaluation.methods import METHODS, method, register_method


def test_registered_draws_the_slices_the_engine_predicts_where_it_has_a_mask(monkeypatch):
    prediction = np.zeros((4, 5, 5), bool)
    prediction[1:3, 1:4, 1:4] = True  # the engine: slices 1 and 2
    registered = np.zeros_like(prediction)
    registered[0:2, 2:5, 2:5] = True  # registration: slices 0 and 1
    fused = registered_inside(prediction, registered)
    np.testing.assert_array_equal(fused[1], registered[1])  # both: registration's boundary
    np.testing.assert_array_equal(fused[2], prediction[2])  # registration has nothing there: the engine's
    assert not fused[0].any() and not fused[3].any()  # the engine says the structure is absent
    name = "alpnet+nofollow+registered"
    monkeypatch.setitem(METHODS, name, None)  # gone again after the test
    register_method(name, lambda: RegisteredInside(name))
    fusion = method(name)
    assert isinstance(fusion, RegisteredInside) and fusion.engine.options.follow_anatomy is False
