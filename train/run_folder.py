"""The output folder of a training run: one run at a time, no silent reuse, no partial checkpoint resumed, and a final
save that replaces the previous one whole.

- `RunLock`: a lock file that a second run into the same folder meets while the first is alive; a lock left by a
  run that died (its pid is gone on this host) is taken over.
- `check_output_dir`: a folder holding an earlier run is refused unless the run resumes or overwrites it.
- `resolve_checkpoint`: `--resume_from_checkpoint last` means the last *complete* checkpoint. The Trainer writes a
  checkpoint's `trainer_state.json` last, so a checkpoint whose state file is missing, unreadable or of another step
  was cut short (a kill, a full disk) and is skipped.
- `check_output_dir` also refuses to resume another folder's checkpoint into a folder that holds a run: the
  resumed run's final save would replace that run's model.
- `publish`: the final save is written to a staging folder and then moved into the output folder, so a save that
  fails half way (a full disk) leaves the previous model (config, weights, processor) as it was; a kill while the
  files are moved in leaves a folder without `config.json` (which no loader takes for a model), never one save's
  config beside the other's weights, and the next run into the folder completes the move (`finish_publish`).
"""

import json
import logging
import os
import re
import shutil
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".smartclip-train.lock"
STAGING_NAME = ".final-save.tmp"
READY_NAME = ".final-save.ready"  # a complete staged save, being moved into the output folder
MANIFEST_NAME = ".manifest.json"  # in READY_NAME: the names of the save's files, which are moved out one by one
TRAINER_STATE_NAME = "trainer_state.json"  # what the Trainer writes last into a checkpoint
_CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
# Weight files of a save: one left over from an earlier save of another layout (sharded vs single) would be loaded
# instead of, or mixed with, the new one.
_WEIGHT_FILE = re.compile(r"^(model|pytorch_model)(-\d+-of-\d+)?\.(safetensors|bin)(\.index\.json)?$")


# ----- lock -------------------------------------------------------------------------------------------------------


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


class RunLock:
    """`output_dir/.smartclip-train.lock` while a run writes into `output_dir` (use as a context manager).

    The lock file is created exclusively (`O_EXCL`) and holds the owner's pid, host and start time. A lock whose
    owner is gone (same host, no such pid) is taken over; any other lock, an unreadable one included, is an error.
    """

    def __init__(self, output_dir: str | os.PathLike):
        self.path = Path(output_dir, LOCK_NAME)

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # being written, or damaged
            return {}
        return holder if isinstance(holder, dict) else {}

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        for _ in range(2):  # a second try after removing a dead run's lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is None:
                    continue  # released in between
                pid = holder.get("pid")
                if holder.get("host") == record["host"] and isinstance(pid, int) and pid > 0 and not _pid_alive(pid):
                    logger.warning("Removing the lock of a run that is gone (pid %s, started %s): %s",
                                   pid, holder.get("started"), self.path)
                    self.path.unlink(missing_ok=True)
                    continue
                raise ValueError(
                    f"--output_dir {self.path.parent} is in use by another run (pid {pid or '?'} on "
                    f"{holder.get('host', '?')}, started {holder.get('started', '?')}); lock file {self.path}. "
                    "Choose another --output_dir, or delete the lock file if no run is using the folder."
                ) from None
            with os.fdopen(descriptor, "w") as lock_file:
                json.dump(record, lock_file)
            return
        raise ValueError(f"Could not take the lock {self.path}; delete it if no run is using the folder.")

    def release(self) -> None:
        if (self._holder() or {}).get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def __enter__(self) -> "RunLock":
        self.acquire()
        return self

    def __exit__(self, *exc_info) -> None:
        self.release()


# ----- checkpoints ------------------------------------------------------------------------------------------------


def checkpoint_step(path: str | os.PathLike) -> int | None:
    """N of a `checkpoint-N` folder name, else None."""
    match = _CHECKPOINT.match(Path(path).name)
    return int(match.group(1)) if match else None


def incomplete_reason(checkpoint: str | os.PathLike) -> str | None:
    """Why `checkpoint` was cut short, or None when it is complete."""
    state_file = Path(checkpoint, TRAINER_STATE_NAME)
    if not state_file.is_file():
        return f"no {TRAINER_STATE_NAME}"
    try:
        step = json.loads(state_file.read_text())["global_step"]
    except (OSError, ValueError, KeyError, TypeError) as error:
        return f"unreadable {TRAINER_STATE_NAME} ({type(error).__name__})"
    expected = checkpoint_step(checkpoint)
    if expected is not None and step != expected:
        return f"{TRAINER_STATE_NAME} is of step {step}"
    return None


def checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders of `output_dir`, by step."""
    folder = Path(output_dir)
    found = [path for path in folder.iterdir() if path.is_dir() and checkpoint_step(path) is not None] if folder.is_dir() else []
    return sorted(found, key=checkpoint_step)


def resolve_checkpoint(resume_from_checkpoint: str | bool | None, output_dir: str | os.PathLike) -> str | None:
    """The checkpoint folder to resume from: the last complete one of `output_dir` for `True` / `"last"`, the given
    folder (checked) for a path, None for no resume. Logs which one and which incomplete ones were skipped."""
    if resume_from_checkpoint in (None, False, "", "false", "False"):
        return None
    if resume_from_checkpoint not in (True, "last", "true", "True"):
        reason = incomplete_reason(resume_from_checkpoint) if Path(resume_from_checkpoint).is_dir() else "no folder"
        if reason is not None:
            raise ValueError(
                f"--resume_from_checkpoint {resume_from_checkpoint}: not a complete checkpoint ({reason}); "
                "a run killed while saving leaves such a folder. Use `last` to resume from the last complete one."
            )
        logger.info("Resuming from %s.", resume_from_checkpoint)
        return str(resume_from_checkpoint)
    skipped = []
    for checkpoint in reversed(checkpoints(output_dir)):
        reason = incomplete_reason(checkpoint)
        if reason is None:
            logger.info("Resuming from %s%s.", checkpoint,
                        f" (skipped incomplete {', '.join(skipped)})" if skipped else "")
            if skipped:
                logger.warning("Skipped incomplete checkpoints (cut short while being saved): %s", ", ".join(skipped))
            return str(checkpoint)
        skipped.append(f"{checkpoint.name}: {reason}")
    raise ValueError(
        f"--resume_from_checkpoint last: no complete checkpoint in {output_dir}"
        + (f" (incomplete: {'; '.join(skipped)})." if skipped else " (no checkpoint-N folder).")
    )


# ----- the folder -------------------------------------------------------------------------------------------------


def check_output_dir(output_dir: str | os.PathLike, overwrite: bool, checkpoint: str | None) -> None:
    """Refuses a folder that holds an earlier run unless this run resumes one of its checkpoints (`checkpoint`, as
    `resolve_checkpoint` gave it) or `overwrite` is set; first completes a final save that a kill cut short.

    With `overwrite`, the earlier run's `checkpoint-N` folders are removed, so that neither checkpoint rotation nor
    a later `--resume_from_checkpoint last` picks up a checkpoint of the other run; its other files are replaced by
    this run's as they are written.
    """
    folder = Path(output_dir)
    if not folder.is_dir():
        return
    finish_publish(folder)
    used = sorted(path.name for path in folder.iterdir() if not path.name.startswith(LOCK_NAME))
    if not used or (checkpoint is not None and Path(checkpoint).resolve().parent == folder.resolve()):
        return
    if not overwrite:
        shown = ", ".join(used[:5]) + (f" and {len(used) - 5} more" if len(used) > 5 else "")
        if checkpoint is not None:
            raise ValueError(
                f"--output_dir {folder} holds another run ({shown}) and --resume_from_checkpoint {checkpoint} is not "
                "one of its checkpoints: the resumed run would replace that run's model. Resume into a new "
                "--output_dir, or pass --overwrite_output_dir to replace it."
            )
        raise ValueError(
            f"--output_dir {folder} already holds files ({shown}). Pass --overwrite_output_dir to train into it "
            "anyway (its checkpoints are removed), --resume_from_checkpoint last to continue its run, or choose "
            "another --output_dir."
        )
    stale = checkpoints(folder)
    if stale:
        logger.warning("--overwrite_output_dir: removing the earlier run's %s", ", ".join(p.name for p in stale))
        for checkpoint in stale:
            shutil.rmtree(checkpoint)


def publish(staging: str | os.PathLike, output_dir: str | os.PathLike) -> None:
    """Moves the complete save in `staging` into `output_dir` (`finish_publish`), replacing the previous one.

    Until `staging` is renamed to `READY_NAME` (one rename, with the list of its files), `output_dir` keeps the
    previous save whole; the renames take microseconds, where writing the weights takes as long as the disk needs
    (and fails when it is full).
    """
    staging, output_dir = Path(staging), Path(output_dir)
    finish_publish(output_dir)  # an earlier save that a kill cut short goes in first, and is then replaced
    names = sorted(path.name for path in staging.iterdir())
    Path(staging, MANIFEST_NAME).write_text(json.dumps(names))
    os.replace(staging, output_dir / READY_NAME)
    finish_publish(output_dir)


def finish_publish(output_dir: str | os.PathLike) -> None:
    """Moves a complete save waiting in `output_dir/READY_NAME` into `output_dir`, each entry by one rename; removes
    weight files of an earlier save that it does not have, then the ready folder. Nothing to do without one.

    The old `config.json` goes first and the new one comes last: between the two, a loader finds no config and
    refuses the folder, rather than pairing one save's config with the other's weights. Safe to call again after a
    kill at any point.
    """
    output_dir = Path(output_dir)
    ready = output_dir / READY_NAME
    if not ready.is_dir():
        return
    names = set(json.loads((ready / MANIFEST_NAME).read_text()))
    if (ready / "config.json").is_file():
        (output_dir / "config.json").unlink(missing_ok=True)
    for path in sorted(ready.iterdir(), key=lambda p: p.name == "config.json"):
        if path.name == MANIFEST_NAME:
            continue
        target = output_dir / path.name
        if path.is_dir() and target.is_dir():
            shutil.rmtree(target)
        os.replace(path, target)
    for path in output_dir.iterdir():
        if _WEIGHT_FILE.match(path.name) and path.name not in names:
            path.unlink()
    (ready / MANIFEST_NAME).unlink()
    ready.rmdir()


__all__ = [
    "LOCK_NAME", "READY_NAME", "STAGING_NAME", "RunLock", "check_output_dir", "checkpoints", "checkpoint_step",
    "finish_publish", "incomplete_reason", "publish", "resolve_checkpoint",
]
