"""What every published figure shares: the commit it was measured at, and its table in the README.

Published figures must come from committed code, so a measuring command refuses to publish from a tree with
uncommitted changes to tracked files, and stamps what it writes with the commit. The README shows each
table between a pair of markers; ``tests/test_published_figures.py`` checks the README against the JSON.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"


def git_state() -> dict:
    """HEAD, whether tracked files differ from it, and which."""
    def run(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True).stdout.strip()

    status = run("status", "--porcelain", "--untracked-files=no")
    return {"head": run("rev-parse", "HEAD"), "dirty": bool(status), "changed": status.splitlines()}


def worktree_hash() -> str:
    """Git's tree id of the files as they are on disk (tracked and untracked, less what .gitignore leaves out),
    HEAD's index untouched. Equal to ``git rev-parse COMMIT^{tree}`` exactly when the files are COMMIT's: it
    identifies the code of a copy whose .git is older than the files (a device machine's copy)."""
    with tempfile.TemporaryDirectory() as tmp:
        env = {**os.environ, "GIT_INDEX_FILE": str(Path(tmp) / "index")}
        subprocess.run(["git", "-C", str(ROOT), "add", "-A", "."], env=env, check=True, capture_output=True)
        return subprocess.run(["git", "-C", str(ROOT), "write-tree"], env=env, check=True, capture_output=True,
                              text=True).stdout.strip()


def readme_block(start: str, end: str, path: Path = README) -> str:
    text = path.read_text()
    return text[text.index(start) + len(start):text.index(end)].strip()


def write_readme_block(start: str, end: str, body: str, path: Path = README) -> None:
    """Replace what lies between the markers in ``path`` (README.md, or a page under docs/)."""
    text = path.read_text()
    a, b = text.index(start) + len(start), text.index(end)
    path.write_text(text[:a] + "\n" + body.strip() + "\n" + text[b:])


def publish_state(publish: bool) -> dict:
    """git_state(), after refusing (exit) to publish from a tree with uncommitted changes to tracked files."""
    state = git_state()
    if publish and state["dirty"]:
        import sys

        sys.exit(f"refusing to publish from a tree with uncommitted changes: {state['changed']}")
    return state
