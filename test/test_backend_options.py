"""Engine-affecting backend options: one table (runtime/options.py) gives the CLI flags, the node's read-only
parameters and config/seg.yaml, and the values reach BackendConfig.options from each of them."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import REPO_ROOT, require

from evit_ros.runtime.options import BACKEND_OPTIONS, OPTIONS_BY_NAME, normalise_options

# Non-default values for every option, as a user would give them.
CHOSEN = {
    "cuda_graphs": False,
    "compile": False,
    "typing": "strong",
    "workspace_mib": 1024,
    "tf32": True,
    "builder_optimization_level": 4,
    "dla_core": 1,
    "gpu_fallback": True,
    "calibration_dir": "/data/calib",
    "calibration_images": 32,
    "gate_images": "/data/gate",
    "gate_frames": 2,
    "min_label_agreement": 0.5,
    "reference_onnx": "/data/ref.onnx",
}
FLAGS = [
    "--no-cuda-graphs",
    "--typing", "strong",
    "--workspace-mib", "1024",
    "--tf32",
    "--builder-optimization-level", "4",
    "--dla-core", "1",
    "--calibration-dir", "/data/calib",
    "--calibration-images", "32",
    "--gate-images", "/data/gate",
    "--gate-frames", "2",
    "--min-agreement", "0.5",  # the older spelling of --min-label-agreement
    "--reference-onnx", "/data/ref.onnx",
]  # fmt: skip


def test_chosen_values_cover_every_option() -> None:
    assert set(CHOSEN) == set(OPTIONS_BY_NAME)
    assert normalise_options(CHOSEN) == CHOSEN


def test_unset_values_and_validation() -> None:
    defaults = {opt.name: opt.default for opt in BACKEND_OPTIONS}
    normal = normalise_options(defaults)
    assert "dla_core" not in normal and "calibration_dir" not in normal and "builder_optimization_level" not in normal
    assert normal["typing"] == "auto" and normal["cuda_graphs"] is True
    for bad, match in (
        ({"dla_cores": 1}, "unknown backend option"),
        ({"typing": "strongest"}, "one of auto, strong, weak"),
        ({"builder_optimization_level": 7}, r"within \[0, 5\]"),
        ({"workspace_mib": "big"}, "must be int"),
        ({"cuda_graphs": 1}, "must be bool"),
    ):
        with pytest.raises(ValueError, match=match):
            normalise_options(bad)


@pytest.mark.parametrize("command", ["predict", "bench", "eval", "build-engine"])
def test_every_option_is_a_flag_of_every_model_command(command: str) -> None:
    from evit_ros.cli.common import backend_options_from_args
    from evit_ros.cli.main import build_parser

    positional = {"predict": ["in", "out"], "eval": ["bag"]}.get(command, [])
    argv = [command, *FLAGS, *positional]
    args = build_parser(argv).parse_args(argv)
    assert backend_options_from_args(args) == CHOSEN


def test_cli_flags_reach_the_backend_configuration(tmp_path: Path) -> None:
    require("onnxruntime")
    require("torch")
    from evit_ros.cli.build_engine import backend_config_from_args
    from evit_ros.cli.common import segmenter_from_args
    from evit_ros.cli.main import build_parser

    argv = ["predict", "--weights", "random", "--resolution", "64x128", "--backend", "onnxruntime", *FLAGS, "i", "o"]
    argv += ["--engine-cache-dir", str(tmp_path)]
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        seg = segmenter_from_args(build_parser(argv).parse_args(argv))
    assert seg.backend.config.options == CHOSEN
    argv = ["build-engine", "--weights", "random", "--strongly-typed", "--dla-core", "0"]
    config = backend_config_from_args(build_parser(argv).parse_args(argv))
    assert config.options["typing"] == "strong" and config.options["dla_core"] == 0 and config.precision == "fp16"


def test_bad_flag_value_is_a_clear_error(capsys) -> None:
    from evit_ros.cli.main import main

    with pytest.raises(SystemExit):
        main(["predict", "--builder-optimization-level", "9", "in", "out"])
    with pytest.raises(SystemExit):
        main(["predict", "--typing", "loose", "in", "out"])
    assert "loose" in capsys.readouterr().err


def test_params_file_lists_every_option_with_its_default() -> None:
    yaml = require("yaml")
    params = yaml.safe_load((REPO_ROOT / "config" / "seg.yaml").read_text())["/**"]["ros__parameters"]
    for opt in BACKEND_OPTIONS:
        assert opt.name in params, opt.name
        assert params[opt.name] == opt.default and type(params[opt.name]) is opt.type, opt.name


def test_launch_file_overrides_every_option() -> None:
    text = (REPO_ROOT / "launch" / "seg.launch.py").read_text()
    assert "BACKEND_OPTIONS" in text and "OPTIONS_BY_NAME[name].parse(text)" in text
    assert OPTIONS_BY_NAME["dla_core"].parse("0") == 0 and OPTIONS_BY_NAME["tf32"].parse("true") is True
    assert OPTIONS_BY_NAME["min_label_agreement"].parse("0.5") == 0.5
    with pytest.raises(ValueError, match="true or false"):
        OPTIONS_BY_NAME["cuda_graphs"].parse("maybe")


def test_node_parameters_are_read_only_and_reach_the_backend(tmp_path: Path) -> None:
    rclpy = require("rclpy")
    require("onnxruntime")
    require("torch")
    from rclpy.parameter import Parameter

    from evit_ros.ros.seg_node import ConfigError, SegNode

    base = {
        "model": "b0-cityscapes",
        "weights": "random",
        "resolution": "64x128",
        "backend": "onnxruntime",
        "num_threads": 1,
        "engine_cache_dir": str(tmp_path),
    }
    context = rclpy.Context()
    rclpy.init(context=context)
    try:
        overrides = [Parameter(k, value=v) for k, v in {**base, **CHOSEN}.items()]
        with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
            node = SegNode("options_node", context=context, parameter_overrides=overrides)
        try:
            for opt in BACKEND_OPTIONS:
                desc = node.describe_parameter(opt.name)
                assert desc.read_only and opt.description in desc.description, opt.name
                assert node.get_parameter(opt.name).value == CHOSEN[opt.name]
            assert node.segmenter.backend.config.options == CHOSEN
            result = node.set_parameters([Parameter("dla_core", value=0)])[0]
            assert not result.successful and node.get_parameter("dla_core").value == 1
        finally:
            node.destroy_node()
        bad = [Parameter(k, value=v) for k, v in {**base, "builder_optimization_level": 9}.items()]
        with pytest.raises(ConfigError, match="builder_optimization_level"):
            SegNode("bad_options_node", context=context, parameter_overrides=bad)
    finally:
        rclpy.shutdown(context=context)
