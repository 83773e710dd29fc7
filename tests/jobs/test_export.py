"""`jobs/export.py` on real labeling outputs: masks and overlays as PNG files, ids as safe paths."""

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageOps

from diffseg import DiffSegConfig
from diffseg.preprocess import center_square
from diffseg.visualize import colorize
from pipeline.labeling.output import OutputDataset, decode_mask
from pipeline.labeling.sources import inventory
from pipeline.labeling.storage import Location
from pipeline.labeling.worker import LabelWorker, Placement, WorkerSettings
from synthetic.photos import photo
from tests.pipeline.labeling.data import encoded, good_images, parquet_bytes, read_output, write_files

ROOT = Path(__file__).resolve().parents[2]
EXPORT, LABEL = str(ROOT / "jobs" / "export.py"), str(ROOT / "jobs" / "label.py")
RESOLUTION = 128
FAST = ["--model", "tiny", "--resolution", str(RESOLUTION), "--num-actors", "1", "--cpus-per-actor", "1",
        "--no-progress"]


def export(output: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, EXPORT, str(output), "--out", str(out)], capture_output=True, text=True,
                          timeout=300)


def label(source: Path, output: Path, *args: str) -> None:
    """Label `source` with the real job on the session's Ray cluster."""
    result = subprocess.run([sys.executable, LABEL, "--input", str(source), "--output", str(output), *FAST, *args],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def label_in_process(source: Path, output: Path, config: DiffSegConfig) -> None:
    """Label `source` as the job does, without Ray: the manifest with the job's settings, then every shard."""
    source_location, output_location = Location(str(source)), Location(str(output))
    OutputDataset(output_location).claim({"config": config.to_dict(), "columns": {"image": None, "id": None}})
    worker = LabelWorker(WorkerSettings(model="tiny", config=config), Placement(source_location, output_location))
    for shard in inventory(source_location).shards:
        worker.process(shard, run_id="r")


def rotated_jpeg(width: int, height: int) -> bytes:
    """A JPEG stored `width x height` whose EXIF says to show it turned 90 degrees clockwise."""
    exif = Image.Exif()
    exif[0x0112] = 6
    return encoded(photo(width, height, seed=7), "JPEG", exif=exif.tobytes())


def as_labeled(data: bytes, crop: bool = False) -> Image.Image:
    """The photo as the job labels it: EXIF orientation applied; with `crop`, the central square resized to
    the job's resolution."""
    image = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    if not crop:
        return image
    left, top, side = center_square(*image.size)
    return image.crop((left, top, left + side, top + side)).resize((RESOLUTION, RESOLUTION),
                                                                   Image.Resampling.BILINEAR)


def assert_photo_under_mask(overlay_file: Path, photo_shown: Image.Image) -> None:
    """The overlay is the photo and the colored mask next to it blended half and half (within the blend's
    rounding); the colored mask alone is far from that."""
    mask = decode_mask(Path(str(overlay_file).removesuffix(".overlay.png") + ".mask.png").read_bytes())
    colors = np.asarray(colorize(mask), dtype=float)
    expected = (np.asarray(photo_shown, dtype=float) + colors) / 2
    shown = np.asarray(Image.open(overlay_file), dtype=float)
    assert shown.shape == expected.shape
    assert np.abs(shown - expected).max() <= 1, f"{overlay_file.name} does not show its photo"


def tar_of(members: list[tuple[str, bytes]]) -> bytes:
    """A tar holding `members` as given: names are not cleaned, and may repeat."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as archive:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def inside(folder: Path, path: Path) -> bool:
    return os.path.commonpath([folder.resolve(), path.resolve()]) == str(folder.resolve())


def written_outside(tmp_path: Path, out: Path) -> list[Path]:
    """Files under `tmp_path` that are neither input, job output nor under `out`."""
    return [p for p in tmp_path.rglob("*") if p.is_file() and not inside(out, p)
            and not inside(tmp_path / "in", p) and not inside(tmp_path / "out", p)]


def test_masks_are_exported_as_label_pngs_and_overlays(tmp_path):
    write_files(tmp_path / "in" / "sub", good_images(2))
    write_files(tmp_path / "in", {"broken.png": b"nope"})
    label_in_process(tmp_path / "in", tmp_path / "out", DiffSegConfig(resolution=RESOLUTION))
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip().splitlines()[-1] == \
        f"2 mask(s) written to {tmp_path / 'png'} as NAME.mask.png and NAME.overlay.png"
    assert sorted(p.relative_to(tmp_path / "png").as_posix() for p in (tmp_path / "png").rglob("*.png")) == [
        "sub/img-000.png.mask.png", "sub/img-000.png.overlay.png",
        "sub/img-001.jpg.mask.png", "sub/img-001.jpg.overlay.png"]
    for name in ("img-000.png", "img-001.jpg"):
        assert_photo_under_mask(tmp_path / "png" / "sub" / f"{name}.overlay.png",
                                as_labeled((tmp_path / "in" / "sub" / name).read_bytes()))


def test_rows_whose_photo_is_gone_are_exported_with_the_colored_mask_and_counted(tmp_path):
    write_files(tmp_path / "in", good_images(3))
    label_in_process(tmp_path / "in", tmp_path / "out", DiffSegConfig(resolution=RESOLUTION))
    (tmp_path / "in" / "img-000.png").unlink()
    (tmp_path / "in" / "img-001.jpg").write_bytes(b"garbage")
    photo(50, 50).save(tmp_path / "in" / "img-002.png")  # replaced by another picture since it was labeled
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0, result.stderr
    assert "3 mask(s) written" in result.stderr and "3 overlay(s) without photo: source unreadable" in result.stderr
    for name in good_images(3):
        mask = decode_mask((tmp_path / "png" / f"{name}.mask.png").read_bytes())
        overlay = np.asarray(Image.open(tmp_path / "png" / f"{name}.overlay.png"))
        assert np.array_equal(overlay, np.asarray(colorize(mask)))


def test_an_unreadable_output_is_one_line_and_exit_two(tmp_path):
    result = export(tmp_path / "missing", tmp_path / "png")
    assert result.returncode == 2 and result.stderr.startswith("error:")
    assert len(result.stderr.strip().splitlines()) == 1


@pytest.mark.integration
def test_tar_member_names_never_lead_outside_the_export_folder(tmp_path, ray_cluster):
    names = ["../../../escape.png", "/abs.png", "sub/../../../up.png", "back\\..\\..\\slash.png",
             "line\nbreak.png", "x" * 300 + ".png", "dup.png", "dup.png", "DUP.png"]
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard.tar").write_bytes(
        tar_of([(name, encoded(photo(64, 48, seed=i))) for i, name in enumerate(names)]))
    label(tmp_path / "in", tmp_path / "out")
    out = tmp_path / "deep" / "er" / "png"  # a plain join of '../../../escape.png' would land in tmp_path
    result = export(tmp_path / "out", out)
    assert result.returncode == 0, result.stderr
    rows = read_output(str(tmp_path / "out"))
    assert len(rows) == len(names) and all(row["status"] == "ok" for row in rows)
    assert len(list(out.rglob("*.mask.png"))) == len(list(out.rglob("*.overlay.png"))) == len(rows)
    assert written_outside(tmp_path, out) == [] and not list(tmp_path.parent.glob("escape.png*"))
    assert (out / "shard.tar" / "%2E%2E" / "%2E%2E" / "%2E%2E" / "escape.png.mask.png").is_file()
    assert (out / "shard.tar" / "%" / "abs.png.mask.png").is_file()
    assert "2 id(s) written as NAME~N so as not to overwrite another id's files" in result.stderr.splitlines()[-1]


@pytest.mark.integration
def test_parquet_ids_never_lead_outside_the_export_folder(tmp_path, ray_cluster):
    ids = [str(tmp_path / "absolute.png"), "../../../escape.png", "a\\..\\..\\b", "nul\x00byte", "<b>x</b>", "dup",
           "dup"]
    (tmp_path / "in").mkdir()
    table = pa.table({"key": ids, "jpg": pa.array([encoded(photo(48, 64, seed=i)) for i in range(len(ids))])})
    pq.write_table(table, tmp_path / "in" / "data.parquet")
    label(tmp_path / "in", tmp_path / "out")
    out = tmp_path / "deep" / "er" / "png"
    result = export(tmp_path / "out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(row["image_id"] for row in read_output(str(tmp_path / "out"))) == sorted(ids)
    assert len(list(out.rglob("*.mask.png"))) == len(list(out.rglob("*.overlay.png"))) == len(ids)
    assert written_outside(tmp_path, out) == []
    assert (out / "dup.mask.png").is_file() and (out / "dup~2.mask.png").is_file()
    assert "1 id(s) written as NAME~N" in result.stderr.splitlines()[-1]


@pytest.mark.integration
def test_overlays_of_tar_members_show_their_photo(tmp_path, ray_cluster):
    images = {**good_images(3), "rotated.jpg": rotated_jpeg(96, 64)}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "shard.tar").write_bytes(tar_of(list(images.items())))
    label(tmp_path / "in", tmp_path / "out")
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0 and "without photo" not in result.stderr, result.stderr
    for name, data in images.items():
        assert_photo_under_mask(tmp_path / "png" / "shard.tar" / f"{name}.overlay.png", as_labeled(data))


@pytest.mark.integration
def test_overlays_of_parquet_rows_show_their_photo(tmp_path, ray_cluster):
    images = {**good_images(3), "rotated.jpg": rotated_jpeg(96, 64)}
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "data.parquet").write_bytes(parquet_bytes(images, "datasets"))
    label(tmp_path / "in", tmp_path / "out")
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0 and "without photo" not in result.stderr, result.stderr
    assert sorted(p.name for p in (tmp_path / "png").iterdir()) == sorted(
        f"data.parquet%23{row}.{kind}.png" for row in range(len(images)) for kind in ("mask", "overlay"))
    for row, data in enumerate(images.values()):  # ids are FILE#ROW: '#' is escaped
        assert_photo_under_mask(tmp_path / "png" / f"data.parquet%23{row}.overlay.png", as_labeled(data))


@pytest.mark.integration
def test_center_crop_overlays_show_the_cropped_photo(tmp_path, ray_cluster):
    images = {**good_images(3), "rotated.jpg": rotated_jpeg(96, 64)}  # 96x64, 64x64, 80x120, shown 64x96
    write_files(tmp_path / "in", images)
    label(tmp_path / "in", tmp_path / "out", "--crop", "center")
    result = export(tmp_path / "out", tmp_path / "png")
    assert result.returncode == 0 and "without photo" not in result.stderr, result.stderr
    for name, data in images.items():
        overlay = tmp_path / "png" / f"{name}.overlay.png"
        assert Image.open(overlay).size == (RESOLUTION, RESOLUTION)
        assert_photo_under_mask(overlay, as_labeled(data, crop=True))
