"""The README and docs/ name only what exists: every repository path they name is there, every command is an
installed entry point or an importable module whose `--help` exits 0, and the README's Python snippet runs."""

import contextlib
import importlib
import importlib.metadata
import io
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# What the checkout holds; `outputs/` is where the commands write (git ignores it), so a page may name what is not yet
# there.
TOP_LEVEL = {path.name for path in ROOT.iterdir()} - {"outputs"}
# A command word in code: not part of a path, a file name or a quoted string (`me/smartclip-demo`, `"smartclip-b16"`).
COMMAND = re.compile(r"(?<![\w/.\"'-])smartclip-[a-z][a-z-]*(?![\w/.\"'-])")
MODULE = re.compile(r"python -m (\w+(?:\.\w+)*)(?!\w|\.[\w<])")  # whole names; not `python -m bench.<name>`


def code_of(text: str) -> str:
    """The fenced blocks, indented blocks and inline code spans of a markdown page, one per line."""
    fenced = re.findall(r"```[^\n]*\n(.*?)```", text, flags=re.S)
    indented = re.findall(r"^(?: {4}.*\n?)+", re.sub(r"```.*?```", "", text, flags=re.S), flags=re.M)
    inline = re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return "\n".join(fenced + indented + inline)


def named_paths(page: Path) -> set[Path]:
    """Link targets in the repository, and code spans that are paths under one of its top-level entries."""
    text = page.read_text(encoding="utf-8")
    paths = set()
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if not re.match(r"[a-z]+:", target) and not target.startswith("#"):
            paths.add((page.parent / target.split("#")[0]).resolve())
    for span in re.findall(r"`([^`\s]+)`", text):
        if "/" in span and span.split("/")[0] in TOP_LEVEL and not set("*{<[") & set(span):
            paths.add(ROOT / span)
    return paths


def entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.distribution("smartclip").entry_points
            if ep.group == "console_scripts"}


def exits_zero_on_help(main) -> str:
    """Runs `main(["--help"])` and returns what it printed; fails unless it exits with status 0."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), pytest.raises(SystemExit) as exited:
        main(["--help"])
    assert exited.value.code in (0, None), out.getvalue()[-500:]
    return out.getvalue()


def test_readme_is_a_front_door_under_200_lines():
    assert len((ROOT / "README.md").read_text(encoding="utf-8").splitlines()) < 200


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.name)
def test_every_named_path_exists(page):
    missing = sorted(str(path.relative_to(ROOT)) for path in named_paths(page) if not path.exists())
    assert missing == []


def test_every_named_command_is_installed_and_answers_help():
    installed = entry_points()
    named = {name for page in PAGES for name in COMMAND.findall(code_of(page.read_text(encoding="utf-8")))}
    assert named and named <= set(installed), sorted(named - set(installed))
    for name in sorted(named):
        assert "usage" in exits_zero_on_help(installed[name].load()).lower(), name


def test_every_named_module_runs_and_answers_help():
    named = {name for page in PAGES for name in MODULE.findall(page.read_text(encoding="utf-8"))}
    named -= {"pytest"}
    assert named
    for name in sorted(named):
        module = importlib.import_module(name)
        if hasattr(module, "main"):
            exits_zero_on_help(module.main)
        else:  # a benchmark: `python -m bench.<name>` parses `arguments()` under `__main__`
            with contextlib.redirect_stdout(io.StringIO()), pytest.raises(SystemExit) as exited:
                module.arguments().parse_args(["--help"])
            assert exited.value.code == 0, name


def test_readme_python_snippet_runs_offline(tmp_path, clip_dir, monkeypatch):
    """The "Use it from Python" block, with the tiny local CLIP in place of the Hub id, in an empty folder."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    (snippet,) = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert '"openai/clip-vit-base-patch16"' in snippet
    monkeypatch.chdir(tmp_path)
    with contextlib.redirect_stdout(io.StringIO()):
        exec(compile(snippet.replace('"openai/clip-vit-base-patch16"', repr(str(clip_dir))), "README.md", "exec"), {})
    assert (tmp_path / "smartclip-b16" / "config.json").is_file()
