"""Tools that are not training (benchmarks, the GPU check): nothing in training imports them."""

import json
from typing import Any


def publish(result: dict[str, Any], path: str) -> None:
    """A measurement's result: to `path` as JSON and to the screen."""
    with open(path, "w") as f:
        json.dump(result, f, indent=1)
    print(json.dumps(result, indent=1))
