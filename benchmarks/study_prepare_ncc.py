"""Which patches of a low-dose pair does ``emdiffuse prepare`` keep, and how far does its local
flow wander at the edges? The figures behind ``--min-ncc`` relative to the noise ceiling
(``register.ncc_ceiling``) and behind ``register.FLOW_SLACK``.

Pairs: a clean slice as the target and the same slice at ``DOSES`` counts per pixel (Poisson, then
read noise ``READ_NOISE``: ``degrade.poisson_gaussian``) as the input, 512 x 512 px, from slices no
test uses: ISBI 2012 ssTEM 20-29 and EPFL FIB-SEM 60-87 (every third). The rule was designed on
ISBI 10-19, not on these.

- **aligned**: the share of an aligned pair's patches (64, 128, 256 px) that ``register_pair``
  keeps: by the old rule (smoothed NCC >= 0.6) and by the new one (NCC >= 0.6 of its ceiling).
- **misaligned**: the share of patches kept by ``prepare``'s own decision (``register.keep``, then
  ``prepare.reject_reason`` with its contrast check), scored as registration scores them, when
  the target is one patch off (shifted by the patch size in x, and in y) or another slice (ISBI:
  5 sections, 250 nm away; FIB-SEM: 70 slices, 350 nm away).
- **aligned pairs refused**: pairs (not patches) ``register_pair`` refuses as unrelated.
- **unrelated pairs**: how many of those other-slice pairs ``register_pair`` refuses outright, and
  how many patches the rest keep.
- **low contrast** (``LOW``): what ``register.kept`` and the ceiling alone missed, that structure is
  everywhere in these slices. 512 px images at mid-grey holding nothing (flat), a texture of
  0.5 % or 2 % of the range (white noise smoothed over 2 px, or blobs over 8 px), or a real
  slice at 2 % of its contrast (faint EM: ISBI 20-29), the target with noise 0.01 of the range.
  Per dose and case, ``N_LOW`` pairs: patches kept when the target is another, unrelated image of
  the same kind or one patch off (all three patch sizes, through ``reject_reason``), pairs of
  unrelated images through the whole of ``register_pair`` and ``reject_reason`` (128 px), and
  what an aligned pair keeps (128 px; with no signal, nothing is expected).

``--design`` measures, on ISBI 10-19 and low-contrast images of other seeds, how far above chance
(in ``register.null_sd``'s) aligned and misaligned patches correlate: the figures behind
``register.NULL_SIGMAS`` (``benchmarks/results/prepare_ncc_design.json``).
- **flow wander**: the 99th percentile of how far the local flow places pixels of the outermost
  16 px beyond where the global transform places them (outwards, normal to the edge), on the
  aligned 512 px pairs and on their central 256 px crops: ``FLOW_SLACK`` allows for it.

    python benchmarks/study_prepare_ncc.py [--no-doc] [--design]
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
DESIGN = REPO / "benchmarks" / "results" / "prepare_ncc_design.json"
DOSES = (0.25, 0.5, 1.0, 2.0, 5.0, 20.0)
READ_NOISE = 0.03
PATCHES = (64, 128, 256)
MIN_NCC, SMOOTH, MIN_STD = 0.6, 2.0, 0.05  # prepare's defaults
EDGE = 16
LOW = {"flat": (0.0, 0.0), "texture 0.5 %": (0.005, 2.0), "texture 2 %": (0.02, 2.0), "blobs 2 %": (0.02, 8.0), "faint EM 2 %": (0.02, None)}
"""Low-contrast cases: (contrast as a share of the range, texture scale in px; None: a real slice)."""
TARGET_NOISE = 0.01
N_LOW = 4


def isbi(first: int) -> np.ndarray:
    import tifffile

    return tifffile.imread(ISBI, key=range(first, first + 10)).astype(np.float32) / 255


def pairs() -> list[tuple[str, np.ndarray, np.ndarray]]:
    """``(name, clean slice, another slice)`` in [0, 1]."""
    import tifffile

    slices = isbi(20)
    out = [(f"isbi {20 + z}", slices[z], slices[(z + 5) % 10]) for z in range(10)]
    for z in range(60, 88, 3):
        a, b = tifffile.imread(FIBSEM, key=[z, z + 70]).astype(np.float32) / 255
        out.append((f"fibsem {z}", a, b))
    return out


def low_contrast(case: str, seed: int, slices: np.ndarray) -> np.ndarray:
    """A 512 px image of a LOW case around mid-grey, in [0, 1] (faint EM: slice ``seed`` of ``slices``)."""
    from scipy import ndimage as ndi

    contrast, scale = LOW[case]
    if scale is None:
        t = slices[seed % len(slices)]
    else:
        t = np.random.default_rng(seed).normal(size=(512, 512))
        t = ndi.gaussian_filter(t, scale) if scale else t
    return (0.5 + contrast * (t - t.mean()) / t.std()).astype(np.float32)


def with_noise(clean: np.ndarray, seed: int) -> np.ndarray:
    return clean + np.random.default_rng(seed).normal(0, TARGET_NOISE, clean.shape).astype(np.float32)


def forced(noisy: np.ndarray, target: np.ndarray, p: int) -> list[Any]:
    """prepare's verdict (``reject_reason``: None is kept) on every patch of a target placed as
    given, unregistered, scored as registration scores them."""
    from napari_emdiffuse.data.normalise import fit_normaliser
    from napari_emdiffuse.data.prepare import reject_reason
    from napari_emdiffuse.data.register import keep, patch_ceiling, patch_ncc, patch_null, smoothed

    (fs, nf), (ms, nm) = smoothed(noisy, SMOOTH), smoothed(target, SMOOTH)
    full = np.ones(noisy.shape, bool)
    kept, no_signal = keep(patch_ncc(fs, ms, full, p), patch_ceiling(fs, ms, full, p, nf, nm), patch_null(full, p, SMOOTH), MIN_NCC)
    norm = fit_normaliser(target)
    return [reject_reason(True, kept[i, j], no_signal[i, j], target[i * p : (i + 1) * p, j * p : (j + 1) * p], norm, MIN_STD) for i, j in np.ndindex(kept.shape)]


def registered(reg: Any, target: np.ndarray) -> list[Any]:
    """prepare's verdict on every patch of a registered pair (as ``prepare._pairs_to_set``)."""
    from napari_emdiffuse.data.normalise import fit_normaliser
    from napari_emdiffuse.data.prepare import reject_reason

    p, norm = reg.patch, fit_normaliser(target)
    out = []
    for i, j in np.ndindex(reg.kept.shape):
        sl = (slice(i * p, (i + 1) * p), slice(j * p, (j + 1) * p))
        out.append(reject_reason(bool(reg.valid[sl].all()), reg.kept[i, j], reg.no_signal[i, j], reg.warped[sl], norm, MIN_STD))
    return out


