"""The robust vision tower as transformers' `CLIPVisionModelWithProjection`, the form VLMs (LLaVA, OpenFlamingo
ports) and diffusers' image encoders load: `image_embeds` are the model's `get_image_features`.

    export_vision_encoder("outputs/simclip", "outputs/simclip_vision")
    encoder = CLIPVisionModelWithProjection.from_pretrained("outputs/simclip_vision")
    image_processor = CLIPImageProcessor.from_pretrained("outputs/simclip_vision")
"""

from pathlib import Path

from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from modeling_smartclip import SmartCLIPModel
from modeling_smartclip.loading import load_model_and_processor


def vision_encoder_config(model: SmartCLIPModel) -> CLIPVisionConfig:
    """The vision tower's configuration with the joint embedding width as `projection_dim`."""
    vision_config = model.config.vision_config.to_dict()
    for key in ("model_type", "transformers_version", "architectures", "auto_map"):
        vision_config.pop(key, None)
    vision_config["projection_dim"] = model.config.projection_dim
    return CLIPVisionConfig(**vision_config)


def vision_encoder_from_smartclip(model: SmartCLIPModel) -> CLIPVisionModelWithProjection:
    """`model`'s vision tower and projection as a `CLIPVisionModelWithProjection` (weights copied)."""
    encoder = CLIPVisionModelWithProjection(vision_encoder_config(model)).to(model.dtype)
    # SmartCLIP's tower (a `CLIPVisionModel`) has the parameter names of the target's `vision_model`.
    encoder.vision_model.load_state_dict(model.vision_model.state_dict())
    encoder.visual_projection.load_state_dict(model.visual_projection.state_dict())
    return encoder.eval()


def export_vision_encoder(model_dir: "str | Path", out_dir: "str | Path") -> list[str]:
    """Writes `model_dir`'s (a SmartCLIP or CLIP folder or Hub id) vision encoder and image processor to `out_dir`;
    returns the written files, relative to it. The checkpoint must load exactly."""
    model, processor = load_model_and_processor(model_dir, strict=True)
    out_dir = Path(out_dir)
    vision_encoder_from_smartclip(model).save_pretrained(out_dir)
    processor.image_processor.save_pretrained(out_dir)
    return sorted(path.relative_to(out_dir).as_posix() for path in out_dir.rglob("*") if path.is_file())


__all__ = ["export_vision_encoder", "vision_encoder_config", "vision_encoder_from_smartclip"]
