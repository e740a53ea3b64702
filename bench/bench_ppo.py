"""Benchmark the PPO gridworld trainer: throughput by phase, and learning against a random policy.

Usage:
    python bench/bench_ppo.py                      # both parts: throughput, then 3 seeds x 2 modes
    python bench/bench_ppo.py --skip-learning      # throughput only (about a minute)
    python bench/bench_ppo.py --seeds 1 2 --updates 100

Part 1, throughput at 192 envs x 128 steps (the trainer's defaults), measured in this process:
env only (random actions, no network), rollout (env + policy sampling), update (4 epochs of PPO
minibatches over one rollout, in samples/s) and end to end (the trainer's own --benchmark mode:
rollout + GAE + update, the first, warm-up update excluded). Each figure is the median of
--repeats; wall time and this process's CPU time are both printed, because on a shared machine
wall time also measures the neighbours.

Part 2, learning: for each seed, one real training run of `-m ground_truth,proxy` (subprocess,
--updates per mode, the budget of experiments 011/012), then the table the trainer's summaries
give: food and poison per evaluation episode (argmax, mortal worlds), the same for a uniform random
policy in the same worlds, and the ratio. Targets: ground_truth eats >= 3x the random policy's
food; proxy eats more poison per episode than ground_truth (the Goodhart effect).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "trainers"))
import gridworld_env as world  # noqa: E402
import ppo_gridworld as ppo  # noqa: E402
from trainkit import MetricsStream, StopFlag  # noqa: E402


def timed(fn, repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``fn()`` over ``repeats`` calls, after one warm-up call."""
    fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def throughput(mode: str, threads: int, repeats: int) -> None:
    """Prints env-only, rollout, update and end-to-end rates for one mode."""
    torch.set_num_threads(threads)
    cfg, _ = ppo.load_config(None)
    p = cfg["ppo"]
    n, steps = p["n_envs"], p["steps_per_env"]
    batch = n * steps
    env = world.make_env(mode, n, cfg, "cpu", seed=0)
    model = ppo.ActorCritic(env.obs_dim, p["hidden_size"], hidden_layers=p["hidden_layers"])
    params = list(model.parameters())
    opt = torch.optim.Adam(params, lr=p["learning_rate"], eps=1e-5, fused=True)
    actions = torch.randint(0, len(world.MOVES), (steps, n))
    state = {"obs": env.observe()}
    obs_buf = torch.empty(steps, n, env.obs_dim)  # (T, N, D), reused like the trainer does

    def env_only() -> None:
        for t in range(steps):
            env.step(actions[t])

    def rollout() -> None:
        state["buf"], state["obs"] = ppo.collect_rollout(model, env, state["obs"], obs_buf, p["gamma"], amp=False)

    def update() -> None:
        adv, ret = ppo.gae(state["buf"], p["gamma"], p["gae_lambda"])
        ppo.ppo_update(model, params, opt, state["buf"], adv, ret, p, 0.2, 0.01, amp=False)

    print(f"\n== throughput: mode {mode}, {n} envs x {steps} steps = {batch:,} per rollout, {threads} thread(s) ==")
    print(f"{'phase':<12} {'wall s':>8} {'cpu s':>8} {'per wall s':>12} {'per cpu s':>12}")
    for name, fn in (("env only", env_only), ("rollout", rollout), ("update", update)):
        wall, cpu = timed(fn, repeats)
        print(f"{name:<12} {wall:8.3f} {cpu:8.3f} {batch / wall:>12,.0f} {batch / cpu:>12,.0f}")
    print("(env only and rollout: env steps; update: samples through 4 epochs of minibatches)")

    updates = max(3, repeats + 1)
    args = ppo.parse_args(["-m", mode, "-u", str(updates), "-b", "--device", "cpu", "--threads", str(threads)])
    stop = StopFlag()
    try:
        w, c = time.perf_counter(), time.process_time()
        _, summaries = ppo.train(args, MetricsStream(None), stop)
        wall, cpu = time.perf_counter() - w, time.process_time() - c
    finally:
        stop.restore()
    t = summaries[0]["throughput"]
    print(
        f"end to end   trainer --benchmark, {updates} updates: {t['env_steps_per_s']:,.0f} env steps/s wall "
        f"(rollout {t['rollout_steps_per_s']:,.0f}/s, update {t['update_samples_per_s']:,.0f} samples/s); "
        f"whole call {updates * batch / cpu:,.0f} steps per CPU-second ({wall:.1f}s wall, {cpu:.1f}s CPU, "
        f"incl. start-up)"
    )
    print("target: >= 100,000 env steps/s end to end")


