"""The ANS coder and its entropy model: exact round trips at the model's cost, key and delta frames,
bit-exact output across runs and threads, and a clear refusal of every bad payload."""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec import CodecError, EntropyModel, MissingReference, decode_frame, encode_frame, entropy_model
from codec.coders import ans
from codec.framing import FLAG_KEY
from codec.stream import References, StreamEncoder, pack_codes, unpack_codes


def scene(frames=12, c=6, h=10, w=14, bits=3, seed=0) -> np.ndarray:
    """A fixed camera: a static background of codes and a small patch that moves and changes."""
    rng = np.random.default_rng(seed)
    s = 1 << bits
    base = np.minimum(rng.geometric(0.5, size=(c, h, w)) - 1, s - 1)
    vid = np.repeat(base[None], frames, 0)
    for t in range(frames):
        x = t % (w - 3)
        vid[t, :, 2:5, x : x + 3] = rng.integers(0, s, size=(c, 3, 3))
    return vid.astype(np.uint8)


@pytest.fixture(scope="module")
def model() -> EntropyModel:
    return entropy_model.fit([scene(seed=s) for s in range(3)], 3)


def test_quantized_tables_are_exact_and_deterministic():
    counts = np.array([[0, 0, 5, 1000, 3, 0, 0, 0], [1, 1, 1, 1, 1, 1, 1, 1], [0] * 8])
    f = entropy_model.quantize_counts(counts)
    assert f.dtype == np.uint32 and (f.sum(-1) == 1 << entropy_model.PRECISION).all() and f.min() >= 1
    assert f[0].argmax() == 3 and f[0, 0] == 1  # an unseen symbol keeps the smallest probability, never 0
    assert len(set(f[1].tolist())) == 1 and len(set(f[2].tolist())) == 1  # uniform stays uniform
    np.testing.assert_array_equal(f, entropy_model.quantize_counts(counts))


def test_counts_in_pieces_give_exactly_fits_tables():
    # bench/ped2.py fits the tables of every cut and bit depth in one pass, a few frames at a time
    vids = [scene(frames=n, seed=s) for s, n in ((0, 7), (1, 1), (2, 12))]
    for bits, inter in ((3, None), (3, False), (6, None)):
        whole = entropy_model.fit(vids, bits, inter)
        counts = entropy_model.Counts(bits, inter)
        for v in vids:
            prev = None
            for i in range(0, len(v), 3):
                counts.add(v[i : i + 3], prev)
                prev = v[min(i + 3, len(v)) - 1]
        got = counts.model()
        np.testing.assert_array_equal(got.intra, whole.intra)
        assert (got.inter is None) == (whole.inter is None) == (bits > entropy_model.MAX_INTER_BITS or inter is False)
        if whole.inter is not None:
            np.testing.assert_array_equal(got.inter, whole.inter)
    with pytest.raises(CodecError, match="previous frame"):
        entropy_model.Counts(3).add(vids[0][:2], vids[0][0, :2])


def test_the_inter_table_learns_that_a_static_scene_repeats(model):
    # Given the same position's previous code, the same code is by far the likeliest (the frequent codes;
    # rare ones lean on the channel's marginal).
    diag = model.inter[:, np.arange(4), np.arange(4)]
    assert (diag > 0.5 * (1 << entropy_model.PRECISION)).all()
    vid = scene(seed=7)
    intra = ans.ideal_bits(vid[5], model)
    inter = ans.ideal_bits(vid[5], model, vid[4])
    assert inter < 0.5 * intra
    # the derived delta tables: a run of unchanged codes is likelier the shorter it is, and a changed code
    # is never coded as its reference (that symbol is not in the row)
    gap, change = model.delta_tables
    assert gap.shape == (6, entropy_model.GAP_ESCAPE + 1) and change.shape == (6, 8, 7)
    assert (np.diff(gap[:, :-1].astype(np.int64), axis=1) <= 0).all()
    assert ((gap.sum(-1) == 1 << entropy_model.PRECISION).all()
            and (change.sum(-1) == 1 << entropy_model.PRECISION).all())


