"""The CLIP_benchmark adapter, driven by CLIP_benchmark's own zero-shot classification and retrieval `evaluate`."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from torch.nn.functional import normalize

from modeling_smartclip import SmartCLIPModel
from smartclip_eval.clip_benchmark import wrap
from smartclip_eval.evaluate import evaluate_model
from smartclip_eval.metrics import classification_metrics, retrieval_metrics
from smartclip_eval.sets import ClassificationSet, RetrievalSet

zeroshot_classification = pytest.importorskip("clip_benchmark.metrics.zeroshot_classification")
zeroshot_retrieval = pytest.importorskip("clip_benchmark.metrics.zeroshot_retrieval")

CLASSES = ["red circle", "blue square", "green cross", "yellow triangle", "red square"]
TEMPLATES = ["a photo of a {c}.", "a picture of the {c}."]  # CLIP_benchmark's placeholder
N_IMAGES = 10
# Two distinct captions per image (a caption shared by two images would tie, and ties are where the metrics differ).
CAPTIONS = [[f"a {c} at the {slot}.", f"there is a {c} at the {slot}."] for slot in ("top", "bottom") for c in CLASSES]


class _Images(torch.utils.data.Dataset):
    """What CLIP_benchmark's dataset builders return: transformed images with a label, or with their captions."""

    def __init__(self, transform, targets):
        rng = np.random.default_rng(0)
        self.images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(N_IMAGES)]
        self.transform, self.targets, self.classes = transform, targets, CLASSES

    def __len__(self):
        return N_IMAGES

    def __getitem__(self, i):
        return self.transform(self.images[i]), self.targets[i]


def _captions_collate(batch):  # CLIP_benchmark's image_captions_collate_fn
    images, captions = zip(*batch)
    return torch.stack(images), list(captions)


LABELS = [i % len(CLASSES) for i in range(N_IMAGES)]


@pytest.fixture(autouse=True)
def numpy_24_accuracy(monkeypatch):
    """CLIP_benchmark 1.6.2's `accuracy` calls `float()` on a one-element array, which NumPy 2.4 refuses; this is
    its computation with `.item()` (a fix in CLIP_benchmark's helper, not in the code under test)."""

    def accuracy(output, target, topk=(1,)):
        pred = output.topk(max(topk), 1, True, True)[1].t()  # (k, n_image)
        correct = pred.eq(target.view(1, -1).expand_as(pred))
        return [correct[:k].reshape(-1).float().sum().item() / len(target) for k in topk]

    monkeypatch.setattr(zeroshot_classification, "accuracy", accuracy)


@pytest.fixture(scope="module")
def model(clip_dir):
    torch.manual_seed(0)
    return SmartCLIPModel.from_clip(clip_dir).eval()


def _benchmark(model, processor, scoring):
    """CLIP_benchmark's zero-shot classification and retrieval metrics for the wrapped model."""
    model_like, transform, tokenizer = wrap(model, processor, scoring)
    labelled = torch.utils.data.DataLoader(_Images(transform, LABELS), batch_size=4)
    captioned = torch.utils.data.DataLoader(_Images(transform, CAPTIONS), batch_size=4, collate_fn=_captions_collate)
    classification = zeroshot_classification.evaluate(
        model_like, labelled, tokenizer, CLASSES, TEMPLATES, "cpu", amp=False
    )
    retrieval = zeroshot_retrieval.evaluate(model_like, captioned, tokenizer, "cpu", amp=False, recall_k_list=[1, 5])
    return classification, retrieval


def test_plain_scoring_gives_smartclip_eval_numbers(model, processor):
    classification, retrieval = _benchmark(model, processor, "plain")
    images = _Images(None, LABELS).images
    texts = [caption for captions in CAPTIONS for caption in captions]
    templates = tuple(t.replace("{c}", "{}") for t in TEMPLATES)
    sets = [
        ClassificationSet("zs", images, torch.tensor(LABELS), CLASSES, templates),
        RetrievalSet("ret", images, texts, torch.arange(N_IMAGES).repeat_interleave(2)),
    ]
    ours = evaluate_model(model, processor, sets, scorings=("plain",))["plain"]
    for metric in ("acc1", "acc5", "mean_per_class_recall"):
        assert classification[metric] == pytest.approx(ours[f"zs/{metric}"], abs=1e-6), metric
    for metric, value in retrieval.items():
        assert value == pytest.approx(ours[f"ret/{metric}"], abs=1e-6), metric


