import numpy as np
import pytest
import torch

from napari_emdiffuse.config import DiffusionConfig
from napari_emdiffuse.engine.diffusion import Schedule
from napari_emdiffuse.engine.samplers import get_sampler
from napari_emdiffuse.engine.grid import TileGrid
from napari_emdiffuse.engine.grid import make_tiles, tile_starts
from napari_emdiffuse.engine.tiling import TiledSampler, keyed_noise, ramp, tile_grid


@pytest.mark.parametrize("length,tile,overlap", [(10, 64, 16), (64, 64, 16), (65, 64, 16), (1000, 128, 32), (131, 64, 8)])
def test_tiles_cover_everything_with_the_overlap(length, tile, overlap):
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and min(starts[-1] + tile, length) == length
    for a, b in zip(starts, starts[1:]):
        assert a + tile - b >= overlap


def test_ramp_is_smooth_and_only_faces_neighbours():
    w = ramp(64, 16)
    assert w[0] == 0 and w[-1] == 0 and w[16:48].min() == 1
    assert np.all(np.diff(w[:16]) > 0)
    edge = ramp(64, 16, start=False)
    assert edge[0] == 1 and edge[-1] == 0


def test_keyed_noise_depends_only_on_position():
    a = keyed_noise(7, 0, 3, 1, 10, 20, 100, 90)
    b = keyed_noise(7, 0, 3, 1, 50, 70, 40, 40)
    assert torch.equal(a[:, 40:80, 50:90], b)
    assert not torch.equal(keyed_noise(7, 1, 3, 1, 50, 70, 40, 40), b)  # another sample
    assert not torch.equal(keyed_noise(7, 0, 4, 1, 50, 70, 40, 40), b)  # another step
    assert abs(a.std().item() - 1) < 0.05


def _blur_denoiser(x, sigma, cond):
    """A local, deterministic 'model' (a 3x3 mean of the condition) to test the tiling mechanics."""
    return torch.nn.functional.avg_pool2d(cond, 3, stride=1, padding=1, count_include_pad=False).expand_as(x)


def _run(img, tile, overlap, samples=1, tile_batch=4, sampler="ddim"):
    sig = Schedule.from_config(DiffusionConfig()).sampling_sigmas(3)
    ts = TiledSampler(_blur_denoiser, get_sampler(sampler), sig, 1, 4, tile, overlap, samples, tile_batch, torch.device("cpu"))
    mean = np.zeros((1, *img.shape), np.float32)
    std = np.zeros_like(mean)
    ts.run(lambda y0, y1: img[None, y0:y1], img.shape[0], img.shape[1], mean, std)
    return mean[0], std[0]


@pytest.mark.parametrize("shape", [(5, 7), (37, 53), (64, 64), (200, 61), (130, 300)])
def test_any_size_is_covered_without_dropped_edges(shape):
    img = np.random.default_rng(0).random(shape, dtype=np.float32)
    out, _ = _run(img, 64, 16)
    ref, _ = _run(img, 512, 16)  # one tile
    assert out.shape == shape and np.all(np.isfinite(out))
    # identical everywhere but the outermost pixels, where the single tile is padded to the
    # network's size multiple and the small tiles are not
    np.testing.assert_allclose(out[1:-1, 1:-1], ref[1:-1, 1:-1], atol=1e-5)


def test_memory_band_streams_rows_for_tall_planes():
    img = np.random.default_rng(1).random((700, 40), dtype=np.float32)
    out, _ = _run(img, 64, 16, tile_batch=64)  # batches span many tile rows
    ref, _ = _run(img, 1024, 16)
    np.testing.assert_allclose(out, ref, atol=1e-5)


def test_uncertainty_is_the_spread_of_samples():
    img = np.zeros((40, 40), np.float32)
    # ancestral sampling with a model that ignores x: every sample is the same (std 0)
    mean, std = _run(img, 32, 8, samples=3, sampler="ddpm")
    assert np.allclose(std, 0, atol=1e-6)

    def noisy_model(x, sigma, cond):  # the estimate follows the noise: samples differ
        return x * 0.5

    sig = Schedule.from_config(DiffusionConfig()).sampling_sigmas(2)
    ts = TiledSampler(noisy_model, get_sampler("ddim"), sig, 1, 4, 32, 8, 4, 8, torch.device("cpu"))
    m, s, k = np.zeros((1, 40, 40), np.float32), np.zeros((1, 40, 40), np.float32), np.zeros((4, 1, 40, 40), np.float32)
    ts.run(lambda y0, y1: img[None, y0:y1], 40, 40, m, s, k)
    assert s.min() > 0
    np.testing.assert_allclose(m, k.mean(0), atol=1e-4)
    np.testing.assert_allclose(s, k.std(0, ddof=1), rtol=0.05, atol=1e-3)


