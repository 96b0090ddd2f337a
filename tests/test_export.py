import numpy as np
import pytest
import torch

from alignnet.cli.main import main as cli
from alignnet.model import DataContract, create_model
from alignnet.model.artifacts import ArtifactError, save_artifact
from alignnet.service.engines import ENGINES, load_engine
from alignnet.training.export import ExportError, export_artifact


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    torch.manual_seed(0)
    model = create_model("test-alignnet").train()
    model(torch.rand(8, 16, 20))  # non-default batch-norm statistics
    model.eval()
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=20, spike_scale=[0.7] * 16,
                            behavior_mean=[0.1, -0.2], behavior_std=[0.5, 0.8])
    folder = tmp_path_factory.mktemp("art") / "a"
    save_artifact(folder, model, contract)
    report = export_artifact(folder)
    return folder, report


def test_export_parity_both_formats_both_directions(exported):
    folder, report = exported
    # AlignNet also exports its spike latent (embed), the graph of the service's drift monitor
    assert set(report) == {"decode.onnx", "simulate.onnx", "embed.onnx", "decode.pt", "simulate.pt", "embed.pt"}
    for name, r in report.items():
        assert r["max_abs_diff"] <= 1e-4, name
    assert report["decode.onnx"]["spike_mismatches"] == 0 and report["decode.onnx"]["spikes_compared"] > 1000
    assert report["decode.pt"]["spike_mismatches"] == 0


def test_engines_agree_and_apply_the_contract(exported):
    folder, _ = exported
    rng = np.random.default_rng(1)
    counts = rng.poisson(1.0, (5, 16, 20)).astype(np.float32)
    behavior = rng.standard_normal((5, 2, 20)).astype(np.float32)
    out = {k: load_engine(folder, k) for k in ENGINES}
    ref_d, ref_s = out["eager"].decode(counts), out["eager"].simulate(behavior)
    assert ref_d.shape == (5, 2, 20) and ref_s.shape == (5, 16, 20) and (ref_s >= 0).all()
    for k in ("onnx", "torchscript"):
        np.testing.assert_allclose(out[k].decode(counts), ref_d, atol=1e-4)
        np.testing.assert_allclose(out[k].simulate(behavior), ref_s, atol=1e-4)
    # dynamic batch: 1 and 33 windows through the same graph
    assert out["onnx"].decode(counts[:1]).shape == (1, 2, 20)
    assert out["onnx"].decode(np.repeat(counts, 7, axis=0)[:33]).shape == (33, 2, 20)
    with pytest.raises(ValueError, match=r"\(batch, 16, 20\)"):
        out["onnx"].decode(counts[:, :15])
    with pytest.raises(ValueError, match="NaN"):
        out["onnx"].decode(np.full((1, 16, 20), np.nan, np.float32))


def test_corrupted_onnx_gives_a_clear_error(exported, tmp_path):
    import shutil

    folder, _ = exported
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    (copy / "decode.onnx").write_bytes(b"garbage" * 10)
    with pytest.raises(ArtifactError, match="decode.onnx: SHA-256 does not match"):
        load_engine(copy, "onnx")
    (copy / "decode.onnx").unlink()
    with pytest.raises(ArtifactError, match="run `alignnet export"):
        load_engine(copy, "onnx")


def test_failed_parity_writes_nothing(tmp_path, monkeypatch):
    model = create_model("test-alignnet").eval()
    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=20, spike_scale=[1.0] * 16,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0])
    folder = save_artifact(tmp_path / "a", model, contract)
    import alignnet.training.export as ex

    monkeypatch.setattr(ex, "PARITY_ATOL", -1.0)  # no export can pass
    with pytest.raises(ExportError, match="nothing was written"):
        export_artifact(folder)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "model.safetensors"]


def test_cli_export_and_latency_bench(exported, tmp_path, capsys):
    folder, _ = exported
    assert cli(["bench", "latency", str(folder), "--engines", "onnx,eager", "--repeats", "20",
                "--json", str(tmp_path / "lat.json")]) == 0
    import json

    figures = json.loads((tmp_path / "lat.json").read_text())
    assert [r["engine"] for r in figures["engines"]] == ["onnx", "eager"]
    assert figures["onnx_over_eager_decode_p50"] > 0
    assert all(r["decode_p99_ms"] >= r["decode_p50_ms"] > 0 for r in figures["engines"])
    assert cli(["export", str(tmp_path / "nothing")]) == 2
    assert "artifact folder not found" in capsys.readouterr().err
    # an artifact that was never exported: a clear error before any worker process starts
    import shutil

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(folder / name, bare / name)
    assert cli(["bench", "latency", str(bare), "--engines", "onnx"]) == 2
    assert "run `alignnet export" in capsys.readouterr().err


