"""`pipeline.export.FORMATS`, the table of export formats: importing it imports no exporter, each line loads the
exporter its format's module defines, and `per_segment` is the rule that refuses pseudo-class outputs.
(`tests/jobs/test_export.py` checks that the command line offers the table and applies its `filters` and
`sharded`.)"""

import importlib
import subprocess
import sys
from pathlib import Path

import pytest

from diffseg.visualize import label_png
from pipeline.clustering.output import CLASS_SCHEMA, ClassRow
from pipeline.export import FORMATS
from pipeline.export.annotations import ExportError, Filters
from pipeline.export.rows import settings
from pipeline.store.dataset import OutputDataset
from pipeline.store.location import Location
from synthetic.photos import photo
from tests.pipeline.export.data import blocks
from tests.pipeline.labeling.data import encoded

ROOT = Path(__file__).resolve().parents[3]


def test_formats_have_distinct_names_and_one_line_descriptions():
    assert len({f.name for f in FORMATS}) == len(FORMATS)
    assert all(f.description and "\n" not in f.description for f in FORMATS)


def test_importing_the_table_imports_no_exporter():
    # A fresh interpreter: this one has imported the exporters already. The command's --help depends on it.
    code = ("import sys, pipeline.export; print(sorted(m for m in sys.modules "
            "if m in ('torch', 'pyarrow', 'PIL') or m.startswith('pipeline.export.')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["['pipeline.export.formats']"]


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: f.name)
def test_each_format_loads_the_exporter_its_module_defines(fmt):
    exporter = fmt.load()
    module = importlib.import_module(f"pipeline.export.{fmt.name}")
    assert exporter.__module__ == module.__name__ and getattr(module, exporter.__name__) is exporter
    assert exporter.columns and all(callable(getattr(exporter, step)) for step in ("convert", "write", "close"))


def pseudo_class_output(folder: Path) -> Location:
    """A pseudo-class output (`jobs/cluster.py`) of one image: semantic masks, no segments."""
    (folder / "p.png").write_bytes(encoded(photo(24, 16, seed=1)))
    dataset = OutputDataset(Location(str(folder / "classes")), CLASS_SCHEMA)
    dataset.claim({"kind": "pseudo-classes", "config": {}, "columns": {"image": None, "id": None}})
    dataset.write("part-00000", [ClassRow("p.png", str(folder / "p.png"), 24, 16, label_png(blocks(16, 24, 3)), 3,
                                          [0, 1, 2], [0.1, 0.1, 0.1])], {})
    return dataset.location


def test_per_segment_formats_refuse_pseudo_class_outputs_and_the_others_take_them(tmp_path):
    classes = pseudo_class_output(tmp_path)
    for fmt in FORMATS:
        if fmt.per_segment:
            with pytest.raises(ExportError, match="holds pseudo-class masks"):
                settings(classes, tmp_path / fmt.name, Filters(), per_segment=fmt.per_segment)
        else:
            assert settings(classes, tmp_path / fmt.name, Filters(), per_segment=fmt.per_segment).rows == 1
