"""The record of a resumable write: what an in-progress folder is being filled with.

A resumable job (image shards, token shards, a sample set) writes into a folder that survives a kill,
and a re-run keeps what is finished there. That is only right if the re-run would write the same
thing, so the folder keeps a description of it (:data:`PARTIAL`), and a run that wants something
else is refused instead of mixing the two.
"""

from __future__ import annotations

import json
import os

from barlab.errors import ConfigError
from barlab.utils.io import atomic_write_json

PARTIAL = "partial.json"


def check_partial(folder: str | os.PathLike, wanted: dict, knob: str = "out_dir") -> None:
    """Refuse an in-progress folder that was being filled with something else; else mark it as ours.

    ``wanted`` (JSON-able) describes what the write puts into ``folder``; it is kept there as
    :data:`PARTIAL` (written atomically, so that ranks starting together read it whole) and compared on
    every later start. Raises ConfigError naming ``knob`` if an earlier write wanted something else.
    """
    path = os.path.join(folder, PARTIAL)
    if not os.path.isfile(path):
        atomic_write_json(path, wanted)
        return
    try:
        with open(path) as f:
            found = json.load(f)
    except (OSError, ValueError) as err:
        found = {"unreadable": repr(err)}
    if found != json.loads(json.dumps(wanted)):
        raise ConfigError(knob, f"{folder} holds an unfinished write of {found}, not {wanted}",
                          fix=f"delete {folder}, or re-run with the same settings")
