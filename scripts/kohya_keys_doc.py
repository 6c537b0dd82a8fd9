#!/usr/bin/env python3
"""Write docs/kohya-keys.md from gpurun/kohya_keys.py (tests/test_kohya_keys.py fails when the two differ).

Run `python scripts/kohya_keys_doc.py` to rewrite the doc, with `--check` to exit 1 if it is stale.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from gpurun.kohya_keys import markdown  # noqa: E402  (after the path is set, so the checkout's gpurun is used)

DOC = ROOT / "docs" / "kohya-keys.md"


def main(argv: list[str]) -> int:
    text = markdown()
    if "--check" in argv:
        if not DOC.is_file() or DOC.read_text(encoding="utf-8") != text:
            print(f"{DOC} is stale: run python scripts/kohya_keys_doc.py", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text, encoding="utf-8")
    print(f"wrote {DOC}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
