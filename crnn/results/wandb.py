"""Reading the runs of a W&B project (group) as :class:`~crnn.results.read.Job` records."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from crnn.results.read import Job, TablesError, model_key, recipe_key

__all__ = ["read_wandb"]

_STATES = {
    "finished": "completed",
    "failed": "failed",
    "crashed": "failed",
    "killed": "interrupted",
    "running": "running",
}


def _api() -> Any:
    from crnn.runtime import wandb_mode

    mode = wandb_mode(None)
    if mode != "online":
        raise TablesError(
            f"W&B is {mode} here (WANDB_MODE={mode!r} or no credentials), so its API cannot be reached. "
            "Log in (`wandb login` or WANDB_API_KEY) on a machine with network, or build the tables "
            "from the sweep folders: crnn-tables outputs/multirun/<date>/<time>"
        )
    try:
        import wandb

        return wandb.Api(timeout=30)
    except Exception as err:  # noqa: BLE001
        raise TablesError(f"cannot reach the W&B API: {err}") from err


def read_wandb(project: str, group: str | None = None, api: Any = None) -> list[Job]:
    """The runs of W&B ``entity/project`` (only those of ``group`` if given), as jobs.

    Needs W&B online (credentials, network); offline it raises :class:`TablesError` saying so.
    ``api`` is a ``wandb.Api``-like object (tests).
    """
    try:
        api = api if api is not None else _api()
        runs = list(api.runs(project, filters={"group": group} if group else None))
    except TablesError as err:
        raise TablesError(f"--wandb {project}: {err}") from None
    except Exception as err:  # noqa: BLE001 - network / auth / unknown project
        raise TablesError(f"--wandb {project} (group {group!r}): the W&B API failed: {err}") from err
    jobs = []
    for run in runs:
        config = dict(run.config or {})
        summary = dict(getattr(run.summary, "_json_dict", None) or dict(run.summary or {}))
        # crnn-train's layout (crnn.callbacks.record.logger_config): the choices as top-level
        # strings, the resolved config under "cfg"; older runs: "choices" and the nodes at the top
        nodes = config["cfg"] if isinstance(config.get("cfg"), Mapping) else config
        choices = dict(config.get("choices") or {})
        for key in ("data", "backbone", "rnn", "cell", "head"):
            if choices.get(key) is None and isinstance(config.get(key), str):
                choices[key] = config[key]
        rnn = nodes.get("rnn") if isinstance(nodes.get("rnn"), Mapping) else {}
        choices.setdefault("cell", rnn.get("cell"))
        state = getattr(run, "state", "unknown")
        status = _STATES.get(state, state)
        run_id = str(getattr(run, "id", "?"))
        jobs.append(
            Job(
                source=f"wandb:{project}/{run_id}",
                status=status,
                run_id=run_id,
                choices=choices,
                seed=config.get("seed", nodes.get("seed")),
                model=model_key(choices, nodes),
                recipe=recipe_key(nodes),
                metrics={k: v for k, v in summary.items() if not str(k).startswith("_")},
                error=None if status == "completed" else f"W&B state {state}",
            )
        )
    if not jobs:
        raise TablesError(f"--wandb {project}: no runs" + (f" in group {group!r}" if group else ""))
    return jobs
