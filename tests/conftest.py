"""Shared fixtures. Random inputs are fresh on every run: the seed is printed in the header
and can be fixed with MSAE_TEST_SEED=<int> to replay a failure."""

import os
import random

import pytest
import torch

SEED = int(os.environ.get("MSAE_TEST_SEED", random.SystemRandom().randrange(2**31)))


def pytest_report_header(config):
    return f"msae test seed: {SEED} (set MSAE_TEST_SEED to replay)"


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
        terminalreporter.write_line(f"msae test seed: {SEED} (set MSAE_TEST_SEED to replay)")
