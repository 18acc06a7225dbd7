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
