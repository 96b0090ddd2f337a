import json

import numpy as np
import pytest

from alignnet.cli.main import main as cli
from alignnet.model.contract import DataContract
from alignnet.model.metrics import r2
from alignnet.recordings.dataset import DataError, Dataset, Day, write_dataset
from alignnet.recordings.importers import (
    bin_day,
    export_nwb,
    import_binned_npz,
    import_broadband,
    import_nwb,
    simday_to_day,
)
from alignnet.recordings.linear import fit_ridge, lagged_features, predict_ridge, within_day_r2
from alignnet.recordings.simulator import DriftConfig, SimConfig, simulate_days
from alignnet.recordings.summary import angle_diff_deg, fit_preferred_directions
from tests.conftest import real_file


def test_same_seed_same_data_and_other_seed_differs(tiny_sim_cfg, tiny_days):
    again = [simday_to_day(sd, 0.02, 0.04) for sd in simulate_days(tiny_sim_cfg)]
    for a, b in zip(tiny_days, again):
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.pos, b.pos)
    other = next(simulate_days(SimConfig(n_days=1, trials_per_day=40, seed=8)))
    assert not np.array_equal(simday_to_day(other, 0.02, 0.04).counts[:500], tiny_days[0].counts[:500])


def test_simulated_day_is_realistic(tiny_sim_days, tiny_days):
    sd, day = tiny_sim_days[0], tiny_days[0]
    rates = day.counts.mean(0) / day.bin_s
    assert 3 < np.median(rates) < 40, "channel rates should sit in the M1 range"
    assert day.n_trials == 40 and day.counts.shape[1] == 64
    # spikes sorted by channel then time, on the 30-kHz grid, with a 1-ms dead time
    same = sd.spike_channels[1:] == sd.spike_channels[:-1]
    assert np.all(np.diff(sd.spike_samples)[same] >= 30)
    # bell-shaped reaches: peak speed well inside each reach, joystick within range
    assert np.abs(sd.behavior).max() < 1.5
    # binning conserves every spike of the kept bins
    assert day.counts.sum() == np.sum(sd.spike_samples < day.n_bins * 600)


def test_drift_matches_configuration():
    drift = DriftConfig(pd_deg=15.0, gain_log_std=0.0, baseline_log_std=0.0, unit_loss=0.0, unit_gain=0.0,
                        shift_std=0.0)
    cfg = SimConfig(n_days=4, trials_per_day=120, seed=3, drift=drift)
    days = [simday_to_day(sd, 0.02, 0.04) for sd in simulate_days(cfg)]
    # the ground truth random walk has the configured step size (per unit, per day)
    steps = np.concatenate([
        np.rad2deg(np.angle(np.exp(1j * (days[k + 1].extra["truth_pd"] - days[k].extra["truth_pd"]))))[
            days[k].extra["truth_active"]] for k in range(3)])
    assert 12.0 < steps.std() < 18.0
    # preferred directions fitted from the spikes move as much as the truth says
    pd0, fit0 = fit_preferred_directions(days[0])
    pd3, fit3 = fit_preferred_directions(days[3])
    tuned = (fit0 > 0.02) & (fit3 > 0.02)
    assert tuned.sum() >= 20
    fitted = np.median(angle_diff_deg(pd3[tuned], pd0[tuned]))
    truth = np.median(angle_diff_deg(days[3].extra["truth_channel_pd"], days[0].extra["truth_channel_pd"])[tuned])
    assert truth > 10
    assert abs(fitted - truth) < 0.35 * truth + 3, (fitted, truth)


def test_linear_decoder_from_day_one_loses_r2_later(tiny_days):
    ref = tiny_days[0]
    x0 = lagged_features(ref.counts, 10, ref.segment_id)
    model = fit_ridge(x0, ref.pos)
    scores = [r2(d.pos, predict_ridge(model, lagged_features(d.counts, 10, d.segment_id))) for d in tiny_days]
    within = within_day_r2(tiny_days[2].counts, tiny_days[2].pos, tiny_days[2].trial_id, tiny_days[2].segment_id, 10)
    assert within > 0.4, "position should be linearly decodable within a day"
    assert scores[2] < within - 0.05, f"day-0 decoder should lose R² on day 2: {scores} vs within {within}"


def test_nwb_round_trip_gives_identical_counts(tiny_sim_days, tiny_days, tmp_path):
    path = tmp_path / "day0.nwb"
    export_nwb(tiny_sim_days[0], path)
    day = import_nwb(path, 0.02, 0.04)
    np.testing.assert_array_equal(day.counts, tiny_days[0].counts)
    np.testing.assert_allclose(day.pos, tiny_days[0].pos, atol=1e-6)
    np.testing.assert_array_equal(day.trial_id, tiny_days[0].trial_id)
    np.testing.assert_array_equal(day.target, tiny_days[0].target)


