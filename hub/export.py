"""`smartclip-export-text-encoder`: SmartCLIP's text tower as a plain transformers `CLIPTextModelWithProjection`.

Diffusers pipelines such as SDXL take a CLIP text encoder (`text_encoder_2` is a `CLIPTextModelWithProjection`) and
its tokenizer. The export keeps SmartCLIP's 248 text positions and its text projection, so the encoder's
`text_embeds` are SmartCLIP's `get_text_features`; the mask head is left out (it changes scoring, not features).

    smartclip-export-text-encoder outputs/compare/smartclip outputs/text_encoder
"""

import argparse
import json
import sys
from pathlib import Path

from transformers import CLIPTextConfig, CLIPTextModelWithProjection

from modeling_smartclip import SmartCLIPConfig, SmartCLIPModel, SmartCLIPProcessor


TEXT_WEIGHTS = ("text_model.", "text_projection.")
SMARTCLIP_TOKENIZER_KEYS = ("processor_class", "auto_map")


def text_encoder_config(config: SmartCLIPConfig) -> CLIPTextConfig:
    """The text tower's configuration with the joint embedding width as `projection_dim`."""
    text_config = config.text_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        text_config.pop(key, None)
    text_config["projection_dim"] = config.projection_dim
    return CLIPTextConfig(**text_config)


def text_encoder_from_smartclip(model: SmartCLIPModel) -> CLIPTextModelWithProjection:
    """A `CLIPTextModelWithProjection` holding `model`'s text tower and text projection (copies of the weights)."""
    encoder = CLIPTextModelWithProjection(text_encoder_config(model.config)).to(model.dtype)
    state = {key: value for key, value in model.state_dict().items() if key.startswith(TEXT_WEIGHTS)}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"SmartCLIP's text weights do not fit CLIPTextModelWithProjection: missing {missing}, unexpected {unexpected}."
        )
    return encoder.eval()


def export_text_encoder(model_dir: str | Path, out_dir: str | Path) -> list[str]:
    """Writes the text encoder (safetensors + `config.json`) and the tokenizer of `model_dir` to `out_dir`.

    `model_dir` is a SmartCLIP folder or Hub id; returns the written file names.
    """
    out_dir = Path(out_dir)
    model = SmartCLIPModel.from_pretrained(model_dir)
    tokenizer = SmartCLIPProcessor.from_pretrained(model_dir).tokenizer
    positions = model.config.text_config.max_position_embeddings
    if tokenizer.model_max_length > positions:
        raise ValueError(
            f"{model_dir}: tokenizer model_max_length {tokenizer.model_max_length} exceeds the text tower's "
            f"{positions} positions."
        )
    text_encoder_from_smartclip(model).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    # A standalone tokenizer: its config must not point at SmartCLIP's processor code, which the export does not ship.
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text())
    for key in SMARTCLIP_TOKENIZER_KEYS:
        tokenizer_config.pop(key, None)
    config_path.write_text(json.dumps(tokenizer_config, indent=2, sort_keys=True) + "\n")
    return sorted(path.name for path in out_dir.iterdir() if path.is_file())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="smartclip-export-text-encoder", description=__doc__.split("\n\n")[0])
    parser.add_argument("model_dir", help="a SmartCLIP folder saved by save_pretrained (or a Hub id)")
    parser.add_argument("out_dir", type=Path, help="where to write the CLIPTextModelWithProjection and tokenizer")
    args = parser.parse_args(argv)
    try:
        files = export_text_encoder(args.model_dir, args.out_dir)
    except (ValueError, OSError) as error:
        print(f"smartclip-export-text-encoder: {error}", file=sys.stderr)
        return 2
    print(f"Wrote {args.out_dir}: {', '.join(files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
