"""`torch.load` of a file that may come from anywhere: tensors and plain containers only.

`weights_only=True` refuses any pickle that imports or calls something, but its error reads the same
for a file that would run code and for one that is not a torch file at all, and it advises
`weights_only=False`, the one thing not to do. `load` tells the two apart (torch names the global it
refused; a plain pickle is scanned for the opcodes that import or call) and says which, in one line.
"""
from __future__ import annotations

import pickle
import pickletools
import warnings
from pathlib import Path

import torch

CODE_OPCODES = {"GLOBAL", "STACK_GLOBAL", "INST", "OBJ", "REDUCE", "NEWOBJ", "NEWOBJ_EX", "BUILD", "EXT1", "EXT2",
                "EXT4"}


class RefusedFile(ValueError):
    """`runs_code`: the file would import or call something; else it cannot be read (`reason`)."""

    def __init__(self, runs_code: bool, reason: str):
        super().__init__(reason)
        self.runs_code, self.reason = runs_code, reason


def imports_or_calls(path: Path) -> bool:
    """Whether `path` is a whole, well-formed plain pickle with an opcode that imports or calls (False for
    anything else: other bytes can look like opcodes until the first one that is not)."""
    try:
        with open(path, "rb") as f:
            names = [op.name for op, _, _ in pickletools.genops(f)]
    except Exception:  # not a pickle, or one cut short: nothing to run
        return False
    return bool(CODE_OPCODES.intersection(names))


def first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text and not isinstance(error, KeyError) else "not a torch.save file"


def load(path: str | Path):
    """The object in `path`, loaded with `weights_only=True` on the CPU; RefusedFile when refused."""
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols it may not read: the error says it
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, KeyError, ValueError) as e:
        if "unsupported global" in str(e).lower() or imports_or_calls(Path(path)):
            raise RefusedFile(True, "it would run code") from None
        if str(e).startswith("Weights only load failed"):  # torch's advice is not the reason
            reason = next((line.strip() for line in str(e).splitlines() if line.strip().startswith("Unsupported")),
                          "not a torch.save file")
            raise RefusedFile(False, reason) from None
        raise RefusedFile(False, first_line(e)) from None
