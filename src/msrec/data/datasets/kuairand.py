"""KuaiRand-1K impressions joined with user and video features, one CSV (the Scenario-Wise Rec layout)."""

from __future__ import annotations

from msrec.data.datasets import Loaded, register
from msrec.data.datasets.common import ScenarioOptions, fill_missing_ids, find_file, keep_scenarios, require
from msrec.data.io import read_table

KUAIRAND_SPARSE = ["user_id", "video_id", "user_active_degree", "is_lowactive_period", "is_live_streamer",
                   "is_video_author", "follow_user_num_range", "fans_user_num_range", "friend_user_num_range",
                   "register_days_range", *[f"onehot_feat{i}" for i in range(18)], "video_type"]
KUAIRAND_DENSE = ["follow_user_num", "fans_user_num", "friend_user_num", "register_days", "duration_ms",
                  "server_width", "server_height"]
# Recorded after the impression: how the user reacted (the outcome or its consequences), or the video's
# state when the data was exported. Never features, whatever the file holds.
KUAIRAND_EXCLUDED = ["play_time_ms", "profile_stay_time", "comment_stay_time", "visible_status",
                     "is_like", "is_follow", "is_comment", "is_forward", "is_hate", "long_view",
                     "is_profile_enter"]


@register("kuairand", "KuaiRand-1K impressions with user/video features (is_click; scenario = tab)", ScenarioOptions)
def load(path: str | None, options: ScenarioOptions) -> Loaded:
    """KuaiRand-1K impressions joined with user and video features (`kuairand*.csv`).

    Scenario = `tab`, the app page the video was shown on; label = `is_click`; user = `user_id`. Sparse:
    the user and video ids and the categorical user/video features (activity degree, the is_* flags, the
    *_range buckets, onehot_feat0-17, video_type); dense: the user profile's counts (follow, fans and
    friend counts, register_days) and the video's shape (duration_ms, server_width/height). The profile
    features are the release's snapshot of each user, not measured per impression; they are user
    attributes, not reactions to the impression, so they stay (as in the published benchmarks).

    Excluded, as they leak the outcome: play_time_ms (how long the user watched: a consequence of the
    click), profile_stay_time and comment_stay_time (time spent on the author's profile / the comments
    after engaging), and the other feedback signals of the full logs (is_like, is_follow, is_comment,
    is_forward, is_hate, long_view, is_profile_enter) when a file has them. visible_status is left out as
    well: it is the video's state when the data was exported, after the impression (and constant in the
    sample). Features are an allow-list, so no other column of the file becomes one.
    """
    wanted = options.scenarios
    file = find_file("kuairand", path, "kuairand*.csv")
    table = read_table(file)
    require(table, ["user_id", "video_id", "is_click", "tab"], file, "KuaiRand")
    sparse = [c for c in KUAIRAND_SPARSE if c in table.column_names]
    dense = [c for c in KUAIRAND_DENSE if c in table.column_names]
    categorical = [c for c in sparse if c not in ("user_id", "video_id")]  # a missing id stays an error
    table = fill_missing_ids(keep_scenarios(table, "tab", wanted, file), categorical)
    return {"all": table}, {"sparse": sparse, "dense": dense, "lists": {}, "scenario": "tab",
                            "labels": ["is_click"], "user": "user_id"}
