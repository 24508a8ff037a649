"""Top-k recommendations from a RecBole checkpoint, optionally updated event by event.

    python -m recbole_mamba.recommend --checkpoint saved/MambaRec-<date>.pth --users 1,7,42 --topk 10
    python -m recbole_mamba.recommend --checkpoint saved/MambaRec-<date>.pth --events new.csv --out recs.csv

Users and items are the dataset's original tokens (as in the atomic files), never internal
indices. Each user's history is their interactions in the checkpoint's dataset, in time order.
With ``--events`` (CSV rows ``user_id,item_id[,timestamp]``, in order; a header line is
optional), each event updates that user's state through ``update_state`` (our models: one
recurrent step, no re-run over the history) and the recommendations after it are written.
Models without an online state (RecBole's SASRec, ...) are recomputed over their last
``MAX_ITEM_LIST_LENGTH`` items instead, which gives the same kind of output more slowly.
"""

from __future__ import annotations

import argparse
import csv
import logging
import os
import pickle
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

import recbole_mamba  # noqa: F401  (compat fixes, model registration)
from dataset_prep.common import atomic_outputs
from recbole_mamba.cli import UsageError, check_device, pick_checkpoint
from recbole_mamba.compat import load_recbole_checkpoint
from recbole_mamba.data_check import missing_dataset_message

log = logging.getLogger(__name__)

OUTPUT_COLUMNS = ["user_id", "step", "event_item_id", "rank", "item_id", "score"]


class RecommendError(UsageError):
    """A problem with the user's input (unknown id, malformed events file, bad checkpoint)."""


@dataclass
class Event:
    line: int
    user: str
    item: str


@dataclass
class SkipCounter:
    """What ``--on-unknown skip`` left out."""

    unknown_users: set[str] = field(default_factory=set)
    unknown_item_events: int = 0

    def summary(self) -> str:
        parts = []
        if self.unknown_users:
            shown = ", ".join(sorted(self.unknown_users)[:5])
            more = "" if len(self.unknown_users) <= 5 else ", ..."
            parts.append(f"{len(self.unknown_users)} unknown user(s) skipped ({shown}{more})")
        if self.unknown_item_events:
            parts.append(f"{self.unknown_item_events} event(s) with an unknown item skipped")
        return "; ".join(parts)


def load_model(checkpoint: str | os.PathLike, device: str = "cpu"):
    """(config, model in eval mode, dataset) from a RecBole checkpoint, loaded safely (only the
    globals a RecBole checkpoint holds are unpickled). The dataset is rebuilt from the
    checkpoint's config, as RecBole's ``load_data_and_model`` does, without the dataloaders."""
    from recbole.data import create_dataset
    from recbole.utils import get_model

    path = Path(checkpoint)
    if not path.is_file():
        raise RecommendError(f"checkpoint {path} does not exist; train with run_recbole.py (saved: True)")
    try:
        ckpt = load_recbole_checkpoint(path, map_location=device)
    except pickle.UnpicklingError as exc:
        raise RecommendError(str(exc)) from None
    except ValueError as exc:  # safe_load.CheckpointError: not a readable checkpoint
        raise RecommendError(str(exc)) from None
    if not isinstance(ckpt, dict) or "config" not in ckpt or "state_dict" not in ckpt:
        raise RecommendError(f"{path} is not a RecBole checkpoint (no config/state_dict)")
    config = ckpt["config"]
    config["device"] = torch.device(device)
    config["show_progress"] = False
    missing = missing_dataset_message(config["dataset"], config["data_path"])
    if missing:  # RecBole would try to download it instead
        raise RecommendError(
            f"{missing}\nThe checkpoint's data_path is {config['data_path']!r}: run from the folder "
            "you trained in if it is relative."
        )
    try:
        dataset = create_dataset(config)
    except pickle.UnpicklingError as exc:
        raise RecommendError(str(exc)) from None
    model = get_model(config["model"])(config, dataset).to(device)
    model.load_state_dict(ckpt["state_dict"])
    model.load_other_parameter(ckpt.get("other_parameter"))
    if not hasattr(model, "ITEM_SEQ"):
        raise RecommendError(f"{config['model']} is not a sequential recommender; recommend needs one")
    return config, model.eval(), dataset


