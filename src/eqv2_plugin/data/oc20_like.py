"""OC20-like adsorbate-on-slab systems, labelled with ASE's EMT calculator.

This module builds the *structures and labels* of the synthetic data set that
``eqv2-plugin make-data`` writes (``lmdb_writer`` turns them into fairchem
LMDBs, ``dataset`` orchestrates the splits).  The goal is data that exercises
every code path of the fairchem 1.x S2EF / IS2RE trainers in seconds on a CPU,
not chemistry: EMT is a cheap effective-medium potential whose H, C, N and O
parameters are crude, so adsorbates tend to lie flat on the surface.

Choices
-------
* **Slabs**: ``ase.build.fcc111`` / ``fcc100`` / ``fcc211`` of the EMT metals
  Cu, Ag, Au, Ni, Pd, Pt, Al at ASE's reference lattice constants, 10 A of
  vacuum on each side, ``pbc=True`` in all three directions (as in OC20).  Sizes
  are drawn from a short list so that systems hold 45-68 atoms.
* **Tags** follow OC20: 0 = subsurface slab atom, 1 = surface slab atom,
  2 = adsorbate atom.  "Surface" means the upper half of the slab by height
  (two of four layers for (111)/(100)); tag-0 atoms are fixed with
  ``FixAtoms``, as in OC20 where the subsurface layers are frozen.
* **Adsorbates** are small H/C/N/O fragments (see ``ADSORBATES``).  The binding
  atom is put at a random in-plane point at the height where it is exactly its
  bond length (``BINDING_DISTANCE``) away from the nearest slab atom (periodic
  images included), which lands it in a top, bridge or hollow site depending on
  the point; the fragment gets a random rotation about the surface normal.
  Intramolecular distances (~1.55-1.6 A) are stretched compared with real
  molecules because they are closer to EMT's own minima, which keeps the
  initial forces at OC20-like magnitudes (a few eV/A) instead of tens of eV/A.
  Every adsorbate has a distinct composition, so its chemical formula
  identifies it in the stored data.
* **Float32 snapping**: fairchem stores ``pos`` and ``cell`` as float32.  All
  positions and cells are wrapped into the cell and rounded to float32
  *before* they are labelled, so the stored energies/forces are exactly those
  of the stored structure (a fresh EMT calculation on the stored float32 data
  reproduces them).  S2EF frames are wrapped copies of the optimizer's
  (unwrapped) trajectory; an IS2RE ``pos_relaxed`` is not re-wrapped, so
  ``pos_relaxed - pos`` is every atom's real displacement.
* **Fresh calculators for labels**: ASE's EMT reuses a neighbour list with a
  skin between calls, so results along a trajectory depend (very slightly) on
  its history.  Each stored label therefore comes from a new ``EMT()``.
* **Energies** are EMT total energies (eV; EMT's zero is the bulk metal, so
  values are a few eV), forces in eV/A, unconstrained (fixed atoms keep their
  forces, as in OC20 LMDBs).  No gas-phase referencing is applied.
* **S2EF frames** mimic OC20's sampling of relaxation trajectories: the free
  atoms of a fresh system are rattled (Gaussian, amplitude drawn per system),
  then ASE's BFGS takes steps and every ``stride``-th step is stored; ``fid``
  is the optimizer step number of the frame.
* **IS2RE** systems are relaxed with ASE's ``BFGSLineSearch`` (a.k.a.
  ``QuasiNewton``: BFGS with a line search, about half the EMT calls of plain
  ``BFGS`` here) to ``RELAX_FMAX``, at most ``RELAX_STEPS`` steps; fixed atoms do
  not move.  A system is accepted only if
  the stored float32 relaxed structure has a max free-atom force below
  ``FMAX_ACCEPT`` (0.05 eV/A), its energy is below the initial one and the
  adsorbate is still bound; otherwise the next attempt (a new deterministic
  random stream) is built.
* **Randomness**: every system gets its own ``numpy.random.Generator`` seeded
  from ``(seed, split code, index, attempt)``, so a system does not depend on
  how many other systems were asked for, and the same seed gives the same
  systems.

``generate_dataset`` and ``summarize`` (defined in ``eqv2_plugin.data.dataset``)
can also be imported from here.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:  # heavy imports stay inside functions
    from ase import Atoms


def __getattr__(name: str):
    # ``generate_dataset``/``summarize`` live in ``dataset`` (which imports this
    # module); re-exported lazily so ``from ...oc20_like import generate_dataset`` works.
    if name in ("generate_dataset", "summarize", "dataset_summary"):
        from eqv2_plugin.data import dataset

        return getattr(dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

#: EMT metals, in canonical order (user lists are re-sorted into this order).
METALS: tuple[str, ...] = ("Cu", "Ag", "Au", "Ni", "Pd", "Pt", "Al")

#: Facets and the (nx, ny, layers) slab sizes drawn for each (45-64 slab atoms).
SLAB_SIZES: dict[str, tuple[tuple[int, int, int], ...]] = {
    "111": ((3, 4, 4), (4, 4, 4), (3, 3, 5)),
    "100": ((3, 4, 4), (4, 4, 4), (3, 3, 5)),
    "211": ((3, 4, 4), (3, 3, 5), (3, 5, 4)),
}
FACETS: tuple[str, ...] = tuple(SLAB_SIZES)
VACUUM = 10.0  # A on each side of the slab

#: Distance from the binding atom to its nearest metal atom at placement (A).
BINDING_DISTANCE: dict[str, float] = {"H": 2.1, "O": 2.1, "N": 2.0, "C": 2.0}
#: Smallest allowed distance between any adsorbate atom and any slab atom at placement.
MIN_CLEARANCE = 1.5


def _xhn(x: str, n: int, bond: float = 1.55, polar_deg: float = 60.0) -> tuple:
    """Atom ``x`` at the origin with ``n`` H atoms spread around +z."""
    polar = math.radians(polar_deg)
    atoms = [(x, (0.0, 0.0, 0.0))]
    for k in range(n):
        phi = 2.0 * math.pi * k / n
        atoms.append(
            (
                "H",
                (
                    bond * math.sin(polar) * math.cos(phi),
                    bond * math.sin(polar) * math.sin(phi),
                    bond * math.cos(polar),
                ),
            )
        )
    return tuple(atoms)


def _diatomic(x: str, y: str, bond: float = 1.6, tilt: float = 0.8) -> tuple:
    return ((x, (0.0, 0.0, 0.0)), (y, (bond * math.sin(tilt), 0.0, bond * math.cos(tilt))))


#: Adsorbate templates: name -> ((symbol, (x, y, z)), ...), binding atom first at the origin.
ADSORBATES: dict[str, tuple] = {
    "H": _xhn("H", 0),
    "O": _xhn("O", 0),
    "N": _xhn("N", 0),
    "C": _xhn("C", 0),
    "OH": _xhn("O", 1),
    "H2O": _xhn("O", 2),
    "NH": _xhn("N", 1),
    "NH2": _xhn("N", 2),
    "NH3": _xhn("N", 3),
    "CH": _xhn("C", 1),
    "CH2": _xhn("C", 2),
    "CH3": _xhn("C", 3),
    "CO": _diatomic("C", "O"),
    "NO": _diatomic("N", "O"),
}
ADSORBATE_NAMES: tuple[str, ...] = tuple(ADSORBATES)

# S2EF trajectory sampling and IS2RE relaxation settings.
RATTLE_RANGE = (0.03, 0.12)  # A, Gaussian std of the S2EF starting rattle (drawn per system)
FRAME_STRIDE = 3  # optimizer steps between stored S2EF frames
IS2RE_RATTLE = 0.03  # A, small rattle of free atoms in the IS2RE initial structure
RELAX_FMAX = 0.04  # BFGS target (eV/A), a margin below FMAX_ACCEPT
RELAX_STEPS = 250
FMAX_ACCEPT = 0.05
MAX_ATTEMPTS = 8
BOUND_DISTANCE = 3.0  # A: the binding atom must stay this close to a metal atom


@dataclass(frozen=True)
class SystemSpec:
    """What to build: chosen deterministically from a system's random stream."""

    sid: int
    metal: str
    facet: str
    size: tuple[int, int, int]
    adsorbate: str


