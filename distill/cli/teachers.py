"""`distill teachers list`."""

from __future__ import annotations

import typer

from distill.cli.groups import teachers_app


@teachers_app.command("list")
def teachers_list() -> None:
    """List teacher backends per role, whether they can run here, and the paper's choice."""
    import importlib.util

    import torch

    from distill.config import TEACHER_BACKENDS, TeachersConfig

    paper = TeachersConfig().roles()
    cuda = torch.cuda.is_available()
    needs = {"detectron2": "detectron2", "dptext-detr": "adet", "craft": "easyocr_en_models"}
    # what each adapter imports first (detectron2's model zoo needs pkg_resources, for one)
    imports = {"detectron2": "detectron2.model_zoo", "adet": "adet.config"}
    typer.echo(f"{'role':<9} {'backend':<18} {'status':<34} paper default")
    broken: dict[str, str] = {}
    for role, names in TEACHER_BACKENDS.items():
        for name in names:
            module = needs.get(name)
            ok = module is None or importlib.util.find_spec(module) is not None
            status = "ready" if ok else f"needs `{module}` (not installed)"
            if name == "craft" and not ok:
                status = "ready with a weights path (no wheel)"
            elif ok and module in imports:
                try:  # installed is not enough: detectron2's own import can fail
                    importlib.import_module(imports[module])
                except Exception as exc:  # reported, whatever it is
                    broken[module] = f"{type(exc).__name__}: {exc}"
                    status = f"`{module}` installed, fails to import"
            if name == "dptext-detr" and status == "ready" and not cuda:
                status = "needs a CUDA GPU (none here)"  # no CPU deformable attention
            mark = paper[role].checkpoint if paper[role].backend == name else ""
            typer.echo(f"{role:<9} {name:<18} {status:<34} {mark}")
    for module, why in broken.items():
        hint = " (pip install 'setuptools<81')" if "pkg_resources" in why else ""
        typer.echo(f"{module}: {why}{hint}")

