"""Every install path, from a copy of the source tree: a wheel installed into a fresh environment outside it, the
guard that every folder of modules and every data file reaches the wheel, and a plain (copying, not symlinked)
colcon build whose installed seg_node starts.

The fresh environment takes its dependencies from the running one (a .pth that adds its site-packages, .pth hooks
included, behind the fresh one's own); each check asserts that `evit_ros` came from the install, not from the source
tree or the running environment's editable install.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from importlib.util import find_spec
from pathlib import Path

import pytest
from conftest import REPO_ROOT, exported_b0, has_module, needs

VERSION_XML = REPO_ROOT / "package.xml"
# Files setup.py installs outside the package (data_files), by their place under the install prefix.
SHARE_FILES = {
    "share/ament_index/resource_index/packages/evit_ros": "resource/evit_ros",
    "share/evit_ros/package.xml": "package.xml",
    "share/evit_ros/models/README.md": "models/README.md",
    **{f"share/evit_ros/launch/{p.name}": f"launch/{p.name}" for p in (REPO_ROOT / "launch").glob("*.py")},
    **{f"share/evit_ros/config/{p.name}": f"config/{p.name}" for p in (REPO_ROOT / "config").iterdir()},
}
# Modules whose import may fail in an environment without this dependency (the reason a module is skipped).
OPTIONAL = {"torch", "onnx", "onnxruntime", "openvino", "tensorrt", "ray", "rosbags", "mcap", "matplotlib",
            "huggingface_hub", "rclpy", "sensor_msgs", "std_msgs", "diagnostic_msgs", "builtin_interfaces",
            "rcl_interfaces", "ament_index_python", "launch", "launch_ros"}  # fmt: skip
BAD_PARAMETER = ("resolution:=250x512", "multiples of 32")  # rejected before any model is loaded


def _version() -> str:
    import xml.etree.ElementTree as ET

    return ET.parse(VERSION_XML).getroot().findtext("version")


def copy_source(dest: Path) -> Path:
    """The files a fresh clone has (tracked and not ignored), copied to ``dest``: nothing built here leaks in."""
    try:
        listed = subprocess.run(
            ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            cwd=REPO_ROOT,
            check=True,
            capture_output=True,
        ).stdout
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.skip(f"the source is not a git checkout: {exc}")
    for name in filter(None, listed.decode().split("\0")):
        src = REPO_ROOT / name
        if src.is_file():  # tracked files deleted in the work tree are left out
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)
    return dest


def module_folders(package_root: Path) -> set[str]:
    """Folders (relative to the one holding ``evit_ros``) that hold Python modules."""
    return {str(p.parent.relative_to(package_root.parent)) for p in package_root.rglob("*.py")}


def _provides_evit_ros(entry: str) -> bool:
    """A PYTHONPATH entry in the source tree, or one holding an ``evit_ros`` package: colcon test puts its build
    folder (a link to the source package under --symlink-install) on PYTHONPATH."""
    path = Path(entry)
    return path.resolve().is_relative_to(REPO_ROOT) or (path / "evit_ros").exists()


def _env(**extra: str) -> dict[str, str]:
    """The test's environment (its private ROS domain) with no PYTHONPATH entry that would serve ``evit_ros``."""
    env = dict(os.environ)
    kept = [p for p in env.pop("PYTHONPATH", "").split(os.pathsep) if p and not _provides_evit_ros(p)]
    if kept:
        env["PYTHONPATH"] = os.pathsep.join(kept)
    env.update(extra)
    return env


