"""DRµGS noise (minillama/drugs.py): the rotation math, sink/padding protection, seeded per-row streams, dose shapes,
argument errors, and the CLI / chat-command parsers. Pure tensor tests: no model needed.

Tolerances (float32 math): norms preserved to 1e-5 relative; measured angles (atan2 of the orthogonal and parallel
parts, accurate near 0) within [0, θ] up to 1e-5 rad. Statistical checks use enough draws that the bounds are > 5σ."""
from __future__ import annotations

import argparse
import math

import pytest
import torch

from minillama.drugs import (KINDS, SITES, DoseProfile, Drugs, NoisePlan, Peak, add_drugs_args, drugs_from_args,
                             parse_dose_shape, parse_drugs_command)
from minillama.errors import SamplerArgumentError


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def make_plan(theta: float = 0.3, sites="K", *, kind: str = "rotation", sink: int = 6, seeds=(0,),
              n_layers: int = 4) -> NoisePlan:
    plan = Drugs(dose_theta=theta, sites=sites, kind=kind, sink_protect=sink).plan(n_layers, [gen(s) for s in seeds])
    assert plan is not None
    return plan


def positions(batch: int, length: int, start: int = 0) -> torch.Tensor:
    return (torch.arange(length) + start).expand(batch, length).contiguous()


def angle_between(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Angle of each vector pair, via atan2(|y⊥|, y·x̂): accurate for small angles too (acos is not)."""
    unit = x / x.norm(dim=-1, keepdim=True)
    along = (y * unit).sum(-1)
    across = (y - along.unsqueeze(-1) * unit).norm(dim=-1)
    return torch.atan2(across, along)


def orthogonal_unit(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The unit direction the rotation moved toward: y's component orthogonal to x, normalised."""
    unit = x / x.norm(dim=-1, keepdim=True)
    perp = y - (y * unit).sum(-1, keepdim=True) * unit
    return perp / perp.norm(dim=-1, keepdim=True)


# --------------------------------------------------------------------------------------------------- rotation math

@pytest.mark.parametrize("kind", ["rotation", "normal", "rotation-compat"])
def test_rotation_kinds_preserve_norm_and_stay_within_the_angle(kind):
    theta = 0.4
    x = torch.randn(2, 64, 4, 64) * 3
    y = make_plan(theta, kind=kind, seeds=(1, 2)).apply("K", 0, x, positions(2, 64, start=10))
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=0)
    angles = angle_between(x, y)
    bound = math.pi if kind == "normal" else theta      # normal: a half-normal angle, only clipped at π
    assert angles.min() >= 0 and angles.max() <= bound + 1e-5
    assert angles.max() > 0.5 * theta                   # it really rotates


def test_rotation_angle_is_uniform_on_0_theta():
    theta = 0.8
    x = torch.randn(1, 4096, 4, 32)
    angles = angle_between(x, make_plan(theta).apply("K", 0, x, positions(1, 4096, start=6))).flatten()
    n = angles.numel()                      # 16384 draws: the quartile fractions have σ ≈ 0.0034
    for q in (0.25, 0.5, 0.75):
        assert abs((angles < q * theta).float().mean().item() - q) < 0.02
    assert abs(angles.mean().item() - theta / 2) < 5 * theta / math.sqrt(12 * n)


def test_normal_kind_draws_half_normal_angles_with_sigma_half_theta_clipped_at_pi():
    theta = 0.6
    x = torch.randn(1, 4096, 4, 32)
    angles = angle_between(x, make_plan(theta, kind="normal").apply("K", 0, x, positions(1, 4096, start=6))).flatten()
    sigma = theta / 2
    assert abs(angles.mean().item() - sigma * math.sqrt(2 / math.pi)) < 0.01       # E|N(0, σ)| = σ·√(2/π)
    assert abs((angles < sigma).float().mean().item() - 0.6827) < 0.02            # P(|N| < σ)
    # a huge dose is clipped: no angle beyond π (the antipode), and the norm still holds
    x = torch.randn(1, 512, 2, 16)
    y = make_plan(40.0, kind="normal").apply("K", 0, x, positions(1, 512, start=6))
    assert angle_between(x, y).max() <= math.pi + 1e-4
    torch.testing.assert_close(y.norm(dim=-1), x.norm(dim=-1), rtol=1e-5, atol=1e-5)