def test_a_causal_model_exports_its_receptive_field_graph_with_the_same_newest_bins(tmp_path):
    """decode_tail.onnx: the causal AlignNet on its receptive field only; the engine's newest bins from it equal the
    whole window's, and a non-causal model gets none (its newest bin sees the whole window)."""
    import torch

    from alignnet.model import DataContract, create_model
    from alignnet.model.artifacts import read_config, save_artifact
    from alignnet.service.engines import load_engine
    from alignnet.training.export import export_artifact
    from alignnet.training.tail import tail_plan

    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=40, spike_scale=[0.7] * 16,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0])
    for name, causal in (("test-alignnet-causal", True), ("test-alignnet", False)):
        torch.manual_seed(0)
        model = create_model(name, window_bins=40).eval()
        folder = save_artifact(tmp_path / name, model, contract) or tmp_path / name
        report = export_artifact(folder, ("onnx",))
        config = read_config(folder)
        if not causal:
            assert "decode_tail.onnx" not in report and "tail" not in config["export"]
            assert load_engine(folder).tail_bins == 0
            continue
        plan = tail_plan(model, None, 16)
        tail = config["export"]["tail"]
        assert tail["bins"] == plan["bins"] < 40 and (40 - tail["bins"]) % 2 ** model.config.depth == 0
        assert report["decode_tail.onnx"]["max_abs_diff_newest_bins"] <= 1e-4
        engine = load_engine(folder)
        assert engine.tail_bins == tail["bins"] and engine.tail_hops == 2
        x = np.random.default_rng(2).poisson(1.0, (6, 16, 40)).astype(np.float32)
        np.testing.assert_allclose(engine.decode_newest(x, 2), engine.decode(x)[..., -2:], atol=1e-5)
        np.testing.assert_allclose(engine.decode_newest(x, 3), engine.decode(x)[..., -3:], atol=0)  # whole window
        # a change before the receptive field leaves the newest bin alone; one inside it moves it
        far, near = x.copy(), x.copy()
        far[..., : 40 - tail["receptive_field"] - 1] += 3
        near[..., -2] += 3
        np.testing.assert_allclose(engine.decode(far)[..., -1], engine.decode(x)[..., -1], atol=1e-5)
        assert not np.allclose(engine.decode(near)[..., -1], engine.decode(x)[..., -1])


def test_a_receptive_field_graph_that_misses_is_left_out_not_a_failed_export(tmp_path, monkeypatch, capsys):
    """decode_tail.onnx is a shortcut: one window whose newest bins moved past the tolerance (a spike at the
    threshold flipped; live calibrations met it, and failed whole) still writes it, and a tail that misses on every
    window is left out with a warning: the export, and a calibration that exports, succeed and serve whole windows."""
    import torch

    import alignnet.training.export as export
    from alignnet.model import DataContract, create_model
    from alignnet.model.artifacts import read_config, save_artifact
    from alignnet.service.engines import load_engine

    contract = DataContract(n_channels=16, bin_s=0.02, window_bins=40, spike_scale=[0.7] * 16,
                            behavior_mean=[0.0, 0.0], behavior_std=[1.0, 1.0])
    real = export._run_onnx

    def shifted(windows, by):  # the tail graph's answers moved by `by` on the first `windows` windows
        def run(path, x):
            out = real(path, x)
            if str(path).endswith("decode_tail.onnx"):
                out[:windows] += by
            return out
        return run

    # one window a little off passes (a flipped spike); every window off, or one window far off, does not
    for windows, by, written in ((1, 2e-4, True), (16, 2e-4, False), (1, 0.05, False)):
        torch.manual_seed(0)
        folder = tmp_path / f"w{windows}-{by}"
        save_artifact(folder, create_model("test-alignnet-causal", window_bins=40).eval(), contract)
        # an earlier export's tail: one that fails its check now must not stay behind
        monkeypatch.setattr(export, "_run_onnx", real)
        export.export_artifact(folder, ("onnx",))
        assert (folder / "decode_tail.onnx").is_file()
        monkeypatch.setattr(export, "_run_onnx", shifted(windows, by))
        tail = export.export_artifact(folder, ("onnx",))["decode_tail.onnx"]
        config = read_config(folder)
        assert tail["written"] is written and tail["windows_over_atol"] == windows
        assert ("tail" in config["export"]) is written and (folder / "decode_tail.onnx").is_file() is written
        assert ("decode_tail.onnx" in config["files"]) is written
        assert load_engine(folder).tail_bins == (config["export"]["tail"]["bins"] if written else 0)
