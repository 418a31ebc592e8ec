"""The shape of the code: one installed namespace, layers that only import downwards, and the Triton
backend's one source. Read from the files (ast), so these run in a second and need no service."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
TOPS = ("flows", "workers", "training")
# workers/ from the bottom up: a module may import its own layer and the ones before it, never a later one.
WORKER_LAYERS = ("spec", "processes", "media", "inference", "serving", "output", "task")
FLOW_LAYERS = ("archive", "analysis", "run", "cli")  # and all of flows/ above workers/


def _modules(*folders: str) -> list[Path]:
    return sorted(p for f in folders for p in (ROOT / f).rglob("*.py"))


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
    return found


def _layer(module: str) -> tuple[str, int] | None:
    parts = module.split(".")
    if parts[0] != "emoframe" or len(parts) < 2:
        return None
    if parts[1] == "workers":
        return ("workers", WORKER_LAYERS.index(parts[2]) if len(parts) > 2 and parts[2] in WORKER_LAYERS else -1)
    return (parts[1], 0)


def test_every_package_folder_is_installed_under_the_emoframe_namespace():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {f"emoframe.{t}": t for t in TOPS}
    folders = {"emoframe." + ".".join(p.parent.relative_to(ROOT).parts)
               for t in TOPS for p in (ROOT / t).rglob("__init__.py")}
    # A folder missing here would work from the checkout (editable install) and vanish from a wheel.
    assert set(config["packages"]) == folders
    stray = [p for t in TOPS for p in (ROOT / t).rglob("*.py") if not (p.parent / "__init__.py").exists()]
    assert not stray, f"modules outside a package: {stray}"


def test_nothing_imports_the_top_level_folders_by_their_bare_names():
    """From a checkout `import workers...` would still work (the repository root is on sys.path under pytest)
    and fail once installed, or load a second copy of a module beside its emoframe.* twin."""
    bare = [f"{p.relative_to(ROOT)}:{line} {mod}" for p in _modules(*TOPS, "tests", "benchmarks")
            for line, mod in _imports(p) if mod.split(".")[0] in TOPS]
    assert not bare


def test_workers_import_only_their_own_layer_or_the_layers_below():
    up = []
    for p in _modules("workers"):
        rel = p.relative_to(ROOT).parts
        if len(rel) < 3:
            continue  # workers/__init__.py
        mine = WORKER_LAYERS.index(rel[1])
        for line, mod in _imports(p):
            target = _layer(mod)
            if target is None:
                continue
            if target[0] != "workers" or target[1] > mine:
                up.append(f"{'/'.join(rel)}:{line} imports {mod}")
    assert not up, "an import that runs back up the layers:\n" + "\n".join(up)


def test_flows_import_only_their_own_layer_or_the_layers_below():
    up = []
    for p in _modules("flows"):
        rel = p.relative_to(ROOT).parts
        if len(rel) < 3:
            continue
        mine = FLOW_LAYERS.index(rel[1])
        for line, mod in _imports(p):
            parts = mod.split(".")
            if parts[:2] == ["emoframe", "flows"] and len(parts) > 2 and FLOW_LAYERS.index(parts[2]) > mine:
                up.append(f"{'/'.join(rel)}:{line} imports {mod}")
    assert not up, "an import that runs back up the layers:\n" + "\n".join(up)


def test_training_does_not_import_the_orchestration():
    up = [f"{p.relative_to(ROOT)}:{line} {mod}" for p in _modules("training")
          for line, mod in _imports(p) if mod.startswith("emoframe.flows")]
    assert not up


@pytest.mark.parametrize("version", sorted(p.name for p in (ROOT / "model_repo" / "expression_fusion").iterdir()
                                           if p.name.isdigit()))
def test_each_model_version_serves_the_backend_source_of_this_checkout(version):
    """Triton loads model.py from each version folder; export copies workers/serving/triton_backend.py there.
    A hand edit of one copy would make versions behave differently with nothing in the package showing it."""
    source = (ROOT / "workers" / "serving" / "triton_backend.py").read_bytes()
    assert (ROOT / "model_repo" / "expression_fusion" / version / "model.py").read_bytes() == source


def test_ruff_finds_nothing():
    """The lint rules in pyproject.toml ([tool.ruff]): bugs, not taste (unused or undefined names, a fixture
    shadowed by an import, a mutable default, a loop variable caught by a closure), and no line over 120."""
    res = subprocess.run([sys.executable, "-m", "ruff", "check", "--output-format", "concise", str(ROOT)],
                         capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert res.returncode == 0, res.stdout + res.stderr


def test_failure_reasons_are_one_list_and_the_readme_table_is_rendered_from_it():
    from emoframe.workers.spec.errors import (REASON_HELP, RETRYABLE_REASONS, TRANSIENT_REASONS, BadInputError,
                                               Reason, reasons_markdown)

    assert set(REASON_HELP) == set(Reason) and RETRYABLE_REASONS | TRANSIENT_REASONS <= set(Reason)
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- failure-reasons:start -->\n")[1].split("<!-- failure-reasons:end -->")[0]
    assert block.strip() == reasons_markdown()
    with pytest.raises(ValueError):  # a typo'd reason fails where it is raised, not as a new code in the output
        BadInputError("decode_crsh", "x")
    # No module spells a reason as a bare string where BadInputError is raised.
    spelled = [f"{p.relative_to(ROOT)}:{n.lineno}" for p in _modules("workers", "flows")
               for n in ast.walk(ast.parse(p.read_text())) if isinstance(n, ast.Call)
               and getattr(n.func, "id", None) == "BadInputError" and n.args and isinstance(n.args[0], ast.Constant)]
    assert not spelled


def test_mypy_finds_nothing(tmp_path):
    """mypy cannot follow setuptools' editable-install import hook, so it reads the folders through links that
    give them their installed names (emoframe.flows -> flows/, ...). Its settings: [tool.mypy] in pyproject.toml."""
    (tmp_path / "emoframe").mkdir()
    for top in TOPS:
        (tmp_path / "emoframe" / top).symlink_to(ROOT / top, target_is_directory=True)
    res = subprocess.run([sys.executable, "-m", "mypy", "--config-file", str(ROOT / "pyproject.toml"),
                          "-p", "emoframe.workers", "-p", "emoframe.flows", "-p", "emoframe.training"],
                         capture_output=True, text=True, cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout


def test_the_readme_retry_table_is_rendered_from_the_one_retry_module():
    from emoframe.workers.spec.retries import retries_markdown

    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- retries:start -->\n")[1].split("<!-- retries:end -->")[0]
    assert block.strip() == retries_markdown()


def test_retry_counts_live_only_in_the_retry_module():
    """A literal retry count or backoff typed anywhere else would be a second policy."""
    import re

    # retries=0 is none, not a count
    pattern = re.compile(r"(max_retries|retries|max_attempts|backoff_s|retry_delay_seconds)\s*[=:][^=]*?\b[1-9]")
    found = []
    for path in [*(ROOT / "workers").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:
        if path.name == "retries.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if pattern.search(line.split("#")[0]):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert not found, found
