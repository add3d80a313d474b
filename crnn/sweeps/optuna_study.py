"""A persistent Optuna study where ``n_trials`` is the study's total, not a per-launch count.

Used by the sweeper ``hydra_plugins.crnn_sweepers.TotalTrialsOptunaSweeper``: before a launch, the
trials the study already holds are counted; a re-launch with the same ``n_trials`` runs only the
missing ones, a larger ``n_trials`` runs the difference.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

log = logging.getLogger("crnn.sweeps")


@dataclass(frozen=True)
class StudyProgress:
    finished: int  # COMPLETE or PRUNED trials: they count towards n_trials
    failed: int  # FAIL trials (including ones left RUNNING by a launch that was killed)
    existing: int  # every trial in the study: the next trial's number

    def to_run(self, n_trials: int) -> int:
        return max(0, n_trials - self.finished)


def study_progress(storage: str | None, study_name: str | None) -> StudyProgress:
    """Count the trials of the stored study (zero when it does not exist yet). Trials left RUNNING
    by an earlier launch that did not finish are marked FAIL: this launch replaces them."""
    import optuna
    from optuna.trial import TrialState

    if storage is None or study_name is None:
        return StudyProgress(0, 0, 0)
    try:
        study = optuna.load_study(study_name=study_name, storage=storage)
    except KeyError:  # optuna 2.x: no study of that name in the storage yet
        return StudyProgress(0, 0, 0)
    trials = study.get_trials(deepcopy=False)
    for trial in trials:
        if trial.state == TrialState.RUNNING:
            log.warning("trial %d was left running by an earlier launch: marked failed", trial.number)
            study._storage.set_trial_state(trial._trial_id, TrialState.FAIL)
    states = [t.state for t in study.get_trials(deepcopy=False)]
    finished = sum(s in (TrialState.COMPLETE, TrialState.PRUNED) for s in states)
    failed = sum(s == TrialState.FAIL for s in states)
    return StudyProgress(finished=finished, failed=failed, existing=len(states))
