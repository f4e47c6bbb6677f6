"""Devices and dtypes for local models, and the CLI surface around them (--device/--dtype, --version,
exit codes, --json errors). Runs on CPU; CUDA/MPS availability is simulated where a test needs it."""

from __future__ import annotations

import json

import pytest
import torch

from fakes import make_tiny_lm
from promptlift.cli import main
from promptlift.errors import BudgetExceeded, ConfigError, UpstreamError
from promptlift.kv import KV
from promptlift.lm.hf import HFModel, resolve_device, resolve_dtype
from fakes import make_tiny_lm  # noqa: F401


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


@pytest.fixture
def tiny_dir(tmp_path):
    lm = make_tiny_lm()
    d = tmp_path / "tiny"
    lm.model.save_pretrained(d)
    lm.tokenizer.save_pretrained(d)
    return d


def one_line(e) -> str:
    msg = str(e.value)
    assert msg and "\n" not in msg
    return msg


# --- choosing a device and a dtype --------------------------------------------------------------------
def test_auto_is_cpu_float32_without_accelerators(no_gpu):
    dev = resolve_device("auto")
    assert dev == torch.device("cpu") and resolve_dtype("auto", dev) == torch.float32


def test_auto_prefers_cuda_with_bf16_then_mps(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    dev = resolve_device("auto")
    assert dev == torch.device("cuda", 0) and resolve_dtype("auto", dev) == torch.bfloat16
    assert resolve_device("cuda:1") == torch.device("cuda", 1)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert resolve_dtype("auto", dev) == torch.float32  # pre-Ampere GPU: fp32, not slow emulated bf16
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: True)
    dev = resolve_device("auto")
    assert dev == torch.device("mps") and resolve_dtype("auto", dev) == torch.float32


@pytest.mark.parametrize("spec", ["cuda", "cuda:0", "CUDA:3"])
def test_cuda_without_cuda_is_a_config_error(spec, no_gpu):
    with pytest.raises(ConfigError) as ei:
        resolve_device(spec)
    assert "CUDA is not available" in one_line(ei)


def test_missing_gpu_index_and_mps(monkeypatch, no_gpu):
    with pytest.raises(ConfigError, match="mps"):
        resolve_device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    with pytest.raises(ConfigError) as ei:
        resolve_device("cuda:1")
    assert "1 CUDA device" in one_line(ei)


@pytest.mark.parametrize("spec", ["gpu", "cuda:x", "tpu", "cuda:-1", ""])
def test_unknown_device(spec, no_gpu):
    if spec == "":
        assert resolve_device(spec) == torch.device("cpu")  # empty means auto
        return
    with pytest.raises(ConfigError) as ei:
        resolve_device(spec)
    assert "unknown device" in one_line(ei) and "cuda:N" in str(ei.value)


def test_dtypes():
    cpu = torch.device("cpu")
    assert resolve_dtype("bf16", cpu) == torch.bfloat16 and resolve_dtype("float16", cpu) == torch.float16
    assert resolve_dtype("float32", cpu) == torch.float32 and resolve_dtype(torch.bfloat16, cpu) == torch.bfloat16
    for bad in ("int8", "fp8", "double"):
        with pytest.raises(ConfigError) as ei:
            resolve_dtype(bad, cpu)
        assert "unknown dtype" in one_line(ei)


# --- HFModel on a device --------------------------------------------------------------------------------
def test_model_object_stays_as_given_unless_asked(no_gpu):
    lm = make_tiny_lm()
    assert lm.device == torch.device("cpu") and lm.dtype == torch.float32
    m = make_tiny_lm().model
    lm16 = HFModel("tiny", model=m, tokenizer=lm.tokenizer, dtype="bfloat16")
    assert next(lm16.model.parameters()).dtype == torch.bfloat16 and lm16.dtype == torch.bfloat16
    with pytest.raises(ConfigError, match="CUDA is not available"):
        HFModel("tiny", model=make_tiny_lm().model, tokenizer=lm.tokenizer, device="cuda")