def system_rng(seed: int, split_code: int, index: int, attempt: int = 0) -> np.random.Generator:
    """The random stream of one system (independent of all other systems)."""
    return np.random.default_rng([int(seed), int(split_code), int(index), int(attempt)])


def choose_held_out(seed: int, metals: Sequence[str], adsorbates: Sequence[str]) -> tuple[str, str]:
    """The metal and adsorbate kept out of every split except ``s2ef/val_ood`` and the ood test splits."""
    rng = np.random.default_rng([int(seed), 0, 0, 0, 1])
    return str(metals[rng.integers(len(metals))]), str(adsorbates[rng.integers(len(adsorbates))])


def draw_spec(
    rng: np.random.Generator, sid: int, metals: Sequence[str], adsorbates: Sequence[str]
) -> SystemSpec:
    metal = str(metals[rng.integers(len(metals))])
    facet = FACETS[rng.integers(len(FACETS))]
    sizes = SLAB_SIZES[facet]
    size = sizes[rng.integers(len(sizes))]
    adsorbate = str(adsorbates[rng.integers(len(adsorbates))])
    return SystemSpec(sid=sid, metal=metal, facet=facet, size=size, adsorbate=adsorbate)


def f32(x: np.ndarray) -> np.ndarray:
    """Round to float32 and back: the precision fairchem stores."""
    return np.asarray(x, dtype=np.float64).astype(np.float32).astype(np.float64)


