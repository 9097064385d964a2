"""torchrun entry: ``python -m torch.distributed.run ... -m nemo_migrate.runtime.worker RUN_DIR/.launch/launch.json``."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m nemo_migrate.runtime.worker LAUNCH_JSON", file=sys.stderr)
        return 2
    payload = json.loads(Path(argv[0]).read_text())
    from .spec import Spec
    from .trainer import run_training

    spec = Spec.from_dict(payload["spec"])
    return run_training(spec, run_dir=Path(payload["run_dir"]), raw_cfg=payload["cfg"], merge=payload["merge"],
                        stop_after=payload.get("stop_after"), tokenizer_path=payload["tokenizer_path"],
                        tokenizer_note=payload["tokenizer_note"], resume=payload.get("resume", "auto"))


if __name__ == "__main__":
    sys.exit(main())
