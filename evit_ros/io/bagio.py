"""Read and write image topics in rosbag2 recordings (sqlite3 ``.db3`` and ``.mcap``) without ROS.

Built on the `rosbags <https://gitlab.com/ternaris/rosbags>`_ library, so it works on any machine with
``pip install rosbags`` and never imports rclpy. Only ``sensor_msgs/msg/Image`` and
``sensor_msgs/msg/CompressedImage`` are handled; other topics in a bag are skipped.

* :func:`iter_bag_frames` yields :class:`BagFrame` objects in record order. Colour encodings (and any
  compressed image) are decoded to ``H x W x 3`` uint8 RGB through :mod:`evit_ros.encodings`;
  ``mono8`` / ``mono16`` images are returned raw (``H x W`` uint8 / uint16), because they usually carry
  label maps whose values must not be altered.
* :class:`ImageBagWriter` writes such messages (used by the tests, and handy to build evaluation bags from
  image folders).

A *path* is a bag directory (with ``metadata.yaml``) or a single ``.db3`` / ``.mcap`` file.

Damaged recordings (a robot that lost power mid-recording) are read as far as they go, and what was wrong
is recorded in a :class:`BagHealth` the caller passes in:

* an ``.mcap`` file cut off mid-write has no summary or footer, so the indexed reader refuses it; it is then
  read front to back in stream (write) order, without the summary, up to the last complete record before
  the cut (including the complete messages of the chunk the cut went through), and flagged ``truncated``;
* a bag directory without ``metadata.yaml`` (the recorder was killed before writing it) is read from its
  storage files, ``<dir name>_<N>.mcap`` / ``.db3`` in split order, and flagged ``missing_metadata``;
* anything else that cannot be read raises :class:`BagReadError` (a ``ValueError``) naming the file and why.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

import numpy as np

from evit_ros.io.encodings import decode_compressed, decode_image

if TYPE_CHECKING:
    from typing import Self  # 3.11+, annotation-only (strings here), so 3.10 runs

__all__ = [
    "COMPRESSED_MSGTYPE",
    "IMAGE_MSGTYPE",
    "BagFrame",
    "BagHealth",
    "BagReadError",
    "ImageBagWriter",
    "bag_message_count",
    "bag_topics",
    "is_bag_path",
    "frame_from_message",
    "iter_bag_frames",
    "iter_bag_messages",
]

IMAGE_MSGTYPE = "sensor_msgs/msg/Image"
COMPRESSED_MSGTYPE = "sensor_msgs/msg/CompressedImage"
_IMAGE_TYPES = (IMAGE_MSGTYPE, COMPRESSED_MSGTYPE)
_MONO = {"mono8": np.dtype(np.uint8), "mono16": np.dtype(np.uint16)}
_STORAGES = ("sqlite3", "mcap")


def _rosbags() -> Any:
    try:
        from rosbags import rosbag2
        from rosbags.typesys import Stores, get_typestore
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("reading/writing bags needs the 'rosbags' package: pip install rosbags") from exc
    return rosbag2, get_typestore(Stores.ROS2_HUMBLE)


_TYPESTORE_CACHE: list[Any] = []


def _typestore() -> Any:
    if not _TYPESTORE_CACHE:
        _TYPESTORE_CACHE.extend(_rosbags())
    return _TYPESTORE_CACHE[0], _TYPESTORE_CACHE[1]


@dataclass
class BagFrame:
    """One image message read from a bag.

    ``stamp_ns`` is the header stamp, ``recv_ns`` the time the recorder stored the message. ``image`` is
    RGB uint8 ``H x W x 3`` for colour/compressed images, or the raw ``H x W`` uint8/uint16 array for
    ``mono8``/``mono16``. ``encoding`` is the Image encoding, or ``"compressed:<format>"``.
    """

    topic: str
    stamp_ns: int
    recv_ns: int
    frame_id: str
    encoding: str
    image: np.ndarray


class BagReadError(ValueError):
    """A recording (or one of its storage files) that cannot be read; the message names the file and why."""


@dataclass
class BagHealth:
    """What was wrong with a recording while it was read (filled in by the readers)."""

    truncated: bool = False
    missing_metadata: bool = False
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    @property
    def flags(self) -> list[str]:
        return [name for name, on in (("truncated", self.truncated), ("no metadata.yaml", self.missing_metadata)) if on]


_STORAGE_SUFFIXES = (".db3", ".mcap")


def _split_files(path: Path) -> list[Path]:
    """The storage files of a bag directory: ``<dir name>.<ext>`` or ``<dir name>_<N>.<ext>``, in split order."""
    pattern = re.compile(rf"^{re.escape(path.name)}(?:_(\d+))?(\.db3|\.mcap)$")
    found = [(int(m.group(1) or -1), f) for f in path.iterdir() if f.is_file() and (m := pattern.match(f.name))]
    return [f for _, f in sorted(found)]


def is_bag_path(path: str | Path) -> bool:
    """A storage file, or a bag directory: with metadata.yaml, or with ``<dir name>[_<N>].mcap|.db3`` files."""
    path = Path(path)
    if path.is_file():
        return path.suffix.lower() in _STORAGE_SUFFIXES
    return path.is_dir() and ((path / "metadata.yaml").is_file() or bool(_split_files(path)))


def _check_path(path: str | Path) -> Path:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"bag not found: {path}")
    if path.is_dir() and not is_bag_path(path):
        raise ValueError(f"{path} is a directory without metadata.yaml: not a rosbag2 recording")
    if path.is_file() and path.suffix not in _STORAGE_SUFFIXES:
        raise ValueError(f"{path} is not a rosbag2 recording (expected a bag directory, .db3 or .mcap)")
    return path


def _parts(path: Path, health: BagHealth) -> list[Path]:
    """What to hand the rosbags reader: the bag itself, or its storage files one by one without metadata."""
    if path.is_dir() and not (path / "metadata.yaml").is_file():
        health.missing_metadata = True
        health.note("no metadata.yaml: read from the storage files")
        return _split_files(path)
    return [path]


def _mcap_files(part: Path) -> list[Path]:
    return sorted(part.glob("*.mcap")) if part.is_dir() else ([part] if part.suffix == ".mcap" else [])


class _StreamConnection:
    """The fields of a rosbags connection the readers below use, for a channel met in an mcap stream."""

    def __init__(self, topic: str, msgtype: str) -> None:
        self.topic, self.msgtype = topic, msgtype


_MCAP_MAGIC = b"\x89MCAP0\r\n"
_OP_FOOTER, _OP_SCHEMA, _OP_CHANNEL, _OP_MESSAGE, _OP_CHUNK = 0x02, 0x03, 0x04, 0x05, 0x06
_CHUNK_HEAD = struct.Struct("<QQQII")  # start time, end time, uncompressed size, crc, compression name length


def _mcap_records(read: Callable[[int], bytes], left: Callable[[], int]) -> Iterator[tuple[int, bytes, bool]]:
    """``(opcode, body, complete)`` per record; a record cut short comes last with ``complete=False``."""
    while left() > 0:
        head = read(9)
        if len(head) < 9:
            yield (head[0] if head else 0), b"", False
            return
        opcode, length = head[0], int.from_bytes(head[1:], "little")
        body = read(min(length, left()))  # a corrupt length must not allocate gigabytes
        yield opcode, body, len(body) == length
        if len(body) < length or opcode == _OP_FOOTER:
            return


def _decompress(compression: str, data: bytes) -> bytes:
    """A chunk's records, or as much of them as a cut-off ``data`` holds."""
    if compression == "":
        return data
    try:
        if compression == "zstd":
            import zstandard

            return zstandard.ZstdDecompressor().decompressobj().decompress(data)
        if compression == "lz4":
            import lz4.frame

            return lz4.frame.LZ4FrameDecompressor().decompress(data)
    except ImportError as exc:
        raise BagReadError(f"{compression}-compressed mcap chunks need: pip install {exc.name}") from exc
    raise BagReadError(f"unknown mcap chunk compression {compression!r}")


