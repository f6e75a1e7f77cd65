"""Every YAML under configs/: loads through fairchem's own loader (with the
`includes:` merge), has the keys fairchem's trainers need, builds its model the
way fairchem's trainer does, has the published parameter count, rejects a
misspelled model key, and (demo configs) runs on the embedded demo data.

Include fragments are recognised by name (see configs/README.md): ``base.yml``,
``*_base.yml`` and ``*_block.yml``; every other ``*.yml`` is a complete config.
Include paths are relative to the repository root (fairchem's convention), so
the tests load configs from there.
"""
from __future__ import annotations

import copy
import gc
import math
from pathlib import Path

import pytest
import torch
import yaml

REPO = Path(__file__).resolve().parents[1]
CONFIGS = REPO / "configs"


def _is_fragment(path: Path) -> bool:
    return path.name == "base.yml" or path.name.endswith(("_base.yml", "_block.yml"))


ALL_YAML = sorted(p.relative_to(REPO).as_posix() for p in CONFIGS.rglob("*.y*ml"))
FRAGMENTS = [p for p in ALL_YAML if _is_fragment(Path(p))]
COMPLETE = [p for p in ALL_YAML if not _is_fragment(Path(p))]

REQUIRED_KEYS = ("trainer", "model", "dataset", "outputs", "loss_functions", "optim")

# Published sizes (millions) and the exact counts of the architecture
# (equiformer_v2.md section 1.16: 31.1M, 83.2M, 153.6M, 121.5M).
PUBLISHED = {
    "configs/oc20/s2ef/2M/eqv2_83M.yml": (83, 83_164_802),
    "configs/oc20/s2ef/all_md/eqv2_31M.yml": (31, 31_058_690),
    "configs/oc20/s2ef/all_md/eqv2_153M.yml": (153, 153_602_690),
    "configs/oc22/s2ef/eqv2_121M.yml": (121, 121_526_402 + 90),  # + frozen energy_lin_ref[90]
    "configs/oc20/is2re/eqv2_relax.yml": (153, 153_602_690),  # the 153M All+MD model
    # not a published model: the 31M architecture without its force head
    "configs/oc20/is2re/all/eqv2_31M.yml": (None, 27_929_345),
}
DEMO = [p for p in COMPLETE if p.startswith("configs/demo/")]

# Keys a complete config deliberately overrides from its includes; any other
# overlap is a mistake (fairchem only logs a warning).
EXPECTED_OVERRIDES = {
    "configs/oc20/is2re/all/eqv2_31M.yml": {"model.regress_forces", "model.max_radius"},
    "configs/demo/is2re_direct.yml": {"model.regress_forces"},
    "configs/demo/is2re_relax.yml": {"optim.eval_batch_size"},
}

RELAX_KEYS = ("relaxation_steps", "relaxation_fmax", "relax_opt", "write_pos")


@pytest.fixture(autouse=True)
def _at_repo_root(monkeypatch):
    monkeypatch.chdir(REPO)


def load(path: str) -> tuple[dict, list]:
    """fairchem's loader (as `fairchem --config-yml`): returns the merged config and
    the keys the main file overrides; conflicts between includes raise."""
    from fairchem.core.common.utils import load_config

    config, overridden, conflicts = load_config(path)
    assert not conflicts, f"{path}: keys set by two includes: {conflicts}"
    return config, overridden


def build_model(model_config: dict) -> torch.nn.Module:
    """Exactly BaseTrainer.load_model (minus the device move and DDP)."""
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import setup_imports

    setup_imports()
    cfg = copy.deepcopy(model_config)
    name = cfg.pop("name")
    return registry.get_model_class(name)(**cfg)


def _n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _includes(path: str) -> list[str]:
    with open(REPO / path) as fh:
        return (yaml.safe_load(fh) or {}).get("includes", [])


# --------------------------------------------------------------------------- layout


def test_expected_configs_exist():
    for path in [*PUBLISHED, "configs/demo/s2ef.yml", "configs/demo/s2ef_hydra.yml",
                 "configs/demo/is2re_relax.yml", "configs/demo/is2re_direct.yml", "configs/README.md"]:
        assert (REPO / path).is_file(), path
    assert {"configs/eqv2_block.yml", "configs/oc20/s2ef/base.yml"} <= set(FRAGMENTS)


