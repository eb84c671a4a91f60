"""Smoke test of the one-command demo (`smartclip-compare`) at a tiny setting."""

import json

from transformers import AutoModel

from smartclip_experiments.compare import FINETUNE_ARMS, SCRATCH_ARMS, main


def test_compare_quick_run_writes_results_plots_and_a_hub_ready_model(tmp_path, capsys):
    main(["--quick", "--output_dir", str(tmp_path)])

    results = json.loads((tmp_path / "results.json").read_text())
    expected_runs = [f"scratch/{arm[0]}" for arm in SCRATCH_ARMS] + [f"finetune/{arm[0]}" for arm in FINETUNE_ARMS]
    assert set(expected_runs) <= set(results)
    for stage_arms, stage in ((SCRATCH_ARMS, "scratch"), (FINETUNE_ARMS, "finetune")):
        for name, _, _, scorings in stage_arms:
            run = results[f"{stage}/{name}"]
            assert [s for s in ("plain", "modular") if s in run] == list(scorings)
            assert 0.0 <= run["plain"]["scenes_long/t2i_R@1"] <= 1.0
            assert any("loss" in entry for entry in run["log_history"])
    assert "scenes/sentence_in_long" in results["finetune/smartclip-union"]["mask_stats"]

    table = capsys.readouterr().out
    assert "scratch/smartclip (modular)" in table and "finetune/random-mask (plain)" in table
    for plot in ("training_curves.png", "mask_usage.png"):
        assert (tmp_path / plot).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = AutoModel.from_pretrained(tmp_path / "smartclip", trust_remote_code=True)
    assert model.config.scoring == "modular" and model.config.mask_pooling == "attention"
