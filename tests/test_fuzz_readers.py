"""The readers under fuzzed headers (benchmarks/fuzz_readers.py with a small budget and a fixed seed).

It runs in a child process: a reader that crashes (as ITK did on MetaImage
files with an absurd NDims) ends that process, not the test run, and the last
line it printed names the file.
"""

import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "fuzz_readers.py"


def test_mutated_headers_read_or_raise_the_readers_error():
    result = subprocess.run([sys.executable, str(SCRIPT), "--examples", "400", "--seed", "0"],
                            capture_output=True, text=True, timeout=180)  # a few seconds; a hang ends it
    last = [line for line in result.stdout.splitlines() if line.startswith("reading")][-1:]
    assert result.returncode == 0, f"{last} (exit status {result.returncode})\n{result.stdout[-3000:]}{result.stderr[-3000:]}"
    assert "400 mutated files" in result.stdout and "none crashed, hung or failed otherwise" in result.stdout
