"""Large catalogues: a training step and full-ranking top-k at 50k against 5M items.

    python -m recbole_mamba.bench.catalogue --items 50000 5000000 --model MambaRec

For each catalogue size a real RecBole dataset is made and loaded. ``--source sessions``
(default): ``dataset_prep.synthetic`` writes an LFM-1b listening log of ``--users`` users x
``--events`` events in sessions over ``--items`` track ids (Zipf popularity), and the LFM-1b
converter (``python -m dataset_prep.lfm1b``, timed) turns it into atomic files; training windows
and ranked histories are the users' own events. ``--source zipf``: an ``.item`` file listing
every item (so RecBole's ``item_num`` is exactly the catalogue size) and an ``.inter`` file of
independent Zipf events; windows drawn the same way. The model is built through RecBole's
``Config`` with ``loss_type: SS``
(``--negatives`` shared negatives), all positions, ``MAX_ITEM_LIST_LENGTH`` ``--length``. In a
fresh child process per (size, embedding) it times ``--steps`` training steps (RecBole's
``calculate_loss``, backward, and the optimizer RecBole's ``Trainer`` builds: Adam, or SparseAdam
for a sparse item embedding beside Adam) on batches of ``--batch`` windows, then
the top ``--topk`` over the whole catalogue for ``--eval-users`` users (the trainer's chunked
path, :func:`recbole_mamba.ops.topk.chunked_topk`). It reports the peak RSS of the process and
the RSS the ranking adds above the trained model, and the ratios 5M / 50k and sparse / dense.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from dataset_prep.synthetic import zipf_ids
from recbole_mamba.bench.proc import child_env, status_bytes


def zipf_items(rng: np.random.Generator, n: int, n_items: int, a: float = 1.1) -> np.ndarray:
    """``n`` item ids in ``1..n_items`` (RecBole's internal ids) with a Zipf-like popularity."""
    return zipf_ids(rng, n, n_items, a) + 1


def convert_sessions(folder: Path, n_items: int, users: int, events: int, seed: int = 0) -> tuple[str, dict]:
    """A synthetic LFM-1b log in sessions (``dataset_prep.synthetic``) converted by the LFM-1b
    converter, both as a user runs them; returns the dataset name and the two steps' seconds."""
    name = f"sessions{n_items}"
    raw = folder / f"{name}.LEs.txt"
    timings = {}
    for step, cmd in (("generate_s", ["dataset_prep.synthetic", "--format", "lfm1b", "--users", str(users),
                                      "--events-per-user", str(events), "--items", str(n_items), "--seed", str(seed),
                                      "--output", str(raw), "--no-progress"]),
                      ("convert_s", ["dataset_prep.lfm1b", "--input", str(raw), "--output-dir", str(folder / name),
                                     "--max-len", str(events), "--no-progress", "--force"])):
        t = time.perf_counter()
        subprocess.run([sys.executable, "-m", *cmd], check=True, env=child_env(), stdout=subprocess.DEVNULL)
        timings[step] = time.perf_counter() - t
    raw.unlink()
    return name, timings


def write_dataset(folder: Path, n_items: int, users: int, events: int, seed: int = 0) -> str:
    """Atomic files ``<folder>/<name>/<name>.{inter,item}``; returns the dataset name."""
    name = f"catalogue{n_items}"
    out = folder / name
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    user = np.repeat(np.arange(1, users + 1), events)
    item = zipf_items(rng, users * events, n_items)
    ts = np.tile(np.arange(events), users)
    with open(out / f"{name}.inter", "w") as f:
        f.write("user_id:token\titem_id:token\ttimestamp:float\n")
        np.savetxt(f, np.stack([user, item, ts], 1), fmt="%d", delimiter="\t")
    with open(out / f"{name}.item", "w") as f:
        f.write("item_id:token\n")
        np.savetxt(f, np.arange(1, n_items + 1), fmt="%d")
    return name


def _clear_peak() -> None:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


def run_child(args: dict) -> dict:
    import torch
    from recbole.config import Config
    from recbole.data import create_dataset
    from recbole.data.interaction import Interaction
    from recbole.utils import get_model, get_trainer, init_seed

    import recbole_mamba  # noqa: F401
    from recbole_mamba.evaluation import dot_product_vectors
    from recbole_mamba.ops.topk import chunk_for, chunked_topk

    torch.set_num_threads(args["threads"])
    config = Config(model=args["model"], dataset=args["dataset"], config_dict={
        "data_path": args["data_path"], "loss_type": "SS", "n_negatives": args["negatives"],
        "train_neg_sample_args": None, "train_mode": "all_positions", "MAX_ITEM_LIST_LENGTH": args["length"],
        "sparse_item_embedding": args["sparse"], "hidden_size": args["hidden"], "show_progress": False,
        "log_wandb": False, "seed": 2024, "checkpoint_dir": args["data_path"],
        "load_col": ({"inter": ["user_id", "item_id", "timestamp"], "item": ["item_id"]} if args["source"] == "zipf"
                     else {"inter": ["user_id", "item_id", "timestamp"]}),
        "user_inter_num_interval": None, "item_inter_num_interval": None,
    })
    init_seed(config["seed"], config["reproducibility"])
    t0 = time.perf_counter()
    dataset = create_dataset(config)
    load_s = time.perf_counter() - t0
    model = get_model(config["model"])(config, dataset)
    trainer = get_trainer(config["MODEL_TYPE"], config["model"])(config, model)
    optimizer = trainer.optimizer
    rng = np.random.default_rng(1)
    B, L = args["batch"], args["length"]
    histories = user_histories(dataset) if args["source"] == "sessions" else None

    def windows(n: int, last: bool = False, first_user: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """n windows of L items and the item after each: the users' own events (sessions: a
        random window of a random user, or with ``last`` each user's last L), else Zipf draws."""
        if histories is None:
            seq = zipf_items(rng, n * (L + 1), dataset.item_num - 1).reshape(n, L + 1)
        else:
            items, starts, counts = histories
            users = (np.arange(first_user, first_user + n) % len(counts)) if last else rng.integers(0, len(counts), n)
            span = np.minimum(counts[users], L + 1)
            off = counts[users] - span if last else (rng.random(n) * (counts[users] - span + 1)).astype(np.int64)
            idx = starts[users, None] + off[:, None] + np.minimum(np.arange(L + 1)[None, :], span[:, None] - 1)
            seq = items[idx]
        return torch.from_numpy(seq[:, :L].copy()), torch.from_numpy(seq[:, L].copy())

    def batch() -> Interaction:
        seq, target = windows(B)
        return Interaction({model.ITEM_SEQ: seq, model.ITEM_SEQ_LEN: torch.full((B,), L, dtype=torch.long),
                            model.POS_ITEM_ID: target})

    model.train()
    times = []
    for step in range(args["steps"] + 2):  # two warm-up steps
        data = batch()
        t = time.perf_counter()
        optimizer.zero_grad()
        model.calculate_loss(data).backward()
        optimizer.step()
        if step >= 2:
            times.append(time.perf_counter() - t)
    train_peak = status_bytes("VmHWM")

    model.eval()
    result = {"items": dataset.item_num, "sparse": model.sparse_item_embedding, "load_s": load_s,
              "optimizer": type(optimizer).__name__, "step_s": float(np.median(times)),
              "train_peak_rss": train_peak, "rank_s": float("nan"), "rank_added_rss": 0}
    if not args["eval_users"]:
        return result
    before = status_bytes("VmRSS")
    _clear_peak()
    users, k, eval_batch = args["eval_users"], args["topk"], args["eval_batch"]
    t = time.perf_counter()
    with torch.no_grad():
        for start in range(0, users, eval_batch):
            n = min(eval_batch, users - start)
            rows = Interaction({model.ITEM_SEQ: windows(n, last=True, first_user=start)[0],
                                model.ITEM_SEQ_LEN: torch.full((n,), L, dtype=torch.long)})
            query, items = dot_product_vectors(model, rows)
            chunked_topk(query, items, k, chunk_for(n), exclude_items=torch.zeros(1, dtype=torch.long))
    result.update(rank_s=time.perf_counter() - t, rank_added_rss=max(0, status_bytes("VmHWM") - before))
    return result


def user_histories(dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(items in user-then-time order, each user's first index, each user's event count) of a
    RecBole dataset's interactions."""
    inter = dataset.inter_feat
    column = lambda field: np.asarray(inter[field])  # a DataFrame or an Interaction
    user = column(dataset.uid_field)
    order = np.lexsort((column(dataset.time_field), user))
    user = user[order]
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]])
    counts = np.diff(np.r_[starts, len(user)])
    return column(dataset.iid_field)[order].astype(np.int64), starts, counts


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def _secs(s: float) -> str:
    """Seconds with three decimals below 10 s (a small run's ranking is milliseconds), one above."""
    return f"{s:.1f}" if s >= 10 else f"{s:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m recbole_mamba.bench.catalogue", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="MambaRec")
    p.add_argument("--items", type=int, nargs="+", default=[50_000, 5_000_000], help="catalogue sizes (first: baseline)")
    p.add_argument("--sparse", nargs="+", default=["False", "True"], help="sparse_item_embedding values to run")
    p.add_argument("--source", choices=("sessions", "zipf"), default="sessions",
                   help="sessions: synthetic LFM-1b log + the LFM-1b converter; zipf: independent Zipf events")
    p.add_argument("--users", type=int, default=25_001, help="users in the dataset")
    p.add_argument("--events", type=int, default=1_000, help="events per user in the dataset")
    p.add_argument("--length", type=int, default=200, help="MAX_ITEM_LIST_LENGTH and batch window length")
    p.add_argument("--batch", type=int, default=16, help="windows per training step")
    p.add_argument("--hidden", type=int, default=64)
    p.add_argument("--negatives", type=int, default=256)
    p.add_argument("--steps", type=int, default=10, help="timed training steps (median reported)")
    p.add_argument("--eval-users", type=int, default=25_001, help="users ranked over the whole catalogue (0: no ranking)")
    p.add_argument("--eval-batch", type=int, default=4096)
    p.add_argument("--topk", type=int, default=10)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--data-dir", help="where to write the datasets (default: a temporary folder)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.child:
        print("RESULT " + json.dumps(run_child(json.loads(a.child))), flush=True)
        return 0
    with tempfile.TemporaryDirectory(prefix="recbole-mamba-catalogue-") as tmp:
        folder = Path(a.data_dir or tmp)
        results = []
        for n_items in a.items:
            print(f"{'generating and converting' if a.source == 'sessions' else 'writing'} a dataset of "
                  f"{a.users:,} users x {a.events} events over {n_items:,} items", file=sys.stderr)
            if a.source == "sessions":
                name, prep = convert_sessions(folder, n_items, a.users, a.events)
                print(f"  generated in {prep['generate_s']:.0f} s, converted in {prep['convert_s']:.0f} s", file=sys.stderr)
            else:
                name, prep = write_dataset(folder, n_items, a.users, a.events), {}
            for sparse in a.sparse:
                args = {"model": a.model, "dataset": name, "data_path": str(folder), "sparse": sparse == "True",
                        "length": a.length, "batch": a.batch, "hidden": a.hidden, "negatives": a.negatives,
                        "steps": a.steps, "eval_users": a.eval_users, "eval_batch": a.eval_batch, "topk": a.topk,
                        "threads": a.threads, "source": a.source}
                proc = subprocess.run([sys.executable, "-m", "recbole_mamba.bench.catalogue", "--child", json.dumps(args)],
                                      env=child_env(), cwd=str(folder), capture_output=True, text=True)
                line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
                if proc.returncode != 0 or not line:
                    print(proc.stderr[-3000:], file=sys.stderr)
                    results.append(None)
                    continue
                r = {**json.loads(line[0][7:]), **prep, "catalogue": n_items}
                results.append(r)
                print(f"{r['items'] - 1:>10,} items  sparse={sparse:<5}  {r['optimizer']:<17} step {r['step_s']:.3f} s  "
                      f"peak RSS {_gib(r['train_peak_rss'])}  top-{a.topk} of {a.eval_users:,} users "
                      f"{_secs(r['rank_s'])} s (+{_gib(r['rank_added_rss'])})", flush=True)
    ok = [r for r in results if r]
    base = {r["sparse"]: r for r in ok if r["items"] == ok[0]["items"]} if ok else {}
    print(f"\n| catalogue | items in the data | generate + convert s | RecBole load s | embedding | optimizer | "
          f"step s | step / {ok[0]['items'] - 1:,} items | peak RSS | top-{a.topk} of {a.eval_users:,} users s | "
          "RSS added by ranking |" if ok else "no results")
    if ok:
        print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in ok:
        ratio = r["step_s"] / base[r["sparse"]]["step_s"] if r["sparse"] in base else float("nan")
        prep = f"{r['generate_s']:.0f} + {r['convert_s']:.0f}" if "convert_s" in r else "-"
        print(f"| {r['catalogue']:,} | {r['items'] - 1:,} | {prep} | {r['load_s']:.0f} | {'sparse' if r['sparse'] else 'dense'} | "
              f"{r['optimizer']} | {r['step_s']:.3f} | {ratio:.2f}x | {_gib(r['train_peak_rss'])} | {_secs(r['rank_s'])} | "
              f"{_gib(r['rank_added_rss'])} |")
    return 0 if len(ok) == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
