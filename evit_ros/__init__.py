"""evit_ros: real-time EfficientViT semantic segmentation for ROS 2.

Importing the package needs only numpy and OpenCV; torch, onnxruntime, tensorrt and rclpy
are imported by the modules that use them.
"""

from evit_ros.network.variants import DEFAULT_MODEL, VARIANTS, get_variant

__version__ = "0.1.0"
__all__ = ["DEFAULT_MODEL", "VARIANTS", "get_variant", "__version__"]