def test_delta_tables_are_exact_integer_functions_of_the_tables():
    # both sides of a stream derive them: exact integers, the largest remainders to the lower symbol on ties
    w = entropy_model.quantize_weights([3, 1, 0, 3 << 40])
    assert sum(w) == 1 << entropy_model.PRECISION and min(w) == 1 and w[3] == max(w)
    assert entropy_model.quantize_weights([0, 0]) == [1 << 15, 1 << 15]
    assert entropy_model.quantize_weights([1, 1, 1]) == [21846, 21845, 21845]
    with pytest.raises(CodecError):
        entropy_model.quantize_weights([-1, 2])
    with pytest.raises(CodecError, match="inter"):
        _ = EntropyModel(2, entropy_model.quantize_counts(np.ones((1, 4)))).delta_tables


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([1, 2, 3, 4, 5, 8]), c=st.integers(1, 4),
       n=st.sampled_from([0, 1, 2, 63, 64, 65, 200, 1000]), stay=st.sampled_from([0.0, 0.5, 0.97, 1.0]))
def test_delta_frames_round_trip_every_run_shape(seed, bits, c, n, stay):
    # runs of every length: none changed, all changed, runs across the escape (64), empty channels; past 4 bits
    # (an inter table asked for explicitly) a (reference, new) code pair takes two bytes
    rng = np.random.default_rng(seed)
    s = 1 << bits
    ref = rng.integers(0, s, size=(1, c, n)).astype(np.uint8)
    codes = ref.copy()
    flip = rng.random((1, c, n)) >= stay
    codes[flip] = (ref[flip] + rng.integers(1, s, size=int(flip.sum()))) % s
    m = entropy_model.fit([np.concatenate([ref, codes, ref], axis=2) if n else rng.integers(0, s, (2, c, 9))],
                          bits, inter=True)
    payload = ans.encode(codes, bits, m, ref)
    np.testing.assert_array_equal(ans.decode(payload, codes.shape, bits, m, ref), codes)
    assert len(payload) <= 1.01 * ans.ideal_bits(codes, m, ref) / 8 + 8


def test_run_counts_past_the_uniform_models_range_are_coded_in_digits():
    # constriction's uniform model takes at most 2**24 values; a channel of more positions codes its count in
    # 12-bit digits (a 2**28-element tensor is allowed)
    import constriction

    most = (1 << 28) + 1
    assert ans._count_digits(most)[1:] == [4096] and ans._count_digits(5401) == [5402]
    counts = np.array([1, most, 4096, 123456789])
    coder = constriction.stream.stack.AnsCoder()
    ans._encode_counts(coder, counts, most)
    np.testing.assert_array_equal(ans._decode_counts(coder, 4, most), counts)


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(0, 10_000), bits=st.sampled_from([1, 2, 3, 4]), c=st.integers(1, 5), n=st.integers(1, 300))
def test_ans_round_trips_exactly_key_and_delta(seed, bits, c, n):
    rng = np.random.default_rng(seed)
    s = 1 << bits
    vid = rng.integers(0, s, size=(3, c, n)).astype(np.uint8)
    same = rng.random((c, n)) < 0.7
    vid[1][same] = vid[0][same]
    m = entropy_model.fit([vid], bits)
    for codes, ref in ((vid[1][None], None), (vid[2][None], vid[1][None])):
        payload = ans.encode(codes, bits, m, ref)
        np.testing.assert_array_equal(ans.decode(payload, codes.shape, bits, m, ref), codes)


def test_ans_reaches_its_models_cost(model):
    """The coded size is the model's ideal -log2 P within 1% (plus the coder's final word)."""
    vid = scene(frames=20, c=16, h=30, w=45, seed=11)
    for codes, ref in ((vid[9], None), (vid[10], vid[9])):
        ideal = ans.ideal_bits(codes[:6], model, None if ref is None else ref[:6]) / 8
        got = len(ans.encode(codes[:6][None], 3, model, None if ref is None else ref[:6][None]))
        assert got <= 1.01 * ideal + 8, (got, ideal)


