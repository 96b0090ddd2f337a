import json

import numpy as np
import pytest
import torch

from alignnet.model import DataContract, create_model, list_models
from alignnet.model.artifacts import ArtifactError, load_artifact, save_artifact, write_config
from alignnet.model.losses import info_nce, pretrain_loss
from alignnet.model.registry import model_class

# servable models: every one trains into an artifact, exports and serves (CEBRA, an evaluation-only yardstick, has
# its own test in tests/test_training.py)
ALL = [n for n in list_models() if model_class(n).servable]
TEST_MODELS = [n for n in ALL if n.startswith("test-")]


def _inputs(model, batch=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = model.config
    spikes = torch.log1p(torch.poisson(torch.full((batch, c.n_channels, c.window_bins), 0.5), generator=g))
    behavior = torch.randn(batch, c.behavior_dims, c.window_bins, generator=g)
    return spikes, behavior


def _contract(model) -> DataContract:
    c = model.config
    return DataContract(n_channels=c.n_channels, bin_s=0.02, window_bins=c.window_bins,
                        behavior_dims=c.behavior_dims, behavior_names=tuple(f"b{i}" for i in range(c.behavior_dims)),
                        spike_scale=[1.0] * c.n_channels, behavior_mean=[0.0] * c.behavior_dims,
                        behavior_std=[1.0] * c.behavior_dims)


def test_registry_has_every_model_and_a_test_variant():
    for name in ("alignnet", "wiener", "gru", "mlp", "resnet", "resnet-unet"):
        assert name in ALL and f"test-{name}" in ALL
    with pytest.raises(ValueError, match="registered models: .*alignnet"):
        create_model("nope")
    with pytest.raises(ValueError, match="unknown config field"):
        create_model("test-alignnet", widthz=(2,))
    with pytest.raises(ValueError, match="temperature"):
        create_model("test-alignnet", temperature=0.0)


@pytest.mark.parametrize("name", ALL)
def test_forward_shapes_both_directions_no_nan(name):
    model = create_model(name).eval()
    spikes, behavior = _inputs(model, batch=2)
    with torch.no_grad():
        decoded, rates = model.decode(spikes), model.simulate(behavior)
    assert decoded.shape == behavior.shape and rates.shape == spikes.shape
    assert torch.isfinite(decoded).all() and torch.isfinite(rates).all()
    assert (rates >= 0).all(), "simulated rates must be non-negative"
    with pytest.raises(ValueError, match="must be"):
        model.decode(spikes[:, :-1])


@pytest.mark.parametrize("name", TEST_MODELS)
def test_gradients_reach_every_trainable_parameter(name):
    torch.manual_seed(0)
    model = create_model(name).train()
    if not model.needs_gradients:
        pytest.skip("closed-form model: fitted by fit(), covered by test_wiener_fit_recovers_a_linear_filter")
    spikes, behavior = _inputs(model, batch=6)
    loss = ((model.decode(spikes) - behavior) ** 2).mean() + ((model.simulate(behavior) - spikes) ** 2).mean()
    if hasattr(model, "pretrain_outputs"):
        loss = loss + pretrain_loss(model.pretrain_outputs(spikes, behavior), spikes, behavior, 0.1)[0]
    loss.backward()
    dead = [n for n, p in model.named_parameters() if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0)]
    assert not dead, f"no gradient reaches: {dead}"


def test_firing_rates_after_initialisation_are_sane():
    torch.manual_seed(0)
    model = create_model("alignnet").train()  # batch norm on batch statistics, as training sees it
    spikes, _ = _inputs(model, batch=8)
    rates = model.firing_rates(spikes)
    assert all(0.05 < r < 0.6 for r in rates), rates


@pytest.mark.parametrize("name", ["test-alignnet", "alignnet"])
def test_repeated_calls_give_identical_outputs(name):
    model = create_model(name).eval()
    spikes, behavior = _inputs(model, batch=3)
    with torch.no_grad():
        a, b = model.decode(spikes), model.simulate(behavior)
        # a different batch size in between must not leak membrane state
        model.decode(spikes[:1])
        assert torch.equal(a, model.decode(spikes)) and torch.equal(b, model.simulate(behavior))


