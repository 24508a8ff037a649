"""Datasets before RecBole starts: RecBole's download for its hosted datasets, and a clear error
when the atomic files are neither on disk nor downloadable.

A dataset RecBole hosts (``recbole/properties/dataset/url.yaml``: ml-1m, amazon-*, yelp, ...) whose
folder is missing is downloaded as RecBole does (same URL, same size prompt above 1 GB, same
extraction and renaming of the atomic files), into a temporary folder renamed into place at the
end, so a failed or interrupted download leaves nothing RecBole would take for a dataset.
``dataset_url`` in the config points at another copy of the zip (a mirror). When the download
fails (no network, an unknown name) the message gives the reason and, where we ship one, the
converter command that makes the files offline. :func:`install` makes RecBole's own
``Dataset._download`` (the Python API) do the same.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

PREP_COMMANDS = {
    "ml-1m": "python -m dataset_prep.movielens --input /path/to/ml-1m --output-dir dataset/ml-1m"
             "   (a folder with ratings.dat, or a one-user-per-line sequence file; see README, 'Datasets')",
    "amazon-toys-s3": "python -m dataset_prep.sequences --input /path/to/Toys_and_Games.txt "
                      "--output-dir dataset/amazon-toys-s3   (the S3-Rec file)",
    "amazon-sports-s3": "python -m dataset_prep.sequences --input /path/to/Sports_and_Outdoors.txt "
                        "--output-dir dataset/amazon-sports-s3   (the S3-Rec file)",
}


class DatasetUnavailable(ValueError):
    """The atomic files are missing and could not be downloaded."""


def recbole_dataset_url(dataset: str) -> str | None:
    """The URL RecBole downloads ``dataset`` from, if it hosts it."""
    import yaml
    from recbole.utils import utils as recbole_utils

    url_file = Path(recbole_utils.__file__).resolve().parent.parent / "properties" / "dataset" / "url.yaml"
    with open(url_file, encoding="utf-8") as f:
        urls = yaml.safe_load(f) or {}
    return urls.get(dataset)


def download_dataset(dataset: str, data_path: str, url: str) -> None:
    """Download and unpack RecBole's zip of ``dataset`` into ``data_path`` (the dataset's own
    folder) with RecBole's functions; raises :class:`DatasetUnavailable` with the reason."""
    from recbole.utils.url import decide_download, download_url, extract_zip, rename_atomic_files

    final = Path(data_path)
    tmp = final.with_name(f".{final.name}.download-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        print(f"Dataset {dataset!r} is not in {final}: downloading {url} (RecBole's copy)", file=sys.stderr)
        if not decide_download(url):
            raise DatasetUnavailable(f"download of {dataset!r} declined")
        tmp.mkdir(parents=True)
        archive = download_url(url, str(tmp))
        extract_zip(archive, str(tmp))
        os.unlink(archive)
        rename_atomic_files(str(tmp), os.path.splitext(os.path.basename(archive))[0], dataset)
        if not (tmp / f"{dataset}.inter").is_file():
            raise DatasetUnavailable(f"the archive at {url} holds no {dataset}.inter")
        os.replace(tmp, final)
    except DatasetUnavailable:
        raise
    except Exception as exc:  # URLError, HTTPError, BadZipFile, RuntimeError("Stopped downloading")
        reason = getattr(exc, "reason", None) or exc
        raise DatasetUnavailable(
            f"Dataset {dataset!r}: {final} does not exist and the download from {url} failed "
            f"({type(exc).__name__}: {reason}).\n" + _offline_hint(dataset)
        ) from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _offline_hint(dataset: str) -> str:
    how = PREP_COMMANDS.get(dataset)
    return (f"Offline, create it with:  {how}" if how else
            "Offline, convert the raw data to RecBole atomic files (see docs/datasets.md) and point "
            "data_path at the folder that holds <dataset>/<dataset>.inter.")


def ensure_dataset(dataset: str, data_path: str, url: str | None = None) -> None:
    """Make sure ``<data_path>/<dataset>.inter`` exists: download it when RecBole hosts the dataset
    (or ``url`` is given) and its folder is missing; else :class:`DatasetUnavailable`."""
    if os.path.isfile(os.path.join(data_path, f"{dataset}.inter")):
        return
    url = url or recbole_dataset_url(dataset)
    if url and not os.path.exists(data_path):
        download_dataset(dataset, data_path, url)
        return
    raise DatasetUnavailable(missing_dataset_message(dataset, data_path))


def _recbole_download(self) -> None:
    """``Dataset._download`` (RecBole calls it when the dataset folder is missing) through
    :func:`download_dataset`, with ``dataset_url`` honoured and an error that says what to do."""
    import torch

    if self.config["local_rank"] == 0:
        url = self.config["dataset_url"] or self._get_download_url("url", allow_none=True)
        if url is None:
            raise DatasetUnavailable(missing_dataset_message(self.dataset_name, self.dataset_path))
        download_dataset(self.dataset_name, self.dataset_path, url)
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def install() -> None:
    """Route RecBole's dataset download through :func:`download_dataset`."""
    from recbole.data.dataset.dataset import Dataset

    Dataset._download = _recbole_download


def missing_dataset_message(dataset: str, data_path: str) -> str | None:
    """``None`` when ``<data_path>/<dataset>.inter`` exists, else the message to show."""
    inter = os.path.join(data_path, f"{dataset}.inter")
    if os.path.isfile(inter):
        return None
    how = PREP_COMMANDS.get(dataset)
    lines = [
        f"Dataset {dataset!r}: the atomic file {inter} does not exist.",
        f"Create it with:  {how}" if how else
        "Convert your raw data to RecBole atomic files (see README, 'Datasets'), "
        "or point data_path at the folder that holds <dataset>/<dataset>.inter.",
        "(ml-100k needs nothing: it ships inside RecBole's wheel.)",
    ]
    return "\n".join(lines)


def check_dataset_files(model: str, dataset: str, config_file_list: list[str] | None):
    """The resolved RecBole ``Config``, after :func:`ensure_dataset` (download, or exit with the
    message that says what to do)."""
    from recbole.config import Config

    config = Config(model=model, dataset=dataset, config_file_list=config_file_list)
    try:
        ensure_dataset(dataset, config["data_path"], config["dataset_url"])
    except DatasetUnavailable as exc:
        sys.exit(str(exc))
    return config
