"""Repository hygiene: nothing half-merged is shipped."""

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_no_merge_conflict_markers_in_tracked_files():
    try:
        files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    marker = re.compile(r"^(<{7} |={7}$|>{7} )", re.M)
    bad = [
        f
        for f in files
        if (ROOT / f).is_file()
        and (ROOT / f).suffix in {".py", ".md", ".toml", ".yaml", ".yml", ".txt", ""}
        and marker.search((ROOT / f).read_text(errors="ignore"))
    ]
    assert not bad, f"merge-conflict markers in {bad}"
