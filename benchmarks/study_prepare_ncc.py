"""Which patches of a low-dose pair does ``emdiffuse prepare`` keep, and how far does its local
flow wander at the edges? The figures behind ``--min-ncc`` relative to the noise ceiling
(``register.ncc_ceiling``) and behind ``register.FLOW_SLACK``.

Pairs: a clean slice as the target and the same slice at ``DOSES`` counts per pixel (Poisson, then
read noise ``READ_NOISE``: ``degrade.poisson_gaussian``) as the input, 512 x 512 px, from slices no
test uses: ISBI 2012 ssTEM 20-29 and EPFL FIB-SEM 60-87 (every third). The rule was designed on
ISBI 10-19, not on these.

- **aligned**: the share of an aligned pair's patches (64, 128, 256 px) that ``register_pair``
  keeps: by the old rule (smoothed NCC >= 0.6) and by the new one (NCC >= 0.6 of its ceiling).
- **misaligned**: the share of patches kept by the new rule, scored as registration scores them,
  when the target is one patch off (shifted by the patch size in x, and in y) or another slice
  (ISBI: 5 sections, 250 nm away; FIB-SEM: 70 slices, 350 nm away).
- **unrelated pairs**: how many of those other-slice pairs ``register_pair`` refuses outright, and
  how many patches the rest keep.
- **flow wander**: the 99th percentile of how far the local flow places pixels of the outermost
  16 px beyond where the global transform places them (outwards, normal to the edge), on the
  aligned 512 px pairs and on their central 256 px crops: ``FLOW_SLACK`` allows for it.

    python benchmarks/study_prepare_ncc.py [--no-doc]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _timing import REPO, publish, study_args  # noqa: E402
from bench_suite import FIBSEM, ISBI  # noqa: E402

DOC = REPO / "docs" / "data-preparation.md"
RESULT = REPO / "benchmarks" / "results" / "prepare_ncc.json"
DOSES = (0.25, 0.5, 1.0, 2.0, 5.0, 20.0)
READ_NOISE = 0.03
PATCHES = (64, 128, 256)
MIN_NCC, SMOOTH = 0.6, 2.0  # prepare's defaults
EDGE = 16


def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, clean slice, another slice)`` in [0, 1]."""
    import tifffile

    isbi = tifffile.imread(ISBI, key=range(20, 30)).astype(np.float32) / 255
    out = [(f"isbi {20 + z}", isbi[z], isbi[(z + 5) % 10]) for z in range(10)]
    for z in range(60, 88, 3):
        a, b = tifffile.imread(FIBSEM, key=[z, z + 70]).astype(np.float32) / 255
        out.append((f"fibsem {z}", a, b))
    return out


def kept_share(ncc: np.ndarray, ceiling: np.ndarray | None = None) -> tuple[int, int]:
    """(kept, scored) patches: NCC at least MIN_NCC, of the ceiling where one is given."""
    score = ncc if ceiling is None else ncc / ceiling
    return int((np.nan_to_num(score, nan=-1.0) >= MIN_NCC).sum()), int(ncc.size)


def outward_wander(reg: Any) -> np.ndarray:
    """How far the flow places the outermost EDGE px beyond the global placement, normal to the edge."""
    h, w = reg.coords.shape[1:]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    m = reg.matrix
    px, py = m[0, 0] * xx + m[0, 1] * yy + m[0, 2], m[1, 0] * xx + m[1, 1] * yy + m[1, 2]
    dy, dx = reg.coords[0] - py, reg.coords[1] - px
    return np.concatenate([-dx[:, :EDGE].ravel(), dx[:, -EDGE:].ravel(), -dy[:EDGE].ravel(), dy[-EDGE:].ravel()])


