"""The floor under bench_node's sustained runs: an rclpy node that does only the segmenter's transport work.

    ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST .venv/bin/python bench/relay_node.py

Named ``segmenter`` with the node's default QoS (seg_node.ros.topics.qos_profile of QoSParams()) and allocator setting,
it decodes each image and publishes an all-background label image of its size and an empty SegmentArray with its
header. Whatever rate it sustains on a machine is the most any Python node with these topics can; bench_node
reports the segmenter's rate as a share of it. Stops on SIGINT/SIGTERM.
"""
from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from seg_node.ros.allocator import keep_frame_buffers  # noqa: E402


def main() -> int:
    keep_frame_buffers()
    import numpy as np
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from sensor_msgs.msg import Image
    from seg_msgs.msg import SegmentArray

    from seg_node.processing.image_codec import decode_to_rgb8, numpy_to_image
    from seg_node.ros.topics import qos_profile
    from seg_node.ros.params import QoSParams

    rclpy.init()
    node = rclpy.create_node("segmenter")
    qos = QoSParams()  # the node's defaults
    out = qos_profile(qos.outputs)
    pub_labels = node.create_publisher(Image, "~/labels", out)
    pub_segments = node.create_publisher(SegmentArray, "~/segments", out)

    def on_image(msg: Image) -> None:
        rgb = decode_to_rgb8(msg)
        pub_segments.publish(SegmentArray(header=msg.header))  # in the node's order
        pub_labels.publish(numpy_to_image(np.zeros(rgb.shape[:2], np.uint16), "mono16", header=msg.header))

    node.create_subscription(Image, "image", on_image, qos_profile(qos.image))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    executor = SingleThreadedExecutor()
    executor.add_node(node)
    node.get_logger().info("relay ready")
    try:
        while not stop.is_set() and rclpy.ok():
            executor.spin_once(timeout_sec=0.1)
    finally:
        executor.shutdown(timeout_sec=0.5)
        node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