def test_stream_sends_key_frames_on_schedule_and_on_request(model):
    vid = scene(frames=12)
    enc = StreamEncoder(3, "ans", [model], key_interval=4)
    refs = References()
    kinds = []
    for seq in range(12):
        if seq == 6:
            enc.request_key()
        data = enc.encode([vid[seq][None]], seq)
        frame = decode_frame(data, [model], refs.lookup("cam", seq))
        refs.update("cam", seq, frame.tensors)
        np.testing.assert_array_equal(frame.tensors[0][0], vid[seq])
        kinds.append("K" if frame.key_frame else "d")
        assert frame.delta == (not frame.key_frame)
    assert "".join(kinds) == "KdddKdKdddKd"
    assert (enc.key_frames, enc.delta_frames) == (4, 8)


def test_a_delta_frame_without_its_reference_is_refused_and_a_key_frame_recovers(model):
    vid = scene(frames=4)
    enc = StreamEncoder(3, "ans", [model], key_interval=10)
    frames = [enc.encode([vid[i][None]], i) for i in range(3)]
    refs = References()
    decode_frame(frames[0], [model], refs.lookup("cam", 0))  # decoded but the receiver forgot to keep it
    with pytest.raises(MissingReference, match="key frame"):
        decode_frame(frames[1], [model], refs.lookup("cam", 1))
    with pytest.raises(MissingReference):  # a reference of the wrong seq is not used either
        refs.update("cam", 0, [vid[0][None]])
        decode_frame(frames[2], [model], refs.lookup("cam", 2))
    enc.request_key()
    key = decode_frame(enc.encode([vid[3][None]], 3), [model], refs.lookup("cam", 3))
    assert key.key_frame
    np.testing.assert_array_equal(key.tensors[0][0], vid[3])


def test_references_fall_back_to_the_durable_copy_after_a_restart(model):
    vid = scene(frames=3)
    shapes = [(1, *vid.shape[1:])]
    durable = {"cam": (1, unpack_codes(pack_codes([vid[1][None]]), shapes))}
    refs = References(load=durable.get)
    enc = StreamEncoder(3, "ans", [model], key_interval=10)
    enc.encode([vid[0][None]], 0), enc.encode([vid[1][None]], 1)
    frame = decode_frame(enc.encode([vid[2][None]], 2), [model], refs.lookup("cam", 2))
    np.testing.assert_array_equal(frame.tensors[0][0], vid[2])
    with pytest.raises(CodecError, match="reference"):
        unpack_codes(pack_codes([vid[1][None]])[:-3], shapes)


def test_encoding_is_bit_exact_across_runs_and_threads(model):
    vid = scene(frames=8, c=6, h=30, w=45, seed=3)

    def run(_):
        enc = StreamEncoder(3, "ans", [model], key_interval=4)
        return hashlib.sha256(b"".join(enc.encode([vid[i][None]], i) for i in range(8))).hexdigest()

    with ThreadPoolExecutor(4) as pool:
        digests = set(pool.map(run, range(8)))
    assert len(digests) == 1
    # Fixed integer tables and fixed symbols: the bytes are a function of them alone, on every machine.
    fixed = EntropyModel(2, entropy_model.quantize_counts(np.array([[1, 2, 3, 4], [4, 3, 2, 1]])))
    codes = (np.arange(64, dtype=np.uint8).reshape(1, 2, 32) * 7) % 4
    assert hashlib.sha256(ans.encode(codes, 2, fixed)).hexdigest()[:16] == GOLDEN
    pairs = np.array([[[[4, 1, 1, 1]] * 4, [[1, 1, 1, 4]] * 4]]).reshape(2, 16) * np.arange(1, 17)
    fixed = EntropyModel(2, fixed.intra, entropy_model.quantize_counts(pairs.reshape(2, 4, 4)))
    ref = np.roll(codes, 3, axis=2)
    assert hashlib.sha256(ans.encode(codes, 2, fixed, ref)).hexdigest()[:16] == GOLDEN_DELTA
    # runs past the escape (64) and a channel ending in one: spooled frames stay decodable across versions
    ref = (np.arange(600, dtype=np.uint8).reshape(1, 2, 300) * 5) % 4
    codes = ref.copy()
    codes[0, 0, [0, 70, 71, 250]] ^= 1  # runs of 0, 69, 0, 178, then 49 to the channel's end
    codes[0, 1, 130] ^= 3  # 130, then 169
    assert hashlib.sha256(ans.encode(codes, 2, fixed, ref)).hexdigest()[:16] == GOLDEN_ESCAPES


