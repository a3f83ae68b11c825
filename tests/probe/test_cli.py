import json
import subprocess
import sys

import numpy as np
import pytest

import dynalens
from dynalens.cli import main

from .conftest import train


def test_info_text_and_json(tmp_path, mlp, data, capsys):
    x, y = data
    with dynalens.Recorder(mlp, tmp_path / "s", sites="fc*", every=2, probe=(x, y)) as rec:
        train(mlp, rec, x, y, steps=3)
    assert main(["info", str(tmp_path / "s")]) == 0
    text = capsys.readouterr().out
    assert "run-000" in text and "probe_activations" in text and "(40, 8)" in text
    assert main(["info", str(tmp_path / "s"), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["steps"] == [0, 2] and info["scalars"] == ["loss"]
    assert info["bytes"] == sum(a["bytes"] for a in info["arrays"]) > 0


def test_info_on_a_non_store_exits_2_with_a_message(tmp_path, capsys):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("")
    assert main(["info", str(tmp_path / "x")]) == 2
    assert "not a dynalens store" in capsys.readouterr().err


def test_console_script_is_installed(tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "dynalens.cli", "--help"], capture_output=True, text=True
    )
    assert out.returncode == 0 and "info" in out.stdout and "demo" in out.stdout


@pytest.mark.slow
def test_demo_writes_a_report(tmp_path, capsys):
    from dynalens.demo import run_demo

    report = run_demo(out=tmp_path / "demo", epochs=2, records=3)
    assert "report written to" in capsys.readouterr().out
    html = report.read_text()
    assert "Information plane" in html or "information plane" in html
    assert html.count("plotly-graph-div") >= 6  # 2 networks x (2 planes + training)
    store = dynalens.open_store(tmp_path / "demo" / "store.zarr", "relu")
    assert store.sites == ["relu1", "relu2", "relu3", "relu4", "relu5"]
    assert store.activations("relu1", 0).shape == (4096, 10)
    assert np.isfinite(store.scalars()["loss"]).all()
    cached = [p.name for p in (tmp_path / "demo" / "store.zarr" / "relu" / "results").iterdir()]
    assert any(name.startswith("information_plane-noisy") for name in cached)


def test_import_dynalens_stays_light():
    code = (
        "import sys, dynalens, dynalens.probe, dynalens.estimators, dynalens.dynamics, "
        "dynalens.kernels; heavy = [m for m in ('triton', 'transformer_lens', 'plotly', "
        "'pandas', 'lightning', 'transformers') if m in sys.modules]; print(heavy)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
