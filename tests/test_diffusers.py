"""SmartCLIP's exported text encoder in real diffusers pipelines: tiny random UNets and VAEs built here, a few
denoising steps on CPU, and prompts that differ only after token 77."""

import copy

import pytest
import torch
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer, PreTrainedTokenizerBase

diffusers = pytest.importorskip("diffusers")
from diffusers import (  # noqa: E402
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)

from modeling_smartclip import SmartCLIPModel  # noqa: E402
from smartclip_hub.diffusers_sdxl import encode_long_prompt_sdxl  # noqa: E402
from smartclip_hub.export import main as export_main  # noqa: E402

# 90 words, then one that differs: the difference is at token 91 (> 77), counting the start token.
LONG = " ".join(["a large red circle at the top left ."] * 10)
PROMPT_A, PROMPT_B = f"{LONG} green", f"{LONG} blue"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, clip_dir, processor):
    """`(text_encoder, tokenizer)` as `smartclip-export-text-encoder` writes them, loaded back."""
    root = tmp_path_factory.mktemp("diffusers")
    torch.manual_seed(0)
    SmartCLIPModel.from_clip(clip_dir).save_pretrained(root / "smartclip")
    processor.save_pretrained(root / "smartclip")
    assert export_main([str(root / "smartclip"), str(root / "export")]) == 0
    text_encoder = CLIPTextModel.from_pretrained(root / "export", subfolder="text_encoder")
    tokenizer = CLIPTokenizer.from_pretrained(root / "export", subfolder="tokenizer")
    return text_encoder.eval(), tokenizer


def _scheduler() -> DDIMScheduler:
    return DDIMScheduler(beta_schedule="scaled_linear", clip_sample=False, set_alpha_to_one=False, steps_offset=1)


def _vae() -> AutoencoderKL:
    torch.manual_seed(0)
    return AutoencoderKL(
        block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=4, layers_per_block=1,
    )


def _unet(cross_attention_dim: int, **extra) -> UNet2DConditionModel:
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8, layers_per_block=1, block_out_channels=(8, 16), norm_num_groups=4, attention_head_dim=2,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross_attention_dim, **extra,
    )


def _latents(pipe, **call) -> torch.Tensor:
    """Two DDIM steps at 16x16 pixels (8x8 latents) from a fixed seed; the final latents."""
    return pipe(
        num_inference_steps=2, height=16, width=16, output_type="latent", generator=torch.Generator().manual_seed(0),
        **call,
    ).images


def _differs_after_77(tokenizer: PreTrainedTokenizerBase) -> int:
    a, b = (tokenizer(p)["input_ids"] for p in (PROMPT_A, PROMPT_B))
    first = next(i for i, (x, y) in enumerate(zip(a, b)) if x != y)
    assert 77 < first < len(a) <= tokenizer.model_max_length == 248
    return first


def test_stable_diffusion_takes_the_export_as_its_text_encoder_and_reads_past_77_tokens(exported):
    text_encoder, tokenizer = exported
    _differs_after_77(tokenizer)
    pipe = StableDiffusionPipeline(
        vae=_vae(), text_encoder=text_encoder, tokenizer=tokenizer, unet=_unet(text_encoder.config.hidden_size),
        scheduler=_scheduler(), safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)

    prompt_embeds, _ = pipe.encode_prompt(PROMPT_A, "cpu", 1, False)
    assert prompt_embeds.shape == (1, 248, text_encoder.config.hidden_size)  # every position reaches the UNet
    a, a_again, b = (_latents(pipe, prompt=p, guidance_scale=1.0) for p in (PROMPT_A, PROMPT_A, PROMPT_B))
    assert torch.equal(a, a_again)
    assert not torch.allclose(a, b)  # only the words after token 77 differ
    image = pipe(PROMPT_A, num_inference_steps=2, height=16, width=16, output_type="np", guidance_scale=2.0).images
    assert image.shape == (1, 16, 16, 3)


@pytest.fixture(scope="module")
def sdxl(exported):
    """A tiny SDXL pipeline: SmartCLIP's encoder as `text_encoder`, a random 77-position `text_encoder_2`."""
    text_encoder, tokenizer = exported
    tokenizer_2 = copy.deepcopy(tokenizer)
    tokenizer_2.model_max_length = 77
    torch.manual_seed(0)
    config_2 = CLIPTextConfig(
        vocab_size=len(tokenizer_2), hidden_size=16, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        max_position_embeddings=77, projection_dim=8, bos_token_id=tokenizer_2.bos_token_id,
        eos_token_id=tokenizer_2.eos_token_id, pad_token_id=tokenizer_2.pad_token_id,
    )
    text_encoder_2 = CLIPTextModelWithProjection(config_2).eval()
    unet = _unet(
        text_encoder.config.hidden_size + config_2.hidden_size, addition_embed_type="text_time",
        addition_time_embed_dim=4, projection_class_embeddings_input_dim=config_2.projection_dim + 6 * 4,
    )
    pipe = StableDiffusionXLPipeline(
        vae=_vae(), text_encoder=text_encoder, text_encoder_2=text_encoder_2, tokenizer=tokenizer,
        tokenizer_2=tokenizer_2, unet=unet, scheduler=_scheduler(),
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def test_sdxl_cannot_take_the_export_as_is(sdxl):
    with pytest.raises(RuntimeError, match="248"):
        _latents(sdxl, prompt=PROMPT_A)


def test_sdxl_with_long_prompt_embeddings_reads_past_77_tokens(sdxl):
    _differs_after_77(sdxl.tokenizer)
    embeds = encode_long_prompt_sdxl(sdxl, PROMPT_A, negative_prompt="blurry")
    width = sdxl.text_encoder.config.hidden_size + sdxl.text_encoder_2.config.hidden_size
    assert embeds["prompt_embeds"].shape == embeds["negative_prompt_embeds"].shape == (1, 248, width)
    assert embeds["pooled_prompt_embeds"].shape == (1, sdxl.text_encoder_2.config.projection_dim)

    a = _latents(sdxl, **embeds, guidance_scale=2.0)
    b = _latents(sdxl, **encode_long_prompt_sdxl(sdxl, PROMPT_B, negative_prompt="blurry"), guidance_scale=2.0)
    assert torch.equal(a, _latents(sdxl, **encode_long_prompt_sdxl(sdxl, PROMPT_A, "blurry"), guidance_scale=2.0))
    assert not torch.allclose(a, b)

    # Both encoders read past token 77: SmartCLIP's whole prompt, bigG's second chunk.
    for encoder in ("text_encoder", "text_encoder_2"):
        width_1 = sdxl.text_encoder.config.hidden_size
        part = slice(None, width_1) if encoder == "text_encoder" else slice(width_1, None)
        a_states, b_states = (encode_long_prompt_sdxl(sdxl, p)["prompt_embeds"][..., part] for p in (PROMPT_A, PROMPT_B))
        assert not torch.allclose(a_states, b_states), encoder
    batch = encode_long_prompt_sdxl(sdxl, [PROMPT_A, PROMPT_B])
    assert batch["prompt_embeds"].shape[0] == 2 and not batch["negative_prompt_embeds"].any()  # SDXL's zeros