def build_slab(metal: str, facet: str, size: tuple[int, int, int]) -> Atoms:
    """A periodic slab with OC20 tags (1 surface / 0 subsurface) and float32-exact geometry."""
    from ase.build import fcc100, fcc111, fcc211

    builder = {"111": fcc111, "100": fcc100, "211": fcc211}[facet]
    slab = builder(metal, size=size, vacuum=VACUUM)
    slab.pbc = True
    slab.set_cell(f32(slab.cell.array), scale_atoms=False)
    slab.set_positions(f32(slab.positions))
    z = slab.positions[:, 2]
    middle = 0.5 * (z.min() + z.max())
    slab.set_tags((z > middle + 1e-3).astype(int))
    return slab


def _placement_height(slab: Atoms, xy: np.ndarray, bond: float) -> float:
    """Lowest z at ``xy`` that is at least ``bond`` away from every slab atom (in-plane images)."""
    cell = slab.cell.array
    pos = slab.positions
    best = -np.inf
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            shifted = pos + i * cell[0] + j * cell[1]
            d2 = np.sum((shifted[:, :2] - xy) ** 2, axis=1)
            near = d2 < bond * bond
            if np.any(near):
                best = max(best, float(np.max(shifted[near, 2] + np.sqrt(bond * bond - d2[near]))))
    top = float(pos[:, 2].max())
    return max(best, top + 0.5)


def _min_distance_to_slab(slab: Atoms, points: np.ndarray) -> float:
    cell = slab.cell.array
    best = np.inf
    for i in (-1, 0, 1):
        for j in (-1, 0, 1):
            shifted = slab.positions + i * cell[0] + j * cell[1]
            d = np.linalg.norm(points[:, None, :] - shifted[None, :, :], axis=-1)
            best = min(best, float(d.min()))
    return best


