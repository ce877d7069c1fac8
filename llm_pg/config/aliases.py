"""Old names of config keys, kept for one release (issue 25), read as their new names wherever a config is read.

    old name               new name             why
    grpo.epsilon           ppo.clip_eps         grpo is ppo's clipped-ratio loss with group advantages (verl's view):
    grpo.epsilon_high      ppo.clip_eps_high    one knob, one name, in the ppo: section that both algorithms read
    grpo.num_iterations    ppo.epochs

- A config file or mapping (YAML, `config_from_dict`) and the dotted overrides (`--set`, compare arms) are each one
  layer: an old name alone is read as its new name with one warning line; an old name and its new name in the same
  layer at different values are one ConfigError naming both. Overrides still win over the file, whichever name
  either uses.
- A config saved by an earlier llm_pg (config.yaml, config_history.jsonl) holds every field of both sections, so
  its two names disagree by design (ppo.epochs: 2 beside grpo.num_iterations: 1). It is recognized by holding
  them all and read as that version ran it (`_upgrade_saved`): for a grpo run the grpo.* values, with what grpo
  then ignored (ppo.num_minibatches, ppo.target_kl, ppo.dual_clip) set to what it took; for any other run the ppo.*
  values.
"""

from __future__ import annotations

import logging

from llm_pg.errors import ConfigError

logger = logging.getLogger(__name__)

ALIASES = {"grpo.epsilon": "ppo.clip_eps", "grpo.epsilon_high": "ppo.clip_eps_high",
           "grpo.num_iterations": "ppo.epochs"}

# Every field the ppo: and grpo: sections had before issue 25: a config holding them all was saved by llm_pg.
EARLIER_PPO_FIELDS = ("epochs", "num_minibatches", "clip_eps", "dual_clip", "target_kl", "use_critic", "clip_eps_high")
EARLIER_GRPO_FIELDS = ("scale_rewards", "num_iterations", "epsilon", "epsilon_high")
# What grpo of earlier versions took whatever the ppo: section said (null: the algorithm's default, 1 minibatch).
EARLIER_GRPO_IGNORED = {"num_minibatches": None, "target_kl": 0.0, "dual_clip": 0.0}


def canonical_key(key: str) -> str:
    """'grpo.epsilon' -> 'ppo.clip_eps'; any other dotted key as it is."""
    return ALIASES.get(key, key)


def read_old_names(values: dict, where: str = "", quiet: bool = False) -> dict:
    """A config mapping with every old name (ALIASES) moved to its new name; `values` itself is not changed.

    where prefixes the error ('--config x.yaml: '); quiet drops the warning line (comparisons of saved configs)."""
    if _saved_by_earlier_version(values):
        upgraded = _upgrade_saved(values)
        if not quiet:
            logger.warning("%sa config saved by an earlier llm_pg: grpo.epsilon, grpo.epsilon_high and "
                           "grpo.num_iterations are now ppo.clip_eps, ppo.clip_eps_high and ppo.epochs; read as "
                           "that version ran it", where)
        return upgraded
    values, used = dict(values), []
    for old, new in ALIASES.items():
        (old_section, old_field), (new_section, new_field) = old.split("."), new.split(".")
        section = values.get(old_section)
        if not isinstance(section, dict) or old_field not in section:
            continue
        target = values.get(new_section, {})
        if not isinstance(target, dict):
            continue  # build_dataclass reports a section that is not a mapping
        value = section[old_field]
        if new_field in target and target[new_field] != value:
            raise ConfigError(f"{where}{old}: {value!r} and {new}: {target[new_field]!r} set one knob to two values; "
                              f"{old} is the old name of {new}: keep only {new}")
        values[old_section] = {k: v for k, v in section.items() if k != old_field}
        values[new_section] = {**target, new_field: value}
        used.append(old)
    if used and not quiet:
        logger.warning("%s%s: old name(s) kept for one release, read as %s", where, ", ".join(used),
                       ", ".join(ALIASES[u] for u in used))
    return values


def check_override_names(given: dict[str, tuple[str, object]], key: str, value, text: str) -> None:
    """Refuse an override whose old (or new) name was given earlier in the same overrides under the other name at
    another value; `given` maps each new name to (the name used, its value) and is updated."""
    new = canonical_key(key)
    if new in given:
        name, earlier = given[new]
        if name != key and earlier != value:
            raise ConfigError(f"override '{text}': {key}={value!r} and {name}={earlier!r} set one knob to two values; "
                              f"{next(k for k in (key, name) if k in ALIASES)} is the old name of {new}: keep only "
                              f"{new}")
    given[new] = (key, value)
    if key in ALIASES:
        logger.warning("override '%s': %s is the old name of %s (kept for one release)", text, key, new)


def _saved_by_earlier_version(values: dict) -> bool:
    ppo, grpo = values.get("ppo"), values.get("grpo")
    return isinstance(ppo, dict) and isinstance(grpo, dict) and all(k in ppo for k in EARLIER_PPO_FIELDS) \
        and all(k in grpo for k in EARLIER_GRPO_FIELDS)


def _upgrade_saved(values: dict) -> dict:
    """An earlier version's full config, read as that version ran it (the module docstring says how)."""
    algorithm = values.get("algorithm")
    grpo_run = isinstance(algorithm, dict) and algorithm.get("name") == "grpo"
    ppo, grpo = dict(values["ppo"]), dict(values["grpo"])
    for old, new in ALIASES.items():
        value = grpo.pop(old.split(".")[1])
        if grpo_run:
            ppo[new.split(".")[1]] = value
    if grpo_run:
        ppo.update(EARLIER_GRPO_IGNORED)
    return {**values, "ppo": ppo, "grpo": grpo}
