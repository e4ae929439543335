"""Train the demo satellite (2D) and CT (3D) models and score them on held-out generated scenes.

Run: ``.venv/bin/python -m bench.bench_train [satellite|ct ...]`` (both by default). Writes
``bench/results/train.json`` with training seconds, final loss and FWIoU per domain.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import torch

from tiler.model.checkpoint import load_model
from tiler.model.train import demo_config, evaluate_fwiou, make_scene, train

RESULTS = Path(__file__).parent / "results" / "train.json"
HELD_OUT = {"satellite": ((1024, 1024), 100, (256, 256)), "ct": ((48, 160, 160), 100, (32, 96, 96))}


def run(domain: str, out_dir: Path) -> dict[str, object]:
    cfg = demo_config(domain, out=str(out_dir / f"{domain}.pt"))
    result = train(cfg, log_every=25)
    shape, seed, roi = HELD_OUT[domain]
    scene = make_scene(demo_config(domain, scene_shape=shape), seed)
    model = load_model(result.checkpoint_path)
    t0 = time.perf_counter()
    score = evaluate_fwiou(model, scene, roi=roi, overlap=0.25)
    infer = time.perf_counter() - t0
    row = {
        "domain": domain,
        "train_seconds": round(result.seconds, 1),
        "steps": cfg.steps,
        "first_loss": round(sum(result.losses[:10]) / 10, 4),
        "final_loss": round(sum(result.losses[-10:]) / 10, 4),
        "heldout_scene": {"shape": list(shape), "seed": seed},
        "roi": list(roi),
        "fwiou": round(score, 4),
        "inference_seconds": round(infer, 1),
        "checkpoint": str(result.checkpoint_path),
    }
    print(json.dumps(row), flush=True)
    return row


def main(argv: list[str]) -> None:
    domains = argv or ["satellite", "ct"]
    out_dir = Path("models")
    rows = {d: run(d, out_dir) for d in domains}
    previous = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results = dict(previous.get("results", {}))
    results.update(rows)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(
        json.dumps(
            {
                "command": "python -m bench.bench_train " + " ".join(domains),
                "machine": f"{platform.machine()} {platform.processor() or ''} torch {torch.__version__}, "
                f"{torch.get_num_threads()} threads",
                "date": datetime.now(UTC).isoformat(timespec="seconds"),
                "results": results,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
