"""Bad inputs and faults across the CLIs, table-driven: each case gives a one-line message that
says what is wrong (asserted), no traceback, a non-zero exit, and leaves no output file behind.

The converters, ``run_recbole.py``, ``recommend`` and ``compare`` are called in-process through
their ``main(argv)``; kill -9 during a conversion runs a real subprocess.
"""

from __future__ import annotations

import bz2
import gzip
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from dataset_prep import kuairand, lfm1b, movielens, sequences
from recbole_mamba import compare, recommend

from conftest import run_recbole_main

ROOT = Path(__file__).resolve().parents[1]
KUAI_HEADER = ("user_id,video_id,date,hourmin,time_ms,is_click,is_like,is_follow,is_comment,is_forward,"
               "is_hate,long_view,play_time_ms,duration_ms,profile_stay_time,comment_stay_time,"
               "is_profile_enter,is_rand,tab")


def kuai_row(user: int = 0, video: int = 1, t: int | str = 1651314030792) -> str:
    return f"{user},{video},20220430,1800,{t},1,0,0,0,0,0,0,863,30066,0,0,0,1,1"


def kuai_file(*rows: str) -> bytes:
    return ("\n".join([KUAI_HEADER, *rows]) + "\n").encode()


GOOD_KUAI = [kuai_row(0, v, 1651314030792 + v) for v in range(1, 6)]
GOOD_ML = b"1::1193::5::978300760\n1::661::3::978302109\n1::914::3::978301968\n"
GOOD_LFM = b"".join(f"1\t{a}\t{a}\t{a}\t{1000 + a}\n".encode() for a in range(1, 6))


@dataclass
class Case:
    id: str
    tool: str                      # movielens | sequences | kuairand | lfm1b | run_recbole | recommend | compare
    files: dict[str, bytes]        # written under tmp_path before the call
    args: list[str]                # {tmp} is replaced by tmp_path
    message: str                   # a substring of the error output
    needs_no_cuda: bool = False


def C(id, tool, files, args, message, **kw) -> Case:
    return Case(id, tool, files, args, message, **kw)


ML = ["--output-dir", "{tmp}/out/ml", "--no-progress"]
SQ = ["--output-dir", "{tmp}/out/sq", "--no-progress"]
KR = ["--output-dir", "{tmp}/out/kr", "--no-progress"]
LF = ["--output-dir", "{tmp}/out/lf", "--no-progress"]
RB = ["--model=MambaRec", "--dataset=ml-100k"]
RC = ["--checkpoint", "{tmp}/none.pth"]
CP = ["--dataset", "ml-100k", "--out", "{tmp}/out/cmp"]

