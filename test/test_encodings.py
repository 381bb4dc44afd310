"""evit_ros.io.encodings on real CamVid frames: every encoding against an independently built payload."""

from __future__ import annotations

import array
from pathlib import Path

import cv2
import numpy as np
import pytest

from evit_ros.io.encodings import (
    SUPPORTED_ENCODINGS,
    decode_compressed,
    decode_image,
    encode_labels,
    rgb_to_bgr,
)

ROS_BAYER = {"bayer_rggb8": "RGGB", "bayer_bggr8": "BGGR", "bayer_gbrg8": "GBRG", "bayer_grbg8": "GRBG"}
OPENCV_TWO_LETTER = ("RG", "BG", "GB", "GR")


@pytest.fixture(scope="module")
def rgb(camvid_pairs: list[tuple[Path, Path]]) -> np.ndarray:
    bgr = cv2.imread(str(camvid_pairs[0][0]), cv2.IMREAD_COLOR)
    assert bgr is not None and bgr.shape == (360, 480, 3)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


@pytest.fixture(scope="module")
def labels(camvid_pairs: list[tuple[Path, Path]]) -> np.ndarray:
    lab = cv2.imread(str(camvid_pairs[0][1]), cv2.IMREAD_UNCHANGED)
    assert lab is not None and lab.ndim == 2
    return lab


# --- independent payload builders (numpy, from the documented byte layouts) ---------------------------------


