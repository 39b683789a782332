"""PersonTracker: ids stay stable through crossings, misses, stops and skipped frames."""

import numpy as np
import pytest

from trackers import PersonTracker
from trackers.person_tracker import box_iou, keypoint_boxes, keypoint_oks

FPS = 30.0


def person_box(cx: float, cy: float, w: float = 60.0, h: float = 150.0) -> np.ndarray:
    return np.array([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2])


def run(tracker: PersonTracker, frames: list[tuple[np.ndarray, np.ndarray]]) -> list[np.ndarray]:
    return [tracker.update(b, s, i / FPS) for i, (b, s) in enumerate(frames)]


def one(tracker: PersonTracker, box: np.ndarray, frame: int, score: float = 0.9) -> int:
    return int(tracker.update(box[None], np.array([score]), frame / FPS)[0])


def test_ids_stable_through_a_crossing_with_occlusion():
    # A walks right, B walks left on nearly the same line; B is behind A while they overlap, so its
    # detection scores low (second-stage association) or is missed.
    tracker = PersonTracker(frame_rate=FPS)
    ids_a, ids_b = [], []
    for f in range(80):
        a = person_box(100 + 5 * f, 200)
        b = person_box(500 - 5 * f, 196, w=56, h=140)
        overlap = box_iou(a[None], b[None])[0, 0]
        boxes, scores = [a], [0.9]
        if overlap < 0.6:
            boxes.append(b)
            scores.append(0.85 if overlap < 0.1 else 0.2)
        ids = tracker.update(np.array(boxes), np.array(scores), f / FPS)
        ids_a.append(ids[0])
        if len(ids) > 1:
            ids_b.append(ids[1])
    assert len(set(ids_a)) == 1 and ids_a[0] >= 1
    tracked_b = [i for i in ids_b if i >= 0]
    assert len(set(tracked_b)) == 1 and tracked_b[0] != ids_a[0]
    assert ids_b[-1] == tracked_b[0]


def test_id_kept_through_a_missed_stretch():
    tracker = PersonTracker(frame_rate=FPS)
    seen = []
    for f in range(70):
        if 25 <= f < 45:  # 20 frames (0.67 s) without any detection
            ids = tracker.update(np.zeros((0, 4)), np.zeros(0), f / FPS)
            assert ids.shape == (0,) and ids.dtype == np.int64
            continue
        seen.append(tracker.update(person_box(100 + 3 * f, 240)[None], np.array([0.8]), f / FPS)[0])
    assert set(seen) == {seen[0]} and seen[0] >= 1


def test_reentry_within_buffer_keeps_id_and_after_buffer_gets_new_one():
    tracker = PersonTracker(frame_rate=FPS, track_buffer=30)  # 1 s
    first = run(tracker, [(person_box(50 + 4 * f, 240)[None], np.array([0.9])) for f in range(20)])
    # Leaves the view for 0.5 s, re-enters where its motion leads.
    back = [one(tracker, person_box(50 + 4 * f, 240), f) for f in range(35, 45)]
    assert back[-1] == first[-1][0]
    # Gone for 2 s: a different person as far as the tracker can tell.
    later = [one(tracker, person_box(220, 240), 105 + f) for f in range(3)]
    assert later[-1] >= 1 and later[-1] != first[-1][0]


def test_skipped_frames_are_bridged_by_timestamps():
    # A fast walker (15 px per frame) observed only every 6th frame: boxes do not overlap between
    # observations; the prediction over the elapsed time does.
    tracker = PersonTracker(frame_rate=FPS)
    dense = run(tracker, [(person_box(60 + 15 * f, 240, w=40)[None], np.array([0.9])) for f in range(6)])
    sparse = [
        tracker.update(person_box(60 + 15 * f, 240, w=40)[None], np.array([0.9]), f / FPS)[0]
        for f in range(12, 60, 6)
    ]
    assert set(sparse) == {dense[-1][0]}


def test_low_score_detection_alone_does_not_start_a_track():
    tracker = PersonTracker(frame_rate=FPS)
    ids = [tracker.update(person_box(300, 240)[None], np.array([0.2]), f / FPS)[0] for f in range(10)]
    assert ids == [-1] * 10


def test_new_track_is_tentative_until_its_second_hit():
    tracker = PersonTracker(frame_rate=FPS)
    tracker.update(person_box(100, 240)[None], np.array([0.9]), 0.0)
    two = np.array([0.9, 0.9])
    ids = tracker.update(np.stack([person_box(102, 240), person_box(400, 240)]), two, 1 / FPS)
    assert ids[0] >= 1 and ids[1] == -1
    ids = tracker.update(np.stack([person_box(104, 240), person_box(401, 240)]), two, 2 / FPS)
    assert ids[1] >= 1 and ids[1] != ids[0]