def test_every_fragment_is_included_and_only_fragments_are():
    included = {inc for path in ALL_YAML for inc in _includes(path)}
    for inc in included:
        assert inc in FRAGMENTS, f"{inc} is included but not named like a fragment (base.yml, *_base.yml, *_block.yml)"
    for frag in FRAGMENTS:
        assert frag in included, f"fragment {frag} is not included by any config"


@pytest.mark.parametrize("path", ALL_YAML)
def test_header_comment(path):
    first = (REPO / path).read_text().lstrip().splitlines()[0]
    assert first.startswith("#"), f"{path}: start with a comment saying what the file is and its source"


@pytest.mark.parametrize("path", FRAGMENTS)
def test_fragments_name_no_data(path):
    config, _ = load(path)
    for split, settings in (config.get("dataset") or {}).items():
        assert "src" not in settings, f"{path}: fragments name no data paths (dataset.{split}.src)"


# --------------------------------------------------------------------------- schema


@pytest.mark.parametrize("path", COMPLETE)
def test_complete_config_schema(path):
    from fairchem.core.common.utils import update_config

    config, overridden = load(path)
    for key in REQUIRED_KEYS:
        assert key in config, f"{path}: missing top-level key {key!r}"
    assert "includes" not in config
    assert set(overridden) == EXPECTED_OVERRIDES.get(path, set()), f"{path}: overrides {overridden}"
    # a non-empty loss list, otherwise fairchem rewrites the config as a legacy one
    assert isinstance(config["loss_functions"], list) and config["loss_functions"]
    assert update_config(config) is config
    for loss in config["loss_functions"]:
        ((target, spec),) = loss.items()
        assert target in config["outputs"] and "fn" in spec and "coefficient" in spec
    for target, spec in config["outputs"].items():
        assert spec["level"] in ("system", "atom")
        if spec["level"] == "atom":
            assert "train_on_free_atoms" in spec and "eval_on_free_atoms" in spec
    assert config.get("logger") == "tensorboard"  # fairchem's default would be wandb
    metrics = config.get("evaluation_metrics", {})
    assert metrics.get("primary_metric")

    trainer = config["trainer"]
    assert trainer in ("equiformerv2_forces", "equiformerv2_energy")
    regress_forces = config["model"].get("regress_forces", (config["model"].get("backbone") or {}).get("regress_forces"))
    assert ("forces" in config["outputs"]) == (trainer == "equiformerv2_forces") == bool(regress_forces)

    for key in ("batch_size", "lr_initial", "max_epochs", "num_workers"):  # read by every trainer set-up
        assert key in config["optim"], f"{path}: optim.{key}"

    dataset = config["dataset"]
    if "relax" in dataset:  # ML relaxation config: only the relax split is loaded
        assert set(dataset) == {"train", "relax"} and "src" not in dataset["train"]
        assert dataset["relax"]["key_mapping"] == {"y_relaxed": "energy_relaxed"}
        task = config["task"]
        for key in RELAX_KEYS:
            assert key in task, f"{path}: task.{key}"
        assert "name" not in task["relax_opt"]  # fairchem's LBFGS takes no `name`
        assert {k: task["relax_opt"][k] for k in ("maxstep", "memory", "damping", "alpha")} == {
            "maxstep": 0.04, "memory": 50, "damping": 1.0, "alpha": 70.0}
        assert task["write_pos"] is True and task["relaxation_fmax"] == 0.02
    else:
        assert dataset["train"]["src"] and dataset["val"]["src"]
        assert "normalizer" in dataset["train"]["transforms"]
        optim = config["optim"]
        for key in ("batch_size", "eval_batch_size", "lr_initial", "max_epochs", "eval_every",
                    "clip_grad_norm", "ema_decay"):
            assert key in optim, f"{path}: optim.{key}"
        assert optim["scheduler"] == "LambdaLR"
        sched = optim["scheduler_params"]
        assert sched["lambda_type"] == "cosine" and sched["warmup_epochs"] > 0
        assert sched["warmup_factor"] == 0.2 and sched["lr_min_factor"] == 0.01
        if trainer == "equiformerv2_energy":
            # fairchem 1.10's energy trainer multiplies warmup_epochs by the steps per epoch
            # without rounding; CosineLRLambda then asserts an int (float -> TypeError)
            assert isinstance(sched["warmup_epochs"], int), f"{path}: whole warm-up epochs for {trainer}"


