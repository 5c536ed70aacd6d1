"""The mixture sampler: composition (over the run and per batch), packing without cross-example
attention, resume, weight changes, repetition cap, determinism and bad input."""

import json

import numpy as np
import pytest

from mixjax.data.batch import next_token_targets
from mixjax.data.packing import pack_rows, pack_stream
from mixjax.data.prepare import PrepareOptions, parse_domain_flag, prepare
from mixjax.data.prepared import PreparedData
from mixjax.data.sampler import DomainExhaustedError, MixtureSampler, allocate, validation_batches
from mixjax.data.tokenizer import ByteTokenizer
from mixjax.errors import MixjaxError
from tests.data_fixtures import letter_domain

LETTERS = "abcde"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("sampler")
    specs = [parse_domain_flag(f"{c}={letter_domain(root / f'{c}.jsonl', c, 40 + 10 * i)}")
             for i, c in enumerate(LETTERS)]
    prepare(specs, root / "out", PrepareOptions(), progress=False)
    return PreparedData(root / "out")


def _letters_of(domain_index):
    """Bytes a token of that domain may be: its letter in both cases, digits, template bytes."""
    c = LETTERS[domain_index]
    template = ByteTokenizer().encode("<|im_start|>user\nassistant<|im_end|>\n<|endoftext|>")
    return set(template.tolist()) | {ord(c), ord(c.upper())} | set(range(ord("0"), ord("9") + 1))


def _sampler(data, weights, budget_tokens=128 * 60, **kw):
    """The sampler of a run of `budget_tokens`, its steps counted as the trainer counts them."""
    from mixjax.train.config import TrainConfig

    kw = {"batch_size": 4, "seq_len": 32, "seed": 0, **kw}
    steps = TrainConfig(batch_size=kw["batch_size"], seq_len=kw["seq_len"]).run_steps(budget_tokens)
    return MixtureSampler(data, weights, num_steps=steps, **kw)


def _same(b1, b2):
    for k, v in b1.arrays().items():
        np.testing.assert_array_equal(v, b2.arrays()[k], err_msg=k)


def test_composition_follows_weights_over_the_run_and_per_batch(data):
    weights = np.array([0.5, 0.23, 0.17, 0.07, 0.03])
    s = _sampler(data, dict(zip(LETTERS, weights)), budget_tokens=128 * 200)
    total = np.zeros(5, np.int64)
    for step, batch in enumerate(s, start=1):
        assert batch.tokens_per_domain.sum() == 128               # no padding in training batches
        per_batch = batch.tokens_per_domain - weights * 128
        assert np.all(np.abs(per_batch) < 1), per_batch           # floor or ceil of the share
        total += batch.tokens_per_domain
        assert np.all(np.abs(total - weights * 128 * step) < 1)   # and nothing drifts over the run
        np.testing.assert_array_equal(np.bincount(batch.domain_ids_BxL.ravel(), minlength=5),
                                      batch.tokens_per_domain)
    assert s.step == s.num_steps == 200
    assert s.tokens_consumed == dict(zip(LETTERS, total.tolist()))


def test_small_batches_never_drop_a_small_domain(data):
    weights = np.array([0.9, 0.04, 0.03, 0.02, 0.01])              # 0.01 * 8 tokens per batch
    s = _sampler(data, dict(zip(LETTERS, weights)), batch_size=1, seq_len=8, budget_tokens=8 * 500)
    total = sum(b.tokens_per_domain for b in s)
    np.testing.assert_allclose(total, weights * 8 * 500, atol=1)   # 40 tokens for the 1% domain