def test_broadband_import_detects_the_simulated_spikes(tiny_sim_days, tmp_path):
    from alignnet.recordings.broadband import simulate_broadband
    from alignnet.recordings.simulator import SPIKE_FS

    sd = tiny_sim_days[0]
    n = 3 * SPIKE_FS
    keep = sd.spike_samples < n
    x = simulate_broadband(sd.spike_samples[keep], sd.spike_channels[keep], 64, n, snr=8.0)
    np.savez(tmp_path / "bb.npz", broadband=x, fs=SPIKE_FS, behavior=sd.behavior[:3000], behavior_fs=1000.0)
    day = import_broadband(tmp_path / "bb.npz", 0.02, 0.04)
    # overlapping spikes on one channel merge, so a few percent are lost; nothing is invented
    ratio = day.counts.sum() / keep.sum()
    assert 0.85 < ratio <= 1.02, ratio
    with pytest.raises(DataError, match="channels, expected 96"):
        import_broadband(tmp_path / "bb.npz", 0.02, 0.04, n_channels=96)


def test_dataset_write_and_load(tiny_days, tmp_path):
    contract = DataContract(n_channels=64, bin_s=0.02, window_bins=100)
    ds = write_dataset(tmp_path / "ds", tiny_days, subject="s", source="test", contract=contract, units_matched=True)
    back = Dataset(tmp_path / "ds")
    assert back.day_names == [d.name for d in tiny_days]
    np.testing.assert_array_equal(back.day(1).counts, tiny_days[1].counts)
    counts, beh, trials = back.day(0).windows(100, 10)
    assert counts.shape[1:] == (64, 100) and beh.shape[1:] == (2, 100) and trials.shape == (counts.shape[0], 100)
    with pytest.raises(DataError, match="already exists"):
        write_dataset(tmp_path / "ds", tiny_days, subject="s", source="t", contract=contract, units_matched=True)
    assert ds.contract().window_bins == 100


# ---- real recordings -------------------------------------------------------------------------------------------
@pytest.mark.real
@pytest.mark.parametrize("name,bins,units,trials", [
    ("chewie-2013-10-03-bin100ms-moving.npz", 895, 174, 159),
    ("chewie-2013-12-19-bin100ms-moving.npz", 835, 155, 180),
    ("chewie-2013-10-03-bin100ms-all.npz", 1640, 174, 159),
])
def test_chewie_import_shapes_and_ridge_r2(name, bins, units, trials):
    day = import_binned_npz(real_file(name))
    assert day.counts.shape == (bins, units)
    assert day.vel.shape == (bins, 2) and day.n_trials == trials
    assert np.all(np.diff(day.trial_id) >= 0)
    # README: within-day ridge R² for velocity about 0.70-0.75 with 5-fold CV split by trial
    score = within_day_r2(day.counts, day.vel, day.trial_id, day.segment_id, n_lags=2, n_folds=5)
    assert 0.62 < score < 0.85, score


@pytest.mark.real
def test_cli_import_and_info_on_both_chewie_days(tmp_path, capsys):
    a = real_file("chewie-2013-10-03-bin100ms-moving.npz")
    b = real_file("chewie-2013-12-19-bin100ms-moving.npz")
    assert cli(["data", "import", str(a), str(b), "--out", str(tmp_path / "R"), "--behavior", "vel"]) == 0
    assert cli(["data", "info", str(tmp_path / "R"), "--json", str(tmp_path / "info.json")]) == 0
    out = capsys.readouterr().out
    assert "chewie-2013-10-03" in out and "chewie-2013-12-19" in out
    info = json.loads((tmp_path / "info.json").read_text())
    assert [d["channels"] for d in info["days"]] == [174, 155]
    assert Dataset(tmp_path / "R").units_matched is False


# ---- the command line and bad input ----------------------------------------------------------------------------
def test_cli_simulate_then_info(tmp_path, capsys):
    out = tmp_path / "D"
    assert cli(["data", "simulate", "--days", "2", "--trials", "15", "--out", str(out), "--nwb"]) == 0
    assert cli(["data", "info", str(out)]) == 0
    text = capsys.readouterr().out
    assert "day000" in text and "day001" in text and "drift against the first day" in text
    assert (out / "nwb" / "day001.nwb").is_file()
    # the written NWB files import back into a dataset with the same counts
    assert cli(["data", "import", str(out / "nwb"), "--out", str(tmp_path / "N"), "--units-matched"]) == 0
    np.testing.assert_array_equal(Dataset(tmp_path / "N").day(1).counts, Dataset(out).day(1).counts)
    # refusing to clobber: the first dataset is untouched
    before = (out / "manifest.json").read_bytes()
    assert cli(["data", "simulate", "--days", "1", "--trials", "5", "--out", str(out)]) == 2
    assert (out / "manifest.json").read_bytes() == before
    assert "already exists" in capsys.readouterr().err


