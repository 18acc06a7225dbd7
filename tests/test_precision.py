"""mixed_precision: auto picks bf16 only where the hardware has it; emulated bf16 is warned about."""

from nlp_mtl.training import precision


def test_auto_follows_native_support(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision("auto", on_cuda=False) == ("bf16", None)
    assert precision.resolve_precision("bf16", on_cuda=False) == ("bf16", None)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision("auto", on_cuda=False) == ("no", None)
    assert precision.resolve_precision("no", on_cuda=False) == ("no", None)


def test_explicit_bf16_on_emulating_cpu_is_kept_but_warned(monkeypatch):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    chosen, note = precision.resolve_precision("bf16", on_cuda=False)
    assert chosen == "bf16" and "emulated" in note and "slower" in note


def test_cpu_flags_are_read_from_cpuinfo():
    avx2_only = "processor\t: 0\nflags\t\t: fpu sse avx avx2 fma\n"
    sapphire = "processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n"
    assert not precision.cpu_has_native_bf16(avx2_only)
    assert precision.cpu_has_native_bf16(sapphire)
    # a flag name inside another word does not count
    assert not precision.cpu_has_native_bf16("flags\t\t: avx512_bf16x\n")


def test_a_half_precision_checkpoint_loads_as_fp32_weights(tmp_path, tiny_bert):
    """Many published encoders are stored in fp16/bf16; transformers 5 would keep that dtype and
    training would run in plain half precision. Autocast is how we mix precisions."""
    import shutil

    import torch
    from transformers import AutoModel

    from nlp_mtl.backbone import load_encoder

    half = tmp_path / "half"
    shutil.copytree(tiny_bert, half)
    AutoModel.from_pretrained(tiny_bert).to(torch.float16).save_pretrained(half)
    from safetensors import safe_open

    with safe_open(str(half / "model.safetensors"), "pt") as stored:
        assert {stored.get_tensor(k).dtype for k in stored.keys()} == {torch.float16}
    assert {p.dtype for p in load_encoder(str(half)).parameters()} == {torch.float32}


def test_varying_shape_batches_skip_cudnn_attention_on_cuda_only():
    """cuDNN attention builds a graph per input shape; with dynamic padding that made a bf16 step
    2.4x slower on an H100 (docs/bench-cuda.md). The flag is scoped to the context."""
    import torch

    from nlp_mtl.kernels import attention_for_varying_shapes

    before = torch.backends.cuda.cudnn_sdp_enabled()
    with attention_for_varying_shapes("cuda"):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
    assert torch.backends.cuda.cudnn_sdp_enabled() == before
    with attention_for_varying_shapes("cpu"):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before


def test_cpu_isa_flags_name_what_the_matmuls_can_use():
    cpuinfo = "processor : 0\nflags : fpu sse avx2 fma avx512f avx512_bf16 amx_tile amx_bf16 ht\n"
    assert precision.cpu_isa_flags(cpuinfo) == ["avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"]
    assert precision.cpu_isa_flags("flags : fpu sse sse2 avx2 fma\n") == ["avx2", "fma"]
    assert precision.cpu_has_native_bf16(cpuinfo) and not precision.cpu_has_native_bf16("flags : avx2 fma\n")
