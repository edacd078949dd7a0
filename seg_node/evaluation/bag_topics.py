"""Which topics of a bag ``bag_eval`` uses: the ones named on its command line, else make_bag's default names where
the bag has them, and the camera frames found on their own; it lists the bag's topics and says what it used."""
from __future__ import annotations

import argparse
import re
import sys
from typing import Sequence

from seg_node.evaluation.bag_io import CAMERA_INFO, DEFAULT_TOPICS, IMAGE_TYPES, BagReadError, BagSource

__all__ = ["DEFAULT_TOPICS", "topic_list", "resolve_topics", "no_gt_reason"]


def topic_list(source: BagSource) -> str:
    return "; ".join(f"{t.name} ({t.msgtype}, {t.count if t.count is not None else '?'} messages)"
                     for t in sorted(source.topics.values(), key=lambda t: t.name)) or "none"


_NOT_CAMERA = re.compile(r"depth|(^|[/_])gt([/_]|$)|label|mask|ground_?truth|segment|overlay|colors")


def resolve_topics(source: BagSource, args: argparse.Namespace) -> dict[str, str | None]:
    def check(name: str | None, allowed: Sequence[str], flag: str) -> str | None:
        if name is None:
            return None
        if name not in source.topics:
            if source.recovered:
                listed = ", ".join(sorted(source.expected)) or "unknown"
                raise BagReadError(f"{flag} {name}: not in the readable part of the damaged bag {source.path} "
                                   f"({source.open_error}; reading stops at: {source.read_error}). Readable topics: "
                                   f"{topic_list(source)}. Topics its metadata.yaml lists: {listed}")
            raise BagReadError(f"{flag} {name}: no such topic in {source.path}. Topics: {topic_list(source)}")
        msgtype = source.topics[name].msgtype
        if msgtype not in allowed:
            raise BagReadError(f"{flag} {name} has message type {msgtype}; it needs {' or '.join(allowed)}")
        return name

    topics = {"gt": check(args.gt_topic, IMAGE_TYPES, "--gt-topic"), "depth": check(args.depth_topic, IMAGE_TYPES, "--depth-topic"),
              "info": check(args.camera_info_topic, (CAMERA_INFO,), "--camera-info-topic")}
    found_by_name = []
    for kind, allowed in (("gt", IMAGE_TYPES), ("depth", IMAGE_TYPES), ("info", (CAMERA_INFO,))):
        default = DEFAULT_TOPICS[kind]
        if topics[kind] is None and not (kind == "gt" and args.gt_coco) and default in source.topics \
                and source.topics[default].msgtype in allowed:
            topics[kind] = default
            found_by_name.append(default)
    if args.image_topic:
        topics["image"] = check(args.image_topic, IMAGE_TYPES, "--image-topic")
    else:
        taken = {t for t in topics.values() if t}
        candidates = [t.name for t in source.topics.values() if t.msgtype in IMAGE_TYPES and t.name not in taken]
        if len(candidates) > 1:  # leave out what is named like depth, ground truth or labels
            camera = [c for c in candidates if not _NOT_CAMERA.search(c.lower())]
            candidates = camera if len(camera) == 1 else candidates
        if len(candidates) != 1:
            found = ", ".join(sorted(candidates)) if candidates else "none"
            raise BagReadError(f"{source.path}: cannot tell which topic holds the camera frames (image topics: {found}); "
                               f"choose one with --image-topic. Topics: {topic_list(source)}")
        topics["image"] = candidates[0]
    if topics["image"] in (topics["gt"], topics["depth"]):
        raise BagReadError(f"--image-topic {topics['image']} is also given as ground truth or depth")
    used = {"camera frames": topics["image"], "ground truth": topics["gt"] or (args.gt_coco and f"COCO {args.gt_coco}"),
            "depth": topics["depth"], "camera info": topics["info"]}
    print(f"bag_eval: topics in {source.path}: {topic_list(source)}", file=sys.stderr)
    print("bag_eval: using " + ", ".join(f"{k} {v or 'none'}" for k, v in used.items())
          + (f" ({', '.join(found_by_name)} by make_bag's default names)" if found_by_name else ""), file=sys.stderr)
    if not used["ground truth"]:
        print(f"bag_eval: {no_gt_reason(source)}", file=sys.stderr)
    return topics


def no_gt_reason(source: BagSource) -> str:
    default = DEFAULT_TOPICS["gt"]
    why = (f"{default} has type {source.topics[default].msgtype}, not an image" if default in source.topics
           else f"the bag has no {default} topic")
    return (f"no ground truth: no --gt-topic or --gt-coco given and {why}; frames are segmented, not scored "
            "(choose the ground-truth topic with --gt-topic)")