CASES = [
    # ---- dataset_prep.movielens
    C("ml-tab-separated", "movielens", {"r.dat": b"1\t1193\t5\t978300760\n"}, ["--input", "{tmp}/r.dat", *ML], "tab-separated"),
    C("ml-comma-separated", "movielens", {"r.csv": b"1,1193,5,978300760\n"}, ["--input", "{tmp}/r.csv", *ML], "comma-separated"),
    C("ml-ambiguous-4-ints", "movielens", {"r.txt": b"1 2 3 978300760\n"}, ["--input", "{tmp}/r.txt", *ML], "pass --format"),
    C("ml-truncated-gz", "movielens", {"r.dat.gz": gzip.compress(GOOD_ML * 50)[:40]}, ["--input", "{tmp}/r.dat.gz", *ML], "truncated or corrupt"),
    C("ml-not-gzip", "movielens", {"r.dat.gz": GOOD_ML}, ["--input", "{tmp}/r.dat.gz", *ML], "not a gzip file"),
    C("ml-truncated-bz2", "movielens", {"r.dat.bz2": bz2.compress(GOOD_ML * 50)[:40]}, ["--input", "{tmp}/r.dat.bz2", *ML], "truncated or corrupt"),
    C("ml-not-bz2", "movielens", {"r.dat.bz2": GOOD_ML}, ["--input", "{tmp}/r.dat.bz2", *ML], "not a bzip2 file"),
    C("ml-timestamp-beyond-int64", "movielens", {"r.dat": GOOD_ML + b"1::5::3::99999999999999999999\n"}, ["--input", "{tmp}/r.dat", *ML], "r.dat:4: UserID, MovieID and Timestamp must be in [0, 2^63)"),
    C("ml-timestamp-beyond-int64-skip-kept-out", "movielens", {"r.dat": b"1::5::3::99999999999999999999\n"}, ["--input", "{tmp}/r.dat", "--on-bad-lines", "skip", *ML], "no valid interaction"),
    C("ml-inf-rating", "movielens", {"r.dat": b"1::5::inf::978300760\n"}, ["--input", "{tmp}/r.dat", *ML], "r.dat:1: Rating is NaN or infinite"),
    C("ml-nan-rating", "movielens", {"r.dat": b"1::5::nan::978300760\n"}, ["--input", "{tmp}/r.dat", *ML], "Rating is NaN or infinite"),
    C("ml-negative-timestamp", "movielens", {"r.dat": b"1::5::3::-5\n"}, ["--input", "{tmp}/r.dat", *ML], "must be in [0, 2^63)"),
    C("ml-three-fields", "movielens", {"r.dat": b"1::5::3\n"}, ["--input", "{tmp}/r.dat", *ML], "r.dat:1: expected 4 fields"),
    C("ml-non-integer-user", "movielens", {"r.dat": b"u1::5::3::978300760\n"}, ["--input", "{tmp}/r.dat", *ML], "must be integers"),
    C("ml-rating-not-a-number", "movielens", {"r.dat": b"1::5::good::978300760\n"}, ["--input", "{tmp}/r.dat", *ML], "Rating must be a number"),
    C("ml-empty-file", "movielens", {"r.dat": b""}, ["--input", "{tmp}/r.dat", *ML], "the file is empty"),
    C("ml-empty-line", "movielens", {"r.dat": GOOD_ML + b"\n" + GOOD_ML}, ["--input", "{tmp}/r.dat", *ML], "r.dat:4: empty line"),
    C("ml-truncated-last-line", "movielens", {"r.dat": GOOD_ML + b"1::5::3::97830"}, ["--input", "{tmp}/r.dat", *ML], "truncated last line"),
    C("ml-missing-input", "movielens", {}, ["--input", "{tmp}/nope.dat", *ML], "no such file"),
    C("ml-output-under-a-file", "movielens", {"r.dat": GOOD_ML, "afile": b""}, ["--input", "{tmp}/r.dat", "--output-dir", "{tmp}/afile/ml", "--no-progress"], "cannot be created"),
    C("ml-existing-output", "movielens", {"r.dat": GOOD_ML, "out/ml/ml.inter": b"old"}, ["--input", "{tmp}/r.dat", *ML], "refusing to overwrite"),
    C("ml-sequence-non-integer", "movielens", {"s.txt": b"1 2 x\n"}, ["--input", "{tmp}/s.txt", "--format", "sequence", *ML], "s.txt:1"),
    C("ml-ratings-format-on-sequence", "movielens", {"s.txt": b"1 2 3\n"}, ["--input", "{tmp}/s.txt", "--format", "ratings", *ML], "expected 4 fields"),
    # ---- dataset_prep.sequences
    C("seq-missing-input", "sequences", {}, ["--input", "{tmp}/nope.txt", *SQ], "nope.txt"),
    C("seq-empty-file", "sequences", {"s.txt": b""}, ["--input", "{tmp}/s.txt", *SQ], "s.txt"),
    C("seq-user-without-items", "sequences", {"s.txt": b"1 2 3\n7\n"}, ["--input", "{tmp}/s.txt", *SQ], "s.txt:2"),
    C("seq-user-twice", "sequences", {"s.txt": b"1 2 3\n1 4 5\n"}, ["--input", "{tmp}/s.txt", *SQ], "s.txt:2"),
    C("seq-truncated-gz", "sequences", {"s.txt.gz": gzip.compress(b"1 2 3\n" * 500)[:30]}, ["--input", "{tmp}/s.txt.gz", *SQ], "truncated or corrupt"),
    C("seq-not-gzip", "sequences", {"s.txt.gz": b"1 2 3\n"}, ["--input", "{tmp}/s.txt.gz", *SQ], "not a gzip file"),
    C("seq-not-utf8", "sequences", {"s.txt": b"1 \xff\xfe 3\n"}, ["--input", "{tmp}/s.txt", *SQ], "s.txt"),
    C("seq-empty-line", "sequences", {"s.txt": b"1 2 3\n\n2 3 4\n"}, ["--input", "{tmp}/s.txt", *SQ], "s.txt:2: empty line"),
    # ---- dataset_prep.kuairand
    C("kuai-binary-file", "kuairand", {"k.csv": bytes(range(256)) * 4}, ["--input", "{tmp}/k.csv", *KR], "a binary file"),
    C("kuai-header-not-utf8", "kuairand", {"k.csv": b"user_id,\xff\xfe\n0,1\n"}, ["--input", "{tmp}/k.csv", *KR], "not UTF-8"),
    C("kuai-garbage-rows", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI, "\x07\x01garbage", *GOOD_KUAI)}, ["--input", "{tmp}/k.csv", *KR], "k.csv:7: expected 19 columns"),
    C("kuai-nul-bytes", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI, "0\x00,1" + kuai_row()[3:])}, ["--input", "{tmp}/k.csv", *KR], "k.csv:7"),
    C("kuai-time-beyond-int64", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI, kuai_row(t="99999999999999999999"))}, ["--input", "{tmp}/k.csv", *KR], "k.csv:7: value beyond the int64 range"),
    C("kuai-time-beyond-int64-skip", "kuairand", {"k.csv": kuai_file(kuai_row(t="99999999999999999999"))}, ["--input", "{tmp}/k.csv", "--on-bad-lines", "skip", *KR], "no events left"),
    C("kuai-lone-cr", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI, kuai_row(0, 7) + "\r" + kuai_row(0, 8))}, ["--input", "{tmp}/k.csv", *KR], "carriage return inside a line"),
    C("kuai-not-gzip", "kuairand", {"k.csv.gz": kuai_file(*GOOD_KUAI)}, ["--input", "{tmp}/k.csv.gz", *KR], "not a gzip file"),
    C("kuai-truncated-gz", "kuairand", {"k.csv.gz": gzip.compress(kuai_file(*GOOD_KUAI * 200))[:200]}, ["--input", "{tmp}/k.csv.gz", *KR], "truncated or corrupt"),
    C("kuai-max-len-1", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI)}, ["--input", "{tmp}/k.csv", "--max-len", "1", *KR], "--max-len must be at least 3"),
    C("kuai-header-lacks-columns", "kuairand", {"k.csv": b"user_id,foo\n0,1\n"}, ["--input", "{tmp}/k.csv", *KR], "the header lacks"),
    C("kuai-missing-input", "kuairand", {}, ["--input", "{tmp}/nope.csv", *KR], "no such file"),
    C("kuai-negative-id", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI, kuai_row(-3, 1))}, ["--input", "{tmp}/k.csv", *KR], "negative id"),
    C("kuai-empty-line", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI, "", *GOOD_KUAI)}, ["--input", "{tmp}/k.csv", *KR], "k.csv:7: empty line"),
    C("kuai-non-integer", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI, kuai_row(0, "abc"))}, ["--input", "{tmp}/k.csv", *KR], "non-integer value"),
    C("kuai-existing-output", "kuairand", {"k.csv": kuai_file(*GOOD_KUAI), "out/kr/kr.inter": b"old"}, ["--input", "{tmp}/k.csv", *KR], "refusing to overwrite"),
    # ---- dataset_prep.lfm1b
    C("lfm-wrong-columns", "lfm1b", {"l.txt": GOOD_LFM + b"1\t2\t3\n"}, ["--input", "{tmp}/l.txt", *LF], "l.txt:6: expected 5 columns"),
    C("lfm-header-in-middle", "lfm1b", {"l.txt": GOOD_LFM + b"user\tartist\talbum\ttrack\tts\n"}, ["--input", "{tmp}/l.txt", *LF], "header line in the middle"),
    C("lfm-truncated-bz2", "lfm1b", {"l.txt.bz2": bz2.compress(GOOD_LFM * 500)[:60]}, ["--input", "{tmp}/l.txt.bz2", *LF], "truncated or corrupt"),
    C("lfm-max-len-2", "lfm1b", {"l.txt": GOOD_LFM}, ["--input", "{tmp}/l.txt", "--max-len", "2", *LF], "--max-len must be at least 3"),
    C("lfm-output-under-a-file", "lfm1b", {"l.txt": GOOD_LFM, "afile": b""}, ["--input", "{tmp}/l.txt", "--output-dir", "{tmp}/afile/lf", "--no-progress"], "cannot be created"),
    # ---- run_recbole.py
    C("rb-learning-rate-abc", "run_recbole", {}, [*RB, "--learning_rate=abc"], "learning_rate must be a number"),
    C("rb-learning-rate-zero", "run_recbole", {}, [*RB, "--learning_rate=0"], "learning_rate must be a number in (0.0"),
    C("rb-epochs-abc", "run_recbole", {}, [*RB, "--epochs=abc"], "epochs must be an integer >= 1"),
    C("rb-epochs-negative", "run_recbole", {}, [*RB, "--epochs=-1"], "--epochs=-1: epochs must be an integer >= 1"),
    C("rb-epochs-zero", "run_recbole", {}, [*RB, "--epochs=0"], "epochs must be an integer >= 1"),
    C("rb-batch-zero", "run_recbole", {}, [*RB, "--train_batch_size=0"], "train_batch_size must be an integer >= 1"),
    C("rb-eval-batch-float", "run_recbole", {}, [*RB, "--eval_batch_size=2.5"], "eval_batch_size must be an integer"),
    C("rb-max-len-zero", "run_recbole", {}, [*RB, "--MAX_ITEM_LIST_LENGTH=0"], "MAX_ITEM_LIST_LENGTH must be an integer >= 1"),
    C("rb-loss-type-unknown", "run_recbole", {}, [*RB, "--loss_type=XYZ"], "MambaRec takes loss_type CE, BPR, BCE, SS, gBCE"),
    C("rb-key-typo", "run_recbole", {}, [*RB, "--learning_rat=0.1"], "did you mean 'learning_rate'"),
    C("rb-key-case", "run_recbole", {}, [*RB, "--max_item_list_length=20"], "did you mean 'MAX_ITEM_LIST_LENGTH'"),
    C("rb-dropout-above-1", "run_recbole", {}, [*RB, "--dropout_prob=1.5"], "dropout_prob must be a number in [0.0, 1.0)"),
    C("rb-train-mode-unknown", "run_recbole", {}, [*RB, "--train_mode=every"], "train_mode must be one of all_positions, augment"),
    C("rb-backend-unknown", "run_recbole", {}, [*RB, "--mamba_backend=cuda"], "mamba_backend must be one of"),
    C("rb-n-negatives-zero", "run_recbole", {}, [*RB, "--n_negatives=0"], "n_negatives must be an integer >= 1"),
    C("rb-topk-zero", "run_recbole", {}, [*RB, "--topk=[0]"], "topk must be a positive integer"),  # RecBole's own check
    C("rb-learner-unknown", "run_recbole", {}, [*RB, "--learner=lion"], "learner must be one of"),
    C("rb-stopping-step-zero", "run_recbole", {}, [*RB, "--stopping_step=0"], "stopping_step must be an integer >= 1"),
    C("rb-weight-decay-negative", "run_recbole", {}, [*RB, "--weight_decay=-1"], "weight_decay must be a number in [0.0"),
    C("rb-seed-negative", "run_recbole", {}, [*RB, "--seed=-3"], "seed must be a non-negative integer"),
    C("rb-yaml-syntax-error", "run_recbole", {"bad.yaml": b"epochs: 2\nlearning_rate: [0.1\n"}, [*RB, "--config_files={tmp}/bad.yaml"], "bad.yaml:3:1: YAML syntax error"),
    C("rb-yaml-tab-indent", "run_recbole", {"bad.yaml": b"eval_args:\n\tsplit: x\n"}, [*RB, "--config_files={tmp}/bad.yaml"], "bad.yaml:2:1: YAML syntax error"),
    C("rb-config-file-missing", "run_recbole", {}, [*RB, "--config_files={tmp}/nope.yaml"], "config file {tmp}/nope.yaml does not exist"),
    C("rb-config-file-list", "run_recbole", {"list.yaml": b"- a\n- b\n"}, [*RB, "--config_files={tmp}/list.yaml"], "must hold 'key: value' lines, got a YAML list"),
    C("rb-config-file-bad-value", "run_recbole", {"c.yaml": b"epochs: many\n"}, [*RB, "--config_files={tmp}/c.yaml"], "epochs='many': epochs must be an integer"),
    C("rb-unknown-model", "run_recbole", {}, ["--model=MambaRek", "--dataset=ml-100k"], "Did you mean MambaRec"),
    C("rb-missing-dataset", "run_recbole", {}, ["--model=MambaRec", "--dataset=no-such-set", "--data_path={tmp}"], "no-such-set"),
    C("rb-resume-nothing", "run_recbole", {}, [*RB, "--checkpoint_dir={tmp}/saved", "--resume"], "no MambaRec-*.pth.resume"),
    C("rb-resume-not-a-state", "run_recbole", {"x.resume": b"junk"}, [*RB, "--resume={tmp}/x.resume"], "--resume:"),
    # ---- recommend
    C("rec-missing-checkpoint", "recommend", {}, [*RC, "--users", "1"], "does not exist"),
    C("rec-not-a-checkpoint", "recommend", {"junk.pth": b"\x00garbage" * 10}, ["--checkpoint", "{tmp}/junk.pth", "--users", "1"], "cannot be read as a checkpoint"),
    C("rec-topk-zero", "recommend", {}, [*RC, "--users", "1", "--topk", "0"], "--topk must be at least 1"),
    C("rec-cuda-without-gpu", "recommend", {}, [*RC, "--users", "1", "--device", "cuda"], "no CUDA GPU", needs_no_cuda=True),
    C("rec-bad-device", "recommend", {}, [*RC, "--users", "1", "--device", "tpu9"], "not a torch device"),
    C("rec-out-folder-missing", "recommend", {}, [*RC, "--users", "1", "--out", "{tmp}/no/dir/r.csv"], "does not exist"),
    C("rec-out-is-a-folder", "recommend", {"d/x": b""}, [*RC, "--users", "1", "--out", "{tmp}/d"], "is a folder"),
    C("rec-events-empty", "recommend", {"e.csv": b""}, [*RC, "--events", "{tmp}/e.csv"], "the file is empty"),
    C("rec-events-header-only", "recommend", {"e.csv": b"user_id,item_id\n"}, [*RC, "--events", "{tmp}/e.csv"], "only a header"),
    C("rec-events-bom-header-only", "recommend", {"e.csv": b"\xef\xbb\xbfuser_id,item_id\n"}, [*RC, "--events", "{tmp}/e.csv"], "only a header"),
    C("rec-events-binary", "recommend", {"e.csv": bytes(range(256))}, [*RC, "--events", "{tmp}/e.csv"], "NUL bytes"),
    C("rec-events-not-utf8", "recommend", {"e.csv": b"1,\xff\xfe\n"}, [*RC, "--events", "{tmp}/e.csv"], "not UTF-8"),
    C("rec-events-missing", "recommend", {}, [*RC, "--events", "{tmp}/nope.csv"], "does not exist"),
    C("rec-events-four-fields", "recommend", {"e.csv": b"1,2,3,4\n"}, [*RC, "--events", "{tmp}/e.csv"], "e.csv:1: expected user_id,item_id"),
    C("rec-events-bad-timestamp", "recommend", {"e.csv": b"1,2,noon\n"}, [*RC, "--events", "{tmp}/e.csv"], "e.csv:1: timestamp 'noon'"),
    C("rec-nothing-to-do", "recommend", {}, RC, "nothing to do"),
    # ---- compare
    C("cmp-epochs-zero", "compare", {}, [*CP, "--models", "MambaRec", "--epochs", "0"], "--epochs must be at least 1"),
    C("cmp-models-empty", "compare", {}, [*CP, "--models", ","], "--models is empty"),
    C("cmp-unknown-model", "compare", {}, [*CP, "--models", "SASRec,Mamba"], "Unknown model 'Mamba'"),
    C("cmp-seeds-not-integers", "compare", {}, [*CP, "--models", "SASRec", "--seeds", "1,x"], "--seeds must be comma-separated integers"),
    C("cmp-config-file-missing", "compare", {}, [*CP, "--models", "SASRec", "--config-files", "{tmp}/nope.yaml"], "does not exist"),
    C("cmp-model-config-malformed", "compare", {}, [*CP, "--models", "SASRec", "--model-config", "SASRec"], "--model-config must be MODEL=FILE"),
    C("cmp-bad-config-value", "compare", {}, [*CP, "--models", "SASRec", "--learning_rate=abc"], "learning_rate must be a number"),
]

