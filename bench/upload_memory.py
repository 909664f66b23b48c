"""The web process's memory under parallel image uploads: resident before, at its peak, and after.

Starts `python -m app serve` on a fresh data dir (no runner: only the web process is measured),
then sends --uploads uploads at once of one small PNG (a few hundred KB) that decodes to just
under the pixel limit, and reads the web process's resident memory from /proc: VmRSS before and
after, VmHWM (the kernel's high-water mark of resident memory) for the peak.

    .venv/bin/python bench/upload_memory.py [--uploads 8]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests import upload_corpus as corpus  # noqa: E402
from tests.portal import Portal  # noqa: E402  (the same real-portal harness the tests use)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uploads", type=int, default=8, help="uploads sent at once")
    args = parser.parse_args()

    png = corpus.just_under_the_pixel_limit()
    small = corpus.encode(corpus.photo(), "PNG")
    with tempfile.TemporaryDirectory() as tmp:
        env = {"AVP_RUNNER_PYTHON": "false", "AVP_SPARE_RUNNER": "off"}
        portal = Portal(data_dir=Path(tmp) / "data", env=env).start()
        try:
            with portal.client(timeout=600) as client:
                client.post("/api/uploads", files={"file": ("small.png", small)})  # every import done first
                before, _ = portal.memory_mb()

                def send(i: int) -> int:
                    return client.post("/api/uploads", files={"file": (f"{i}.png", png)}).status_code

                with ThreadPoolExecutor(args.uploads) as pool:
                    statuses = list(pool.map(send, range(args.uploads)))
            after, peak = portal.memory_mb()
        finally:
            portal.stop()
    print(f"{args.uploads} uploads at once of a {len(png) / 1024:.0f} KB PNG just under the pixel limit: {statuses}")
    print(f"web process RSS: before {before:.0f} MB, peak {peak:.0f} MB, after {after:.0f} MB")


if __name__ == "__main__":
    main()
