"""Keeps a Hub-ready folder's `auto_map` entries to SmartCLIP's own classes.

`auto_map` tells transformers which code to run when a repo is loaded with `trust_remote_code=True`; an entry such
as `"AutoTokenizer": ["someone/other--tok.Tok", null]` makes loading *this* repo run code from *another* one. The
config and the tokenizer keep whatever `auto_map` the folder they were loaded from had, and write it back on save,
so a published folder could carry such an entry without anyone having written it. Staging rewrites every JSON file
of the folder so that only entries naming SmartCLIP's own classes, in code files shipped beside them, remain.
"""

import json
import warnings
from collections.abc import Iterable
from pathlib import Path

from modeling_smartclip import SmartCLIPConfig, SmartCLIPModel, SmartCLIPProcessor

# "module.Class" of the classes whose code a pushed folder ships (module = the file name without `.py`).
OWN_CLASSES = frozenset(
    f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
    for cls in (SmartCLIPConfig, SmartCLIPModel, SmartCLIPProcessor)
)


def _is_own(reference, own: frozenset[str], shipped: set[str]) -> bool:
    """`reference`: `"module.Class"`, or a `[slow, fast]` pair of them (either may be `None`)."""
    references = reference if isinstance(reference, list) else [reference]
    named = [ref for ref in references if ref is not None]
    return bool(named) and all(
        isinstance(ref, str) and ref in own and f"{ref.split('.', 1)[0]}.py" in shipped for ref in named
    )


def _strip(tree, own: frozenset[str], shipped: set[str], where: str, removed: list[str]):
    """`tree` with every `auto_map` (at any depth) reduced to its own entries; appends what went to `removed`."""
    if isinstance(tree, list):
        return [_strip(item, own, shipped, where, removed) for item in tree]
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key == "auto_map" and isinstance(value, dict):
            kept = {name: ref for name, ref in value.items() if _is_own(ref, own, shipped)}
            removed += [f"{where}: {name} -> {json.dumps(ref)}" for name, ref in value.items() if name not in kept]
            if kept:
                out[key] = kept
        elif key == "auto_map":  # not a mapping: nothing transformers could use, and nothing to keep
            removed.append(f"{where}: auto_map -> {json.dumps(value)}")
        else:
            out[key] = _strip(value, own, shipped, where, removed)
    return out


def strip_foreign_auto_map(folder: str | Path, own: Iterable[str] = OWN_CLASSES) -> list[str]:
    """Removes every `auto_map` entry of `folder`'s JSON files that does not name one of `own` ("module.Class")
    whose `module.py` is in `folder`; warns naming each removed entry and returns them (`"file: Auto -> ref"`).

    `own=()` removes every entry (a folder that ships no code, such as an exported text encoder).
    """
    folder, own = Path(folder), frozenset(own)
    shipped = {path.name for path in folder.glob("*.py")}
    removed: list[str] = []
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        before = len(removed)
        cleaned = _strip(data, own, shipped, path.relative_to(folder).as_posix(), removed)
        if len(removed) > before:
            path.write_text(json.dumps(cleaned, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    if removed:
        warnings.warn(
            f"Removed {len(removed)} auto_map entries of {folder} that point at code this package does not ship "
            f"(loading the folder with trust_remote_code=True would have run it): {'; '.join(removed)}.",
            stacklevel=2,
        )
    return removed


__all__ = ["OWN_CLASSES", "strip_foreign_auto_map"]
