"""Writes a Hugging Face Space folder that serves the demo for a model repo: app code, requirements, card, gallery.

The Space runs the demo's `app.py` (`smartclip_demo.app`) unchanged; it finds its model in `space_config.json` and
its retrieval gallery in `gallery/` (the built-in test scenes as PNGs, with their captions). Nothing else goes in: no
weights, no tokens. The demo, and gradio with it, is imported only when a Space is written (the `demo` extra).
"""

import json
from importlib.metadata import version
from pathlib import Path
from types import ModuleType

from huggingface_hub.utils import validate_repo_id

REQUIREMENTS = ("torch", "transformers>=5,<6", "pillow", "numpy", "matplotlib")
SPACE_GALLERY_SIZE = 32


def demo_app() -> ModuleType:
    """`smartclip_demo.app`, the file a Space runs; a ValueError naming the missing extra if it cannot be imported."""
    try:
        from smartclip_demo import app
    except ImportError as error:
        raise ValueError(f"A Space needs the demo (pip install 'smartclip[demo]'): {error}") from error
    return app


def space_readme(model_repo_id: str, gradio_version: str) -> str:
    """The Space card: the YAML the Hub reads (`sdk: gradio`, the app file, the linked model) and a short text."""
    return f"""---
title: SmartCLIP demo
emoji: 🧩
colorFrom: indigo
colorTo: blue
sdk: gradio
sdk_version: {gradio_version}
app_file: app.py
pinned: false
license: apache-2.0
models:
  - {model_repo_id}
short_description: Zero-shot, retrieval and caption masks of a SmartCLIP model
---

# SmartCLIP demo

An interactive demo of [{model_repo_id}](https://huggingface.co/{model_repo_id}), a SmartCLIP model (CLIP plus a
head that predicts, from a caption, a mask over the embedding dimensions the caption talks about; Xie et al.,
CVPR 2025). The model is loaded with `trust_remote_code=True`.

- **Zero-shot**: an image, comma-separated labels and a prompt template; scores through
  `pipeline("zero-shot-image-classification")`.
- **Retrieval**: a caption searches the gallery of built-in test scenes, an image searches their captions, ranked
  by plain (CLIP) or modular (masked) scoring, with both scores shown.
- **Mask inspection**: captions (one per line) give a heatmap of their masks, the overlap between them and, for an
  uploaded image, the plain score next to the masked score.

Set the `{demo_app().MODEL_ENV_VAR}` variable in the Space settings to serve another SmartCLIP repo.
"""


def write_gallery(folder: Path, size: int) -> list[Path]:
    """`size` built-in test scenes as PNGs plus their captions, one per line, in `captions.txt`."""
    app = demo_app()
    scenes = app.builtin_gallery()
    if scenes is None:
        raise ValueError("The Space gallery needs the built-in scenes: install smartclip (smartclip_data).")
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(scenes.images[:size]):
        paths.append(folder / f"scene_{i:03d}.png")
        image.save(paths[-1])
    paths.append(folder / app.CAPTIONS_FILE)
    paths[-1].write_text("\n".join(scenes.captions) + "\n", encoding="utf-8")
    return paths


def write_space_folder(out_dir: str | Path, model_repo_id: str, gallery_size: int = SPACE_GALLERY_SIZE) -> list[str]:
    """Writes the Space files for `model_repo_id` into `out_dir` and returns their paths relative to it, sorted.

    Files: `app.py` (a copy of `smartclip_demo/app.py`), `space_config.json` (the model repo id),
    `requirements.txt`, `README.md` (Space metadata) and `gallery/` (`gallery_size` scene PNGs and `captions.txt`).
    Existing files of the same names are overwritten; other files in `out_dir` are left alone and not listed.
    """
    validate_repo_id(model_repo_id)  # raises HFValidationError (a ValueError) naming the bad id
    if gallery_size < 1:
        raise ValueError(f"gallery_size={gallery_size}; expected at least 1 image.")
    app = demo_app()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    gradio_version = version("gradio")
    files = {
        "app.py": Path(app.__file__).read_text(encoding="utf-8"),
        app.SPACE_CONFIG_FILE: json.dumps({"model": model_repo_id}, indent=2) + "\n",
        "requirements.txt": "\n".join([*REQUIREMENTS, f"gradio=={gradio_version}"]) + "\n",
        "README.md": space_readme(model_repo_id, gradio_version),
    }
    for name, text in files.items():
        (out_dir / name).write_text(text, encoding="utf-8")
    written = [out_dir / name for name in files] + write_gallery(out_dir / "gallery", gallery_size)
    return sorted(path.relative_to(out_dir).as_posix() for path in written)


__all__ = ["demo_app", "space_readme", "write_space_folder"]
