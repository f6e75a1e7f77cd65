"""State dicts: fairchem's (monolithic, hydra, DDP-prefixed) load into ours; ours round-trip."""
from __future__ import annotations

import contextlib

import pytest
import torch

import eqv2_plugin
from _reference import SMALL, edge_chunks_of, outputs, our_hydra, perturb_, reference_hydra, reference_monolithic, rel_err, setup_registry, shared_frames
from _systems import oc20_like_atoms, to_batch
from eqv2_plugin.model import checkpoint as ckpt

CFG = dict(SMALL, num_layers=1)


@pytest.fixture(scope="module")
def batch_atoms():
    return oc20_like_atoms(1, seed=8)


def _reference(kind="monolithic", **kw):
    torch.manual_seed(0)
    setup_registry()
    ref = reference_monolithic({**CFG, **kw}) if kind == "monolithic" else reference_hydra({**CFG, **kw})
    perturb_(ref)
    return ref.eval()


def test_every_reference_parameter_is_mapped_and_every_buffer_dropped():
    ref = _reference(load_energy_lin_ref=True, use_energy_lin_ref=True)
    ours = eqv2_plugin.EquiformerV2(**CFG, load_energy_lin_ref=True, use_energy_lin_ref=True)
    params = dict(ref.named_parameters())
    converted = ckpt.from_reference_state_dict(ref.state_dict())
    assert set(converted) == set(ours.state_dict())
    # shapes agree, and every converted key came from a parameter (no buffers smuggled in)
    renamed = {ckpt.from_reference_key(k): k for k in ref.state_dict()}
    for key, value in converted.items():
        assert value.shape == ours.state_dict()[key].shape, key
        assert renamed[key] in params, key


def test_ddp_prefixed_monolithic_state_dict_loads(batch_atoms, monkeypatch):
    ref = _reference(load_energy_lin_ref=True, use_energy_lin_ref=True)
    ddp = {f"module.{k}": v for k, v in ref.state_dict().items()}
    ours = eqv2_plugin.EquiformerV2(**CFG, load_energy_lin_ref=True, use_energy_lin_ref=True).eval()
    ours.load_state_dict(ddp)
    with shared_frames(monkeypatch):
        e_ref, f_ref = outputs(ref, to_batch(batch_atoms))
        e, f = outputs(ours, to_batch(batch_atoms))
    assert rel_err(e, e_ref) < 1e-5 and rel_err(f, f_ref) < 5e-5


def test_ddp_prefixed_hydra_state_dict_loads_into_our_hydra(batch_atoms, monkeypatch):
    ref = _reference("hydra")
    ours = our_hydra(CFG).eval()
    wrapper = torch.nn.Module()
    wrapper.module = ours  # what fairchem's trainer holds: DistributedDataParallel(model)
    wrapper.load_state_dict({f"module.{k}": v for k, v in ref.state_dict().items()})
    with shared_frames(monkeypatch):
        e_ref, f_ref = outputs(ref, to_batch(batch_atoms))
        e, f = outputs(ours, to_batch(batch_atoms))
    assert rel_err(e, e_ref) < 1e-5 and rel_err(f, f_ref) < 5e-5


def test_our_state_dict_round_trips_and_has_no_buffers(batch_atoms):
    torch.manual_seed(0)
    a = eqv2_plugin.EquiformerV2(**CFG, edge_frame="deterministic").eval()
    perturb_(a)
    b = eqv2_plugin.EquiformerV2(**CFG, edge_frame="deterministic").eval()
    b.load_state_dict(a.state_dict())
    assert set(a.state_dict()) == {n for n, _ in a.named_parameters()}
    e_a, f_a = outputs(a, to_batch(batch_atoms))
    e_b, f_b = outputs(b, to_batch(batch_atoms))
    assert torch.equal(e_a, e_b) and torch.equal(f_a, f_b)


def test_reference_checkpoint_into_wrong_configuration_names_keys():
    ref = _reference()
    ours = eqv2_plugin.EquiformerV2(**{**CFG, "lmax_list": [3]})
    with pytest.raises(RuntimeError, match=r"(?s)lmax/mmax.*size mismatch for blocks\.0\."):
        ours.load_state_dict(ref.state_dict())


def test_gradient_force_model_rejects_force_head_weights_unless_not_strict():
    ref = _reference()
    ours = eqv2_plugin.EquiformerV2(**CFG, direct_forces=False)
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*force_head"):
        ours.load_state_dict(ref.state_dict())
    result = ours.load_state_dict(ref.state_dict(), strict=False)
    assert not result.missing_keys and all(k.startswith("force_head.") for k in result.unexpected_keys)


