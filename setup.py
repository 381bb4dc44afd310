import xml.etree.ElementTree as ET
from glob import glob
from pathlib import Path

from setuptools import find_packages, setup

package_name = "evit_ros"
# One version for rosdep/bloom, pip and `evit-ros --version`: package.xml's (test/test_package_metadata.py checks
# that evit_ros.__version__ matches it).
version = ET.parse(Path(__file__).with_name("package.xml")).getroot().findtext("version")
# Bags without a ROS install; MCAP chunks are lz4 or zstd compressed (mcap brings both, the reader imports them).
bag_reading = ["rosbags>=0.10", "mcap>=1.1", "lz4", "zstandard"]

setup(
    name=package_name,
    version=version,
    packages=find_packages(exclude=["test", "test.*"]),
    package_data={package_name: ["data/*.txt", "data/*.yaml", "data/*.xml"]},
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{package_name}"]),
        (f"share/{package_name}", ["package.xml"]),
        (f"share/{package_name}/launch", glob("launch/*.py")),
        (f"share/{package_name}/config", glob("config/*.yaml") + glob("config/*.xml")),
        (f"share/{package_name}/models", ["models/README.md"]),
    ],
    python_requires=">=3.10",
    install_requires=["setuptools", "numpy", "opencv-python-headless", "pyyaml", "tqdm"],
    extras_require={
        "torch": ["torch>=2.1"],
        "onnx": ["onnx>=1.14", "onnxruntime>=1.16"],
        "openvino": ["openvino>=2024.0"],
        "eval": [*bag_reading, "matplotlib"],
        "ray": ["ray>=2.9", *bag_reading, "matplotlib"],
        "hub": ["huggingface_hub"],
    },
    zip_safe=True,
    maintainer="evit_ros maintainers",
    maintainer_email="maintainers@evit-ros.dev",
    description="Real-time EfficientViT semantic segmentation for ROS 2",
    license="Apache-2.0",
    tests_require=["pytest"],
    entry_points={
        "console_scripts": [
            "evit-ros = evit_ros.cli.main:main",
            "seg_node = evit_ros.ros.seg_node:main",
            "evit_play = evit_ros.cli.play:main",
        ],
    },
)