def build_system(spec: SystemSpec, rng: np.random.Generator) -> Atoms:
    """Slab + adsorbate with tags, FixAtoms on tag-0 atoms, float32-exact geometry."""
    from ase import Atoms
    from ase.constraints import FixAtoms

    slab = build_slab(spec.metal, spec.facet, spec.size)
    template = ADSORBATES[spec.adsorbate]
    symbols = [s for s, _ in template]
    offsets = np.array([o for _, o in template], dtype=np.float64)
    bond = BINDING_DISTANCE[symbols[0]]
    in_plane = slab.cell.array[:2, :2]
    for _ in range(50):
        frac = rng.random(2)
        theta = rng.random() * 2.0 * math.pi
        xy = frac @ in_plane
        z = _placement_height(slab, xy, bond)
        c, s = math.cos(theta), math.sin(theta)
        rot = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
        positions = np.array([xy[0], xy[1], z]) + offsets @ rot.T
        if _min_distance_to_slab(slab, positions) >= MIN_CLEARANCE - 1e-6:
            break
    else:  # pragma: no cover - templates are small; never seen in practice
        raise RuntimeError(f"could not place {spec.adsorbate} on {spec.metal}({spec.facet})")
    adsorbate = Atoms(symbols, positions=f32(positions), tags=[2] * len(symbols))
    system = slab + adsorbate
    system.pbc = True
    wrap_f32(system)
    system.set_constraint(FixAtoms(indices=np.flatnonzero(system.get_tags() == 0)))
    return system


def _free_mask(atoms: Atoms) -> np.ndarray:
    return atoms.get_tags() > 0


def rattle_free(atoms: Atoms, rng: np.random.Generator, stdev: float) -> None:
    """Gaussian displacement of the free (tag > 0) atoms, float32-exact afterwards."""
    pos = atoms.positions.copy()
    free = _free_mask(atoms)
    pos[free] += rng.normal(0.0, stdev, size=(int(free.sum()), 3))
    atoms.set_positions(f32(pos), apply_constraint=False)


def wrap_f32(atoms: Atoms) -> None:
    """Wrap positions into the cell, then round them to float32 (in place, constraints ignored)."""
    atoms.wrap()
    atoms.set_positions(f32(atoms.positions), apply_constraint=False)


def label(atoms: Atoms, wrap: bool = True) -> Atoms:
    """A copy of ``atoms`` carrying a fresh EMT energy and unconstrained forces.

    With ``wrap`` the copy's positions are first wrapped into the cell and
    rounded to float32: exactly the structure that is stored.
    """
    from ase.calculators.emt import EMT
    from ase.calculators.singlepoint import SinglePointCalculator

    frame = atoms.copy()
    if wrap:
        wrap_f32(frame)
    else:
        frame.set_positions(f32(frame.positions), apply_constraint=False)
    frame.calc = EMT()
    energy = float(frame.get_potential_energy())
    forces = np.array(frame.get_forces(apply_constraint=False))
    frame.calc = SinglePointCalculator(frame, energy=energy, forces=forces)
    return frame


def max_free_force(atoms: Atoms) -> float:
    """Largest force norm over free atoms (uses the attached calculator)."""
    forces = atoms.get_forces(apply_constraint=False)[_free_mask(atoms)]
    return float(np.linalg.norm(forces, axis=1).max())