@pytest.mark.parametrize("name", ["test-alignnet", "alignnet"])
def test_spikingjelly_and_plain_lif_agree_on_the_same_weights(name):
    torch.manual_seed(1)
    sj = create_model(name).train()
    spikes, behavior = _inputs(sj, batch=5)
    sj(spikes)  # move batch-norm statistics away from their defaults
    sj.eval()
    plain = create_model(name, lif_impl="plain").eval()
    assert sj.state_dict().keys() == plain.state_dict().keys()
    plain.load_state_dict(sj.state_dict())
    with torch.no_grad():
        for a, b in zip(sj.encode_spikes(spikes)[1], plain.encode_spikes(spikes)[1]):
            assert torch.equal(a, b), "spikes inside the SNN differ"
        torch.testing.assert_close(sj.decode(spikes), plain.decode(spikes), atol=1e-6, rtol=0)
        torch.testing.assert_close(sj.simulate(behavior), plain.simulate(behavior), atol=1e-6, rtol=0)


@pytest.mark.parametrize("name", TEST_MODELS)
def test_artifact_round_trip_is_bit_identical(name, tmp_path):
    torch.manual_seed(2)
    model = create_model(name).eval()
    model.add_day("dayX", 11)
    spikes, behavior = _inputs(model)
    save_artifact(tmp_path / "a", model, _contract(model), provenance={"test": True}, metrics={"r2": 0.5})
    loaded, contract, config = load_artifact(tmp_path / "a")
    with torch.no_grad():
        assert torch.equal(model.decode(spikes), loaded.decode(spikes))
        assert torch.equal(model.simulate(behavior), loaded.simulate(behavior))
        x = torch.rand(2, 11, model.config.window_bins)
        assert torch.equal(model.decode(x, "dayX"), loaded.decode(x, "dayX"))
    assert contract.n_channels == model.config.n_channels
    assert config["metrics"]["r2"] == 0.5 and config["versions"]["torch"] == torch.__version__


def test_corrupted_or_mismatched_artifacts_are_refused(tmp_path):
    model = create_model("test-alignnet")
    folder = save_artifact(tmp_path / "a", model, _contract(model))
    weights = folder / "model.safetensors"
    blob = bytearray(weights.read_bytes())
    blob[-10] ^= 0xFF
    weights.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="SHA-256 does not match"):
        load_artifact(folder)
    save_artifact(folder, model, _contract(model))  # repaired
    load_artifact(folder)
    cfg = json.loads((folder / "config.json").read_text())
    cfg["format_version"] = 99
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="format version 99.*re-export"):
        load_artifact(folder)
    cfg["format_version"] = 1
    cfg["model_config"]["widths"] = [8, 8]
    (folder / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ArtifactError, match="changed after it was written"):  # its integrity record
        load_artifact(folder)
    write_config(folder, cfg)  # the same edit, re-sealed: the weights still do not fit
    with pytest.raises(ArtifactError, match="do not match the architecture"):
        load_artifact(folder)
    with pytest.raises(ArtifactError, match="not found"):
        load_artifact(tmp_path / "missing")
    with pytest.raises(ValueError, match="normalisation"):
        save_artifact(tmp_path / "b", model, DataContract(n_channels=16, window_bins=20))


def test_info_nce_prefers_matched_pairs():
    z = torch.randn(32, 16)
    matched, parts = info_nce(z, z + 0.01 * torch.randn(32, 16), 0.1)
    shuffled, _ = info_nce(z, torch.randn(32, 16), 0.1)
    assert parts["accuracy"] == 1.0
    assert matched < 0.1 < np.log(32) * 0.8 < shuffled


