"""`evit-ros doctor` and `doctor --gpu`: a report that exits 0; the GPU table where CUDA is present."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import require

from evit_ros.cli.main import main


def _cuda() -> bool:
    try:
        import torch
    except Exception:
        return False
    return torch.cuda.is_available()


def _tensorrt() -> bool:
    try:
        import tensorrt

        return hasattr(tensorrt, "Builder")
    except Exception:
        return False


def test_doctor_reports_and_exits_zero(capsys) -> None:
    assert main(["doctor"]) == 0
    out = capsys.readouterr().out
    lines: dict[str, str] = {}
    for line in out.splitlines():
        if line.startswith("  ") and line.split():
            lines.setdefault(line.split()[0], line)  # first occurrence: the backends come before the caches
    for name in ("python", "ROS", "RMW", "torch", "CUDA", "onnxruntime", "openvino", "tensorrt", "default"):
        assert name in lines, name
    if not _cuda():
        assert "not available" in lines["CUDA"]
    if not _tensorrt():
        assert "not available" in lines["tensorrt"]
    assert "GPU checks" not in out


def test_doctor_gpu_without_cuda_says_so(capsys) -> None:
    if _cuda():
        pytest.skip("a CUDA device is present")
    assert main(["doctor", "--gpu"]) == 0
    out = capsys.readouterr().out
    assert "GPU checks" in out and "skipped: no CUDA device" in out


def test_doctor_rejects_bad_arguments(capsys) -> None:
    assert main(["doctor", "--gpu", "--resolution", "100x100"]) == 2
    assert main(["doctor", "--gpu", "--models", "b9-mars"]) == 2


def test_gpu_table_on_the_cpu(shared_data: Path, capsys) -> None:
    """The --gpu machinery with the CPU as device: fp32 paths equal the reference, fp16 is refused, not crashed."""
    require("torch")
    from evit_ros.cli.doctor import format_gpu_table, run_gpu_checks

    rows = run_gpu_checks(["b0-cityscapes"], (64, 128), shared_data, frames=2, iterations=2, device="cpu")
    assert "2 real frames" in capsys.readouterr().out
    by_path = {r.path: r for r in rows}
    ref = by_path["torch cpu fp32 (reference)"]
    assert ref.agreement == 1.0 and ref.nonfinite == 0 and ref.p50_ms > 0
    for path in ("torch cpu fp32 eager", "torch cpu fp32 + CUDA graph"):
        assert by_path[path].agreement == 1.0 and by_path[path].nonfinite == 0
    assert "no CUDA graph" in by_path["torch cpu fp32 + CUDA graph"].note
    assert "failed: ValueError: torch fp16 needs a CUDA device" in by_path["torch cpu fp16 (attention fp32) eager"].note
    if not _tensorrt():
        assert by_path["tensorrt fp16"].note.startswith("skipped: TensorRT is not available")
    table = format_gpu_table(rows)
    assert "labels = CPU fp32" in table and "100.000%" in table


@pytest.mark.skipif(not _cuda(), reason="no CUDA device")
def test_doctor_gpu_table_on_cuda(shared_data: Path, capsys) -> None:
    from evit_ros.cli.doctor import run_gpu_checks

    args = ["doctor", "--gpu", "--models", "b0-cityscapes", "--resolution", "128x256", "--iterations", "2"]
    assert main([*args, "--data", str(shared_data), "--frames", "1"]) == 0
    assert "torch cuda fp16 (attention fp32) + CUDA graph" in capsys.readouterr().out
    rows = run_gpu_checks(["b0-cityscapes"], (256, 512), shared_data, frames=2, iterations=3, device="cuda")
    by_path = {r.path: r for r in rows}
    for precision in ("fp32", "fp16 (attention fp32)"):
        for mode in ("eager", "+ CUDA graph"):
            row = by_path[f"torch cuda {precision} {mode}"]
            assert not row.note.startswith("failed"), row.note
            assert row.nonfinite == 0 and row.agreement >= 0.99 and row.p50_ms > 0, row
    if _tensorrt():
        row = by_path["tensorrt fp16"]
        assert not row.note.startswith("failed") and row.nonfinite == 0 and row.agreement >= 0.99, row


def test_doctor_frame_path_comparison_runs_on_cpu(shared_data: Path) -> None:
    """The host-vs-device frame-path comparison of doctor --gpu, run with CPU tensors: the device path's labels
    agree with the CPU host exact path, and both paths are timed in wall and host CPU time."""
    require("torch")
    from evit_ros.cli.doctor import run_frame_path_checks

    text = run_frame_path_checks(["b0-cityscapes"], (128, 256), shared_data, frames=1, iterations=1, device="cpu",
                                 frame_size=(270, 480))  # fmt: skip
    assert "failed" not in text, text
    agreement = {
        line.split()[0]: float(line.rsplit(" ", 1)[1].rstrip("%")) for line in text.splitlines() if "= CPU fp32" in line
    }
    assert set(agreement) == {"host:exact", "device"}
    assert agreement["host:exact"] == 100.0 and agreement["device"] >= 99.9
    assert "host CPU time" in text and "device / host:refined per frame: wall x" in text