def test_modular_scoring_is_the_masked_caption_against_the_image(model, processor):
    """The documented meaning: CLIP_benchmark computes cos(image, caption * mask(caption))."""
    classification, retrieval = _benchmark(model, processor, "modular")
    _, transform, _ = wrap(model, processor, "modular")
    pixel_values = torch.stack([transform(image) for image in _Images(None, LABELS).images])
    prompts = [template.format(c=name) for name in CLASSES for template in TEMPLATES]
    texts = [caption for captions in CAPTIONS for caption in captions]

    def masked_captions(captions):  # (n, D): unit caption embeddings times their masks, renormalised
        tokens = processor(text=captions, return_tensors="pt", padding=True)
        text_embeds, text_masks = model.encode_text_and_masks(tokens["input_ids"], tokens["attention_mask"])
        return normalize(text_embeds * text_masks, dim=-1)

    with torch.no_grad():
        images = normalize(model.get_image_features(pixel_values).pooler_output, dim=-1)  # (n_image, D)
        captions, classes = masked_captions(texts), masked_captions(prompts)
    expected = retrieval_metrics(captions @ images.T, torch.arange(N_IMAGES).repeat_interleave(2), ks=(1, 5))
    for metric, value in retrieval.items():
        assert value == pytest.approx(expected[metric], abs=1e-6), metric
    classes = normalize(classes.reshape(len(CLASSES), len(TEMPLATES), -1).mean(dim=1), dim=-1)  # prompt ensemble
    expected = classification_metrics(classes @ images.T, torch.tensor(LABELS))
    for metric in ("acc1", "acc5", "mean_per_class_recall"):
        assert classification[metric] == pytest.approx(expected[metric], abs=1e-6), metric


def test_all_ones_masks_make_modular_equal_plain(clip_dir, processor):
    model = SmartCLIPModel.from_clip(clip_dir).eval()
    with torch.no_grad():  # every mask logit +10: the mask keeps every dimension
        model.mask_head.to_logits.weight.zero_()
        model.mask_head.to_logits.bias.fill_(10.0)
    assert _benchmark(model, processor, "modular") == _benchmark(model, processor, "plain")


def test_encode_text_rebuilds_the_attention_mask_from_the_token_ids(model, processor):
    model_like, _, tokenizer = wrap(model, processor, "modular")
    captions = ["a red circle at the top left and a blue square.", "a cross."]  # the second is padded
    input_ids = tokenizer(captions)
    assert input_ids.dim() == 2 and input_ids.shape[0] == 2
    tokens = processor(text=captions, return_tensors="pt", padding=True)
    with torch.no_grad():
        text_embeds, text_masks = model.encode_text_and_masks(tokens["input_ids"], tokens["attention_mask"])
        torch.testing.assert_close(model_like.encode_text(input_ids), text_embeds * text_masks)
        plain = wrap(model, processor, "plain")[0].encode_text(input_ids, normalize=True)
    torch.testing.assert_close(plain, text_embeds)


def test_transform_and_tokenizer_pickle_and_a_bad_scoring_is_an_error(model, processor):
    _, transform, tokenizer = wrap(model, processor)
    image = Image.new("RGB", (50, 30))
    torch.testing.assert_close(pickle.loads(pickle.dumps(transform))(image), transform(image))
    assert torch.equal(pickle.loads(pickle.dumps(tokenizer))("a red circle."), tokenizer(["a red circle."]))
    with pytest.raises(ValueError, match="scoring='masked'"):
        wrap(model, processor, "masked")
