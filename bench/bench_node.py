"""Benchmark of the segmenter node over real DDS (loopback, Fast DDS large-image profile), node in its own process.

    .venv/bin/python bench/bench_node.py [--seconds 5] [--overhead-frames 60] [--repeats 3]

1. Node overhead at 640×480: frames paced at 10 Hz (below the node's capacity, so nothing queues); per frame,
   end-to-end latency (publisher stamp → ~/segments received here) minus the Segmenter's own time for that frame
   (the stage times the node publishes on ~/latency, matched by stamp). Goal: median ≤ 5 ms.
2. Sustained rate with the oracle model (an Identity graph: the network is trivially fast) at 640×480 and
   1280×720 for --seconds; reported are the rate the node takes frames in (its /diagnostics input count), the rate
   its ~/segments and ~/labels arrive here (both are subscribed, as a robot would), frames dropped as stale, latency,
   and the node process's CPU and page faults per frame. Goal: ≥ 100 Hz. A publisher at exactly 100 Hz
   caps the output at 100 Hz and any arrival jitter while the node is busy drops a frame, so the 640×480 run at
   100 Hz shows that case and the capacity runs publish faster (--capacity-rate, 125 Hz): the node is then never
   idle waiting for a frame, and its output rate is what it sustains.
   The network sees the full frame (``model.processing_resolution: 0``); two more nodes run 1280×720 as the
   deployment profiles run such frames, with the network's long edge at 768 (config/cpu_onnx.yaml, cuda_torch.yaml)
   and at 640: instances are then found at the network's resolution and the label image scaled up
   (``model.label_resolution: network``). Those two run --repeats times at capacity and at exactly 100 Hz: on this
   machine their rate varies by ±15 % from run to run, so each is reported by its median run, with the range.

Ratios come from one run (this machine is shared and noisy; this process, the camera stand-in and consumer, shares
its cores with the node, and keeps frame buffers on the heap as the node does: seg_node.ros.allocator). Writes
bench/results/node.json with the command that produced it.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # the ROS test helpers (domain lock, node process, client, test models)

from tests.helpers.ros_helpers import (  # noqa: E402
    NodeProcess,
    RosClient,
    allocate_domain,
    diagnostics_values,
    now_header,
    paint,
    rectangles_scene,
    ros_env,
)
from tests.helpers.oracle_model import make_oracle_onnx  # noqa: E402

NODE = "segmenter"
SEGMENTS, LABELS, LATENCY = f"/{NODE}/segments", f"/{NODE}/labels", f"/{NODE}/latency"
SEGMENTER_STAGES = ("preprocess", "network", "postprocess", "instances", "geometry", "tracking")
GOAL_OVERHEAD_MS = 5.0
GOAL_RATE_HZ = 100.0
# model.processing_resolution of config/cpu_onnx.yaml and cuda_torch.yaml (768), and a 640 that halves 1280x720.
PROFILE_RESOLUTIONS = (768, 640)


def node_cpu(pid: int) -> tuple[float, int]:
    """CPU seconds (user + system, all threads) and minor page faults of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), int(fields[7])


def stamp_key(h) -> tuple[int, int]:
    return int(h.stamp.sec), int(h.stamp.nanosec)


def scene(h: int, w: int) -> np.ndarray:
    s = w / 640
    boxes = [(int(x * s), int(y * s), int(bw * s), int(bh * s))
             for x, y, bw, bh in [(60, 50, 200, 150), (360, 80, 150, 120), (120, 300, 100, 120), (420, 300, 160, 100)]]
    return paint(rectangles_scene(h, w, boxes))