def test_tokens_come_from_their_domain_and_pack_without_crossing(data):
    s = _sampler(data, {c: 0.2 for c in LETTERS})
    for batch in s:
        toks, seg, pos, dom = batch.tokens_BxL, batch.segment_ids_BxL, batch.positions_BxL, batch.domain_ids_BxL
        assert (seg > 0).all()
        for row in range(toks.shape[0]):
            for sid in np.unique(seg[row]):
                where = np.flatnonzero(seg[row] == sid)
                assert np.array_equal(where, np.arange(where[0], where[-1] + 1))  # contiguous
                assert np.array_equal(pos[row, where], np.arange(len(where)))       # positions restart
                (d,) = np.unique(dom[row, where])                                 # one domain
                assert set(toks[row, where].tolist()) <= _letters_of(d)
        _, w = next_token_targets(toks, seg, batch.loss_mask_BxL)
        # a target never crosses a segment boundary
        assert not np.any((w > 0)[:, :-1] & (seg[:, 1:] != seg[:, :-1]))


def test_one_epoch_delivers_every_training_token_once(data):
    source = data.split("a", "train")
    expected = np.bincount(np.concatenate([source[i]["tokens"] for i in range(len(source))]), minlength=259)
    n = int(expected.sum())
    s = MixtureSampler(data, {"a": 1.0}, batch_size=1, seq_len=n, num_steps=1, seed=3)
    batch = s.next_batch()
    np.testing.assert_array_equal(np.bincount(batch.tokens_BxL.ravel(), minlength=259), expected)
    loss_tokens = sum(int(source[i]["loss_mask"].sum()) for i in range(len(source)))
    assert batch.loss_mask_BxL.sum() == loss_tokens == batch.loss_tokens_per_domain[0]


def test_resume_gives_the_identical_next_batches(data):
    weights = {"a": 0.4, "b": 0.3, "c": 0.2, "d": 0.1}
    straight = _sampler(data, weights)
    batches = [straight.next_batch() for _ in range(30)]
    first = _sampler(data, weights)
    for _ in range(17):
        first.next_batch()
    first.set_weights({"a": 0.1, "e": 0.9})
    state = json.loads(json.dumps(first.state_dict()))          # through JSON, as a checkpoint does
    expected = [first.next_batch() for _ in range(13)]
    resumed = _sampler(data, weights, seed=0)
    resumed.load_state_dict(state)
    for b1, b2 in zip(expected, (resumed.next_batch() for _ in range(13))):
        _same(b1, b2)
    replay = _sampler(data, weights)
    for b in batches[:17]:
        _same(b, replay.next_batch())                           # and the run is reproducible


def test_weight_change_mid_stream_takes_effect_without_reshuffling(data):
    s = _sampler(data, {"a": 0.5, "b": 0.5})
    for _ in range(10):
        s.next_batch()
    before = s.tokens_consumed
    s.set_weights({"c": 0.75, "a": 0.25})
    after = [s.next_batch() for _ in range(20)]
    added = sum(b.tokens_per_domain for b in after)
    np.testing.assert_allclose(added, [0.25 * 2560, 0, 0.75 * 2560, 0, 0], atol=1)
    # domain a continues its stream where it left off: same tokens as an unchanged sampler gives
    reference = _sampler(data, {"a": 1.0}, batch_size=1, seq_len=before["a"] + int(added[0]))
    stream = reference.next_batch().tokens_BxL.ravel()
    got_a = np.concatenate([b.tokens_BxL[b.domain_ids_BxL == 0] for b in after])
    np.testing.assert_array_equal(got_a, stream[before["a"]:])


def test_deterministic_for_a_seed(data):
    w = {c: 0.2 for c in LETTERS}
    _same(_sampler(data, w, seed=5).next_batch(), _sampler(data, w, seed=5).next_batch())
    assert not np.array_equal(_sampler(data, w, seed=5).next_batch().tokens_BxL,
                              _sampler(data, w, seed=6).next_batch().tokens_BxL)