def test_published_hyperparameters():
    """Spot-check the values of the paper / released configs."""
    expect = {
        # path: (layers, L, M, drop_path, lambda_E, lr, epochs, warmup, batch, eval_every, clip)
        "configs/oc20/s2ef/2M/eqv2_83M.yml": (12, 6, 2, 0.05, 2, 4e-4, 30, 0.1, 4, 5000, 100),
        "configs/oc20/s2ef/all_md/eqv2_31M.yml": (8, 4, 2, 0.1, 4, 4e-4, 3, 0.01, 8, 10000, 100),
        "configs/oc20/s2ef/all_md/eqv2_153M.yml": (20, 6, 3, 0.1, 4, 4e-4, 1, 0.01, 4, 10000, 100),
        "configs/oc22/s2ef/eqv2_121M.yml": (18, 6, 2, 0.1, 4, 2e-4, 6, 0.1, 4, 5000, 50),
        "configs/oc20/is2re/all/eqv2_31M.yml": (8, 4, 2, 0.1, 4, 4e-4, 30, 1, 6, 2500, 100),  # ODAC warm-up 0.01
    }
    for path, (layers, lmax, mmax, drop_path, lam_e, lr, epochs, warmup, bs, every, clip) in expect.items():
        config, _ = load(path)
        model, optim = config["model"], config["optim"]
        assert (model["num_layers"], model["lmax_list"], model["mmax_list"], model["drop_path_rate"]) == (
            layers, [lmax], [mmax], drop_path), path
        for key, value in dict(max_neighbors=20, sphere_channels=128, attn_hidden_channels=64, num_heads=8,
                               attn_alpha_channels=64, attn_value_channels=16, ffn_hidden_channels=128,
                               norm_type="layer_norm_sh", grid_resolution=18, edge_channels=128,
                               alpha_drop=0.1, weight_init="uniform", use_grid_mlp=True).items():
            assert model[key] == value, f"{path}: model.{key}"
        energy_loss = next(loss["energy"] for loss in config["loss_functions"] if "energy" in loss)
        assert energy_loss == {"fn": "mae", "coefficient": lam_e}, path
        for loss in config["loss_functions"]:
            if "forces" in loss:
                assert loss["forces"] == {"fn": "l2mae", "coefficient": 100}, path
        assert (optim["lr_initial"], optim["max_epochs"], optim["scheduler_params"]["warmup_epochs"],
                optim["batch_size"], optim["eval_every"], optim["clip_grad_norm"], optim["ema_decay"]) == (
            lr, epochs, warmup, bs, every, clip, 0.999), path

    oc20, _ = load("configs/oc20/s2ef/2M/eqv2_83M.yml")
    assert oc20["model"]["max_radius"] == 12.0
    assert oc20["dataset"]["train"]["transforms"]["normalizer"] == {
        "energy": {"mean": -0.7554450631141663, "stdev": 2.887317180633545},
        "forces": {"mean": 0.0, "stdev": 2.887317180633545}}
    assert oc20["optim"]["optimizer_params"] == {"weight_decay": 0.001}

    oc22, _ = load("configs/oc22/s2ef/eqv2_121M.yml")
    assert oc22["dataset"]["train"]["format"] == "oc22_lmdb" and oc22["dataset"]["train"]["lin_ref"]
    assert oc22["dataset"]["train"]["transforms"]["normalizer"] == {
        "energy": {"mean": 0.0, "stdev": 25.119809935106424},
        "forces": {"mean": 0.0, "stdev": 0.14759646356105804}}
    assert oc22["model"]["enforce_max_neighbors_strictly"] is False
    assert oc22["model"]["load_energy_lin_ref"] is True and oc22["model"]["use_energy_lin_ref"] is False
    assert oc22["evaluation_metrics"]["primary_metric"] == "energy_mae"
    assert all(spec["prediction_dtype"] == "float32" for spec in oc22["outputs"].values())

    is2re, _ = load("configs/oc20/is2re/all/eqv2_31M.yml")
    assert is2re["model"]["regress_forces"] is False and is2re["model"]["max_radius"] == 8.0
    assert is2re["optim"]["optimizer_params"] == {"weight_decay": 0.2}
    assert is2re["dataset"]["train"]["key_mapping"] == {"y_relaxed": "energy"}

    relax, _ = load("configs/oc20/is2re/eqv2_relax.yml")
    assert relax["task"]["relaxation_steps"] == 300