def test_euclidean_kind_adds_gaussian_noise_scaled_by_theta_norm_over_sqrt_d():
    theta, d = 0.3, 64
    x = torch.randn(1, 2048, 4, d) * 2
    y = make_plan(theta, kind="euclidean").apply("K", 0, x, positions(1, 2048, start=6))
    noise = (y - x) / (theta * x.norm(dim=-1, keepdim=True) / math.sqrt(d))     # should be N(0, I)
    assert abs(noise.mean().item()) < 0.01
    assert abs(noise.var().item() - 1) < 0.02
    ratio = (y.norm(dim=-1) / x.norm(dim=-1)).mean().item()                     # ≈ √(1 + θ²): not norm-preserving
    assert abs(ratio - math.sqrt(1 + theta ** 2)) < 0.01


def test_direction_is_centred_unlike_the_drugs_compat_kind():
    x = torch.randn(64).expand(1, 8192, 1, 64).contiguous()      # one vector, 8192 independent draws
    pos = positions(1, 8192, start=6)
    for kind, low, high in (("rotation", 0.0, 0.05), ("rotation-compat", 0.5, 1.0)):
        y = make_plan(1.0, kind=kind).apply("K", 0, x, pos)
        mean_direction = orthogonal_unit(x, y).mean(dim=(0, 1, 2))
        # centred: |mean of 8192 unit vectors in 63 dims| ≈ 1/√8192 = 0.011; rand_like's bias gives ≈ 0.86
        assert low <= mean_direction.norm().item() <= high, kind


def test_zero_vectors_stay_zero_and_input_is_never_modified():
    x = torch.randn(1, 10, 3, 16)
    x[0, 7, 1] = 0
    before = x.clone()
    for kind in KINDS:
        y = make_plan(0.5, kind=kind).apply("K", 0, x, positions(1, 10))
        assert torch.equal(x, before)
        assert y.data_ptr() != x.data_ptr()
        assert torch.all(y[0, 7, 1] == 0) and torch.isfinite(y).all()


def test_bf16_input_gets_fp32_math_and_keeps_its_dtype():
    x = torch.randn(1, 32, 4, 64).to(torch.bfloat16)
    y = make_plan(0.3).apply("K", 0, x, positions(1, 32, start=6))
    assert y.dtype == torch.bfloat16
    torch.testing.assert_close(y.float().norm(dim=-1), x.float().norm(dim=-1), rtol=1e-2, atol=0)
    assert not torch.equal(x, y)


# ------------------------------------------------------------------------------------------ protection and streams

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sink_positions_and_padding_are_bit_identical(dtype):
    torch.manual_seed(0)              # in bfloat16 a vector turned by a tiny angle can round back to itself
    x = torch.randn(2, 12, 3, 16).to(dtype)
    pos = torch.tensor([list(range(12)), [-1, -1, -1] + list(range(9))])     # row 1 is left-padded
    y = make_plan(0.5, "V", sink=6, seeds=(0, 1)).apply("V", 0, x, pos)
    keep = pos < 6
    assert torch.equal(y[keep], x[keep])
    assert not torch.equal(y[~keep], x[~keep])
    assert (y[~keep] != x[~keep]).any(dim=-1).all()                            # every free vector moved


def test_one_sequence_from_position_zero_keeps_its_sink_prefix_bit_identical():
    """The model's usual context read (one row, positions 0..L-1) takes the prefix copy instead of a mask."""
    x = torch.randn(1, 12, 3, 16)
    y = make_plan(0.5, "V", sink=6).apply("V", 0, x, positions(1, 12))
    assert torch.equal(y[0, :6], x[0, :6])
    assert (y[0, 6:] != x[0, 6:]).any(dim=-1).all()


