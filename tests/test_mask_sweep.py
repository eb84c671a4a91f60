"""experiments/mask_sweep.py: a smoke run through the package's trainer, then the report and diagnostics from the
saved runs."""

import json

import pytest

from smartclip_experiments.mask_sweep import MaskSweepArguments, main


def test_quick_sweep_trains_reports_and_diagnoses_the_saved_models(tmp_path, capsys):
    main(["--quick", "--seeds", "0", "--arms", "clip,union:1e-3", "--output_dir", str(tmp_path), "--diagnose"])
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert [run["arm"] for run in runs] == ["clip", "union:1e-3"]
    assert "modular" in runs[1]["metrics"] and "modular" not in runs[0]["metrics"]
    diagnostics = json.loads((tmp_path / "diagnostics.json").read_text())
    assert "density_ratio" in diagnostics["default-seed0-union-1e-3"]
    assert "density_ratio" not in diagnostics["default-seed0-clip"]  # CLIP has no trained masks
    out = capsys.readouterr().out
    assert "| union:1e-3 | 1 |" in out and "Concept-level mask diagnostics" in out

    # A second call reuses the finished runs: nothing is trained again.
    main(["--quick", "--seeds", "0", "--arms", "clip,union:1e-3", "--output_dir", str(tmp_path)])
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("arms", ["siglip", "union:-1", "union:x", "gated:1e-3"])
def test_a_bad_arm_is_a_clear_error(arms):
    with pytest.raises(ValueError, match="--arms"):
        MaskSweepArguments(arms=arms)