def test_oom_halves_the_batch(monkeypatch):
    calls = []

    def flaky(x, sigma, cond):
        calls.append(x.shape[0])
        if x.shape[0] > 2:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return _blur_denoiser(x, sigma, cond)

    img = np.random.default_rng(0).random((64, 64), dtype=np.float32)
    sig = Schedule.from_config(DiffusionConfig()).sampling_sigmas(2)
    progress = []
    ts = TiledSampler(flaky, get_sampler("ddim"), sig, 1, 4, 32, 8, 1, 8, torch.device("cpu"), step_callback=lambda d, t: progress.append((d, t)))
    out = np.zeros((1, 64, 64), np.float32)
    ts.run(lambda y0, y1: img[None, y0:y1], 64, 64, out)
    assert calls[:2] == [8, 4] and max(calls[2:]) <= 2
    # the progress total was computed before the retries and still holds: no overshoot
    assert progress[-1][0] == progress[-1][1] == ts.count_steps(64, 64)
    assert all(d <= t for d, t in progress)
    ref, _ = _run(img, 32, 8)
    np.testing.assert_allclose(out[0], ref, atol=1e-5)


def test_tile_grid_counts():
    assert len(make_tiles(100, 100, 64, 16)) == 4
    assert len(make_tiles(10, 10, 64, 16)) == 1


@pytest.mark.parametrize(
    "tile_size,overlap,multiple,grid",
    [(256, 32, 16, (256, 32)), (250, 32, 16, (240, 32)), (8, 4, 16, (16, 4)), (64, 1, 16, (64, 2)), (64, 100, 16, (64, 31)), (64, 0, 16, (64, 0))],
)
def test_tile_grid_is_the_grid_the_sampler_lays(tile_size, overlap, multiple, grid):
    """What cuts a prediction into blocks, known without building a sampler: the tile rounded to
    the network's size multiple, the overlap at least 2 px and under half a tile. The sampler's
    network sees tiles of exactly that size, as many as that grid lays on the plane."""
    assert tile_grid(tile_size, overlap, multiple) == TileGrid(*grid)
    seen = []

    def denoise(x, sigma, cond):
        seen.append(tuple(x.shape[-2:]))
        return cond

    def run(h: int, w: int) -> int:
        seen.clear()
        sig = Schedule.from_config(DiffusionConfig()).sampling_sigmas(2)
        sampler = TiledSampler(denoise, get_sampler("ddim"), sig, 1, multiple, tile_size, overlap, 1, 1, torch.device("cpu"))
        img = np.zeros((1, h, w), np.float32)
        sampler.run(lambda y0, y1: img[:, y0:y1], h, w, np.zeros_like(img), np.zeros_like(img))
        return len(seen)

    per_tile = run(grid[0], grid[0])  # one tile: the network evaluations of one
    h, w = 3 * grid[0] + 5, 2 * grid[0] + 1
    assert run(h, w) == per_tile * len(make_tiles(h, w, *grid))
    assert set(seen) == {(grid[0], grid[0])}


def test_one_pixel_overlap_gives_no_holes():
    img = np.random.default_rng(2).random((255, 70), dtype=np.float32)
    out, _ = _run(img, 128, 1)
    assert np.all(np.isfinite(out))


def _conv_denoiser():
    """A small random convolutional 'model' that mixes the noisy input with the condition (its
    output follows the position-keyed noise, as a real network's does)."""
    torch.manual_seed(3)
    net = torch.nn.Sequential(torch.nn.Conv2d(2, 8, 3, padding=1), torch.nn.Tanh(), torch.nn.Conv2d(8, 1, 3, padding=1))

    def denoise(x, sigma, cond):
        return net(torch.cat([x / (1 + sigma.view(-1, 1, 1, 1) ** 2) ** 0.5, cond], 1))

    return denoise