def _chunk_records(body: bytes, complete: bool) -> Iterator[tuple[int, bytes, bool]]:
    """The records inside a chunk record (complete, or cut off: then up to its last whole record)."""
    if len(body) < _CHUNK_HEAD.size:
        return
    *_, name_len = _CHUNK_HEAD.unpack_from(body)
    offset = _CHUNK_HEAD.size + name_len + 8  # the compression name, then the records' byte length
    if len(body) < offset:
        return
    compression = body[_CHUNK_HEAD.size : _CHUNK_HEAD.size + name_len].decode("utf-8", "replace")
    raw = BytesIO(_decompress(compression, body[offset:]))
    size = len(raw.getbuffer())
    yield from _mcap_records(raw.read, lambda: size - raw.tell())


def _iter_mcap_stream(file: Path, health: BagHealth) -> Iterator[tuple[_StreamConnection, int, bytes]]:
    """Every message of an mcap file in stream (write) order, up to a cut if the file was never closed.

    Records are framed here (so a record cut short is recognised by its length, never half-parsed) and decoded
    with the ``mcap`` package's record classes; the messages of a chunk the cut went through are kept up to its
    last complete record.
    """
    try:
        from mcap.data_stream import ReadDataStream
        from mcap.records import Channel, Message, Schema
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BagReadError(f"{file} has no mcap summary (cut off?); reading it needs: pip install mcap") from exc

    def parse(kind: Any, body: bytes, *extra: int) -> Any:
        return kind.read(ReadDataStream(BytesIO(body)), *extra)

    schemas: dict[int, str] = {}
    connections: dict[int, _StreamConnection] = {}
    count = 0
    size = file.stat().st_size
    with open(file, "rb") as stream:
        if stream.read(len(_MCAP_MAGIC)) != _MCAP_MAGIC:
            raise BagReadError(f"{file} is not an mcap file (no mcap magic in its first bytes; {size} bytes)")
        ended = False
        try:
            for opcode, body, complete in _mcap_records(stream.read, lambda: size - stream.tell()):
                ended = opcode == _OP_FOOTER
                inner = [(opcode, body, complete)]
                if opcode == _OP_CHUNK:
                    inner = _chunk_records(body, complete)
                for op, record, whole in inner:
                    if not whole:
                        break
                    if op == _OP_SCHEMA:
                        schema = parse(Schema, record)
                        schemas[schema.id] = schema.name
                    elif op == _OP_CHANNEL:
                        channel = parse(Channel, record)
                        connections[channel.id] = _StreamConnection(channel.topic, schemas.get(channel.schema_id, ""))
                    elif op == _OP_MESSAGE:
                        message = parse(Message, record, len(record))
                        if message.channel_id in connections:
                            count += 1
                            yield connections[message.channel_id], int(message.log_time), message.data
        except BagReadError:
            raise
        except Exception as exc:  # a damaged record in the middle: keep what came before, like a cut
            if count == 0:
                raise BagReadError(f"{file}: cannot read its mcap records: {exc or type(exc).__name__}") from exc
            health.note(f"{file.name}: damaged record after {count} messages ({exc or type(exc).__name__})")
        if not ended:
            health.truncated = True
            health.note(f"{file.name} ends without its mcap footer (cut off while recording): {count} messages read")