@pytest.mark.parametrize("gpu_shapes", [False, True])
@pytest.mark.parametrize("direct_forces", [True, False])
def test_recomputation_gives_the_same_gradients(batch_atoms, direct_forces, gpu_shapes, monkeypatch):
    """Storing everything, recomputing the edge messages (default), recomputing whole blocks,
    and both, with rotate-scatter's edges in one piece or in chunks (the attention splits its
    edges only without an autograd graph): the same parameter gradients, also through second
    derivatives (gradient forces). In GPU shapes the recomputed edge messages keep the first
    SO(2) convolution's outputs, and their recomputation replays them (checked)."""
    from eqv2_plugin.escn import backend
    from eqv2_plugin.layers.kept_linear import KeptOutputs
    from eqv2_plugin.model import recompute

    regions = []

    class Recorded(KeptOutputs):
        def __init__(self):
            super().__init__()
            regions.append(self)

    monkeypatch.setattr(recompute, "KeptOutputs", Recorded)
    monkeypatch.setattr(backend, "launch_bound", lambda device: gpu_shapes)
    grads = []
    for chunked in (False, True):
        for checkpointing, recompute_edges in ((False, False), (False, True), (True, False), (True, True)):
            with contextlib.ExitStack() as stack:
                seen = stack.enter_context(edge_chunks_of(29)) if chunked else None
                torch.manual_seed(0)
                model = eqv2_plugin.EquiformerV2(
                    **{**CFG, "num_layers": 2, "alpha_drop": 0.1, "drop_path_rate": 0.1},
                    edge_frame="deterministic", activation_checkpoint=checkpointing,
                    recompute_edges=recompute_edges, direct_forces=direct_forces,
                ).train()
                torch.manual_seed(1)  # the same dropout masks in every run
                out = model(to_batch(batch_atoms))
                (out["energy"].sum() + out["forces"].pow(2).sum()).backward()
            grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
            assert not chunked or (seen and min(seen) > 1)
    for other in grads[1:]:
        assert grads[0].keys() == other.keys()
        for name in grads[0]:
            assert torch.allclose(grads[0][name], other[name], rtol=1e-5, atol=1e-7), name
    # one region per layer (and force head) per run that recomputes edge messages outside blocks
    runs = 2 * 1  # (chunked or not) x (recompute_edges without activation_checkpoint)
    assert len(regions) == (runs * (2 + direct_forces) if gpu_shapes else 0)
    assert all(r.recorded and r.outputs and r.position == len(r.outputs) for r in regions)  # replayed


@pytest.mark.parametrize(
    "variant", [{}, {"use_m_share_rad": True}, {"share_atom_edge_embedding": True}, {"load_energy_lin_ref": True}]
)
def test_parameters_are_registered_in_the_reference_order(variant):
    """fairchem's EMA state is an ordered list of parameters: the order must be the same."""
    cfg = {**CFG, **variant}
    ref = reference_monolithic(cfg)
    ours = eqv2_plugin.EquiformerV2(**cfg)
    assert [ckpt.from_reference_key(n) for n, _ in ref.named_parameters()] == [n for n, _ in ours.named_parameters()]


def test_convert_checkpoint_rejects_bad_input_with_clear_messages(tmp_path, capsys):
    from eqv2_plugin.cli import main

    assert main(["convert-checkpoint", str(tmp_path / "missing.pt"), str(tmp_path / "out.pt")]) == 2
    assert "does not exist" in capsys.readouterr().err
    other = tmp_path / "gemnet.pt"
    torch.save({"state_dict": {}, "config": {"model": {"name": "gemnet_oc"}}}, other)
    assert main(["convert-checkpoint", str(other), str(tmp_path / "out.pt")]) == 2
    assert "model.name='gemnet_oc' is not an EquiformerV2 checkpoint" in capsys.readouterr().err
    assert main(["convert-checkpoint", str(other), str(other)]) == 2
    assert "OUT must differ from IN" in capsys.readouterr().err
    assert not (tmp_path / "out.pt").exists()


def test_convert_checkpoint_in_process_round_trip(tmp_path):
    """fairchem checkpoint dict -> ours -> fairchem: weights and buffers come back unchanged."""
    from eqv2_plugin.integration.checkpoint_file import to_fairchem, to_plugin

    ref = _reference()
    model_cfg = {"name": "equiformer_v2", **CFG}
    original = {"state_dict": {f"module.{k}": v for k, v in ref.state_dict().items()},
                "config": {"model": model_cfg}, "ema": {"shadow_params": [p.detach().clone() for p in ref.parameters()]}}
    ours = to_plugin(original)
    assert ours["config"]["model"]["name"] == "eqv2_plugin.EquiformerV2"
    model = eqv2_plugin.EquiformerV2(**CFG)
    model.load_state_dict({k[len("module."):]: v for k, v in ours["state_dict"].items()})
    back = to_fairchem(ours)
    assert list(back["state_dict"]) == list(original["state_dict"])
    for key, value in original["state_dict"].items():
        assert torch.equal(back["state_dict"][key], value), key
    assert back["ema"] is original["ema"]  # parameter order is shared: the EMA list carries over