GOLDEN = "53e54787f8e9c5ac"
GOLDEN_DELTA = "9652e959a255cf5a"
GOLDEN_ESCAPES = "fdc5742bbc814237"  # as coded since frame version 2


def test_bad_payloads_and_arguments_get_clear_errors(model):
    vid = scene(frames=2)
    codes, ref = vid[1][None], vid[0][None]
    good = ans.encode(codes, 3, model)
    for bad, match in ((good[:-1], "32-bit words"), (good[:-4], "decode|more data"),
                       (good + b"\x01\x00\x00\x00", "more data|decode"),
                       (b"\x00\x00\x00\x00", "decode")):
        with pytest.raises(CodecError, match=match):
            ans.decode(bad, codes.shape, 3, model)
    with pytest.raises(CodecError, match="entropy model"):
        ans.decode(good, codes.shape, 3, None)
    with pytest.raises(CodecError, match="bits"):
        ans.decode(good, codes.shape, 4, model)
    with pytest.raises(CodecError, match="channels"):
        ans.encode(codes[:, :3], 3, model)
    with pytest.raises(CodecError, match="reference holds"):
        ans.encode(codes, 3, model, ref[:, :, :5])
    with pytest.raises(CodecError, match="entropy model"):
        encode_frame([codes], 3, "ans")
    with pytest.raises(CodecError, match="no delta frames"):
        encode_frame([codes], 3, "zstd", refs=[ref], ref_distance=1)
    with pytest.raises(CodecError, match="ref_distance"):
        encode_frame([codes], 3, "ans", models=[model], refs=[ref], ref_distance=0)
    with pytest.raises(CodecError, match="ref_distance|key"):
        encode_frame([codes], 3, "ans", flags=FLAG_KEY, models=[model], refs=[ref], ref_distance=1)


def test_entropy_models_refuse_malformed_tables(model):
    j = model.to_json()
    assert EntropyModel.from_json(json.loads(json.dumps(j))).inter.tolist() == model.inter.tolist()
    broken = [dict(j, precision=12), dict(j, intra=[[1, 2]]), dict(j, intra=[[0] * 7 + [1 << 16]] * 6),
              dict(j, intra=[[2] * 8] * 6), dict(j, inter=[[1]]), {"bits": 3}, dict(j, intra=[[1, [2]]])]
    for bad in broken:
        with pytest.raises(CodecError):
            EntropyModel.from_json(bad)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_changes_are_grouped_by_channel_then_reference_code_in_position_order(dtype):
    # reference codes of one byte (up to 4 bits) or two: each (channel, reference code) group is one slice of the
    # changes sorted by reference code, in position order, and the groups come in coding order
    rng = np.random.default_rng(3)
    c, s, m = 40, 16 if dtype is np.uint8 else 64, 2000
    chan = np.sort(rng.integers(0, c, m))  # changes come in position order: channels ascend
    refs = rng.integers(0, s, m).astype(dtype)
    order, groups = ans._by_reference(chan, refs, c, s)
    np.testing.assert_array_equal(order, np.lexsort((np.arange(m), refs)))
    want = sorted(set((chan * s + refs).tolist()))
    assert [g for g, _, _ in groups] == want
    for g, a, b in groups:  # the group's changes, in position order
        np.testing.assert_array_equal(order[a:b], np.flatnonzero((chan == g // s) & (refs == g % s)))
    assert sum(b - a for _, a, b in groups) == m


def test_coder_models_are_built_once_per_table_and_dropped_with_it(model):
    # Built on a table's first use, found again by the table object itself (no hash of its content per frame),
    # and gone with the table: artifacts loaded again and again do not pile up models.
    import gc

    vid = scene(frames=2, seed=4)
    fresh = EntropyModel.from_json(json.loads(json.dumps(model.to_json())))
    ans.encode(vid[1][None], 3, fresh, vid[0][None])
    gap, change = fresh.delta_tables
    keys = {id(gap), id(change)}
    models = ans._categoricals(gap)
    assert keys <= set(ans._MODELS) and ans._categoricals(gap) is models
    del fresh, gap, change, models
    gc.collect()
    assert not keys & set(ans._MODELS)
    writable = np.array(model.intra)  # a copy: writable, so its content could change under the same object
    with pytest.raises(CodecError, match="read-only"):
        ans._categoricals(writable)
