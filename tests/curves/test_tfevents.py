"""The raw TensorBoard event reader against tensorboard's own loader, on files real writers wrote."""

from __future__ import annotations

import math
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from tensorboard.backend.event_processing.event_file_loader import EventFileLoader
from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
from tensorboard.compat.proto.tensor_pb2 import TensorProto
from tensorboard.summary import Writer as TensorBoardWriter
from tensorboard.util import tensor_util
from torch.utils.tensorboard import SummaryWriter

from mcp_server.curves import tfevents
from mcp_server.curves.store import Curves
from mcp_server.curves.tfevents import TfEventsReader, crc32c, is_tfevents, masked_crc32c

Points = dict[str, list[tuple[float, float, float]]]  # tag -> [(value, step, wall time)]


def event_file(logdir: Path) -> Path:
    (path,) = logdir.glob("events.out.tfevents.*")
    return path


def torch_file(logdir: Path, write) -> Path:
    """The event file torch's SummaryWriter leaves after `write(writer)`."""
    writer = SummaryWriter(str(logdir), flush_secs=10**6)
    write(writer)
    writer.close()
    return event_file(logdir)


def reference(path: Path) -> Points:
    """The scalars tensorboard's EventFileLoader finds: values of the "scalars" plugin, one element.

    The loader turns simple_value into tensors; as in tensorboard, a tag's first metadata says
    which plugin the tag belongs to.
    """
    plugins: dict[str, str] = {}
    points: Points = {}
    for event in EventFileLoader(str(path)).Load():
        for value in event.summary.value:
            plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
            if plugins[value.tag] != "scalars" or not value.HasField("tensor"):
                continue
            array = tensor_util.make_ndarray(value.tensor)
            if array.size == 1:
                points.setdefault(value.tag, []).append((float(array.item()), float(event.step), event.wall_time))
    return points


def ours(curves: Curves) -> Points:
    return {
        name: list(zip(s.values().tolist(), s.steps().tolist(), s.times().tolist(), strict=True))
        for name, s in curves.series.items()
    }


def read_all(path: Path) -> tuple[Curves, int]:
    curves = Curves()
    return curves, TfEventsReader(path).read_new(curves)


def assert_same(got: Points, want: Points) -> None:
    """Every point equal, NaN equal to NaN, in the same order."""
    assert sorted(got) == sorted(want)
    for tag in want:
        assert len(got[tag]) == len(want[tag]), tag
        for mine, theirs in zip(got[tag], want[tag], strict=True):
            for a, b in zip(mine, theirs, strict=True):
                assert a == b or (math.isnan(a) and math.isnan(b)), (tag, mine, theirs)


def scalars_metadata() -> SummaryMetadata:
    return SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="scalars"))


def test_crc32c_known_answer():
    assert crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert crc32c(b"") == 0


def test_simple_values_match_tensorboard(tmp_path):
    values = [0.0, -1.5, 3.25e-8, 1e30, math.nan, math.inf, -math.inf, 7.0]
    steps = [0, 1, 2, 300, 2**40, -5, 127, 128]

    def write(w):
        for i, (v, s) in enumerate(zip(values, steps, strict=True)):
            w.add_scalar("loss", v, s)
            w.add_scalar("train/lr", 1.0 / (i + 1), s, walltime=1_700_000_000.5 + i)
        w.add_scalar("no_step", 2.5)

    path = torch_file(tmp_path, write)
    curves, consumed = read_all(path)
    assert consumed == path.stat().st_size
    assert (curves.records, curves.skipped) == (2 * len(values) + 1, 0)
    assert curves.sources == [f"tfevents: {path}"]
    got = ours(curves)
    assert_same(got, reference(path))
    loss = got["loss"]
    assert [p[1] for p in loss] == steps
    assert math.isnan(loss[4][0]) and loss[5][0] == math.inf and loss[6][0] == -math.inf
    assert got["train/lr"][3][2] == 1_700_000_003.5