class _Part:
    """One readable unit of a bag: through rosbags (indexed), or an mcap stream when rosbags refuses it."""

    def __init__(self, part: Path, health: BagHealth) -> None:
        self.part, self.health = part, health

    def __enter__(self) -> _Part:
        rosbag2, _ = _typestore()
        self.reader = None
        try:
            self.reader = rosbag2.Reader(self.part)
            self.reader.open()
        except Exception as exc:  # rosbags raises ReaderError, and sqlite/OS errors for damaged files
            self.reader = None
            files = _mcap_files(self.part)
            if not files:
                raise BagReadError(f"cannot read {self.part}: {exc}") from exc
            self.health.note(f"{self.part.name}: {exc}")
            self.stream_files = files
        return self

    def __exit__(self, *exc: object) -> None:
        if self.reader is not None:
            self.reader.close()

    def connections(self) -> dict[str, str]:
        if self.reader is not None:
            return {conn.topic: conn.msgtype for conn in self.reader.connections}
        found: dict[str, str] = {}
        for file in self.stream_files:
            for conn, _, _ in _iter_mcap_stream(file, self.health):
                found.setdefault(conn.topic, conn.msgtype)
        return found

    def messages(self, wanted: set[str]) -> Iterator[tuple[Any, int, bytes]]:
        if self.reader is not None:
            selected = [conn for conn in self.reader.connections if conn.topic in wanted]
            if not selected:
                return
            messages = self.reader.messages(connections=selected)
            while True:
                try:
                    item = next(messages)
                except StopIteration:
                    return
                except Exception as exc:  # damage past the index (sqlite/mcap errors): name the file
                    raise BagReadError(f"cannot read {self.part}: {exc}") from exc
                yield item
        for file in self.stream_files:
            for conn, recv_ns, raw in _iter_mcap_stream(file, self.health):
                if conn.topic in wanted:
                    yield conn, recv_ns, raw

    def count(self, topic: str) -> int | None:
        if self.reader is None:
            return None
        return sum(conn.msgcount for conn in self.reader.connections if conn.topic == topic)