# --------------------------------------------------------------------------- models


@pytest.mark.parametrize("path", COMPLETE)
def test_model_builds_with_published_size(path):
    config, _ = load(path)
    model = build_model(config["model"])
    try:
        n = _n_params(model)
        if path in PUBLISHED:
            nominal, exact = PUBLISHED[path]
            if nominal is not None:
                assert abs(n / 1e6 - nominal) / nominal < 0.01, f"{path}: {n:,} parameters, published {nominal}M"
            assert abs(n - exact) / exact < 0.001, f"{path}: {n:,} parameters, expected {exact:,}"
        else:
            assert path.startswith("configs/demo/") and n < 1_000_000, f"{path}: {n:,} parameters"
    finally:
        del model
        gc.collect()


MISSPELLED = {  # where to inject the typo: the model block, or inside hydra's backbone / a head
    "configs/oc20/s2ef/2M/eqv2_83M.yml": ("model",),
    "configs/demo/s2ef.yml": ("model",),
    "configs/demo/s2ef_hydra.yml": ("model", "backbone"),
}


@pytest.mark.parametrize("path, where", [*MISSPELLED.items(), ("configs/demo/s2ef_hydra.yml", ("model", "heads", "energy"))])
def test_misspelled_model_key_fails_fast(path, where):
    config, _ = load(path)
    node = config
    for key in where:
        node = node[key]
    node["lmax_lst"] = [6]
    with pytest.raises(TypeError, match="lmax_lst"):
        build_model(config["model"])


def test_hydra_demo_matches_monolithic_demo():
    mono, _ = load("configs/demo/s2ef.yml")
    hydra, _ = load("configs/demo/s2ef_hydra.yml")
    mono_model = {k: v for k, v in mono["model"].items() if k not in ("name", "energy_reduce")}
    backbone = {k: v for k, v in hydra["model"]["backbone"].items() if k != "model"}
    assert backbone == mono_model
    assert hydra["model"]["backbone"]["model"] == "eqv2_plugin.EquiformerV2Backbone"
    assert hydra["model"]["heads"]["energy"]["reduce"] == mono["model"].get("energy_reduce", "sum")
    for key in ("dataset", "optim", "loss_functions", "evaluation_metrics", "trainer"):
        assert hydra[key] == mono[key], key


# --------------------------------------------------------------------------- demo configs on demo data


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    """The default `eqv2-plugin make-data` data set (seed 0), as the demo configs expect."""
    from eqv2_plugin.data import generate_dataset

    out = tmp_path_factory.mktemp("demo") / "data"
    summary = generate_dataset(out, seed=0, workers=2)
    return out, summary


def _dataset(settings: dict, src: Path):
    from fairchem.core.common.registry import registry
    from fairchem.core.common.utils import setup_imports

    setup_imports()
    cfg = {**copy.deepcopy(settings), "src": str(src)}
    return registry.get_dataset_class(cfg.get("format", "lmdb"))(cfg)


def _close(dataset) -> None:  # py-lmdb allows one open handle per file and process
    for env in getattr(dataset, "envs", None) or [getattr(dataset, "env", None)]:
        if env is not None:
            env.close()