def _run(cmd: list, cwd: Path, env: dict[str, str], timeout: float = 180) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    src = copy_source(tmp_path_factory.mktemp("wheel_src"))
    out = tmp_path_factory.mktemp("wheel")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", out, src]
    proc = _run(cmd, out, _env(), timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (whl,) = out.glob("evit_ros-*.whl")
    return whl


def test_wheel_holds_every_module_folder_and_data_file(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    wheel_folders = {str(Path(n).parent) for n in names if n.endswith(".py") and n.startswith("evit_ros/")}
    missing = module_folders(REPO_ROOT / "evit_ros") - wheel_folders
    assert not missing, f"folders of modules missing from the wheel (no __init__.py?): {sorted(missing)}"
    data = {f"evit_ros/{p.relative_to(REPO_ROOT / 'evit_ros')}" for p in (REPO_ROOT / "evit_ros" / "data").iterdir()}
    assert data <= names, sorted(data - names)
    data_root = f"evit_ros-{_version()}.data/data/"
    shared = {data_root + place for place in SHARE_FILES}
    assert shared <= names, sorted(shared - names)
    assert wheel.name.startswith(f"evit_ros-{_version()}-")


_DROP_EDITABLE = (
    "sys.meta_path[:] = [f for f in sys.meta_path if '__editable___evit_ros' not in getattr(f, '__module__', '')]; "
    "sys.path_hooks[:] = [h for h in sys.path_hooks if '__editable___evit_ros' not in getattr(h, '__module__', '')]"
)


@pytest.fixture(scope="module")
def fresh_env(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new venv outside the source tree with the wheel installed; dependencies from the running environment."""
    root = tmp_path_factory.mktemp("fresh") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(root)], check=True)
    python = root / "bin" / "python"
    purelib = _run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root, _env())
    site = Path(purelib.stdout.strip())
    deps = sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]})
    # addsitedir also runs the .pth hooks there (the ROS wheels' bootstrapper); the fresh site-packages stays first.
    # The running environment's editable install of evit_ros is a finder consulted after the path: it would serve
    # any module missing from the wheel out of the source tree, so it is taken out again.
    lines = [f"import site; site.addsitedir({d!r})" for d in deps]
    lines.append(f"import sys; {_DROP_EDITABLE}")
    (site / "running_env.pth").write_text("\n".join(lines) + "\n")
    proc = _run([sys.executable, "-m", "pip", "--python", python, "install", "-q", "--no-deps", wheel], root, _env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return root


_IMPORT_ALL = """
import importlib, json, pkgutil, sys
import evit_ros
result = {"file": evit_ros.__file__, "imported": {}, "skipped": {}, "failed": {}}
for info in pkgutil.walk_packages(evit_ros.__path__, "evit_ros."):
    if info.name.endswith("__main__"):  # importing it runs the CLI
        continue
    try:
        result["imported"][info.name] = importlib.import_module(info.name).__file__
    except ImportError as exc:
        top = (exc.name or "").split(".")[0]
        key = "skipped" if top in set(sys.argv[1:]) else "failed"
        result[key][info.name] = f"{type(exc).__name__}: {exc}"
from importlib import resources
result["data"] = sorted(p.name for p in resources.files("evit_ros").joinpath("data").iterdir())
print(json.dumps(result))
"""


def test_fresh_env_imports_every_module_from_the_install(fresh_env: Path) -> None:
    python = fresh_env / "bin" / "python"
    proc = _run([python, "-c", _IMPORT_ALL, *sorted(OPTIONAL)], fresh_env, _env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    installed = Path(result["file"]).parent
    assert installed.is_relative_to(fresh_env) and not installed.is_relative_to(REPO_ROOT), result["file"]
    assert not result["failed"], result["failed"]
    for name, path in result["imported"].items():
        assert Path(path).is_relative_to(installed), f"{name} imported from {path}"
    source = {".".join(p.relative_to(REPO_ROOT).with_suffix("").parts) for p in (REPO_ROOT / "evit_ros").rglob("*.py")}
    source = {m.removesuffix(".__init__") for m in source if not m.endswith("__main__")} - {"evit_ros"}
    assert set(result["imported"]) | set(result["skipped"]) == source
    assert len(result["imported"]) >= len(source) // 2, f"most modules skipped: {result['skipped']}"
    assert result["data"] == sorted(p.name for p in (REPO_ROOT / "evit_ros" / "data").iterdir())


def test_fresh_env_console_scripts(fresh_env: Path) -> None:
    bin_dir = fresh_env / "bin"
    proc = _run([bin_dir / "evit-ros", "--help"], fresh_env, _env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "predict" in proc.stdout and "doctor" in proc.stdout
    proc = _run([bin_dir / "evit-ros", "--version"], fresh_env, _env())
    assert proc.returncode == 0 and proc.stdout.strip() == f"evit-ros {_version()}", proc.stdout + proc.stderr


@needs("rclpy", "for seg_node to start")
def test_fresh_env_seg_node_checks_its_arguments(fresh_env: Path) -> None:
    bin_dir = fresh_env / "bin"
    proc = _run([bin_dir / "seg_node", "--help"], fresh_env, _env())
    assert proc.returncode == 0 and "Parameters" in proc.stdout, proc.stdout + proc.stderr
    assert all(f"\n  {name} (" in proc.stdout for name in ("model", "weights", "resolution", "backend", "cameras"))
    proc = _run([bin_dir / "seg_node", "--ros-args", "--help"], fresh_env, _env())  # --help is no ROS argument
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "'seg_node --help'" in out and "Traceback" not in out, out
    proc = _run([bin_dir / "seg_node", "--ros-args", "-p", BAD_PARAMETER[0]], fresh_env, _env())
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "invalid parameter" in out and BAD_PARAMETER[1] in out, out
    assert "Traceback" not in out, out


_SEGMENT = """
import json, sys
import numpy as np
import evit_ros
from evit_ros.pipeline.segmenter import Segmenter
weights, backend = sys.argv[1:3]
seg = Segmenter("b0-cityscapes", weights, "128x256", backend=backend, num_threads=1, allow_random_weights=True)
frame = np.random.default_rng(0).integers(0, 256, (120, 200, 3), dtype=np.uint8)
labels = seg.segment(frame, order="bgr").labels
print(json.dumps({"file": sys.modules[Segmenter.__module__].__file__, "shape": list(labels.shape),
                  "dtype": str(labels.dtype), "max": int(labels.max())}))
"""


def test_fresh_env_segments_a_frame(fresh_env: Path) -> None:
    if has_module("torch"):
        weights, backend = "random", "torch"
    else:
        weights, backend = str(exported_b0("128x256")), "onnxruntime"
    proc = _run([fresh_env / "bin" / "python", "-c", _SEGMENT, weights, backend], fresh_env, _env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert Path(result["file"]).is_relative_to(fresh_env)
    assert result["shape"] == [120, 200] and result["dtype"] == "uint8" and result["max"] < 19


# ------------------------------------------------------------------------------------------------------ colcon


@needs("rclpy", "for the installed seg_node to start")
def test_plain_colcon_build_installs_a_seg_node_that_starts(tmp_path: Path) -> None:
    if find_spec("colcon_core") is None or find_spec("colcon_ros") is None:
        pytest.skip("colcon is not installed (pip install colcon-common-extensions ros-ament-package)")
    src = copy_source(tmp_path / "src" / "evit_ros")
    colcon = [sys.executable, "-c", "import sys; from colcon_core.command import main; sys.exit(main())"]
    # Plain build: setup.py install copies the package into install/ (no --symlink-install).
    cmd = [*colcon, "--log-base", tmp_path / "log", "build", "--base-paths", src.parent,
           "--build-base", tmp_path / "build", "--install-base", tmp_path / "install"]  # fmt: skip
    proc = _run(cmd, tmp_path, _env(COLCON_HOME=str(tmp_path / "colcon_home")), timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    prefix = tmp_path / "install" / "evit_ros"
    for place, source in SHARE_FILES.items():
        installed = prefix / place
        assert installed.is_file() and not installed.is_symlink(), place
        assert installed.read_bytes() == (REPO_ROOT / source).read_bytes(), place
    (site,) = prefix.glob("lib/python3*/site-packages")
    assert module_folders(REPO_ROOT / "evit_ros") <= module_folders(site / "evit_ros")
    assert {p.name for p in (site / "evit_ros" / "data").iterdir()} >= {
        p.name for p in (REPO_ROOT / "evit_ros" / "data").iterdir()
    }
    # What `source install/setup.bash` puts in place for this package: its site-packages and its prefix.
    env = _env(PYTHONPATH=str(site), AMENT_PREFIX_PATH=os.pathsep.join([str(prefix), os.environ["AMENT_PREFIX_PATH"]]))
    # Modules deep in the package, so that neither the source tree nor an editable install could have served them.
    code = "import evit_ros.pipeline.segmenter as a, evit_ros.ros.seg_node as b; print(a.__file__); print(b.__file__)"
    where = _run([sys.executable, "-c", code], tmp_path, env)
    files = where.stdout.split()
    assert len(files) == 2 and all(Path(f).is_relative_to(site) for f in files), where.stdout + where.stderr
    script = prefix / "lib" / "evit_ros" / "seg_node"  # what `ros2 run evit_ros seg_node` executes
    assert script.is_file() and os.access(script, os.X_OK)
    proc = _run([script, "--ros-args", "-p", BAD_PARAMETER[0]], tmp_path, env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 2 and "invalid parameter" in out and BAD_PARAMETER[1] in out, out
    assert "Traceback" not in out, out
