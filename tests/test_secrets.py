"""The one credential filter (`smartclip_hub.secrets`): by name and by look, at any depth, in what the package
writes into training_args.json, a model card, and the terminal."""

import json
import shutil

import pytest
from huggingface_hub import ModelCard

from smartclip_hub.card import save_hub_ready, write_model_card
from smartclip_hub.push import main as push_main
from smartclip_hub.secrets import is_secret_name, redact, scrub

from .test_hub import trained_dir  # noqa: F401  (the fixture)

JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJlLWJ5dGVz"
HEX32 = "9f86d081884c7d659a2feaa0c55ad015"
# Values that reached the card in issue 25, each under a name a filter of "known secret keys" misses, or in a value.
NAMED = {"pwd": "correct-horse", "db_pass": "battery-staple", "accessToken": "opaque-session-value"}
LOOKED = {"auth_header": "Authorization: Bearer abcdefghijklmnop", "note": JWT, "id": HEX32,
          "url": "https://user:SuperSecretPw@data.example.com/d"}
LISTED = {"callbacks": [{"name": "wandb", "api_key": "listed-key-value"}]}


def test_names_that_are_credentials_and_names_that_are_not():
    for name in ("token", "hub_token", "use_auth_token", "wandb_api_key", "accessToken", "pwd", "db_pass",
                 "password", "aws_secret_access_key", "Authorization", "key", "push_to_hub_token"):
        assert is_secret_name(name), name
    for name in ("pad_token", "eos_token", "mask_token", "pad_token_id", "tokenizer_class", "additional_special_tokens",
                 "added_tokens_decoder", "keys_to_ignore_at_inference", "learning_rate", "caption_column"):
        assert not is_secret_name(name), name


def test_scrub_removes_named_credentials_at_any_depth_and_redacts_the_rest():
    tree = {"model": {**NAMED}, "data": {**LOOKED, "p_long": 0.5}, "training": {**LISTED, "seed": 3},
            "vocab": {"token": 7}}
    cleaned, found = scrub(tree)
    text = json.dumps(cleaned)
    leaked = [value for value in [*NAMED.values(), *LOOKED.values(), "listed-key-value"] if value in text]
    assert leaked == [] and "SuperSecretPw" not in text and "abcdefghijklmnop" not in text
    assert cleaned["data"]["p_long"] == 0.5 and cleaned["training"]["seed"] == 3
    assert cleaned["vocab"] == {"token": 7}  # a number under a word is not a credential (a tokenizer's vocabulary)
    assert "training.callbacks[0].api_key" in found and "model.accessToken" in found


def test_card_of_a_run_with_credentials_in_its_record_and_flags(trained_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained_dir, run)
    (run / "training_args.json").write_text(json.dumps({"model": NAMED, "data": LOOKED, "training": LISTED}))
    staging = tmp_path / "staging"

    with pytest.warns(UserWarning, match="credentials"):
        code = push_main([str(run), "tester/card", "--dry-run", "--staging_dir", str(staging),
                          "--dataset", "https://u:DatasetPw1@h/d", "--base_model", "https://u:BaseModelPw2@h/m",
                          "--eval_dataset", "https://u:EvalSetPw3@h/e"])
    assert code == 0
    card = (staging / "model" / "README.md").read_text()
    secrets = [*NAMED.values(), *LOOKED.values(), "listed-key-value", "DatasetPw1", "BaseModelPw2", "EvalSetPw3",
               "abcdefghijklmnop", "SuperSecretPw"]
    assert [value for value in secrets if value in card] == []
    ModelCard(card)  # still a valid card (its metadata parses)


def test_redact_leaves_ordinary_text_alone():
    text = "smartclip-scenes-ViT-B-16-lr3e-4-seed42 at https://huggingface.co/openai/clip-vit-base-patch16"
    assert redact(text) == text
    assert "pw" not in redact("cannot reach http://alice:pw@127.0.0.1:9 (ConnectError)")


def test_a_train_file_run_card_names_its_data_and_lists_its_eval_results(trained_dir, tmp_path):  # noqa: F811
    run = tmp_path / "run"
    shutil.copytree(trained_dir, run)
    (run / "training_args.json").write_text(json.dumps({
        "model": {"model_name_or_path": "openai/clip-vit-base-patch16"},
        "data": {"dataset_name": None, "train_file": str(tmp_path / "captions" / "train.csv")},
        "training": {"learning_rate": 0.001},
    }))
    (run / "eval_results.json").write_text(json.dumps({
        "epoch": 1.0, "eval_loss": 1.25, "eval_t2i_R@1": 0.5, "eval_t2i_R@1_plain": 0.25, "eval_runtime": 0.3,
        "eval_samples_per_second": 10.0, "eval_dropped_missing_image": 0,
    }))

    card = ModelCard.load(write_model_card(run, repo_id="tester/files"))
    assert "built-in synthetic scenes" not in card.text and "train.csv" in card.text
    assert "No evaluation results" not in card.text
    recorded = {(r.metric_type, r.metric_config): r.metric_value for r in card.data.eval_results}
    assert recorded == {("loss", "modular"): 1.25, ("t2i_R@1", "modular"): 0.5, ("t2i_R@1", "plain"): 0.25}


def test_a_hub_ready_copy_carries_what_its_card_needs(trained_dir, tmp_path):  # noqa: F811
    run = tmp_path / "arm"
    shutil.copytree(trained_dir, run)
    for name in ("optimizer.pt", "training_args.bin"):
        (run / name).write_bytes(b"pickle")
    (run / "training_args.json").write_text(json.dumps({
        "model": {"model_name_or_path": "openai/clip-vit-base-patch16", "token": "hf_" + "x" * 30},
        "data": {"dataset_name": "me/captions"}, "training": {"learning_rate": 0.001},
    }))
    (run / "eval_results.json").write_text(json.dumps({"eval_t2i_R@1": 0.5}))

    with pytest.warns(UserWarning, match="credentials"):
        out = save_hub_ready(run, tmp_path / "smartclip")

    assert not (out / "optimizer.pt").exists() and not (out / "training_args.bin").exists()
    assert "token" not in json.loads((out / "training_args.json").read_text())["model"]
    card = ModelCard.load(out / "README.md")
    assert card.data.base_model == "openai/clip-vit-base-patch16" and card.data.datasets == ["me/captions"]
    assert {(r.metric_type, r.metric_value) for r in card.data.eval_results} == {("t2i_R@1", 0.5)}
