"""Where ComfyUI's samplers differ numerically from the diffusers schedulers an import maps them
to (tools/comfy_gap.py implements ComfyUI's sampling from the published algorithms and the
noise levels of its "normal" and "karras" schedulers; docs/comfyui.md has the 20-step figures).

The implementation is first checked against Loom itself: on diffusers' own noise levels it
gives Loom's picture, so the gap that remains on ComfyUI's levels is the schedule's."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from tools import comfy_gap as cg  # noqa: E402

STEPS = 6


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    from tests.sampling_fixtures import build_sd

    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield cg.load(build_sd(tmp_path_factory.mktemp("sd")))
    torch.set_num_threads(old)


def test_comfyui_noise_levels_for_sd1() -> None:
    sigmas = cg.model_sigmas(cg.SD1_SCHEDULER)
    normal = cg.comfy_normal(sigmas, 20)
    euler, timesteps = cg.diffusers_levels("euler", cg.SD1_SCHEDULER, 20)
    # ComfyUI "normal" spans the model's whole range (timesteps 999 ... 0); diffusers spaces
    # SD 1.x's timesteps "leading" (951 ... 1), so every noise level differs
    assert [cg.nearest_timestep(sigmas, s) for s in normal[:2]] == [999, 946]
    assert normal[0] == pytest.approx(14.61, abs=0.01) and normal[-1] == 0.0
    assert timesteps[:2] == [951.0, 901.0] and euler[0] == pytest.approx(11.03, abs=0.01)
    # Karras: diffusers' DPM-Solver takes the model's whole range too, and rounds each
    # timestep as ComfyUI takes the nearest: the same levels
    karras = cg.comfy_karras(sigmas, 20)
    dpm, dpm_t = cg.diffusers_levels("dpmpp_2m_karras", cg.SD1_SCHEDULER, 20)
    assert dpm == pytest.approx(karras, rel=1e-4)
    assert [cg.nearest_timestep(sigmas, s) for s in karras[:-1]] == [int(t) for t in dpm_t]


def test_the_reference_implementation_gives_loom_s_pictures(model) -> None:
    for method, name in (("euler", "euler"), ("dpmpp_2m", "dpmpp_2m_karras")):
        loom = cg.diffusers_picture(model, name, STEPS)
        ref = cg.reference_with_diffusers_levels(model, method, name, STEPS)
        assert (ref - loom).abs().max().item() < 1e-4, name
        assert loom.std() > 0.01


def test_the_gap_an_import_leaves(model) -> None:
    cases = (("euler", "normal", "euler"), ("dpmpp_2m", "karras", "dpmpp_2m_karras"))
    euler, karras = cg.gaps(model, STEPS, cases)
    print(f"[comfy gap, {STEPS} steps] {euler} {karras}")
    assert euler["check"] < 1e-4 and karras["check"] < 1e-4
    assert euler["max"] > 1e-3  # euler/normal: another schedule, another picture
    assert karras["max"] < 1e-4  # dpmpp_2m/karras: the same picture