def test_predict_extrapolates_and_leaves_state_alone():
    tracker = PersonTracker(frame_rate=FPS)
    for f in range(20):
        ids = tracker.update(person_box(100 + 4 * f, 240)[None], np.array([0.9]), f / FPS)
    pred_ids, boxes = tracker.predict(24 / FPS)
    assert pred_ids.tolist() == ids.tolist()
    expected = person_box(100 + 4 * 24, 240)
    assert np.abs(boxes[0] - expected).max() < 4.0
    assert tracker.time == pytest.approx(19 / FPS)
    assert tracker.update(person_box(100 + 4 * 20, 240)[None], np.array([0.9]), 20 / FPS)[0] == ids[0]
    # A newcomer seen once is predicted too, without an id yet, so its next crop can confirm it.
    newcomer = person_box(400, 240)
    tracker.update(np.stack([person_box(100 + 4 * 21, 240), newcomer]), np.array([0.9, 0.9]), 21 / FPS)
    pred_ids, boxes = tracker.predict(22 / FPS)
    assert sorted(pred_ids.tolist()) == [-1, int(ids[0])]
    assert np.abs(boxes[pred_ids == -1][0] - newcomer).max() < 1.0


def test_reset_forgets_tracks_but_never_reuses_ids():
    tracker = PersonTracker(frame_rate=FPS)
    for f in range(5):
        old = tracker.update(person_box(100, 240)[None], np.array([0.9]), f / FPS)
    tracker.reset()
    assert tracker.predict(0.0)[0].shape == (0,)
    new = tracker.update(person_box(100, 240)[None], np.array([0.9]), 0.0)  # time may restart
    assert new[0] >= 1 and new[0] != old[0]
    tracker.reset(restart_ids=True)
    assert tracker.update(person_box(100, 240)[None], np.array([0.9]), 0.0)[0] == 1
    tracker.reset(restart_ids=True, first_id=40)
    assert tracker.update(person_box(100, 240)[None], np.array([0.9]), 0.0)[0] == 40
    assert tracker.update(person_box(300, 240)[None], np.array([0.9]), 1.0)[0] == -1  # tentative
    assert tracker.update(person_box(301, 240)[None], np.array([0.9]), 1.04)[0] == 41