def test_days_simulated_in_worker_processes_are_the_same_days(tmp_path):
    """Paper scale simulates days in parallel; the dataset must not depend on how many workers drew it."""
    from alignnet.recordings.build import in_order, simulate_dataset

    cfg = SimConfig(n_days=3, trials_per_day=12, seed=5)
    one = simulate_dataset(tmp_path / "one", cfg, workers=1)
    three = simulate_dataset(tmp_path / "three", cfg, workers=3)
    assert one.day_names == three.day_names == ["day000", "day001", "day002"]
    for k in range(3):
        a, b = one.day(k), three.day(k)
        np.testing.assert_array_equal(a.counts, b.counts)
        np.testing.assert_array_equal(a.pos, b.pos)
        np.testing.assert_array_equal(a.extra["truth_rate"], b.extra["truth_rate"])
    assert json.loads((tmp_path / "one" / "manifest.json").read_text())["days"] == \
        json.loads((tmp_path / "three" / "manifest.json").read_text())["days"]
    # a day that fails in a worker fails the whole run with its own error, not a hang or a half-written dataset
    with pytest.raises(ZeroDivisionError):
        list(in_order(divmod, [(1, 1), (1, 0), (2, 1)], workers=2))
    with pytest.raises(DataError, match="--workers"):
        simulate_dataset(tmp_path / "bad", cfg, workers=-1)


def test_bad_inputs_get_clear_errors(tmp_path, capsys, tiny_days):
    # a missing file
    assert cli(["data", "import", str(tmp_path / "nope.nwb"), "--out", str(tmp_path / "X")]) == 2
    assert "nope.nwb: file not found" in capsys.readouterr().err
    # a corrupt file
    (tmp_path / "bad.nwb").write_bytes(b"not hdf5")
    assert cli(["data", "import", str(tmp_path / "bad.nwb"), "--out", str(tmp_path / "X")]) == 2
    assert "bad.nwb: not a readable NWB file" in capsys.readouterr().err
    # a dataset folder without manifest
    assert cli(["data", "info", str(tmp_path)]) == 2
    assert "no dataset manifest" in capsys.readouterr().err
    # an NWB file without units
    import datetime

    from pynwb import NWBHDF5IO, NWBFile, TimeSeries

    nwb = NWBFile(session_description="x", identifier="x",
                  session_start_time=datetime.datetime.now(datetime.timezone.utc))
    nwb.add_acquisition(TimeSeries(name="joystick", data=np.zeros((100, 2)), unit="v", rate=100.0))
    with NWBHDF5IO(str(tmp_path / "nounits.nwb"), "w") as io:
        io.write(nwb)
    with pytest.raises(DataError, match="nounits.nwb: NWB file has no units"):
        import_nwb(tmp_path / "nounits.nwb", 0.02, 0.04)
    # spikes and behavior of different lengths
    with pytest.raises(DataError, match="different lengths"):
        bin_day("d", np.array([0.1]), np.array([0]), 1, np.arange(100) / 1000, np.zeros((100, 2)),
                np.array([0.0]), np.array([5.0]), None, 0.02, 0.04, source="short.npz")
    # NaN in behavior
    beh = np.zeros((5000, 2))
    beh[100] = np.nan
    with pytest.raises(DataError, match="NaN"):
        bin_day("d", np.array([0.1]), np.array([0]), 1, np.arange(5000) / 1000, beh,
                np.array([0.0]), np.array([5.0]), None, 0.02, 0.04, source="nan.npz")
    # a wrong channel count against a contract
    contract = DataContract(n_channels=64, bin_s=0.02, window_bins=100)
    with pytest.raises(ValueError, match=r"\(batch, 64, 100\)"):
        contract.check_spikes(np.zeros((1, 63, 100)))
    # a truncated day file
    tiny_days[0].save(tmp_path / "d.npz")
    (tmp_path / "t.npz").write_bytes((tmp_path / "d.npz").read_bytes()[:200])
    with pytest.raises(DataError, match="t.npz: not an .npz archive.*truncated"):
        Day.load(tmp_path / "t.npz")