def histories(dataset) -> dict[int, np.ndarray]:
    """Internal user id -> that user's internal item ids in time order (file order on ties)."""
    inter = dataset.inter_feat  # a DataFrame before build(), an Interaction after
    users = np.asarray(inter[dataset.uid_field])
    items = np.asarray(inter[dataset.iid_field])
    if dataset.time_field and dataset.time_field in inter:
        order = np.lexsort((np.asarray(inter[dataset.time_field]), users))
    else:
        order = np.argsort(users, kind="stable")
    users, items = users[order], items[order]
    bounds = np.flatnonzero(np.diff(users)) + 1
    return {int(chunk_users[0]): chunk_items
            for chunk_users, chunk_items in zip(np.split(users, bounds), np.split(items, bounds))
            if len(chunk_users)}


def read_events(path: str | os.PathLike) -> list[Event]:
    """Rows ``user_id,item_id[,timestamp]`` (optional header). Malformed rows raise with the
    file and line number."""
    events: list[Event] = []
    path = str(path)
    if not os.path.isfile(path):
        raise RecommendError(f"--events: {path} does not exist")
    with open(path, "rb") as probe:
        head = probe.read(8192)
    if b"\0" in head:
        raise RecommendError(f"{path}: not a text CSV (it holds NUL bytes); give user_id,item_id[,timestamp] rows")
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:  # -sig: a UTF-8 BOM is skipped
            text_rows = list(enumerate(csv.reader(handle), start=1))
    except UnicodeDecodeError as exc:
        raise RecommendError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except csv.Error as exc:
        raise RecommendError(f"{path}: not a CSV file ({exc})") from None
    for number, row in text_rows:
        if not row or all(not cell.strip() for cell in row):
            raise RecommendError(f"{path}:{number}: empty line")
        if number == 1 and row[0].strip().lower() in ("user_id", "user", "user_id:token"):
            continue
        if len(row) not in (2, 3):
            raise RecommendError(
                f"{path}:{number}: expected user_id,item_id[,timestamp], got {len(row)} fields"
            )
        user, item = row[0].strip(), row[1].strip()
        if not user or not item:
            raise RecommendError(f"{path}:{number}: empty user or item id")
        if len(row) == 3:
            try:
                float(row[2])
            except ValueError:
                raise RecommendError(f"{path}:{number}: timestamp {row[2]!r} is not a number") from None
        events.append(Event(number, user, item))
    if not events:
        raise RecommendError(
            f"{path}: no events ({'only a header' if text_rows else 'the file is empty'}); "
            "expected rows user_id,item_id[,timestamp]"
        )
    return events


