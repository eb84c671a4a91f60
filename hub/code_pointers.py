"""Keeps a folder's code pointers to SmartCLIP's own classes: an allow-list, whatever the key that holds them.

transformers runs a repo's code when it is loaded with `trust_remote_code=True`, at the classes its JSON files name:
`auto_map` (`"AutoTokenizer": ["someone/other--tok.Tok", null]`) and `custom_pipelines` (`{"zero-shot-image-
classification": {"impl": "someone/other--pipe.P", ...}}`). An entry naming another repo makes loading *this* one run
*that* repo's code. The config and the tokenizer keep whatever their source folder held and write it back on save, so
a folder could carry such an entry without anyone having written it. `strip_foreign_code` rewrites every JSON file of
a folder so that only entries naming SmartCLIP's own classes, in code files shipped beside them, remain; any other
string that names code in another repo (`owner/repo--module.Class`), under whatever key, goes too.
"""

import json
import re
import warnings
from collections.abc import Iterable
from pathlib import Path

from modeling_smartclip import SmartCLIPConfig, SmartCLIPModel, SmartCLIPProcessor

# "module.Class" of the classes whose code a pushed folder ships (module = the file name without `.py`).
OWN_CLASSES = frozenset(
    f"{cls.__module__.rsplit('.', 1)[-1]}.{cls.__name__}"
    for cls in (SmartCLIPConfig, SmartCLIPModel, SmartCLIPProcessor)
)
# transformers' keys that name classes to import: `auto_map` (task -> "module.Class" or a [slow, fast] pair) and
# `custom_pipelines` (task -> {"impl": "module.Class", ...}).
CODE_POINTER_KEYS = ("auto_map", "custom_pipelines")
CROSS_REPO_CODE = re.compile(r"[\w.-]+/[\w.-]+--[\w.]+")  # how transformers names a class in another repo


def _is_own(reference, own: frozenset[str], shipped: set[str]) -> bool:
    """`reference`: `"module.Class"`, a `[slow, fast]` pair of them (either may be `None`), or a custom pipeline's
    `{"impl": "module.Class", ...}`."""
    if isinstance(reference, dict):
        reference = reference.get("impl")
    references = reference if isinstance(reference, list) else [reference]
    named = [ref for ref in references if ref is not None]
    return bool(named) and all(
        isinstance(ref, str) and ref in own and f"{ref.split('.', 1)[0]}.py" in shipped for ref in named
    )


def _names_other_code(value: str) -> bool:
    return CROSS_REPO_CODE.fullmatch(value) is not None


def _strip(tree, own: frozenset[str], shipped: set[str], where: str, removed: list[str]):
    """`tree` with every code pointer (at any depth) reduced to its own entries; appends what went to `removed`."""
    if isinstance(tree, list):
        foreign = [item for item in tree if isinstance(item, str) and _names_other_code(item)]
        removed += [f"{where}: {json.dumps(item)}" for item in foreign]
        return [_strip(item, own, shipped, where, removed) for item in tree if item not in foreign]
    if not isinstance(tree, dict):
        return tree
    out = {}
    for key, value in tree.items():
        if key in CODE_POINTER_KEYS and isinstance(value, dict):
            kept = {name: ref for name, ref in value.items() if _is_own(ref, own, shipped)}
            removed += [f"{where}: {key}.{name} -> {json.dumps(ref)}" for name, ref in value.items()
                        if name not in kept]
            if kept:
                out[key] = kept
        elif key in CODE_POINTER_KEYS or (isinstance(value, str) and _names_other_code(value)):
            removed.append(f"{where}: {key} -> {json.dumps(value)}")  # nothing of ours is written this way
        else:
            out[key] = _strip(value, own, shipped, where, removed)
    return out


def strip_foreign_code(folder: str | Path, own: Iterable[str] = OWN_CLASSES) -> list[str]:
    """Removes every code pointer of `folder`'s JSON files that does not name one of `own` ("module.Class") whose
    `module.py` is in `folder`; warns naming each removed entry and returns them (`"file: key.Auto -> ref"`).

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
            path.write_text(json.dumps(cleaned, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
    if removed:
        warnings.warn(
            f"Removed {len(removed)} code pointers of {folder} that name code this package does not ship "
            f"(loading the folder with trust_remote_code=True would have run it): {'; '.join(removed)}.",
            stacklevel=2,
        )
    return removed


__all__ = ["OWN_CLASSES", "strip_foreign_code"]
