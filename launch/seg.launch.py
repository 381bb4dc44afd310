"""Start one evit_ros seg_node: one camera, or several served by one network (cameras:=...).

    ros2 launch evit_ros seg.launch.py image:=/front/image_raw namespace:=front resolution:=512x1024
    ros2 launch evit_ros seg.launch.py use_compressed:=true backend:=onnxruntime build_only:=true
    ros2 launch evit_ros seg.launch.py cameras:="[front, left, right, rear]"
    ros2 launch evit_ros seg.launch.py class_masks:="{drivable: [road, sidewalk], people: [person, rider]}"

The node's parameters come from params_file (default: the package's config/seg.yaml); model, resolution,
backend, precision, frame_path, cameras and every backend option (dla_core, typing, calibration_dir, ...: the table in
evit_ros/runtime/options.py, the same names as the node parameters and the evit-ros flags) given here override it
('' keeps the file's value):

    ros2 launch evit_ros seg.launch.py backend:=tensorrt precision:=fp16 dla_core:=0

With cameras, one node and one network serve them all: camera X is read from <namespace>/X/image and segmented
onto <namespace>/X/segmentation/... (the image argument applies to the single-camera node only). With
rmw_fastrtps_cpp (the default RMW) the shipped Fast DDS
profile config/fastdds_shm.xml (64 MiB shared-memory segment) is applied to everything this launch starts,
unless FASTDDS_DEFAULT_PROFILES_FILE is already set or dds_profile:='' is given.
"""

import os

import yaml
from ament_index_python.packages import get_package_share_directory
from launch.actions import DeclareLaunchArgument, OpaqueFunction, SetEnvironmentVariable
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node
from launch_ros.parameter_descriptions import ParameterValue

from evit_ros.runtime.options import BACKEND_OPTIONS, OPTIONS_BY_NAME
from launch import LaunchDescription

OVERRIDABLE = ("model", "resolution", "backend", "precision", "frame_path", *(opt.name for opt in BACKEND_OPTIONS))


def _truthy(text: str) -> bool:
    return text.strip().lower() in ("1", "true", "yes", "on")


def parse_cameras(text: str) -> list[str]:
    """'[front, left]' (YAML flow list), 'front,left' or 'front' -> a list of names; '' or '[]' -> []."""
    text = text.strip()
    if not text:
        return []
    value = yaml.safe_load(text) if text.startswith("[") else [part.strip() for part in text.split(",")]
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"cameras must be a list of camera namespaces such as '[front, left]', got {text!r}")
    return value


def _setup(context):
    share = get_package_share_directory("evit_ros")
    arg = {
        name: LaunchConfiguration(name).perform(context)
        for name in (
            *OVERRIDABLE,
            "image",
            "namespace",
            "params_file",
            "use_compressed",
            "build_only",
            "dds_profile",
            "cameras",
            "class_masks",
        )
    }
    actions = []
    rmw = os.environ.get("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    profile = arg["dds_profile"]
    if profile == "default":
        profile = os.path.join(share, "config", "fastdds_shm.xml")
    if profile and rmw.startswith("rmw_fastrtps") and "FASTDDS_DEFAULT_PROFILES_FILE" not in os.environ:
        actions.append(SetEnvironmentVariable("FASTDDS_DEFAULT_PROFILES_FILE", profile))

    overrides = {name: arg[name] for name in OVERRIDABLE if arg[name]}
    for name, text in overrides.items():
        if name in OPTIONS_BY_NAME:  # typed like the node parameter (launch arguments are text)
            overrides[name] = OPTIONS_BY_NAME[name].parse(text)
    compressed = _truthy(arg["use_compressed"])
    overrides["input_transport"] = "compressed" if compressed else "raw"
    overrides["build_only"] = _truthy(arg["build_only"])
    cameras = parse_cameras(arg["cameras"])
    if cameras:
        overrides["cameras"] = cameras
    if arg["class_masks"]:
        # A YAML mapping in a string parameter: launch_ros would parse plain text as YAML and refuse a mapping.
        overrides["class_masks"] = ParameterValue(arg["class_masks"], value_type=str)
    image_topic = arg["image"]
    remaps = [("image/compressed", image_topic + "/compressed")] if compressed else [("image", image_topic)]
    actions.append(
        Node(
            package="evit_ros",
            executable="seg_node",
            name="seg_node",
            namespace=arg["namespace"],
            parameters=[arg["params_file"], overrides] if arg["params_file"] else [overrides],
            remappings=remaps,
            output="screen",
            emulate_tty=True,
        )
    )
    return actions


def generate_launch_description() -> LaunchDescription:
    share = get_package_share_directory("evit_ros")
    args = [
        DeclareLaunchArgument("model", default_value="", description="variant, e.g. b0-cityscapes ('' = params_file)"),
        DeclareLaunchArgument("resolution", default_value="", description="network input HxW ('' = params_file)"),
        DeclareLaunchArgument("backend", default_value="", description="auto|tensorrt|torch|onnxruntime|openvino"),
        DeclareLaunchArgument(
            "precision",
            default_value="",
            description="auto|fp32|fp16|bf16|int8; auto: fp16 on TensorRT and torch on CUDA, else fp32 "
            "('' = params_file)",
        ),
        DeclareLaunchArgument(
            "frame_path",
            default_value="",
            description="auto|host|device: pre/post-processing on the network's GPU or the CPU ('' = params_file)",
        ),
        *(
            DeclareLaunchArgument(opt.name, default_value="", description=f"{opt.description} ('' = params_file)")
            for opt in BACKEND_OPTIONS
        ),
        DeclareLaunchArgument("image", default_value="image", description="input image topic (base name)"),
        DeclareLaunchArgument("namespace", default_value="", description="camera namespace of the node"),
        DeclareLaunchArgument(
            "params_file", default_value=os.path.join(share, "config", "seg.yaml"), description="YAML"
        ),
        DeclareLaunchArgument(
            "cameras", default_value="", description="camera namespaces for one node, e.g. '[front, left]' ('' = file)"
        ),
        DeclareLaunchArgument(
            "class_masks",
            default_value="",
            description="masks on segmentation/mask/<name>, e.g. '{drivable: [road, sidewalk]}' ('' = params_file)",
        ),
        DeclareLaunchArgument("use_compressed", default_value="false", description="subscribe <image>/compressed"),
        DeclareLaunchArgument("build_only", default_value="false", description="build the engine, then exit"),
        DeclareLaunchArgument(
            "dds_profile", default_value="default", description="Fast DDS XML profile ('default': fastdds_shm.xml)"
        ),
    ]
    return LaunchDescription([*args, OpaqueFunction(function=_setup)])
