import pytest

from adapt.selfsup.gate import FrameStats, GateConfig, chance_bound, gate

PARENT = FrameStats(frames=40, mean_count=50.0, mean_count_std=4.0, flip_accuracy=0.5)


def candidate(**kw):
    base = dict(frames=40, mean_count=55.0, mean_count_std=3.0, flip_accuracy=0.9)
    base.update(kw)
    return FrameStats(**base)


def test_a_sound_candidate_is_accepted():
    r = gate(PARENT, candidate())
    assert r.accepted and r.reasons == [] and r.decided_by == "label-free"


def test_counts_may_move_only_within_the_band():
    assert "fell too far" in gate(PARENT, candidate(mean_count=5.0)).reasons[0]
    assert "rose too far" in gate(PARENT, candidate(mean_count=500.0)).reasons[0]
    # (count + 1) ratios against the parent's 51: 0.65 and 1.53 are outside [0.67, 1.5], 0.69 and 1.47 inside
    assert not gate(PARENT, candidate(mean_count=32.15)).accepted
    assert gate(PARENT, candidate(mean_count=34.2)).accepted
    assert gate(PARENT, candidate(mean_count=74.0)).accepted
    assert not gate(PARENT, candidate(mean_count=77.0)).accepted
    # a camera known to be far off can widen it
    assert gate(PARENT, candidate(mean_count=25.0), GateConfig(min_count_ratio=0.4)).accepted
    with pytest.raises(ValueError, match="count ratios"):
        GateConfig(min_count_ratio=1.2)


def test_uncertainty_must_drop():
    r = gate(PARENT, candidate(mean_count_std=4.0))
    assert not r.accepted and "uncertainty did not drop" in r.reasons[0]
    assert not gate(PARENT, candidate(mean_count_std=3.9), GateConfig(min_uncertainty_drop=0.1)).accepted


def test_the_optional_per_person_test_refuses_std_that_only_follows_counts():
    strict = GateConfig(per_person_uncertainty=True)
    # std fell by 25%, but counts fell by 30%: per person the model is less sure
    r = gate(PARENT, candidate(mean_count=35.0, mean_count_std=3.0), strict)
    assert not r.accepted and len(r.reasons) == 1 and "per counted person" in r.reasons[0]
    # the same std drop with counts held is a real gain
    assert gate(PARENT, candidate(mean_count=50.0, mean_count_std=3.0), strict).accepted
    # off by default: it refused right corrections of an overcount (research/NOTEBOOK.md)
    assert gate(PARENT, candidate(mean_count=35.0, mean_count_std=3.0)).accepted


def test_flip_head_at_chance_is_refused():
    r = gate(PARENT, candidate(flip_accuracy=0.55))
    assert not r.accepted and "chance" in r.reasons[0]
    # with few frames, chance is harder to beat
    assert chance_bound(4, 0.6) > chance_bound(400, 0.6) >= 0.6


def test_non_finite_counts_are_refused():
    assert not gate(PARENT, candidate(mean_count=float("nan"))).accepted


def test_labelled_frames_decide_by_mae():
    lp = FrameStats(frames=5, mean_count=50, mean_count_std=4, mae=10.0)
    better = FrameStats(frames=5, mean_count=50, mean_count_std=5, mae=8.0)
    worse = FrameStats(frames=5, mean_count=50, mean_count_std=1, mae=12.0)
    # label-free figures would refuse "better" (uncertainty rose) and accept "worse"
    r = gate(PARENT, candidate(mean_count_std=5.0), labelled=(lp, better))
    assert r.accepted and r.decided_by == "labelled-mae"
    assert not gate(PARENT, candidate(), labelled=(lp, worse)).accepted


