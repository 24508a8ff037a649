"""RecBole's dataset download, as RecBole does it, from a local HTTP server on 127.0.0.1: the CLI and
the Python API download a missing dataset; a failed download (server down, not a zip) leaves
nothing behind and says what to do offline."""

from __future__ import annotations

import http.server
import sys
import threading
import zipfile
from pathlib import Path

import pytest
import recbole

from recbole_mamba.data_check import DatasetUnavailable, ensure_dataset

from conftest import run_recbole_main, tiny_config, unused_port

ML100K = Path(recbole.__file__).resolve().parent / "dataset_example" / "ml-100k" / "ml-100k.inter"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Serves ``mini.zip`` (RecBole's layout: ``mini.inter`` at the top) and ``broken.zip``."""
    root = tmp_path_factory.mktemp("www")
    lines = ML100K.read_text().splitlines(keepends=True)
    with zipfile.ZipFile(root / "mini.zip", "w") as z:
        z.writestr("mini.inter", "".join(lines[:20001]))
    (root / "broken.zip").write_bytes(b"this is not a zip archive\n" * 10)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *a, **kw):
            super().__init__(*a, directory=str(root), **kw)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def test_download_then_present(server, tmp_path):
    target = tmp_path / "dataset" / "mini"
    ensure_dataset("mini", str(target), f"{server}/mini.zip")
    assert (target / "mini.inter").is_file()
    assert sum(1 for _ in open(target / "mini.inter")) == 20001
    assert [p.name for p in (tmp_path / "dataset").iterdir()] == ["mini"]  # no temporary folder left
    ensure_dataset("mini", str(target), "http://127.0.0.1:1/never-fetched.zip")  # present: no download


@pytest.mark.parametrize("what", ["server down", "not a zip"])
def test_failed_download_leaves_nothing_and_says_what_to_do(server, tmp_path, what):
    url = f"http://127.0.0.1:{unused_port()}/ml-1m.zip" if what == "server down" else f"{server}/broken.zip"
    target = tmp_path / "dataset" / "ml-1m"
    with pytest.raises(DatasetUnavailable) as err:
        ensure_dataset("ml-1m", str(target), url)
    text = str(err.value)
    assert f"the download from {url} failed" in text
    assert "python -m dataset_prep.movielens" in text  # the offline route for a set we convert
    assert not target.exists()
    assert not (tmp_path / "dataset").exists() or list((tmp_path / "dataset").iterdir()) == []


def test_unknown_dataset_is_not_downloaded(tmp_path):
    with pytest.raises(DatasetUnavailable, match="does not exist"):
        ensure_dataset("no-such-set", str(tmp_path / "no-such-set"))


def test_python_api_downloads_through_recbole(server, in_tmp):
    """RecBole's own create_dataset, for a missing folder, downloads via the same path."""
    from recbole.config import Config
    from recbole.data import create_dataset

    cfg = Config(model="MambaRec", dataset="mini", config_dict=tiny_config(
        in_tmp, data_path=str(in_tmp / "dataset"), dataset_url=f"{server}/mini.zip",
        user_inter_num_interval="[5,inf)"))
    ds = create_dataset(cfg)
    assert ds.inter_num > 10_000
    assert (in_tmp / "dataset" / "mini" / "mini.inter").is_file()


def test_python_api_offline_message(in_tmp):
    from recbole.config import Config
    from recbole.data import create_dataset

    cfg = Config(model="MambaRec", dataset="mini", config_dict=tiny_config(
        in_tmp, data_path=str(in_tmp / "dataset"), dataset_url=f"http://127.0.0.1:{unused_port()}/mini.zip"))
    with pytest.raises(DatasetUnavailable, match="download from .* failed"):
        create_dataset(cfg)
    assert not (in_tmp / "dataset" / "mini").exists()


def test_cli_downloads_and_trains(server, in_tmp, monkeypatch):
    (in_tmp / "mini.yaml").write_text("load_col:\n  inter: [user_id, item_id, timestamp]\n")
    args = ["--model=MambaRec", "--dataset=mini", f"--data_path={in_tmp / 'dataset'}",
            f"--config_files={in_tmp / 'mini.yaml'}",
            f"--dataset_url={server}/mini.zip", "--epochs=1", "--hidden_size=16", "--d_state=8",
            "--MAX_ITEM_LIST_LENGTH=10", f"--checkpoint_dir={in_tmp / 'saved'}", "--show_progress=False",
            "--user_inter_num_interval=[5,inf)"]
    monkeypatch.setattr(sys, "argv", ["run_recbole.py", *args])
    result = run_recbole_main()(args)
    assert result["test_result"]["ndcg@10"] >= 0
    assert (in_tmp / "dataset" / "mini" / "mini.inter").is_file()
