"""Command-line overrides checked before Hydra runs, so a bad one is one sentence."""

from __future__ import annotations

import os
import re

from orchestrator.config import (
    REPO_ROOT,
    unknown_key_problem,
    unknown_keys,
)


def override_problem(argv: list[str]) -> str | None:
    """One sentence for an override Hydra cannot compose (an unknown key, a wrong type, a missing
    option), checked before Hydra runs: its own report spans several lines. Sweeps (-m) and
    anything this check cannot judge are left to Hydra."""
    if any(arg.startswith("-") for arg in argv):
        return None
    from hydra import compose, initialize_config_dir
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        with initialize_config_dir(config_dir=os.path.join(REPO_ROOT, "conf"), version_base="1.3"):
            cfg = compose("train", overrides=argv)
    except MissingConfigException as err:
        lines = str(err).splitlines()
        options = [line.strip() for line in lines if line.startswith("\t") and "provider=" not in line]
        return f"{lines[0]}; choose one of: {', '.join(options)}" if options else lines[0]
    except ConfigCompositionException as err:
        cause = str(err.__cause__).splitlines()[0] if err.__cause__ else ""
        unknown = re.match(r"Key '(\w+)' not in '\w+'\s+full_key: ([\w.]+)", str(err.__cause__ or ""))
        if unknown:
            return unknown_key_problem(unknown.group(2))
        return f"{str(err).splitlines()[0].rstrip('.')}: {cause}; fix the value"
    except Exception:  # not ours to judge here: Hydra reports it
        return None
    unknown = unknown_keys(cfg)
    return unknown_key_problem(unknown[0]) if unknown else None
