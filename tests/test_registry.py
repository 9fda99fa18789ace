"""Registries find their methods by importing every module of their package: one new file adds a method."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from corehead.registry import Registry


def _package(root: Path, name: str, modules: dict[str, str]) -> None:
    pkg = root / name
    pkg.mkdir()
    (pkg / "__init__.py").write_text(
        f"from corehead.registry import Registry\nWIDGETS = Registry('widget', {name!r})\n"
    )
    for module, text in modules.items():
        (pkg / f"{module}.py").write_text(f"from {name} import WIDGETS\n\n{text}")


def test_a_new_file_in_the_package_is_a_new_method(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _package(
        tmp_path,
        "widgets_a",
        {
            "zeta": "@WIDGETS.register('zeta', order=0)\nclass Zeta:\n    pass\n",
            "alpha": "@WIDGETS.register('alpha', order=1)\nclass Alpha:\n    pass\n",
            "beta": "@WIDGETS.register('beta', order=1)\nclass Beta:\n    pass\n",
        },
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    from widgets_a import WIDGETS  # type: ignore[import-not-found]

    assert WIDGETS.names() == ("zeta", "alpha", "beta")  # by order, then by name
    assert WIDGETS.get("alpha").__name__ == "Alpha" and WIDGETS.get("alpha").name == "alpha"
    assert WIDGETS.help() == "zeta, alpha, beta"
    with pytest.raises(ValueError, match=r"unknown widget 'gamma'; choose from zeta, alpha, beta"):
        WIDGETS.get("gamma")
    for module in [m for m in sys.modules if m.startswith("widgets_a")]:
        del sys.modules[module]


def test_two_methods_under_one_name_are_refused() -> None:
    registry: Registry[object] = Registry("widget", "corehead")

    @registry.register("same")
    class One:
        pass

    with pytest.raises(ValueError, match="two widgets are registered as 'same'"):

        @registry.register("same")
        class Other:
            pass