class Recommender:
    """Per-user recommendation state over a loaded model and its dataset.

    With a model that has ``init_state`` (ours), each user's history is one recurrent state and
    an event costs one ``update_state``; other sequential models are re-run on the last
    ``MAX_ITEM_LIST_LENGTH`` items.
    """

    def __init__(self, model, dataset, exclude_history: bool = False) -> None:
        self.model = model
        self.dataset = dataset
        self.exclude_history = exclude_history
        self.device = next(model.parameters()).device
        self.streaming = hasattr(model, "init_state")
        self._history = histories(dataset)
        self.items: dict[int, list[int]] = {}
        self.states: dict[int, object] = {}

    def user_id(self, token: str) -> int | None:
        """Internal id of a user token, or None when the dataset does not know it."""
        return _token_id(self.dataset, self.dataset.uid_field, token)

    def item_id(self, token: str) -> int | None:
        return _token_id(self.dataset, self.dataset.iid_field, token)

    def start(self, users: list[int]) -> None:
        """Load the histories (and, streaming, the states) of ``users`` in one batch."""
        new = [u for u in dict.fromkeys(users) if u not in self.items]
        if not new:
            return
        max_len = self.model.max_seq_length
        for u in new:
            self.items[u] = [int(i) for i in self._history.get(u, [])]
        if not self.streaming:
            return
        seqs = [self.items[u][-max_len:] for u in new]
        item_seq, lengths = _right_padded(seqs, max(1, max(len(s) for s in seqs)))
        state = self.model.init_state(item_seq.to(self.device), lengths.to(self.device))
        for row, u in enumerate(new):
            self.states[u] = state.select([row])

    def add_event(self, user: int, item: int) -> None:
        """Append one interaction to ``user``'s history."""
        self.start([user])
        self.items[user].append(item)
        if self.streaming:
            self.model.update_state(self.states[user], torch.tensor([item], device=self.device))

    @torch.no_grad()
    def scores(self, users: list[int]) -> torch.Tensor:
        """(len(users), n_items) scores; padding (and, when asked, seen items) at -inf."""
        self.start(users)
        if any(not self.items[u] for u in users):
            raise RecommendError("a user without any interaction cannot be scored")
        if self.streaming:
            rows = [self.model.score_state(self.states[u]) for u in users]
            out = torch.cat(rows, dim=0)
        else:
            out = self._recompute(users)
        out[:, 0] = float("-inf")
        if self.exclude_history:
            for row, u in enumerate(users):
                out[row, torch.tensor(self.items[u], dtype=torch.long)] = float("-inf")
        return out

    def _recompute(self, users: list[int]) -> torch.Tensor:
        from recbole.data.interaction import Interaction

        max_len = self.model.max_seq_length
        item_seq, lengths = _right_padded([self.items[u][-max_len:] for u in users], max_len)
        batch = Interaction({self.model.ITEM_SEQ: item_seq, self.model.ITEM_SEQ_LEN: lengths}).to(self.device)
        return self.model.full_sort_predict(batch).view(len(users), -1).float().cpu()

    def topk(self, users: list[int], k: int) -> list[list[tuple[str, float]]]:
        """Top-k (item token, score) per user.

        Fewer than ``k`` when fewer items can be recommended (padding, and seen items under
        ``exclude_history``, are never listed)."""
        scores = self.scores(users)
        k = min(k, scores.shape[1] - 1)
        values, index = scores.topk(k, dim=1)
        tokens = self.dataset.id2token(self.dataset.iid_field, index.cpu().numpy())
        return [[(str(t), float(v)) for t, v in zip(trow, vrow.tolist()) if v != float("-inf")]
                for trow, vrow in zip(tokens, values)]


