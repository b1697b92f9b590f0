"""What a process killed with SIGKILL leaves behind, and the sweep that removes it.

Files and folders that outlive a crash (shared-memory rings, the describe worker's folder)
carry the pid of the process that made them in their name; the next start removes those of
this user whose process no longer runs.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from pathlib import Path


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (of any user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_dead(folder: Path, glob: str, name: re.Pattern[str],
               remove: Callable[[Path], None]) -> int:
    """`remove` every entry of `folder` matching `glob` whose whole name matches `name`
    (group 1: the maker's pid), owned by this user, not a symlink, whose maker is gone.
    Returns how many went."""
    removed = 0
    for path in folder.glob(glob):
        match = name.fullmatch(path.name)
        if match is None:
            continue
        try:
            info = path.lstat()
            if (path.is_symlink() or info.st_uid != os.getuid()
                    or pid_alive(int(match.group(1)))):
                continue
            remove(path)
            removed += 1
        except OSError:
            continue  # another process swept it first, or it is not ours to remove
    return removed