def bt601_limited(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Float Y, U, V planes of BT.601 limited range ("studio swing") YCbCr."""
    r, g, b = (rgb[..., i].astype(np.float64) for i in range(3))
    y = 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255
    u = 128 + (-37.797 * r - 74.203 * g + 112.0 * b) / 255
    v = 128 + (112.0 * r - 93.786 * g - 18.214 * b) / 255
    return y, u, v


def to_u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def yuv422_payload(rgb: np.ndarray, order: str) -> np.ndarray:
    """H x W x 2 packed 4:2:2 built by hand; order 'UYVY' or 'YUYV' names the bytes of each pixel pair."""
    y, u, v = bt601_limited(rgb)
    u2 = (u[:, 0::2] + u[:, 1::2]) / 2
    v2 = (v[:, 0::2] + v[:, 1::2]) / 2
    h, w = y.shape
    out = np.empty((h, w // 2, 4), np.uint8)
    planes = {"Y0": y[:, 0::2], "Y1": y[:, 1::2], "U": u2, "V": v2}
    names = ["U", "Y0", "V", "Y1"] if order == "UYVY" else ["Y0", "U", "Y1", "V"]
    for i, name in enumerate(names):
        out[..., i] = to_u8(planes[name])
    return out.reshape(h, w, 2)


def nv_payload(rgb: np.ndarray, order: str) -> np.ndarray:
    """(H * 3 / 2) x W semi-planar 4:2:0 built by hand: Y plane then interleaved UV (nv12) or VU (nv21)."""
    y, u, v = bt601_limited(rgb)
    h, w = y.shape

    def down(p: np.ndarray) -> np.ndarray:
        return (p[0::2, 0::2] + p[0::2, 1::2] + p[1::2, 0::2] + p[1::2, 1::2]) / 4

    uv = np.empty((h // 2, w // 2, 2), np.uint8)
    first, second = (down(u), down(v)) if order == "nv12" else (down(v), down(u))
    uv[..., 0], uv[..., 1] = to_u8(first), to_u8(second)
    return np.concatenate([to_u8(y), uv.reshape(h // 2, w)], axis=0)


def bayer_mosaic(rgb: np.ndarray, pattern: str) -> np.ndarray:
    """Sample one channel per pixel; pattern lists the 2x2 cell from the top-left pixel, row-major."""
    out = np.empty(rgb.shape[:2], np.uint8)
    for k, letter in enumerate(pattern):
        dy, dx = divmod(k, 2)
        out[dy::2, dx::2] = rgb[dy::2, dx::2, "RGB".index(letter)]
    return out


def build_payload(rgb: np.ndarray, encoding: str) -> tuple[np.ndarray, np.ndarray | None]:
    """(payload rows as a 2-D/3-D uint8 array, expected RGB or None when only the OpenCV reference applies)."""
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    alpha = np.full(rgb.shape[:2] + (1,), 200, np.uint8)
    if encoding == "rgb8":
        return rgb.copy(), rgb
    if encoding == "bgr8":
        return np.ascontiguousarray(rgb[..., ::-1]), rgb
    if encoding == "rgba8":
        return np.concatenate([rgb, alpha], axis=2), rgb
    if encoding == "bgra8":
        return np.concatenate([rgb[..., ::-1], alpha], axis=2), rgb
    if encoding == "mono8":
        return gray, np.repeat(gray[..., None], 3, axis=2)
    if encoding == "mono16":
        noise = np.random.default_rng(0).integers(0, 256, gray.shape, dtype=np.uint16)
        words = (gray.astype(np.uint16) << 8) | noise  # the low byte must not matter
        return words.astype("<u2").view(np.uint8).reshape(gray.shape[0], -1), np.repeat(gray[..., None], 3, axis=2)
    if encoding in ("yuv422", "uyvy"):
        return yuv422_payload(rgb, "UYVY"), None
    if encoding in ("yuv422_yuy2", "yuyv"):
        return yuv422_payload(rgb, "YUYV"), None
    if encoding in ("nv12", "nv21"):
        return nv_payload(rgb, encoding), None
    if encoding in ROS_BAYER:
        return bayer_mosaic(rgb, ROS_BAYER[encoding]), None
    raise AssertionError(f"no builder for {encoding}")


def opencv_reference(payload: np.ndarray, encoding: str, rgb: np.ndarray) -> np.ndarray:
    code = {
        "yuv422": cv2.COLOR_YUV2RGB_UYVY,
        "uyvy": cv2.COLOR_YUV2RGB_UYVY,
        "yuv422_yuy2": cv2.COLOR_YUV2RGB_YUY2,
        "yuyv": cv2.COLOR_YUV2RGB_YUYV,
        "nv12": cv2.COLOR_YUV2RGB_NV12,
        "nv21": cv2.COLOR_YUV2RGB_NV21,
    }.get(encoding)
    if code is None:  # Bayer: the OpenCV code that best reconstructs this pattern (see test_bayer_code_choice)
        return best_bayer_decode(payload, rgb)[1]
    return cv2.cvtColor(payload, code)


def best_bayer_decode(mosaic: np.ndarray, reference: np.ndarray) -> tuple[str, np.ndarray]:
    """Decode a mosaic with each OpenCV two-letter code; return the one closest to ``reference``."""
    decodes = {c: cv2.cvtColor(mosaic, getattr(cv2, f"COLOR_Bayer{c}2RGB")) for c in OPENCV_TWO_LETTER}
    errors = {c: np.abs(d.astype(np.int16) - reference).mean() for c, d in decodes.items()}
    best = min(errors, key=errors.get)
    return best, decodes[best]


def payload_bytes(payload: np.ndarray, pad: int = 0, seed: int = 1) -> tuple[bytes, int]:
    """Row-major bytes of the payload rows, each followed by ``pad`` garbage bytes; returns (data, step)."""
    rows = payload.reshape(payload.shape[0], -1)
    if pad:
        garbage = np.random.default_rng(seed).integers(0, 256, (rows.shape[0], pad), dtype=np.uint8)
        rows = np.concatenate([rows, garbage], axis=1)
    return np.ascontiguousarray(rows).tobytes(), rows.shape[1]


# --- tests -----------------------------------------------------------------------------------------------


def test_supported_encodings_listed() -> None:
    expected = {
        "rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "yuv422", "uyvy", "yuv422_yuy2", "yuyv",
        "nv12", "nv21", "bayer_rggb8", "bayer_bggr8", "bayer_gbrg8", "bayer_grbg8",
    }  # fmt: skip
    assert set(SUPPORTED_ENCODINGS) == expected
    assert len(SUPPORTED_ENCODINGS) == len(expected)


@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
@pytest.mark.parametrize("pad", [0, 13])
def test_decode_matches_reference(rgb: np.ndarray, encoding: str, pad: int) -> None:
    payload, exact = build_payload(rgb, encoding)
    data, step = payload_bytes(payload, pad)
    h, w = rgb.shape[:2]
    out = decode_image(encoding, h, w, step, data)
    assert out.shape == (h, w, 3) and out.dtype == np.uint8
    assert out.flags.c_contiguous and out.flags.writeable
    if exact is not None:  # lossless formats: exactly the source pixels
        np.testing.assert_array_equal(out, exact)
    else:  # lossy layouts: exactly OpenCV's decoding of the same payload, and close to the source frame
        np.testing.assert_array_equal(out, opencv_reference(payload, encoding, rgb))
        err = np.abs(out.astype(np.int16) - rgb)
        limit = 6.0 if encoding.startswith("bayer") else 3.0
        assert err.mean() < limit, f"{encoding}: mean abs error {err.mean():.2f} vs the original frame"


@pytest.mark.parametrize("encoding", ["yuv422", "uyvy", "yuv422_yuy2", "yuyv", "nv12", "nv21"])
def test_yuv_byte_order_is_not_swapped(rgb: np.ndarray, encoding: str) -> None:
    """The payload built for one byte order must decode badly as the other one (the test can tell them apart)."""
    h, w = rgb.shape[:2]
    swapped = {"yuv422": "yuyv", "uyvy": "yuv422_yuy2", "yuv422_yuy2": "uyvy", "yuyv": "yuv422", "nv12": "nv21",
               "nv21": "nv12"}[encoding]  # fmt: skip
    payload, _ = build_payload(rgb, encoding)
    data, step = payload_bytes(payload)
    right = np.abs(decode_image(encoding, h, w, step, data).astype(np.int16) - rgb).mean()
    wrong = np.abs(decode_image(swapped, h, w, step, data).astype(np.int16) - rgb).mean()
    assert right < 3.0 < wrong


@pytest.mark.parametrize("encoding", sorted(ROS_BAYER))
def test_bayer_code_choice(rgb: np.ndarray, encoding: str) -> None:
    """ROS names the pattern from the top-left pixel; the decode must rebuild the frame best of all four
    patterns and keep every sampled value in place (away from the border)."""
    h, w = rgb.shape[:2]
    mosaic = bayer_mosaic(rgb, ROS_BAYER[encoding])
    out = decode_image(encoding, h, w, w, mosaic.tobytes())
    errors = {
        other: np.abs(decode_image(other, h, w, w, mosaic.tobytes()).astype(np.int16) - rgb).mean()
        for other in ROS_BAYER
    }
    assert min(errors, key=errors.get) == encoding, errors
    best_code, best = best_bayer_decode(mosaic, rgb)
    np.testing.assert_array_equal(out, best)
    assert best_code == {"RGGB": "BG", "BGGR": "RG", "GBRG": "GR", "GRBG": "GB"}[ROS_BAYER[encoding]]
    interior = (slice(2, -2), slice(2, -2))
    np.testing.assert_array_equal(bayer_mosaic(out, ROS_BAYER[encoding])[interior], mosaic[interior])


def test_mono16_big_endian(rgb: np.ndarray) -> None:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = gray.shape
    words = (gray.astype(np.uint16) << 8) | 0x7F
    expected = np.repeat(gray[..., None], 3, axis=2)
    big = words.astype(">u2").tobytes()
    np.testing.assert_array_equal(decode_image("mono16", h, w, 2 * w, big, is_bigendian=1), expected)
    # The same bytes read as little-endian give the low byte (0x7F) everywhere: endianness really matters.
    assert np.all(decode_image("mono16", h, w, 2 * w, big, is_bigendian=0) == 0x7F)
    # Big-endian with row padding.
    padded = np.concatenate([words.astype(">u2").view(np.uint8).reshape(h, -1), np.full((h, 6), 0xAB, np.uint8)], 1)
    np.testing.assert_array_equal(decode_image("mono16", h, w, 2 * w + 6, padded.tobytes(), 1), expected)


def test_nv12_step_padding_applies_to_uv_plane(rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    payload = nv_payload(rgb, "nv12")
    data, step = payload_bytes(payload, pad=32)
    assert step == w + 32 and len(data) == step * (h + h // 2)
    np.testing.assert_array_equal(decode_image("nv12", h, w, step, data), cv2.cvtColor(payload, cv2.COLOR_YUV2RGB_NV12))


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "memoryview", "ndarray", "array"])
def test_buffer_types(rgb: np.ndarray, kind: str) -> None:
    h, w = rgb.shape[:2]
    raw = np.ascontiguousarray(rgb[..., ::-1]).tobytes()
    data = {
        "bytes": raw,
        "bytearray": bytearray(raw),
        "memoryview": memoryview(raw),
        "ndarray": np.frombuffer(raw, np.uint8),
        "array": array.array("B", raw),  # what rclpy gives for uint8[] fields
    }[kind]
    np.testing.assert_array_equal(decode_image("bgr8", h, w, 3 * w, data), rgb)


def test_rgb8_result_does_not_alias_input(rgb: np.ndarray) -> None:
    h, w = rgb.shape[:2]
    buf = bytearray(rgb.tobytes())
    out = decode_image("rgb8", h, w, 3 * w, buf)
    buf[0] ^= 0xFF
    assert out[0, 0, 0] == rgb[0, 0, 0]


@pytest.mark.parametrize(
    ("args", "match"),
    [
        (("bgr16", 2, 2, 12, bytes(48)), "unsupported image encoding 'bgr16'"),
        (("", 2, 2, 6, bytes(12)), "unsupported image encoding"),
        (("rgb8", 0, 2, 6, b""), "must be positive"),
        (("rgb8", 2, 0, 0, b""), "must be positive"),
        (("rgb8", -1, 2, 6, bytes(12)), "must be positive"),
        (("mono8", 16385, 1, 1, bytes(16385)), "implausible"),
        (("mono8", 1, 16385, 16385, bytes(16385)), "implausible"),
        (("rgb8", 2, 4, 11, bytes(24)), "step 11 is smaller than one rgb8 row"),
        (("mono16", 2, 4, 7, bytes(16)), "step 7 is smaller"),
        (("rgba8", 2, 2, 8, bytes(15)), "needs 16 bytes, got 15"),
        (("bgr8", 3, 2, 8, bytes(23)), "needs 24 bytes, got 23"),
        (("yuv422", 2, 3, 6, bytes(12)), "even width"),
        (("uyvy", 2, 3, 6, bytes(12)), "even width"),
        (("yuv422_yuy2", 2, 3, 6, bytes(12)), "even width"),
        (("yuyv", 2, 5, 10, bytes(20)), "even width"),
        (("nv12", 3, 4, 4, bytes(24)), "even width and height"),
        (("nv21", 4, 3, 4, bytes(24)), "even width and height"),
        (("nv12", 4, 4, 3, bytes(24)), "step 3 is smaller"),
        (("nv12", 4, 4, 4, bytes(16)), r"needs 24 bytes \(Y plane \+ UV plane\), got 16"),
        (("nv21", 4, 4, 6, bytes(24)), r"needs 36 bytes"),
        (("mono8", 2, 2, 2, object()), "not a byte buffer"),
    ],
)
def test_decode_errors(args: tuple, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_image(*args)


def test_absurd_pixel_count_rejected_before_reading_data() -> None:
    with pytest.raises(ValueError, match="implausible"):
        decode_image("mono8", 16384, 16385, 16385, b"")


# --- compressed --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jpeg", "bgr8; jpeg compressed bgr8", "rgb8; jpeg compressed bgr8", "JPEG"])
def test_decode_compressed_jpeg(rgb: np.ndarray, fmt: str) -> None:
    ok, jpeg = cv2.imencode(".jpg", rgb_to_bgr(rgb), [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    out = decode_compressed(fmt, jpeg.tobytes())
    reference = cv2.cvtColor(cv2.imdecode(jpeg, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    np.testing.assert_array_equal(out, reference)
    assert out.shape == rgb.shape and out.flags.c_contiguous
    assert np.abs(out.astype(np.int16) - rgb).mean() < 3.0  # RGB order, not BGR


@pytest.mark.parametrize("fmt", ["png", "rgb8; png compressed rgb8"])
def test_decode_compressed_png_is_lossless(rgb: np.ndarray, fmt: str) -> None:
    ok, png = cv2.imencode(".png", rgb_to_bgr(rgb))
    assert ok
    np.testing.assert_array_equal(decode_compressed(fmt, bytearray(png.tobytes())), rgb)
    np.testing.assert_array_equal(decode_compressed(fmt, png), rgb)  # ndarray input as well


def test_decode_compressed_mono_png(rgb: np.ndarray) -> None:
    gray = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    ok, png = cv2.imencode(".png", gray)
    assert ok
    np.testing.assert_array_equal(decode_compressed("mono8; png compressed mono8", png), np.dstack([gray] * 3))


@pytest.mark.parametrize(
    ("fmt", "data", "match"),
    [
        ("jpeg", b"", "no data"),
        ("jpeg", b"\xff\xd8\xff\xe0 definitely not a jpeg" * 4, "cannot decode"),
        ("png", b"\x89PNG\r\n\x1a\n" + bytes(64), "cannot decode"),
        ("16UC1; compressedDepth png", b"\x00" * 32, "compressedDepth"),
    ],
)
def test_decode_compressed_errors(fmt: str, data: bytes, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        decode_compressed(fmt, data)


def test_decode_compressed_truncated_jpeg(rgb: np.ndarray) -> None:
    ok, jpeg = cv2.imencode(".jpg", rgb_to_bgr(rgb))
    assert ok
    with pytest.raises(ValueError, match="cannot decode"):
        decode_compressed("jpeg", jpeg.tobytes()[:200])


# --- outputs -----------------------------------------------------------------------------------------------


def test_encode_labels_mono8_round_trip(labels: np.ndarray) -> None:
    encoding, step, data = encode_labels(labels)
    h, w = labels.shape
    assert (encoding, step, len(data)) == ("mono8", w, h * w)
    np.testing.assert_array_equal(np.frombuffer(data, np.uint8).reshape(h, w), labels)
    # A non-contiguous view (every other column) is packed, with step = its own width.
    encoding, step, data = encode_labels(labels[:, ::2])
    assert step == (w + 1) // 2 and len(data) == step * h
    np.testing.assert_array_equal(np.frombuffer(data, np.uint8).reshape(h, -1), labels[:, ::2])


def test_encode_labels_mono16_little_endian(labels: np.ndarray) -> None:
    wide = labels.astype(np.uint16) * 300  # values above 255 need the high byte
    encoding, step, data = encode_labels(wide)
    h, w = labels.shape
    assert (encoding, step, len(data)) == ("mono16", 2 * w, 2 * h * w)
    np.testing.assert_array_equal(np.frombuffer(data, "<u2").reshape(h, w), wide)
    # decode_image keeps the high byte of mono16
    np.testing.assert_array_equal(decode_image(encoding, h, w, step, data)[..., 0], (wide >> 8).astype(np.uint8))


@pytest.mark.parametrize(
    ("labels", "match"),
    [
        (np.zeros((4, 4), np.float32), "uint8 or uint16"),
        (np.zeros((4, 4), np.int64), "uint8 or uint16"),
        (np.zeros((4, 4, 1), np.uint8), "2-D"),
        (np.zeros((0, 4), np.uint8), "must be positive"),
    ],
)
def test_encode_labels_errors(labels: np.ndarray, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        encode_labels(labels)


def test_rgb_to_bgr(rgb: np.ndarray) -> None:
    bgr = rgb_to_bgr(rgb)
    assert bgr.flags.c_contiguous
    np.testing.assert_array_equal(bgr, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    np.testing.assert_array_equal(rgb_to_bgr(bgr), rgb)
    with pytest.raises(ValueError, match="H x W x 3"):
        rgb_to_bgr(rgb[..., 0])