def learning(seeds: list[int], updates: int) -> None:
    """Trains ground_truth and proxy per seed in a real subprocess and prints the evaluation table."""
    print(f"\n== learning: {updates} updates per mode ({updates * 192 * 128:,} env steps), seeds {seeds} ==")
    rows = []
    for seed in seeds:
        with tempfile.TemporaryDirectory() as out:
            cmd = [
                sys.executable,
                str(ROOT / "trainers" / "ppo_gridworld.py"),
                "-m",
                "ground_truth,proxy",
                "-u",
                str(updates),
                "--seed",
                str(seed),
                "--device",
                "cpu",
                "--output-dir",
                out,
            ]
            subprocess.run(cmd, check=True, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL)
            for path in sorted(Path(out, "logs").glob("*_summary.json")):
                s = json.loads(path.read_text())
                rows.append((s["mode"], seed, s["eval"], s["random_baseline"], s["wall_s"], s["cpu_s"]))
    print(
        f"{'mode':<14} {'seed':>4} {'food/ep':>8} {'poison/ep':>9} {'return':>7} {'died':>5} "
        f"{'rand food':>9} {'vs random':>9} {'food/step vs rand':>17} {'train wall':>10} {'cpu':>6}"
    )
    for mode, seed, ev, rnd, wall, cpu in sorted(rows):
        # Food per step alive: the ratio without the credit for outliving the random agent.
        per_step = (ev["food_per_episode"] / ev["steps_per_episode"]) / (
            rnd["food_per_episode"] / rnd["steps_per_episode"]
        )
        print(
            f"{mode:<14} {seed:>4} {ev['food_per_episode']:8.1f} {ev['poison_per_episode']:9.1f} "
            f"{ev['return']:7.1f} {ev['death_rate']:5.0%} {rnd['food_per_episode']:9.1f} "
            f"{ev['food_per_episode'] / rnd['food_per_episode']:8.1f}x {per_step:16.1f}x {wall:9.0f}s {cpu:5.0f}s"
        )
    by = {(m, s): ev for m, s, ev, *_ in rows}
    gt_ok = [by[("ground_truth", s)]["food_vs_random"] >= 3 for s in seeds]
    goodhart = [by[("proxy", s)]["poison_per_episode"] > by[("ground_truth", s)]["poison_per_episode"] for s in seeds]
    print(
        f"ground_truth >= 3x random food: {sum(gt_ok)}/{len(seeds)} seeds; "
        f"proxy eats more poison than ground_truth: {sum(goodhart)}/{len(seeds)} seeds"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--mode", default="ground_truth", help="mode for the throughput part")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads for the throughput part")
    p.add_argument("--repeats", type=int, default=5, help="timed repeats per phase (median reported)")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds for the learning part")
    p.add_argument("--updates", type=int, default=200, help="PPO updates per mode in the learning part")
    p.add_argument("--skip-throughput", action="store_true", help="only the learning part")
    p.add_argument("--skip-learning", action="store_true", help="only the throughput part")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} default threads, CPU only")
    if not args.skip_throughput:
        throughput(args.mode, args.threads, args.repeats)
    if not args.skip_learning:
        learning(args.seeds, args.updates)


if __name__ == "__main__":
    main()
