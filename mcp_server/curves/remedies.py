"""What to do about each diagnosis: advice in words for any run, or the trainer spec's own.

`findings.diagnose` judges curves from any trainer, a user's own script included, so the
generic remedies here name no command-line flag: they say what to change, with the figure
the users' training guides (the seeds) give for it. A trainer spec knows its flags and may
give its own remedy per rule (its `[remedies]` table); `remedy` prefers that one. This module
is stdlib-only: the spec loader imports it to check a spec's rule ids.
"""

from __future__ import annotations

from collections.abc import Mapping

REMEDIES = {
    "nonfinite": "lower the learning rate (seed 001: to 1e-4), keep gradient clipping on (seed 003: at 0.5), "
    "check the data for NaN/inf; resume from a checkpoint before that step",
    "lr_too_high": "the LR is too high (seed 001: loss oscillates wildly, doesn't converge): lower it 3-10x "
    "(seed 001: 1e-3 default, 1e-4 for very large models), add warmup (seed 003: 3 epochs linear) "
    "and gradient clipping (0.5); restart rather than resume",
    "spike": "check the batch at that step; if spikes recur, lower the LR, add warmup (seed 003: 3 epochs linear) "
    "or clip gradients harder (0.5)",
    "divergence": "the LR is too high (seed 001: loss oscillates, does not converge): lower it 3-10x, add warmup and "
    "gradient clipping; restart from the checkpoint at the best step",
    "plateau": "stop and keep the best checkpoint, or decay the LR; if val plateaus without overfitting, "
    "increase depth (seed 001)",
    "overfitting": "seed 001, in order: augment the data, raise dropout (0.2), raise weight decay (0.05), more data, "
    "a smaller model; keep the best-val checkpoint (early stopping)",
    "underfitting": "seed 001: bigger model (dim, depth), lower dropout, more epochs, lower weight decay",
    "chance": "accuracy at chance (seed 001, 1/5 actions): check data generation (are labels/paths valid?), "
    "check the encoding (tokens correct?), try a smaller model first to verify the pipeline",
    "lr_too_low": "seed 003 (LR 1e-5 too conservative): raise the LR 3-10x (1e-5 -> 5e-5) with 3 epochs of linear "
    "warmup and AdamW; check it on a quick run (5% data) first",
    "no_progress": "verify the pipeline: the model should overfit a tiny subset; check labels, loss wiring and "
    "that the LR is not 0 (seed 001: try a smaller model first)",
}
RULE_IDS = tuple(REMEDIES)  # every rule `diagnose` has: a spec's [remedies] table may name these only
REMEDY_MAX_CHARS = 300  # a spec's remedy: about the generic ones' length, so 8 findings stay in budget

# Reinforcement learning (seed 004, PPO): a reward that stalls is about exploration, not capacity.
RL_REMEDY = (
    "PPO (seed 004): check entropy has not collapsed (entropy 0.1 -> 0.001 schedule, keep a floor), "
    "a learning rate of 3e-4, more updates; compare several seeds"
)
RL_RULES = ("plateau", "no_progress", "divergence")  # the rules whose RL cause differs from supervised learning


def remedy(rule: str, rl: bool, given: Mapping[str, str] | None = None) -> str:
    """The remedy for `rule`: the trainer spec's (`given`, by rule id) if it has one, else the
    PPO advice for an RL metric (`rl`) where it differs, else the generic advice."""
    if given and rule in given:
        return given[rule]
    if rl and rule in RL_RULES:
        return RL_REMEDY
    return REMEDIES[rule]
