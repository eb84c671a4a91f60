"""experiments/mask_sweep.py: a smoke run through the package's trainer, then the report and diagnostics from the
saved runs."""

import json

import pytest

from smartclip_experiments.mask_sweep import COLUMNS, MaskSweepArguments, main, report


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


def _run(seed, arm, value):
    """A finished run whose every table metric is `value`."""
    scores = {name: value for _, _, name in COLUMNS}
    metrics = {"plain": scores} if arm == "clip" else {"plain": scores, "modular": scores}
    return {"seed": seed, "arm": arm, "metrics": metrics}


def test_a_gain_is_called_only_beyond_clips_spread_in_every_seed():
    clip = [_run(seed, "clip", 0.25 + 0.01 * seed) for seed in range(3)]  # spread 0.02
    above = [_run(seed, "union:1e-3", 0.28 + 0.01 * seed) for seed in range(3)]  # +0.03 in every seed
    mixed = [_run(seed, "union:0", 0.25 + 0.01 * seed + (0.05 if seed else 0.0)) for seed in range(3)]
    single = [_run(0, "union:1e-2", 0.20)]
    args = MaskSweepArguments(seeds="0,1,2", arms="clip,union:1e-3,union:0,union:1e-2")
    table = report(args, clip + above + mixed + single, {}).splitlines()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in table if "| atomic |" in line]
    assert {row[0]: row[-1] for row in rows} == {"union:1e-3": "gain", "union:0": "not called",
                                                 "union:1e-2": "loss (one seed)"}