def _right_padded(seqs: list[list[int]], width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Item lists -> RecBole's layout: (len(seqs), width) right-padded with 0, and the lengths."""
    item_seq = torch.zeros(len(seqs), width, dtype=torch.long)
    for row, s in enumerate(seqs):
        item_seq[row, : len(s)] = torch.tensor(s, dtype=torch.long)
    return item_seq, torch.tensor([len(s) for s in seqs], dtype=torch.long)


def _token_id(dataset, field_name: str, token: str) -> int | None:
    mapping = dataset.field2token_id[field_name]
    index = mapping.get(str(token))
    return None if index in (None, 0) else int(index)  # 0 is [PAD]


def _write_rows(rows: list[list], out: str | None) -> None:
    if out is None:
        writer = csv.writer(sys.stdout)
        writer.writerow(OUTPUT_COLUMNS)
        writer.writerows(rows)
        return
    # the converters' temporary-then-rename writer: a failed run leaves no partial file
    with atomic_outputs([Path(out)], force=True) as (tmp,):
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(OUTPUT_COLUMNS)
            writer.writerows(rows)


def _check_writable(out: Path) -> None:
    """``--out``'s folder exists and is writable (checked before any work)."""
    folder = out.parent if str(out.parent) else Path(".")
    if out.is_dir():
        raise RecommendError(f"--out {out} is a folder; give a file name")
    if not folder.is_dir():
        raise RecommendError(f"--out {out}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise RecommendError(f"--out {out}: folder {folder} is not writable")


def run(args: argparse.Namespace) -> tuple[list[list], SkipCounter]:
    """Everything ``main`` does, returning the output rows and the skip summary."""
    if args.topk < 1:
        raise RecommendError(f"--topk must be at least 1, got {args.topk}")
    check_device(args.device)
    if args.out:
        _check_writable(Path(args.out))
    user_tokens = [u.strip() for u in args.users.split(",") if u.strip()] if args.users else []
    events = read_events(args.events) if args.events else []
    if not user_tokens and not events:
        raise RecommendError("nothing to do: give --users and/or --events")
    _, model, dataset = load_model(pick_checkpoint(args.checkpoint, "recommend"), args.device)
    rec = Recommender(model, dataset, exclude_history=args.exclude_history)
    skipped = SkipCounter()

    def known_user(token: str, where: str) -> int | None:
        uid = rec.user_id(token)
        if uid is None:
            if args.on_unknown == "error":
                raise RecommendError(
                    f"{where}unknown user {token!r}: not in dataset {dataset.dataset_name!r} "
                    "(use --on-unknown skip to skip such users)"
                )
            skipped.unknown_users.add(token)
        return uid

    rows: list[list] = []

    def emit(token: str, uid: int, step: int, event_item: str) -> None:
        for rank, (item, score) in enumerate(rec.topk([uid], args.topk)[0], start=1):
            rows.append([token, step, event_item, rank, item, f"{score:.6g}"])

    listed = [(t, known_user(t, "--users: ")) for t in user_tokens]
    listed = [(t, u) for t, u in listed if u is not None]
    rec.start([u for _, u in listed])
    for token, uid in listed:
        emit(token, uid, 0, "")
    steps: dict[str, int] = {}
    for event in events:
        uid = known_user(event.user, f"{args.events}:{event.line}: ")
        if uid is None:
            continue
        iid = rec.item_id(event.item)
        if iid is None:
            if args.on_unknown == "error":
                raise RecommendError(
                    f"{args.events}:{event.line}: unknown item {event.item!r}: not in dataset "
                    f"{dataset.dataset_name!r} (the model has no embedding for it; use "
                    "--on-unknown skip to skip such events)"
                )
            skipped.unknown_item_events += 1
            continue
        rec.add_event(uid, iid)
        steps[event.user] = steps.get(event.user, 0) + 1
        emit(event.user, uid, steps[event.user], event.item)
    return rows, skipped


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m recbole_mamba.recommend",
        description="Top-k recommendations from a RecBole checkpoint, updated event by event.",
    )
    parser.add_argument("--checkpoint", required=True, nargs="+",
                        help="a RecBole .pth file (saved/<Model>-<date>.pth); with a glob (saved/MambaRec-*.pth) "
                             "or several files, the newest")
    parser.add_argument("--users", default="", help="comma-separated user ids (original tokens)")
    parser.add_argument("--topk", type=int, default=10, help="items per recommendation list (default 10)")
    parser.add_argument("--exclude-history", action="store_true",
                        help="never recommend an item the user already interacted with")
    parser.add_argument("--events", default=None,
                        help="CSV of new events user_id,item_id[,timestamp] in order; recommendations "
                             "are written after each")
    parser.add_argument("--out", default=None, help="write the CSV here (default: stdout)")
    parser.add_argument("--on-unknown", choices=("error", "skip"), default="error",
                        help="unknown user or item: stop with an error (default) or skip it and count")
    parser.add_argument("--device", default="cpu", help="torch device (default cpu)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    try:
        rows, skipped = run(args)
    except UsageError as exc:
        print(f"recommend: error: {exc}", file=sys.stderr)
        return 2
    _write_rows(rows, args.out)
    if skipped.summary():
        print(f"recommend: {skipped.summary()}", file=sys.stderr)
    if args.out:
        print(f"recommend: {len(rows)} rows written to {args.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
