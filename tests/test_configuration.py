"""`modeling_smartclip/configuration_smartclip.py`: a bad field is a clear error naming it; saved fields load back."""

import pytest

from modeling_smartclip import SmartCLIPConfig, SmartCLIPModel


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"mask_num_attention_heads": 5}, "width 512 is not divisible by 5 attention heads"),
        ({"scoring": "masked"}, r"scoring='masked'; expected one of \('plain', 'modular'\)"),
        ({"mask_pooling": "mean"}, r"mask_pooling='mean'; expected one of \('attention', 'union'\)"),
        ({"loss_type": "siglip"}, "loss_type='siglip'"),
        ({"mask_threshold": 1.5}, "mask_threshold=1.5"),
    ],
)
def test_bad_config_is_a_clear_error(overrides, message):
    with pytest.raises(ValueError, match=message):
        SmartCLIPConfig(**overrides)


def test_bad_tower_config_is_a_clear_error():
    # transformers' own validation of the towers, surfaced unchanged.
    with pytest.raises(Exception, match=r"hidden size \(30\) is not a multiple of the number of attention heads \(4\)"):
        SmartCLIPConfig(text_config={"hidden_size": 30, "num_attention_heads": 4})


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"lambda_align": -1.0}, r"lambda_align=-1.0; expected a finite value >= 0"),
        ({"lambda_sparsity": float("nan")}, r"lambda_sparsity=nan"),
        ({"lambda_align": float("inf")}, r"lambda_align=inf"),
        ({"projection_dim": 0}, r"projection_dim=0; expected a positive integer"),
        ({"projection_dim": -4}, r"projection_dim=-4"),
        ({"mask_hidden_size": 0}, r"mask_hidden_size=0"),
        ({"mask_num_attention_heads": 0}, r"mask_num_attention_heads=0"),
        ({"mask_intermediate_size": -1}, r"mask_intermediate_size=-1"),
    ],
)
def test_bad_numbers_in_config_are_errors_naming_the_field(overrides, message):
    with pytest.raises(ValueError, match=message):
        SmartCLIPConfig(**overrides)


def test_mask_head_trained_is_a_saved_field(tmp_path, clip):
    model = SmartCLIPModel.from_clip(clip)
    assert model.config.mask_head_trained is False
    model.config.mask_head_trained = True
    model.save_pretrained(tmp_path)
    assert SmartCLIPConfig.from_pretrained(tmp_path).mask_head_trained is True
