"""ament_python package seg_node. Also a plain pip package: `pip install -e .[onnx,train,test]` (see scripts/setup.sh)."""
import os
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "seg_node"


def tree(folder: str) -> list[tuple[str, list[str]]]:
    """data_files entries installing every file under ``folder`` (a checkpoint has subfolders) at share/PACKAGE/."""
    files = sorted(f for f in glob(f"{folder}/**/*", recursive=True) if os.path.isfile(f))
    return [(f"share/{PACKAGE}/{d}", [f for f in files if os.path.dirname(f) == d])
            for d in sorted({os.path.dirname(f) for f in files})]


TORCH = ["torch==2.13.0", "diffusers>=0.30", "transformers>=4.45", "safetensors>=0.4"]

setup(
    name=PACKAGE,
    version="0.1.0",
    packages=find_packages(include=["seg_node", "seg_node.*", "training", "training.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py") + ["launch/segmenter_common.py"]),
        # The shipped default model: `segmenter` runs it when model.path is empty (seg_node/ros/startup.py).
        *tree("engines/default"),
    ],
    python_requires=">=3.10",
    # The runtime imports without torch: the node on a Jetson needs only these plus a backend.
    install_requires=["numpy>=1.23", "opencv-python-headless>=4.5", "PyYAML>=5.4", "scipy>=1.8", "Pillow>=9.0", "numba>=0.59"],
    extras_require={
        "torch": TORCH,
        "onnx": ["onnxruntime>=1.16", "onnx>=1.14"],
        "train": TORCH + ["accelerate>=0.30", "pycocotools>=2.0.7", "tqdm>=4.60", "h5py>=3.8"],
        # TensorRT 10 only: 11 removed the precision flags and the int8 calibrator (docs/jetson.md).
        "tensorrt": ["tensorrt>=10,<11; platform_machine == 'x86_64'", "pycuda>=2022.1"],
        "eval": ["rosbags>=0.11", "pycocotools>=2.0.7"],
        "test": ["ruff==0.17.6", "pytest>=7.4", "pytest-timeout>=2.1", "pytest-xdist>=3.3", "hypothesis>=6.80", "rosbags>=0.10"],
    },
    zip_safe=True,
    maintainer="seg_node developers",
    description="Category-agnostic instance segmentation node (gen2seg) for ROS 2.",
    license="Apache-2.0",
    entry_points={
        "console_scripts": [
            "segmenter = seg_node.ros.node:main",
            "segmenter_lifecycle = seg_node.ros.lifecycle:main",
            "segment_images = seg_node.cli.segment_images:segment_images_main",
            "export_onnx = training.export_onnx:main",
            "build_engine = seg_node.cli.build_engine:main",
            "hypersim_to_png = training.hypersim_to_png:main",
            "train = training.train:main",
            "synthetic_stream = training.stream:main",
            "calibrate_instances = training.calibrate:main",
            "bag_eval = seg_node.evaluation.bag_eval:main",
            "make_bag = seg_node.evaluation.make_bag:main",
            "maskige_check = training.maskige_check:main",
            "masksyn = training.imgsyn:main",
            "complete_masks = seg_node.cli.complete_masks:main",
        ],
    },
)