TOOLS: dict[str, Callable] = {
    "movielens": movielens.main, "sequences": sequences.main, "kuairand": kuairand.main,
    "lfm1b": lfm1b.main, "recommend": recommend.main, "compare": compare.main,
}


def test_the_table_is_large_and_ids_unique():
    assert len(CASES) >= 60
    assert len({c.id for c in CASES}) == len(CASES)


# Runs every case in one fresh process, outside pytest's output capture: each CLI's main(argv) in
# the case's folder, SystemExit caught. Its stderr is captured at the file descriptor (fd 2 onto a
# temporary file, sys.stderr the real stream): code inside a call that swaps sys.stderr (colorama's
# wrapper, which RecBole's init_logger installs, stays bound to whatever stream was current) would
# lose a message sent to a StringIO, but not one sent to fd 2.
DRIVER = """
import json, os, sys, tempfile
sys.path.insert(0, os.environ["REPO"])
sys.path.insert(0, os.path.join(os.environ["REPO"], "tests"))
import test_bad_inputs as t
spec_file, out_file = sys.argv[1], sys.argv[2]
spec = json.load(open(spec_file))
out = {}
for item in spec:
    case = next(c for c in t.CASES if c.id == item["id"])
    os.chdir(item["dir"])
    sys.argv = [case.tool, *item["args"]]
    sys.stderr = sys.__stderr__
    sys.stderr.flush()
    with tempfile.TemporaryFile() as capture:
        saved = os.dup(2)
        os.dup2(capture.fileno(), 2)
        try:
            code = (t.run_recbole_main() if case.tool == "run_recbole" else t.TOOLS[case.tool])(item["args"])
        except SystemExit as exc:
            code = exc.code
        finally:
            for stream in (sys.stderr, sys.__stderr__):
                try:
                    stream.flush()
                except (AttributeError, ValueError):
                    pass
            os.dup2(saved, 2)
            os.close(saved)
        capture.seek(0)
        text = capture.read().decode("utf-8", "replace")
    if case.tool == "run_recbole":
        text = str(code) + text
        code = 1 if code not in (0, None) else 0
    out[case.id] = {"code": code if isinstance(code, int) else 1, "text": text}
json.dump(out, open(out_file, "w"))
"""