def test_wiener_fit_recovers_a_linear_filter():
    torch.manual_seed(0)
    model = create_model("test-wiener")
    c = model.config
    rng = np.random.default_rng(0)
    spikes = rng.poisson(1.0, (80, c.n_channels, c.window_bins)).astype(np.float32)
    truth = create_model("test-wiener")
    with torch.no_grad():
        truth.s2b.conv.weight.normal_(0, 0.3)
        truth.b2s.conv.weight.normal_(0, 0.3)
        behavior = truth.decode(torch.from_numpy(spikes)).numpy()
    chosen = model.fit(spikes, behavior)
    assert chosen["s2b_alpha"] <= 1.0
    with torch.no_grad():
        pred = model.decode(torch.from_numpy(spikes)).numpy()
    assert np.corrcoef(pred.ravel(), behavior.ravel())[0, 1] > 0.999


def test_day_read_in_can_be_trained_alone():
    model = create_model("test-alignnet")
    model.add_day("new", 7)
    params = model.day_parameters("new")
    for p in model.parameters():
        p.requires_grad_(False)
    for p in params:
        p.requires_grad_(True)
    x = torch.rand(3, 7, model.config.window_bins)
    out = model.decode(x, "new")
    out.sum().backward()
    assert all(p.grad is not None for p in model.days["new"].read_in.parameters())
    assert model.simulate(torch.randn(3, 2, model.config.window_bins), "new").shape == (3, 7, 20)
    with pytest.raises(KeyError, match="no read-in for day 'other'"):
        model.decode(x, "other")


@pytest.mark.parametrize("name", TEST_MODELS)
def test_causal_claim_holds(name):
    """A model that says it decodes causally must give the same output at bins <= t whatever comes after t; one
    that does not say so must really look ahead (so the table's causal column cannot be wrong either way)."""
    torch.manual_seed(0)
    model = create_model(name).eval()
    for p in model.parameters():  # the Wiener filter starts at zero: give every model weights that carry signal
        if not model.needs_gradients:
            p.data.normal_(0, 0.3)
    spikes, _ = _inputs(model, batch=2)
    t0 = model.config.window_bins // 2
    later = spikes.clone()
    later[..., t0 + 1:] = torch.rand_like(later[..., t0 + 1:]) * 3
    with torch.no_grad():
        a, b = model.decode(spikes)[..., : t0 + 1], model.decode(later)[..., : t0 + 1]
    same = torch.allclose(a, b, atol=1e-5)
    assert same == model.causal_decode, f"{name}: causal_decode={model.causal_decode}, outputs before t0 " \
                                        f"{'unchanged' if same else 'changed'} by later bins"


# ---- causality by gradient -----------------------------------------------------------------------------------------
CAUSAL = [n for n in ALL if create_model(n).causal_decode]
LOOKS_AHEAD = [n for n in TEST_MODELS if n not in CAUSAL]


def trained_like(name: str, seed: int = 0):
    """A model with weights that carry signal everywhere, in eval mode (as served): a closed-form filter's zero
    weights drawn at random, and every batch norm's gain and offset raised so that its spiking layers fire densely
    (a silent layer passes no surrogate gradient, and a path that passes none cannot be checked)."""
    torch.manual_seed(seed)
    model = create_model(name)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.0)
                m.weight.uniform_(1.0, 2.0)
                m.bias.uniform_(0.1, 0.4)
        if not model.needs_gradients:
            for p in model.parameters():
                p.normal_(0, 0.3)
    return model.eval()


def output_input_gradients(model, seed: int = 0) -> torch.Tensor:
    """(T, T): entry [t, s] = the largest |d output[:, t] / d input[:, s]| over behavior dims and channels, from one
    dense window of spikes. One backward pass: the window is repeated T times in a batch (eval mode: the batch
    elements are independent) and copy t contributes only its output bin t."""
    c = model.config
    g = torch.Generator().manual_seed(seed)
    window = torch.log1p(torch.poisson(torch.full((c.n_channels, c.window_bins), 2.0), generator=g))
    x = window.expand(c.window_bins, -1, -1).clone().requires_grad_(True)
    y = model.decode(x)  # (T, D, T)
    t = torch.arange(c.window_bins)
    y[t, :, t].sum().backward()
    return x.grad.abs().amax(dim=1)  # (T copies = output bin t, T input bins s)