def test_frame_stats_leave_an_unreadable_frame_out_instead_of_scoring_its_stand_in_twice(tmp_path):
    import cv2
    import numpy as np
    import torch
    from torch.utils.data import DataLoader

    from adapt.data.crowd_dataset import FrameFolder, collate
    from adapt.selfsup.gate import frame_stats
    from tests.test_network import perturbed_model

    rng = np.random.default_rng(0)
    paths = []
    for i in range(3):
        paths.append(tmp_path / f"f{i}.jpg")
        cv2.imwrite(str(paths[-1]), rng.integers(0, 255, (64, 96, 3), dtype=np.uint8))
    (tmp_path / "f1.jpg").write_bytes(b"not a jpeg")
    loader = DataLoader(FrameFolder(paths, None, max_side=96), batch_size=1, collate_fn=collate)
    model = perturbed_model()
    stats = frame_stats(model, loader, torch.device("cpu"))
    assert stats.frames == 2 and stats.unreadable == 1 and 0.0 <= stats.flip_accuracy <= 1.0
    # the same figures as over the two readable frames alone
    clean = DataLoader(FrameFolder([paths[0], paths[2]], None, max_side=96), batch_size=1, collate_fn=collate)
    alone = frame_stats(model, clean, torch.device("cpu"))
    assert stats.mean_count == pytest.approx(alone.mean_count) and stats.flip_accuracy == alone.flip_accuracy


def test_a_held_count_does_not_hide_a_collapse_from_the_label_free_gate():
    # the served counts look fine, but the stages had halved them before they were held
    r = gate(PARENT, candidate(mean_count=50.0), count_ratio_before_keep=0.5)
    assert not r.accepted and "before the parent's count was held" in r.reasons[0]
    assert gate(PARENT, candidate(mean_count=50.0), count_ratio_before_keep=1.2).accepted
    # labelled frames decide on their own
    lp = FrameStats(frames=5, mean_count=50, mean_count_std=4, mae=10.0)
    lc = FrameStats(frames=5, mean_count=50, mean_count_std=4, mae=8.0)
    assert gate(PARENT, candidate(), labelled=(lp, lc), count_ratio_before_keep=0.3).accepted


# -- with a scene model: the level comes from the camera's own evidence --------------------------

from adapt.selfsup.gate import SceneStats  # noqa: E402

SCENE_PARENT = SceneStats(empty_scene_count=12.0, background_count=9.0, moving_count=11.0, composite_mae=6.0, composites=40)


def scene_candidate(**kw):
    base = dict(empty_scene_count=0.2, background_count=0.3, moving_count=6.5, composite_mae=1.0, composites=40)
    base.update(kw)
    return SceneStats(**base)


def test_with_a_scene_a_right_correction_of_an_overcount_is_accepted():
    # 50 -> 7 people is far outside the paper-stages band, but the camera's own evidence backs it
    r = gate(PARENT, candidate(mean_count=7.0, mean_count_std=4.5), scene=(SCENE_PARENT, scene_candidate()))
    assert r.accepted, r.reasons


def test_a_candidate_that_counts_people_on_the_empty_scene_is_refused():
    r = gate(PARENT, candidate(mean_count=7.0), scene=(SCENE_PARENT, scene_candidate(empty_scene_count=3.0)))
    assert not r.accepted and any("empty scene" in x for x in r.reasons)
    r = gate(PARENT, candidate(mean_count=7.0), scene=(SCENE_PARENT, scene_candidate(background_count=2.0)))
    assert not r.accepted and any("static background" in x for x in r.reasons)
    # even when a few labelled frames decide, a model that counts the scene is never published
    labelled = (FrameStats(8, 50.0, 1.0, mae=40.0), FrameStats(8, 7.0, 1.0, mae=1.0))
    r = gate(PARENT, candidate(mean_count=7.0), labelled=labelled, scene=(SCENE_PARENT, scene_candidate(empty_scene_count=3.0)))
    assert not r.accepted and r.decided_by == "labelled-mae"


def test_with_a_scene_composites_and_the_moving_count_guard_a_collapse():
    r = gate(PARENT, candidate(mean_count=0.5), scene=(SCENE_PARENT, scene_candidate(moving_count=0.2)))
    assert not r.accepted and any("where people walk" in x for x in r.reasons)
    r = gate(PARENT, candidate(mean_count=7.0), scene=(SCENE_PARENT, scene_candidate(composite_mae=7.0)))
    assert not r.accepted and any("composites" in x for x in r.reasons)