def study() -> dict[str, Any]:
    from napari_emdiffuse.data.degrade import poisson_gaussian
    from napari_emdiffuse.data.register import RegistrationError, patch_ceiling, patch_ncc, register_pair, smoothed

    data = pairs()
    out: dict[str, Any] = {}
    for dose in DOSES:
        row: dict[str, Any] = {"aligned_old": {}, "aligned_new": {}, "shifted": {}, "other_slice": {}, "aligned_refused": 0}
        counts = {key: {p: [0, 0] for p in PATCHES} for key in ("aligned_old", "aligned_new", "shifted", "other_slice")}
        refused, unrelated_kept, wander = 0, [0, 0], {512: [], 256: []}
        for k, (name, clean, other) in enumerate(data):
            noisy = poisson_gaussian(clean, dose, READ_NOISE, seed=k)
            fs, nf = smoothed(noisy, SMOOTH)
            full = np.ones(noisy.shape, bool)
            for p in PATCHES:
                try:
                    reg = register_pair(noisy, clean, patch=p, smooth=SMOOTH, min_ncc=MIN_NCC)
                except RegistrationError:
                    row["aligned_refused"] += 1
                    continue
                for key, share in (("aligned_old", kept_share(reg.patch_ncc)), ("aligned_new", kept_share(reg.patch_ncc, reg.patch_ceiling))):
                    counts[key][p] = [a + b for a, b in zip(counts[key][p], share)]
                if p == 128:
                    wander[512].append(outward_wander(reg))
                for key, target in (("shifted", np.roll(clean, p, 1)), ("shifted", np.roll(clean, p, 0)), ("other_slice", other)):
                    ms, nm = smoothed(target, SMOOTH)
                    share = kept_share(patch_ncc(fs, ms, full, p), patch_ceiling(fs, ms, full, p, nf, nm))
                    counts[key][p] = [a + b for a, b in zip(counts[key][p], share)]
            crop = (slice(128, 384), slice(128, 384))
            wander[256].append(outward_wander(register_pair(noisy[crop], clean[crop], smooth=SMOOTH)))
            try:
                reg = register_pair(noisy, other, patch=128, smooth=SMOOTH, min_ncc=MIN_NCC)
                unrelated_kept = [a + b for a, b in zip(unrelated_kept, (int(reg.kept.sum()), reg.kept.size))]
            except RegistrationError:
                refused += 1
        for key, by_patch in counts.items():
            row[key] = {p: round(kept / max(total, 1), 4) for p, (kept, total) in by_patch.items()}
        row["unrelated_pairs_refused"] = f"{refused}/{len(data)}"
        row["unrelated_pairs_patches_kept"] = f"{unrelated_kept[0]}/{unrelated_kept[1]}"
        row["flow_wander_p99"] = {size: round(float(np.percentile(np.concatenate(v), 99)), 2) for size, v in wander.items()}
        out[str(dose)] = row
        print(dose, row, flush=True)
    return out


def report(results: dict[str, Any]) -> str:
    def pct(shares: dict[Any, float]) -> str:
        return " / ".join(f"{100 * shares[p]:.1f}" for p in PATCHES)

    lines = [
        "#### Which patches of a low-dose pair are kept (`benchmarks/study_prepare_ncc.py`)",
        "",
        f"20 pairs per dose (ISBI slices 20-29, EPFL FIB-SEM 60-87), 512 px, read noise {READ_NOISE}; "
        f"kept %, for {' / '.join(str(p) for p in PATCHES)} px patches; `--min-ncc {MIN_NCC}`, `--smooth {SMOOTH:g}`.",
        "",
        "| counts per pixel | aligned pairs refused | aligned, NCC >= 0.6 (old) | aligned, NCC >= 0.6 of ceiling | one patch off | another slice | unrelated pairs refused (kept patches of the rest) | flow wander p99, 256 / 512 px |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for dose, r in results.items():
        lines.append(
            f"| {float(dose):g} | {r['aligned_refused']} | {pct(r['aligned_old'])} | {pct(r['aligned_new'])} | {pct(r['shifted'])} | {pct(r['other_slice'])} "
            f"| {r['unrelated_pairs_refused']} ({r['unrelated_pairs_patches_kept']}) | {r['flow_wander_p99'][256]} / {r['flow_wander_p99'][512]} px |"
        )
    return "\n".join(lines)


def main() -> None:
    args = study_args(__doc__)
    results = study()
    publish(report(results), results, RESULT, None if args.no_doc else "study_prepare_ncc", DOC)


if __name__ == "__main__":
    main()