@pytest.mark.parametrize("name", CAUSAL)
def test_a_causal_models_output_has_no_gradient_from_any_later_bin(name):
    """For every bin t of a window, d output[t] / d input[s] is exactly zero for every s > t, on weights that carry
    signal (the surrogate gradient of a spiking layer is non-zero wherever it is reached, so a look-ahead anywhere
    in the network shows). The gradient from earlier bins is not zero: the check can see a path."""
    model = trained_like(name)
    if hasattr(model, "firing_rates"):
        c = model.config
        dense = torch.log1p(torch.poisson(torch.full((4, c.n_channels, c.window_bins), 2.0)))
        assert min(model.firing_rates(dense)) > 0.1, model.firing_rates(dense)  # the spiking layers are not silent
    grad = output_input_gradients(model)
    later = torch.triu(torch.ones_like(grad, dtype=torch.bool), diagonal=1)
    leaks = (grad > 0) & later
    assert not leaks.any(), f"{name}: output bin {int(leaks.nonzero()[0, 0])} has a gradient from later bins " \
                            f"{leaks[leaks.nonzero()[0, 0]].nonzero().flatten().tolist()[:8]}"
    assert (grad.diagonal() > 0).all(), f"{name}: some output bin has no gradient from its own bin"


@pytest.mark.parametrize("name", LOOKS_AHEAD)
def test_a_model_that_claims_no_causality_has_gradient_from_later_bins(name):
    grad = output_input_gradients(trained_like(name))
    assert torch.triu(grad, diagonal=1).amax() > 0, f"{name} says it looks ahead, but no later bin moves its output"


# ---- the newest bin reads its own blocks (no stale context) ---------------------------------------------------------
def newest_bin_reads(model, newest_only: bool = True) -> dict[str, torch.Tensor]:
    """For the newest output bin of one dense window (or, ``newest_only=False``, all its bins): the largest
    |d output / d feature| in each time column of the spike latent map and of every coarse decoder level's output
    (the maps that are upsampled into the level below), keyed 'latent' and 'level<i>'. A column the output cannot
    read has gradient exactly zero."""
    c = model.config
    kept: dict[str, torch.Tensor] = {}

    def keep(name):
        def hook(_m, _i, out):
            out.retain_grad()
            kept[name] = out
        return hook

    handles = [model.spike_bottleneck.register_forward_hook(keep("latent"))]
    handles += [model.behavior_decoder.acts[i].register_forward_hook(keep(f"level{i}")) for i in range(1, c.depth)]
    try:
        g = torch.Generator().manual_seed(0)
        x = torch.log1p(torch.poisson(torch.full((1, c.n_channels, c.window_bins), 2.0), generator=g))
        y = model.decode(x)
        (y[..., -1] if newest_only else y).sum().backward()
    finally:
        for h in handles:
            h.remove()
    return {k: v.grad.abs().flatten(0, -2).amax(0) for k, v in kept.items()}


def test_blocks_at_the_windows_end_let_the_newest_bin_read_its_own_blocks_at_every_level():
    """block_alignment='end': the newest bin reads the latent column of its own coarsest block and the last column
    of every coarse decoder level, and every latent column reaches some bin of the window (13 at 100 bins, depth 3).
    'start' (the served causal variant's default): the last latent column and the last column of each coarse level
    are invisible to the newest bin (it reads context 12 bins old), and the last two latent columns reach no bin at
    all: the check sees that too, so it cannot pass on a stale model."""
    weights = trained_like("alignnet-causal").state_dict()
    for blocks, stale, live_columns in (("end", False, 13), ("start", True, 11)):
        model = create_model("alignnet-causal", block_alignment=blocks)
        model.load_state_dict(weights)
        model.eval()
        assert model.config.live_latent_columns == live_columns
        live = newest_bin_reads(model, newest_only=False)["latent"]
        assert int((live > 0).sum()) == live_columns, (blocks, live)
        for name, grad in newest_bin_reads(model).items():
            assert bool(grad[-1] == 0) is stale, f"{blocks}: the newest bin {'reads' if grad[-1] > 0 else 'skips'} " \
                                                 f"the last column of {name}"
