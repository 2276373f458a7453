"""LoRA on an SD-1.5-size UNet: what patching, unpatching and switching strength cost.

    python benchmarks/bench_lora.py [--rank 16] [--repeats 3] [--dtype fp32|fp16]

Builds the SD 1.5 UNet from resources/configs/sd1/unet/config.json with random weights (860 M
parameters; no download) and a random kohya LoRA of rank 16 on every attention projection
(to_q, to_k, to_v, to_out.0 of self- and cross-attention: 128 layers), written to a temporary
.safetensors file. Then, through the Load LoRA node's own code (nodes.lib.lora.apply_lora with a
model manager of its own), medians of `--repeats`:

  1. reading the file (safetensors + diffusers' key conversion);
  2. patch: a patched model at strength 1 (the node's run: a copy of the module tree sharing
     the unpatched weights, and W + s * alpha/r * up @ down for the 128 layers), split into the
     copy and the merge;
  3. unpatch (strength 0, or the LoRA removed): the base model itself, no work;
  4. switching strength: to a new strength (a new patched model) and back to one used before
     (the model manager already holds it);
  5. memory: the bytes a patched model adds (its new weights) next to the UNet's;
  6. one UNet call (8x8 latents, batch 1) with the base and with the patched weights: merged
     weights cost nothing per step.
At the end the base UNet's weights are checked bit for bit against their state before.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

CONFIG = ROOT / "resources" / "configs" / "sd1" / "unet" / "config.json"
ATTENTION = ("to_q", "to_k", "to_v", "to_out.0")


def build_unet(dtype: torch.dtype):
    from diffusers import UNet2DConditionModel

    config = json.loads(CONFIG.read_text())
    torch.manual_seed(0)
    with torch.no_grad():
        unet = UNet2DConditionModel.from_config(config).eval()
        if dtype != torch.float32:
            unet = unet.half()
    return unet


def write_lora(unet, rank: int, path: Path) -> int:
    from safetensors.torch import save_file

    g = torch.Generator().manual_seed(1)
    sd = {}
    for name, m in unet.named_modules():
        if isinstance(m, torch.nn.Linear) and name.endswith(ATTENTION):
            key = "lora_unet_" + name.replace(".", "_")
            sd[f"{key}.lora_down.weight"] = torch.randn(rank, m.in_features, generator=g) * .01
            sd[f"{key}.lora_up.weight"] = torch.randn(m.out_features, rank, generator=g) * .01
            sd[f"{key}.alpha"] = torch.tensor(float(rank))
    save_file(sd, str(path))
    return len(sd) // 3


def digest(module) -> str:
    h = hashlib.blake2b(digest_size=16)
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def timed(fn, repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rank", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--dtype", choices=("fp32", "fp16"), default="fp32")
    args = ap.parse_args()

    from engine.paths import file_identity
    from nodes.lib.bundles import ModelBundle
    from nodes.lib.lora import (
        PatchedHandle,
        apply_lora,
        lora_file,
        match_layers,
        patched_copy,
        read_lora,
    )
    from nodes.lib.model_manager import ModelHandle, ModelManager

    dtype = torch.float16 if args.dtype == "fp16" else torch.float32
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {args.dtype}")
    t0 = time.perf_counter()
    unet = build_unet(dtype)
    n_params = sum(p.numel() for p in unet.parameters())
    unet_bytes = sum(p.numel() * p.element_size() for p in unet.parameters())
    print(f"SD 1.5 UNet, random weights: {n_params / 1e6:.0f} M parameters, "
          f"{unet_bytes / 2**30:.2f} GiB, built in {time.perf_counter() - t0:.1f} s")
    before = digest(unet)

    models = ModelManager(budget_bytes=64 * 2**30)
    base = ModelHandle(models, ("bench", "unet"), lambda: unet)
    base.get()
    bundle = ModelBundle(base, "sd1", "epsilon", {}, dtype, torch.device("cpu"), "bench")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "lora.safetensors"
        layers = write_lora(unet, args.rank, path)
        size = path.stat().st_size
        print(f"LoRA: rank {args.rank}, {layers} attention layers, {size / 2**20:.1f} MiB")

        t_read, f = timed(lambda: read_lora(path, layers_per_block=2), args.repeats)
        print(f"1. read + convert the file: {t_read * 1e3:.0f} ms")

        matched, _ = match_layers(f.layers["unet"], unet, "UNet")
        t_match, _ = timed(lambda: match_layers(f.layers["unet"], unet, "UNet"), args.repeats)

        def copy_only():
            return patched_copy(unet, [])

        def copy_and_merge():
            return patched_copy(unet, [(matched, 1.0)])

        def clone_weights():  # the floor: only copying the weights the LoRA touches
            return [unet.get_submodule(m).weight.clone() for m in matched]

        t_copy, _ = timed(copy_only, args.repeats)
        t_full, patched = timed(copy_and_merge, args.repeats)
        t_clone, _ = timed(clone_weights, args.repeats)
        print(f"2. patch (strength 1): {t_full * 1e3:.0f} ms = copy of the module tree "
              f"{t_copy * 1e3:.0f} ms + merge of {len(matched)} layers "
              f"{(t_full - t_copy) * 1e3:.0f} ms (matching the names: {t_match * 1e3:.0f} ms; "
              f"for scale, only cloning those weights: {t_clone * 1e3:.0f} ms)")

        # the node's own path: file identity, the parsed file from the manager, a new entry
        lora_file(path, file_identity(path), 2, models)
        strengths = iter([1.0, 0.5, 0.75, 0.25, 1.25, 1.5, 0.6, 0.9])

        def node_switch():
            return apply_lora(bundle, None, path, next(strengths), 0.0, models)[0]

        t_node, patched_bundle = timed(node_switch, args.repeats)
        t_zero, same = timed(lambda: apply_lora(bundle, None, path, 0.0, 0.0, models)[0],
                             args.repeats)
        assert same is bundle
        print(f"3. unpatch (strength 0 / LoRA removed): {t_zero * 1e3:.1f} ms (the base "
              "model itself; nothing is copied or restored)")
        print(f"4. switch to a new strength (Load LoRA's run): {t_node * 1e3:.0f} ms; ", end="")
        seen = apply_lora(bundle, None, path, 1.0, 0.0, models)[0]
        t_back, _ = timed(lambda: apply_lora(bundle, None, path, 1.0, 0.0, models)[0].unet,
                          args.repeats)
        assert isinstance(seen.unet_ref, PatchedHandle)
        print(f"back to one used before: {t_back * 1e3:.1f} ms (held by the model manager)")

        shared = {p.data_ptr() for p in unet.parameters()}
        new_bytes = sum(p.numel() * p.element_size() for p in patched.parameters()
                        if p.data_ptr() not in shared)
        print(f"5. a patched model adds {new_bytes / 2**20:.0f} MiB of new weights "
              f"({100 * new_bytes / unet_bytes:.1f} % of the UNet; the rest is shared); the "
              f"model manager counts it at {models._entries[seen.unet_ref.key].nbytes / 2**30:.2f}"
              " GiB (its full size, an upper bound)")

        x = torch.randn(1, 4, 8, 8, dtype=dtype)
        ctx = torch.randn(1, 77, 768, dtype=dtype)
        t = torch.tensor([500.0])
        with torch.no_grad():
            call = lambda m: m(x, t, encoder_hidden_states=ctx, return_dict=False)[0]  # noqa
            call(unet)
            call(patched)
            base_t, patched_t = [], []
            for _ in range(args.repeats):  # alternating, so a busy moment hits both
                base_t.append(timed(lambda: call(unet), 1)[0])
                patched_t.append(timed(lambda: call(patched), 1)[0])
            t_base, t_patched = statistics.median(base_t), statistics.median(patched_t)
        print(f"6. one UNet call, 8x8 latents, batch 1: base {t_base * 1e3:.0f} ms, patched "
              f"{t_patched * 1e3:.0f} ms")
        del patched_bundle
    assert digest(unet) == before, "the base UNet's weights changed"
    print("base UNet weights unchanged (bit for bit)")


if __name__ == "__main__":
    main()
