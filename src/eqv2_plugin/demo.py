"""`make demo`: the main job on the embedded default data, end to end through fairchem.

1. generate the OC20-like S2EF / IS2RE data (ASE slabs + adsorbates, EMT labels);
2. train the demo EquiformerV2 (``configs/demo/s2ef.yml``) with ``fairchem --mode train --cpu``;
3. validate it on ``s2ef/val_id`` next to the mean-predictor baseline;
4. predict the unlabelled ``s2ef/test`` split (``s2ef_predictions.npz``);
5. relax the ``is2re/val`` systems with the trained model (``fairchem --mode run-relaxations``)
   and compare the relaxed energies with EMT's;
6. plot learning curves and a force parity plot under the run folder;
7. print a table of results and where the files are.
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
# systems per split: more training systems than make-data's default, so a few minutes of
# CPU training learn something measurable
DEMO_SIZES = {"train": 40, "val_id": 6, "is2re_val": 4}
STEPS_PER_EVAL = 40  # one validation per epoch of 160 frames
METRIC_RE = re.compile(r"(energy_mae|forces_mae|forces_cosine_similarity|energy_forces_within_threshold): ([0-9.e+-]+)")


def _fairchem(args: list[str], log: Path, show: tuple[str, ...] = ("loss:", "energy_mae")) -> str:
    """Run the fairchem CLI, echo progress lines, keep the full log."""
    exe = Path(sys.executable).with_name("fairchem")
    cmd = [str(exe), *args]
    lines = []
    with open(log, "w") as fh, subprocess.Popen(
        cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as proc:
        for line in proc.stdout:
            fh.write(line)
            lines.append(line)
            if any(s in line for s in show):
                print("   ", re.sub(r"^.*\((INFO|WARNING)\): ", "", line.rstrip())[:150], flush=True)
    if proc.returncode != 0:
        tail = "".join(lines[-30:])
        raise SystemExit(f"[demo] fairchem {args[1]} failed (log: {log}):\n{tail}")
    return "".join(lines)


def _metrics(text: str) -> dict[str, float]:
    found = METRIC_RE.findall(text)
    return {k: float(v) for k, v in found[-4:]} if found else {}


def _load(split: Path):
    from fairchem.core.datasets.lmdb_dataset import LmdbDataset

    return LmdbDataset({"src": str(split)})


def _baseline(data: Path) -> dict[str, float]:
    """Mean predictor: the train-set mean energy, zero forces; evaluated like fairchem (free atoms)."""
    train, val = _load(data / "s2ef" / "train"), _load(data / "s2ef" / "val_id")
    mean_e = float(np.mean([float(train[i].energy) for i in range(len(train))]))
    e_err, f_err = [], []
    for i in range(len(val)):
        d = val[i]
        e_err.append(abs(float(d.energy) - mean_e))
        f_err.append(np.abs(d.forces[d.fixed == 0].numpy()))
    return {"energy_mae": float(np.mean(e_err)), "forces_mae": float(np.mean(np.concatenate(f_err)))}


def _learning_curves(tb_dir: Path, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(tb_dir))
    acc.Reload()
    tags = acc.Tags()["scalars"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, target, unit in ((axes[0], "energy_mae", "eV"), (axes[1], "forces_mae", "eV/A")):
        for split, style in (("train", "-"), ("val", "o-")):
            tag = f"{split}/{target}"
            if tag in tags:
                ev = acc.Scalars(tag)
                ax.plot([e.step for e in ev], [e.value for e in ev], style, label=split)
        ax.set_xlabel("step")
        ax.set_ylabel(f"{target} ({unit})")
        ax.set_yscale("log")
        ax.legend()
        ax.grid(alpha=0.3)
    fig.suptitle("EquiformerV2 demo: learning curves")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)


def _parity(pred_file: Path, data: Path, out: Path) -> float:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    preds = np.load(pred_file)
    val = _load(data / "s2ef" / "val_id")
    truth = {}
    for i in range(len(val)):
        d = val[i]
        truth[f"{int(d.sid)}_{int(d.fid)}"] = d.forces[d.fixed == 0].numpy()
    chunks = np.split(preds["forces"].astype(np.float64), preds["chunk_idx"])
    p = np.concatenate(chunks)
    t = np.concatenate([truth[i] for i in preds["ids"]])
    fig, ax = plt.subplots(figsize=(4.5, 4.5))
    lim = float(np.abs(np.concatenate([p.ravel(), t.ravel()])).max()) * 1.05
    ax.plot([-lim, lim], [-lim, lim], "k--", lw=0.8)
    ax.scatter(t.ravel(), p.ravel(), s=4, alpha=0.5)
    ax.set_xlim(-lim, lim)
    ax.set_ylim(-lim, lim)
    ax.set_xlabel("EMT force component (eV/A)")
    ax.set_ylabel("EquiformerV2 (eV/A)")
    mae = float(np.abs(p - t).mean())
    ax.set_title(f"s2ef/val_id free atoms, MAE {mae:.3f} eV/A")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return mae


def _relaxed_energies(traj_dir: Path, data: Path) -> dict[str, float]:
    from ase.io import read

    val = _load(data / "is2re" / "val")
    train = _load(data / "is2re" / "train")
    mean_train = float(np.mean([float(train[i].y_relaxed) for i in range(len(train))]))
    errors, baseline = [], []
    for i in range(len(val)):
        d = val[i]
        final = read(traj_dir / f"{int(d.sid)}.traj", index=-1)
        errors.append(abs(final.get_potential_energy() - float(d.y_relaxed)))
        baseline.append(abs(mean_train - float(d.y_relaxed)))
    return {"model": float(np.mean(errors)), "baseline": float(np.mean(baseline)), "systems": len(val)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eqv2_plugin.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=REPO / "demo_out", help="output folder (default: demo_out)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--epochs", type=int, default=None, help="override optim.max_epochs of configs/demo/s2ef.yml")
    args = parser.parse_args(argv)
    out = args.out.resolve()
    data, runs = out / "data", out / "runs"
    runs.mkdir(parents=True, exist_ok=True)
    ident = time.strftime("demo-%Y%m%d-%H%M%S")
    start = time.perf_counter()

    from eqv2_plugin.data import generate_dataset, summarize

    print(f"[demo 1/6] generating OC20-like data (EMT labels) into {data}", flush=True)
    generate_dataset(data, seed=args.seed, sizes=DEMO_SIZES, overwrite=True)
    print(summarize(data), flush=True)

    paths = [f"--dataset.train.src={data / 's2ef/train'}", f"--dataset.val.src={data / 's2ef/val_id'}",
             f"--dataset.test.src={data / 's2ef/test'}"]
    common = ["--cpu", "--run-dir", str(runs), "--seed", str(args.seed)]
    extra = [f"--optim.eval_every={STEPS_PER_EVAL}"] + ([f"--optim.max_epochs={args.epochs}"] if args.epochs else [])
    print("\n[demo 2/6] training configs/demo/s2ef.yml with fairchem --mode train --cpu", flush=True)
    _fairchem(["--mode", "train", "--config-yml", "configs/demo/s2ef.yml", *common, "--identifier", ident,
               "--print-every", "10", *paths, *extra], runs / f"{ident}-train.log")
    ckpt_dir = next(p for p in (runs / "checkpoints").iterdir() if p.name.endswith(ident))
    best = ckpt_dir / "best_checkpoint.pt"

    print("\n[demo 3/6] validating on s2ef/val_id", flush=True)
    val_text = _fairchem(["--mode", "validate", "--config-yml", "configs/demo/s2ef.yml", *common, "--identifier",
                          f"{ident}-val", "--checkpoint", str(best), *paths], runs / f"{ident}-validate.log")
    val = _metrics(val_text)
    base = _baseline(data)

    print("\n[demo 4/6] predicting s2ef/test (and val_id for the parity plot)", flush=True)
    _fairchem(["--mode", "predict", "--config-yml", "configs/demo/s2ef.yml", *common, "--identifier",
               f"{ident}-test", "--checkpoint", str(best), *paths], runs / f"{ident}-predict.log", show=("Writing",))
    test_pred = runs / "results" / f"{ckpt_dir.name[: -len(ident)]}{ident}-test" / "s2ef_predictions.npz"
    test_pred = next((runs / "results").glob(f"*{ident}-test/s2ef_predictions.npz"), test_pred)
    _fairchem(["--mode", "predict", "--config-yml", "configs/demo/s2ef.yml", *common, "--identifier",
               f"{ident}-valpred", "--checkpoint", str(best), paths[0], f"--dataset.val.src={data / 's2ef/val_ood'}",
               f"--dataset.test.src={data / 's2ef/val_id'}",  # an LMDB file can be opened once per process
               "--outputs.forces.prediction_dtype=float32"], runs / f"{ident}-predict-val.log", show=("Writing",))
    val_pred = next((runs / "results").glob(f"*{ident}-valpred/s2ef_predictions.npz"))

    print("\n[demo 5/6] ML relaxations of is2re/val (fairchem --mode run-relaxations)", flush=True)
    traj_dir = runs / f"{ident}-relax-traj"
    _fairchem(["--mode", "run-relaxations", "--config-yml", "configs/demo/is2re_relax.yml", *common, "--identifier",
               f"{ident}-relax", "--checkpoint", str(best), f"--dataset.relax.src={data / 'is2re/val'}",
               f"--task.relax_opt.traj_dir={traj_dir}"], runs / f"{ident}-relax.log", show=("Writing", "adwt"))
    relax = _relaxed_energies(traj_dir, data)

    print("\n[demo 6/6] plots", flush=True)
    plots = runs / f"{ident}-plots"
    plots.mkdir(exist_ok=True)
    tb = next((runs / "logs" / "tensorboard").glob(f"*{ident}"))
    _learning_curves(tb, plots / "learning_curves.png")
    parity_mae = _parity(val_pred, data, plots / "force_parity.png")

    minutes = (time.perf_counter() - start) / 60
    rows = [
        ("S2EF val_id energy MAE (eV)", val.get("energy_mae", float("nan")), base["energy_mae"]),
        ("S2EF val_id force MAE (eV/A)", val.get("forces_mae", float("nan")), base["forces_mae"]),
        ("S2EF val_id force cosine", val.get("forces_cosine_similarity", float("nan")), 0.0),
        (f"IS2RE relaxed energy MAE, {relax['systems']} systems (eV)", relax["model"], relax["baseline"]),
    ]
    print(f"\n{'result':48s} {'model':>10s} {'mean predictor':>15s}")
    for name, model, baseline in rows:
        print(f"{name:48s} {model:10.4f} {baseline:15.4f}")
    print(f"(force parity plot MAE {parity_mae:.4f} eV/A; total time {minutes:.1f} min)")
    print("\nfiles:")
    for label, path in (("checkpoint", best), ("test predictions", test_pred), ("relaxation trajectories", traj_dir),
                        ("learning curves", plots / "learning_curves.png"), ("force parity", plots / "force_parity.png"),
                        ("logs", runs)):
        print(f"  {label:24s} {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