def tally(verdicts: list[Any], into: dict[str, int]) -> None:
    for v in verdicts:
        into["kept" if v is None else v] = into.get("kept" if v is None else v, 0) + 1
        into["patches"] = into.get("patches", 0) + 1


def share(counts: dict[str, int], what: str = "kept") -> float:
    return round(counts.get(what, 0) / max(counts.get("patches", 0), 1), 4)


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
    from napari_emdiffuse.data.register import RegistrationError, register_pair

    data = pairs()
    out: dict[str, Any] = {}
    for dose in DOSES:
        row: dict[str, Any] = {}
        counts: dict[str, dict[int, dict[str, int]]] = {key: {p: {} for p in PATCHES} for key in ("aligned_old", "aligned_rule", "aligned", "shifted", "other_slice")}
        refused, unrelated, wander = set(), {}, {512: [], 256: []}
        for k, (name, clean, other) in enumerate(data):
            noisy = poisson_gaussian(clean, dose, READ_NOISE, seed=k)
            for p in PATCHES:
                try:
                    reg = register_pair(noisy, clean, patch=p, smooth=SMOOTH, min_ncc=MIN_NCC)
                except RegistrationError:
                    refused.add(name)
                    continue
                tally(registered(reg, clean), counts["aligned"][p])
                rule = [None if ok else "no signal" if no else "misaligned" for ok, no in zip(reg.kept.ravel(), reg.no_signal.ravel())]
                tally(rule, counts["aligned_rule"][p])  # register.keep alone, as the ceiling's column measured
                old = np.nan_to_num(reg.patch_ncc, nan=-1.0) >= MIN_NCC  # the rule before the ceiling
                tally([None if ok else "misaligned" for ok in old.ravel()], counts["aligned_old"][p])
                if p == 128:
                    wander[512].append(outward_wander(reg))
                for key, target in (("shifted", np.roll(clean, p, 1)), ("shifted", np.roll(clean, p, 0)), ("other_slice", other)):
                    tally(forced(noisy, target, p), counts[key][p])
            crop = (slice(128, 384), slice(128, 384))
            wander[256].append(outward_wander(register_pair(noisy[crop], clean[crop], smooth=SMOOTH)))
            try:
                tally(registered(register_pair(noisy, other, patch=128, smooth=SMOOTH, min_ncc=MIN_NCC), other), unrelated)
            except RegistrationError:
                unrelated["refused"] = unrelated.get("refused", 0) + 1
        for key, by_patch in counts.items():
            row[key] = {p: share(c) for p, c in by_patch.items()}
        row["aligned_no_signal"] = {p: share(c, "no signal") for p, c in counts["aligned_rule"].items()}
        row["aligned_rejected"] = {p: {why: n for why, n in c.items() if why not in ("kept", "patches")} for p, c in counts["aligned"].items()}
        row["aligned_pairs_refused"] = f"{len(refused)}/{len(data)}"
        row["unrelated_pairs_refused"] = f"{unrelated.get('refused', 0)}/{len(data)}"
        row["unrelated_pairs_patches_kept"] = f"{unrelated.get('kept', 0)}/{unrelated.get('patches', 0)}"
        row["flow_wander_p99"] = {size: round(float(np.percentile(np.concatenate(v), 99)), 2) for size, v in wander.items()}
        row["low_contrast"] = low_contrast_row(dose, isbi(20), seed=0)
        out[str(dose)] = row
        print(dose, row, flush=True)
    return out