@pytest.mark.parametrize("kind", KINDS)
def test_direction_map_equals_perturbing_in_the_mapped_frame(kind):
    """pK's shortcut: R·perturb(R⁻¹x, g) = perturb(x, R·g) for an orthogonal R, with the same draws."""
    x = torch.randn(1, 20, 3, 16, dtype=torch.float64)
    rotation, _ = torch.linalg.qr(torch.randn(16, 16, dtype=torch.float64))
    pos = positions(1, 20)
    inside = make_plan(0.5, kind=kind, seeds=(3,)).apply("K", 0, x @ rotation, pos) @ rotation.T
    mapped = make_plan(0.5, kind=kind, seeds=(3,)).apply("K", 0, x, pos, direction_map=lambda g: g @ rotation.T)
    torch.testing.assert_close(mapped, inside, rtol=1e-9, atol=1e-9)


def test_sink_protect_zero_still_protects_padding_and_large_counts_protect_everything():
    x = torch.randn(1, 8, 2, 8)
    pos = torch.tensor([[0, 1, 2, 3, 4, 5, -1, -1]])
    y = make_plan(0.5, sink=0).apply("K", 0, x, pos)
    assert torch.equal(y[0, 6:], x[0, 6:]) and (y[0, :6] != x[0, :6]).any(dim=-1).all()
    y = make_plan(0.5, sink=100).apply("K", 0, x, pos)
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


def test_decode_step_positions_beyond_the_sink_are_all_perturbed():
    x = torch.randn(1, 1, 9, 64)
    y = make_plan(0.3, "Q").apply("Q", 2, x, torch.tensor([[57]]))
    assert (y != x).any(dim=-1).all()


def test_same_seed_same_noise_and_different_seed_different_noise():
    x = torch.randn(1, 20, 3, 32)
    pos = positions(1, 20)
    a = make_plan(seeds=(7,)).apply("K", 1, x, pos)
    b = make_plan(seeds=(7,)).apply("K", 1, x, pos)
    c = make_plan(seeds=(8,)).apply("K", 1, x, pos)
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_successive_calls_draw_fresh_noise_from_the_stream():
    x = torch.randn(1, 20, 3, 32)
    plan = make_plan()
    assert not torch.equal(plan.apply("K", 0, x, positions(1, 20)), plan.apply("K", 0, x, positions(1, 20)))


@pytest.mark.parametrize("kind", KINDS)
def test_each_row_uses_its_own_generator_whatever_else_is_in_the_batch(kind):
    """Row b's result is the same alone or batched with other rows, even when the batch pads it."""
    lengths, seeds = (12, 7, 15), (3, 4, 5)
    width = max(lengths)
    xs = [torch.randn(1, n, 2, 16) for n in lengths]
    batch_x = torch.zeros(3, width, 2, 16)
    batch_pos = torch.full((3, width), -1)
    for b, (x, n) in enumerate(zip(xs, lengths)):                             # right-pad each row
        batch_x[b, :n] = x[0]
        batch_pos[b, :n] = torch.arange(n)
    drugs = Drugs(dose_theta=0.5, sites="V", kind=kind, sink_protect=2)
    batched = drugs.plan(2, [gen(s) for s in seeds]).apply("V", 1, batch_x, batch_pos)
    for b, (x, n, seed) in enumerate(zip(xs, lengths, seeds)):
        alone = drugs.plan(2, [gen(seed)]).apply("V", 1, x, positions(1, n))
        assert torch.equal(batched[b, :n], alone[0])
        assert torch.equal(batched[b, n:], batch_x[b, n:])                   # padding untouched


def test_padding_in_the_middle_of_a_row_is_skipped():
    x = torch.randn(2, 6, 1, 8)
    pos = torch.tensor([[6, 7, -1, 8, -1, 9], [6, 7, 8, 9, 10, 11]])
    y = make_plan(0.5, seeds=(0, 1)).apply("K", 0, x, pos)
    assert torch.equal(y[0, [2, 4]], x[0, [2, 4]])
    assert (y[0, [0, 1, 3, 5]] != x[0, [0, 1, 3, 5]]).any(dim=-1).all()


