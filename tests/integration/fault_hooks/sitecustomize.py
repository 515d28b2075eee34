"""Test-only fault injection for `capsgan` subprocesses (tests/integration/test_faults.py).

Python imports `sitecustomize` at start-up from the path; the tests put this folder first on
PYTHONPATH and describe the faults in the CAPSGAN_FAULTS environment variable (JSON):
  {"nan_d_updates": [2, 3]}   D's loss is NaN on these D updates (0-based), so their gradients are
  {"wandb_fail": "init"}      wandb.init raises, as when W&B is unreachable at start
  {"wandb_fail": 2}           Run.log raises from its 3rd call on (W&B failing mid-run)
  {"kill_after_eval": {"run": "dcgan", "step": 30}}  SIGKILL once the loop evaluated that step of that run
Nothing here runs unless the variable is set.
"""

import json
import os

_FAULTS = json.loads(os.environ.get("CAPSGAN_FAULTS", "{}"))

if "nan_d_updates" in _FAULTS:
    from capsgan_dist import losses

    _d_loss, _bad, _calls = losses.d_loss, set(_FAULTS["nan_d_updates"]), [0]

    def _nan_d_loss(*args, **kwargs):
        loss = _d_loss(*args, **kwargs)
        i, _calls[0] = _calls[0], _calls[0] + 1
        return loss * float("nan") if i in _bad else loss

    losses.d_loss = _nan_d_loss

if "wandb_fail" in _FAULTS:
    import wandb
    from wandb.sdk import wandb_run

    if _FAULTS["wandb_fail"] == "init":
        def _no_init(*args, **kwargs):
            raise ConnectionError("injected: api.wandb.ai unreachable")

        wandb.init = _no_init
    else:
        _log, _ok = wandb_run.Run.log, int(_FAULTS["wandb_fail"])
        _n = [0]

        def _failing_log(self, *args, **kwargs):
            _n[0] += 1
            if _n[0] > _ok:
                raise ConnectionError("injected: W&B backend went away")
            return _log(self, *args, **kwargs)

        wandb_run.Run.log = _failing_log

if "kill_after_eval" in _FAULTS:  # {"run": "<part of the run folder>", "step": N}: SIGKILL right after that eval
    import signal

    from capsgan_dist.metrics import evaluate

    _call, _where = evaluate.LoopEval.__call__, _FAULTS["kill_after_eval"]

    def _eval_then_die(self, G, step, tracker):
        _call(self, G, step, tracker)
        if step == _where["step"] and _where["run"] in str(self.cfg.train.run_dir):
            os.kill(os.getpid(), signal.SIGKILL)

    evaluate.LoopEval.__call__ = _eval_then_die
