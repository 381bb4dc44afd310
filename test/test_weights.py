"""Checkpoint resolution: clear errors, sha256 verification, random weights only on request."""

from __future__ import annotations

import shutil

import pytest

pytest.importorskip("torch")

from evit_ros.network.variants import get_variant, parse_resolution  # noqa: E402
from evit_ros.network.weights import CheckpointError, load_model, resolve_checkpoint  # noqa: E402


def test_missing_checkpoint_says_where_to_get_it(tmp_path, monkeypatch):
    monkeypatch.setenv("EVIT_ROS_CACHE", str(tmp_path / "cache"))
    variant = get_variant("b1-cityscapes")
    with pytest.raises(CheckpointError) as err:
        resolve_checkpoint(variant, tmp_path / "nope.pt")
    msg = str(err.value)
    assert "han-cai/efficientvit-seg" in msg and "efficientvit_seg_b1_cityscapes.pt" in msg
    with pytest.raises(CheckpointError, match=str(tmp_path / "cache")):
        resolve_checkpoint(variant, None, download=False)


def test_offline_download_fails_with_guidance(tmp_path, monkeypatch):
    pytest.importorskip("huggingface_hub")
    monkeypatch.setenv("EVIT_ROS_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="efficientvit_seg_l2_ade20k.pt"):
        resolve_checkpoint(get_variant("l2-ade20k"), None)


def test_corrupt_official_file_is_rejected_by_sha256(b0_checkpoint, tmp_path):
    bad = tmp_path / b0_checkpoint.name
    data = bytearray(b0_checkpoint.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="sha256"):
        load_model(get_variant("b0-cityscapes"), bad)


def test_cached_checkpoint_is_found(b0_checkpoint, tmp_path, monkeypatch):
    monkeypatch.setenv("EVIT_ROS_CACHE", str(tmp_path))
    shutil.copy(b0_checkpoint, tmp_path / b0_checkpoint.name)
    assert resolve_checkpoint(get_variant("b0-cityscapes"), None, download=False) == tmp_path / b0_checkpoint.name


def test_wrong_checkpoint_for_variant_is_explained(b0_checkpoint, tmp_path):
    other = tmp_path / "renamed.pt"
    shutil.copy(b0_checkpoint, other)
    with pytest.raises(CheckpointError, match="does not fit b1-cityscapes"):
        load_model(get_variant("b1-cityscapes"), other)


def test_random_weights_warn_loudly():
    with pytest.warns(UserWarning, match="RANDOM WEIGHTS"):
        model, digest = load_model(get_variant("b0-cityscapes"), "random")
    assert digest == "random"


def test_segmenter_refuses_silent_random_weights():
    from evit_ros.pipeline.segmenter import Segmenter

    with pytest.raises(ValueError, match="allow_random_weights"):
        Segmenter("b0-cityscapes", weights="random", backend="torch")


@pytest.mark.parametrize("text", ["512x1000", "abc", "0x512", "512", "8192x8192"])
def test_bad_resolutions_are_rejected(text):
    with pytest.raises(ValueError):
        parse_resolution(text)


def test_resolution_parsing():
    assert parse_resolution("768x1024") == (768, 1024)
