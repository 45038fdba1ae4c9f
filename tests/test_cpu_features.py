"""export/cpu_features.py: the CPU's instruction sets from the kernel's flags (what int8 and bfloat16 need)."""
from export.cpu_features import FEATURES, cpu_features, cpu_flags, cpu_name

XEON_FLAGS = "fpu sse4_2 avx avx2 fma f16c avx512f avx512bw avx512vl avx512_vnni avx512_bf16 amx_tile amx_int8 amx_bf16"
OLD_FLAGS = "fpu sse4_2 avx"
ARM_FEATURES = "fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp asimddp i8mm bf16 sve"


def test_every_key_is_present_and_derived_keys_follow_their_parts():
    xeon = cpu_features(XEON_FLAGS.split())
    assert list(xeon) == list(FEATURES) and all(isinstance(v, bool) for v in xeon.values())
    assert xeon["avx512_vnni"] and xeon["vnni"] and xeon["bf16"] and xeon["amx_int8"] and not xeon["asimd"]
    old = cpu_features(OLD_FLAGS.split())
    assert old["avx"] and not old["avx2"] and not old["vnni"] and not old["bf16"]
    assert cpu_features(["avx_vnni"])["vnni"] and not cpu_features(["avx_vnni"])["avx512_vnni"]
    arm = cpu_features(ARM_FEATURES.split())
    assert arm["asimd"] and arm["asimddp"] and arm["i8mm"] and arm["bf16"] and not arm["avx2"]
    assert not any(cpu_features([]).values())


def test_flags_and_name_are_read_from_cpuinfo(tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: Test CPU 9000\nflags\t\t: {XEON_FLAGS}\n\n"
                       f"processor\t: 1\nflags\t\t: fpu\n")
    assert cpu_flags(cpuinfo) == frozenset(XEON_FLAGS.split())  # the first processor speaks for all
    assert cpu_name(cpuinfo) == "Test CPU 9000"
    arm = tmp_path / "arm"
    arm.write_text(f"processor\t: 0\nFeatures\t: {ARM_FEATURES}\n")
    assert "asimddp" in cpu_flags(arm)


def test_this_machine(tmp_path):
    flags = cpu_flags()
    features = cpu_features()
    if flags is not None:
        assert features == cpu_features(flags)
        assert features["avx2"] == ("avx2" in flags)
    assert cpu_name()
