import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gradaccum.data.windows import WindowSampler
from gradaccum.errors import UserError

configs = st.tuples(
    st.integers(1, 200), st.integers(1, 64), st.integers(0, 2**31), st.booleans()
).filter(lambda c: not (c[3] and c[1] > c[0]))


def _take(sampler, k):
    return [next(sampler) for _ in range(k)]


@settings(deadline=None)
@given(config=configs, epochs=st.integers(1, 3))
def test_each_epoch_sees_every_sample_once_and_only_the_last_window_is_short(config, epochs):
    n, batch, seed, drop_last = config
    sampler = WindowSampler(n, batch, seed, drop_last)
    for epoch in range(epochs):
        assert sampler.epoch == epoch and sampler.position == 0
        windows = _take(sampler, sampler.steps_per_epoch)
        flat = [i for w in windows for i in w]
        assert len(flat) == len(set(flat))
        assert all(len(w) == batch for w in windows[:-1])
        if drop_last:
            assert len(windows[-1]) == batch and len(flat) == n - n % batch
        else:
            assert sorted(flat) == list(range(n))
            assert len(windows[-1]) == (n % batch or batch)
    assert sampler.epoch == epochs and sampler.position == 0


@settings(deadline=None)
@given(config=configs, done=st.integers(0, 50), more=st.integers(1, 30))
def test_resume_from_any_state_continues_identically(config, done, more):
    original = WindowSampler(*config)
    _take(original, done)
    state = json.loads(json.dumps(original.state_dict()))
    resumed = WindowSampler(*config)
    resumed.load_state_dict(state)
    assert _take(resumed, more) == _take(original, more)


@settings(deadline=None)
@given(config=configs)
def test_order_depends_only_on_seed_and_epoch(config):
    n, batch, seed, drop_last = config
    a, b = WindowSampler(n, batch, seed, drop_last), WindowSampler(n, batch, seed, drop_last)
    steps = a.steps_per_epoch
    assert _take(a, 2 * steps) == _take(b, 2 * steps)
    assert a.window(1, 0) == b.window(1, 0)


def test_epochs_and_seeds_give_different_orders():
    sampler = WindowSampler(100, 100, seed=0)
    assert sampler.window(0, 0) != sampler.window(1, 0)
    assert sampler.window(1, 0) != WindowSampler(100, 100, seed=1).window(0, 0)


def test_resume_with_other_settings_is_a_user_error():
    state = WindowSampler(10, 4, seed=0).state_dict()
    with pytest.raises(UserError, match="global_batch=4"):
        WindowSampler(10, 5, seed=0).load_state_dict(state)


@pytest.mark.parametrize(
    "args", [(0, 4, 0, False), (10, 0, 0, False), (10, 4, -1, False), (3, 4, 0, True)]
)
def test_impossible_settings_are_user_errors(args):
    with pytest.raises(UserError):
        WindowSampler(*args)