def measure_overhead(c: RosClient, pub, h: int, w: int, frames: int, rate: float) -> dict:
    from seg_node.processing.image_codec import numpy_to_image

    rgb = scene(h, w)
    c.clear()
    sent = []
    t0 = time.monotonic()
    for i in range(frames):
        msg = numpy_to_image(rgb, "rgb8")
        msg.header = hdr = now_header()  # stamped right before publish
        pub.publish(msg)
        sent.append(stamp_key(hdr))
        time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
    c.wait_for(lambda: len(c.received[SEGMENTS]) >= frames and len(c.received[LATENCY]) >= frames, 10)
    with c.lock:
        arrivals = {stamp_key(m.header): t for t, m in c.received[SEGMENTS]}
        stages = {stamp_key(m.header): {kv.key: float(kv.value) for kv in m.status[0].values}
                  for _, m in c.received[LATENCY]}
    rows = []
    for key in sent[5:]:  # the first frames warm up caches and the allocator
        if key in arrivals and key in stages:
            e2e = (arrivals[key] - (key[0] + key[1] * 1e-9)) * 1e3
            seg = sum(stages[key].get(s, 0.0) for s in SEGMENTER_STAGES)
            rows.append((e2e, seg, stages[key]["network"], stages[key].get("wait", 0.0), stages[key].get("decode", 0.0),
                         stages[key].get("publish", 0.0), stages[key].get("transport", 0.0),
                         stages[key].get("end_to_end", 0.0)))
    a = np.array(rows)
    return {
        "resolution": f"{w}x{h}", "frames_sent": frames, "frames_measured": len(rows), "rate_hz": rate,
        "end_to_end_ms_median": float(np.median(a[:, 0])),
        "segmenter_ms_median": float(np.median(a[:, 1])),
        "network_ms_median": float(np.median(a[:, 2])),
        "overhead_ms_median": float(np.median(a[:, 0] - a[:, 1])),
        "overhead_ms_p95": float(np.percentile(a[:, 0] - a[:, 1], 95)),
        "overhead_vs_network_ms_median": float(np.median(a[:, 0] - a[:, 2])),
        "node_wait_ms_median": float(np.median(a[:, 3])),
        "node_decode_ms_median": float(np.median(a[:, 4])),
        "node_publish_ms_median": float(np.median(a[:, 5])),
        # Stamp → the node's image callback (publisher serialisation, DDS, deserialisation, executor dispatch).
        "transport_in_ms_median": float(np.median(a[:, 6])),
        # The node's last publish → ~/segments received here.
        "transport_out_ms_median": float(np.median(a[:, 0] - a[:, 7])),
        "overhead_share_of_end_to_end": float(np.median((a[:, 0] - a[:, 1]) / a[:, 0])),
    }


def output_rate(s: dict) -> float:
    """What a consumer got: the node's output rate, or less if labels were lost on the way."""
    return min(s["node_output_rate_hz"], s["labels_received_rate_hz"])


