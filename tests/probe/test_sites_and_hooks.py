import pytest
import torch
from torch import nn

from dynalens.errors import InvalidParameterError, SiteNotFoundError
from dynalens.probe.hooks import HookSet, first_tensor
from dynalens.probe.sites import default_axes, resolve_sites

from .conftest import hook_count


def test_names_globs_types_in_model_order(mlp):
    assert list(resolve_sites(mlp, "fc2")) == ["fc2"]
    assert list(resolve_sites(mlp, "fc*")) == ["fc1", "fc2"]
    assert list(resolve_sites(mlp, nn.ReLU)) == ["act1", "act2"]
    assert list(resolve_sites(mlp, ["head", nn.ReLU])) == ["act1", "act2", "head"]


def test_unknown_site_suggests_close_matches(mlp):
    with pytest.raises(SiteNotFoundError, match=r"did you mean 'fc2'") as info:
        resolve_sites(mlp, "fc3")
    assert isinstance(info.value, KeyError)
    with pytest.raises(SiteNotFoundError, match="Conv2d"):
        resolve_sites(mlp, nn.Conv2d)


@pytest.mark.parametrize("bad", [[], 3, [1.5]])
def test_bad_site_specs(mlp, bad):
    with pytest.raises(InvalidParameterError):
        resolve_sites(mlp, bad)


def test_default_axes():
    assert default_axes(nn.Linear(2, 2), 2) == ("batch", "feature")
    assert default_axes(nn.Identity(), 3) == ("batch", "pos", "feature")
    assert default_axes(nn.Conv2d(1, 1, 1), 4) == ("batch", "channel", "height", "width")
    assert default_axes(nn.Identity(), 4, "blocks.0.attn.hook_pattern")[1] == "head"


def test_first_tensor_of_nested_outputs():
    t = torch.ones(2)
    assert first_tensor((None, [t])) is t
    assert first_tensor({"a": 1, "b": t}) is t
    assert first_tensor((1, 2)) is None


def test_hookset_removes_exactly_what_it_added(mlp):
    own = mlp.fc1.register_forward_hook(lambda *a: None)
    before = hook_count(mlp)
    with HookSet() as hooks:
        hooks.on_forward(mlp.fc1, lambda m, a, o: None)
        hooks.on_output_grad(mlp.fc2, lambda m, g: None)
        assert hook_count(mlp) == before + 2
    assert hook_count(mlp) == before
    own.remove()
    assert hook_count(mlp) == 0


def test_hookset_removes_adopted_hooks(mlp):
    with HookSet() as hooks:
        handle = mlp.fc1.register_forward_pre_hook(lambda m, a: None)
        assert hooks.adopt(handle) is handle and len(hooks) == 1
        assert hook_count(mlp) == 1
    assert hook_count(mlp) == 0


def test_hookset_removed_on_exception(mlp):
    with pytest.raises(RuntimeError, match="boom"):
        with HookSet() as hooks:
            hooks.on_forward(mlp.fc1, lambda m, a, o: None)
            raise RuntimeError("boom")
    assert hook_count(mlp) == 0


def test_output_grad_is_dloss_doutput_even_with_inplace_relu_after(mlp, data):
    """The in-place ReLU overwrites fc1's output; the tensor hook must still deliver
    d loss / d (fc1 output), which a copy of the model without in-place ops gives."""
    x, y = data
    seen = {}
    with HookSet() as hooks:
        hooks.on_output_grad(mlp.fc1, lambda m, g: seen.setdefault("grad", g.clone()))
        nn.functional.cross_entropy(mlp(x), y).backward()
    ref = type(mlp)()
    ref.act1, ref.act2 = nn.ReLU(), nn.ReLU()
    h1 = ref.fc1(x)
    h1.retain_grad()
    nn.functional.cross_entropy(ref.head(ref.act2(ref.fc2(ref.act1(h1)))), y).backward()
    torch.testing.assert_close(seen["grad"], h1.grad, rtol=0, atol=0)