def low_contrast_row(dose: float, slices: np.ndarray, seed: int) -> dict[str, Any]:
    """Per LOW case, N_LOW pairs at ``dose``: kept shares (and those of no signal) of misaligned
    patches (one patch off, an unrelated image; every patch size), unrelated pairs through
    register_pair (refused, patches kept) and aligned pairs (128 px kept, no signal)."""
    from napari_emdiffuse.data.degrade import poisson_gaussian
    from napari_emdiffuse.data.register import RegistrationError, register_pair

    row = {}
    for c, case in enumerate(LOW):
        misaligned, unrelated, aligned = {p: {} for p in PATCHES}, {}, {}
        for k in range(N_LOW):
            s = seed + 100 * c + 2 * k
            one, two = low_contrast(case, s, slices), low_contrast(case, s + 1 + len(slices) // 2, slices)
            noisy, target, other = poisson_gaussian(one, dose, READ_NOISE, seed=s), with_noise(one, s + 7), with_noise(two, s + 8)
            for p in PATCHES:
                tally(forced(noisy, other, p), misaligned[p])
                tally(forced(noisy, np.roll(target, p, 1), p), misaligned[p])
            try:
                tally(registered(register_pair(noisy, other, patch=128, smooth=SMOOTH, min_ncc=MIN_NCC), other), unrelated)
            except RegistrationError:
                unrelated["refused"] = unrelated.get("refused", 0) + 1
            try:
                tally(registered(register_pair(noisy, target, patch=128, smooth=SMOOTH, min_ncc=MIN_NCC), target), aligned)
            except RegistrationError:
                aligned["refused"] = aligned.get("refused", 0) + 1
        row[case] = {
            "misaligned_kept": {p: share(m) for p, m in misaligned.items()},
            "misaligned_patches": {p: m.get("patches", 0) for p, m in misaligned.items()},
            "unrelated_pairs_refused": f"{unrelated.get('refused', 0)}/{N_LOW}",
            "unrelated_patches_kept": f"{unrelated.get('kept', 0)}/{unrelated.get('patches', 0)}",
            "aligned_pairs_refused": f"{aligned.get('refused', 0)}/{N_LOW}",
            "aligned_128_kept": f"{aligned.get('kept', 0)}/{aligned.get('patches', 0)}",
            "aligned_128_no_signal": f"{aligned.get('no signal', 0)}/{aligned.get('patches', 0)}",
        }
    return row


def design() -> dict[str, Any]:
    """How many null_sd's above chance patches correlate (NCC / null_sd), on design data only
    (ISBI 10-19, low-contrast images of other seeds), with NULL_SIGMAS at 0 so nothing is cut:
    aligned EM patches through register_pair (low quantiles), misaligned patches (one patch off,
    another slice, unrelated low-contrast images; high quantiles) and the patches of unrelated
    low-contrast pairs after register_pair's flow has made the best of them."""
    from napari_emdiffuse.data import register
    from napari_emdiffuse.data.degrade import poisson_gaussian
    from napari_emdiffuse.data.register import patch_ncc, patch_null, register_pair, smoothed

    register.NULL_SIGMAS = 0.0
    slices = isbi(10)
    z: dict[str, dict[int, list[float]]] = {key: {p: [] for p in PATCHES} for key in ("aligned", "misaligned", "low misaligned", "low registered")}

    def forced_z(noisy: np.ndarray, target: np.ndarray, p: int) -> list[float]:
        (fs, _), (ms, _) = smoothed(noisy, SMOOTH), smoothed(target, SMOOTH)
        full = np.ones(noisy.shape, bool)
        return (patch_ncc(fs, ms, full, p) / patch_null(full, p, SMOOTH)).ravel().tolist()

    out: dict[str, Any] = {}
    for dose in DOSES:
        for key in z:
            z[key] = {p: [] for p in PATCHES}
        for k in range(10):
            clean, other = slices[k], slices[(k + 5) % 10]
            noisy = poisson_gaussian(clean, dose, READ_NOISE, seed=1000 + k)
            for p in PATCHES:
                reg = register_pair(noisy, clean, patch=p, smooth=SMOOTH, min_ncc=MIN_NCC)
                z["aligned"][p] += (reg.patch_ncc / reg.patch_null).ravel().tolist()
                z["misaligned"][p] += forced_z(noisy, np.roll(clean, p, 1), p) + forced_z(noisy, other, p)
        for c, case in enumerate(LOW):
            for k in range(3):
                s = 5000 + 100 * c + 2 * k
                one, two = low_contrast(case, s, slices), low_contrast(case, s + 5, slices)
                noisy, other = poisson_gaussian(one, dose, READ_NOISE, seed=s), with_noise(two, s + 8)
                for p in PATCHES:
                    z["low misaligned"][p] += forced_z(noisy, other, p)
                try:
                    reg = register_pair(noisy, other, patch=128, smooth=SMOOTH, min_ncc=MIN_NCC)
                    z["low registered"][128] += (reg.patch_ncc / reg.patch_null).ravel().tolist()
                except register.RegistrationError:
                    pass
        row: dict[str, Any] = {}
        for key, by_patch in z.items():
            for p, v in by_patch.items():
                if v:
                    a = np.asarray(v)
                    a = a[np.isfinite(a)]
                    q = (0.0, 0.01, 0.5) if key == "aligned" else (0.5, 0.99, 0.999, 1.0)
                    row[f"{key} {p}"] = {"n": int(a.size), **{f"q{x:g}": round(float(np.quantile(a, x)), 2) for x in q}}
        out[str(dose)] = row
        print(dose, row, flush=True)
    return out


def report(results: dict[str, Any]) -> str:
    from napari_emdiffuse.data.register import NULL_SIGMAS

    def pct(shares: dict[Any, float]) -> str:
        return " / ".join(f"{100 * shares[p]:.1f}" for p in PATCHES)

    lines = [
        "#### Which patches of a low-dose pair are kept (`benchmarks/study_prepare_ncc.py`)",
        "",
        f"20 pairs per dose (ISBI slices 20-29, EPFL FIB-SEM 60-87), 512 px, read noise {READ_NOISE}; "
        f"kept %, for {' / '.join(str(p) for p in PATCHES)} px patches; `--min-ncc {MIN_NCC}`, `--smooth {SMOOTH:g}`, "
        f"`--min-std {MIN_STD}`, NCC at least {NULL_SIGMAS:g} x chance's spread.",
        "",
        "| counts per pixel | aligned pairs refused | aligned, NCC >= 0.6 (old) | aligned, kept by `register.keep` | aligned, no signal | aligned, kept by prepare | one patch off | another slice | unrelated pairs refused (kept patches of the rest) | flow wander p99, 256 / 512 px |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for dose, r in results.items():
        lines.append(
            f"| {float(dose):g} | {r['aligned_pairs_refused']} | {pct(r['aligned_old'])} | {pct(r['aligned_rule'])} | {pct(r['aligned_no_signal'])} | {pct(r['aligned'])} "
            f"| {pct(r['shifted'])} | {pct(r['other_slice'])} | {r['unrelated_pairs_refused']} ({r['unrelated_pairs_patches_kept']}) "
            f"| {r['flow_wander_p99'][256]} / {r['flow_wander_p99'][512]} px |"
        )
    n = next(iter(results.values()))["low_contrast"]
    per = next(iter(n.values()))["misaligned_patches"]
    lines += [
        "",
        f"Low contrast: 512 px images at mid-grey, {N_LOW} pairs per case and dose, the target with noise {TARGET_NOISE}; "
        f"misaligned = an unrelated image of the same kind and the target one patch off "
        f"({' / '.join(str(per[p]) for p in PATCHES)} patches of {' / '.join(str(p) for p in PATCHES)} px per cell), "
        "kept %; unrelated pairs through registration; aligned pairs, 128 px patches kept and of no signal.",
        "",
        "| case | counts per pixel | misaligned kept % | unrelated pairs refused (kept patches of the rest) | aligned: kept, no signal |",
        "|---|---|---|---|---|",
    ]
    for case in LOW:
        for dose, r in results.items():
            c = r["low_contrast"][case]
            lines.append(
                f"| {case} | {float(dose):g} | {pct(c['misaligned_kept'])} | {c['unrelated_pairs_refused']} ({c['unrelated_patches_kept']}) "
                f"| {c['aligned_128_kept']}, {c['aligned_128_no_signal']} |"
            )
    return "\n".join(lines)


def main() -> None:
    args = study_args(__doc__, add=lambda ap: ap.add_argument("--design", action="store_true", help="measure on design data what NULL_SIGMAS is chosen from"))
    if args.design:
        import json

        DESIGN.write_text(json.dumps(design(), indent=2))
        return
    results = study()
    publish(report(results), results, RESULT, None if args.no_doc else "study_prepare_ncc", DOC)


if __name__ == "__main__":
    main()