@pytest.fixture(scope="module")
def outcomes(tmp_path_factory):
    """{case id: (exit code, stderr, files before)} for every case, from one driver process."""
    root = tmp_path_factory.mktemp("bad")
    spec, before = [], {}
    for case in CASES:
        if case.needs_no_cuda and torch.cuda.is_available():
            continue
        d = root / case.id
        d.mkdir()
        for name, data in case.files.items():
            path = d / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        before[case.id] = {p for p in d.rglob("*")}
        spec.append({"id": case.id, "dir": str(d), "args": [a.replace("{tmp}", str(d)) for a in case.args]})
    (root / "spec.json").write_text(json.dumps(spec))
    (root / "driver.py").write_text(DRIVER)
    env = {**os.environ, "REPO": str(ROOT), "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, str(root / "driver.py"), str(root / "spec.json"), str(root / "out.json")],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((root / "out.json").read_text())
    return {k: (v["code"], v["text"], before[k], root / k) for k, v in results.items()}


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, outcomes):
    if case.needs_no_cuda and torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    code, text, before, folder = outcomes[case.id]
    assert code != 0
    expected = case.message.replace("{tmp}", str(folder))
    assert expected in text, text
    assert "Traceback" not in text
    # nothing written: no new file anywhere (empty folders aside), no temporaries
    created = [p for p in folder.rglob("*") if p not in before and p.is_file()
               and "log" not in p.parts and not p.name.endswith(".log")]
    assert created == [], created


@pytest.mark.slow
def test_kill_9_during_a_conversion_leaves_nothing_and_the_rerun_cleans_up(tmp_path):
    rows = "".join(f"{u}::{i}::3::{978300000 + i}\n" for u in range(1, 3001) for i in range(1, 301))
    src = tmp_path / "ratings.dat"
    src.write_text(rows)
    out = tmp_path / "out" / "ml"
    cmd = [sys.executable, "-m", "dataset_prep.movielens", "--input", str(src), "--output-dir", str(out), "--no-progress"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until the .inter temporary holds data, then kill
        tmps = list(out.glob(".ml.inter.tmp-*")) if out.is_dir() else []
        if tmps and tmps[0].stat().st_size > 1 << 20:
            break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "ml.inter").exists()
    assert list(out.glob(".ml.inter.tmp-*")), "the kill came after the write"
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert (out / "ml.inter").is_file()
    assert sorted(p.name for p in out.iterdir()) == ["ml.inter"]  # the dead run's temporary is gone
    assert sum(1 for _ in open(out / "ml.inter")) == 3000 * 300 + 1
