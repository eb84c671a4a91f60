"""`smartclip-compare`: the smoke run at a tiny setting, and the summary over seeds on numbers whose answer is known."""

import json
import logging

import pytest
from transformers import AutoModel

from smartclip_eval.tables import save_results
from smartclip_experiments.compare import (
    COLUMNS,
    FINETUNE_ARMS,
    SCRATCH_ARMS,
    CompareArguments,
    compare_intervals,
    format_tables,
    main,
    saved_seed,
    seed_settings,
    summarise,
    verdicts,
)


def test_a_quick_run_never_shares_the_default_folder_of_a_real_run():
    assert CompareArguments(quick=True).output_dir != CompareArguments().output_dir


def test_compare_quick_run_writes_results_plots_and_a_hub_ready_model(tmp_path, capsys, caplog):
    main(["--quick", "--output_dir", str(tmp_path)])

    runs = json.loads((tmp_path / "seed0" / "results.json").read_text())
    assert runs.pop("settings")["batch_size"] == 16
    expected = ["finetune/pretrained", *(f"finetune/{arm.name}" for arm in FINETUNE_ARMS),
                *(f"scratch/{arm.name}" for arm in SCRATCH_ARMS)]
    assert list(runs) == expected
    for name, run in runs.items():
        scorings = ("plain", "modular") if name.endswith(("/smartclip", "/smartclip-union")) else ("plain",)
        assert [s for s in ("plain", "modular") if s in run] == list(scorings), name
        for scoring in scorings:
            for _, key in COLUMNS:
                value = run[scoring][key]
                assert value is None or 0.0 <= value <= 1.0, (name, key)  # None: no held-out object in 32 scenes
        assert any("loss" in entry for entry in run["log_history"])
        assert run["timing"]["wall_s"] > 0
    assert any("loss_short" in entry for entry in runs["finetune/longclip"]["log_history"])
    assert "scenes/sentence_in_long" in runs["finetune/smartclip-union"]["mask_stats"]

    out = capsys.readouterr().out
    assert "| Long-CLIP: long caption + first sentence vs PCA image | plain |" in out
    assert "| SmartCLIP, union head (scratch) | modular |" in out
    assert "one seed (0): no spread" in out and "1. Direct FT gains long retrieval" not in out  # no verdicts
    assert "smoke test" in out
    assert "**Concept-level diagnostics**" in out and "| SmartCLIP, union head (scratch) | " in out
    assert "density_ratio" in "".join(runs["scratch/smartclip-union"]["mask_diagnostics"])
    card = (tmp_path / "smartclip" / "README.md").read_text()  # the hub-ready folder carries its run record
    assert "unspecified" not in card and (tmp_path / "smartclip" / "training_args.json").is_file()
    # The control runs at the density the trained SmartCLIP arm's masks had, not its own untrained head's.
    learned = [log["mask_density"] for log in runs["finetune/smartclip"]["log_history"] if "mask_density" in log]
    assert runs["finetune/random-mask"]["random_mask_density"] == pytest.approx(sum(learned[-3:]) / len(learned[-3:]))
    assert (tmp_path / "results.md").read_text().strip() in out
    summary = json.loads((tmp_path / "results.json").read_text())["summary"]
    assert len(summary["finetune/direct-ft"]["plain"]["scenes_long/image_retrieval_recall@1"]) == 1  # one seed

    # A second call with the same settings reuses the saved seed instead of training it again.
    caplog.set_level(logging.INFO, logger="smartclip_experiments")
    main(["--quick", "--output_dir", str(tmp_path)])
    assert "seed 0: reusing the runs saved in" in caplog.text and "[1/10]" not in caplog.text
    assert (tmp_path / "mask_usage.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (tmp_path / "training_curves.png").exists()  # a few steps make no curves
    model = AutoModel.from_pretrained(tmp_path / "smartclip", trust_remote_code=True)
    assert model.config.scoring == "modular" and model.config.mask_pooling == "attention"


def _runs(**values_by_run) -> dict:
    """Per seed, every stage-2 run with `value` as each of its plain metrics (a run not named gets 0.5)."""
    names = ["pretrained", *(arm.name for arm in FINETUNE_ARMS)]
    seeds = {}
    for seed in range(3):
        seeds[seed] = {
            f"finetune/{name}": {"plain": {key: values_by_run.get(name, [0.5] * 3)[seed] for _, key in COLUMNS}}
            for name in names
        }
    return seeds


def test_intervals_mark_a_difference_only_when_they_do_not_overlap():
    assert compare_intervals([0.6, 0.7], [0.4, 0.5]) == 1
    assert compare_intervals([0.1, 0.45], [0.4, 0.5]) == 0
    assert compare_intervals([0.1, 0.2], [0.4, 0.5]) == -1

    summary = summarise(_runs(pretrained=[0.50, 0.52, 0.48], **{"direct-ft": [0.30, 0.45, 0.40]}))
    assert summary["finetune/direct-ft"]["plain"][COLUMNS[0][1]] == [0.30, 0.45, 0.40]
    descriptions = {run: run for run in summary}
    table = format_tables(summary, descriptions, [0, 1, 2])
    assert "3 seeds (0, 1, 2): mean [min, max]" in table
    assert "| finetune/direct-ft | plain | 0.383 [0.30, 0.45] ↓ |" in table
    assert "| finetune/pretrained | plain | 0.500 [0.48, 0.52] |" in table
    assert "| finetune/longclip | plain | 0.500 [0.50, 0.50] |" in table  # inside the pretrained interval


def test_verdicts_follow_the_intervals():
    # Direct FT below the pretrained CLIP on everything, long retrieval too: prediction 1 holds only in part.
    lines = verdicts(summarise(_runs(pretrained=[0.5, 0.5, 0.5], **{"direct-ft": [0.3, 0.35, 0.4]})))
    assert lines[0].startswith("1. Direct FT") and ": partly reproduced" in lines[0]
    assert "long T2I lower, short T2I lower" in lines[0]
    # Long-CLIP above everything, SmartCLIP (paper head) above Long-CLIP: predictions 2 and 3 hold.
    lines = verdicts(summarise(_runs(longclip=[0.6, 0.65, 0.7], smartclip=[0.8, 0.85, 0.9])))
    assert ": reproduced" in lines[1] and ": reproduced" in lines[2]
    assert "union head" in lines[3] and "not reproduced" in lines[3]


def test_a_saved_seed_with_other_settings_is_a_clear_error(tmp_path):
    args = CompareArguments(output_dir=str(tmp_path), quick=True)
    (tmp_path / "seed0").mkdir()
    saved = {"settings": {**seed_settings(args), "finetune_steps": 99}, "finetune/pretrained": {"plain": {}}}
    (tmp_path / "seed0" / "results.json").write_text(json.dumps(saved))
    with pytest.raises(ValueError, match="finetune_steps"):
        saved_seed(args, 0)
    assert saved_seed(args, 1) is None


def test_a_seed_saved_at_a_small_learning_rate_is_reused(tmp_path):
    # Rounded to 4 decimals, the saved 1e-5 read back as 0.0 and refused its own seed as "other settings".
    args = CompareArguments(output_dir=str(tmp_path), quick=True, finetune_learning_rate=1e-5, lambda_sparsity=3e-5)
    runs = {"finetune/pretrained": {"plain": {"scenes_atomic/acc": 0.123456}}}
    save_results({"settings": seed_settings(args), **runs}, tmp_path / "seed0" / "results.json")
    assert saved_seed(args, 0) == {"finetune/pretrained": {"plain": {"scenes_atomic/acc": 0.1235}}}
