"""The provenance a prediction layer keeps of the runs that wrote it."""

from napari_fewshot._napari.export import record_run


def test_every_run_whose_slices_the_layer_holds_is_recorded_newest_first():
    volume = record_run(None, {"slices": "all", "keep": "painted"}, replaces_all=True)
    assert volume == {"slices": "all", "keep": "painted", "earlier_runs": []}
    preview = record_run(volume, {"slices": [16], "keep": "all"}, replaces_all=False)
    assert preview == {"slices": [16], "keep": "all", "earlier_runs": [{"slices": "all", "keep": "painted"}]}
    another = record_run(preview, {"slices": [3], "keep": "all"}, replaces_all=False)
    assert [run["slices"] for run in another["earlier_runs"]] == [[16], "all"]
    assert record_run(another, {"slices": "all"}, replaces_all=True)["earlier_runs"] == []  # all replaced
