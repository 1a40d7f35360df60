"""The one way benchmarks record what they measured: JSON under benchmarks/results/."""
from __future__ import annotations

import json
from pathlib import Path


def write_results(path, payload: dict) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    print(f"wrote {path}")
