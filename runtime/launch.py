"""A quiet torchrun: ``python -m nemo_migrate.runtime.launch <torchrun args>``.

Same as ``python -m torch.distributed.run``, but a failed worker (which already printed its own one-paragraph
error on rank 0) ends the launch with that worker's exit code instead of torchrun's ChildFailedError traceback.
"""

from __future__ import annotations

import logging
import sys


def main(argv: list[str] | None = None) -> int:
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import parse_args, run

    logging.getLogger("torch.distributed.elastic").setLevel(logging.CRITICAL)
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        run(args)
    except ChildFailedError as e:
        codes = [f.exitcode for f in e.failures.values()]
        positive = [c for c in codes if c and c > 0]
        if not positive:
            print(f"nemo-migrate run: a worker was killed (exit codes {codes})", file=sys.stderr, flush=True)
        return positive[0] if positive else 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
