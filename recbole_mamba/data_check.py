"""A clear error, before RecBole starts, when a dataset's atomic files are missing.

RecBole, given a dataset name whose files are not on disk, tries to download them (and on a
machine without network fails with a long urllib traceback). We check first and say what to run.
"""

from __future__ import annotations

import os
import sys

PREP_COMMANDS = {
    "ml-1m": "python -m dataset_prep.movielens --input /path/to/ml-1m --output-dir dataset/ml-1m"
             "   (a folder with ratings.dat, or a one-user-per-line sequence file; see README, 'Datasets')",
    "amazon-toys-s3": "python -m dataset_prep.sequences --input /path/to/Toys_and_Games.txt "
                      "--output-dir dataset/amazon-toys-s3   (the S3-Rec file)",
    "amazon-sports-s3": "python -m dataset_prep.sequences --input /path/to/Sports_and_Outdoors.txt "
                        "--output-dir dataset/amazon-sports-s3   (the S3-Rec file)",
}


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
    """Exit with a helpful message if the dataset's ``.inter`` file is missing; else return the
    resolved RecBole ``Config``."""
    from recbole.config import Config

    config = Config(model=model, dataset=dataset, config_file_list=config_file_list)
    message = missing_dataset_message(dataset, config["data_path"])
    if message is not None:
        sys.exit(message)
    return config
