"""retain_freed_memory: frame-sized temporaries are reused instead of faulted in afresh every frame."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys

import pytest

from evit_ros.pipeline.allocation import retain_freed_memory

# Each call of the refined post-processing at 1080p allocates and frees tens of MB of temporaries.
_CHILD = """
import json, resource, sys
import numpy as np
from evit_ros.pipeline.allocation import retain_freed_memory
from evit_ros.pipeline.processing import postprocess
applied = retain_freed_memory()
from evit_ros.pipeline.processing import resize_logits
rng = np.random.default_rng(0)
coarse = rng.normal(0, 4, (19, 16, 32)).astype(np.float32)  # smooth, with boundaries, like a network's logits
logits = np.ascontiguousarray(resize_logits(coarse, (64, 128)))
for _ in range(3):
    postprocess(logits, (1080, 1920), "refined")
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    postprocess(logits, (1080, 1920), "refined")
faults = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 10
print(json.dumps({"applied": applied, "faults_per_call": faults}))
"""


def _run(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("MALLOC_MMAP_THRESHOLD_", None)
    env.pop("MALLOC_TRIM_THRESHOLD_", None)
    if env_value is None:
        env.pop("EVIT_ROS_RETAIN_FREED_MEMORY", None)
    else:
        env["EVIT_ROS_RETAIN_FREED_MEMORY"] = env_value
    out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the malloc thresholds are glibc's")
def test_retained_memory_is_reused_not_faulted_in_again() -> None:
    retained, default = _run(None), _run("0")
    assert retained["applied"] is True and default["applied"] is False
    # 1080p labels alone are 2 MB = 500 pages; the call's temporaries are ten times that. Reused, a call faults
    # in almost nothing new.
    assert retained["faults_per_call"] < 500, retained
    assert retained["faults_per_call"] < default["faults_per_call"], (retained, default)


def test_the_users_own_malloc_settings_win(monkeypatch) -> None:
    retain_freed_memory.cache_clear()
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "1048576")
    try:
        assert retain_freed_memory() is False
    finally:
        retain_freed_memory.cache_clear()
