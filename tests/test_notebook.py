from pathlib import Path

import nbformat
from nbclient import NotebookClient

from tiny_systems import save_cli_checkpoint

from htr_lightning.data.synthetic import SyntheticLines
from htr_lightning.models import TeacherSystem

NOTEBOOK = Path(__file__).resolve().parents[1] / "examples" / "quickstart.ipynb"


def test_quickstart_notebook_runs(tmp_path, monkeypatch, tiny_teacher_kwargs):
    model = TeacherSystem(charset=SyntheticLines.charset, **tiny_teacher_kwargs)
    ckpt = save_cli_checkpoint(model, tmp_path / "tiny.ckpt")
    monkeypatch.setenv("HTR_CKPT", str(ckpt))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=300, kernel_name="python3",
                   resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = ["".join(o.get("text", "") for o in cell.outputs)
               for cell in notebook.cells if cell.cell_type == "code"]
    assert "TeacherSystem" in outputs[0]
    assert "prediction:" in outputs[1]
    assert outputs[2].count("box (") == 5  # the five lines of the page, one row each