def bag_topics(path: str | Path, health: BagHealth | None = None) -> dict[str, str]:
    """Topic name -> message type (e.g. ``sensor_msgs/msg/Image``) of every topic in the bag."""
    health = BagHealth() if health is None else health
    found: dict[str, str] = {}
    for part in _parts(_check_path(path), health):
        with _Part(part, health) as reader:
            for topic, msgtype in reader.connections().items():
                found.setdefault(topic, msgtype)
    return found


def bag_message_count(path: str | Path, topic: str) -> int | None:
    """Messages on ``topic`` as the bag's index says (cheap); ``None`` when only a stream read could tell."""
    health = BagHealth()
    total = 0
    for part in _parts(_check_path(path), health):
        with _Part(part, health) as reader:
            count = reader.count(topic)
            if count is None:
                return None
            total += count
    return total


def _stamp_ns(header: Any) -> int:
    return int(header.stamp.sec) * 1_000_000_000 + int(header.stamp.nanosec)


def _decode_mono(msg: Any) -> np.ndarray:
    """The raw values of a mono8/mono16 Image (label maps), honouring ``step`` and ``is_bigendian``."""
    dtype = _MONO[msg.encoding]
    height, width, step = int(msg.height), int(msg.width), int(msg.step)
    if height <= 0 or width <= 0:
        raise ValueError(f"{msg.encoding} image has a non-positive size {width}x{height}")
    if step < width * dtype.itemsize:
        raise ValueError(f"{msg.encoding} step {step} is smaller than one row ({width * dtype.itemsize} bytes)")
    buf = np.frombuffer(np.asarray(msg.data, dtype=np.uint8).tobytes(), dtype=np.uint8)
    if buf.size < step * height:
        raise ValueError(
            f"{msg.encoding} {width}x{height} with step {step} needs {step * height} bytes, got {buf.size}"
        )
    rows = buf[: step * height].reshape(height, step)[:, : width * dtype.itemsize]
    order = ">" if msg.is_bigendian else "<"
    return np.ascontiguousarray(rows).view(dtype.newbyteorder(order)).astype(dtype).reshape(height, width)


def frame_from_message(topic: str, msgtype: str, recv_ns: int, msg: Any) -> BagFrame:
    """Decode a deserialised Image / CompressedImage message into a :class:`BagFrame`."""
    if msgtype == IMAGE_MSGTYPE:
        if msg.encoding in _MONO:
            image = _decode_mono(msg)
        else:
            image = decode_image(msg.encoding, msg.height, msg.width, msg.step, msg.data, msg.is_bigendian)
        encoding = msg.encoding
    elif msgtype == COMPRESSED_MSGTYPE:
        image = decode_compressed(msg.format, msg.data)
        encoding = f"compressed:{msg.format}"
    else:
        raise ValueError(f"topic {topic} has type {msgtype}, not an image ({', '.join(_IMAGE_TYPES)})")
    return BagFrame(topic, _stamp_ns(msg.header), int(recv_ns), str(msg.header.frame_id), encoding, image)


