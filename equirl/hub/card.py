"""The model card (README.md) of a pushed repo, with the Hub's metadata conventions.

The YAML front matter follows what every RL library on the Hub writes, so the Hub's widgets and
leaderboards read it: ``library_name``, ``tags`` (env id, reinforcement-learning,
deep-reinforcement-learning), and a ``model-index`` with one ``mean_reward`` result
``"mean +/- std"`` on the env id. Strings are written as JSON strings, which YAML reads verbatim.
"""
from __future__ import annotations

import json


def _q(text: str) -> str:
    return json.dumps(str(text))


def render_card(config: dict, results: dict | None, repo_id: str) -> str:
    agent_id = config["agent"]
    env_id = config["env"]["env_id"]
    training = config.get("training") or {}
    summary = (results or {}).get("summary", {})
    mean, std = summary.get("mean"), summary.get("std")
    lines = ["---", "library_name: equirl", "tags:"]
    for tag in (env_id, "reinforcement-learning", "deep-reinforcement-learning", "equirl", agent_id):
        lines.append(f"- {_q(tag)}")
    if mean is not None:
        lines += [
            "model-index:",
            f"- name: {_q(f'{agent_id}-{env_id}')}",
            "  results:",
            "  - task:",
            "      type: reinforcement-learning",
            "      name: reinforcement-learning",
            "    dataset:",
            f"      name: {_q(env_id)}",
            f"      type: {_q(env_id)}",
            "    metrics:",
            "    - type: mean_reward",
            f"      value: {_q(f'{mean:.2f} +/- {std:.2f}')}",
            "      name: mean_reward",
            "      verified: false",
        ]
    lines += ["---", "", f"# {agent_id} playing {env_id}", "",
              f"An equirl `{agent_id}` agent trained on `{env_id}`.",
              "The weights are safetensors and the config is plain JSON: loading runs no code from this repo.", "",
              "## Use", "", "```python", "import equirl", "", f"agent = equirl.load({_q(repo_id)})",
              "env = agent.make_env()            # the evaluation env recorded in config.json",
              "obs = env.reset(seed=0)", "actions = agent.act(obs, greedy=True)", "```", "",
              f"Evaluate it yourself: `equirl evaluate {repo_id}`.", ""]
    if results:
        protocol = results.get("protocol", {})
        lines += ["## Evaluation", "",
                  (f"Mean raw score **{mean:.2f} ± {std:.2f}** over {summary.get('episodes', '?')} full episodes "
                   f"(median {summary.get('median', float('nan')):.2f}, min {summary.get('min', float('nan')):.2f}, "
                   f"max {summary.get('max', float('nan')):.2f})."), "",
                  "Protocol: `" + json.dumps(protocol, sort_keys=True) + "`. Every episode's score, seed and env "
                  "setting is in `results.json`.", ""]
    lines += ["## Training", ""]
    if training.get("command"):
        lines += ["```bash", training["command"], "```", ""]
    wall = training.get("wall_seconds")
    if wall is not None and training.get("wall_seconds_from_step"):
        wall = f"{wall} (steps {training['wall_seconds_from_step']:,} on; the earlier ones were not timed)"
    total = training.get("total_steps")
    steps = training.get("steps_done", total)
    if isinstance(steps, int) and isinstance(total, int) and steps < total:
        # The weights come from a checkpoint short of the command's --steps (a run stopped or
        # copied there): say so, or the command above reads as what was trained.
        steps = f"{steps} (a checkpoint of the command's {total:,}: the run was stopped or copied there)"
    facts = [("agent steps", steps),
             ("wall time (s)", wall), ("hardware", training.get("hardware")),
             ("subnormal floats flushed to zero", _flush_history(training.get("flush_denormal"))),
             ("seed", config.get("seed")), ("equirl", (config.get("versions") or {}).get("equirl")),
             ("code revision", config.get("code_revision"))]
    lines += [f"- {name}: {value}" for name, value in facts if value is not None]
    lines += ["", "## Hyperparameters", "", "| name | value |", "|---|---|"]
    lines += [f"| {k} | `{v}` |" for k, v in sorted(config["hyperparameters"].items())]
    lines += ["", "## Citation", "", "```bibtex", "@article{schulman2017equivalence,",
              "  title={Equivalence Between Policy Gradients and Soft Q-Learning},",
              "  author={Schulman, John and Chen, Xi and Abbeel, Pieter},",
              "  journal={arXiv preprint arXiv:1704.06440},", "  year={2017}", "}", "```", ""]
    return "\n".join(lines)


def _flush_history(history) -> str | None:
    """config.json's ``training.flush_denormal`` ({"0": "off", "500000": "all threads"}) in words;
    None when absent or not of that shape."""
    if not isinstance(history, dict) or not history:
        return None
    try:
        steps = sorted((int(step), str(state)) for step, state in history.items())
    except (TypeError, ValueError):
        return None
    if len(steps) == 1:
        return steps[0][1]
    return "; ".join(f"{state} from step {step:,}" for step, state in steps)
