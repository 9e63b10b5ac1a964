"""What ``rda-ext fit`` and ``rda-ext score`` write: the keys of their result .npz files and the
files of a fit's result folder, each with what it holds. The writers (results.py,
result_folder.py) take their arrays by these keys and in this order, and the command line's help
is made from them, so that neither can name a key the other does not."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Key:
    name: str
    holds: str


L = Key("L", "the part of X that the autoencoder reconstructs, in X's units")
S = Key("S", "the sparse part, X - L")
SCORES = Key("scores", "the outlier score of each row")
LABELS = Key("labels", "1 for a row that scores above threshold (an outlier), else 0")
LAM = Key("lam", "the lam of the last proximal step")
THRESHOLD = Key("threshold", "the score above which a row is an outlier")
HISTORY = Key("history", "one row per outer iteration, in the columns named by history_columns")
HISTORY_COLUMNS = Key("history_columns", "the names of the columns of history")
N_ROWS = Key("rows", "the number of rows (result.json only)")
WORLD_SIZE = Key("world_size", "the number of processes that fitted them (result.json only)")
BACKEND = Key("backend", "their torch.distributed backend, null for one process (result.json only)")

# One row per row of X: gathered from every rank into the .npz; in a folder, each rank writes its
# own rows into the key's array file.
ROWS = (L, S, SCORES, LABELS)
FIT_NPZ = (*ROWS, LAM, THRESHOLD, HISTORY, HISTORY_COLUMNS)
RESULT_JSON = "result.json"
FIT_JSON = (LAM, THRESHOLD, HISTORY_COLUMNS, HISTORY, N_ROWS, WORLD_SIZE, BACKEND)
SCORE_NPZ = (SCORES, LABELS, THRESHOLD)


def array_file(name: str) -> str:
    """The file of a result folder that holds the array of key ``name``."""
    return f"{name}.npy"


def pick(keys: tuple[Key, ...], values: dict) -> dict:
    """The values of ``keys``, in their order."""
    return {key.name: values[key.name] for key in keys}


def _names(keys) -> str:
    return ", ".join(key.name for key in keys)


def fit_out_help() -> str:
    files = ", ".join(array_file(key.name) for key in ROWS)
    return (f"result .npz: {_names(FIT_NPZ)}; or a folder (a path ending in /): {files} and {RESULT_JSON} "
            f"({_names(FIT_JSON)}), which the ranks of a torchrun job write their rows into")


def fit_description() -> str:
    keys = dict.fromkeys((*FIT_NPZ, *FIT_JSON))
    return "What the result holds: " + "; ".join(f"{key.name}: {key.holds}" for key in keys) + "."


def score_out_help() -> str:
    return f"result .npz: {_names(SCORE_NPZ)}"