def s2ef_trajectory(
    system: Atoms, rng: np.random.Generator, n_frames: int, stride: int = FRAME_STRIDE
) -> list[tuple[int, Atoms]]:
    """``n_frames`` labelled frames ``(fid, atoms)`` of a short BFGS run from a rattled start."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGS

    atoms = system.copy()
    rattle_free(atoms, rng, float(rng.uniform(*RATTLE_RANGE)))
    atoms.calc = EMT()
    opt = BFGS(atoms, logfile=None)
    frames: list[tuple[int, Atoms]] = []
    step = 0
    for k in range(n_frames):
        if k:
            for _ in range(stride):
                opt.step()
                step += 1
        frames.append((step, label(atoms, wrap=True)))
    return frames


@dataclass
class Relaxation:
    initial: Atoms  # labelled initial structure
    relaxed: Atoms  # labelled relaxed structure (float32-exact)
    steps: int


def relax_system(system: Atoms, rng: np.random.Generator) -> Relaxation | None:
    """Relax with BFGSLineSearch; ``None`` when the result fails an acceptance check."""
    from ase.calculators.emt import EMT
    from ase.optimize import BFGSLineSearch

    start = system.copy()
    rattle_free(start, rng, IS2RE_RATTLE)
    wrap_f32(start)
    initial = label(start, wrap=False)
    work = start.copy()
    work.calc = EMT()
    opt = BFGSLineSearch(work, logfile=None)
    opt.run(fmax=RELAX_FMAX, steps=RELAX_STEPS)
    # not re-wrapped: pos_relaxed - pos is each atom's real displacement
    relaxed = label(work, wrap=False)
    if max_free_force(relaxed) >= FMAX_ACCEPT:
        return None
    if relaxed.get_potential_energy() >= initial.get_potential_energy():
        return None
    ads = np.flatnonzero(relaxed.get_tags() == 2)
    slab = relaxed[relaxed.get_tags() < 2]
    if _min_distance_to_slab(slab, relaxed.positions[ads[:1]]) > BOUND_DISTANCE:
        return None  # desorbed
    return Relaxation(initial=initial, relaxed=relaxed, steps=int(opt.nsteps))


# ----------------------------------------------------------------------------- one system, as a task


@dataclass(frozen=True)
class SystemTask:
    """Everything needed to build one system; picklable, so workers can run it."""

    seed: int
    split_code: int
    index: int
    sid: int
    task: str  # "s2ef" or "is2re"
    metals: tuple[str, ...]
    adsorbates: tuple[str, ...]
    frames: int = 4


@dataclass
class Frame:
    """One labelled structure as plain arrays (cheap to send between processes)."""

    sid: int
    fid: int
    numbers: np.ndarray
    positions: np.ndarray
    cell: np.ndarray
    tags: np.ndarray
    energy: float
    forces: np.ndarray
    extra: dict  # IS2RE: y_init, y_relaxed (floats), pos_relaxed (array)

    @classmethod
    def from_atoms(cls, atoms: Atoms, sid: int, fid: int, extra: dict | None = None) -> "Frame":
        return cls(
            sid=int(sid),
            fid=int(fid),
            numbers=atoms.numbers.copy(),
            positions=atoms.positions.copy(),
            cell=atoms.cell.array.copy(),
            tags=atoms.get_tags().copy(),
            energy=float(atoms.get_potential_energy()),
            forces=np.array(atoms.get_forces(apply_constraint=False)),
            extra=dict(extra or {}),
        )

    def to_atoms(self) -> Atoms:
        """``ase.Atoms`` with tags, FixAtoms (tag 0) and the labels as a single-point calculator."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator
        from ase.constraints import FixAtoms

        atoms = Atoms(numbers=self.numbers, positions=self.positions, cell=self.cell, pbc=True, tags=self.tags)
        atoms.set_constraint(FixAtoms(indices=np.flatnonzero(self.tags == 0)))
        atoms.calc = SinglePointCalculator(atoms, energy=self.energy, forces=self.forces)
        return atoms


def compute_system(task: SystemTask) -> list[Frame]:
    """Build and label one system: ``task.frames`` S2EF frames, or one IS2RE entry.

    IS2RE systems that fail ``relax_system``'s checks are redrawn from the next
    attempt's random stream (deterministically).
    """
    if task.task == "s2ef":
        rng = system_rng(task.seed, task.split_code, task.index)
        spec = draw_spec(rng, task.sid, task.metals, task.adsorbates)
        system = build_system(spec, rng)
        return [Frame.from_atoms(atoms, task.sid, fid) for fid, atoms in s2ef_trajectory(system, rng, task.frames)]
    for attempt in range(MAX_ATTEMPTS):
        rng = system_rng(task.seed, task.split_code, task.index, attempt)
        spec = draw_spec(rng, task.sid, task.metals, task.adsorbates)
        relaxation = relax_system(build_system(spec, rng), rng)
        if relaxation is not None:
            extra = {
                "y_init": float(relaxation.initial.get_potential_energy()),
                "y_relaxed": float(relaxation.relaxed.get_potential_energy()),
                "pos_relaxed": relaxation.relaxed.positions.copy(),
            }
            return [Frame.from_atoms(relaxation.initial, task.sid, 0, extra)]
    raise RuntimeError(  # pragma: no cover - never seen; a hard guarantee instead of bad data
        f"system sid={task.sid}: no relaxation passed the checks in {MAX_ATTEMPTS} attempts"
    )
