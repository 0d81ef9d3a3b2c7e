"""The HTML run report: self-contained, shows the metrics, every image decodes and loads in a real browser."""

import base64
import json
import re
import shutil
import subprocess

import pytest
import torch
import yaml

import spikeformer
from spikeformer import SpikeformerError
from spikeformer.analysis.report import write_report
from spikeformer.convert import save_weights

torch.set_num_threads(1)
NAME = "spikformer_digits_1_64"
FINAL = {"top1": 87.5, "top5": 99.44, "loss": 0.6123, "model": NAME, "data": "digits"}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    (run / "config.yaml").write_text(yaml.safe_dump({"model": NAME, "data": "digits", "epochs": 3, "lr": 3e-3}))
    rows = [{"epoch": e, "train_loss": 2.0 / e, "train_top1": 30.0 * e, "test_loss": 2.2 / e, "test_top1": 29.0 * e,
             "test_top5": 60.0 + 10 * e, "lr": 3e-3 / e} for e in (1, 2, 3)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (run / "final.json").write_text(json.dumps(FINAL))
    torch.manual_seed(0)
    save_weights(spikeformer.create_model(NAME), run / "best.safetensors", {"model": NAME})
    return run


@pytest.fixture(scope="module")
def report(run_dir):
    return write_report(run_dir, samples=4)


def test_report_is_self_contained_with_metrics_energy_and_images(run_dir, report):
    assert report == run_dir / "report.html"
    page = report.read_text()
    for key in ("top1", "top5", "loss"):
        assert re.search(rf'id="metric-{key}">{FINAL[key]:.4g}<', page)
    assert "patch_embed.proj_conv" in page and 'id="energy-layers"' in page  # the energy table
    assert "lr: 0.003" in page  # the config
    srcs = re.findall(r'<img alt="([^"]+)" src="([^"]+)"', page)
    assert [a for a, _ in srcs] == ["training curves", "firing rates", "spike raster", "spike activation maps"]
    for _, src in srcs:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert "http://" not in page and "https://" not in page and "file:" not in page  # nothing external


def test_report_errors_and_cli(tmp_path, run_dir):
    from spikeformer.cli import main

    with pytest.raises(SpikeformerError, match="no config.yaml"):
        write_report(tmp_path)
    assert main(["report", str(run_dir), "--samples", "2", "--convention", "spikformer"]) == 0
    assert "spikformer</code>" in (run_dir / "report.html").read_text()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium is not installed (Debian: apt-get install -y chromium)")
def test_report_renders_in_headless_chromium(report, tmp_path):
    # A copy of the page with a probe that, after load, writes how many images decoded into the DOM.
    probe = ("<script>window.addEventListener('load',()=>{const im=[...document.images];"
             "const ok=im.filter(i=>i.complete&&i.naturalWidth>0).length;"
             "document.body.insertAdjacentHTML('beforeend',`<p id=probe>images ${ok}/${im.length}</p>`);});</script>")
    page = report.read_text().replace("</body>", probe + "</body>")
    probe_page = tmp_path / "probe.html"
    probe_page.write_text(page)
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
           "--run-all-compositor-stages-before-draw", "--virtual-time-budget=10000", f"--user-data-dir={tmp_path}/p",
           "--dump-dom", probe_page.as_uri()]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    m = re.search(r'<p id="probe">images (\d+)/(\d+)</p>', dom)
    assert m, f"the page did not finish loading in Chromium; DOM starts {dom[:300]!r}"
    assert m.group(1) == m.group(2) == "4"
    assert "87.5" in dom and "99.44" in dom and "0.6123" in dom