def test_tensor_scalars_match_tensorboard(tmp_path):
    def write(w):
        fw = w._get_file_writer()
        for i in range(5):
            w.add_scalar("new/float", 0.5 * i, i, new_style=True)
            w.add_scalar("new/double", math.pi * i, i, new_style=True, double_precision=True)
            w.add_scalar("new/nan", math.nan if i % 2 else math.inf, i, new_style=True)
            # Typed tensors as tensorboard's own make_tensor_proto builds them, metadata on the
            # first value of a tag only (as the TF2 writer does).
            for tag, data in (
                ("typed/half", np.float16(0.25 * i - 0.5)),
                ("typed/int32", np.int32(-3 * i)),
                ("typed/int64", np.int64(2**40 - i)),
                ("typed/double", np.float64(1 / 3 + i)),
            ):
                value = Summary.Value(tag=tag, tensor=tensor_util.make_tensor_proto(data))
                if i == 0:
                    value.metadata.CopyFrom(scalars_metadata())
                fw.add_summary(Summary(value=[value]), i)
            # The same values as raw tensor_content with an empty shape.
            for tag, dtype, fmt in (
                ("content/float", 1, "<f"),
                ("content/double", 2, "<d"),
                ("content/half", 19, "<e"),
                ("content/int64", 9, "<q"),
            ):
                tensor = TensorProto(dtype=dtype, tensor_content=struct.pack(fmt, -i))
                tensor.tensor_shape.SetInParent()
                fw.add_summary(Summary(value=[Summary.Value(tag=tag, tensor=tensor, metadata=scalars_metadata())]), i)
            # Not scalars: a two-element tensor of the scalars plugin, one value of no plugin and
            # one of another plugin.
            pair = Summary.Value(
                tag="pair", tensor=tensor_util.make_tensor_proto(np.float32([1, 2])), metadata=scalars_metadata()
            )
            bare = Summary.Value(tag="bare", tensor=tensor_util.make_tensor_proto(np.float32(1)))
            other = Summary.Value(
                tag="other",
                tensor=tensor_util.make_tensor_proto(np.float32(1)),
                metadata=SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="pr")),
            )
            fw.add_summary(Summary(value=[pair, bare, other]), i)

    path = torch_file(tmp_path, write)
    curves, _ = read_all(path)
    got = ours(curves)
    assert_same(got, reference(path))
    assert len(got) == 11 and all(len(points) == 5 for points in got.values())
    assert curves.records == 5 * 11 and curves.skipped == 0
    assert got["typed/int64"][0][0] == 2**40 and got["typed/half"][0][0] == -0.5


def test_tensorboard_writer_matches(tmp_path):
    writer = TensorBoardWriter(str(tmp_path))
    for i in range(20):
        writer.add_scalar("acc", i / 20, step=i * 10)
        writer.add_scalar("weird", [math.nan, math.inf, -0.0][i % 3], step=i)
    writer.close()
    path = event_file(tmp_path)
    curves, _ = read_all(path)
    assert_same(ours(curves), reference(path))
    assert len(curves.series["acc"]) == 20


def test_histograms_images_text_are_skipped(tmp_path):
    def write(w):
        for i in range(4):
            w.add_histogram("weights", np.arange(10.0) * i, i)
            w.add_scalar("loss", 1.0 / (i + 1), i)
            w.add_text("note", f"step {i}", i)
            w.add_image("sample", np.full((3, 4, 4), i / 4), i)
            w.add_scalar("acc", i / 4, i, new_style=True)

    path = torch_file(tmp_path, write)
    curves, consumed = read_all(path)
    assert consumed == path.stat().st_size
    assert sorted(curves.series) == ["acc", "loss"]
    assert (curves.records, curves.skipped) == (8, 0)
    assert_same(ours(curves), reference(path))


@pytest.fixture
def small_file(tmp_path) -> Path:
    """A real file of a dozen scalar events of both styles."""

    def write(w):
        for i in range(6):
            w.add_scalar("loss", 1.0 / (i + 1), i)
            w.add_scalar("acc", math.nan if i == 3 else i / 6, i, new_style=True)

    return torch_file(tmp_path / "run", write)


def record_starts(data: bytes) -> list[int]:
    """The byte offset of each record in a well-formed file."""
    starts, pos = [], 0
    while pos < len(data):
        starts.append(pos)
        pos += 16 + struct.unpack_from("<Q", data, pos)[0]
    return starts


def test_incremental_read_at_every_cut(small_file, tmp_path):
    """Cut a real file at every byte: the first read stops before the torn record, the second
    read takes the rest, and together they equal one read of the whole."""
    data = small_file.read_bytes()
    starts = record_starts(data)
    want = reference(small_file)
    growing = tmp_path / "events.out.tfevents.1.growing"
    for cut in range(len(data) + 1):
        growing.write_bytes(data[:cut])
        reader, curves = TfEventsReader(growing), Curves()
        first = reader.read_new(curves)
        assert first == max(s for s in [*starts, len(data)] if s <= cut), cut
        with growing.open("ab") as f:
            f.write(data[cut:])
        assert reader.read_new(curves) == len(data) - first
        assert reader.read_new(curves) == 0
        assert_same(ours(curves), want)
        assert curves.records == 12 and curves.skipped == 0


