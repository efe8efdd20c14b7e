"""Encoding speeds measured on this machine: kept in the process and in the user's cache folder."""

import napari_fewshot.core.rates as rates


def test_a_measured_rate_is_kept_across_processes_and_a_broken_file_only_loses_it(tmp_path, monkeypatch):
    monkeypatch.setenv("NAPARI_FEWSHOT_CACHE", str(tmp_path))
    monkeypatch.setattr(rates, "_measured", {})
    key = rates.rate_key("litemedsam", "openvino f32 on cpu, 2 threads")
    assert rates.measured_rate(key) is None  # nothing measured: no constant from elsewhere
    rates.remember_rate(key, 2.9)
    rates.remember_rate(key, float("nan"))  # not a rate: ignored
    monkeypatch.setattr(rates, "_measured", {})  # another process
    assert rates.measured_rate(key) == 2.9
    (tmp_path / rates.RATES_FILE).write_text("{not json")
    monkeypatch.setattr(rates, "_measured", {})
    assert rates.measured_rate(key) is None
