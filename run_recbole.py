"""RecBole's run_recbole.py, with recbole_mamba's models registered.

Flag-compatible with RecBole's script:
    python run_recbole.py --model=MambaRec --dataset=ml-100k --epochs=2
Any other ``--key=value`` flag is a RecBole config override, as in RecBole.
"""

from __future__ import annotations

import argparse
import sys

import recbole_mamba  # noqa: F401  (applies compat fixes, registers the models)
from recbole.quick_start import run


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", type=str, default="MLSA4Rec", help="name of the model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of the dataset")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated config files")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes")
    parser.add_argument("--ip", type=str, default="localhost", help="ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset of this group")
    args, _ = parser.parse_known_args(argv)

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    from recbole_mamba.registry import get_model
    from recbole_mamba.data_check import check_dataset_files

    try:
        get_model(args.model)
    except ValueError as exc:
        sys.exit(str(exc))
    check_dataset_files(args.model, args.dataset, config_file_list)
    return run(
        args.model, args.dataset, config_file_list=config_file_list, nproc=args.nproc,
        world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
    )


if __name__ == "__main__":
    main()
