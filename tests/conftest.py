"""Shared fixtures. Random inputs are fresh on every run: the seed is printed in the header
and can be fixed with MSAE_TEST_SEED=<int> to replay a failure.

Under pytest-xdist (``make unit-test`` runs ``pytest -n 2``) the seed is drawn once, by the
controlling process, and handed to every worker, so a whole run has one seed and the printed
seed replays any test whichever worker ran it."""

import os
import random

import pytest
import torch

SEED_ENV = "MSAE_TEST_SEED"
# This process's seed: drawn (or read from MSAE_TEST_SEED) here; an xdist worker replaces it
# with its controller's seed in pytest_configure, before any test runs.
SEED = int(os.environ.get(SEED_ENV, random.SystemRandom().randrange(2**31)))


def _seed_line() -> str:
    return f"msae test seed: {SEED} (set {SEED_ENV} to replay)"


def pytest_configure(config):
    global SEED
    workerinput = getattr(config, "workerinput", None)  # set on xdist workers only
    if workerinput is not None and "msae_test_seed" in workerinput:
        SEED = int(workerinput["msae_test_seed"])


@pytest.hookimpl(optionalhook=True)  # an xdist hook: absent (and never called) without pytest-xdist
def pytest_configure_node(node):
    node.workerinput["msae_test_seed"] = SEED


def pytest_report_header(config):
    return _seed_line()


@pytest.fixture
def gen(request) -> torch.Generator:
    """A generator seeded from the session seed and the test's name."""
    return torch.Generator().manual_seed(SEED + sum(map(ord, request.node.name)))


@pytest.fixture
def seed(request) -> int:
    return (SEED + sum(map(ord, request.node.name))) % 2**31


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    # The header (above) is hidden under -q: repeat the seed where a failure needs replaying.
    if exitstatus not in (0, 5):
        terminalreporter.write_line(_seed_line())
