"""Every notebook in notebooks/ runs without an error (tiny settings, temporary directories), and
every committed notebook has its outputs stripped."""

import json
from pathlib import Path

import nbformat
import pytest
import yaml
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

from mta.cli import ablate

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))
# Keys of the tiny test config that the notebooks and the sweep set themselves.
OWN_KEYS = ("train.steps=", "checkpoint.every=", "eval.every=", "log.")
STEPS = 3
# The variants of the tiny sweep: the two models of attention_maps.ipynb, so that the notebook
# finds their compiled programs in the session's compilation cache.
MTA = ["model.attention.kq_pre.enabled=true", "model.attention.kq_pre.c_q=2"]
MTA += ["model.attention.kq_pre.c_k=9", "model.attention.head_pre=linear"]


@pytest.fixture(scope="module")
def run_overrides(tiny_overrides):
    """The tiny model, data and eval settings shared by the sweep and the notebooks (one layer:
    compiling is most of the time these take)."""
    kept = [o for o in tiny_overrides if not o.startswith(OWN_KEYS)]
    return [*kept, "model.num_layers=1", "log.tensorboard=false"]


@pytest.fixture(scope="module")
def sweep_root(tmp_path_factory, run_overrides):
    """(sweep file, root) of a tiny real sweep: 2 variants x 1 seed of STEPS steps."""
    tmp = tmp_path_factory.mktemp("sweep")
    values = [{"name": "none"}, {"name": "mta", "overrides": MTA}]
    sweep = {
        "base": "configs/toy/block_baseline_cpu.yaml",
        "seeds": [0],
        "common": [*run_overrides, f"train.steps={STEPS}", "eval.every=0"],
        "axes": [{"name": "kq", "values": values}],
        "metric": "eval/exact_match_error",
    }
    path, root = tmp / "sweep.yaml", tmp / "root"
    path.write_text(yaml.safe_dump(sweep, sort_keys=False))
    assert ablate.main(["--sweep", str(path), "--root", str(root), "--parallel", "2"]) == 0
    return path, root


def execute(path: Path, env: dict, monkeypatch) -> nbformat.NotebookNode:
    """Runs a notebook in a fresh kernel (cwd notebooks/, `env` added to the environment) and
    returns it with its outputs; fails the test with the cell's error if a cell raises."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    notebook = nbformat.read(path, as_version=4)
    client = NotebookClient(
        notebook, timeout=300, kernel_name="python3", resources={"metadata": {"path": path.parent}}
    )
    try:
        client.execute()
    except CellExecutionError as err:
        pytest.fail(f"{path.name} failed:\n{err}")
    return notebook


def outputs(notebook, kind: str) -> list[str]:
    """Every output of the executed notebook of a MIME type ('text/markdown', 'image/png'), or
    the stream text ('stream')."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "stream" and output.output_type == "stream":
                found.append(output.text)
            elif kind in output.get("data", {}):
                found.append(output.data[kind])
    return found


def dirty_cells(notebook: dict) -> list[int]:
    """Indices of the code cells that have outputs or an execution count."""
    return [
        i
        for i, cell in enumerate(notebook["cells"])
        if cell["cell_type"] == "code" and (cell["outputs"] or cell["execution_count"] is not None)
    ]


def test_notebooks_exist():
    names = {path.name for path in NOTEBOOKS}
    assert {"attention_maps.ipynb", "ablation_results.ipynb"} <= names


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_outputs_are_stripped(path):
    notebook = json.loads(path.read_text())
    dirty = dirty_cells(notebook)
    assert not dirty, (
        f"{path.name}: code cells {dirty} have outputs or an execution count; clear them "
        "(Jupyter: Edit > Clear Outputs of All Cells) before committing"
    )
    first = next(cell for cell in notebook["cells"] if cell["cell_type"] == "code")
    assert "parameters" in first["metadata"].get("tags", []), "first code cell: tag `parameters`"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_notebook_runs(path, run_overrides, tmp_path, monkeypatch, request):
    """Runs with the notebooks' variables set to the tiny settings. A notebook that reads an
    ablation root gets the tiny sweep's (in one process, ablation_results.ipynb runs first, so
    attention_maps.ipynb finds its models' programs compiled by the sweep)."""
    env = {
        "MTA_NOTEBOOK_STEPS": str(STEPS),
        "MTA_NOTEBOOK_WORKDIR": str(tmp_path / "runs"),
        "MTA_NOTEBOOK_OVERRIDES": " ".join(run_overrides),
    }
    if "MTA_ABLATION_ROOT" in path.read_text():
        sweep, root = request.getfixturevalue("sweep_root")
        env |= {"MTA_ABLATION_ROOT": str(root), "MTA_ABLATION_SWEEP": str(sweep)}
    notebook = execute(path, env, monkeypatch)
    assert dirty_cells(notebook), "the stripped-outputs check would not see these outputs"
    assert len(outputs(notebook, "image/png")) >= 2
    if path.name == "attention_maps.ipynb":
        text = "".join(outputs(notebook, "stream"))
        assert f"baseline: trained to step {STEPS}" in text and "MTA predicts (teacher" in text
        assert (tmp_path / "runs" / "MTA" / "checkpoints" / str(STEPS)).is_dir()
    if path.name == "ablation_results.ipynb":
        tables = "".join(outputs(notebook, "text/markdown"))
        assert "| none | none | " in tables and "| mta | mta | " in tables and "1/1 |" in tables


def test_ablation_notebook_without_runs_says_how_to_make_them(tmp_path, monkeypatch):
    sweep = ROOT / "configs" / "sweeps" / "pre_vs_post.yaml"
    env = {"MTA_ABLATION_ROOT": str(tmp_path / "none"), "MTA_ABLATION_SWEEP": str(sweep)}
    notebook = execute(ROOT / "notebooks" / "ablation_results.ipynb", env, monkeypatch)
    text = "".join(outputs(notebook, "text/markdown"))
    assert "No runs under" in text
    assert f"python scripts/ablate.py --sweep {sweep} --root {tmp_path / 'none'}" in text
    assert not outputs(notebook, "image/png")
