"""Reading the fixtures made by tests/fixtures/make_official_fixtures.py."""

from pathlib import Path

import numpy as np

FIXTURES = Path(__file__).parent / "fixtures"


def rel_err(a, b) -> float:
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def load_fixture(name: str) -> dict:
    with np.load(FIXTURES / name) as data:
        return {k: data[k] for k in data.files}


def state_dict_of(fixture: dict) -> dict:
    """The official state_dict stored under sd/ (float16 on disk), as float32 arrays."""
    return {k[3:]: v.astype(np.float32) for k, v in fixture.items() if k.startswith("sd/")}
