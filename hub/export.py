"""`smartclip-export-text-encoder`: SmartCLIP's text tower as a plain transformers CLIP text encoder and tokenizer.

The output folder has a diffusers pipeline's layout: `text_encoder/` (a `CLIPTextModel` with SmartCLIP's 248 text
positions) and `tokenizer/` (`model_max_length` 248). A Stable Diffusion 1.x/2.x-style pipeline takes them as its
`text_encoder` and `tokenizer` when the text tower's width is its UNet's `cross_attention_dim` (768, a ViT-L/14 text
tower, for SD 1.x); prompts then reach the UNet with up to 248 tokens instead of 77:

    smartclip-export-text-encoder outputs/compare/smartclip outputs/text_encoder

    pipe = StableDiffusionPipeline.from_pretrained(
        sd_repo, text_encoder=CLIPTextModel.from_pretrained(out, subfolder="text_encoder"),
        tokenizer=CLIPTokenizer.from_pretrained(out, subfolder="tokenizer"))

SDXL concatenates its two encoders' states position by position, so a 248-position encoder cannot replace either
of them as is; `smartclip_hub.diffusers_sdxl.encode_long_prompt_sdxl` computes SDXL's prompt embeddings with this
encoder in the `text_encoder` slot (the ViT-L/14 one; `text_encoder_2` is OpenCLIP bigG) instead.

`--with_projection` writes a `CLIPTextModelWithProjection` whose `text_embeds` are SmartCLIP's `get_text_features`
(for retrieval features); the mask head is left out either way (it changes scoring, not features).
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from modeling_smartclip import SmartCLIPConfig, SmartCLIPModel
from modeling_smartclip.loading import load_model_and_processor

from .code_pointers import strip_foreign_code
from .secrets import redact, scrub_json_files

TEXT_ENCODER_DIR, TOKENIZER_DIR = "text_encoder", "tokenizer"  # diffusers' component folder names
# A tokenizer saved from SmartCLIP's processor names it and its code; the standalone tokenizer is plain CLIP's.
SMARTCLIP_TOKENIZER_KEYS = ("processor_class", "auto_map")


def text_encoder_config(config: SmartCLIPConfig) -> CLIPTextConfig:
    """The text tower's configuration with the joint embedding width as `projection_dim`."""
    text_config = config.text_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        text_config.pop(key, None)
    text_config["projection_dim"] = config.projection_dim
    return CLIPTextConfig(**text_config)


def text_encoder_from_smartclip(
    model: SmartCLIPModel, with_projection: bool = False
) -> CLIPTextModel | CLIPTextModelWithProjection:
    """`model`'s text tower as a `CLIPTextModel` (or, `with_projection`, a `CLIPTextModelWithProjection` holding the
    text projection too); the weights are copies."""
    encoder_class = CLIPTextModelWithProjection if with_projection else CLIPTextModel
    encoder = encoder_class(text_encoder_config(model.config)).to(model.dtype)
    # SmartCLIP's text tower is a `CLIPTextModel`, which `CLIPTextModelWithProjection` wraps as `text_model`.
    (encoder.text_model if with_projection else encoder).load_state_dict(model.text_model.state_dict())
    if with_projection:
        encoder.text_projection.load_state_dict(model.text_projection.state_dict())
    return encoder.eval()


def export_text_encoder(model_dir: str | Path, out_dir: str | Path, with_projection: bool = False) -> list[str]:
    """Writes `text_encoder/` and `tokenizer/` of `model_dir` (a SmartCLIP folder or Hub id; a CLIP one is converted
    first, its 77 positions stretched to 248) into `out_dir`.

    The checkpoint must load exactly (no missing, unexpected or non-finite weights). Neither code pointers nor
    credentials that the source folder's JSON files hold are copied. Returns the written files, relative to
    `out_dir`.
    """
    out_dir = Path(out_dir)
    model, processor = load_model_and_processor(model_dir, strict=True)
    tokenizer = processor.tokenizer
    positions = model.config.text_config.max_position_embeddings
    if tokenizer.model_max_length > positions:
        raise ValueError(
            f"{model_dir}: tokenizer model_max_length {tokenizer.model_max_length} exceeds the text tower's "
            f"{positions} positions."
        )
    # Pipelines pad and truncate prompts to the tokenizer's length: it must be the encoder's, not CLIP's 77.
    tokenizer.model_max_length = positions
    text_encoder_from_smartclip(model, with_projection).save_pretrained(out_dir / TEXT_ENCODER_DIR)
    tokenizer.save_pretrained(out_dir / TOKENIZER_DIR)
    config_path = out_dir / TOKENIZER_DIR / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    for key in SMARTCLIP_TOKENIZER_KEYS:
        tokenizer_config.pop(key, None)
    config_path.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
    for folder in (TEXT_ENCODER_DIR, TOKENIZER_DIR):
        strip_foreign_code(out_dir / folder, own=())  # the export ships no code: any entry left is foreign
        scrub_json_files(out_dir / folder)
    return sorted(path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartclip-export-text-encoder", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a SmartCLIP folder saved by save_pretrained (or a Hub id)")
    parser.add_argument("out_dir", type=Path, help="where to write text_encoder/ and tokenizer/")
    parser.add_argument("--with_projection", action="store_true",
                        help="write a CLIPTextModelWithProjection (text_embeds = SmartCLIP's text features)")
    args = parser.parse_args(argv)
    try:
        files = export_text_encoder(args.model_dir, args.out_dir, args.with_projection)
    except (ValueError, OSError) as error:
        print(f"smartclip-export-text-encoder: {redact(error)}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out_dir}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
