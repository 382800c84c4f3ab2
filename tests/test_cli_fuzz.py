"""The CLI fuzzer (tests/fuzz_cli.py) on a fixed sample of its cases: every sub-command, every option that
takes a value, hostile values; each exits 0 or 2 with one `error:` line naming the option, never a
traceback, and a refused case leaves no file. The full sweep is `make fuzz`."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

SAMPLE = 60


def test_a_sample_of_hostile_command_lines_is_refused_cleanly() -> None:
    script = Path(__file__).with_name("fuzz_cli.py")
    done = subprocess.run([sys.executable, str(script), "--sample", str(SAMPLE), "--seed", "0", "--json"],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode in (0, 1), done.stderr[-3000:]
    failures = json.loads(done.stdout)
    assert failures == [], "\n".join(f"{f['case']}: {f['problem']}" for f in failures)
    assert f"[{SAMPLE}/{SAMPLE}]" in done.stderr  # the sample really ran