def test_records_longer_than_a_chunk(small_file, monkeypatch):
    monkeypatch.setattr(tfevents, "CHUNK", 20)  # smaller than any record
    curves, consumed = read_all(small_file)
    assert consumed == small_file.stat().st_size
    assert_same(ours(curves), reference(small_file))


def test_new_writer_appends_to_a_file_being_read(tmp_path):
    """Two flushes of one live writer: the second read gets exactly the second batch."""
    writer = SummaryWriter(str(tmp_path), flush_secs=10**6)
    reader, curves = TfEventsReader(event_file(tmp_path)), Curves()
    for i in range(3):
        writer.add_scalar("loss", float(i), i)
    writer.flush()
    assert reader.read_new(curves) > 0 and len(curves.series["loss"]) == 3
    for i in range(3, 7):
        writer.add_scalar("loss", float(i), i)
    writer.close()
    assert reader.read_new(curves) > 0
    assert curves.series["loss"].values().tolist() == [0, 1, 2, 3, 4, 5, 6]
    assert_same(ours(curves), reference(reader.path))


def test_corrupt_length_crc_stops_without_raising(small_file, tmp_path):
    data = bytearray(small_file.read_bytes())
    third = record_starts(bytes(data))[3]
    data[third] ^= 0x01  # the length no longer matches its CRC
    broken = tmp_path / "events.out.tfevents.2.broken"
    broken.write_bytes(bytes(data))
    reader, curves = TfEventsReader(broken), Curves()
    assert reader.read_new(curves) == third
    assert curves.skipped == 1 and curves.records == 2  # file_version, then two scalar events
    assert reader.read_new(curves) == 0 and curves.skipped == 1  # counted once, not re-read
    assert not is_tfevents(_renamed(broken, tmp_path, offset=third))


def _renamed(path: Path, tmp_path: Path, offset: int = 0) -> Path:
    """A copy of path[offset:] under a name that says nothing."""
    copy = tmp_path / f"copy{offset}.bin"
    copy.write_bytes(path.read_bytes()[offset:])
    return copy


def test_malformed_record_is_skipped_and_reading_goes_on(small_file, tmp_path):
    data = small_file.read_bytes()
    third = record_starts(data)[3]
    junk = b"\x2a\xff\xff\xff"  # a summary announcing more bytes than the record has
    length = struct.pack("<Q", len(junk))
    frame = length + struct.pack("<I", masked_crc32c(length)) + junk + b"\0\0\0\0"
    spliced = tmp_path / "events.out.tfevents.3.spliced"
    spliced.write_bytes(data[:third] + frame + data[third:])
    curves, consumed = read_all(spliced)
    assert consumed == len(data) + len(frame)
    assert curves.skipped == 1 and curves.records == 12
    assert_same(ours(curves), reference(small_file))


def test_empty_file_and_file_version_only(tmp_path):
    empty = tmp_path / "events.out.tfevents.0.empty"
    empty.touch()
    curves, consumed = read_all(empty)
    assert consumed == 0 and not curves.series and curves.skipped == 0

    path = torch_file(tmp_path / "nothing", lambda w: None)
    curves, consumed = read_all(path)
    assert consumed == path.stat().st_size > 0
    assert not curves.series and (curves.records, curves.skipped) == (0, 0)


def test_missing_file_reads_nothing(tmp_path):
    assert TfEventsReader(tmp_path / "events.out.tfevents.gone").read_new(Curves()) == 0


def test_shrunk_file_is_read_again_from_the_start(small_file, tmp_path):
    live = tmp_path / "events.out.tfevents.4.live"
    shutil.copy(small_file, live)
    reader = TfEventsReader(live)
    reader.read_new(Curves())
    data = small_file.read_bytes()
    live.write_bytes(data[: record_starts(data)[5]])  # replaced by a shorter file
    curves = Curves()  # the caller resets its curves
    assert reader.read_new(curves) == record_starts(data)[5]
    assert curves.records == 4


def test_is_tfevents(small_file, tmp_path):
    assert is_tfevents(small_file)
    assert is_tfevents(_renamed(small_file, tmp_path))  # by its first record's length CRC
    text = tmp_path / "log.txt"
    text.write_text("epoch 1 loss 0.5\n" * 3)
    assert not is_tfevents(text)
    assert not is_tfevents(tmp_path / "missing")
    assert TfEventsReader(small_file).kind == "tfevents"
