"""docs/results.md's speed table from benchmarks/results/throughput/*.json: training / inference img/s ratios
to the residual kind (medians of interleaved rounds)."""
from __future__ import annotations

import json
from pathlib import Path

ROOT = Path(__file__).resolve().parent / "results" / "throughput"


def main() -> None:
    for depth in (20, 56, 110):
        for batch in (64, 128):
            path = ROOT / f"resnet{depth}_b{batch}.json"
            if not path.exists():
                continue
            rows = {r["label"].split(":", 1)[1]: r for r in json.loads(path.read_text())["entries"]}
            base = rows["residual"]

            def cell(key: str, rows: dict = rows) -> str:
                r = rows[key]
                return f"{r['ratio_train']:.2f}x / {r['ratio_infer']:.2f}x"

            print(f"| resnet{depth} ({base['train_img_s']:.0f} / {base['infer_img_s']:.0f} img/s residual) | {batch} | "
                  f"{cell('plain')} | {cell('pnnh')} | {cell('pnnh:learner_ratio=0.5')} | "
                  f"{rows['pnnh:plain_form']['ratio_infer']:.2f}x |")


if __name__ == "__main__":
    main()
