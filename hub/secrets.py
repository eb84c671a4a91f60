"""The package's one credential filter: what it writes, publishes or prints carries no token, key or password.

A value is a credential by its name (`hub_token`, `use_auth_token`, `accessToken`, `wandb_api_key`, `db_pass`, `pwd`,
`Authorization`) or by its look wherever it appears (`SECRET_VALUES`: Hub, cloud and forge tokens, `Bearer ...`,
JWTs, hex and base64 keys, PEM keys, the password of a `scheme://user:password@host` URL). `scrub` removes named
credentials from JSON-like trees (lists of dicts included) and redacts the rest; `redact` does the latter to text
bound for a terminal, a log or a card; `scrub_json_files` applies `scrub` to every JSON file of a folder before it is
published.
"""

import json
import re
import warnings
from pathlib import Path

REDACTED = "REDACTED"  # a plain YAML scalar, unlike "***", so a redacted value keeps a card's metadata valid
# Words of a key's name that make it a credential wherever they stand (`aws_secret_access_key`, `use_auth_token`).
SECRET_WORDS = frozenset(
    {"secret", "secrets", "password", "passwd", "passphrase", "pwd", "credential", "credentials", "auth",
     "authorization", "apikey", "cookie"}
)
# Last words of a key's name that make it a credential (`hub_token`, `wandb.key`, `db_pass`, `accessToken`)...
SECRET_LAST_WORDS = frozenset({"token", "key", "pass"})
# ...unless the word before says it is a tokenizer's special token (`pad_token`, `mask_token`), not a credential.
SPECIAL_TOKEN_ROLES = frozenset(
    {"pad", "bos", "eos", "unk", "sep", "cls", "mask", "image", "video", "audio", "boi", "eoi", "start", "end"}
)
SECRET_VALUES = tuple(
    re.compile(pattern)
    for pattern in (
        r"\bhf_[A-Za-z0-9]{20,}",  # Hugging Face tokens
        r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b",  # AWS access key ids
        r"(?<=://)[^/\s:@]+:[^/\s@]+(?=@)",  # the user:password of a URL
        r"-----BEGIN [A-Z ]*PRIVATE KEY-----[^-]*(?:-----END [A-Z ]*PRIVATE KEY-----)?",  # PEM private keys
        r"\b(?:Bearer|Basic|Token)\s+[A-Za-z0-9._~+/=-]{8,}",  # an Authorization header's value
        r"\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # JSON Web Tokens
        r"\b[0-9a-fA-F]{32,}\b",  # hex keys: 32 (API keys), 40 (Weights & Biases; also a git commit id), 64
        r"\b(?:sk|pk|rk|ghp|gho|ghs|ghu|glpat|xox[abpr])[-_][A-Za-z0-9_-]{16,}",  # OpenAI, GitHub, GitLab, Slack
        # Long key-like strings: 32+ characters of base64's alphabet mixing upper case, lower case and digits ("-"
        # and "_" end a run, so that hyphenated names such as run names are not taken for keys).
        r"(?<![A-Za-z0-9+/=])(?=[A-Za-z0-9+/=]*[a-z])(?=[A-Za-z0-9+/=]*[A-Z])(?=[A-Za-z0-9+/=]*[0-9])"
        r"[A-Za-z0-9+/=]{32,}",
    )
)


def _words(name: str) -> list[str]:
    """`accessToken` -> access, token; `wandb.api_key` -> wandb, api, key."""
    spaced = re.sub(r"([a-z0-9])([A-Z])", r"\1 \2", str(name))
    return [word for word in re.split(r"[^a-z0-9]+", spaced.lower()) if word]


def is_secret_name(name: str) -> bool:
    """Whether a value stored under `name` is a credential (`hub_token`, `accessToken`, `db_pass`; not `pad_token`)."""
    words = _words(name)
    if not words:
        return False
    if SECRET_WORDS.intersection(words):
        return True
    return words[-1] in SECRET_LAST_WORDS and not (len(words) > 1 and words[-2] in SPECIAL_TOKEN_ROLES)


def has_secret(text: object) -> bool:
    """Whether `text` holds something that looks like a credential (`SECRET_VALUES`)."""
    return any(pattern.search(str(text)) for pattern in SECRET_VALUES)


def redact(text: object) -> str:
    """`text` with every credential-looking part (`SECRET_VALUES`) replaced by `REDACTED`."""
    text = str(text)
    for pattern in SECRET_VALUES:
        text = pattern.sub(REDACTED, text)
    return text


def scrub(tree, where: str = "") -> tuple[object, list[str]]:
    """`tree` (JSON-like: dicts, lists, scalars) without credentials: entries named as one are removed, credential-
    looking parts of strings are redacted, at any depth. Returns the cleaned copy and the paths of what was taken
    (`"training.hub_token"`, `"data.urls[0]"`)."""
    if isinstance(tree, dict):
        cleaned, found = {}, []
        for key, value in tree.items():
            path = f"{where}.{key}" if where else str(key)
            if is_secret_name(key) and isinstance(value, (str, dict, list)) and value not in ("", [], {}):
                found.append(path)
                continue
            cleaned[key], inner = scrub(value, path)
            found += inner
        return cleaned, found
    if isinstance(tree, (list, tuple)):
        cleaned, found = [], []
        for index, item in enumerate(tree):
            item, inner = scrub(item, f"{where}[{index}]")
            cleaned.append(item)
            found += inner
        return cleaned, found
    if isinstance(tree, str) and has_secret(tree):
        return redact(tree), [where]
    return tree, []


def scrub_json_files(folder: str | Path) -> list[str]:
    """Rewrites every JSON file under `folder` that holds a credential without it (`scrub`); warns naming, and
    returns, `"file: path"` for each one taken. The values are never returned or printed."""
    folder = Path(folder)
    found = []
    for path in sorted(folder.rglob("*.json")):
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not valid JSON: {error}") from error
        cleaned, inner = scrub(data)
        if inner:
            path.write_text(json.dumps(cleaned, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")
            found += [f"{path.relative_to(folder).as_posix()}: {where}" for where in inner]
    if found:
        warnings.warn(f"Left out of {folder}, as they look like credentials: {', '.join(found)}.", stacklevel=2)
    return found


__all__ = ["REDACTED", "has_secret", "is_secret_name", "redact", "scrub", "scrub_json_files"]
