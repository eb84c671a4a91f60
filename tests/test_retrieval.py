"""The retrieval helper ranks like brute force under both scorings."""

import pytest
import torch

from modeling_smartclip import (
    SmartCLIPModel,
    encode_gallery,
    encode_texts,
    search_images,
    search_texts,
)
from tests.support import naive_masked_similarity


@pytest.fixture(scope="module")
def model(clip_dir):
    torch.manual_seed(0)
    return SmartCLIPModel.from_clip(clip_dir, mask_pooling="union").eval()


@pytest.mark.parametrize("scoring", ["plain", "modular"])
def test_search_equals_brute_force(model, processor, scoring):
    generator = torch.Generator().manual_seed(0)
    pixel_values = torch.randn(9, 3, 32, 32, generator=generator)
    captions = ["a red circle.", "a blue square at the top left.", "a large green cross.", "yellow", "a small triangle."]
    tokens = processor.tokenizer(captions, return_tensors="pt", padding=True)

    gallery = encode_gallery(model, pixel_values, batch_size=4)
    texts = encode_texts(model, tokens["input_ids"], tokens["attention_mask"], batch_size=2)

    with torch.no_grad():
        image_embeds = model.get_image_features(pixel_values).pooler_output
        text_embeds = model.get_text_features(tokens["input_ids"], tokens["attention_mask"]).pooler_output
        masks = model.get_text_masks(tokens["input_ids"], tokens["attention_mask"])
    if scoring == "plain":
        brute = torch.nn.functional.cosine_similarity(text_embeds[:, None], image_embeds[None], dim=-1)
    else:
        brute = naive_masked_similarity(text_embeds, image_embeds, masks)

    scores, indices = search_images(texts, gallery, k=4, scoring=scoring, chunk_size=2)
    assert torch.equal(indices, brute.topk(4, dim=1).indices)
    torch.testing.assert_close(scores, brute.topk(4, dim=1).values, atol=1e-5, rtol=0)
    scores, indices = search_texts(texts, gallery, k=3, scoring=scoring, chunk_size=2)
    assert torch.equal(indices, brute.T.topk(3, dim=1).indices)


def test_unknown_scoring_names_the_allowed_values(model, processor):
    tokens = processor.tokenizer(["a red circle."], return_tensors="pt")
    texts = encode_texts(model, tokens["input_ids"])
    gallery = encode_gallery(model, torch.zeros(2, 3, 32, 32))
    with pytest.raises(ValueError, match=r"scoring='cosine'; expected one of \('plain', 'modular'\)"):
        search_images(texts, gallery, scoring="cosine")


def test_encoders_take_raw_inputs_batch_by_batch(tmp_path, model, processor, images):
    paths = []
    for i, image in enumerate(images):
        image.save(tmp_path / f"{i}.png")
        paths.append(str(tmp_path / f"{i}.png"))
    captions = ["a red circle.", "a blue square at the top left.", "a large green cross."]
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    tokens = processor(text=captions, return_tensors="pt", padding=True)

    from_tensors = encode_gallery(model, pixel_values)
    for raw in (images, paths):
        gallery = encode_gallery(model, raw, batch_size=2, processor=processor, progress=True)
        torch.testing.assert_close(gallery.image_embeds, from_tensors.image_embeds, atol=1e-5, rtol=0)
    texts = encode_texts(model, captions, batch_size=2, processor=processor, progress=True)
    expected = encode_texts(model, tokens["input_ids"], tokens["attention_mask"])
    torch.testing.assert_close(texts.text_embeds, expected.text_embeds, atol=1e-5, rtol=0)
    torch.testing.assert_close(texts.text_masks, expected.text_masks)
    with pytest.raises(ValueError, match="pass `processor=`"):
        encode_texts(model, captions)
    with pytest.raises(ValueError, match="pass `processor=`"):
        encode_gallery(model, paths)