def _split_settings(config: dict, split: str) -> dict:
    """What fairchem's trainer hands the dataset class for a split (train settings + split)."""
    train = config["dataset"].get("train", {})
    return {**train, **config["dataset"][split]} if split != "train" else dict(train)


def _demo_src(config: dict, split: str, data_dir: Path) -> Path:
    src = Path(config["dataset"][split]["src"])
    assert src.parts[:2] == ("demo_out", "data"), src
    return data_dir.joinpath(*src.parts[2:])


@pytest.mark.parametrize("path", DEMO)
def test_demo_model_runs_on_demo_data(path, demo_data):
    from fairchem.core.datasets import data_list_collater

    data_dir, _ = demo_data
    config, _ = load(path)
    split = "relax" if "relax" in config["dataset"] else "train"
    dataset = _dataset(_split_settings(config, split), _demo_src(config, split, data_dir))
    try:
        batch = data_list_collater([dataset[i] for i in range(min(len(dataset), 3))], otf_graph=True)
    finally:
        _close(dataset)
    torch.manual_seed(0)
    model = build_model(config["model"])
    n_graphs, n_atoms = len(batch.natoms), batch.pos.shape[0]

    model.train()
    out = model(batch)
    preds = {}
    for target, spec in config["outputs"].items():  # as OCPTrainer._forward
        pred = out[target]
        if isinstance(pred, dict):
            pred = pred[spec["property"]]
        preds[target] = pred.view(n_atoms if spec["level"] == "atom" else n_graphs, -1)
    assert set(preds) == set(config["outputs"])
    assert preds["energy"].shape == (n_graphs, 1)
    if "forces" in preds:
        assert preds["forces"].shape == (n_atoms, 3)
    if split == "train":  # the targets exist and a loss backpropagates into every parameter
        loss = sum((preds[t] - batch[t].view_as(preds[t]).to(preds[t].dtype)).abs().mean() for t in preds)
        loss.backward()
        missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
        assert not missing, f"parameters without gradient (DDP would fail): {missing[:5]}"
    else:  # relaxation: the relaxed targets fairchem's metrics read are there
        assert batch.energy_relaxed.shape == (n_graphs,) and batch.pos_relaxed.shape == (n_atoms, 3)
    for pred in preds.values():
        assert torch.isfinite(pred).all()

    model.eval()
    with torch.no_grad():
        out = model(batch)
    assert torch.isfinite(torch.as_tensor(out["energy"]["energy"] if isinstance(out["energy"], dict)
                                          else out["energy"])).all()


@pytest.mark.parametrize("path", DEMO)
def test_demo_schedule_and_normalizer_fit_the_demo_data(path, demo_data):
    """Warm-up of at least one step (the cosine lambda divides by it), a checkpoint
    within the run, and normalisers close to the demo data's statistics."""
    data_dir, _ = demo_data
    config, _ = load(path)
    if "relax" in config["dataset"]:
        assert _demo_src(config, "relax", data_dir).is_dir()
        return
    train = _dataset(_split_settings(config, "train"), _demo_src(config, "train", data_dir))
    try:
        samples = [train[i] for i in range(len(train))]
    finally:
        _close(train)
    for split in ("val", "test"):
        if split in config["dataset"]:
            assert _demo_src(config, split, data_dir).is_dir()

    optim = config["optim"]
    steps_per_epoch = math.ceil(len(samples) / optim["batch_size"])
    assert int(optim["scheduler_params"]["warmup_epochs"] * steps_per_epoch) >= 1
    assert optim["eval_every"] <= steps_per_epoch  # a checkpoint even with --optim.max_epochs=1

    energy = torch.tensor([float(s.energy) for s in samples])
    norm = config["dataset"]["train"]["transforms"]["normalizer"]
    assert abs(norm["energy"]["mean"] - energy.mean().item()) < 0.1 * energy.std().item()
    assert abs(norm["energy"]["stdev"] / energy.std().item() - 1) < 0.2
    if "forces" in norm:
        forces = torch.cat([s.forces for s in samples])
        assert norm["forces"]["mean"] == 0.0
        assert abs(norm["forces"]["stdev"] / forces.std().item() - 1) < 0.2