def iter_bag_messages(
    path: str | Path, topics: list[str] | None = None, health: BagHealth | None = None
) -> Iterator[tuple[str, str, int, Any]]:
    """``(topic, msgtype, recv_ns, message)`` for the image topics (all, or ``topics``), in record order.

    The message is deserialised but its image is not decoded (cheap access to headers). A cut-off mcap file
    is read in stream order up to the cut; ``health`` (if given) says so (see the module docstring).
    Raises ``ValueError`` when a requested topic is missing or is not an image topic.
    """
    _, typestore = _typestore()
    health = BagHealth() if health is None else health
    path = _check_path(path)
    available = bag_topics(path, health)
    if topics is not None:
        missing = [t for t in topics if t not in available]
        if missing:
            raise ValueError(
                f"topic(s) {', '.join(missing)} not in bag {path}; it has: {', '.join(sorted(available)) or 'none'}"
            )
        wrong = [f"{t} ({available[t]})" for t in topics if available[t] not in _IMAGE_TYPES]
        if wrong:
            raise ValueError(f"not image topics: {', '.join(wrong)}")
    wanted = set(topics) if topics is not None else {t for t, m in available.items() if m in _IMAGE_TYPES}
    if not wanted:
        return
    for part in _parts(path, health):
        with _Part(part, health) as reader:
            for conn, recv_ns, raw in reader.messages(wanted):
                try:
                    msg = typestore.deserialize_cdr(raw, conn.msgtype)
                except Exception as exc:  # a corrupt record: say which, rather than a bare struct error
                    what = f"a {conn.msgtype} message on {conn.topic}"
                    raise BagReadError(f"{path}: cannot decode {what}: {exc}") from exc
                yield conn.topic, conn.msgtype, recv_ns, msg


def iter_bag_frames(
    path: str | Path, topics: list[str] | None = None, health: BagHealth | None = None
) -> Iterator[BagFrame]:
    """Every Image / CompressedImage message on ``topics`` (default: all image topics), in record order."""
    for topic, msgtype, recv_ns, msg in iter_bag_messages(path, topics, health):
        yield frame_from_message(topic, msgtype, recv_ns, msg)


def _split_ns(stamp_ns: int) -> tuple[int, int]:
    if stamp_ns < 0:
        raise ValueError(f"stamp must be non-negative, got {stamp_ns}")
    return stamp_ns // 1_000_000_000, stamp_ns % 1_000_000_000