def test_repetition_cap(data):
    available = data.train_tokens()["a"]
    # static weights: refused up front, naming the domain and the setting
    with pytest.raises(MixjaxError, match=r"budget_tokens: domain 'a' needs .* x max_epochs=2"):
        _sampler(data, {"a": 1.0}, budget_tokens=3 * available, max_epochs=2)
    ok = _sampler(data, {"a": 1.0}, batch_size=1, seq_len=available // 4, budget_tokens=7 * (available // 4),
                  max_epochs=2)
    assert ok.num_steps == 7
    for _ in range(7):
        ok.next_batch()                                          # 1.75 epochs: repeats, fine
    # changing weights at run time: stops with a clear error once the cap is reached
    s = _sampler(data, {"b": 1.0}, batch_size=1, seq_len=available // 4, budget_tokens=20 * available,
                 max_epochs=100)
    s.max_epochs = 2
    s.set_weights({"a": 1.0})
    with pytest.raises(DomainExhaustedError, match=r"domain 'a' is exhausted at step 8"):
        for _ in range(20):
            s.next_batch()


@pytest.mark.parametrize("weights,message", [
    ({"a": -0.2, "b": 1.2}, "negative weight for a"),
    ({"a": 0.5, "b": 0.4}, "weights sum to 0.9, not 1"),
    ({"a": 0.5, "zz": 0.5}, "unknown domain.* zz; the data has a, b, c, d, e"),
    ({"a": float("nan"), "b": 1.0}, "finite"),
])
def test_bad_weights(data, weights, message):
    with pytest.raises(MixjaxError, match=message):
        _sampler(data, weights)


def test_a_mixture_is_normalised_once():
    """Mixture.of divides the weights by their sum in float64 (the rule trained runs use); a Mixture
    handed on is taken as it is, never divided again (which would move some weights by an ulp)."""
    from mixjax.mixture import Mixture

    rng = np.random.default_rng(0)
    moved = 0
    for _ in range(50):
        w = rng.dirichlet(np.ones(4))
        given = dict(zip("dcba", w[::-1]))  # a mapping in another order than the domains
        m = Mixture.of(given, list("abcd"))
        np.testing.assert_array_equal(m.weights, w / w.sum())
        assert Mixture.of(m, list("abcd")) is m and m.as_dict() == {d: float(x) for d, x in zip("abcd", w / w.sum())}
        moved += not np.array_equal(m.weights / m.weights.sum(), m.weights)
    assert moved  # a second division would have changed some of them
    assert Mixture.of(m, list("dcba")).as_dict() == {d: m.as_dict()[d] for d in "dcba"}


def test_budget_smaller_than_one_batch(data):
    with pytest.raises(MixjaxError, match=r"budget_tokens 100 is smaller than one batch \(4 x 32 = 128"):
        _sampler(data, {"a": 1.0}, budget_tokens=100)


def test_token_budgets(data):
    s = _sampler(data, {"a": 0.75, "b": 0.25}, budget_tokens=96 * 10 + 32 * 10, batch_size=4, seq_len=32)
    assert s.num_steps == 10
    assert s.tokens_consumed == {c: 0 for c in LETTERS}
    total = sum(b.tokens_per_domain for b in s)
    assert total.tolist() == [960, 320, 0, 0, 0]


def test_allocate_keeps_every_batch_and_the_whole_run_within_one_token():
    rng = np.random.default_rng(0)
    for trial in range(200):
        k, total = int(rng.integers(2, 9)), int(rng.integers(1, 300))
        weights = rng.dirichlet(np.full(k, 0.5))
        target, delivered = np.zeros(k), np.zeros(k, np.int64)
        for step in range(150):
            if trial % 2 and step % 37 == 0:
                weights = rng.dirichlet(np.full(k, 0.5))              # weights change mid-run
            target += weights * total
            counts = allocate(target - delivered, weights, total)
            delivered += counts
            assert counts.sum() == total and (counts >= 0).all()
            assert np.all(np.abs(counts - weights * total) < 1)
            assert np.all(np.abs(target - delivered) < 1)