def measure_sustained(c: RosClient, pub, node_pid: int, h: int, w: int, seconds: float, rate: float) -> dict:
    from seg_node.processing.image_codec import numpy_to_image

    rgb = scene(h, w)
    msgs = [numpy_to_image(rgb, "rgb8") for _ in range(2)]
    # A node without /diagnostics (relay_node.py) reports no input count.
    diagnostics = c.messages("/diagnostics")
    before = diagnostics_values(diagnostics[-1]) if diagnostics else None
    for topic in (SEGMENTS, LABELS, LATENCY):
        c.clear(topic)
    cpu0, faults0 = node_cpu(node_pid)
    t0 = time.monotonic()
    sent = 0
    while time.monotonic() - t0 < seconds:
        msg = msgs[sent % 2]
        msg.header = now_header()
        try:
            pub.publish(msg)
        except Exception:  # RCLError under load (rmw_fastrtps#310); counted as not sent
            pass
        else:
            sent += 1
        time.sleep(max(0.0, t0 + sent / rate - time.monotonic()))
    elapsed = time.monotonic() - t0
    cpu1, faults1 = node_cpu(node_pid)
    time.sleep(1.5)  # one diagnostics period, and the last outputs
    after = diagnostics_values(c.messages("/diagnostics")[-1]) if before is not None else None
    with c.lock:
        got = [(t, m) for t, m in c.received[SEGMENTS]]
        labels_got = len(c.received[LABELS])
        stages = [{kv.key: float(kv.value) for kv in m.status[0].values} for _, m in c.received[LATENCY]]
    lat = np.array([(t - (m.header.stamp.sec + m.header.stamp.nanosec * 1e-9)) * 1e3 for t, m in got])
    if after is not None:
        received = int(after["frames_received"]) - int(before["frames_received"])
        processed = int(after["frames_processed"]) - int(before["frames_processed"])
        dropped = int(after["frames_dropped"]) - int(before["frames_dropped"])
    else:
        received = dropped = None
        processed = len(got)
    return {
        "resolution": f"{w}x{h}", "seconds": round(elapsed, 2), "publish_rate_hz": sent / elapsed,
        "node_input_rate_hz": received / elapsed if received is not None else None,
        "node_output_rate_hz": len(got) / elapsed,
        "labels_received_rate_hz": labels_got / elapsed,
        # The node process's CPU (all threads: DDS, executor, both pipeline stages) and its minor page faults.
        "node_cpu_cores": (cpu1 - cpu0) / elapsed, "node_page_faults_per_frame": (faults1 - faults0) / max(1, processed if received is None else received),
        "frames_sent": sent, "frames_received_by_node": received, "frames_processed": processed,
        "frames_dropped_stale": dropped,
        "latency_ms_p50": float(np.median(lat)) if len(lat) else None,
        "latency_ms_p95": float(np.percentile(lat, 95)) if len(lat) else None,
        # Per processed frame of this run (from ~/latency).
        "node_stage_ms_median": {k: float(np.median([s[k] for s in stages if k in s])) for k in (stages[0] if stages else {})},
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="length of each sustained-rate run")
    parser.add_argument("--overhead-frames", type=int, default=60, help="frames for the overhead measurement")
    parser.add_argument("--capacity-rate", type=float, default=125.0,
                        help="publish rate of the capacity runs (above the goal, so the node never waits for a frame)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each 1280x720 profile resolution at each rate; the median run is reported")
    parser.add_argument("--output", type=Path, default=REPO / "bench" / "results" / "node.json")
    args = parser.parse_args()
    command = " ".join([".venv/bin/python", "bench/bench_node.py", *map(shlex.quote, sys.argv[1:])])
    from seg_node.ros.allocator import keep_frame_buffers

    # The node does this at start-up; the camera stand-in and consumer here share its 2 cores, so they do it too.
    print(f"bench process: {keep_frame_buffers()}")

    tmp = Path(tempfile.mkdtemp(prefix="bench_node_"))
    model = make_oracle_onnx(tmp / "oracle.onnx")
    from diagnostic_msgs.msg import DiagnosticArray
    from sensor_msgs.msg import Image
    from seg_msgs.msg import SegmentArray

    def with_node(processing_resolution: int | None, work):
        """The segmenter with the network at ``processing_resolution``, or (None) relay_node.py, and ``work``."""
        lease = allocate_domain()
        name = "relay" if processing_resolution is None else f"node_{processing_resolution}"
        env = ros_env(lease.domain, tmp / f"ros_log_{name}")
        if processing_resolution is None:
            node = NodeProcess(env, tmp / f"{name}.log", command=[sys.executable, str(REPO / "bench" / "relay_node.py")])
        else:
            node = NodeProcess(env, tmp / f"{name}.log", {
                "model.path": str(model), "model.processing_resolution": processing_resolution, "backend.threads": 1,
                "diagnostics.publish_latency": True,
                "diagnostics.period": 0.5, "diagnostics.window": 1000})
        c = RosClient(lease.domain, "bench_client")
        try:
            c.subscribe(SegmentArray, SEGMENTS, depth=100)
            # What a robot consumes with the segments: the label image (counted only; not kept).
            c.subscribe(Image, LABELS, depth=100, keep=False)
            pub = c.publisher(Image, "/image", reliable=True, depth=5)
            if processing_resolution is None:
                node.wait_ready(text="relay ready")
                c.wait_matched([pub], [(SEGMENTS, 1), (LABELS, 1)])
            else:
                c.subscribe(DiagnosticArray, LATENCY, depth=100)
                c.subscribe(DiagnosticArray, "/diagnostics")
                node.wait_ready()
                c.wait_matched([pub], [(SEGMENTS, 1), (LABELS, 1), (LATENCY, 1), ("/diagnostics", 1)])
                c.wait_for(lambda: c.messages("/diagnostics"), 5)
            print(f"{name} pid {node.pid}, domain {lease.domain}, Fast DDS profile {env['FASTDDS_DEFAULT_PROFILES_FILE']}")
            out = work(c, pub, node.pid)
            rss = node.rss_mb()
        finally:
            c.close()
            rc, stop_s = node.stop()
            lease.release()
        return out, rss, rc, stop_s

    def full_resolution(c: RosClient, pub, pid: int):
        overhead = [measure_overhead(c, pub, 480, 640, args.overhead_frames, 10.0),
                    measure_overhead(c, pub, 720, 1280, args.overhead_frames, 5.0)]
        sustained = [measure_sustained(c, pub, pid, 480, 640, args.seconds, GOAL_RATE_HZ),
                     measure_sustained(c, pub, pid, 480, 640, args.seconds, args.capacity_rate),
                     measure_sustained(c, pub, pid, 720, 1280, args.seconds, args.capacity_rate)]
        for s in sustained:
            s["network_input"] = s["resolution"]
        return overhead, sustained

    def hd_at(processing_resolution: int):
        def run(c: RosClient, pub, pid: int):
            out = []
            for rate in (GOAL_RATE_HZ, args.capacity_rate):
                runs = sorted((measure_sustained(c, pub, pid, 720, 1280, args.seconds, rate) for _ in range(args.repeats)),
                              key=output_rate)
                s = runs[len(runs) // 2]
                s["network_input"] = f"{processing_resolution}x{round(720 * processing_resolution / 1280)}"
                s["output_rate_hz_runs"] = [round(output_rate(r), 1) for r in runs]
                out.append(s)
            return out
        return run

    def relay(c: RosClient, pub, pid: int):
        return {f"{w}x{h}": measure_sustained(c, pub, pid, h, w, args.seconds, args.capacity_rate)
                for h, w in ((480, 640), (720, 1280))}

    (overhead, sustained), rss_mb, rc, stop_s = with_node(0, full_resolution)
    for processing_resolution in PROFILE_RESOLUTIONS:
        runs, _, _, _ = with_node(processing_resolution, hd_at(processing_resolution))
        sustained += runs
    floor, _, _, _ = with_node(None, relay)
    for s in sustained:
        r = floor[s["resolution"]]
        s["relay_output_rate_hz"] = r["node_output_rate_hz"]
        s["share_of_relay"] = s["node_output_rate_hz"] / r["node_output_rate_hz"] if s["publish_rate_hz"] > GOAL_RATE_HZ else None

    def verdict(ok: bool) -> str:
        return "PASS" if ok else "FAIL"

    goals = []
    o = overhead[0]
    goals.append({"goal": f"node overhead median <= {GOAL_OVERHEAD_MS} ms at 640x480",
                  "value_ms": round(o["overhead_ms_median"], 2), "pass": o["overhead_ms_median"] <= GOAL_OVERHEAD_MS})
    for s in sustained:
        where = f"{s['resolution']}, network at {s['network_input']}, sent at {s['publish_rate_hz']:.0f} Hz"
        goals.append({"goal": f"takes in >= {GOAL_RATE_HZ:.0f} Hz at {where} (input sustained)",
                      "value_hz": round(s["node_input_rate_hz"], 1),
                      "pass": s["node_input_rate_hz"] >= 0.95 * GOAL_RATE_HZ})
        out_hz = output_rate(s)
        # Sent at exactly the goal rate, the output cannot exceed it: there it must keep 99 % of the frames.
        need = min(GOAL_RATE_HZ, 0.99 * s["publish_rate_hz"])
        goals.append({"goal": f"segments and labels >= {need:.0f} Hz at {where} (output, oracle model)",
                      "value_hz": round(out_hz, 1), "pass": out_hz >= need})

    print("\n== node overhead (end-to-end minus the Segmenter's own time), paced below capacity")
    for o in overhead:
        print(f"  {o['resolution']:>9}: end-to-end {o['end_to_end_ms_median']:.1f} ms = Segmenter "
              f"{o['segmenter_ms_median']:.1f} ms (network {o['network_ms_median']:.2f}) + node overhead "
              f"{o['overhead_ms_median']:.2f} ms (p95 {o['overhead_ms_p95']:.2f}; decode {o['node_decode_ms_median']:.2f}, "
              f"publish {o['node_publish_ms_median']:.2f}, mailbox wait {o['node_wait_ms_median']:.2f}, transport in "
              f"{o['transport_in_ms_median']:.2f}, out {o['transport_out_ms_median']:.2f}); overhead "
              f"share {o['overhead_share_of_end_to_end']:.0%}")
    print("\n== sustained, oracle model")
    for s in sustained:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in s["node_stage_ms_median"].items()
                           if k in ("decode",) + SEGMENTER_STAGES + ("publish",))
        runs = s.get("output_rate_hz_runs")
        if runs is not None:
            print(f"  {s['resolution']:>9} (network at {s['network_input']}), {len(runs)} runs: segmented "
                  f"{' / '.join(f'{r:.1f}' for r in runs)} Hz; the median run:")
        print(f"  {s['resolution']:>9} (network at {s['network_input']}): published {s['publish_rate_hz']:.1f} Hz, node took in "
              f"{s['node_input_rate_hz']:.1f} Hz, segmented {s['node_output_rate_hz']:.1f} Hz (labels received "
              f"{s['labels_received_rate_hz']:.1f} Hz; {s['frames_dropped_stale']} stale frames dropped), latency p50 "
              f"{s['latency_ms_p50']:.0f} ms p95 {s['latency_ms_p95']:.0f} ms; node CPU {s['node_cpu_cores']:.2f} cores, "
              f"{s['node_page_faults_per_frame']:.0f} page faults per frame; per-frame stages ms: {stages}")
    print("\n== the floor: relay_node.py (decode, publish an empty label image and SegmentArray; no model, no instances)")
    for r in floor.values():
        print(f"  {r['resolution']:>9}: published {r['publish_rate_hz']:.1f} Hz, relayed {r['node_output_rate_hz']:.1f} Hz "
              f"(labels received {r['labels_received_rate_hz']:.1f} Hz), latency p50 {r['latency_ms_p50']:.0f} ms; relay CPU "
              f"{r['node_cpu_cores']:.2f} cores, {r['node_page_faults_per_frame']:.0f} page faults per frame")
    for s in sustained:
        if s["share_of_relay"] is not None:
            print(f"  segmenter at {s['resolution']} (network at {s['network_input']}): {s['share_of_relay']:.0%} of the "
                  f"relay's rate")
    print("\n== goals")
    for g in goals:
        value = f"{g['value_ms']} ms" if "value_ms" in g else f"{g['value_hz']} Hz"
        print(f"  {verdict(g['pass'])}  {g['goal']}: {value}")
    print(f"\nnode RSS at the end {rss_mb:.0f} MB; stopped with SIGINT in {stop_s:.2f} s (exit code {rc})")

    result = {
        "command": command, "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": platform.platform(),
        "cpus": os.cpu_count(), "fastdds_profile": "config/fastdds_large_images.xml",
        "overhead": overhead, "sustained": sustained, "relay": floor, "goals": goals, "node_rss_mb": rss_mb,
        "shutdown_s": stop_s, "exit_code": rc,
        "notes": "publisher, consumer and node share the machine's cores; the last four sustained runs have the network "
                 "at 768x432 and 640x360 (model.processing_resolution 768, 640), where instances are found before the "
                 "label image is scaled up; each is the median of --repeats runs (output_rate_hz_runs)",
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
