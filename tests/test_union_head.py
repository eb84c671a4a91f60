"""The union-head sweep: a tiny run end to end, and its report on runs whose answer is known."""

import json

import pytest

from smartclip_experiments.union_head import UnionHeadArguments, correlation, main, report, run_key


def test_quick_sweep_records_trajectories_shares_clip_runs_and_reuses_finished_runs(tmp_path, capsys):
    argv = ["--quick", "--output_dir", str(tmp_path), "--settings", "package,head-lr-1e-2", "--seeds", "0,1"]
    main(argv)
    runs = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    # CLIP has no head: head-lr-1e-2 reuses package's CLIP run of each seed.
    assert sorted((run["arm"], run["seed"], run["mask_learning_rate"] if run["arm"] == "union" else None)
                  for run in runs) == [("clip", 0, None), ("clip", 1, None), ("union", 0, 1e-3), ("union", 0, 1e-2),
                                       ("union", 1, 1e-3), ("union", 1, 1e-2)]
    union = next(run for run in runs if run["arm"] == "union")
    assert [record["step"] for record in union["trajectory"]] == [2, 4]
    assert {"modular:scenes_atomic/acc", "mask:scenes/density_long", "mask:scenes/sentence_overlap"} <= set(
        union["trajectory"][0])
    assert "modular:scenes_atomic/acc" not in runs[0]["final"]  # CLIP is scored plainly only
    assert "| package | 2 |" in (tmp_path / "results.md").read_text()
    assert (tmp_path / "atomic_along_training.png").stat().st_size > 0

    main(argv)  # every run is finished: nothing is trained again
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 6
    main([*argv[:-1], "0,1,2", "--report_only"])  # seed 2 never ran: reported as missing, not trained
    assert len((tmp_path / "runs.jsonl").read_text().splitlines()) == 6
    assert "| package | 2 |" in (tmp_path / "results.md").read_text()


def _run(seed, arm, atomic, density):
    final = {"step": 4, "plain:scenes_atomic/acc": atomic if arm == "clip" else 0.1, "mask:scenes/density_long": 0.9,
             "mask:scenes/density_sentence": density, "mask:scenes/sentence_in_long": 0.9,
             "mask:scenes/sentence_overlap": 0.5}
    if arm == "union":
        final["modular:scenes_atomic/acc"] = atomic
    return {**run_key("package", seed, arm), "final": final, "trajectory": [final]}


def test_report_calls_a_gain_only_beyond_clips_spread_over_seeds():
    args = UnionHeadArguments(seeds="0,1,2", settings="package")
    clip = [_run(0, "clip", 0.40, 0), _run(1, "clip", 0.42, 0), _run(2, "clip", 0.44, 0)]  # spread 0.04
    union = [_run(0, "union", 0.60, 0.2), _run(1, "union", 0.45, 0.5), _run(2, "union", 0.47, 0.6)]
    text = report(args, clip + union)
    assert "+0.200, +0.030, +0.030 | 0.040 | 1 of 3 |" in text
    # The sparser the sentence masks, the larger the gain: a negative correlation.
    assert "| scenes/density_sentence | -0.97 |" in text  # by hand: -0.0397 / (0.2944 * 0.1388)
    assert "| scenes/sentence_overlap | - |" in text  # constant over the runs: no correlation


def test_correlation():
    assert correlation([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1.0)
    assert correlation([1, 1, 1], [1, 2, 3]) != correlation([1, 1, 1], [1, 2, 3])  # nan: one side is constant
