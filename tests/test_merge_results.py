"""benchmarks/merge_results.py: evaluate runs split over processes, merged into one result."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "merge_results.py"
SETTINGS = dict(machine="x86_64, 16 cores", device="cuda", runtime="torch f16 on cuda", encoder="litemedsam", repeats=1,
                nsd_tolerance_mm=1.0, date="2026-11-30")


def run(tmp_path: Path, method: str, values: list[int], encode_seconds: float, **changed) -> Path:
    rows = [dict(case="ct", structure=f"s{v}", value=v, kind="bone", protocol="three", method=method, support="ct",
                 support_slices=[1, 2, 3], dice=0.5 + v / 10, dice_extent=0.6, hd95_mm=3.0, nsd=0.4, seconds=1.0,
                 seconds_all=[1.0], peak_mib=100.0) for v in values]
    result = {**SETTINGS, **changed, "cases": {"ct": {"shape": [9, 8, 8], "spacing_mm": [3.0, 1.0, 1.0]}},
              "encode": {"ct": {"seconds": encode_seconds, "slices": 9, "peak_mib": 50.0}}, "rows": rows}
    path = tmp_path / f"{method}-{values[0]}-{encode_seconds}.json"
    path.write_text(json.dumps(result))
    return path


def merge(*arguments) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), *map(str, arguments)], capture_output=True, text=True)


def test_runs_merge_in_order_with_the_encoding_times_of_the_runs_that_encoded(tmp_path):
    warm = run(tmp_path, "alpnet", [1], encode_seconds=9.5)
    chunks = [run(tmp_path, "alpnet", [1, 2], 0.2), run(tmp_path, "alpnet", [3], 0.3), run(tmp_path, "dspnet", [1, 2, 3], 0.4)]
    done = merge(*chunks, "--encode-from", warm, "--out", tmp_path / "out")
    assert done.returncode == 0, done.stderr
    merged = json.loads((tmp_path / "out" / "results.json").read_text())
    assert [(r["method"], r["value"]) for r in merged["rows"]] == [
        ("alpnet", 1), ("alpnet", 2), ("alpnet", 3), ("dspnet", 1), ("dspnet", 2), ("dspnet", 3)]
    assert merged["encode"]["ct"]["seconds"] == 9.5 and merged["runtime"] == "torch f16 on cuda"
    table = (tmp_path / "out" / "results.md").read_text()
    assert "| bone (3) | 0.700 (0.600) | 0.700 (0.600) |" in table and "vs `dspnet`: +0.000 over 3 structures" in table


def test_a_task_given_twice_or_runs_made_otherwise_are_refused(tmp_path):
    twice = merge(run(tmp_path, "alpnet", [1, 2], 0.2), run(tmp_path, "alpnet", [2], 0.3), "--out", tmp_path / "a")
    assert twice.returncode != 0 and "('alpnet', 'three', 'ct', 2, 'ct') is in two runs" in twice.stderr
    other = merge(run(tmp_path, "alpnet", [1], 0.2), run(tmp_path, "alpnet", [2], 0.3, runtime="openvino bf16 on cpu"),
                  "--out", tmp_path / "b")
    assert other.returncode != 0 and "the runs differ in runtime" in other.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