def test_empty_and_degenerate_input_gives_no_nan_and_no_ids():
    tracker = PersonTracker(frame_rate=FPS)
    assert tracker.update(np.zeros((0, 4)), np.zeros(0), 0.0).shape == (0,)
    ids_, boxes = tracker.predict(0.1)
    assert ids_.shape == (0,) and boxes.shape == (0, 4)
    bad = np.array([[10, 10, 10, 50], [np.nan, 0, 5, 5], [0, 0, 50, 120]], float)
    ids = tracker.update(bad, np.array([0.9, 0.9, np.nan]), 0.2)
    assert ids.tolist() == [-1, -1, -1]
    for f in range(7, 12):
        tracker.update(person_box(200, 240)[None], np.array([0.9]), f / FPS)
    _, boxes = tracker.predict(1.0)
    assert np.isfinite(boxes).all()


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda t: t.update(np.zeros((2, 4)), np.zeros(3), 0.0), "2 boxes but 3 scores"),
        (lambda t: t.update(np.zeros((1, 4)), np.ones(1), float("nan")), "finite"),
        (lambda t: t.update(np.zeros((1, 4)), np.ones(1), 0.0, keypoints=np.zeros((1, 5, 3))), "(N, K, 2)"),
        (lambda t: t.update(np.zeros((1, 4)), np.ones(1), 0.0, keypoints=np.zeros((1, 5, 2))), "5 keypoints"),
    ],
)
def test_bad_input_is_refused_with_a_clear_message(call, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        call(PersonTracker(frame_rate=FPS))


def test_time_going_backwards_is_refused():
    tracker = PersonTracker(frame_rate=FPS)
    tracker.update(person_box(100, 240)[None], np.array([0.9]), 1.0)
    with pytest.raises(ValueError, match="backwards"):
        tracker.update(person_box(100, 240)[None], np.array([0.9]), 0.5)


def test_keypoint_similarity_of_identical_and_distant_poses():
    rng = np.random.default_rng(0)
    pose = rng.uniform(0, 100, (1, 17, 2))
    visible = np.ones((1, 17), bool)
    sigmas = np.full(17, 0.05)
    oks, common = keypoint_oks(pose, visible, np.concatenate([pose, pose + 300]), np.ones((2, 17), bool),
                               np.array([1e4, 1e4]), sigmas)
    assert oks[0, 0] == pytest.approx(1.0) and oks[0, 1] < 1e-3 and common.all()
    oks, common = keypoint_oks(pose, np.zeros((1, 17), bool), pose, visible, np.array([1e4]), sigmas)
    assert not common[0, 0] and oks[0, 0] == 0.0


def test_pose_aware_association_keeps_ids_when_boxes_swap_places():
    # Two people side by side turn into boxes that overlap both; the keypoints tell them apart.
    rng = np.random.default_rng(1)
    skeleton = rng.uniform(-25, 25, (308, 2)) * np.array([1.0, 2.5])
    scores = np.ones((2, 308))
    tracker = PersonTracker(frame_rate=FPS)
    for f in range(8):
        centres = np.array([[200.0, 240.0], [262.0, 240.0]])
        boxes = np.stack([person_box(*c) for c in centres])
        ids = tracker.update(boxes, np.array([0.9, 0.9]), f / FPS, skeleton + centres[:, None], scores)
    first = ids.copy()
    # Next frame: both boxes widen into one blob region; the box of person 0 now sits right of centre.
    centres = np.array([[203.0, 240.0], [259.0, 240.0]])
    boxes = np.stack([person_box(231, 240, w=70), person_box(231, 240, w=66)])
    keypoints = skeleton + centres[::-1][:, None]  # box 0 holds person 1's keypoints and vice versa
    ids = tracker.update(boxes, np.array([0.9, 0.9]), 8 / FPS, keypoints, scores)
    assert ids.tolist() == first[::-1].tolist()


def test_keypoint_boxes_cover_confident_keypoints_and_feed_the_tracker():
    rng = np.random.default_rng(3)
    points = rng.uniform([200, 100], [260, 300], (2, 308, 2))
    scores = np.full((2, 308), 0.9)
    scores[1] = 0.1  # nobody confident in the second crop
    points[0, 0] = [900.0, 900.0]
    scores[0, 0] = 0.05  # a stray low-score point does not stretch the box
    boxes, box_scores = keypoint_boxes(points, scores)
    lo, hi = points[0, 1:].min(axis=0), points[0, 1:].max(axis=0)
    assert (boxes[0, :2] < lo).all() and (boxes[0, 2:] > hi).all() and boxes[0, 2] < 300
    assert box_scores[0] == pytest.approx(0.9) and box_scores[1] == 0.0 and np.isnan(boxes[1]).all()
    tracker = PersonTracker(frame_rate=FPS)
    for f in range(3):
        ids = tracker.update(boxes, box_scores, f / FPS)
    assert ids[0] >= 1 and ids[1] == -1


def test_occluded_persons_keypoints_on_the_front_person_do_not_swap_ids():
    # A walks right in front, B walks left behind. While their boxes overlap, the pose model puts B's
    # keypoints on A (a top-down model finds the most salient person in B's crop), and A's detection is
    # missed on every third frame. The boxes alone tell the two apart; the keypoints must not undo that.
    rng = np.random.default_rng(0)
    skeleton = rng.uniform(-25, 25, (17, 2)) * np.array([1.0, 2.5])
    tracker = PersonTracker(frame_rate=FPS, keypoint_sigmas=np.full(17, 0.08))
    ids_a, ids_b = [], []
    for f in range(60):
        centre_a, centre_b = np.array([150 + 4.0 * f, 240.0]), np.array([390 - 4.0 * f, 236.0])
        a, b = person_box(*centre_a), person_box(*centre_b)
        overlapping = box_iou(a[None], b[None])[0, 0] > 0
        boxes, scores = [b], [0.6 if overlapping else 0.85]
        keypoints = [skeleton + (centre_a if overlapping else centre_b)]
        a_seen = not (overlapping and f % 3 == 0)
        if a_seen:
            boxes.append(a)
            scores.append(0.9)
            keypoints.append(skeleton + centre_a)
        ids = tracker.update(np.array(boxes), np.array(scores), f / FPS, np.array(keypoints),
                             np.ones((len(boxes), 17)))
        ids_b.append(int(ids[0]))
        if a_seen:
            ids_a.append(int(ids[1]))
    assert len(set(ids_a)) == 1 and ids_a[0] >= 1
    assert set(ids_b) == {ids_b[0]} and ids_b[0] >= 1 and ids_b[0] != ids_a[0]


def test_keypoints_never_open_a_gate_the_boxes_keep_shut():
    # One person, alone; the box jumps (IoU with the prediction under the gate) while the keypoints stay
    # put. Keypoints only break near-ties: the jumped box is not matched, with or without them.
    rng = np.random.default_rng(2)
    skeleton = rng.uniform(-25, 25, (17, 2)) * np.array([1.0, 2.5])
    visible = np.ones((1, 17))
    for keypoints in (True, False):
        tracker = PersonTracker(frame_rate=FPS, keypoint_sigmas=np.full(17, 0.08), tie_weight=1.0)
        centre = np.array([200.0, 240.0])
        points = (skeleton + centre)[None] if keypoints else None
        for f in range(10):
            first = tracker.update(person_box(*centre)[None], np.array([0.9]), f / FPS, points, visible)
        jumped = person_box(centre[0] + 30, centre[1] + 55, w=70, h=110)
        assert tracker.update(jumped[None], np.array([0.9]), 10 / FPS, points, visible)[0] == -1
        back = tracker.update(person_box(*centre)[None], np.array([0.9]), 11 / FPS, points, visible)
        assert back[0] == first[0]


def test_box_only_tracking_is_bytetrack():
    # Without keypoints or frames, the tracker's association and life cycle are ByteTrack's: on a
    # cluttered scene (crossings, misses, weak boxes, false positives) it gives the same detections the
    # same partition into tracks as ultralytics' BYTETracker with the same thresholds.
    from types import SimpleNamespace

    from ultralytics.engine.results import Boxes
    from ultralytics.trackers.byte_tracker import BYTETracker

    rng = np.random.default_rng(1)
    tracker = PersonTracker(frame_rate=FPS)
    cfg = tracker.config
    reference = BYTETracker(SimpleNamespace(
        track_high_thresh=cfg.track_high_thresh, track_low_thresh=cfg.track_low_thresh,
        new_track_thresh=cfg.new_track_thresh, match_thresh=cfg.match_thresh, track_buffer=cfg.track_buffer,
        fuse_score=cfg.fuse_score,
    ))
    # Ten persons walking, nearing or leaving the camera (boxes grow or shrink), each missed a quarter
    # of the time, with scores anywhere from noise to confident, and false positives.
    start = rng.uniform([50, 150], [590, 330], (10, 2))
    speed = rng.uniform(-6, 6, (10, 2)) * np.array([1.0, 0.3])
    height, growth = rng.uniform(80, 200, 10), rng.uniform(-1.0, 1.0, 10)
    ids_seen, same_person = set(), {}
    for f in range(150):
        centres, heights = start + speed * f, np.maximum(height + growth * f, 40)
        seen = rng.random(10) > 0.25
        boxes = [
            person_box(*c, w=0.4 * h, h=h) + rng.normal(0, 2, 4)
            for c, h in zip(centres[seen], heights[seen], strict=True)
        ]
        scores = list(rng.uniform(0.05, 0.95, seen.sum()))
        boxes += [person_box(*rng.uniform([50, 150], [590, 330]), w=40, h=100) for _ in range(rng.poisson(1))]
        scores += list(rng.uniform(0.1, 0.6, len(boxes) - len(scores)))
        boxes, scores = np.array(boxes).reshape(-1, 4), np.array(scores)
        ours = tracker.update(boxes, scores, f / FPS)
        data = np.concatenate([boxes, scores[:, None], np.zeros((len(boxes), 1))], axis=1).astype(np.float32)
        theirs = {int(row[-1]): int(row[4]) for row in reference.update(Boxes(data, (480, 640)))}
        assert set(np.flatnonzero(ours >= 0).tolist()) == set(theirs), f"frame {f}"
        for det, their_id in theirs.items():
            assert same_person.setdefault(int(ours[det]), their_id) == their_id, f"frame {f}"
        ids_seen |= set(theirs.values())
    assert len(ids_seen) > 10  # the scene did make tracks break and start


def test_thresholds_come_from_one_config_and_bad_settings_are_refused():
    from trackers import TrackerConfig

    config = TrackerConfig(new_track_thresh=0.6)
    assert PersonTracker(frame_rate=FPS, config=config, track_buffer=60).config == TrackerConfig(
        new_track_thresh=0.6, track_buffer=60
    )
    with pytest.raises(TypeError, match="unknown tracker setting"):
        PersonTracker(frame_rate=FPS, new_track_threshold=0.6)
    with pytest.raises(ValueError, match="track_low_thresh"):
        TrackerConfig(track_low_thresh=0.5, track_high_thresh=0.3)
