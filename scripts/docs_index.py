"""Write docs/index.md from README.md (the docs' home page is the README, its links made relative to docs/).

    python scripts/docs_index.py        # run after editing README.md; tests/test_docs.py checks it is current
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def index_text(readme: str) -> str:
    """README.md with links into docs/ made relative to docs/."""
    return re.sub(r"\]\(docs/", "](", readme)


if __name__ == "__main__":
    (ROOT / "docs" / "index.md").write_text(index_text((ROOT / "README.md").read_text()))
