"""Long prompts in SDXL with SmartCLIP's 248-token text encoder in the `text_encoder` slot.

SDXL conditions its UNet on the two encoders' penultimate hidden states concatenated position by position, so both
must return the same number of positions; SmartCLIP's encoder returns 248, SDXL's `text_encoder_2` (OpenCLIP bigG)
77. Passing the exported encoder to `StableDiffusionXLPipeline` as is therefore fails ("Sizes of tensors must
match ... 248 ... 77"). `encode_long_prompt_sdxl` computes the embeddings itself:

- `text_encoder` (SmartCLIP's, as `smartclip-export-text-encoder` writes it; a ViT-L/14 text tower has SDXL's 768
  width): the whole prompt, up to 248 tokens, in one pass.
- `text_encoder_2`: the prompt in 77-token chunks (75 tokens between a start and an end token each, as the
  long-prompt helpers of the diffusers community do), whose states are laid end to end and cut at 248 positions.
  bigG therefore reads about the first 240 tokens (the fourth chunk is cut after its 17th position); the pooled
  embedding SDXL also needs is bigG's pooled output of the first chunk (the first 75 tokens), as in stock SDXL.

    embeds = encode_long_prompt_sdxl(pipe, long_prompt, negative_prompt="blurry")
    image = pipe(**embeds, num_inference_steps=30).images[0]
"""

import math

import torch


def _encoder_2_states(pipe, prompts: list[str], positions: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`text_encoder_2` on 77-token chunks: states `(batch, positions, width_2)` and pooled `(batch, projection_2)`."""
    tokenizer, encoder = pipe.tokenizer_2, pipe.text_encoder_2
    window = tokenizer.model_max_length  # 77
    per_chunk = window - 2  # a start and an end token around each chunk
    chunks = math.ceil(positions / window)
    rows = []
    for ids in tokenizer(prompts, add_special_tokens=False)["input_ids"]:
        for i in range(chunks):
            row = [tokenizer.bos_token_id, *ids[i * per_chunk : (i + 1) * per_chunk], tokenizer.eos_token_id]
            rows.append(row + [tokenizer.pad_token_id] * (window - len(row)))
    input_ids = torch.tensor(rows, device=encoder.device)  # (batch * chunks, 77)
    output = encoder(input_ids, output_hidden_states=True)
    states = output.hidden_states[-2].reshape(len(prompts), chunks * window, -1)[:, :positions]  # (B, positions, W2)
    pooled = output.text_embeds.reshape(len(prompts), chunks, -1)[:, 0]  # (B, P2): the first chunk's, as stock SDXL
    return states, pooled


@torch.no_grad()
def _encode(pipe, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    tokenizer, encoder = pipe.tokenizer, pipe.text_encoder
    positions = tokenizer.model_max_length  # 248: SmartCLIP's encoder reads the whole prompt at once
    if positions > encoder.config.max_position_embeddings:
        raise ValueError(
            f"pipe.tokenizer.model_max_length={positions} exceeds pipe.text_encoder's "
            f"{encoder.config.max_position_embeddings} positions; expected SmartCLIP's exported tokenizer and encoder."
        )
    input_ids = tokenizer(prompts, padding="max_length", max_length=positions, truncation=True, return_tensors="pt")
    states = encoder(input_ids["input_ids"].to(encoder.device), output_hidden_states=True).hidden_states[-2]
    states_2, pooled = _encoder_2_states(pipe, prompts, positions)
    return torch.cat([states, states_2.to(states.dtype)], dim=-1), pooled  # (B, positions, W1 + W2), (B, P2)


def encode_long_prompt_sdxl(
    pipe, prompt: str | list[str], negative_prompt: str | list[str] | None = None
) -> dict[str, torch.Tensor]:
    """SDXL's four prompt embeddings for `pipe(**embeddings, ...)`, with prompts of up to 248 tokens.

    Args:
        pipe: a `StableDiffusionXLPipeline` whose `text_encoder` / `tokenizer` are SmartCLIP's exported ones.
        prompt: one prompt or a batch.
        negative_prompt: as the pipeline's; `None` gives SDXL's own choice (zeros when the pipeline's
            `force_zeros_for_empty_prompt`, else the empty prompt's embeddings).

    Returns:
        `prompt_embeds` `(batch, 248, W1 + W2)`, `pooled_prompt_embeds` `(batch, P2)` and their `negative_` twins.
    """
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if not prompts:
        raise ValueError("prompt is empty; expected a string or a non-empty list of strings.")
    prompt_embeds, pooled = _encode(pipe, prompts)
    if negative_prompt is None and pipe.config.force_zeros_for_empty_prompt:
        negative_embeds, negative_pooled = torch.zeros_like(prompt_embeds), torch.zeros_like(pooled)
    else:
        negatives = [negative_prompt or ""] * len(prompts) if not isinstance(negative_prompt, list) else negative_prompt
        if len(negatives) != len(prompts):
            raise ValueError(f"{len(negatives)} negative prompts for {len(prompts)} prompts; expected one per prompt.")
        negative_embeds, negative_pooled = _encode(pipe, negatives)
    return {
        "prompt_embeds": prompt_embeds,
        "pooled_prompt_embeds": pooled,
        "negative_prompt_embeds": negative_embeds,
        "negative_pooled_prompt_embeds": negative_pooled,
    }


__all__ = ["encode_long_prompt_sdxl"]