def test_positions_must_match_the_batch_and_the_generators():
    plan = make_plan(seeds=(0, 1))
    with pytest.raises(SamplerArgumentError, match="positions"):
        plan.apply("K", 0, torch.randn(1, 4, 2, 8), positions(1, 4))            # 1 row, 2 generators
    with pytest.raises(SamplerArgumentError, match="positions"):
        plan.apply("K", 0, torch.randn(2, 4, 2, 8), positions(2, 3))


# ------------------------------------------------------------------------------------ key noise drawn on the scores

def scores_both_ways(kind: str, sites: str, d: int, groups: int, count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One key repeated `count` times, seen by `groups` queries: the noisy scores from perturbing the keys
    (NoisePlan.apply) and from perturb_scores, each with its own seed. [groups, count] each."""
    torch.manual_seed(d * 10 + groups)
    q = torch.randn(1, 1, groups, d)
    k = torch.randn(d).expand(1, 1, count, d).contiguous()
    pos = positions(1, count, start=6)
    keys = k.transpose(1, 2)
    for i, site in enumerate(sites.split(",")):
        keys = make_plan(1.0, sites, kind=kind, seeds=(10 + i,), n_layers=1).apply(site, 0, keys, pos)
    explicit = (q @ keys.permute(0, 2, 3, 1))[0, 0]
    drawn = make_plan(1.0, sites, kind=kind, seeds=(1,), n_layers=1).perturb_scores(0, q, k, q @ k.transpose(-1, -2),
                                                                                    pos)[0, 0]
    return explicit, drawn


@pytest.mark.parametrize("kind", ["rotation", "normal", "euclidean"])
@pytest.mark.parametrize("d,groups,sites", [(64, 3, "K"), (8, 2, "K"), (16, 4, "pK,K")])
def test_noise_drawn_on_the_scores_has_the_distribution_of_noisy_keys(kind, d, groups, sites):
    """Each query head's scores pass a two-sample Kolmogorov-Smirnov test (20000 draws each, α = 1e-4) and the
    correlation between heads agrees within sampling error."""
    explicit, drawn = scores_both_ways(kind, sites, d, groups, 20000)
    count = explicit.shape[1]
    critical = math.sqrt(-math.log(1e-4 / 2) / 2) * math.sqrt(2 / count)
    for a, b in zip(explicit.double(), drawn.double()):
        grid = torch.cat([a, b]).sort().values
        cdf_a = torch.searchsorted(a.sort().values, grid, right=True) / count
        cdf_b = torch.searchsorted(b.sort().values, grid, right=True) / count
        assert (cdf_a - cdf_b).abs().max() <= critical
    assert (torch.corrcoef(explicit) - torch.corrcoef(drawn)).abs().max() <= 0.06


def test_noise_on_the_scores_spares_sinks_and_padding_and_keeps_rows_apart():
    torch.manual_seed(0)
    q, k = torch.randn(2, 2, 3, 16), torch.randn(2, 2, 12, 16)
    clean = q @ k.transpose(-1, -2)
    pos = torch.stack([torch.arange(12), torch.tensor(list(range(9)) + [-1, -1, -1])])
    noisy = make_plan(0.5, "pK,K", seeds=(4, 5)).perturb_scores(0, q, k, clean, pos)
    assert torch.equal(noisy[..., :6], clean[..., :6]) and torch.equal(noisy[1, ..., 9:], clean[1, ..., 9:])
    assert (noisy[0, ..., 6:] != clean[0, ..., 6:]).all() and (noisy[1, ..., 6:9] != clean[1, ..., 6:9]).all()
    alone = make_plan(0.5, "pK,K", seeds=(5,)).perturb_scores(0, q[1:], k[1:, :, :9], clean[1:, ..., :9],
                                                            positions(1, 9))
    # a row's draws do not depend on the batch (its matmuls over 9 or 12 keys may round differently)
    assert torch.allclose(alone[0], noisy[1, ..., :9], rtol=1e-5, atol=1e-5)


def test_scores_path_only_for_isotropic_noise_with_room_for_the_queries():
    assert make_plan(0.5, "K").perturbs_scores(0, head_dim=64, groups=3)
    assert make_plan(0.5, "pK").perturbs_scores(0, head_dim=8, groups=2)
    assert not make_plan(0.5, "V").perturbs_scores(0, head_dim=64, groups=3)            # no key noise here
    assert not make_plan(0.5, "K", kind="rotation-compat").perturbs_scores(0, head_dim=64, groups=3)
    assert not make_plan(0.5, "K").perturbs_scores(0, head_dim=4, groups=3)             # the span fills the space


# --------------------------------------------------------------------------------------------- the plan interface

def test_zero_dose_means_no_plan_and_a_falsy_drugs():
    assert not Drugs.off() and Drugs.off().plan(5, [gen()]) is None
    assert Drugs(dose_theta=0.0, sites="K").plan(5, [gen()]) is None
    assert Drugs(dose_theta=0.3, sites={"K": 0.0}).plan(5, [gen()]) is None
    assert Drugs(dose_theta=0.3, sites="K", dose_shape=[0, 0, 0]).plan(3, [gen()]) is None
    assert not Drugs(dose_theta=0.3, sites="K", dose_shape=[0, 0, 0])
    assert Drugs(dose_theta=0.3, sites="K")


def test_plan_thetas_per_site_and_layer_and_zero_sites_return_a_copy():
    plan = Drugs(dose_theta=0.5, sites={"Q": 1.0, "v": 0.2}, dose_shape=[1.0, 0.0, 2.0]).plan(3, [gen()])
    assert [plan.theta("Q", i) for i in range(3)] == [0.5, 0.0, 1.0]
    assert [plan.theta("V", i) for i in range(3)] == pytest.approx([0.1, 0.0, 0.2])
    assert all(plan.theta(site, i) == 0.0 for site in ("H", "pK", "K", "A") for i in range(3))
    x = torch.randn(1, 9, 2, 8)
    y = plan.apply("K", 0, x, positions(1, 9))
    assert torch.equal(y, x) and y.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("site,taints", [("H", True), ("Q", True), ("A", True),
                                         ("K", False), ("pK", False), ("V", False)])
def test_only_h_q_a_noise_taints_the_cache(site, taints):
    assert make_plan(sites=site).taints_cache is taints
    assert Drugs(dose_theta=0.2, sites=site).taints_cache is taints
    # a shape that gives the site no dose in this model does not taint it
    assert Drugs(dose_theta=0.2, sites=[site, "K"], dose_shape=[1, 0]).plan(2, [gen()]).taints_cache is taints
    assert Drugs(dose_theta=0.2, sites={site: 0.0, "K": 1.0}).plan(2, [gen()]).taints_cache is False


# -------------------------------------------------------------------------------------------------------- shapes

def test_uniform_shape_gives_every_layer_the_full_dose():
    assert Drugs(dose_theta=0.3, sites="A").layer_thetas(5)["A"] == [0.3] * 5


def test_peak_shape_is_a_raised_cosine_reaching_one_at_depth_and_zero_beyond_width():
    expected = [0, 0, 0, 0.5, 1, 0.5, 0, 0, 0, 0]       # depth z = layer/10; 0.5 at half a width away
    for shape in (Peak(depth=0.4, width=0.2), "peak:0.4:0.2", "PEAK:0.4:0.2"):
        assert Drugs(dose_theta=1.0, sites="K", dose_shape=shape).layer_thetas(10)["K"] == pytest.approx(expected)
    thetas = Drugs(dose_theta=2.0, sites="K", dose_shape="peak:0.5:0.4").layer_thetas(10)["K"]
    assert thetas[5] == pytest.approx(2.0) and thetas[3] == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi / 2)))


def test_explicit_per_layer_multipliers_and_their_length_check():
    drugs = Drugs(dose_theta=0.5, sites="K", dose_shape=[0, 1, 2])
    assert drugs.layer_thetas(3)["K"] == [0.0, 0.5, 1.0]
    assert Drugs(dose_theta=0.5, sites="K", dose_shape="0,1,2") == drugs
    with pytest.raises(SamplerArgumentError, match=r"dose_shape.*3.*5"):
        drugs.plan(5, [gen()])


POINTS = [{"depth": 0.2, "peakratio": 0.0}, {"depth": 0.6, "peakratio": 0.5}, {"depth": 0.4, "peakratio": 1.0}]
# layers at depth 0.0 .. 0.9 (n_layers = 10). Outside [0.2, 0.6] the end values hold; a layer exactly on the inner
# point 0.4 brackets with (0.2, 0.4), as DRUGS' loop does, so ceil = max(0, 1) and floor = min(0, 1) there.
PROFILE_EXPECTED = {
    "interpolate": [0, 0, 0, 0.5, 1, 0.75, 0.5, 0.5, 0.5, 0.5],
    "ceil":        [0, 0, 0, 1, 1, 1, 0.5, 0.5, 0.5, 0.5],
    "floor":       [0, 0, 0, 0, 0, 0.5, 0.5, 0.5, 0.5, 0.5],
}


@pytest.mark.parametrize("mode", sorted(PROFILE_EXPECTED))
def test_drugs_profile_modes_against_hand_values(mode):
    drugs = Drugs(dose_theta=1.0, sites="K", dose_shape=DoseProfile(POINTS, mode))
    assert drugs.layer_thetas(10)["K"] == pytest.approx(PROFILE_EXPECTED[mode])
    text = f"profile:{mode}:0.2=0,0.6=0.5,0.4=1"
    assert Drugs(dose_theta=1.0, sites="K", dose_shape=text).layer_thetas(10)["K"] == pytest.approx(
        PROFILE_EXPECTED[mode])


def test_plain_list_of_points_is_an_interpolated_profile_and_readme_ramp_works():
    drugs = Drugs(dose_theta=1.0, sites="K", dose_shape=POINTS)
    assert drugs.dose_shape == DoseProfile(POINTS, "interpolate")
    # DRUGS README: depth 0.4, spread 0.1, 'ceil' ramp 0 -> 1 -> 1 -> 0
    ramp = [{"depth": 0.4 - 0.1 * 1.01, "peakratio": 0}, {"depth": 0.3, "peakratio": 1},
            {"depth": 0.5, "peakratio": 1}, {"depth": 0.4 + 0.1 * 1.01, "peakratio": 0}]
    thetas = Drugs(dose_theta=0.1, sites="A", dose_shape=DoseProfile(ramp, "ceil")).layer_thetas(10)["A"]
    assert thetas == pytest.approx([0, 0, 0, 0.1, 0.1, 0.1, 0, 0, 0, 0])


# -------------------------------------------------------------------------------------------------- bad arguments

@pytest.mark.parametrize("kwargs,argument", [
    ({"dose_theta": -0.1}, "dose_theta"),
    ({"dose_theta": float("nan")}, "dose_theta"),
    ({"dose_theta": float("inf")}, "dose_theta"),
    ({"dose_theta": "0.3"}, "dose_theta"),
    ({"dose_theta": True}, "dose_theta"),
    ({"sites": "K,X"}, "sites"),
    ({"sites": ["Q", "keys"]}, "sites"),
    ({"sites": {"K": -1.0}}, "sites"),
    ({"sites": 3}, "sites"),
    ({"dose_shape": "bumpy"}, "dose_shape"),
    ({"dose_shape": "peak:0.4"}, "dose_shape"),
    ({"dose_shape": "peak:1.5:0.1"}, "dose_shape"),
    ({"dose_shape": "peak:0.4:0"}, "dose_shape"),
    ({"dose_shape": [1.0, -0.5]}, "dose_shape"),
    ({"dose_shape": []}, "dose_shape"),
    ({"dose_shape": "profile:median:0=1"}, "dose_shape"),
    ({"dose_shape": "profile:ceil:0.5"}, "dose_shape"),
    ({"dose_shape": [{"depth": 0.5}]}, "dose_shape"),
    ({"sink_protect": -1}, "sink_protect"),
    ({"sink_protect": 2.5}, "sink_protect"),
    ({"cold_shower_every": 0}, "cold_shower_every"),
    ({"cold_shower_every": 1.5}, "cold_shower_every"),
    ({"cold_shower_every": True}, "cold_shower_every"),
    ({"kind": "gaussian"}, "kind"),
])
def test_bad_arguments_are_named(kwargs, argument):
    with pytest.raises(SamplerArgumentError, match=argument):
        Drugs(**({"dose_theta": 0.3, "sites": "K"} | kwargs))


@pytest.mark.parametrize("depth,width", [(0.4, -1), (0.4, 0), (-0.1, 0.2), (1.2, 0.2), (float("nan"), 0.1)])
def test_bad_peaks_are_named(depth, width):
    with pytest.raises(SamplerArgumentError, match="dose_shape"):
        Peak(depth=depth, width=width)


def test_a_bad_model_layer_count_is_named():
    with pytest.raises(SamplerArgumentError, match="n_layers"):
        Drugs(dose_theta=0.3, sites="K").plan(0, [gen()])


def test_unknown_site_error_lists_the_valid_sites():
    with pytest.raises(SamplerArgumentError) as info:
        Drugs(dose_theta=0.3, sites="K,Z")
    assert all(site in str(info.value) for site in SITES) and "'Z'" in str(info.value)


def test_sites_are_case_insensitive_and_normalised():
    drugs = Drugs(dose_theta=0.2, sites="a, pk ,h,k")
    assert drugs.sites == (("H", 1.0), ("pK", 1.0), ("K", 1.0), ("A", 1.0))
    assert Drugs(dose_theta=0.2, sites=["A", "PK", "H", "K"]) == drugs
    assert Drugs(dose_theta=1.0, sites="K=0.5,V").site_thetas == {"K": 0.5, "V": 1.0}
    assert Drugs(dose_theta=0.5, sites={"K": 0.5}).site_thetas == {"K": 0.25}
    assert Drugs(dose_theta=0.3, sites="K", kind="Normal").kind == "normal"


def test_drugs_is_hashable_and_helpers_change_one_thing():
    drugs = Drugs(dose_theta=0.3, sites={"K": 1.0, "V": 0.5}, dose_shape="peak:0.4:0.15", cold_shower_every=100)
    assert hash(drugs) == hash(Drugs(dose_theta=0.3, sites="K,V=0.5", dose_shape=Peak(0.4, 0.15),
                                     cold_shower_every=100))
    stronger = drugs.with_dose(0.6)
    assert stronger.site_thetas == {"K": 0.6, "V": 0.3} and stronger.dose_shape == drugs.dose_shape
    assert drugs.with_sites("Q").sites == (("Q", 1.0),)
    assert drugs.with_shape("uniform").dose_shape == "uniform"
    assert drugs.with_kind("euclidean").kind == "euclidean"
    with pytest.raises(SamplerArgumentError, match="dose_theta"):
        drugs.with_dose(-1)


def test_describe():
    assert Drugs.off().describe() == "DRµGS off"
    text = Drugs(dose_theta=0.3, sites="K,V=0.5", dose_shape="peak:0.4:0.15", cold_shower_every=420).describe()
    for part in ("rotation", "θ=0.3", "K", "V×0.5", "peak", "0.4", "0.15", "420", "sink_protect 6"):
        assert part in text


# ------------------------------------------------------------------------------------------- CLI and chat command

def parse_cli(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_drugs_args(parser)
    return parser.parse_args(list(argv))


def test_cli_flags():
    assert drugs_from_args(parse_cli()) is None
    assert drugs_from_args(parse_cli("--dose-theta", "0")) is None
    drugs = drugs_from_args(parse_cli("--dose-theta", "0.3", "--drug-sites", "H,Q,K", "--dose-shape", "peak:0.4:0.15",
                                      "--sink-protect", "4", "--cold-shower-every", "64", "--drug-kind", "normal"))
    assert drugs == Drugs(dose_theta=0.3, sites="H,Q,K", dose_shape=Peak(0.4, 0.15), sink_protect=4,
                          cold_shower_every=64, kind="normal")
    assert drugs_from_args(parse_cli("--dose-theta", "0.5")).sites == (("K", 1.0),)     # DRUGS' just_chat default
    assert drugs_from_args(parse_cli("--dose-theta", "0.5", "--dose-shape", "0,1,1")).dose_shape == (0.0, 1.0, 1.0)


@pytest.mark.parametrize("argv,argument", [
    (("--dose-theta", "lots"), "dose_theta"),
    (("--dose-theta", "-1"), "dose_theta"),
    (("--drug-sites", "K"), "dose_theta"),
    (("--dose-theta", "0.3", "--drug-sites", "K,W"), "sites"),
    (("--dose-theta", "0.3", "--dose-shape", "peak:x:0.1"), "dose_shape"),
    (("--dose-theta", "0.3", "--sink-protect", "-2"), "sink_protect"),
    (("--dose-theta", "0.3", "--cold-shower-every", "soon"), "cold_shower_every"),
    (("--dose-theta", "0.3", "--drug-kind", "loud"), "kind"),
])
def test_cli_errors_name_the_argument(argv, argument):
    with pytest.raises(SamplerArgumentError, match=argument):
        drugs_from_args(parse_cli(*argv))


def test_drugs_chat_command():
    current = parse_drugs_command("/drugs theta=0.3 sites=K,V shape=peak:0.4:0.15", None)
    assert current == Drugs(dose_theta=0.3, sites="K,V", dose_shape=Peak(0.4, 0.15))
    assert parse_drugs_command("/drugs", current) is current
    assert parse_drugs_command("/drugs off", current) is None
    assert parse_drugs_command("/drugs theta=0", current) is None
    changed = parse_drugs_command("/drugs theta=0.5 kind=euclidean shower=100 sink=2", current)
    assert (changed.dose_theta, changed.kind, changed.cold_shower_every, changed.sink_protect) == (0.5, "euclidean",
                                                                                                   100, 2)
    assert changed.sites == current.sites and changed.dose_shape == current.dose_shape
    assert parse_drugs_command("/drugs shower=off", changed).cold_shower_every is None
    assert parse_drugs_command("theta=0.2", None).sites == (("K", 1.0),)


@pytest.mark.parametrize("text,argument", [
    ("/drugs sites=K", "dose_theta"),                 # no current dose and no theta
    ("/drugs theta=-0.3", "dose_theta"),
    ("/drugs theta=0.3 sites=K,X", "sites"),
    ("/drugs theta=0.3 shape=peak:2:1", "dose_shape"),
    ("/drugs theta=0.3 shower=-4", "cold_shower_every"),
    ("/drugs theta=0.3 kind=?", "kind"),
    ("/drugs strength=9", "/drugs"),
    ("/drugs theta", "theta"),
])
def test_drugs_chat_command_errors_name_the_argument_and_keep_the_current_dose(text, argument):
    current = None if text == "/drugs sites=K" else Drugs(dose_theta=0.1, sites="A")
    with pytest.raises(SamplerArgumentError, match=argument):
        parse_drugs_command(text, current)
    assert current is None or current == Drugs(dose_theta=0.1, sites="A")


def test_parse_dose_shape_forms():
    assert parse_dose_shape(" uniform ") == "uniform"
    assert parse_dose_shape("peak:0.3:0.1") == Peak(0.3, 0.1)
    assert parse_dose_shape("profile:floor:0=1,1=0") == DoseProfile([(0, 1), (1, 0)], "floor")
    assert parse_dose_shape("1,0.5") == (1.0, 0.5)
