"""Bad serving presets and measurement CSVs (poa_jax.serving): every field named with its rule,
before anything is compiled."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from poa_jax import serving
from poa_jax.errors import InputError

P = serving.preset("llama70b-1p2d")
R = dataclasses.replace


def _gpu(**kw):
    return dataclasses.replace(P, gpu=dataclasses.replace(P.gpu, **kw))


def _model(**kw):
    return dataclasses.replace(P, model=dataclasses.replace(P.model, **kw))


@pytest.mark.parametrize(
    "bad,match",
    [
        (R(P, ib_latency=float("nan")), r"ib_latency = nan: must be finite and >= 0"),
        (R(P, nvlink_latency=-1.0), r"nvlink_latency = -1.0: must be finite and >= 0"),
        (R(P, ib_latency=float("inf")), r"ib_latency = inf"),
        (R(P, nvlink_latency="x"), r"nvlink_latency = 'x': must be a real number"),
        (_gpu(flops=float("nan")), r"gpu\.flops = nan: must be finite and > 0"),
        (_gpu(flops=0.0), r"gpu\.flops = 0\.0: must be finite and > 0"),
        (_gpu(hbm_bandwidth=-1.0), r"gpu\.hbm_bandwidth = -1\.0: must be finite and > 0"),
        (_gpu(hbm_bytes=float("inf")), r"gpu\.hbm_bytes = inf"),
        (_gpu(gpus_per_node=0), r"gpu\.gpus_per_node = 0: must be an integer >= 1"),
        (_model(parameters=-1), r"model\.parameters = -1: must be finite and > 0"),
        (_model(kv_bytes_per_value=0.0), r"model\.kv_bytes_per_value"),
        (_model(layers=2.5), r"model\.layers = 2\.5: must be an integer >= 1"),
        (_model(name="Mistral-7B"), r"model\.name = 'Mistral-7B': no hidden size"),
        (R(P, decode_nodes=(-1, 5)), r"decode_nodes\[0\] = -1: must be an integer >= 0"),
        (R(P, decode_nodes=(0, 1.5)), r"decode_nodes\[1\] = 1\.5"),
        (R(P, shareable="0.5"), r"shareable = '0.5': must be a real number"),
        (R(P, residency=True), r"residency = True: must be a real number"),
        (R(P, gpu="B200"), r"gpu: expected a GPUSpec"),
    ],
)  # fmt: skip
def test_check_preset_names_field_and_rule(bad, match):
    with pytest.raises(InputError, match=match):
        serving.check_preset(bad)
    with pytest.raises(InputError, match=match):
        serving.coefficients(bad)


def test_check_preset_accepts_numpy_scalars_and_zero_latency():
    ok = dataclasses.replace(P, ttft_slo=np.float32(0.5), nvlink_latency=0.0, tp=np.int64(4))
    assert serving.check_preset(ok) is ok
    for name in serving.PRESETS:
        serving.check_preset(serving.preset(name))


def _csv(tmp_path, text, encoding="utf-8"):
    f = tmp_path / "m.csv"
    f.write_bytes(text.encode(encoding))
    return f


def test_fit_csv_all_zero_latency_is_rejected(tmp_path):
    f = _csv(tmp_path, "batch,tokens,latency\n1,2,0\n2,3,0\n3,4,0\n")
    with pytest.raises(InputError, match=r"prefill fit .* no prefill capacity"):
        serving.fit_csv(f)
    f = _csv(tmp_path, "batch,tokens,latency,phase\n1,2,0,decode\n2,3,0,decode\n")
    with pytest.raises(InputError, match=r"decode fit α = 0\.0"):
        serving.fit_csv(f)


def test_fit_csv_header_with_utf8_bom(tmp_path):
    f = _csv(tmp_path, "batch,tokens,latency\n1,2,3\n2,3,4\n3,4,6\n", encoding="utf-8-sig")
    assert f.read_bytes()[:3] == b"\xef\xbb\xbf"
    fit = serving.fit_csv(f)
    assert fit.points == {"prefill": 3} and fit.prefill is not None


@pytest.mark.parametrize(
    "bad,match",
    [
        (dict(tau=-1.0), r"policy\.tau = -1\.0: must be finite and >= 0"),
        (dict(tau=float("nan")), r"policy\.tau = nan"),
        (dict(w_prefill=float("nan")), r"policy\.w_prefill = nan"),
        (dict(w_true=0.0), r"w_true \+ w_prefill \+ w_decode must be > 0"),
        (dict(credit=np.ones(3)), r"policy\.credit: shape \(3,\)"),
    ],
)
def test_closed_loop_rejects_a_bad_policy(bad, match):
    # The load model's solve took any Policy: τ < 0 ran as the argmin router and all-zero
    # weights as a uniform split, both reported converged; a NaN weight was status 2.
    from poa_jax import load, policies

    pol = dataclasses.replace(policies.selfish(), **bad)
    with pytest.raises(InputError, match=match):
        load.closed_loop(P, [8.0, 16.0], pol)
    with pytest.raises(InputError, match=match):
        load.open_loop(P, [8.0, 16.0], pol)