@pytest.mark.parametrize("seq_len", [64, 16])
def test_validation_batches_cover_the_split_exactly_once(data, seq_len):
    """Every row-sized piece of every held-out example that holds a loss target (a masked token
    after its first), once; pieces without one (a prompt longer than a row) are left out, so every
    batch measures (seq_len 16: the prompts' first pieces)."""
    source = data.split("b", "validation")
    expected, dropped = [], 0
    for i in range(len(source)):
        tokens, mask = source[i]["tokens"].tolist(), np.asarray(source[i]["loss_mask"], bool)
        for start in range(0, len(tokens), seq_len):
            if mask[start + 1:start + seq_len].any():
                expected.append(tuple(tokens[start:start + seq_len]))
            else:
                dropped += 1
    assert dropped > 0 if seq_len == 16 else dropped == 0
    got = []
    for batch in validation_batches(data, "b", batch_size=2, seq_len=seq_len):
        assert (batch.domain_ids_BxL[batch.segment_ids_BxL > 0] == 1).all()
        assert (batch.loss_mask_BxL[batch.segment_ids_BxL == 0] == 0).all()
        assert next_token_targets(batch.tokens_BxL, batch.segment_ids_BxL, batch.loss_mask_BxL)[1].sum() > 0
        for row in range(2):
            for sid in np.unique(batch.segment_ids_BxL[row]):
                if sid:
                    got.append(tuple(batch.tokens_BxL[row][batch.segment_ids_BxL[row] == sid].tolist()))
    assert sorted(got) == sorted(expected)


def test_pack_rows_cuts_nothing_that_fits():
    pieces = [(np.full(n, n, np.int32), np.ones(n, bool), 0) for n in (5, 3, 4, 8, 1)]
    first, second = pack_rows(pieces, batch=3, seq=8, num_domains=1)
    assert first.segment_ids_BxL.tolist() == [[1, 1, 1, 1, 1, 2, 2, 2], [1, 1, 1, 1, 0, 0, 0, 0],
                                              [1] * 8]
    assert first.positions_BxL[0].tolist() == [0, 1, 2, 3, 4, 0, 1, 2]
    assert first.tokens_BxL[1].tolist() == [4, 4, 4, 4, 0, 0, 0, 0]
    assert first.domain_ids_BxL[1].tolist() == [0] * 4 + [-1] * 4
    assert second.segment_ids_BxL.tolist() == [[1] + [0] * 7, [0] * 8, [0] * 8]
    assert first.tokens_per_domain.tolist() == [20] and second.tokens_per_domain.tolist() == [1]
    with pytest.raises(ValueError):
        pack_stream(pieces, batch=1, seq=8, num_domains=1)


def test_train_subset_draws_a_seeded_nested_part_of_each_domain_and_repeats_it(data):
    """train_subset f: one epoch of a domain is the tokens of round(f x examples) seeded examples
    (independently summed here), nested across fractions, and the run repeats exactly them."""
    from mixjax.data.sampler import subset_indices

    source = data.split("a", "train")
    quarter, half = subset_indices(len(source), 0.25, 7, 0), subset_indices(len(source), 0.5, 7, 0)
    assert len(quarter) == round(0.25 * len(source)) and set(quarter) <= set(half)
    np.testing.assert_array_equal(quarter, subset_indices(len(source), 0.25, 7, 0))
    assert not np.array_equal(quarter, subset_indices(len(source), 0.25, 8, 0))
    expected = np.bincount(np.concatenate([source[int(i)]["tokens"] for i in quarter]), minlength=259)
    n = int(expected.sum())
    s = _sampler(data, {"a": 1.0}, batch_size=1, seq_len=n, budget_tokens=2 * n, seed=7, train_subset=0.25)
    assert s.unique_tokens["a"] == n < data.train_tokens()["a"] / 2
    for _ in range(2):  # two passes over the subset, nothing else
        np.testing.assert_array_equal(np.bincount(s.next_batch().tokens_BxL.ravel(), minlength=259), expected)
    with pytest.raises(MixjaxError, match=rf"budget_tokens: domain 'a' needs .* has {n:,} training tokens in its train_subset=0.25 x max_epochs=2"):
        _sampler(data, {"a": 1.0}, batch_size=1, seq_len=n, budget_tokens=3 * n, seed=7, train_subset=0.25,
                 max_epochs=2)
    with pytest.raises(MixjaxError, match=r"^train_subset: must be a fraction in \(0, 1\], got 0"):
        _sampler(data, {"a": 1.0}, train_subset=0)