def test_loading_by_name_on_cpu_with_a_dtype(tiny_dir, no_gpu):
    fp32 = HFModel(str(tiny_dir))
    assert fp32.device.type == "cpu" and fp32.dtype == torch.float32
    bf16 = HFModel(str(tiny_dir), device="cpu", dtype="bfloat16")
    assert bf16.dtype == torch.bfloat16
    a = fp32.score("the movie was great", [" hot", " cold"])
    b = bf16.score("the movie was great", [" hot", " cold"])
    assert a == pytest.approx(b, abs=0.2)  # bf16 keeps ~3 significant digits; logits come back as float32
    assert a != b  # computed in bf16, not the fp32 answer from the call cache
    with torch.no_grad():
        h, _ = bf16.forward(ids=torch.tensor([[5, 6, 7]]))
    assert bf16.logits(h).dtype == torch.float32
    with pytest.raises(ConfigError, match="either device or device_map"):
        HFModel(str(tiny_dir), device="cpu", device_map="auto")


def test_inputs_and_caches_follow_the_model_dtype():
    lm = make_tiny_lm()
    lm.model.to(torch.bfloat16)
    header = lm.forward(ids=torch.tensor([[5, 6]]))[1]  # bf16 cache
    L, H, D = lm.num_layers, lm.num_kv_heads, lm.head_dim
    learned = KV([torch.randn(1, H, 3, D) for _ in range(L)], [torch.randn(1, H, 3, D) for _ in range(L)],
                 torch.ones(1, 3, dtype=torch.long))  # fp32 parameters, as a trainer holds them
    both = header.cat(learned)
    assert both.keys[0].dtype == torch.bfloat16 and both.seq_len == 5
    with torch.no_grad():
        h, kv = lm.forward(embeds=torch.randn(1, 2, lm.hidden_size), past=learned)  # fp32 in, bf16 model
    assert h.dtype == torch.bfloat16 and kv.seq_len == 5
    same = learned.to("cpu", torch.float32)
    assert same is learned  # nothing to move: no copy


def test_kv_to_is_differentiable():
    k = torch.randn(1, 2, 3, 4, requires_grad=True)
    kv = KV([k], [k * 2], torch.ones(1, 3, dtype=torch.long)).to(dtype=torch.float64)
    kv.keys[0].sum().backward()
    assert k.grad is not None and torch.equal(k.grad, torch.ones_like(k))


# --- the command line ---------------------------------------------------------------------------------
def test_version(capsys):
    from importlib.metadata import version

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"promptlift {version('promptlift')}"


def test_cli_device_errors_are_one_line(capsys, no_gpu, tiny_dir):
    for args, needle in ((["--device", "cuda"], "CUDA is not available"), (["--device", "gpu"], "unknown device"),
                         (["--dtype", "int4"], "unknown dtype")):
        capsys.readouterr()
        code = main(["eval", "--data", "demo:demo_topics", "--model", str(tiny_dir), *args])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and err[0].startswith("promptlift: error:") and needle in err[0], err


def test_cli_eval_on_cpu_with_device_and_dtype(capsys, tiny_dir):
    capsys.readouterr()
    code = main(["eval", "--data", "demo:demo_topics", "--model", str(tiny_dir), "--limit", "4", "--device", "cpu",
                 "--dtype", "float32", "--json"])
    out = capsys.readouterr().out
    assert code == 0 and json.loads(out)["n"] == 4


@pytest.mark.parametrize("error, code", [(ConfigError("bad option"), 2), (BudgetExceeded("calls budget spent"), 3),
                                         (UpstreamError("endpoint http://127.0.0.1:9 failed after 3 retries"), 4)])
def test_exit_codes_and_json_errors(error, code, capsys, monkeypatch):
    import promptlift.cli as cli

    def fail(data):
        raise error

    monkeypatch.setattr(cli, "load_task", fail)
    capsys.readouterr()
    assert main(["eval", "--data", "x"]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"promptlift: error: {error}"]
    assert main(["eval", "--data", "x", "--json"]) == code
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    assert out == "" and len(lines) == 1
    assert json.loads(lines[0]) == {"error": str(error), "type": type(error).__name__, "exit_code": code}


def test_usage_error_with_json_is_json(capsys):
    capsys.readouterr()
    assert main(["eval", "--json"]) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["exit_code"] == 2 and "--data" in json.loads(lines[0])["error"]