class ImageBagWriter:
    """Write ``sensor_msgs/Image`` / ``CompressedImage`` messages to a new rosbag2 recording.

    >>> with ImageBagWriter("out_bag", storage="mcap") as bag:            # doctest: +SKIP
    ...     bag.write("camera/image", rgb, "rgb8", stamp_ns=t)
    ...     bag.write("gt/labels", labels, "mono8", stamp_ns=t)

    ``path`` is the bag directory to create (must not exist). ``recv_ns`` (the record time) defaults to
    the stamp.
    """

    def __init__(self, path: str | Path, storage: str = "sqlite3") -> None:
        if storage not in _STORAGES:
            raise ValueError(f"storage must be one of {_STORAGES}, got {storage!r}")
        rosbag2, self._typestore = _typestore()
        plugin = rosbag2.StoragePlugin.MCAP if storage == "mcap" else rosbag2.StoragePlugin.SQLITE3
        self.path = Path(path)
        self.storage = storage
        self._writer = rosbag2.Writer(self.path, version=rosbag2.Writer.VERSION_LATEST, storage_plugin=plugin)
        self._connections: dict[tuple[str, str], Any] = {}
        self._open = False

    def open(self) -> Self:
        self._writer.open()
        self._open = True
        return self

    def close(self) -> None:
        if self._open:
            self._writer.close()
            self._open = False

    def __enter__(self) -> Self:
        return self.open()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _connection(self, topic: str, msgtype: str) -> Any:
        if not self._open:
            raise RuntimeError("ImageBagWriter is not open (use it as a context manager)")
        key = (topic, msgtype)
        if key not in self._connections:
            if any(t == topic for t, _ in self._connections):
                raise ValueError(f"topic {topic} already carries another message type")
            self._connections[key] = self._writer.add_connection(topic, msgtype, typestore=self._typestore)
        return self._connections[key]

    def _header(self, stamp_ns: int, frame_id: str) -> Any:
        types = self._typestore.types
        sec, nanosec = _split_ns(int(stamp_ns))
        stamp = types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec)
        return types["std_msgs/msg/Header"](stamp=stamp, frame_id=frame_id)

    def write(
        self,
        topic: str,
        image: np.ndarray,
        encoding: str,
        stamp_ns: int,
        recv_ns: int | None = None,
        frame_id: str = "camera",
    ) -> None:
        """Write an ``H x W`` or ``H x W x C`` array as a ``sensor_msgs/Image`` with ``encoding``.

        The array must already be laid out as the encoding says (e.g. ``rgb8``: RGB uint8 ``H x W x 3``;
        ``mono16``: uint16 ``H x W``; stored little-endian).
        """
        image = np.asarray(image)
        if image.ndim not in (2, 3) or image.size == 0:
            raise ValueError(f"image must be a non-empty H x W or H x W x C array, got shape {image.shape}")
        if encoding == "mono8" and (image.dtype != np.uint8 or image.ndim != 2):
            raise ValueError(f"mono8 needs a 2-D uint8 array, got {image.dtype} {image.shape}")
        if encoding == "mono16" and (image.dtype != np.uint16 or image.ndim != 2):
            raise ValueError(f"mono16 needs a 2-D uint16 array, got {image.dtype} {image.shape}")
        if encoding in ("rgb8", "bgr8") and (image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3):
            raise ValueError(f"{encoding} needs an H x W x 3 uint8 array, got {image.dtype} {image.shape}")
        if image.dtype.itemsize > 1:
            image = image.astype(image.dtype.newbyteorder("<"), copy=False)
        data = np.ascontiguousarray(image)
        msgtype = IMAGE_MSGTYPE
        msg = self._typestore.types[msgtype](
            header=self._header(stamp_ns, frame_id),
            height=data.shape[0],
            width=data.shape[1],
            encoding=encoding,
            is_bigendian=0,
            step=data.strides[0],
            data=np.frombuffer(data.tobytes(), dtype=np.uint8),
        )
        self._put(topic, msgtype, msg, stamp_ns, recv_ns)

    def write_compressed(
        self,
        topic: str,
        data: bytes,
        fmt: str,
        stamp_ns: int,
        recv_ns: int | None = None,
        frame_id: str = "camera",
    ) -> None:
        """Write already-encoded JPEG/PNG bytes as a ``sensor_msgs/CompressedImage`` (``fmt``: "jpeg", "png")."""
        if not data:
            raise ValueError("compressed image data is empty")
        msgtype = COMPRESSED_MSGTYPE
        msg = self._typestore.types[msgtype](
            header=self._header(stamp_ns, frame_id), format=fmt, data=np.frombuffer(bytes(data), dtype=np.uint8)
        )
        self._put(topic, msgtype, msg, stamp_ns, recv_ns)

    def _put(self, topic: str, msgtype: str, msg: Any, stamp_ns: int, recv_ns: int | None) -> None:
        conn = self._connection(topic, msgtype)
        timestamp = int(stamp_ns if recv_ns is None else recv_ns)
        if timestamp < 0:
            raise ValueError(f"record time must be non-negative, got {timestamp}")
        self._writer.write(conn, timestamp, self._typestore.serialize_cdr(msg, msgtype))