@pytest.mark.parametrize("shape", [(67, 93), (101, 45)])
def test_a_region_is_bit_identical_to_the_whole_plane_run(shape):
    """Only the tiles touching a rectangle run, and the rectangle equals the whole plane's result
    exactly (mean, spread and samples), for rectangles at edges, inside, and of one pixel."""
    img = np.random.default_rng(4).random(shape, dtype=np.float32)
    sig = Schedule.from_config(DiffusionConfig()).sampling_sigmas(3)
    ts = TiledSampler(_conv_denoiser(), get_sampler("ddpm"), sig, 1, 4, 32, 8, 2, 3, torch.device("cpu"), seed=9)
    h, w = shape
    whole = np.zeros((1, h, w), np.float32), np.zeros((1, h, w), np.float32), np.zeros((2, 1, h, w), np.float32)
    with torch.inference_mode():
        ts.run(lambda y0, y1: img[None, y0:y1], h, w, *whole, plane_key=2)
    assert whole[1].min() > 0  # the samples differ: the spread tests the noise too
    for y0, y1, x0, x1 in [(0, h, 0, w), (0, 20, 0, 33), (17, 50, 30, min(61, w)), (h - 9, h, w - 30, w), (40, 41, 22, 23), (5, h - 3, 0, w)]:
        sy0, sy1, sx0, sx1 = ts.grid.span(h, w, (y0, y1, x0, x1))
        reads = []

        def read(a, b):
            reads.append((a, b))
            return img[None, a:b, sx0:sx1]

        part = np.zeros((1, y1 - y0, x1 - x0), np.float32), np.zeros((1, y1 - y0, x1 - x0), np.float32), np.zeros((2, 1, y1 - y0, x1 - x0), np.float32)
        with torch.inference_mode():
            ts.run(read, h, w, *part, plane_key=2, region=(y0, y1, x0, x1))
        for got, want in zip(part, whole):
            np.testing.assert_array_equal(got, want[..., y0:y1, x0:x1])
        assert all(sy0 <= a < b <= sy1 for a, b in reads)
        ran = len(TileGrid(ts.tile, ts.overlap).tiles(h, w, (y0, y1, x0, x1)))
        assert ts.count_steps(h, w, (y0, y1, x0, x1)) == ran * 2 * (len(sig) - 1)
        if (y1 - y0, x1 - x0) == (1, 1):
            assert ran < len(make_tiles(h, w, ts.tile, ts.overlap))


def test_a_packed_region_runs_only_its_tiles_and_matches_the_whole_plane():
    """``pack``: the tiles a region needs fill the batches on their own (no blank tiles), and
    the region still agrees with the whole plane's run (to float32 rounding: the batches differ)."""
    h, w = 67, 93
    img = np.random.default_rng(5).random((h, w), dtype=np.float32)
    sig = Schedule.from_config(DiffusionConfig()).sampling_sigmas(3)
    base = _conv_denoiser()
    seen = []

    def denoise(x, sigma, cond):
        seen.append(x.shape[0])
        return base(x, sigma, cond)

    def sampler(pack):
        return TiledSampler(denoise, get_sampler("ddpm"), sig, 1, 4, 32, 8, 2, 3, torch.device("cpu"), seed=9, pack=pack)

    whole = np.zeros((1, h, w), np.float32)
    with torch.inference_mode():
        sampler(False).run(lambda y0, y1: img[None, y0:y1], h, w, whole, plane_key=2)
    region = (0, h, 40, 52)  # a band of columns: two tiles in each tile row
    sy0, sy1, sx0, sx1 = TileGrid(32, 8).span(h, w, region)
    part = np.zeros((1, h, 12), np.float32)
    seen.clear()
    with torch.inference_mode():
        sampler(True).run(lambda a, b: img[None, a:b, sx0:sx1], h, w, part, plane_key=2, region=region)
    needed = len(TileGrid(32, 8).tiles(h, w, region)) * 2  # tiles x samples
    assert sum(seen) == needed * (len(sig) - 1)  # nothing else ran
    np.testing.assert_allclose(part, whole[..., 40:52], atol=1e-5)


def test_a_region_needs_every_tile_that_touches_it():
    """A tile that touches a pixel of the region with a small weight still counts: leaving out
    the tiles that merely reach into it changes the blend there."""
    grid = TileGrid(32, 8)
    tiles = grid.tiles(67, 93)
    region = (30, 31, 0, 93)  # a row inside the overlap of the first two tile rows
    touching = grid.tiles(67, 93, region)
    assert {t.y0 for t in touching} == {t.y0 for t in tiles if t.y0 <= 30 < t.y0 + t.h} and len({t.y0 for t in touching}) == 2
    assert grid.span(67, 93, region)[:2] == (min(t.y0 for t in touching), max(t.y0 + t.h for t in touching))
    assert grid.tiles(67, 93) == make_tiles(67, 93, 32, 8)
    for rect in [(0, 67, 0, 93), (10, 40, 50, 51), (66, 67, 92, 93)]:  # the whole grid's tiles that touch, in its order
        assert grid.tiles(67, 93, rect) == [t for t in tiles if t.y0 < rect[1] and t.y0 + t.h > rect[0] and t.x0 < rect[3] and t.x0 + t.w > rect[2]]
