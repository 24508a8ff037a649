"""RecBole's run_recbole.py, with recbole_mamba's models registered.

Flag-compatible with RecBole's script:
    python run_recbole.py --model=MambaRec --dataset=ml-100k --epochs=2 [--results=metrics.json] [--resume]
Any other ``--key=value`` flag is a RecBole config override, as in RecBole. At the end it prints
the checkpoint it saved; ``--results FILE`` also writes the best validation and the test metrics
as JSON. ``--resume`` continues the newest killed run of this model (its ``<checkpoint>.resume``
state in ``checkpoint_dir``) from its last evaluated epoch; ``--resume=PATH`` names the state.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import sys
import time
from pathlib import Path

import recbole_mamba  # noqa: F401  (applies compat fixes, registers the models)
from recbole.quick_start import run


def _new_checkpoint(checkpoint_dir: str, model: str, since: float, fitted_before: int) -> str | None:
    """The best-model checkpoint this run wrote: the one RecBole's trainer saved in this process
    (exact, whatever else writes to ``checkpoint_dir``); under ``--nproc`` (the trainers run in
    child processes) the newest ``<model>-*.pth`` written in ``checkpoint_dir`` after ``since``."""
    from recbole_mamba.checkpoints import FITTED_CHECKPOINTS

    if len(FITTED_CHECKPOINTS) > fitted_before and Path(FITTED_CHECKPOINTS[-1]).is_file():
        return str(Path(FITTED_CHECKPOINTS[-1]))
    found = [p for p in Path(checkpoint_dir).glob(f"{model}-*.pth") if p.stat().st_mtime >= since]
    return str(max(found, key=lambda p: p.stat().st_mtime)) if found else None


def _plain(value):
    """JSON-ready copy of RecBole's result (OrderedDicts of numpy floats)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if hasattr(value, "item"):
        return value.item()
    return value


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", "-m", type=str, default="MLSA4Rec", help="name of the model")
    parser.add_argument("--dataset", "-d", type=str, default="ml-100k", help="name of the dataset")
    parser.add_argument("--config_files", type=str, default=None, help="space-separated config files")
    parser.add_argument("--results", type=str, default=None, help="write the final metrics to this JSON file")
    parser.add_argument("--resume", nargs="?", const="newest", default=None,
                        help="continue a killed run: the newest <model>-*.pth.resume in checkpoint_dir, or this file")
    parser.add_argument("--nproc", type=int, default=1, help="number of processes")
    parser.add_argument("--ip", type=str, default="localhost", help="ip of the master node")
    parser.add_argument("--port", type=str, default="5678", help="port of the master node")
    parser.add_argument("--world_size", type=int, default=-1, help="total number of jobs")
    parser.add_argument("--group_offset", type=int, default=0, help="global rank offset of this group")
    args, _ = parser.parse_known_args(argv)
    # RecBole's Config reads sys.argv itself: --results and --resume are ours, not config keys
    sys.argv = [a for i, a in enumerate(sys.argv)
                if not (a.startswith(("--results=", "--resume=")) or a in ("--results", "--resume")
                        or (i > 0 and sys.argv[i - 1] == "--results"))]

    config_file_list = args.config_files.strip().split(" ") if args.config_files else None
    from recbole_mamba.data_check import check_dataset_files
    from recbole_mamba.registry import get_model

    try:
        get_model(args.model)
    except ValueError as exc:
        sys.exit(str(exc))
    try:
        config = check_dataset_files(args.model, args.dataset, config_file_list)
    except ValueError as exc:  # ConfigError, and RecBole's own checks of its config
        sys.exit(f"run_recbole.py: config error: {exc}")
    config_dict, resumed_best = {}, None
    if args.resume:
        from recbole_mamba.checkpoints import load_resume_state, newest_resume_state

        state_file = (newest_resume_state(config["checkpoint_dir"], args.model)
                      if args.resume == "newest" else Path(args.resume))
        if state_file is None:
            sys.exit(f"--resume: no {args.model}-*.pth.resume in {config['checkpoint_dir']}: no killed "
                     f"run of {args.model} to continue (a run that ended deletes its resume state)")
        try:
            resumed_best = load_resume_state(state_file)["saved_model_file"]
        except (ValueError, OSError, pickle.UnpicklingError) as exc:
            sys.exit(f"--resume: {exc}")
        print(f"resuming from {state_file}")
        config_dict["resume_from"] = str(state_file)
    from recbole_mamba.checkpoints import FITTED_CHECKPOINTS

    start, fitted_before = time.time(), len(FITTED_CHECKPOINTS)
    try:
        result = run(
            args.model, args.dataset, config_file_list=config_file_list, config_dict=config_dict or None,
            nproc=args.nproc,
            world_size=args.world_size, ip=args.ip, port=args.port, group_offset=args.group_offset,
        )
    except Exception as exc:  # a failed rank under --nproc: its error's last line, not the child's traceback
        import torch.multiprocessing as mp

        if args.nproc > 1 and isinstance(exc, mp.ProcessRaisedException):
            last = [line for line in str(exc).strip().splitlines() if line.strip()][-1]
            sys.exit(f"run_recbole.py: a process of --nproc={args.nproc} failed: {last}")
        raise
    checkpoint = _new_checkpoint(config["checkpoint_dir"], args.model, start - 1, fitted_before) or resumed_best
    if checkpoint:
        print(f"checkpoint: {checkpoint}")
    if args.results:
        out = {"model": args.model, "dataset": args.dataset, "checkpoint": checkpoint,
               "seconds": round(time.time() - start, 1), **_plain(result or {})}
        tmp = f"{args.results}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(out, f, indent=2)
        os.replace(tmp, args.results)
        print(f"results: {args.results}")
    return result


if __name__ == "__main__":
    main()
